"""Where meter readings live: a columnar store of Parquet partitions by local date.

A row per reading in SQLite cannot reach the figures the detectors need (a month of a city is
144 M readings), so readings are Parquet files::

    <root>/date=2026-11-20/part-0.parquet     meter_id (dictionary string), ts (timestamp[ns],
                                                naive local), kwh (float32), sorted by meter, ts
    <root>/_last_ts.parquet                    last reading per meter (resume point for pulls)
    <root>/_last_registers.parquet             cumulative feeds: per meter the ts of its last
                                                register reading and the reference reached
                                                there (meter_id, ts, register_kwh float64)
    <root>/_batches/<sha1>/                    a batch not yet in the ledger: what it started from
    <root>/_set_aside/<sha1>/                  a pull journal that failed to finish too often
                                                (kept whole, with ``readings.csv`` to read)
    <root>/.lock                               serialises writes of partitions and sidecars (flock)
    <root>/.ingest.lock                        one batch at a time, from reading the store's state
                                                to its ledger row: a pull or a file (flock)
    <root>/.pull.lock                          taken with .ingest.lock (flock): the lock the versions
                                                before it held for a whole pull, and alone
    <root>/.pull_turn.lock                     one meter-API pull at a time, its download included

Conventions:

* ``ts`` is the END of the interval (docs/file-formats.md). Partition ``date=D`` holds the
  intervals that end in (D 00:00, D+1 00:00], i.e. the energy consumed on local day D: the
  reading stamped 00:00 belongs to the day before. ``load``/``load_matrix`` use the same
  half-open window ``start < ts <= end``, so a day's 96 slots come from one partition.
* Exactly one file per partition. ``append`` merges into it under a lock, writes a temporary
  file in the partition directory, fsyncs, and ``os.replace``s it over the old one: readers
  see the old partition or the new one, never half of one. A crash leaves at most a
  ``.tmp-*`` file, which readers ignore and the next append to that partition removes.
* ``append`` is idempotent: rows whose (meter_id, ts) is already stored are not written
  again; the stored value wins (a different value for a stored key is logged and, with
  ``return_conflicts=True``, handed back so the caller quarantines it instead of counting it
  accepted — corrections are a deliberate operation, not a side effect of a re-run).
* float32 kWh: 7 significant digits are far below meter resolution (0.001 kWh per reading).
  Register values are float64: a register of 10 000 000 kWh still resolves 0.001 kWh.
* Cumulative (register) feeds chain across files and pulls through ``_last_registers``: the
  next batch's first reading of a meter is an interval from it, not a lost baseline. It only
  moves forward (the later ts wins; an old file ingested again does not set it back), and it
  is saved after the batch's readings.
* A batch changes the store before its ledger row is committed: ``BatchJournal``
  (``<root>/_batches/``) keeps what it started from (register state, for a pull which readings
  were stored already, per partition what was new to it) until then, so a batch run again
  after a failure anywhere in between ends as a clean run would (the same intervals, the same
  counts in the ledger).
* A pull journal whose batch fails to finish ``PULL_FINISH_ATTEMPTS`` times is set aside
  (``<root>/_set_aside/``): every later pull would fail on it first, and no new readings would
  come in. Its readings are kept; ``resume_set_aside`` puts it back to be finished.
* One batch at a time (``hold``): a batch reads what the store holds (its last readings, the
  register state) before it writes, so a file and a pull of the same meters at once would each
  compute intervals from a state the other is moving on. A pull finding the store held is
  skipped (``claim_pulls``); a file batch waits for it (``hold_for_batch``), for at most
  ``Settings.readings_lock_timeout_seconds``, and then fails naming the lock, leaving its file
  in the inbox for the next run. A pull does not hold the store while it downloads (a platform
  may page for minutes): it holds it to finish earlier pulls and read where to resume, lets it
  go for the download, and holds it again to book what it got (``pull_turn`` keeps pulls one
  at a time meanwhile).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    pa.field("meter_id", pa.dictionary(pa.int32(), pa.string())),
    pa.field("ts", pa.timestamp("ns")),
    pa.field("kwh", pa.float32()),
])
PART_NAME = "part-0.parquet"
LAST_TS_NAME = "_last_ts.parquet"
REGISTERS_NAME = "_last_registers.parquet"
BATCHES_DIR = "_batches"  # BatchJournal: what a batch not yet in the ledger started from
SET_ASIDE_DIR = "_set_aside"  # pull journals that failed to finish PULL_FINISH_ATTEMPTS times
INGEST_LOCK_NAME = ".ingest.lock"
# The lock the versions before ``.ingest.lock`` took, alone, for a pull's whole run: held with
# ``.ingest.lock`` whenever a batch holds the store (``hold``), so that a worker of such a version
# still pulling holds back files and this version's pulls alike. The file is a flock, never a
# marker: a stale one left behind locks nothing.
PULL_LOCK_NAME = ".pull.lock"
# One pull of this version at a time (``pull_turn``), its download included. Not ``.pull.lock``:
# held through the download, that one would hold every file back as long as the platform pages.
PULL_TURN_LOCK_NAME = ".pull_turn.lock"
# How often a batch waiting for the store looks again (a flock cannot wait with a timeout).
LOCK_POLL_SECONDS = 0.2
# A pull journal that failed to finish this many times is set aside: a failure that repeats
# (readings the hand-over check now rejects, a bug on one shape of data) would otherwise stop
# every later pull, and a city's meters would go dark for the detectors. Three attempts let a
# passing failure (the next run) finish it first. Attempts are counted per run
# (``count_failed_attempt``): a Prefect retry of the same run is not another attempt.
PULL_FINISH_ATTEMPTS = 3
REGISTERS_SCHEMA = pa.schema([
    pa.field("meter_id", pa.string()),
    pa.field("ts", pa.timestamp("ns")),
    pa.field("register_kwh", pa.float64()),
])
_PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_ONE_NS = np.timedelta64(1, "ns")
# The stores (their real paths) this thread holds (``ReadingStore.hold``): a pull holds its
# store and ingests its batches under that one hold. flock cannot be taken twice (a second
# open file conflicts with the first even in one process), so a nested hold is a no-op.
_HOLDING = threading.local()


class StoreBusy(RuntimeError):
    """The readings store stayed held by another batch (a pull, a file) longer than allowed."""


class ReadingStore:
    """Parquet store of cleaned readings (``meter_id, ts, kwh``) partitioned by local date."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.busy_lock = self.root / INGEST_LOCK_NAME  # which lock ``hold`` last found held

    @classmethod
    def from_settings(cls) -> "ReadingStore":
        from sibifang.settings import get_settings

        return cls(get_settings().data_dir / "readings")

    # ------------------------------------------------------------------ writing

    def append(self, df: pd.DataFrame, *, return_conflicts: bool = False,
               count_new: Callable[[date, int], int] | None = None) -> int | tuple[int, np.ndarray]:
        """Merge cleaned readings into their date partitions; returns the number of NEW rows.

        ``df`` has ``meter_id, ts, kwh`` as produced by ``clean_readings``: ts naive local,
        kwh finite and >= 0. Rows already stored (same meter_id and ts) change nothing.
        With ``return_conflicts``: ``(new rows, positions in df of the rows whose key was
        stored with another kWh)`` — those rows were not written.
        ``count_new(day, n)``, called under the lock for each partition before it is written
        with the rows new to it, returns what is counted as new there (a batch run again
        after a failure counts what its first attempt found new: ``BatchJournal.count_new``).
        """
        incoming = _validated(df)
        conflicts: list[np.ndarray] = []
        new_rows = 0
        if incoming.num_rows:
            self.root.mkdir(parents=True, exist_ok=True)
            day = _partition_day(incoming.column("ts").to_numpy())
            with self._write_lock():
                for day_value in np.unique(day):
                    in_day = day == day_value
                    part = incoming.filter(pa.array(in_day))
                    added, clashing = self._merge_partition(pd.Timestamp(day_value).date(), part, count_new)
                    new_rows += added
                    conflicts.append(np.flatnonzero(in_day)[clashing])
                self._update_last_ts(incoming)
        if not return_conflicts:
            return new_rows
        return new_rows, np.sort(np.concatenate(conflicts)) if conflicts else np.zeros(0, dtype=np.int64)

    def _merge_partition(self, day: date, incoming: pa.Table,
                         count_new: Callable[[date, int], int] | None = None) -> tuple[int, np.ndarray]:
        """-> (new rows, positions in ``incoming`` that conflict with a stored value)."""
        directory = self._partition_dir(day)
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)  # a crash mid-write left it; never visible to readers
        target = directory / PART_NAME
        if target.exists():
            existing = pq.read_table(target, schema=SCHEMA)
            combined = pa.concat_tables([existing, incoming]).unify_dictionaries()
            n_existing = existing.num_rows
        else:
            combined = incoming
            n_existing = 0
        merged, conflicts = _sorted_unique(combined, n_existing)
        new_rows = merged.num_rows - n_existing
        counted = new_rows if count_new is None else count_new(day, new_rows)  # before the write
        if len(conflicts):
            log.warning("date=%s: %d readings differ from the stored value for the same meter and ts; "
                        "stored values kept", day.isoformat(), len(conflicts))
        if new_rows:
            _atomic_write(merged, target)
        return counted, conflicts

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _update_last_ts(self, incoming: pa.Table) -> None:
        frame = incoming.select(["meter_id", "ts"]).to_pandas()
        latest = frame.groupby("meter_id", observed=True, sort=False)["ts"].max()
        current = self._read_last_ts_file()
        if current is not None:
            latest = pd.concat([current, latest.rename(index=str)]).groupby(level=0).max()
        table = pa.table({"meter_id": pa.array(latest.index.astype(str), pa.string()),
                          "ts": pa.array(latest.to_numpy(dtype="datetime64[ns]"), pa.timestamp("ns"))})
        _atomic_write(table, self.root / LAST_TS_NAME)

    def _read_last_ts_file(self) -> pd.Series | None:
        path = self.root / LAST_TS_NAME
        if not path.exists():
            return None
        table = pq.read_table(path)
        return pd.Series(table.column("ts").to_numpy(), index=table.column("meter_id").to_pylist(), name="ts")

    def save_registers(self, state: pd.DataFrame) -> int:
        """Merge a register state (``meter_id, ts, register_kwh``, as ``CleanResult.last_registers``)
        into the stored one; returns how many meters changed.

        Per meter the later ts wins; at an equal ts the stored value is kept (as ``append``
        keeps a stored reading). Nothing changed: the file is not rewritten.
        """
        incoming = _register_frame(state)
        if not len(incoming):
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        with self._write_lock():
            current = self.last_registers()
            both = pd.concat([current.assign(stored=1), incoming.assign(stored=0)], ignore_index=True)
            # Last per meter by (ts, stored): the latest ts, and the stored row at an equal ts.
            merged = (both.sort_values(["meter_id", "ts", "stored"], kind="stable")
                      .groupby("meter_id", sort=True).tail(1))
            changed = int((merged["stored"] == 0).sum())
            merged = merged.drop(columns="stored").reset_index(drop=True)
            if changed:
                _atomic_write(pa.Table.from_pandas(merged, schema=REGISTERS_SCHEMA, preserve_index=False),
                              self.root / REGISTERS_NAME)
        return changed

    # ------------------------------------------------------------------ reading

    def last_registers(self) -> pd.DataFrame:
        """The stored register state (``meter_id, ts, register_kwh``), one row per meter; empty
        when no cumulative feed was ingested. Pass it as ``clean_readings(last_registers=...)``."""
        path = self.root / REGISTERS_NAME
        if not path.exists():
            return _register_frame(None)
        return _register_frame(pq.read_table(path, schema=REGISTERS_SCHEMA).to_pandas())

    def dates(self) -> list[date]:
        """Dates that hold readings, ascending."""
        out = []
        if not self.root.exists():
            return out
        for entry in self.root.iterdir():
            match = _PARTITION_RE.match(entry.name)
            if match and (entry / PART_NAME).exists():
                out.append(date.fromisoformat(match.group(1)))
        return sorted(out)

    def partition_stamps(self, start: datetime, end: datetime) -> list[tuple[str, int, int]]:
        """(date, mtime_ns, size) of the partitions behind ``start < ts <= end``: every append
        replaces a partition's file, so these change whenever the window's readings do."""
        out = []
        for day in self._days_in_window(pd.Timestamp(start), pd.Timestamp(end)):
            st = (self._partition_dir(day) / PART_NAME).stat()
            out.append((day.isoformat(), st.st_mtime_ns, st.st_size))
        return out

    def count(self) -> int:
        """Number of stored readings, from Parquet footers only (no data pages are read)."""
        return sum(pq.ParquetFile(self._partition_dir(d) / PART_NAME).metadata.num_rows for d in self.dates())

    def last_ts(self) -> dict[str, pd.Timestamp]:
        """Latest stored ts per meter (the resume point for pulls)."""
        latest = self._read_last_ts_file()
        if latest is None:
            latest = self._scan_last_ts()
        return {meter: pd.Timestamp(ts) for meter, ts in latest.items()}

    def _scan_last_ts(self) -> pd.Series:
        # The sidecar is missing (store written by an older version, or deleted): rebuild by scan.
        latest = pd.Series(dtype="datetime64[ns]")
        for day in self.dates():
            frame = pq.read_table(self._partition_dir(day) / PART_NAME, columns=["meter_id", "ts"]).to_pandas()
            day_max = frame.groupby("meter_id", observed=True)["ts"].max().rename(index=str)
            latest = pd.concat([latest, day_max]).groupby(level=0).max()
        return latest

    def load(self, start: datetime | None = None, end: datetime | None = None,
             meter_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Readings with ``start < ts <= end`` (either bound optional), sorted by meter_id, ts.

        Columns: meter_id (str), ts (datetime64[ns], naive local), kwh (float64).
        """
        tables = [t for t in self._iter_tables(start, end, meter_ids, ["meter_id", "ts", "kwh"])]
        if not tables:
            return pd.DataFrame({"meter_id": pd.Series([], dtype="str"),
                                 "ts": pd.Series([], dtype="datetime64[ns]"),
                                 "kwh": pd.Series([], dtype="float64")})
        table = pa.concat_tables(tables).unify_dictionaries()
        frame = pd.DataFrame({
            "meter_id": pd.Series(pc.cast(table.column("meter_id"), pa.string()), dtype="str"),
            "ts": pd.Series(table.column("ts").to_numpy(), dtype="datetime64[ns]"),
            "kwh": table.column("kwh").to_numpy().astype(np.float64),
        })
        if len(tables) > 1 or meter_ids is not None:
            frame = frame.sort_values(["meter_id", "ts"], kind="stable", ignore_index=True)
        return frame

    def load_matrix(self, start: datetime, end: datetime, interval_minutes: int = 15, *,
                    counts: list | None = None, dtype=np.float32,
                    spacings: list | None = None) -> tuple[np.ndarray, list[str], pd.DatetimeIndex]:
        """Meters × slots float32 matrix of kWh for ``start < ts <= end``; NaN where no reading.

        Slot j is the interval ending at ``start + (j + 1) * interval`` (the returned index
        holds these end times). A reading off the grid goes to the slot whose end is the next
        grid point at or after it; two readings in one slot are summed (energy adds up).
        Rows are the meters with at least one reading in the window, sorted by meter_id.

        Partitions are streamed one at a time straight into the matrix, so memory is the
        matrix plus one day of readings, never the whole window as a table.

        ``counts``: a list that receives the number of readings in each slot (uint8, the
        matrix's shape), so that a caller can tell a slot partly covered from a full one;
        ``dtype`` float64 sums the readings of a slot as ``detect`` does, without rounding each.
        ``spacings``: a list that receives, per slot, the shortest time in minutes from
        a reading in it to the meter's reading before (float16, within the window; NaN where none), from
        which ``detectors.hourly.readings_per_hour`` tells a meter's cadence.
        """
        start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
        step = pd.Timedelta(minutes=interval_minutes)
        n_slots = max(int(np.ceil((end_ts - start_ts) / step)), 0)
        slot_ends = pd.date_range(start_ts + step, periods=n_slots, freq=step)
        days = self._days_in_window(start_ts, end_ts)
        if not days or n_slots == 0:
            if counts is not None:
                counts.append(np.zeros((0, n_slots), dtype=np.uint8))
            if spacings is not None:
                spacings.append(np.zeros((0, n_slots), dtype=np.float16))
            return np.full((0, n_slots), np.nan, dtype=dtype), [], slot_ends

        # Row per meter, from the last-ts sidecar (every meter ever stored, sorted); if a
        # partition holds a meter the sidecar lacks (it is updated after the partitions),
        # fall back to the meters of the window's partitions.
        universe = self._meter_universe(days, from_sidecar=True)
        tally = None if counts is None else []
        gaps = None if spacings is None else []
        try:
            matrix, seen = self._fill_matrix(days, universe, start_ts, end_ts, step, n_slots, tally, dtype, gaps)
        except _UnknownMeter:
            universe = self._meter_universe(days, from_sidecar=False)
            tally = None if counts is None else []
            gaps = None if spacings is None else []
            matrix, seen = self._fill_matrix(days, universe, start_ts, end_ts, step, n_slots, tally, dtype, gaps)
        names = universe.to_pylist()
        if not seen.all():
            matrix = matrix[seen]
            tally = None if tally is None else [tally[0][seen]]
            gaps = None if gaps is None else [gaps[0][seen]]
            names = [n for n, keep in zip(names, seen) if keep]
        if counts is not None:
            counts.append(tally[0])
        if spacings is not None:
            spacings.append(gaps[0])
        return matrix, names, slot_ends

    def _fill_matrix(self, days: list[date], universe: pa.Array, start_ts: pd.Timestamp, end_ts: pd.Timestamp,
                     step: pd.Timedelta, n_slots: int, counts: list | None = None,
                     dtype=np.float32, spacings: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        matrix = np.full((len(universe), n_slots), np.nan, dtype=dtype)
        tally = None if counts is None else np.zeros(matrix.size, dtype=np.uint8)
        if counts is not None:
            counts.append(tally.reshape(matrix.shape))
        seen = np.zeros(len(universe), dtype=bool)
        gap = None
        if spacings is not None:
            gap = np.full(matrix.size, np.inf, dtype=np.float16)   # minutes: 2 bytes a slot
            spacings.append(gap.reshape(matrix.shape))
            last_ns = np.full(len(universe), np.iinfo(np.int64).min, dtype=np.int64)   # per meter, so far
        universe_index = pd.Index(universe.to_pandas())
        start_ns = np.int64(start_ts.as_unit("ns").value)
        window_ns = np.int64((end_ts - start_ts).value)
        step_ns = np.int64(step.value)
        flat_matrix = matrix.reshape(-1)
        highest_slot = -1
        for day in days:
            table = pq.ParquetFile(self._partition_dir(day) / PART_NAME).read(columns=["meter_id", "ts", "kwh"])
            column = table.column("meter_id").combine_chunks()
            to_universe = universe_index.get_indexer(column.dictionary.to_pandas())
            if (to_universe < 0).any():
                raise _UnknownMeter()
            offset = table.column("ts").to_numpy().view(np.int64) - start_ns
            kwh = table.column("kwh").to_numpy()
            rows = to_universe[column.indices.to_numpy(zero_copy_only=False)]
            if len(offset) and (offset.min() <= 0 or offset.max() > window_ns):
                inside = (offset > 0) & (offset <= window_ns)  # only partitions at the window's edges
                offset, kwh, rows = offset[inside], kwh[inside], rows[inside]
            if not len(rows):
                continue
            slots = (offset - 1) // step_ns  # = ceil(offset / step) - 1: interval-end convention
            flat = rows.astype(np.int64) * n_slots + slots
            # Rows are unique per (meter, ts) and sorted, so a repeated slot can only come from
            # off-grid readings next to each other, or (off-grid start) from the previous
            # partition: those are summed, everything else is a plain assignment.
            repeat = flat[1:] == flat[:-1]
            overlaps = slots.min() <= highest_slot
            if repeat.any() or overlaps:
                first_in_slot = np.concatenate([[True], ~repeat])
                if overlaps:
                    filled = ~np.isnan(flat_matrix[flat])
                    first_in_slot &= ~filled
                flat_matrix[flat[first_in_slot]] = kwh[first_in_slot]
                np.add.at(flat_matrix, flat[~first_in_slot], kwh[~first_in_slot])
            else:
                flat_matrix[flat] = kwh
            if tally is not None and (repeat.any() or overlaps):
                np.add.at(tally, flat, 1)
            elif tally is not None:  # one reading a slot here: a plain (fast) increment
                tally[flat] += 1
            if gap is not None:
                # rows are sorted by meter, then ts: the reading before is the row before, or the
                # meter's last one in an earlier partition
                before = np.empty(len(rows), dtype=np.int64)
                before[1:] = offset[:-1]
                first = np.ones(len(rows), dtype=bool)
                first[1:] = rows[1:] != rows[:-1]
                before[first] = last_ns[rows[first]]
                minutes = np.where(before != np.iinfo(np.int64).min, (offset - before) / 6e10, np.inf)
                # flat is sorted too: the shortest of each slot's run of readings, then with what an
                # earlier partition put there
                at = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
                shortest = np.minimum.reduceat(minutes, at).astype(np.float16)
                gap[flat[at]] = np.minimum(gap[flat[at]], shortest)
                last = np.ones(len(rows), dtype=bool)
                last[:-1] = first[1:]
                last_ns[rows[last]] = offset[last]
            highest_slot = max(highest_slot, int(slots.max()))
            seen[rows] = True
        if gap is not None:
            gap[np.isinf(gap)] = np.nan
        return matrix, seen

    def _meter_universe(self, days: list[date], *, from_sidecar: bool) -> pa.Array:
        if from_sidecar and (self.root / LAST_TS_NAME).exists():
            names = pq.read_table(self.root / LAST_TS_NAME, columns=["meter_id"]).column("meter_id").combine_chunks()
        else:
            dictionaries = [pq.ParquetFile(self._partition_dir(d) / PART_NAME).read(columns=["meter_id"])
                            .column("meter_id").combine_chunks().dictionary for d in days]
            names = pc.unique(pa.concat_arrays(dictionaries))
        names = names.cast(pa.string())
        return names.take(pc.array_sort_indices(names))

    def _days_in_window(self, start_ts: pd.Timestamp | None, end_ts: pd.Timestamp | None) -> list[date]:
        if (start_ts is not None and start_ts.tzinfo) or (end_ts is not None and end_ts.tzinfo):
            raise ValueError("store times are naive local (Asia/Shanghai): pass naive datetimes")
        # The first interval ending after start ends on start's day (or closes it at 24:00);
        # the interval ending at end belongs to the day of (end - 1 ns).
        first = start_ts.normalize().date() if start_ts is not None else None
        last = (pd.Timestamp(_partition_day(np.array([end_ts.to_datetime64()]))[0]).date()
                if end_ts is not None else None)
        return [d for d in self.dates() if (first is None or d >= first) and (last is None or d <= last)]

    def _iter_tables(self, start: datetime | None, end: datetime | None,
                     meter_ids: Iterable[str] | None, columns: list[str]) -> Iterator[pa.Table]:
        start_ts = pd.Timestamp(start) if start is not None else None
        end_ts = pd.Timestamp(end) if end is not None else None
        wanted = None if meter_ids is None else pa.array(sorted({str(m) for m in meter_ids}), pa.string())
        for day in self._days_in_window(start_ts, end_ts):
            table = pq.ParquetFile(self._partition_dir(day) / PART_NAME).read(columns=columns)
            ts = table.column("ts")
            keep = None
            if start_ts is not None:
                keep = pc.greater(ts, pa.scalar(start_ts.as_unit("ns").value, pa.timestamp("ns")))
            if end_ts is not None:
                upper = pc.less_equal(ts, pa.scalar(end_ts.as_unit("ns").value, pa.timestamp("ns")))
                keep = upper if keep is None else pc.and_(keep, upper)
            if wanted is not None:
                names = pc.cast(table.column("meter_id"), pa.string())
                in_set = pc.is_in(names, wanted)
                keep = in_set if keep is None else pc.and_(keep, in_set)
            if keep is not None:
                table = table.filter(keep)
            if table.num_rows:
                yield table

    def _partition_dir(self, day: date) -> Path:
        return self.root / f"date={day.isoformat()}"

    def batch_journal(self, batch_id: str) -> "BatchJournal":
        return BatchJournal(self.root / BATCHES_DIR / hashlib.sha1(batch_id.encode("utf-8")).hexdigest())

    @contextmanager
    def hold(self, *, wait: float = 0.0) -> Iterator[bool]:
        """Hold the store for one batch (a pull, a file): yields True, or False when another
        batch held it for ``wait`` seconds. A batch reads the store's state (last readings,
        register state, the readings a pull finds stored) and writes from it until its ledger
        row is committed: two at once would each compute from a state the other moves on (a
        cumulative meter's next interval against the wrong previous reading) and book the
        same readings. A flock (``.ingest.lock``) beside the write lock, which only guards one
        append: the state is this directory, whichever database the ledger is in, and a killed
        batch releases it. Taken again by the thread that holds it, it is held already."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.root)
        held = _held_stores()
        if key in held:
            yield True
            return
        # Always .ingest.lock first, then .pull.lock: no two holders wait for each other's.
        deadline = time.monotonic() + max(wait, 0.0)
        with ExitStack() as locks:
            for name in (INGEST_LOCK_NAME, PULL_LOCK_NAME):
                lock = self.root / name
                handle = locks.enter_context(open(lock, "a+b"))
                if not _flock_within(handle, deadline - time.monotonic(), lock):
                    self.busy_lock = lock
                    yield False
                    return
                locks.callback(fcntl.flock, handle, fcntl.LOCK_UN)
            held.add(key)
            try:
                yield True
            finally:
                held.discard(key)

    @contextmanager
    def hold_for_batch(self, timeout: float) -> Iterator[None]:
        """``hold``, waiting up to ``timeout`` seconds; raises ``StoreBusy`` naming the lock
        after that. A file batch waits rather than being skipped: a pull skipped loses nothing
        (the next one resumes from the store), a dropped file must be read."""
        with self.hold(wait=timeout) as mine:
            if not mine:
                raise StoreBusy(f"{self.busy_lock} stayed held by another batch (a pull of the meter API, "
                                f"of this version or an older one, or a readings file) for more than "
                                f"{timeout:.0f} s; this batch was "
                                "not ingested (a dropped file stays in the inbox for the next run)")
            yield

    @contextmanager
    def claim_pulls(self) -> Iterator[bool]:
        """Hold the store for a meter-API pull's start (finishing the unfinished pull journals,
        reading where to resume): yields True, or False when another batch (a pull, a file)
        holds it. It does not wait: the one running fetches the same window, and the next pull
        resumes after it. Released for the download (``pull_turn`` keeps pulls one at a time
        then); the pull books its download under ``hold_for_batch``."""
        with self.hold(wait=0) as mine:
            yield mine

    @contextmanager
    def pull_turn(self) -> Iterator[bool]:
        """One meter-API pull at a time, from finishing earlier pulls to booking its own, its
        download included: yields True, or False when another pull of this version has it (an
        older version's pull holds ``.pull.lock``, which ``hold`` takes). Not the store: a file goes in while a
        pull downloads (``claim_pulls`` and ``hold_for_batch`` are what a pull holds the store
        with, only around reading its state and booking)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / PULL_TURN_LOCK_NAME
        with open(lock, "a+b") as handle:
            if not _flock_within(handle, 0, lock):
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def unfinished_pulls(self) -> list["BatchJournal"]:
        """Journals of pulls that changed the store and never reached the ledger, oldest first.
        A retry pulls from where the failed attempt's readings end, so it would not see them
        again: ``tasks.ingest_readings.pull_api_task`` finishes these first, from the readings
        kept in the journal."""
        folder = self.root / BATCHES_DIR
        if not folder.exists():
            return []
        found = [BatchJournal(d) for d in folder.iterdir() if d.is_dir()]
        found = [j for j in found if j.exists() and (j.directory / "pull.parquet").exists()]
        return sorted(found, key=lambda j: (j.directory / "begun").stat().st_mtime_ns)

    def unfinished_files(self) -> list["BatchJournal"]:
        """Journals of file batches that changed the store and never reached the ledger. The
        next run of the same file finishes one; a file taken out of the inbox never does, and
        the store then holds readings no ledger row counts. Listed, never removed: only the
        operator knows whether the file comes back."""
        folder = self.root / BATCHES_DIR
        if not folder.exists():
            return []
        found = [BatchJournal(d) for d in folder.iterdir() if d.is_dir()]
        return [j for j in found if j.exists() and not (j.directory / "pull.parquet").exists()]

    def set_aside_pulls(self) -> list["BatchJournal"]:
        """Pull journals set aside (``BatchJournal.set_aside``), oldest first."""
        folder = self.root / SET_ASIDE_DIR
        found = [BatchJournal(d) for d in folder.iterdir() if d.is_dir()] if folder.exists() else []
        return sorted([j for j in found if j.exists()], key=lambda j: (j.directory / "begun").stat().st_mtime_ns)

    def resume_set_aside(self, batch_id: str) -> "BatchJournal":
        """Put a set-aside pull back among the unfinished ones, its failed attempts forgotten:
        the next pull finishes it from what it started from (once its cause is mended).
        Raises LookupError when no set-aside pull has that batch id, FileExistsError when an
        unfinished journal of that batch is there already, StoreBusy while a batch holds the
        store (a pull of the same readings could be writing that journal: try again)."""
        with self.hold(wait=0) as mine:
            if not mine:
                raise StoreBusy(f"{self.busy_lock} is held by a pull or a readings file being "
                                "ingested; try again when it is done")
            return self._resume_set_aside(batch_id)

    def _resume_set_aside(self, batch_id: str) -> "BatchJournal":
        for journal in self.set_aside_pulls():
            if journal.info().get("batch_id") != batch_id:
                continue
            target = self.batch_journal(batch_id).directory
            if target.exists():
                raise FileExistsError(f"an unfinished journal of batch {batch_id} is already at {target}")
            target.parent.mkdir(parents=True, exist_ok=True)
            for name in ("failures.json", "readings.csv"):
                (journal.directory / name).unlink(missing_ok=True)
            os.replace(journal.directory, target)
            return BatchJournal(target)
        raise LookupError(f"no set-aside pull of batch {batch_id} in {self.root / SET_ASIDE_DIR}")


class BatchJournal:
    """What a batch started from, kept from its first change to the store until its ledger row
    is committed (``tasks.ingest_readings.ingest_frame``), so that the batch run again after a
    failure at any point in between (a crash, a Prefect task retry) ends as a clean run would:

    * ``registers``: the register state its cleaning used. The state is saved with the batch's
      readings, before the ledger: started from the saved one, the re-run would find each
      meter's first reading at or before the state and set it aside as a baseline.
    * ``stored``: for a pull, which of its readings the store held before it (those are not
      read); computed again, the readings the failed attempt stored would be skipped too.
    * ``new by day``: per partition, the readings new to it when the batch first wrote it
      (recorded before the write); computed again they would be 0, and the ledger's
      ``rows_new`` would not match the store.

    Files in ``<root>/_batches/<sha1 of the batch id>/``, each written atomically.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def exists(self) -> bool:
        return (self.directory / "begun").exists()

    def begin(self, *, registers: pd.DataFrame | None = None, stored: np.ndarray | None = None,
              pull: dict | None = None, batch: dict | None = None) -> None:
        """Record what the batch starts from; a journal begun already is left as it is.
        ``pull`` (a pull's ``batch_id``, ``source`` and ``readings``, the frame as pulled): kept
        so that a retry, which pulls from later on, can finish this batch first. ``batch``
        (``batch_id``, ``source``): which batch this is, for the operator (``info``)."""
        if self.exists():
            return
        self.discard()  # a half-written one from a crash inside begin
        self.directory.mkdir(parents=True, exist_ok=True)
        if registers is not None:
            _atomic_write(pa.Table.from_pandas(_register_frame(registers), schema=REGISTERS_SCHEMA,
                                               preserve_index=False), self.directory / "registers.parquet")
        if stored is not None:
            mask = np.asarray(stored, dtype=bool)
            _atomic_write(pa.table({"stored": pa.array(mask)}), self.directory / "stored.parquet")
        if pull is not None:
            _atomic_write(_typed_table(pull["readings"]), self.directory / "pull.parquet")
            _atomic_write_text(json.dumps({"batch_id": pull["batch_id"], "source": pull["source"]},
                                          ensure_ascii=False), self.directory / "pull.json")
        if batch is not None:
            _atomic_write_text(json.dumps({"batch_id": batch["batch_id"], "source": batch["source"]},
                                          ensure_ascii=False), self.directory / "batch.json")
        _atomic_write_text("{}", self.directory / "new_by_day.json")
        _atomic_write_text("", self.directory / "begun")  # last: the journal is whole

    def pull(self) -> tuple[str, str, pd.DataFrame]:
        """(batch id, source, the readings as pulled) of a pull's journal."""
        kept = json.loads((self.directory / "pull.json").read_text(encoding="utf-8"))
        return kept["batch_id"], kept["source"], _untyped_frame(pq.read_table(self.directory / "pull.parquet"))

    def info(self) -> dict:
        """``batch_id`` and ``source`` of the journal's batch (None for a journal of an older
        version without them), ``begun`` (when), and for a pull ``attempts`` (failed finishing
        attempts) and ``last_error``: what can be read of them (a damaged journal is set aside
        as well, and must still be listed)."""
        info: dict = {"batch_id": None, "source": None}
        try:
            from sibifang.settings import LOCAL_TZ

            # China Standard Time, naive, as every time here (the host's clock may be on UTC).
            info["begun"] = datetime.fromtimestamp((self.directory / "begun").stat().st_mtime,
                                                   LOCAL_TZ).replace(tzinfo=None)
        except OSError:
            info["begun"] = None
        for name in ("batch.json", "pull.json", "failures.json"):
            try:
                info.update(json.loads((self.directory / name).read_text(encoding="utf-8")))
            except (OSError, ValueError):
                pass
        info.setdefault("attempts", 0)
        return info

    def failed_attempt(self, error: str, run: str | None = None) -> int:
        """Count a failed attempt to finish this journal (with its error, which must hold no
        secret) made by ``run`` (see ``count_failed_attempt``); returns how many there have been."""
        failures = count_failed_attempt(self.info(), error, run)
        _atomic_write_text(json.dumps(failures, ensure_ascii=False), self.directory / "failures.json")
        return failures["attempts"]

    def set_aside(self, root: Path) -> "BatchJournal":
        """Move this journal whole into ``root/_set_aside/`` (the same file system: a rename),
        with its readings as sent written out as ``readings.csv`` for the operator. Nothing is
        deleted; ``ReadingStore.resume_set_aside`` moves it back."""
        try:
            _, _, readings = self.pull()
            _atomic_write_text(readings.to_csv(index=False), self.directory / "readings.csv")
        except Exception as e:  # noqa: BLE001 - a journal that cannot be read is set aside all the same
            log.warning("%s: readings not written out as CSV (%s); pull.parquet is kept",
                        self.directory.name, type(e).__name__)
        folder = Path(root) / SET_ASIDE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.directory.name
        if target.exists():  # the same batch set aside before and put back as a copy
            target = folder / f"{self.directory.name}-{uuid.uuid4().hex[:8]}"
        os.replace(self.directory, target)
        return BatchJournal(target)

    def registers(self) -> pd.DataFrame | None:
        path = self.directory / "registers.parquet"
        if not self.exists() or not path.exists():
            return None
        return _register_frame(pq.read_table(path, schema=REGISTERS_SCHEMA).to_pandas())

    def stored(self, n: int) -> np.ndarray | None:
        path = self.directory / "stored.parquet"
        if not self.exists() or not path.exists():
            return None
        mask = pq.read_table(path).column("stored").to_numpy(zero_copy_only=False).astype(bool)
        return mask if len(mask) == n else None

    def keep_held_at_set_aside(self, mask: np.ndarray) -> None:
        """Which of a pull's readings the store held when the pull was set aside (what it had
        stored itself, and what it found stored): put back, the readings stored meanwhile by
        other batches are told from these (``tasks.ingest_readings._ingest_frame``)."""
        _atomic_write(pa.table({"held": pa.array(np.asarray(mask, dtype=bool))}),
                      self.directory / "held_at_set_aside.parquet")

    def held_at_set_aside(self, n: int) -> np.ndarray | None:
        path = self.directory / "held_at_set_aside.parquet"
        if not self.exists() or not path.exists():
            return None
        mask = pq.read_table(path).column("held").to_numpy(zero_copy_only=False).astype(bool)
        return mask if len(mask) == n else None

    def put_back_stored(self, stored: np.ndarray) -> None:
        """A pull put back: ``stored`` (held before it, or booked by others while it was set
        aside) replaces what it started from, once, before it stores anything: then the mark of
        the set-aside goes (a re-run must not take what this attempt stores for another's)."""
        _atomic_write(pa.table({"stored": pa.array(np.asarray(stored, dtype=bool))}),
                      self.directory / "stored.parquet")
        (self.directory / "held_at_set_aside.parquet").unlink(missing_ok=True)

    def add_stored(self, mask: np.ndarray) -> None:
        """A pull's readings another batch (a readings file) stored and booked after this pull
        began: counted with those held before it, not this pull's to read once finished or put
        back (``tasks.ingest_readings._mark_booked_for_pulls``)."""
        mask = np.asarray(mask, dtype=bool)
        stored = self.stored(len(mask))
        if stored is not None:
            mask = mask | stored
        _atomic_write(pa.table({"stored": pa.array(mask)}), self.directory / "stored.parquet")

    def count_new(self, day: date, n: int) -> int:
        """For ``ReadingStore.append``: the first count recorded for ``day`` wins."""
        path = self.directory / "new_by_day.json"
        counts = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        key = day.isoformat()
        if key not in counts:
            counts[key] = int(n)
            _atomic_write_text(json.dumps(counts, sort_keys=True), path)
        return int(counts[key])

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------- helpers

def count_failed_attempt(failures: dict, error: str, run: str | None) -> dict:
    """The failures of a pull journal (``attempts``, ``runs``, ``last_error``) after one more
    failed attempt to finish it by ``run`` (a flow run's id; None: a call of its own).

    Attempts count runs, not tries. A journal is set aside because its failure repeats (data
    the hand-over check now rejects, a bug on one shape of data), and only a new run, minutes
    later, shows that: Prefect's retries of one run (5, 30, 120 s) fall within one disk or
    database blip, and counted one by one they would set a good pull aside in one run. What
    fails is not judged by its kind: a damaged journal (a file missing from it) fails as an
    I/O error would, and must be set aside all the same."""
    runs = [str(r) for r in failures.get("runs") or []]
    attempts = int(failures.get("attempts", 0))
    if run is None or run not in runs:
        attempts += 1
        if run is not None:
            runs.append(run)
    return {"attempts": attempts, "runs": runs, "last_error": error}


def _held_stores() -> set[str]:
    if not hasattr(_HOLDING, "roots"):
        _HOLDING.roots = set()
    return _HOLDING.roots


def _flock_within(handle, wait: float, lock: Path) -> bool:  # noqa: ANN001
    """Take an exclusive flock on ``handle`` within ``wait`` seconds (0: now or never)."""
    deadline = time.monotonic() + max(wait, 0.0)
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not told:
                log.info("%s is held by another batch (a pull or a readings file); waiting up to %.0f s",
                         lock, wait)
                told = True
            time.sleep(min(LOCK_POLL_SECONDS, remaining))


class _UnknownMeter(Exception):
    """A partition holds a meter the last-ts sidecar does not know (sidecar behind)."""


def _partition_day(ts: np.ndarray) -> np.ndarray:
    """Local day an interval belongs to: the day of (end - 1 ns); 00:00 closes the day before."""
    return (ts.astype("datetime64[ns]") - _ONE_NS).astype("datetime64[D]")


def _register_frame(state: pd.DataFrame | None) -> pd.DataFrame:
    if state is None or not len(state):
        return pd.DataFrame({"meter_id": pd.Series([], dtype="str"), "ts": pd.Series([], dtype="datetime64[ns]"),
                             "register_kwh": pd.Series([], dtype="float64")})
    missing = {"meter_id", "ts", "register_kwh"} - set(state.columns)
    if missing:
        raise ValueError(f"a register state needs meter_id, ts, register_kwh; missing {sorted(missing)}")
    frame = pd.DataFrame({"meter_id": pd.Series(state["meter_id"].to_numpy(), dtype="str"),
                          "ts": pd.to_datetime(state["ts"]).astype("datetime64[ns]").to_numpy(),
                          "register_kwh": state["register_kwh"].astype("float64").to_numpy()})
    if frame["meter_id"].isna().any() or frame["ts"].isna().any() or not np.isfinite(frame["register_kwh"]).all():
        raise ValueError("a register state needs a meter_id, a ts and a finite register_kwh on every row")
    return frame


def _validated(df: pd.DataFrame) -> pa.Table:
    missing = {"meter_id", "ts", "kwh"} - set(df.columns)
    if missing:
        raise ValueError(f"readings need columns meter_id, ts, kwh; missing {sorted(missing)}")
    ts = df["ts"]
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise ValueError("readings ts must be naive local time (clean_readings converts offsets)")
    ts = pd.to_datetime(ts).astype("datetime64[ns]")
    kwh = pd.to_numeric(df["kwh"]).to_numpy(dtype=np.float64)
    meter = df["meter_id"]
    bad = meter.isna().to_numpy() | ts.isna().to_numpy() | ~np.isfinite(kwh) | (kwh < 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} readings have no meter_id/ts or a kWh that is not finite "
                         "and >= 0: clean them with clean_readings before storing")
    if isinstance(meter.dtype, pd.CategoricalDtype):
        meter_arr = pa.array(meter.cat.rename_categories(meter.cat.categories.astype("str")))
    else:
        meter_arr = pa.array(meter.astype("str"), pa.string()).dictionary_encode()
    return pa.table([meter_arr.cast(SCHEMA.field("meter_id").type),
                     pa.array(ts.to_numpy(), pa.timestamp("ns")),
                     pa.array(kwh.astype(np.float32), pa.float32())], schema=SCHEMA)


def first_of_each_reading(readings: pd.DataFrame) -> pd.DataFrame:
    """Of readings of one meter and time, the one that came first: the rule of the store
    (``_sorted_unique``: the stored one, then the first of a batch) and of the feeds'
    ``clean_readings``. ``detect`` applies it to its input, so that it judges what the flow
    would have stored."""
    return readings.drop_duplicates(["meter_id", "ts"], keep="first")


def _sorted_unique(table: pa.Table, n_existing: int) -> tuple[pa.Table, np.ndarray]:
    """Sort by (meter_id, ts) and keep the first row of each key, existing rows first
    (``first_of_each_reading``, the same rule on a frame).

    -> (table, positions among the incoming rows — after the ``n_existing`` stored ones — of
    those whose key is stored with another value).
    """
    codes, names = _sorted_codes(table.column("meter_id"))
    ts = table.column("ts").to_numpy().view(np.int64)
    order = _stable_order(codes, ts)  # ties keep table order: existing rows come first
    c, t = codes[order], ts[order]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
    conflicts = np.zeros(0, dtype=np.int64)
    if dup.any() and n_existing:
        kwh = table.column("kwh").to_numpy()[order]
        first = np.maximum.accumulate(np.where(~dup, np.arange(len(order)), 0))
        clash = (dup & (order >= n_existing) & (order[first] < n_existing)
                 & ~np.isclose(kwh, kwh[first], rtol=0, atol=1e-4))
        conflicts = np.sort(order[clash] - n_existing).astype(np.int64)
    keep = order[~dup]
    out = table.take(pa.array(keep))
    # Rebuild a compact sorted dictionary so files compress well and codes sort like names.
    meter_col = pa.DictionaryArray.from_arrays(pa.array(codes[keep].astype(np.int32)), names)
    out = out.set_column(0, SCHEMA.field("meter_id"), meter_col)
    return out, conflicts


def _stable_order(codes: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
    """Stable argsort by (code, ts). One int64 key when ts are whole seconds within ~136 years
    (what clean_readings produces): about twice as fast as a two-key lexsort."""
    if len(ts_ns):
        low = ts_ns.min()
        seconds, rest = np.divmod(ts_ns - low, 1_000_000_000)
        if not rest.any() and seconds.max() < 2**32 and codes.max() < 2**31:
            return np.argsort((codes << 32) | seconds, kind="stable")
    return np.lexsort((ts_ns, codes))


def _sorted_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary column -> (int64 code per row into sorted names, sorted names)."""
    column = column.unify_dictionaries() if column.num_chunks > 1 else column
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int64), pa.array([], pa.string())
    dictionary = column.chunk(0).dictionary
    order = pc.array_sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in column.chunks])
    return rank[indices.astype(np.int64)], dictionary.take(pa.array(order))


# A pull's readings as sent (object columns: an id may be a number in one reading and a string
# in the next) kept exactly: per column the text of each value and its type.
_KINDS = {type(None): 0, str: 1, int: 2, float: 3, bool: 4}


def _typed_table(frame: pd.DataFrame) -> pa.Table:
    columns = {}
    for name in frame.columns:
        values = frame[name].to_numpy(dtype=object)
        # The usual columns in one type each, stored as that type (fast); any other, value by value.
        inferred = pd.api.types.infer_dtype(values, skipna=False)
        fast = {"string": ("s", pa.string()), "integer": ("i", pa.int64()), "floating": ("f", pa.float64())}
        if inferred in fast:
            prefix, arrow_type = fast[inferred]
            try:
                columns[f"{prefix}:{name}"] = pa.array(values, arrow_type)
                continue
            except (pa.ArrowInvalid, OverflowError):  # an integer beyond 64 bits
                pass
        values = [v.item() if isinstance(v, np.generic) else v for v in values.tolist()]
        kinds = np.fromiter((_KINDS.get(type(v), 5) for v in values), dtype=np.int8, count=len(values))
        text = [None if k == 0 else (repr(v) if k == 3 else json.dumps(v) if k == 5 else str(v))
                for v, k in zip(values, kinds.tolist())]
        columns[f"v:{name}"] = pa.array(text, pa.string())
        columns[f"k:{name}"] = pa.array(kinds, pa.int8())
    return pa.table(columns)


def _untyped_frame(table: pa.Table) -> pd.DataFrame:
    out = {}
    for column in table.column_names:
        prefix, name = column.split(":", 1)
        if prefix == "k":
            continue
        if prefix in ("s", "i", "f"):
            out[name] = np.array(table.column(column).to_pylist(), dtype=object)
            continue
        text = table.column(column).to_numpy(zero_copy_only=False).astype(object)
        kinds = table.column(f"k:{name}").to_numpy()
        values = text.copy()
        for kind, convert in ((2, int), (3, float), (4, lambda t: t == "True"), (5, json.loads)):
            at = np.flatnonzero(kinds == kind)
            if len(at):
                values[at] = [convert(t) for t in text[at].tolist()]
        values[kinds == 0] = None
        out[name] = values
    frame = pd.DataFrame(out, dtype=object)
    if "line" in frame.columns:
        frame["line"] = frame["line"].astype("int64")
    return frame


def _atomic_write_text(text: str, target: Path) -> None:
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}-{target.name}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write(table: pa.Table, target: Path) -> None:
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}-{target.name}"
    try:
        # lz4: reads ~2.4x faster than zstd for ~16 % more bytes; detectors read far more than we write.
        pq.write_table(table, tmp, compression="lz4", row_group_size=1_048_576)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()
