"""A set-aside pull put back is booked without counting again what later pulls read meanwhile
(review pull #3): read = accepted + quarantined, once per reading, across the ledger."""

from __future__ import annotations

import pytest

from tests.test_ingest_rerun import Injected, _ledger
from tests.test_pull_locks import meter_api  # noqa: F401 - the fixture


def _at(meter, day, hm, kwh):
    return {"meter_id": meter, "ts": f"2026-11-{day}T{hm}:00+08:00", "kwh": kwh}


@pytest.mark.parametrize("fails_once_put_back", [False, True])
def test_readings_booked_while_a_pull_was_set_aside_are_not_read_again_when_it_is_put_back(
        meter_api, database_url, app_env, monkeypatch, fails_once_put_back):  # noqa: F811 - the fixture
    """A pull of two days stored the first day's readings and failed on the second's; finishing
    it kept failing and it was set aside. The next pull, sent the same window and one reading
    more, read the second day's readings (not stored yet). Put back, the set-aside pull read
    them again: accepted twice across the ledger (7 read for 5 readings stored). Put back and
    failing once more after storing, it is booked the same by the next pull."""
    import tasks.ingest_readings as ingest_tasks
    from sibifang.readings_store import PULL_FINISH_ATTEMPTS, ReadingStore
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    first = [_at("M1", 19, "23:30", .1), _at("M1", 19, "23:45", .2),
             _at("M1", 20, "08:15", .3), _at("M2", 20, "08:15", .4)]
    meter_api.pages = {None: {"readings": first, "next_page_token": None}}
    original_merge, merges = ReadingStore._merge_partition, {"n": 0}

    def killed_on_the_second_day(self, *args, **kwargs):
        merges["n"] += 1
        if merges["n"] == 2:
            raise Injected("killed mid-append")
        return original_merge(self, *args, **kwargs)
    monkeypatch.setattr(ReadingStore, "_merge_partition", killed_on_the_second_day)
    with pytest.raises(Injected):
        pull_api_task.fn()
    monkeypatch.setattr(ReadingStore, "_merge_partition", original_merge)
    [journal] = store.unfinished_pulls()
    stuck = journal.info()["batch_id"]
    assert len(store.load()) == 2  # the first day only

    original_ingest = ingest_tasks.ingest_frame

    def failing(raw, *args, batch_id, **kwargs):
        if batch_id == stuck:
            raise Injected("fails on every attempt to finish it")
        return original_ingest(raw, *args, batch_id=batch_id, **kwargs)
    monkeypatch.setattr(ingest_tasks, "ingest_frame", failing)
    for _ in range(1, PULL_FINISH_ATTEMPTS):
        with pytest.raises(Injected):
            pull_api_task.fn()
    meter_api.pages = {None: {"readings": [*first, _at("M1", 20, "08:30", .5)], "next_page_token": None}}
    out = pull_api_task.fn()
    assert [s["batch"] for s in out["set_aside"]] == [stuck]
    # The second day's two readings and the new one; the first day's are stored.
    assert (out["read"], out["accepted"], out["new"], out["already_ingested"]) == (3, 3, 3, 2)

    monkeypatch.setattr(ingest_tasks, "ingest_frame", original_ingest)
    store.resume_set_aside(stuck)
    if fails_once_put_back:
        import sibifang.import_registry as registry

        original_record = registry.record_validation

        def lost(*args, **kwargs):
            raise Injected("database connection lost")
        monkeypatch.setattr(registry, "record_validation", lost)
        with pytest.raises(Injected):
            pull_api_task.fn()
        monkeypatch.setattr(registry, "record_validation", original_record)
    done = pull_api_task.fn()
    # What it stored itself (the first day) is its to read; the second day was read meanwhile.
    assert (done["read"], done["accepted"], done["new"]) == (2, 2, 2)
    ledger = _ledger(database_url)
    stored = len(store.load())
    assert stored == 5
    assert sum(r[0] for r in ledger) == sum(r[1] for r in ledger) == sum(r[3] for r in ledger) == stored
    assert all(read == accepted + quarantined for read, accepted, quarantined, _ in ledger)
    assert store.unfinished_pulls() == [] and store.set_aside_pulls() == []
