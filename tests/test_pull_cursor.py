"""A dead meter (no readings any more) held every pull's ``since`` a week back: each pull
fetched every meter's last 7 days again (review pull2 #3). Pulls now also resume from how far
the feed was fetched (a cursor kept beside the store, moved only once a pull is booked), so a
dead meter costs one small request; a pull that fails before it is booked moves nothing, and
the next one fetches from where the store stands (nothing missed). Real local HTTP server."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.test_ingest_rerun import Injected, _ledger
from tests.test_pull_locks import meter_api  # noqa: F401 - the fixture


def _at(meter, day, hm, kwh):
    return {"meter_id": meter, "ts": f"2026-11-{day}T{hm}:00+08:00", "kwh": kwh}


def _seed_store(app_env):
    from sibifang.readings_store import ReadingStore

    store = ReadingStore(app_env / "data" / "readings")
    # M2 died on the 10th; M1 reads on (the fixture's clock: 2026-11-20 12:00).
    store.append(pd.DataFrame({"meter_id": ["M2", "M1"],
                               "ts": pd.to_datetime(["2026-11-10 08:00", "2026-11-20 11:30"]),
                               "kwh": [0.1, 0.1]}))
    return store


A_WEEK_BACK = "2026-11-13T11:30:00+08:00"


def test_a_dead_meter_does_not_make_every_pull_fetch_its_last_week(meter_api, database_url, app_env):  # noqa: F811
    from tasks.ingest_readings import pull_api_task

    _seed_store(app_env)
    meter_api.pages = {None: {"readings": [_at("M1", 20, "11:45", .2), _at("M1", 20, "12:00", .3)],
                              "next_page_token": None}}
    first = pull_api_task.fn()
    assert (first["read"], first["accepted"]) == (2, 2)
    meter_api.pages = {None: {"readings": [_at("M1", 20, "12:00", .3)], "next_page_token": None}}
    pull_api_task.fn()
    sent = [r["query"]["since"] for r in meter_api.requests]
    assert sent[0] == A_WEEK_BACK  # the dead meter's window, asked once
    # Then from how far the feed was fetched (12:00), less two days for readings that arrive late.
    assert sent[1] == "2026-11-18T12:00:00+08:00"
    assert sum(r[1] for r in _ledger(database_url)) == 2


def test_a_pull_that_fails_before_it_is_booked_does_not_move_the_cursor(meter_api, database_url, app_env,  # noqa: F811
                                                                        monkeypatch):
    import tasks.ingest_readings as ingest_tasks
    from tasks.ingest_readings import pull_api_task

    store = _seed_store(app_env)
    meter_api.pages = {None: {"readings": [_at("M2", 12, "08:00", .4), _at("M1", 20, "12:00", .3)],
                              "next_page_token": None}}
    original = ingest_tasks.ingest_frame

    def lost(*args, **kwargs):
        raise Injected("killed before booking")
    monkeypatch.setattr(ingest_tasks, "ingest_frame", lost)
    with pytest.raises(Injected):
        pull_api_task.fn()
    monkeypatch.setattr(ingest_tasks, "ingest_frame", original)
    out = pull_api_task.fn()
    sent = [r["query"]["since"] for r in meter_api.requests]
    assert sent == [A_WEEK_BACK, A_WEEK_BACK]  # from the store again: M2's late reading not missed
    assert (out["read"], out["accepted"]) == (2, 2) and len(store.load()) == 4
    # Booked now: the next pull resumes from the feed's cursor.
    pull_api_task.fn()
    assert meter_api.requests[-1]["query"]["since"] == "2026-11-18T12:00:00+08:00"


def test_the_cursor_never_runs_ahead_of_the_clock(meter_api, database_url, app_env):  # noqa: F811
    """A meter clock a day fast sends tomorrow's readings (set aside as future_ts): the cursor
    stops at now, or every reading until tomorrow would be skipped."""
    from tasks.ingest_readings import pull_api_task

    _seed_store(app_env)
    meter_api.pages = {None: {"readings": [_at("M1", 20, "11:45", .2), _at("M3", 21, "12:00", .3)],
                              "next_page_token": None}}
    pull_api_task.fn()
    pull_api_task.fn()
    # 11:45 (the latest reading not ahead of the clock) less the late window; not tomorrow.
    assert meter_api.requests[-1]["query"]["since"] == "2026-11-18T11:45:00+08:00"
