"""The meter-API pull and the store's locks (review pull #1, #2): a pull holds the store's
``.ingest.lock`` only while it reads the store's state and books what it got, never during its
download; one pull at a time is kept by ``.pull_turn.lock``, and ``.pull.lock`` (the lock older
versions took for a whole pull) is taken with ``.ingest.lock``, so an older worker still pulling
holds back this version's files and pulls alike."""

from __future__ import annotations

import threading

from datetime import datetime

import pytest

from tests.test_ingest_rerun import _file, _ledger, _r, _registers, _seed


@pytest.fixture
def meter_api(database_url, app_env, monkeypatch):
    """The fake meter platform, the settings pointing at it and a seeded database (M1-M3), as in
    tests/test_ingest_rerun.py."""
    import sibifang.settings as settings_module
    from sibifang.settings import reset_settings
    from tests.test_inbox_rejects import use_database
    from tests.test_meter_api import TOKEN, FakeMeterApi

    _seed(database_url)
    use_database(monkeypatch, database_url)
    monkeypatch.setattr(settings_module, "local_now", lambda: datetime(2026, 11, 20, 12, 0))
    with FakeMeterApi() as api:
        monkeypatch.setenv("SIBIFANG_METER_API_URL", api.url)
        monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN)
        reset_settings()
        yield api


class _SlowPages(dict):
    """The fake platform's pages; answering ``slow_token`` waits until ``go_on`` is set (a
    platform that pages slowly), and ``reached`` is set when that page is asked for."""

    def __init__(self, pages, slow_token):
        super().__init__(pages)
        self.slow_token = slow_token
        self.reached, self.go_on = threading.Event(), threading.Event()

    def __getitem__(self, token):
        if token == self.slow_token:
            self.reached.set()
            assert self.go_on.wait(60), "the test never let the slow page go"
        return super().__getitem__(token)


def _pull_in_thread(results, errors):
    from tasks.ingest_readings import pull_api_task

    def run():
        try:
            results["pull"] = pull_api_task.fn()
        except Exception as e:  # noqa: BLE001 - reported by the assertions
            errors.append(e)
    thread = threading.Thread(target=run, name="pull")
    thread.start()
    return thread


def test_a_file_is_not_held_up_by_a_pull_paging_slowly(meter_api, database_url, app_env, monkeypatch):
    """A pull held ``.ingest.lock`` through its whole download: a readings file dropped while the
    platform paged slowly waited ``readings_lock_timeout_seconds`` and failed (StoreBusy). The
    download now runs without it: the file goes in at once, and the pull, once its pages are in,
    books what the file had not (the same reading is not read twice; a register chains through)."""
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_READINGS_LOCK_TIMEOUT_SECONDS", "1")
    reset_settings()
    store = ReadingStore(app_env / "data" / "readings")
    pages = _SlowPages({None: {"readings": [_r("M1", "08:15", .1), _r("M2", "08:15", .2)], "next_page_token": "p2"},
                        "p2": {"readings": [_r("M1", "08:30", .3), _r("M2", "08:30", .4)],
                               "next_page_token": None}}, "p2")
    meter_api.pages = pages
    results, errors = {}, []
    pull = _pull_in_thread(results, errors)
    try:
        assert pages.reached.wait(60)
        # M1 08:15 as the platform sends it, and M3's reading: both go in now.
        import pandas as pd

        frame = pd.DataFrame({"line": [2, 3], "meter_id": ["M1", "M3"],
                              "ts": ["2026-11-20 08:15", "2026-11-20 08:15"], "kwh": ["0.1", "0.3"]})
        from tasks.ingest_readings import ingest_frame

        during = ingest_frame(frame, source="drop.csv", batch_id="file-drop", database_url=database_url)
    finally:
        pages.go_on.set()
        pull.join()
    assert errors == []
    assert (during["read"], during["accepted"], during["new"]) == (2, 2, 2)
    out = results["pull"]
    assert (out["read"], out["accepted"], out["new"], out["already_ingested"]) == (3, 3, 3, 1)
    ledger = _ledger(database_url)
    assert sorted(ledger) == [(2, 2, 0, 2), (3, 3, 0, 3)]
    assert sum(row[3] for row in ledger) == len(store.load()) == 5
    assert store.unfinished_pulls() == [] and store.unfinished_files() == []


def test_a_register_file_during_a_pull_download_chains_with_the_pull(meter_api, database_url, app_env,
                                                                      monkeypatch):
    """A cumulative meter: a file of 08:30-08:45 goes in while the pull downloads 09:00-09:15. The
    pull's intervals are differenced from the state the file left (read once the download is in),
    not from the one before it: no register_gap, five intervals of 0.1 kWh."""
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import reset_settings
    from tests.test_ingest_rerun import _api_registers, _one_meter_five_intervals

    monkeypatch.setenv("SIBIFANG_READINGS_LOCK_TIMEOUT_SECONDS", "1")
    reset_settings()
    store = ReadingStore(app_env / "data" / "readings")
    _file(database_url, "a", _registers(("M1", "08:00", 100.0), ("M1", "08:15", 100.1)))
    pages = _SlowPages({None: {"readings": [], "next_page_token": "p2"},
                        "p2": {"readings": _api_registers(("M1", "09:00", 100.4), ("M1", "09:15", 100.5)),
                               "next_page_token": None}}, "p2")
    meter_api.pages = pages
    results, errors = {}, []
    pull = _pull_in_thread(results, errors)
    try:
        assert pages.reached.wait(60)
        during = _file(database_url, "b", _registers(("M1", "08:30", 100.2), ("M1", "08:45", 100.3)))
    finally:
        pages.go_on.set()
        pull.join()
    assert errors == []
    assert (during["read"], during["accepted"]) == (2, 2)
    assert (results["pull"]["read"], results["pull"]["accepted"], results["pull"]["quarantined"]) == (2, 2, 0)
    _one_meter_five_intervals(database_url, store)


def test_a_second_pull_during_a_download_is_still_skipped(meter_api, database_url, app_env):
    """One pull at a time still: a pull finding another downloading leaves the platform to it."""
    from tasks.ingest_readings import pull_api_task

    pages = _SlowPages({None: {"readings": [_r("M1", "08:15", .1)], "next_page_token": "p2"},
                        "p2": {"readings": [_r("M2", "08:15", .2)], "next_page_token": None}}, "p2")
    meter_api.pages = pages
    results, errors = {}, []
    pull = _pull_in_thread(results, errors)
    try:
        assert pages.reached.wait(60)
        requests_before = len(meter_api.requests)
        second = pull_api_task.fn()
    finally:
        pages.go_on.set()
        pull.join()
    assert errors == []
    assert second["busy"] and second["read"] == 0 and len(meter_api.requests) == requests_before
    assert (results["pull"]["read"], results["pull"]["new"]) == (2, 2)
    assert _ledger(database_url) == [(2, 2, 0, 2)]



# ------------------------------------------------ upgrading from the version with .pull.lock

def _hold_in_another_process(lock):
    """A worker of the older version mid-pull: another process holding a flock on ``lock``."""
    import subprocess
    import sys

    code = ("import fcntl, sys\n"
            f"handle = open({str(lock)!r}, 'a+b')\n"
            "fcntl.flock(handle, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_pull_of_an_older_worker_holding_the_old_pull_lock_is_respected(meter_api, database_url, app_env):
    """The older version kept pulls one at a time with ``<store>/.pull.lock`` alone; this one
    took only ``.ingest.lock``, so during an upgrade a pull of an old worker and a pull of a new
    one ran at once, finishing the same journals and booking the same window twice. A pull now
    takes ``.pull.lock`` too: it finds the old worker's pull running, is skipped, and says which
    lock it found held."""
    import logging

    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    store.root.mkdir(parents=True, exist_ok=True)
    meter_api.pages = {None: {"readings": [_r("M1", "08:15", .1), _r("M2", "08:15", .2)], "next_page_token": None}}
    said = []

    class Said(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())
    handler, sibifang_log = Said(level=logging.INFO), logging.getLogger("sibifang")
    level = sibifang_log.level
    sibifang_log.setLevel(logging.INFO)
    sibifang_log.addHandler(handler)
    old_worker = _hold_in_another_process(store.root / ".pull.lock")
    try:
        during = pull_api_task.fn()
    finally:
        old_worker.stdin.close()
        old_worker.wait(30)
        sibifang_log.removeHandler(handler)
        sibifang_log.setLevel(level)
    assert during["busy"] and during["read"] == 0 and meter_api.requests == []
    assert any(str(store.root / ".pull.lock") in line for line in said), said
    assert _ledger(database_url) == [] and store.load().empty
    # The old worker gone, its lock file stays behind: a flock, it holds nothing.
    after = pull_api_task.fn()
    assert (after["read"], after["new"]) == (2, 2) and not after.get("busy")


def test_stale_lock_files_of_either_version_hold_nothing(meter_api, database_url, app_env, monkeypatch):
    """A store upgraded in place keeps a ``.pull.lock`` (with whatever an older tool wrote in it)
    beside ``.ingest.lock``; no process holds either. Pulls and files go on as usual."""
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import reset_settings
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / ".pull.lock").write_text("4242\n")
    (store.root / ".ingest.lock").write_text("")
    meter_api.pages = {None: {"readings": [_r("M1", "08:15", .1)], "next_page_token": None}}
    assert pull_api_task.fn()["read"] == 1
    monkeypatch.setenv("SIBIFANG_READINGS_LOCK_TIMEOUT_SECONDS", "0")  # a file must not wait at all
    reset_settings()
    assert _file(database_url, "a", _registers(("M3", "08:00", 10.0), ("M3", "08:15", 10.1)))["read"] == 2
    assert (store.root / ".pull.lock").exists()


def test_a_file_waits_for_a_pull_of_an_older_worker_holding_the_old_pull_lock(meter_api, database_url, app_env,
                                                                              monkeypatch):
    """A worker of the version before ``.ingest.lock`` pulls holding ``.pull.lock`` alone; a file
    took only ``.ingest.lock``, so it went in mid-pull: both read the store's state (the register
    state, what is stored) and booked against it at once (review pull2 #2). A file now waits for
    ``.pull.lock`` too (bounded, naming it), and goes in once the old pull is done. A pull of this
    version does not hold ``.pull.lock`` while it downloads (a file is not held up by it:
    ``test_a_file_is_not_held_up_by_a_pull_paging_slowly``)."""
    from sibifang.readings_store import ReadingStore, StoreBusy
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_READINGS_LOCK_TIMEOUT_SECONDS", "1")
    reset_settings()
    store = ReadingStore(app_env / "data" / "readings")
    store.root.mkdir(parents=True, exist_ok=True)
    old_worker = _hold_in_another_process(store.root / ".pull.lock")
    try:
        with pytest.raises(StoreBusy) as info:
            _file(database_url, "a", _registers(("M3", "08:00", 10.0), ("M3", "08:15", 10.1)))
    finally:
        old_worker.stdin.close()
        old_worker.wait(30)
    assert str(store.root / ".pull.lock") in str(info.value)
    assert _ledger(database_url) == [] and store.load().empty
    assert _file(database_url, "a", _registers(("M3", "08:00", 10.0), ("M3", "08:15", 10.1)))["read"] == 2
