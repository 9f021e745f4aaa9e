"""Tasks of the meter-reading ingestion stage: one task per dropped file or API pull."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from tasks.common import retry_unless_bad_data, run_logger

READING_SUFFIXES = (".csv", ".parquet", ".xlsx")


def file_batch_id(path: Path) -> str:
    from sibifang.importing import content_digest

    return f"file-{content_digest(path)[:24]}"


def pending_reading_files(inbox: Path, database_url: str | None = None,
                          duplicates: list[dict] | None = None) -> list[tuple[Path, str]]:
    """New files in the drop folder with their batch id (content hash), each hashed once.

    Only files that are ready (``sibifang.inbox.ready_files``): one still being copied in waits
    for the next run. Ingested files move to ``readings/done/`` (named
    ``<stem>.<digest8><suffix>``), so a run reads only what arrived since the last one. A file
    whose content is already in the ledger, or is the same as a file before it in this run (a
    copy dropped twice, under another name), is moved to ``done/`` unread, with a note in the
    run's log; ``duplicates`` (if given) receives ``{"file", "batch", "same_as"}`` for each.
    Ingested twice, a cumulative file's first reading would become a baseline the second time,
    contradicting the ledger. The caller holds the folder (``sibifang.inbox.claim``)."""
    from schemas.models import ReadingBatch
    from sibifang.db import session_scope
    from sibifang.inbox import ready_files
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import get_settings

    ready = ready_files(inbox / "readings", READING_SUFFIXES, settle_seconds=get_settings().inbox_settle_seconds)
    if not ready:
        return []
    files = [(p, file_batch_id(p)) for p in ready]
    with session_scope(database_url) as s:
        done = {b.id: b.source for b in s.scalars(select(ReadingBatch).where(
            ReadingBatch.id.in_(sorted({b for _, b in files}))))}
    pending: list[tuple[Path, str]] = []
    first_of: dict[str, str] = {}
    store = ReadingStore(Path(get_settings().data_dir) / "readings")
    for p, batch in files:
        same_as = done.get(batch) or first_of.get(batch)
        if same_as is None:
            first_of[batch] = p.name
            pending.append((p, batch))
            continue
        if batch in done:
            # Booked: a journal of it is what a run killed between its ledger commit and its
            # clean-up left (BatchJournal). Nothing is left to finish, and `sibifang pulls` would
            # list it as readings no ledger row counts. (Anything holding it finds it booked too.)
            store.batch_journal(batch).discard()
        move_to_done(p)
        run_logger().warning("%s：内容与已导入的文件 %s 相同，未重复导入，已移到 done/ (batch %s)",
                             p.name, same_as, batch)
        if duplicates is not None:
            duplicates.append({"file": p.name, "batch": batch, "same_as": same_as})
    return pending


def move_to_done(path: Path) -> Path:
    from tasks.import_registry import move_aside

    return move_aside(path, "done")


def _raw_rows(raw: pd.DataFrame, lines: pd.Series) -> dict[int, dict]:
    """The quarantined lines as the feed gave them (meter, time, value), for the clerk."""
    if not len(lines):
        return {}
    value_col = "kwh" if "kwh" in raw.columns else "register_kwh"
    line_of = raw["line"] if "line" in raw.columns else pd.Series(np.arange(2, len(raw) + 2))
    positions = pd.Index(line_of.to_numpy()).get_indexer(lines.to_numpy())
    out = {}
    for line, pos in zip(lines.tolist(), positions.tolist()):
        if pos < 0 or int(line) in out:
            continue
        row = raw.iloc[pos]
        out[int(line)] = {c: (None if pd.isna(row[c]) else str(row[c]))
                          for c in ("meter_id", "ts", value_col) if c in raw.columns}
    return out


def _quarantine_conflicts(result, raw: pd.DataFrame, positions: np.ndarray, source: str):
    """Accepted rows the store already holds with another value → quarantine
    ``conflicting_duplicate``; returns (accepted, quarantined) without / with them."""
    from sibifang.ingest_readings import STORED_CONFLICT_REASON

    acc = result.accepted
    lines = (result.accepted_lines if result.accepted_lines is not None
             else np.full(len(acc), -1, dtype=np.int64))[positions]
    clashing = acc.iloc[positions]
    extra = pd.DataFrame({
        "source_file": source, "line": lines.astype(np.int64),
        "meter_id": clashing["meter_id"].astype("str").to_numpy(),
        "ts": clashing["ts"].dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
        "field": "kwh", "code": "conflicting_duplicate", "reason": STORED_CONFLICT_REASON,
        "value": clashing["kwh"].astype("str").to_numpy(),
    })
    keep = np.ones(len(acc), dtype=bool)
    keep[positions] = False
    quarantined = pd.concat([result.quarantined, extra.astype(result.quarantined.dtypes.to_dict())],
                            ignore_index=True).sort_values("line", kind="stable", ignore_index=True)
    return acc.loc[keep].reset_index(drop=True), quarantined


def _check_handover(acc: pd.DataFrame, lines: np.ndarray | None, intervals: dict[str, int], cumulative: bool,
                    source: str) -> None:
    """Validate the accepted readings (the readings suite); a critical failure raises a
    DataContractError naming the file's lines and fields as the clerk sees them (the suite
    reports 0-based positions in the accepted, sorted frame)."""
    from schemas.suites import max_kwh_per_reading
    from schemas.validation import DataContractError, validate_frame
    from sibifang.ingest_readings import DEFAULT_INTERVAL_MINUTES

    minutes = acc["meter_id"].map(intervals).astype("float64").fillna(DEFAULT_INTERVAL_MINUTES).to_numpy()
    report = validate_frame(acc.assign(kwh_max=max_kwh_per_reading(minutes, cumulative=cumulative)),
                            "readings", source=source)
    bad = [r for r in report.results if (not r.success and r.severity == "critical") or r.exception]
    if not bad:
        return
    labels = {"meter_id": "电表编号", "ts": "读数时间", "kwh": "用电量", "kwh_max": "用电量"}
    parts_en, parts_zh = [], []
    for r in bad:
        if r.exception:
            parts_en.append(f"{r.column}: {r.expectation} raised: {r.exception}")
            parts_zh.append(f"入库检查 {r.expectation} 出错（{r.exception}），请联系管理员")
            continue
        at = [int(lines[i]) if lines is not None else i + 2 for i in r.unexpected_rows[:5]]
        more = " 等" if r.unexpected_count > len(at) else ""
        field = "kwh" if "kwh" in r.columns else (r.columns[0] if r.columns else "")
        parts_en.append(f"{field}: {r.expectation} failed ({r.unexpected_count} rows, lines {at})")
        parts_zh.append(f"第{'、'.join(map(str, at))}行{more} {field}（{labels.get(field, field)}）列"
                        f"未通过入库检查（{r.unexpected_count} 行）")
    raise DataContractError(source, parts_en, message_zh=f"文件 {source} " + "；".join(parts_zh)
                            + "。整个文件未入库，请核对这些行后重新提交。")


def ingest_frame(raw: pd.DataFrame, *, source: str, batch_id: str, database_url: str | None = None,
                 now: datetime | None = None, as_of: datetime | None = None, pull: bool = False) -> dict:
    """Clean, store and account for one batch of readings (read = accepted + quarantined).

    ``now`` (default: the clock) is when the batch is ingested; ``as_of`` the time it is
    ingested for (a replayed day's end), kept in the ledger. Readings later than ``now`` (plus
    the clock skew) are ``future_ts``, whatever ``as_of``. A cumulative feed continues from
    the register state the store keeps, so its first reading per meter is an interval, not a
    lost baseline.

    A batch already in the ledger (``reading_batches``: the same file, the same pull) is not
    ingested again: the result reads nothing, ``already_ingested`` is what the earlier batch
    read and ``earlier`` its counts. ``pull`` (a meter-API pull, which overlaps earlier pulls):
    rows the store already holds (same meter, time and kWh), and rows an earlier pull quarantined
    for the same reason (same meter id and time as sent), are not read by this batch either;
    ``already_ingested`` counts them. A pull that reads nothing new records nothing.

    The store is written before the ledger row is committed. A batch that failed in between
    (or a Prefect retry of its task) is run again from what its first attempt started from
    (``ReadingStore.batch_journal``): the register state, the readings a pull found stored, and
    per partition the readings new to it; its ledger, quarantine and store end as a clean run's.

    One batch at a time on the store (``ReadingStore.hold_for_batch``): from reading its state to
    the ledger commit. A file waits while a pull (or another file) holds it, up to
    ``readings_lock_timeout_seconds``, then raises ``StoreBusy``; a pull calls this holding the
    store already (``claim_pulls``)."""
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import get_settings

    settings = get_settings()
    store = ReadingStore(Path(settings.data_dir) / "readings")
    with store.hold_for_batch(settings.readings_lock_timeout_seconds):
        return _ingest_frame(raw, source=source, batch_id=batch_id, database_url=database_url, now=now,
                             as_of=as_of, pull=pull)


def _ingest_frame(raw: pd.DataFrame, *, source: str, batch_id: str, database_url: str | None,
                  now: datetime | None, as_of: datetime | None, pull: bool) -> dict:
    """``ingest_frame`` with the store held."""
    from schemas.models import Meter, ReadingBatch
    from sibifang.db import session_scope, upsert
    from sibifang.import_registry import record_validation
    from sibifang.ingest_readings import already_stored, clean_readings, parse_reading_times
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import get_settings, local_now

    settings = get_settings()
    now = now or local_now()
    store = ReadingStore(Path(settings.data_dir) / "readings")
    # What this batch started from, if an earlier attempt of it failed after changing the store
    # (see BatchJournal): the batch runs again from there, as if that attempt had not happened.
    journal = store.batch_journal(batch_id)
    resumed = journal.exists()
    with session_scope(database_url) as s:
        earlier = s.get(ReadingBatch, batch_id)
        if earlier is not None:
            # The same content again (a file dropped or imported twice): ingesting it would
            # turn a register's first reading into a baseline, count its rows again and record
            # a validation run that contradicts the ledger.
            if resumed:
                journal.discard()  # an attempt that failed after its ledger commit
            return _already_in_ledger(earlier, source)
        # Each meter's own interval: an hourly meter's 3 kWh hour is no 15-minute spike, and its
        # next register reading an hour on is no gap.
        intervals = {m: int(n) for m, n in s.execute(select(Meter.id, Meter.interval_minutes)) if n}
        known = set(s.scalars(select(Meter.id)))
    skipped = 0
    fetched_up_to = None
    times = None
    stored = None
    pulled = raw
    if pull and len(raw):
        # The times are read once: the rows the store holds are found with them and the others
        # cleaned with them (they were read twice, 0.6 s a million readings).
        times = parse_reading_times(raw)
        # How far this pull fetched (for the feed's cursor, ``meter_api.save_cursor``): its latest
        # reading not ahead of the clock, read from these times rather than reading them again.
        fetched = times.ts[times.ts.notna() & (times.ts <= pd.Timestamp(now))]
        fetched_up_to = fetched.max() if len(fetched) else None
        # Run again, what the store held before the first attempt: not what that attempt stored.
        stored = journal.stored(len(raw)) if resumed else None
        held_aside = journal.held_at_set_aside(len(raw)) if stored is not None else None
        if held_aside is not None:
            # Set aside and put back: the batches booked meanwhile (a later pull sent the same
            # window) read what this one had not stored; those readings are theirs, read again
            # here they would be accepted twice across the ledger. What the store holds now and
            # did not when this pull was set aside is counted as held before it. Kept in the
            # journal before anything is stored: a re-run of this attempt must not take what it
            # stores now for another batch's.
            held_now = already_stored(raw, store.last_ts(), store.load, interval_minutes=intervals or None,
                                      times=times)
            stored = stored | (held_now & ~held_aside)
            journal.put_back_stored(stored)
        if stored is None:
            stored = already_stored(raw, store.last_ts(), store.load, interval_minutes=intervals or None,
                                    times=times)
        skipped = int(stored.sum())
        raw = raw.loc[~stored].reset_index(drop=True)  # ``line`` stays the position in the pull
        times = times.take(~stored)
    cumulative = "register_kwh" in raw.columns and "kwh" not in raw.columns
    registers = None
    if cumulative:
        # Run again, the state the first attempt started from: the one saved since sits at this
        # batch's last readings, and would make each meter's first reading a baseline.
        registers = journal.registers() if resumed else None
        if registers is None:
            registers = store.last_registers()
    # Future readings are judged against the real clock only (a meter clock ahead of now), never
    # against ``as_of``: a replayed day's run must not set aside the readings of the days after
    # it (the file watcher leaves such a file to their own run, see ingest_file_task).
    result = clean_readings(raw, source=source, known_meters=known, now=now,
                            interval_minutes=intervals or None,
                            # Seconds of meter-clock jitter (10:59:58 for 11:00) moved onto the
                            # meter's grid, as `sibifang detect` and the detectors place them: left
                            # off it, an hour reads empty and the next one doubled.
                            snap_to_grid=True, times=times,
                            last_registers=registers)
    acc, q = result.accepted, result.quarantined
    counts = dict(result.counts)
    if counts["read"] != len(acc) + counts["quarantined"]:
        raise RuntimeError(f"{source}: rows lost in cleaning: read {counts['read']} != "
                           f"{len(acc)} accepted + {counts['quarantined']} quarantined")
    if len(acc):
        # The hand-over contract of what goes into the store (the readings suite), each reading
        # bounded for its own meter's interval as the cleaning bounded it.
        _check_handover(acc, result.accepted_lines, intervals, cumulative, source)
    # From here the batch changes the store, before its ledger row is committed: what it started
    # from is kept until then, and ``rows_new`` counts, per partition, what was new to it the
    # first time this batch wrote it (a re-run finds its own readings stored: same value, so
    # accepted, and new as they were the first time).
    if len(acc) or result.last_registers is not None:
        journal.begin(registers=registers if cumulative else None,
                      stored=stored if pull and stored is not None else None,
                      pull={"batch_id": batch_id, "source": source, "readings": pulled} if pull else None,
                      batch={"batch_id": batch_id, "source": source})
    # Pulls that failed and wait to be finished or put back hold readings this file may bring too:
    # what it stores of theirs is marked theirs to skip once it is booked (below).
    pending_pulls = _pull_readings_held(store, intervals) if not pull and len(acc) else []
    new_rows, clashing = (store.append(acc, return_conflicts=True, count_new=journal.count_new) if len(acc)
                          else (0, np.zeros(0, dtype=np.int64)))
    if result.last_registers is not None:
        # After the readings (saved first, a crash in between would lose the batch's first
        # intervals); a re-run after a failure from here on cleans from the journal's state.
        store.save_registers(result.last_registers)
    if len(clashing):
        # A value that contradicts a stored reading was not stored: it is not "accepted".
        acc, q = _quarantine_conflicts(result, raw, clashing, source)
        counts["conflicting_duplicate"] = counts.get("conflicting_duplicate", 0) + len(clashing)
        counts["accepted"] = len(acc)
        counts["quarantined"] += len(clashing)
    keys = None
    if pull and len(q):
        keys = _reading_keys(q)
        repeat = _quarantined_before(database_url, source, keys, q["code"].to_numpy(dtype=object))
        if repeat.any():
            # Quarantined (and counted) by an earlier pull: not this batch's to read again.
            for code, n in q.loc[repeat, "code"].value_counts().items():
                counts[code] -= int(n)
            counts["read"] -= int(repeat.sum())
            counts["quarantined"] -= int(repeat.sum())
            skipped += int(repeat.sum())
            q, keys = q.loc[~repeat].reset_index(drop=True), keys[~repeat]
    if counts["read"] != len(acc) + counts["quarantined"]:
        raise RuntimeError(f"{source}: rows lost storing readings: read {counts['read']} != "
                           f"{len(acc)} accepted + {counts['quarantined']} quarantined")
    out = {"source": source, "read": int(counts["read"]), "accepted": int(len(acc)),
           "quarantined": int(counts["quarantined"]), "new": int(new_rows), "conflicting": int(len(clashing)),
           "already_ingested": skipped}
    if pull:
        out["fetched_up_to"] = fetched_up_to
    if pull and counts["read"] == 0:
        # Nothing this pull brought was new: a ledger row and a validation run of nothing would
        # only make every quiet pull a change.
        if skipped:
            run_logger().info("%s: %d reading(s) already ingested by earlier pulls; nothing new", source, skipped)
        journal.discard()
        return out
    with session_scope(database_url) as s:
        upsert(s, ReadingBatch, [{
            "id": batch_id, "source": source, "as_of": as_of, "ingested_at": now,
            "rows_read": int(counts["read"]), "rows_accepted": int(len(acc)),
            "rows_quarantined": int(counts["quarantined"]), "rows_new": int(new_rows),
            "first_ts": acc["ts"].min().to_pydatetime() if len(acc) else None,
            "last_ts": acc["ts"].max().to_pydatetime() if len(acc) else None,
        }], key=["id"], update=())
        # Keyed by the batch: two API pulls (same source) or two files of one name never
        # overwrite each other's quarantined rows; the same batch again changes nothing.
        record_validation(s, stage="ingest_readings", suite="readings", source=source,
                          read=int(counts["read"]), accepted=int(len(acc)), quarantined=q,
                          failures=[f"{k}: {v}" for k, v in counts.items()
                                    if k not in ("read", "accepted", "quarantined") and v],
                          success=len(q) == 0, now=now, batch=batch_id,
                          raw_rows=_raw_rows(raw, q["line"]))
        if keys is not None and len(q):
            _set_reading_keys(s, source, batch_id, q, keys)
    journal.discard()  # in the ledger: a re-run stops at the ledger
    if pending_pulls:
        _mark_booked_for_pulls(store, pending_pulls, intervals)
    if len(q):
        run_logger().warning("%s: %d reading(s) quarantined", source, counts["quarantined"])
    if skipped:
        run_logger().info("%s: %d reading(s) already ingested by earlier pulls, not read again", source, skipped)
    return out


def _pull_readings_held(store, intervals: dict[str, int]) -> list[tuple]:  # noqa: ANN001
    """For each pull journal waiting to be finished or put back (``unfinished_pulls``,
    ``set_aside_pulls``): (journal, its readings, which of them the store holds now). Taken by a
    file batch before it stores, with the store held."""
    from sibifang.ingest_readings import already_stored

    found = []
    for journal in [*store.unfinished_pulls(), *store.set_aside_pulls()]:
        try:
            _, _, kept = journal.pull()
            held = already_stored(kept, store.last_ts(), store.load, interval_minutes=intervals or None)
        except Exception as e:  # noqa: BLE001 - a damaged journal must not stop a file
            run_logger().warning("%s: readings of an unfinished pull not compared (%s)", journal.directory.name,
                                 type(e).__name__)
            continue
        found.append((journal, kept, held))
    return found


def _mark_booked_for_pulls(store, pending: list[tuple], intervals: dict[str, int]) -> None:  # noqa: ANN001
    """A file batch is booked: the readings it stored that a waiting pull journal holds too are
    the file's. Finished or put back, that pull started from a store without them and would read
    (and accept) them again: marked held-before in its journal (``BatchJournal.add_stored``).
    After the ledger commit: a file that failed before it books nothing, and its readings stay the
    pull's to read."""
    from sibifang.ingest_readings import already_stored

    for journal, kept, before in pending:
        try:
            now = already_stored(kept, store.last_ts(), store.load, interval_minutes=intervals or None)
            if (now & ~before).any():
                journal.add_stored(now & ~before)
        except Exception as e:  # noqa: BLE001 - the file is booked; say so and go on
            run_logger().warning("%s: readings this file booked not marked in an unfinished pull (%s); "
                                 "that pull may count them again", journal.directory.name, type(e).__name__)


def _already_in_ledger(batch, source: str) -> dict:
    """The result of ingesting a batch the ledger already holds: nothing read now; the earlier
    batch's counts under ``earlier``."""
    run_logger().info("%s: batch %s already ingested at %s; not ingested again", source, batch.id,
                      batch.ingested_at)
    return {"source": source, "read": 0, "accepted": 0, "quarantined": 0, "new": 0, "conflicting": 0,
            "already_ingested": int(batch.rows_read),
            "earlier": {"batch": batch.id, "source": batch.source, "ingested_at": batch.ingested_at,
                        "read": int(batch.rows_read), "accepted": int(batch.rows_accepted),
                        "quarantined": int(batch.rows_quarantined), "new": int(batch.rows_new)}}


def _reading_keys(q: pd.DataFrame) -> np.ndarray:
    """Per quarantined row of a pull: a digest of its meter id and time as sent, and which
    occurrence of that meter, time and code it is in the pull (line order), so that two
    identical rows of one pull stay two rows, and a pull sent again gives the same keys."""
    meter = q["meter_id"].astype("str").where(q["meter_id"].notna(), "")
    ts = q["ts"].astype("str").where(q["ts"].notna(), "")
    occurrence = pd.DataFrame({"m": meter, "t": ts, "c": q["code"]}).groupby(["m", "t", "c"], sort=False).cumcount()
    return np.array([hashlib.sha1(f"{m}\x1f{t}\x1f{n}".encode()).hexdigest()
                     for m, t, n in zip(meter, ts, occurrence)], dtype=object)


def _quarantined_before(database_url: str | None, source: str, keys: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Mask: the (reading key, code) pairs already among the quarantined rows of ``source``."""
    from schemas.models import QuarantinedRow
    from sibifang.db import session_scope
    from sibifang.records import chunks

    seen: set[tuple[str, str]] = set()
    with session_scope(database_url) as s:
        for part in chunks(sorted(set(keys.tolist())), 1000):
            seen.update(s.execute(select(QuarantinedRow.reading_key, QuarantinedRow.code).where(
                QuarantinedRow.kind == "ingest_readings", QuarantinedRow.source == source,
                QuarantinedRow.reading_key.in_(part))).tuples())
    return np.array([(k, c) in seen for k, c in zip(keys.tolist(), codes.tolist())], dtype=bool)


def _set_reading_keys(session, source: str, batch_id: str, q: pd.DataFrame, keys: np.ndarray) -> None:
    """Write each quarantined row's reading key (record_validation keys rows by batch and line).
    Should a concurrent pull have quarantined the same reading meanwhile, the unique key
    (kind, source, reading_key, code) fails this transaction, and the retry skips it."""
    from sqlalchemy import bindparam, update

    from schemas.models import QuarantinedRow

    stmt = (update(QuarantinedRow)
            .where(QuarantinedRow.kind == "ingest_readings", QuarantinedRow.source == source,
                   QuarantinedRow.batch == batch_id, QuarantinedRow.line == bindparam("q_line"),
                   QuarantinedRow.code == bindparam("q_code"))
            .values(reading_key=bindparam("q_key")))
    session.connection().execute(stmt, [{"q_line": int(line), "q_code": str(code), "q_key": str(key)}
                                        for line, code, key in zip(q["line"], q["code"], keys)])


def retry_file(task, task_run, state) -> bool:  # noqa: ANN001
    """Retry I/O failures, not bad data, nor a file that waited for the store its full time
    (``StoreBusy``): the wait was its retry, and another would hold the run as long again; the
    file stays in the inbox for the next run."""
    from sibifang.readings_store import StoreBusy

    try:
        state.result()
    except StoreBusy:
        return False
    except Exception:  # noqa: BLE001
        return retry_unless_bad_data(task, task_run, state)
    return False


@task(name="ingest_reading_file", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_file)
def ingest_file_task(path: str, batch_id: str, database_url: str | None = None, as_of: datetime | None = None) -> dict:
    """Ingest one dropped file and move it to ``done/``. In a replay of a past day (``as_of``
    before the clock), a file holding readings after ``as_of`` (and not ahead of the clock)
    belongs to a later day's run: it is left in the inbox unread, and the result says
    ``deferred`` (how many such readings); taking it now would use it up for that run."""
    from sibifang.ingest_readings import readings_after
    from sibifang.readings_files import read_readings_file, skipped_lines_zh
    from sibifang.settings import local_now

    p = Path(path)
    raw = read_readings_file(p)
    now = local_now()
    later = readings_after(raw, as_of, now) if as_of is not None else 0
    if later:
        run_logger().info("%s：有 %d 条读数晚于 %s，留在收件目录，由之后的运行导入", p.name, later,
                          f"{as_of:%Y-%m-%d %H:%M}")
        return {"source": p.name, "read": 0, "accepted": 0, "quarantined": 0, "new": 0, "conflicting": 0,
                "deferred": later}
    result = ingest_frame(raw, source=p.name, batch_id=batch_id, database_url=database_url, now=now, as_of=as_of)
    note = skipped_lines_zh(raw)  # title lines above the header: not rows read, but named
    if note:
        run_logger().info("%s：%s", p.name, note)
        result = {**result, "header_note": note}
    move_to_done(p)  # in the ledger now: a later run need not read it again
    return result


def retry_pull(task, task_run, state) -> bool:  # noqa: ANN001
    """Retry connection trouble and 5xx; not a 4xx or a malformed answer, nor bad data."""
    from sibifang.meter_api import MeterApiError

    try:
        state.result()
    except MeterApiError as e:
        return bool(e.retryable)
    except Exception:  # noqa: BLE001
        return retry_unless_bad_data(task, task_run, state)
    return False


@task(name="pull_meter_api", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 120],
      retry_condition_fn=retry_pull)
def pull_api_task(database_url: str | None = None, as_of: datetime | None = None) -> dict | None:
    """Pull new readings from the meter platform's paged API, resuming from the last stored one.

    One pull at a time (``ReadingStore.pull_turn``): a pull that finds another one running is
    skipped, and says so (``busy``); so is one that finds a readings file being ingested. The
    running pull fetches everything new up to now from the same resume point (a file ends soon,
    and the next pull resumes after it); waiting would only hold a worker to fetch what arrived
    meanwhile, which the next scheduled pull fetches anyway.

    The store itself (``.ingest.lock``) is held only around what reads or moves its state:
    finishing earlier pulls and reading where to resume, then booking the download. Not during
    the download: a platform paging slowly would hold every dropped file back (up to
    ``readings_lock_timeout_seconds``, then fail it). A file that goes in meanwhile is no
    trouble: the download is booked against the store as it is then (what it holds already is
    not read again, a register continues from the latest state)."""
    from sibifang.meter_api import load_cursor, resume_since
    from sibifang.readings_store import PULL_TURN_LOCK_NAME, ReadingStore
    from sibifang.settings import get_settings

    settings = get_settings()
    if not settings.meter_api_url:
        return None
    store = ReadingStore(Path(settings.data_dir) / "readings")
    busy = {"source": "meter-api", "read": 0, "accepted": 0, "quarantined": 0, "new": 0, "conflicting": 0,
            "already_ingested": 0, "busy": True}
    with store.pull_turn() as turn:
        if not turn:
            run_logger().info("another pull of the meter API holds %s; this pull is skipped (the next pull "
                              "resumes from the store)", store.root / PULL_TURN_LOCK_NAME)
            return busy
        with store.claim_pulls() as mine:
            if not mine:
                run_logger().info("a readings file being ingested (or an older worker's pull) holds %s; this "
                                  "pull is skipped (the next pull resumes from the store)", store.busy_lock)
                return busy
            # A pull that failed after storing readings (this task's earlier attempt, or an earlier
            # run) is finished first, from the readings it kept: pulling resumes after them, so they
            # would never be read again and the ledger would miss what the store holds.
            finished, set_aside = finish_unfinished_pulls(store, database_url, as_of)
            # The earliest last reading, capped a week back, and not before how far this feed's last
            # booked pull fetched (less the late window): a dead meter's week is asked for once.
            since = resume_since(store.last_ts(), fetched_up_to=load_cursor(store.root, settings.meter_api_url))
        return _pull(store, settings, database_url, as_of, since, finished, set_aside)


def _pull(store, settings, database_url: str | None, as_of: datetime | None, since,  # noqa: ANN001
          finished: list[dict], set_aside: list[dict]) -> dict:
    """``pull_api_task`` with its pull turn: download (the store not held), then book."""
    from sibifang.meter_api import fetch_readings, save_cursor

    token = settings.meter_api_token.get_secret_value() if settings.meter_api_token else None
    raw = fetch_readings(settings.meter_api_url, token, since)
    digest = hashlib.sha1(pd.util.hash_pandas_object(raw, index=False).values.tobytes()).hexdigest()
    batch_id = f"api-{digest[:24]}"
    # The store again, waiting as a file does (a file holds it briefly): from here on this pull
    # reads the store's state (what it holds, the register state) and books against it.
    with store.hold_for_batch(settings.readings_lock_timeout_seconds):
        # A pull put back by `sibifang pulls --resume` during the download is finished first, as
        # at the start: booked after this download, whose readings overlap it, it would read again
        # what this one had just read.
        more, aside = finish_unfinished_pulls(store, database_url, as_of)
        finished, set_aside = finished + more, set_aside + aside
        if any(j.info().get("batch_id") == batch_id for j in store.set_aside_pulls()):
            # The very readings of a pull set aside (a platform with nothing new sends the same
            # window again): this pull reads what that one has not booked, under its own batch.
            # Under the set-aside one's id its ledger row would make that pull, once put back, look
            # booked already: discarded, and the readings it stored would be in no ledger row.
            # Repeats are still not read twice (the store and the quarantine say what was read).
            batch_id = f"{batch_id}-{uuid.uuid4().hex[:8]}"
        # ``pull``: what overlaps earlier pulls (the window the lagging meter keeps open) is
        # neither read nor quarantined again; see ingest_frame.
        result = ingest_frame(raw, source="meter-api", batch_id=batch_id, database_url=database_url,
                              as_of=as_of, pull=True)
        # Booked: the next pull need not ask for this window again. Not before (a pull that fails
        # before its ledger row must be fetched again from the store's last readings).
        save_cursor(store.root, settings.meter_api_url, result.pop("fetched_up_to", None))
    for earlier in finished:
        earlier.pop("fetched_up_to", None)
        if "earlier" in earlier:
            continue  # in the ledger already (its attempt failed after the commit): nothing read now
        for key in ("read", "accepted", "quarantined", "new", "conflicting", "already_ingested"):
            result[key] += earlier.get(key, 0)
    if set_aside:
        result["set_aside"] = set_aside
    return result


def finish_unfinished_pulls(store, database_url: str | None, as_of: datetime | None  # noqa: ANN001
                            ) -> tuple[list[dict], list[dict]]:
    """Finish the store's unfinished pull journals, oldest first -> (their results, the pulls
    set aside). A journal that fails to finish raises, as before, until it has failed in
    ``PULL_FINISH_ATTEMPTS`` runs (counted in the journal, one per flow run: Prefect's retries
    within a run are one attempt, see ``count_failed_attempt``); then it is set aside
    (``set_aside_pull``) and the pull goes on. The caller holds the store (``claim_pulls``)."""
    from sibifang.readings_store import PULL_FINISH_ATTEMPTS

    run = _current_run()
    finished, set_aside = [], []
    for journal in store.unfinished_pulls():
        try:
            batch_id, source, kept = journal.pull()
            finished.append(ingest_frame(kept, source=source, batch_id=batch_id, database_url=database_url,
                                         as_of=as_of, pull=True))
        except Exception as error:
            # The error's class and message: a pull's journal holds readings and ids, never the
            # platform's URL or token (the fetch is not part of finishing).
            text = f"{type(error).__name__}: {error}"[:300]
            attempts = journal.failed_attempt(text, run)
            if attempts < PULL_FINISH_ATTEMPTS:
                raise
            set_aside.append(set_aside_pull(store, journal, text, database_url))
    return finished, set_aside


def _held_now(store, raw: pd.DataFrame, database_url: str | None) -> np.ndarray:  # noqa: ANN001
    """Mask of the readings of ``raw`` (a pull as sent) the store holds now."""
    from schemas.models import Meter
    from sibifang.db import session_scope
    from sibifang.ingest_readings import already_stored

    with session_scope(database_url) as s:
        intervals = {m: int(n) for m, n in s.execute(select(Meter.id, Meter.interval_minutes)) if n}
    return already_stored(raw, store.last_ts(), store.load, interval_minutes=intervals or None)


def _current_run() -> str | None:
    """The flow run this task runs in (its retries share it), or the task run when the task was
    called without a flow; None for a plain call (a run of its own)."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run is not None:
        return str(task_run.task_run.flow_run_id or task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return str(flow_run.flow_run.id)
    return None


def set_aside_pull(store, journal, error: str, database_url: str | None) -> dict:  # noqa: ANN001
    """Set a pull journal that keeps failing aside, durably and visibly: a failed validation run
    of the batch (``sibifang pulls`` and the validation records show it), then the journal moved
    whole to ``<store>/_set_aside/`` (readings kept, ``readings.csv`` to read), then an error
    line in the run's log. Recorded first: a pull set aside without a record could go unseen."""
    from sibifang.db import session_scope
    from sibifang.import_registry import record_validation
    from sibifang.settings import local_now

    info = journal.info()
    batch_id = info.get("batch_id") or journal.directory.name
    try:
        # What the store holds of its readings now: what it stored itself (and what it found
        # held). Put back later, the readings other batches stored meanwhile are told from these
        # (see _ingest_frame): they are not this pull's to read again.
        _, _, kept = journal.pull()
        journal.keep_held_at_set_aside(_held_now(store, kept, database_url))
    except Exception as e:  # noqa: BLE001 - a damaged journal is set aside all the same
        run_logger().warning("%s: what the store holds of its readings not recorded (%s)", batch_id,
                             type(e).__name__)
    source = info.get("source") or "meter-api"
    attempts = int(info.get("attempts", 0))
    message = (f"电表平台拉取的读数批次 {batch_id} 连续 {attempts} 次入库失败，已暂存，之后的拉取照常进行；"
               f"读数未丢失，请管理员查明原因后用 sibifang pulls --resume {batch_id} 重新入库。")
    with session_scope(database_url) as s:
        record_validation(s, stage="ingest_readings", suite="readings", source=source, read=0, accepted=0,
                          quarantined=None, success=False, now=local_now(), batch=batch_id,
                          failures=[f"pull {batch_id} set aside after {attempts} failed attempts to finish it: {error}",
                                    message])
    moved = journal.set_aside(store.root)
    run_logger().error("%s: pull %s failed to finish %d times (last: %s); set aside in %s with its readings, "
                       "later pulls go on. `sibifang pulls` lists it, `sibifang pulls --resume %s` puts it back",
                       source, batch_id, attempts, error, moved.directory, batch_id)
    return {"batch": batch_id, "source": source, "attempts": attempts, "error": error,
            "directory": str(moved.directory)}
