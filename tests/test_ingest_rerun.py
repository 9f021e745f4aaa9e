"""A readings batch run again after a failure at any point (a crash, a Prefect task retry) ends
with the ledger, the quarantine and the store a clean run gives (review ingest3 #2).

The store and the register state used to be written before the ledger commit, and a re-run
started from what the failed attempt left: with a cumulative feed each meter's first reading
became a ``register_baseline`` quarantine (the state already sat at the batch's end), and with
either feed the ledger recorded ``rows_new`` 0 (the readings were already stored)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

NOW = datetime(2026, 11, 21, 12, 0)
METERS = ["M1", "M2", "M3"]


class Injected(RuntimeError):
    pass


def _seed(url: str) -> None:
    from schemas.models import Household, Meter
    from sibifang.db import session_scope, upsert
    from tests.test_inbox_rejects import seed

    seed(url)
    with session_scope(url) as s:
        upsert(s, Household, [{"id": f"H{i}", "head_name": "王秀兰", "grid_id": "G001", "categories": []}
                              for i in (2, 3)], key=["id"])
        upsert(s, Meter, [{"id": f"M{i}", "household_id": f"H{i}", "interval_minutes": 15} for i in (2, 3)],
               key=["id"])


def _frame(feed: str, start: str, end: str, offset: int) -> pd.DataFrame:
    ts = pd.date_range(start, end, freq="15min")
    rows = []
    for i, m in enumerate(METERS):
        for k, t in enumerate(ts):
            if feed == "cumulative":
                rows.append((m, f"{t:%Y-%m-%d %H:%M}", f"{100 + 10 * i + 0.1 * (offset + k):.3f}"))
            else:
                rows.append((m, f"{t:%Y-%m-%d %H:%M}", f"{0.1 + 0.01 * i:.3f}"))
    frame = pd.DataFrame(rows, columns=["meter_id", "ts", "register_kwh" if feed == "cumulative" else "kwh"])
    frame.insert(0, "line", np.arange(2, len(frame) + 2))
    return frame


# A: the afternoon; B: the evening through the next morning (two partitions of the store).
A = ("2026-11-20 12:15", "2026-11-20 18:00", 0)      # 24 readings a meter
B = ("2026-11-20 18:15", "2026-11-21 06:00", 24)     # 48 readings a meter


def _ingest(url, feed, which, batch):
    from tasks.ingest_readings import ingest_frame

    pull = feed == "pull"
    return ingest_frame(_frame("cumulative" if feed == "cumulative" else "interval", *which),
                        source="meter-api" if pull else f"{batch}.csv", batch_id=batch, database_url=url,
                        now=NOW, pull=pull)


def _state(url, store):
    from schemas.models import QuarantinedRow, ReadingBatch, ValidationRun
    from sibifang.db import session_scope

    with session_scope(url) as s:
        ledger = sorted(s.execute(select(ReadingBatch.id, ReadingBatch.rows_read, ReadingBatch.rows_accepted,
                                         ReadingBatch.rows_quarantined, ReadingBatch.rows_new,
                                         ReadingBatch.first_ts, ReadingBatch.last_ts)).tuples())
        quarantine = sorted(s.execute(select(QuarantinedRow.batch, QuarantinedRow.line, QuarantinedRow.code)
                                      .where(QuarantinedRow.kind == "ingest_readings")).tuples())
        runs = sorted(s.execute(select(ValidationRun.source, ValidationRun.rows_read, ValidationRun.rows_accepted,
                                       ValidationRun.rows_quarantined)
                                .where(ValidationRun.stage == "ingest_readings")).tuples())
    stored = store.load()
    return {"ledger": ledger, "quarantine": quarantine, "runs": runs,
            "store": stored.assign(meter_id=stored["meter_id"].astype(str)).to_dict("list"),
            "registers": store.last_registers().to_dict("list")}


def _inject(monkeypatch, where: str) -> dict:
    """Fail once at ``where``; returns a dict whose "fired" says whether it did."""
    import sibifang.import_registry as registry
    from sibifang.readings_store import ReadingStore

    fired = {"fired": 0}
    if where == "record_validation":  # store and registers written, the ledger not committed
        original = registry.record_validation

        def fail(*args, **kwargs):
            if not fired["fired"]:
                fired["fired"] = 1
                raise Injected("database connection lost")
            return original(*args, **kwargs)
        monkeypatch.setattr(registry, "record_validation", fail)
    elif where == "save_registers":  # the readings stored, the register state not saved
        original = ReadingStore.save_registers

        def fail(self, *args, **kwargs):
            if not fired["fired"]:
                fired["fired"] = 1
                raise Injected("disk full")
            return original(self, *args, **kwargs)
        monkeypatch.setattr(ReadingStore, "save_registers", fail)
    elif where == "second_partition":  # one day of the batch written, the next one not
        original = ReadingStore._merge_partition
        calls = {"n": 0}

        def fail(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2 and not fired["fired"]:
                fired["fired"] = 1
                raise Injected("killed mid-append")
            return original(self, *args, **kwargs)
        monkeypatch.setattr(ReadingStore, "_merge_partition", fail)
    return fired


FAILURES = ["record_validation", "save_registers", "second_partition"]


def _expected_b(feed):
    # Three meters, 48 readings each: every one an interval (the state chains from A).
    return (144, 144, 0, 144)


@pytest.mark.parametrize("feed, where", [(feed, where) for feed in ("interval", "cumulative", "pull")
                                         for where in FAILURES
                                         # only a cumulative feed saves a register state
                                         if where != "save_registers" or feed == "cumulative"])
def test_a_batch_run_again_after_a_failure_ends_as_a_clean_run(database_url, app_env, tmp_path, monkeypatch,
                                                               feed, where):
    from sibifang.readings_store import ReadingStore

    _seed(database_url)
    store = ReadingStore(app_env / "data" / "readings")
    a = _ingest(database_url, feed, A, "batch-a")
    assert a["read"] == 72
    fired = _inject(monkeypatch, where)
    with pytest.raises(Injected):
        _ingest(database_url, feed, B, "batch-b")
    assert fired["fired"]
    monkeypatch.undo()
    again = _ingest(database_url, feed, B, "batch-b")
    assert (again["read"], again["accepted"], again["quarantined"], again["new"]) == _expected_b(feed)
    after_rerun = _state(database_url, store)
    assert [row[:5] for row in after_rerun["ledger"] if row[0] == "batch-b"] == [("batch-b", *_expected_b(feed))]
    # Once more: already in the ledger, nothing changes.
    assert _ingest(database_url, feed, B, "batch-b")["read"] == 0
    assert _state(database_url, store) == after_rerun

    # The same two batches, clean, into a fresh store and database: the same everything.
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    _seed(clean_url)
    monkeypatch.setenv("SIBIFANG_DATA_DIR", str(tmp_path / "clean-data"))
    from sibifang.settings import reset_settings
    reset_settings()
    clean_store = ReadingStore(tmp_path / "clean-data" / "readings")
    _ingest(clean_url, feed, A, "batch-a")
    _ingest(clean_url, feed, B, "batch-b")
    assert after_rerun == _state(clean_url, clean_store)
    assert len(after_rerun["store"]["ts"]) == 3 * (24 + 48) - (3 if feed == "cumulative" else 0)
    # Nothing of the failed attempt is left behind.
    assert not list((app_env / "data" / "readings" / "_batches").glob("*"))


@pytest.fixture
def inbox_this_morning(prefect_harness, database_url, app_env, monkeypatch):
    """The readings inbox of a seeded database (meters M1-M3), the clock at 2026-11-20 08:00."""
    import flows.ingest_readings as ingest_flow
    import sibifang.settings as settings_module
    from tests.test_inbox_rejects import inbox, use_database

    morning = datetime(2026, 11, 20, 8, 0)
    monkeypatch.setattr(settings_module, "local_now", lambda: morning)
    monkeypatch.setattr(ingest_flow, "local_now", lambda: morning, raising=False)
    monkeypatch.delenv("SIBIFANG_METER_API_URL", raising=False)
    use_database(monkeypatch, database_url)
    _seed(database_url)
    return inbox(app_env, "readings")


def _write(path, feed, which):
    frame = _frame(feed, *which).drop(columns="line")
    path.write_text(frame.to_csv(index=False), encoding="utf-8")


@pytest.mark.parametrize("feed", ["interval", "cumulative"])
def test_a_prefect_retry_of_the_file_task_ends_as_a_clean_run(inbox_this_morning, database_url,
                                                              monkeypatch, feed):
    """ingest_reading_file has retries=2: the retry used to find the readings (and a cumulative
    feed's register state) the failed attempt left, and booked them as not new (or baselines)."""
    import sibifang.import_registry as registry
    from flows.ingest_readings import ingest_readings
    from tasks.ingest_readings import ingest_file_task

    readings = inbox_this_morning
    day_a = ("2026-11-19 12:15", "2026-11-19 18:00", 0)
    day_b = ("2026-11-19 18:15", "2026-11-20 06:00", 24)
    _write(readings / "a.csv", feed, day_a)
    first = ingest_readings(inbox=str(readings.parent))
    assert first["read"] == 72 and first["failed"] == 0
    _write(readings / "b.csv", feed, day_b)
    original, calls = registry.record_validation, {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Injected("database connection lost")
        return original(*args, **kwargs)
    monkeypatch.setattr(registry, "record_validation", fail_once)
    monkeypatch.setattr(ingest_file_task, "retry_delay_seconds", 0)  # the task's own retries, without the wait
    result = ingest_readings(inbox=str(readings.parent))
    assert calls["n"] == 2  # failed once, retried by Prefect
    assert (result["files"], result["read"], result["accepted"], result["quarantined"], result["new"],
            result["failed"]) == (1, 144, 144, 0, 144, 0)
    from schemas.models import QuarantinedRow, ReadingBatch
    from sibifang.db import session_scope
    with session_scope(database_url) as s:
        ledger = sorted(s.execute(select(ReadingBatch.source, ReadingBatch.rows_read, ReadingBatch.rows_accepted,
                                         ReadingBatch.rows_quarantined, ReadingBatch.rows_new)).tuples())
        quarantined = s.scalar(select(QuarantinedRow.id).where(QuarantinedRow.source == "b.csv").limit(1))
    expected_a = (72, 69, 3, 69) if feed == "cumulative" else (72, 72, 0, 72)
    assert ledger == [("a.csv", *expected_a), ("b.csv", 144, 144, 0, 144)]
    assert quarantined is None


def test_a_pull_retried_after_a_failure_books_the_readings_the_failed_attempt_stored(database_url, app_env,
                                                                                  monkeypatch):
    """A retry of pull_meter_api resumes after the readings the failed attempt stored (the
    store's last readings moved on): it never saw them again, so no ledger row ever counted
    them. The retry now finishes the failed pull first, from the readings it kept."""
    import sibifang.import_registry as registry
    import sibifang.settings as settings_module
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task
    from tests.test_inbox_rejects import use_database
    from tests.test_meter_api import TOKEN, FakeMeterApi

    _seed(database_url)
    use_database(monkeypatch, database_url)
    monkeypatch.setattr(settings_module, "local_now", lambda: datetime(2026, 11, 20, 12, 0))
    r = lambda m, hm, k: {"meter_id": m, "ts": f"2026-11-20T{hm}:00+08:00", "kwh": k}  # noqa: E731
    first = [r("M1", "08:15", .1), r("M2", "08:15", .2), r("M1", "08:30", .3), r("X9", "08:30", .1)]
    later = [r("M1", "08:45", .4), r("M2", "08:45", .5)]
    with FakeMeterApi() as api:
        monkeypatch.setenv("SIBIFANG_METER_API_URL", api.url)
        monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN)
        from sibifang.settings import reset_settings
        reset_settings()
        api.pages = {None: {"readings": first, "next_page_token": None}}
        original = registry.record_validation

        def fail(*args, **kwargs):
            raise Injected("database connection lost")
        monkeypatch.setattr(registry, "record_validation", fail)
        with pytest.raises(Injected):
            pull_api_task.fn()
        monkeypatch.setattr(registry, "record_validation", original)
        # The retry: the API has more by now, and the pull resumes after what is stored.
        api.pages = {None: {"readings": [r("M1", "08:30", .3), r("M2", "08:15", .2), *later],
                            "next_page_token": None}}
        out = pull_api_task.fn()
        again = pull_api_task.fn()  # and again: nothing new
    store = ReadingStore(app_env / "data" / "readings")
    from schemas.models import ReadingBatch
    from sibifang.db import session_scope
    with session_scope(database_url) as s:
        ledger = sorted(s.execute(select(ReadingBatch.rows_read, ReadingBatch.rows_accepted,
                                         ReadingBatch.rows_quarantined, ReadingBatch.rows_new)).tuples())
    # The failed pull as a clean run books it (X9 unknown: quarantined), then the two new ones.
    assert ledger == [(2, 2, 0, 2), (4, 3, 1, 3)]
    assert sum(row[3] for row in ledger) == len(store.load()) == 5
    assert (out["read"], out["accepted"], out["quarantined"], out["new"]) == (6, 5, 1, 5)
    assert store.unfinished_pulls() == []
    assert again["read"] == 0


def test_a_pull_journal_keeps_the_readings_exactly_as_sent(tmp_path):
    """What a retry ingests is what was pulled: ids as numbers or text, nulls, odd values."""
    from sibifang.readings_store import BatchJournal

    frame = pd.DataFrame({"meter_id": [3302810001, "3302810002", None, 12.5, True, {"x": 1}],
                          "ts": ["2026-11-20T08:15:00+08:00", None, "", "later", 1763597700, [1, 2]],
                          "kwh": [0.1, "0.2", None, 1e-17, 2**70, -0.0]}, dtype=object)
    frame.insert(0, "line", range(1, len(frame) + 1))
    journal = BatchJournal(tmp_path / "j")
    journal.begin(stored=np.zeros(len(frame), dtype=bool), pull={"batch_id": "api-x", "source": "meter-api",
                                                                  "readings": frame})
    batch_id, source, kept = journal.pull()
    assert (batch_id, source) == ("api-x", "meter-api")
    assert kept["line"].dtype == frame["line"].dtype and list(kept.columns) == list(frame.columns)
    for col in ("meter_id", "ts", "kwh"):
        assert [(type(v), v) for v in kept[col]] == [(type(v), v) for v in frame[col]], col


def _r(meter, hm, kwh):
    return {"meter_id": meter, "ts": f"2026-11-20T{hm}:00+08:00", "kwh": kwh}


@pytest.fixture
def meter_api(database_url, app_env, monkeypatch):
    """The fake meter platform, the settings pointing at it and a seeded database (M1-M3)."""
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


def _ledger(url):
    from schemas.models import ReadingBatch
    from sibifang.db import session_scope

    with session_scope(url) as s:
        return sorted(s.execute(select(ReadingBatch.rows_read, ReadingBatch.rows_accepted,
                                       ReadingBatch.rows_quarantined, ReadingBatch.rows_new)).tuples())


def test_two_pulls_at_once_do_not_both_ingest_the_same_readings(meter_api, database_url, app_env, monkeypatch):
    """The scheduled pull and a supervisor's pull by hand: the second pulled (and stored) while
    the first was between finding what the store held and storing, so the first then read,
    accepted and booked again what the second had just booked. Pulls are now one at a time:
    the second finds the first running and leaves the API to it."""
    import threading

    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    api = meter_api
    api.pages = {None: {"readings": [_r("M1", "08:15", .1), _r("M2", "08:15", .2), _r("M1", "08:30", .3)],
                        "next_page_token": None}}
    first_storing, second_done = threading.Event(), threading.Event()
    original = ReadingStore.append

    def append(self, *args, **kwargs):
        if threading.current_thread().name == "scheduled" and not first_storing.is_set():
            # The scheduled pull has found what the store holds and is about to store: the
            # supervisor's pull runs now, to its end (or its skip), before it goes on.
            first_storing.set()
            assert second_done.wait(60), "the second pull never ended"
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ReadingStore, "append", append)
    results, errors = {}, []

    def pull(name):
        try:
            results[name] = pull_api_task.fn()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append((name, e))
        finally:
            if name == "by hand":
                second_done.set()

    scheduled = threading.Thread(target=pull, args=("scheduled",), name="scheduled")
    scheduled.start()
    assert first_storing.wait(60)
    requests_before = len(api.requests)
    # Meanwhile the platform has one more reading.
    api.pages = {None: {"readings": [*api.pages[None]["readings"], _r("M1", "08:45", .4)],
                        "next_page_token": None}}
    pull("by hand")
    scheduled.join()
    assert errors == []
    assert results["by hand"]["busy"] and results["by hand"]["read"] == 0
    assert len(api.requests) == requests_before  # it did not call the platform
    assert (results["scheduled"]["read"], results["scheduled"]["new"]) == (3, 3)
    assert _ledger(database_url) == [(3, 3, 0, 3)]
    # The next pull takes what the platform added meanwhile.
    later = pull_api_task.fn()
    assert (later["read"], later["new"], later["already_ingested"]) == (1, 1, 3)
    store = ReadingStore(app_env / "data" / "readings")
    assert sum(row[0] for row in _ledger(database_url)) == sum(row[3] for row in _ledger(database_url)) \
        == len(store.load()) == 4


@pytest.mark.parametrize("failure", ["handover", "error"])
def test_a_pull_that_never_finishes_is_set_aside_and_later_pulls_go_on(meter_api, database_url, app_env,
                                                                       monkeypatch, caplog, failure):
    """A pull failed after storing its readings; its kept readings now fail every attempt to
    finish them (they fail the hand-over check, or ingesting them raises). Every later pull
    finished that journal first and failed with it: no new reading was ever ingested again.
    After PULL_FINISH_ATTEMPTS failed attempts the journal is set aside (readings kept, a failed
    validation run and an error line say so) and the pull goes on; put back once mended, the
    next pull finishes it as a clean run."""
    import logging

    import sibifang.import_registry as registry
    import sibifang.ingest_readings as cleaning
    import tasks.ingest_readings as ingest_tasks
    from schemas.models import ValidationRun
    from schemas.validation import DataContractError
    from sibifang.db import session_scope
    from sibifang.readings_store import PULL_FINISH_ATTEMPTS, ReadingStore
    from tasks.ingest_readings import pull_api_task
    from tests.test_meter_api import TOKEN

    api = meter_api
    store = ReadingStore(app_env / "data" / "readings")
    first = [_r("M1", "08:15", .1), _r("M2", "08:15", .2), _r("M1", "08:30", .3)]
    api.pages = {None: {"readings": first, "next_page_token": None}}
    original_record = registry.record_validation

    def lost(*args, **kwargs):
        raise Injected("database connection lost")
    monkeypatch.setattr(registry, "record_validation", lost)
    with pytest.raises(Injected):
        pull_api_task.fn()
    monkeypatch.setattr(registry, "record_validation", original_record)
    [journal] = store.unfinished_pulls()
    batch_id = journal.info()["batch_id"]

    # From now on M2's kept readings fail: the hand-over contract rejects them, or cleaning raises.
    if failure == "handover":
        original, expected = ingest_tasks._check_handover, DataContractError

        def check(acc, *args, **kwargs):
            if (acc["meter_id"].astype(str) == "M2").any():
                raise DataContractError("meter-api", ["kwh: bound failed"], message_zh="未通过入库检查")
            return original(acc, *args, **kwargs)
        monkeypatch.setattr(ingest_tasks, "_check_handover", check)
    else:
        original, expected = cleaning.clean_readings, KeyError

        def clean(raw, *args, **kwargs):
            if (raw["meter_id"].astype(str) == "M2").any():
                raise KeyError("interval of M2")
            return original(raw, *args, **kwargs)
        monkeypatch.setattr(cleaning, "clean_readings", clean)
    api.pages = {None: {"readings": [*first, _r("M1", "08:45", .4)], "next_page_token": None}}
    for attempt in range(1, PULL_FINISH_ATTEMPTS):
        with pytest.raises(expected):  # loud, as before, and nothing new is pulled
            pull_api_task.fn()
        assert journal.info()["attempts"] == attempt
    assert _ledger(database_url) == [] and len(store.load()) == 3

    caplog.set_level(logging.INFO)
    out = pull_api_task.fn()
    # The new reading is in; the stuck pull is set aside whole, with its readings.
    assert (out["read"], out["accepted"], out["new"], out["already_ingested"]) == (1, 1, 1, 3)
    assert [(s["batch"], s["attempts"]) for s in out["set_aside"]] == [(batch_id, PULL_FINISH_ATTEMPTS)]
    assert _ledger(database_url) == [(1, 1, 0, 1)] and len(store.load()) == 4
    assert store.unfinished_pulls() == []
    [aside] = store.set_aside_pulls()
    assert aside.info()["attempts"] == PULL_FINISH_ATTEMPTS
    kept = pd.read_csv(aside.directory / "readings.csv")
    assert kept["meter_id"].tolist() == ["M1", "M2", "M1"]
    with session_scope(database_url) as s:
        [run] = s.scalars(select(ValidationRun).where(ValidationRun.stage == "ingest_readings",
                                                      ValidationRun.success.is_(False))).all()
        assert run.source == "meter-api" and batch_id in run.failures[0] and "set aside" in run.failures[0]
        assert "已暂存" in run.failures[1] and "sibifang pulls --resume" in run.failures[1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and batch_id in errors[0].getMessage() and "set aside" in errors[0].getMessage()
    assert TOKEN not in caplog.text
    # Later pulls no longer stumble on it.
    assert pull_api_task.fn()["read"] == 0

    # Mended, the operator puts it back: the next pull finishes it as a clean run would.
    monkeypatch.setattr(ingest_tasks if failure == "handover" else cleaning,
                        "_check_handover" if failure == "handover" else "clean_readings", original)
    from typer.testing import CliRunner

    from sibifang.cli import app
    listed = CliRunner().invoke(app, ["pulls"], catch_exceptions=False)
    assert listed.exit_code == 0 and batch_id in listed.output and "失败 3 次" in listed.output
    assert CliRunner().invoke(app, ["pulls", "--resume", "api-nosuchbatch"]).exit_code == 1
    resumed = CliRunner().invoke(app, ["pulls", "--resume", batch_id], catch_exceptions=False)
    assert resumed.exit_code == 0 and "已放回" in resumed.output
    assert store.set_aside_pulls() == [] and len(store.unfinished_pulls()) == 1
    done = pull_api_task.fn()
    assert (done["read"], done["accepted"], done["new"]) == (3, 3, 3)
    assert _ledger(database_url) == [(1, 1, 0, 1), (3, 3, 0, 3)]
    assert sum(row[3] for row in _ledger(database_url)) == len(store.load()) == 4
    assert store.unfinished_pulls() == [] and store.set_aside_pulls() == []


def test_a_file_batch_never_run_again_is_listed_for_the_operator(database_url, app_env, monkeypatch):
    """A file batch that failed after writing the store leaves its journal until the same file
    is ingested again; a file taken out of the inbox never is, and nothing showed that the store
    holds readings no ledger row counts. `sibifang pulls` lists it (and deletes nothing)."""
    from typer.testing import CliRunner

    from sibifang.cli import app
    from sibifang.readings_store import ReadingStore

    _seed(database_url)
    store = ReadingStore(app_env / "data" / "readings")
    _inject(monkeypatch, "record_validation")
    with pytest.raises(Injected):
        _ingest(database_url, "interval", A, "file-0123abcd")
    monkeypatch.undo()
    monkeypatch.setenv("SIBIFANG_DATA_DIR", str(app_env / "data"))
    from sibifang.settings import reset_settings
    reset_settings()
    [journal] = store.unfinished_files()
    assert store.unfinished_pulls() == []
    assert (journal.info()["batch_id"], journal.info()["source"]) == ("file-0123abcd", "file-0123abcd.csv")
    listed = CliRunner().invoke(app, ["pulls"], catch_exceptions=False)
    assert "未记账的读数文件批次：1" in listed.output and "file-0123abcd.csv" in listed.output
    assert journal.exists()
    # The same file again finishes it: nothing is listed any more.
    assert _ingest(database_url, "interval", A, "file-0123abcd")["read"] == 72
    assert store.unfinished_files() == []


# ---------------------------------------------------------------- a file and a pull at once

def _registers(*rows):
    """A cumulative readings file's frame: (meter, hh:mm, register kWh) on 2026-11-20."""
    frame = pd.DataFrame([(m, f"2026-11-20 {hm}", f"{value:.3f}") for m, hm, value in rows],
                         columns=["meter_id", "ts", "register_kwh"])
    frame.insert(0, "line", np.arange(2, len(frame) + 2))
    return frame


def _api_registers(*rows):
    return [{"meter_id": m, "ts": f"2026-11-20T{hm}:00+08:00", "register_kwh": value} for m, hm, value in rows]


def _file(url, name, frame):
    from tasks.ingest_readings import ingest_frame

    return ingest_frame(frame, source=f"{name}.csv", batch_id=f"file-{name}", database_url=url)


def _pause_in_append(monkeypatch, thread_name, go_on):
    """``ReadingStore.append`` of the thread ``thread_name`` stops once, cleaned and about to
    store, until ``go_on`` is set; returns the event set when it stopped."""
    import threading

    from sibifang.readings_store import ReadingStore

    storing, original = threading.Event(), ReadingStore.append

    def append(self, *args, **kwargs):
        if threading.current_thread().name == thread_name and not storing.is_set():
            storing.set()
            assert go_on.wait(60), "the other batch never ended nor waited"
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ReadingStore, "append", append)
    return storing


def _run_in_thread(name, target, results, errors):
    import threading

    def run():
        try:
            results[name] = target()
        except Exception as e:  # noqa: BLE001 - reported by the assertions
            errors.append((name, e))
    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def _one_meter_five_intervals(url, store):
    """M1's register from 08:00 (100.0) to 09:15 (100.5), a file and a pull each bringing half
    an hour of it after the first file: five intervals of 0.1 kWh, one baseline, nothing else."""
    from schemas.models import QuarantinedRow
    from sibifang.db import session_scope

    ledger = _ledger(url)
    assert ledger == [(2, 1, 1, 1), (2, 2, 0, 2), (2, 2, 0, 2)]
    assert all(read == accepted + quarantined for read, accepted, quarantined, _ in ledger)
    with session_scope(url) as s:
        codes = s.scalars(select(QuarantinedRow.code).where(QuarantinedRow.kind == "ingest_readings")).all()
    assert codes == ["register_baseline"]
    stored = store.load()
    assert stored["ts"].dt.strftime("%H:%M").tolist() == ["08:15", "08:30", "08:45", "09:00", "09:15"]
    assert np.allclose(stored["kwh"], 0.1, atol=1e-4)
    assert sum(row[3] for row in ledger) == len(stored)
    state = store.last_registers()
    assert (state["ts"].dt.strftime("%H:%M").tolist(), state["register_kwh"].tolist()) == (["09:15"], [100.5])
    assert store.unfinished_pulls() == [] and store.unfinished_files() == []


def test_a_pull_while_a_file_is_ingested_waits_its_turn(meter_api, database_url, app_env, monkeypatch):
    """A readings file of a cumulative meter was cleaned against the register state (08:15) and
    was about to store when a pull of the same meter's later readings ran to its end: the pull
    differenced 09:00 against 08:15 too (a 45-minute gap, set aside as register_gap) and the
    file then stored readings in between. A pull now finds the store held by the file and is
    skipped; the next pull continues from the file's last reading."""
    import threading

    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    _file(database_url, "a", _registers(("M1", "08:00", 100.0), ("M1", "08:15", 100.1)))
    meter_api.pages = {None: {"readings": _api_registers(("M1", "09:00", 100.4), ("M1", "09:15", 100.5)),
                              "next_page_token": None}}
    pull_done = threading.Event()
    file_storing = _pause_in_append(monkeypatch, "file", pull_done)
    results, errors = {}, []
    file = _run_in_thread("file", lambda: _file(database_url, "b", _registers(("M1", "08:30", 100.2),
                                                                               ("M1", "08:45", 100.3))),
                          results, errors)
    assert file_storing.wait(60)
    requests_before = len(meter_api.requests)
    try:
        during = pull_api_task.fn()
    finally:
        pull_done.set()
        file.join()
    assert errors == []
    assert during.get("busy") and during["read"] == 0 and len(meter_api.requests) == requests_before
    assert (results["file"]["read"], results["file"]["accepted"]) == (2, 2)
    after = pull_api_task.fn()
    assert (after["read"], after["accepted"], after["quarantined"], after["new"]) == (2, 2, 0, 2)
    _one_meter_five_intervals(database_url, store)


def test_a_file_ingested_while_a_pull_runs_waits_for_it(meter_api, database_url, app_env, monkeypatch):
    """The other way round: a pull was about to store M1's readings to 08:45 when a file of its
    readings from 09:00 was cleaned against the state the pull had not yet moved on (08:15),
    and lost its first interval as a register_gap. The file now waits for the pull (a dropped
    file must not be skipped), says in the log which lock it waits for, and continues from it."""
    import logging
    import threading

    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    _file(database_url, "a", _registers(("M1", "08:00", 100.0), ("M1", "08:15", 100.1)))
    meter_api.pages = {None: {"readings": _api_registers(("M1", "08:30", 100.2), ("M1", "08:45", 100.3)),
                              "next_page_token": None}}
    # The pull goes on once the file has ended (before the fix) or is waiting (said in the log).
    file_ended_or_waiting = threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting" in record.getMessage():
                self.message = record.getMessage()
                file_ended_or_waiting.set()
    waiting = Waiting(level=logging.INFO)
    store_log = logging.getLogger("sibifang.readings_store")
    level = store_log.level
    store_log.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the logger's cache
    store_log.addHandler(waiting)
    pull_storing = _pause_in_append(monkeypatch, "pull", file_ended_or_waiting)
    results, errors = {}, []
    try:
        pull = _run_in_thread("pull", pull_api_task.fn, results, errors)
        assert pull_storing.wait(60)

        def file_batch():
            try:
                return _file(database_url, "b", _registers(("M1", "09:00", 100.4), ("M1", "09:15", 100.5)))
            finally:
                file_ended_or_waiting.set()
        file = _run_in_thread("file", file_batch, results, errors)
        pull.join()
        file.join()
    finally:
        store_log.removeHandler(waiting)
        store_log.setLevel(level)
    assert errors == []
    assert (results["pull"]["read"], results["pull"]["accepted"]) == (2, 2)
    assert (results["file"]["read"], results["file"]["accepted"], results["file"]["quarantined"]) == (2, 2, 0)
    assert str(store.root / ".ingest.lock") in waiting.message
    _one_meter_five_intervals(database_url, store)


def test_a_file_that_waits_too_long_for_the_store_fails_naming_the_lock(database_url, app_env, monkeypatch):
    """Past ``readings_lock_timeout_seconds`` the file batch stops, changing nothing, with an
    error that names the lock (its file stays in the inbox for the next run)."""
    import threading

    from sibifang.readings_store import ReadingStore, StoreBusy
    from sibifang.settings import reset_settings

    _seed(database_url)
    monkeypatch.setenv("SIBIFANG_READINGS_LOCK_TIMEOUT_SECONDS", "0")
    reset_settings()
    store = ReadingStore(app_env / "data" / "readings")
    held, release, errors = threading.Event(), threading.Event(), []

    def a_pull():
        try:
            with store.claim_pulls() as mine:
                assert mine
                held.set()
                assert release.wait(60)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            held.set()
    holder = threading.Thread(target=a_pull)
    holder.start()
    try:
        assert held.wait(60)
        with pytest.raises(StoreBusy, match=r"\.ingest\.lock"):
            _ingest(database_url, "interval", A, "batch-a")
    finally:
        release.set()
        holder.join()
    assert errors == []
    assert _ledger(database_url) == [] and store.load().empty and store.unfinished_files() == []
    assert _ingest(database_url, "interval", A, "batch-a")["read"] == 72  # free again: ingested


def test_a_set_aside_pull_is_not_put_back_while_a_batch_holds_the_store(database_url, app_env, monkeypatch):
    """``sibifang pulls --resume`` moves a journal into the store's unfinished ones: while a
    pull runs (of the same readings, it could be writing that very journal) it is refused."""
    import threading

    from typer.testing import CliRunner

    from sibifang.cli import app
    from sibifang.readings_store import BatchJournal, ReadingStore

    store = ReadingStore(app_env / "data" / "readings")
    frame = _frame("interval", *A)
    journal = BatchJournal(store.batch_journal("api-aside").directory)
    journal.begin(stored=np.zeros(len(frame), dtype=bool),
                  pull={"batch_id": "api-aside", "source": "meter-api", "readings": frame},
                  batch={"batch_id": "api-aside", "source": "meter-api"})
    journal.set_aside(store.root)
    held, release = threading.Event(), threading.Event()

    def a_pull():
        with store.claim_pulls():
            held.set()
            release.wait(60)
    holder = threading.Thread(target=a_pull)
    holder.start()
    try:
        assert held.wait(60)
        refused = CliRunner().invoke(app, ["pulls", "--resume", "api-aside"])
    finally:
        release.set()
        holder.join()
    assert refused.exit_code == 1 and ".ingest.lock" in refused.output
    assert len(store.set_aside_pulls()) == 1 and store.unfinished_pulls() == []
    resumed = CliRunner().invoke(app, ["pulls", "--resume", "api-aside"], catch_exceptions=False)
    assert resumed.exit_code == 0 and len(store.unfinished_pulls()) == 1


# ------------------------------------------------------- attempts to finish a pull, per run

def test_failed_attempts_to_finish_a_pull_count_runs_not_retries(tmp_path):
    """Prefect's retries of one run (5, 30, 120 s) are one attempt: a blip of the disk or the
    database within one run must not use up the attempts and set a good pull aside."""
    from sibifang.readings_store import BatchJournal, count_failed_attempt

    assert count_failed_attempt({}, "disk", "run-1") == {"attempts": 1, "runs": ["run-1"], "last_error": "disk"}
    once = count_failed_attempt({"attempts": 1, "runs": ["run-1"]}, "disk again", "run-1")
    assert once == {"attempts": 1, "runs": ["run-1"], "last_error": "disk again"}
    assert count_failed_attempt(once, "db", "run-2")["attempts"] == 2
    # A plain call (no run) is a run of its own; so is an older journal's count without runs.
    assert count_failed_attempt({"attempts": 2}, "x", None) == {"attempts": 3, "runs": [], "last_error": "x"}
    assert count_failed_attempt({"attempts": 2}, "x", "run-9")["attempts"] == 3

    frame = _frame("interval", *A)
    journal = BatchJournal(tmp_path / "j")
    journal.begin(pull={"batch_id": "api-x", "source": "meter-api", "readings": frame})
    assert [journal.failed_attempt(f"try {n}", "run-1") for n in range(4)] == [1, 1, 1, 1]
    assert journal.failed_attempt("next run", "run-2") == 2
    assert (journal.info()["attempts"], journal.info()["last_error"]) == (2, "next run")


def test_a_pull_failing_through_its_retries_in_one_run_is_not_set_aside(prefect_harness, meter_api, database_url,
                                                                        app_env, monkeypatch):
    """The database was lost for the length of one run's retries (the pull stored its readings,
    then every attempt to book them failed): the third retry used to count as the third attempt
    and set the pull aside (its readings then in no ledger row until an operator put it back).
    Now the run fails, as a run whose database is gone should; the next run books the pull."""
    from datetime import date

    import sibifang.import_registry as registry
    from flows.ingest_readings import ingest_readings
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    meter_api.pages = {None: {"readings": [_r("M1", "08:15", .1), _r("M2", "08:15", .2), _r("M1", "08:30", .3)],
                              "next_page_token": None}}
    original, calls = registry.record_validation, {"n": 0}
    tries = 1 + pull_api_task.retries

    def lost(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= tries:  # every try of this run, then back
            raise Injected("database connection lost")
        return original(*args, **kwargs)
    monkeypatch.setattr(registry, "record_validation", lost)
    monkeypatch.setattr(pull_api_task, "retry_delay_seconds", 0)  # the task's own retries, without the wait
    inbox = str(app_env / "data" / "inbox")
    first = ingest_readings(as_of=date(2026, 11, 20), inbox=inbox, return_state=True)
    assert calls["n"] == tries  # tried and retried, each time in vain
    assert first.is_failed()
    assert store.set_aside_pulls() == []
    [journal] = store.unfinished_pulls()
    assert journal.info()["attempts"] == 1
    assert _ledger(database_url) == []

    second = ingest_readings(as_of=date(2026, 11, 20), inbox=inbox)
    assert second["pulls_set_aside"] == []
    assert (second["read"], second["accepted"], second["new"]) == (3, 3, 3)
    assert _ledger(database_url) == [(3, 3, 0, 3)] and len(store.load()) == 3
    assert store.unfinished_pulls() == [] and store.set_aside_pulls() == []


def test_a_pull_of_the_same_readings_as_a_set_aside_one_books_under_its_own_batch(meter_api, database_url,
                                                                                  app_env, monkeypatch):
    """A pull's batch is named by what it pulled. A pull failed after storing M1's and M2's
    readings and kept failing on M2 until it was set aside; the platform, quiet meanwhile, sent
    the very same readings to the next pull, which found M1 and M2 stored and booked only X9
    (unknown meter) -- under the set-aside pull's batch id. Put back, the set-aside pull then
    looked booked already: it was discarded, and the store kept readings no ledger row counts."""
    import sibifang.import_registry as registry
    import tasks.ingest_readings as ingest_tasks
    from schemas.validation import DataContractError
    from sibifang.readings_store import PULL_FINISH_ATTEMPTS, ReadingStore
    from tasks.ingest_readings import pull_api_task

    store = ReadingStore(app_env / "data" / "readings")
    meter_api.pages = {None: {"readings": [_r("M1", "08:15", .1), _r("M2", "08:15", .2), _r("X9", "08:15", .1)],
                              "next_page_token": None}}
    original_record = registry.record_validation

    def lost(*args, **kwargs):
        raise Injected("database connection lost")
    monkeypatch.setattr(registry, "record_validation", lost)
    with pytest.raises(Injected):
        pull_api_task.fn()
    monkeypatch.setattr(registry, "record_validation", original_record)
    [journal] = store.unfinished_pulls()
    batch_id = journal.info()["batch_id"]
    original_check = ingest_tasks._check_handover

    def check(acc, *args, **kwargs):
        if (acc["meter_id"].astype(str) == "M2").any():
            raise DataContractError("meter-api", ["kwh: bound failed"], message_zh="未通过入库检查")
        return original_check(acc, *args, **kwargs)
    monkeypatch.setattr(ingest_tasks, "_check_handover", check)
    for _ in range(1, PULL_FINISH_ATTEMPTS):
        with pytest.raises(DataContractError):
            pull_api_task.fn()
    out = pull_api_task.fn()  # sets it aside, then pulls the same three readings again
    assert [s["batch"] for s in out["set_aside"]] == [batch_id]
    assert (out["read"], out["quarantined"], out["already_ingested"]) == (1, 1, 2)  # X9; M1 and M2 are stored

    monkeypatch.setattr(ingest_tasks, "_check_handover", original_check)
    store.resume_set_aside(batch_id)
    done = pull_api_task.fn()
    assert (done["read"], done["accepted"], done["new"]) == (2, 2, 2)  # M1, M2; X9 quarantined before
    ledger = _ledger(database_url)
    assert sorted(ledger) == [(1, 0, 1, 0), (2, 2, 0, 2)]
    assert sum(row[3] for row in ledger) == len(store.load()) == 2
    assert store.unfinished_pulls() == [] and store.set_aside_pulls() == []


def test_a_file_booked_just_before_a_crash_is_not_listed_as_unfinished(database_url, app_env, monkeypatch):
    """A file batch committed its ledger row and its run was killed before it removed its
    journal. The next run moves the file to done/ unread (it is booked), and nothing ever
    removed the journal: `sibifang pulls` listed a booked file as readings no ledger row counts."""
    from sibifang.readings_files import read_readings_file
    from sibifang.readings_store import BatchJournal, ReadingStore
    from tasks.ingest_readings import file_batch_id, ingest_frame, pending_reading_files
    from tests.test_inbox_rejects import inbox

    _seed(database_url)
    store = ReadingStore(app_env / "data" / "readings")
    folder = inbox(app_env, "readings")
    path = folder / "a.csv"
    _write(path, "interval", A)
    original = BatchJournal.discard

    def killed(self):
        if self.exists():  # the journal's end, after the ledger commit (not begin's clean-up)
            raise Injected("killed after the ledger commit")
        return original(self)
    monkeypatch.setattr(BatchJournal, "discard", killed)
    with pytest.raises(Injected):
        ingest_frame(read_readings_file(path), source=path.name, batch_id=file_batch_id(path),
                     database_url=database_url)
    monkeypatch.setattr(BatchJournal, "discard", original)
    assert _ledger(database_url) == [(72, 72, 0, 72)] and len(store.unfinished_files()) == 1
    duplicates = []
    assert pending_reading_files(folder.parent, database_url, duplicates=duplicates) == []
    assert [d["file"] for d in duplicates] == ["a.csv"] and not path.exists()
    assert store.unfinished_files() == []
    assert _ledger(database_url) == [(72, 72, 0, 72)] and len(store.load()) == 72


def test_a_file_that_waited_its_full_time_for_the_store_is_not_retried_at_once():
    """The wait for the store was the file's retry: retried by Prefect (twice) it would hold the
    run three times as long. It is left in the inbox for the next run; an I/O error is retried."""
    from prefect.states import Failed

    from schemas.validation import DataContractError
    from sibifang.readings_store import StoreBusy
    from tasks.ingest_readings import retry_file

    assert retry_file(None, None, Failed(data=StoreBusy("data/readings/.ingest.lock stayed held"))) is False
    assert retry_file(None, None, Failed(data=OSError("disk"))) is True
    assert retry_file(None, None, Failed(data=DataContractError("a.csv", ["kwh"], message_zh="未通过"))) is False
