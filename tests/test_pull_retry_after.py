"""A platform asking to wait longer than the pull may (Retry-After above ``max_retry_after``):
the pull ends at once with a message naming the feed, the page, the wait asked and the cap, and
is not retried by Prefect seconds later (review pull2 #4). Real local HTTP server."""

from __future__ import annotations

import pytest

from tests.test_ingest_rerun import _ledger
from tests.test_pull_locks import meter_api  # noqa: F401 - the fixture


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_above_the_cap_ends_the_pull_naming_the_feed(meter_api, database_url, app_env,  # noqa: F811
                                                                    status, monkeypatch):
    import sibifang.meter_api as meter_api_module
    from sibifang.meter_api import MeterApiError
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    slept = []
    monkeypatch.setattr(meter_api_module.time, "sleep", slept.append)
    meter_api.script = {None: [(status, {"Retry-After": "3600"})]}
    with pytest.raises(MeterApiError) as info:
        pull_api_task.fn()
    message = str(info.value)
    host = meter_api.url.split("/")[2]  # 127.0.0.1:<port>
    assert host in message and "第 1 页" in message and f"HTTP {status}" in message
    assert "3600" in message and "300" in message  # asked, and the cap
    assert "下一次" in message  # what happens next
    # Ended, not waited out (nor capped and asked again), and not for Prefect to retry in 5 s.
    assert len(meter_api.requests) == 1 and slept == []
    assert not info.value.retryable and info.value.status == status
    assert "/api/v1" not in message  # the path may be a key; the host names the feed
    assert _ledger(database_url) == [] and ReadingStore(app_env / "data" / "readings").load().empty


def test_a_retry_after_within_the_cap_is_waited_and_the_pull_goes_on(meter_api, database_url,  # noqa: F811
                                                                     monkeypatch):
    import sibifang.meter_api as meter_api_module
    from tasks.ingest_readings import pull_api_task

    slept = []
    monkeypatch.setattr(meter_api_module.time, "sleep", slept.append)
    meter_api.pages = {None: {"readings": [{"meter_id": "M1", "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1}],
                              "next_page_token": None}}
    meter_api.script = {None: [(429, {"Retry-After": "300"})]}
    out = pull_api_task.fn()
    assert slept == [300.0] and len(meter_api.requests) == 2
    assert (out["read"], out["accepted"]) == (1, 1)
