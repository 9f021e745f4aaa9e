"""A readings file that goes into the store while a failed pull waits to be finished (or to be
set aside) books readings that pull holds too: the pull, finished later, must not read them
again (issue #3 part 1, review pull2 #1). Every reading booked once across the ledger, and
read = accepted + quarantined in each batch."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.test_ingest_rerun import Injected, _ledger
from tests.test_pull_locks import _pull_in_thread, _SlowPages, meter_api  # noqa: F401 - the fixture


def _at(meter, day, hm, kwh):
    return {"meter_id": meter, "ts": f"2026-11-{day}T{hm}:00+08:00", "kwh": kwh}


FIRST = [_at("M1", 19, "23:30", .1), _at("M1", 19, "23:45", .2),
         _at("M1", 20, "08:15", .3), _at("M2", 20, "08:15", .4)]
# The second day's readings of FIRST, as a clerk's file sends them.
SECOND_DAY_FILE = pd.DataFrame({"line": [2, 3], "meter_id": ["M1", "M2"],
                                "ts": ["2026-11-20 08:15", "2026-11-20 08:15"], "kwh": ["0.3", "0.4"]})


def _pull_killed_on_the_second_day(meter_api, monkeypatch):  # noqa: F811 - the fixture
    """A pull of FIRST that stored the first day and was killed storing the second: -> its batch."""
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    meter_api.pages = {None: {"readings": FIRST, "next_page_token": None}}
    original_merge, merges = ReadingStore._merge_partition, {"n": 0}

    def killed(self, *args, **kwargs):
        merges["n"] += 1
        if merges["n"] == 2:
            raise Injected("killed mid-append")
        return original_merge(self, *args, **kwargs)
    monkeypatch.setattr(ReadingStore, "_merge_partition", killed)
    with pytest.raises(Injected):
        pull_api_task.fn()
    monkeypatch.setattr(ReadingStore, "_merge_partition", original_merge)


def _booked_once(database_url, store):
    ledger = _ledger(database_url)
    stored = len(store.load())
    assert all(read == accepted + quarantined for read, accepted, quarantined, _ in ledger), ledger
    assert sum(r[1] for r in ledger) == stored, ledger  # accepted once each
    assert sum(r[3] for r in ledger) == stored, ledger  # new once each
    assert store.unfinished_pulls() == [] and store.set_aside_pulls() == []


def test_a_file_booked_before_a_failed_pull_is_finished_is_not_read_again_by_it(
        meter_api, database_url, app_env, monkeypatch):  # noqa: F811 - the fixture
    """The pull stored the first day and failed; a file of the second day went in; the next pull
    finished the failed one from what it started from and read the file's two readings again."""
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import ingest_frame, pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    _pull_killed_on_the_second_day(meter_api, monkeypatch)
    during = ingest_frame(SECOND_DAY_FILE, source="drop.csv", batch_id="file-drop", database_url=database_url)
    assert (during["read"], during["accepted"], during["new"]) == (2, 2, 2)
    done = pull_api_task.fn()
    # The failed pull's first day (its own); the second day is the file's.
    assert (done["read"], done["accepted"], done["new"]) == (2, 2, 2)
    assert len(store.load()) == 4
    _booked_once(database_url, store)


@pytest.mark.parametrize("file_goes_in", ["before_the_set_aside", "during_the_download"])
def test_a_file_booked_while_a_failed_pull_waits_to_be_set_aside_is_not_read_again_once_put_back(
        meter_api, database_url, app_env, monkeypatch, file_goes_in):  # noqa: F811 - the fixture
    """A failed pull kept failing to finish and was set aside. A file of its second day went in
    between its failed attempts (before the set-aside): the set-aside recorded the file's readings
    as held then, and put back the pull took them for its own and read them again. A file that goes
    in while the pull setting it aside downloads was already told apart: kept as a check."""
    import tasks.ingest_readings as ingest_tasks
    from sibifang.readings_store import PULL_FINISH_ATTEMPTS, ReadingStore
    from sibifang.settings import reset_settings
    from tasks.ingest_readings import pull_api_task

    monkeypatch.setenv("SIBIFANG_READINGS_LOCK_TIMEOUT_SECONDS", "5")
    reset_settings()
    store = ReadingStore(app_env / "data" / "readings")
    _pull_killed_on_the_second_day(meter_api, monkeypatch)
    [journal] = store.unfinished_pulls()
    stuck = journal.info()["batch_id"]
    original_ingest = ingest_tasks.ingest_frame

    def failing(raw, *args, batch_id, **kwargs):
        if batch_id == stuck:
            raise Injected("fails on every attempt to finish it")
        return original_ingest(raw, *args, batch_id=batch_id, **kwargs)
    monkeypatch.setattr(ingest_tasks, "ingest_frame", failing)
    during = None
    for attempt in range(1, PULL_FINISH_ATTEMPTS):
        with pytest.raises(Injected):
            pull_api_task.fn()
        if attempt == 1 and file_goes_in == "before_the_set_aside":
            during = original_ingest(SECOND_DAY_FILE, source="drop.csv", batch_id="file-drop",
                                     database_url=database_url)
    pages = _SlowPages({None: {"readings": FIRST[:2], "next_page_token": "p2"},
                        "p2": {"readings": [*FIRST[2:], _at("M1", 20, "08:30", .5)], "next_page_token": None}},
                       "p2")
    meter_api.pages = pages
    results, errors = {}, []
    pull = _pull_in_thread(results, errors)
    try:
        assert pages.reached.wait(60)
        if file_goes_in == "during_the_download":
            during = original_ingest(SECOND_DAY_FILE, source="drop.csv", batch_id="file-drop",
                                     database_url=database_url)
    finally:
        pages.go_on.set()
        pull.join()
    assert errors == []
    assert (during["read"], during["accepted"], during["new"]) == (2, 2, 2)
    out = results["pull"]
    assert [s["batch"] for s in out["set_aside"]] == [stuck]
    assert (out["read"], out["accepted"], out["new"]) == (1, 1, 1)  # 08:30 only
    monkeypatch.setattr(ingest_tasks, "ingest_frame", original_ingest)
    store.resume_set_aside(stuck)
    done = pull_api_task.fn()
    assert (done["read"], done["accepted"], done["new"]) == (2, 2, 2)  # its own first day
    assert len(store.load()) == 5
    _booked_once(database_url, store)
