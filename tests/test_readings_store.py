"""Readings store: round trip, idempotence, crash safety, partitions, matrix."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sibifang.readings_store import PART_NAME, ReadingStore

REPO = Path(__file__).resolve().parents[1]


def day_of_readings(day: str, meters: list[str], *, seed: int = 0, slots: int = 96) -> pd.DataFrame:
    ends = pd.date_range(pd.Timestamp(day) + pd.Timedelta(minutes=15), periods=slots, freq="15min")
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "meter_id": np.repeat(meters, len(ends)),
        "ts": np.tile(ends.to_numpy(), len(meters)),
        "kwh": rng.integers(0, 500, size=len(meters) * len(ends)) / 1000.0,  # stored as float32: compare with atol
    })


def test_round_trip_and_partitioning_by_interval_end(tmp_path):
    store = ReadingStore(tmp_path)
    df = day_of_readings("2026-11-20", ["M2", "M1"])
    assert store.append(df.sample(frac=1, random_state=0)) == len(df)
    # Slot ending 2026-11-21 00:00 belongs to the 20th: one day = one partition.
    assert store.dates() == [date(2026, 11, 20)]
    assert store.count() == len(df)
    back = store.load()
    expected = df.sort_values(["meter_id", "ts"], ignore_index=True)
    assert back["meter_id"].tolist() == expected["meter_id"].tolist()
    assert back["ts"].tolist() == expected["ts"].tolist()
    np.testing.assert_allclose(back["kwh"], expected["kwh"], atol=1e-6)
    assert back["ts"].dtype == "datetime64[ns]" and back["kwh"].dtype == np.float64
    schema = pq.read_schema(tmp_path / "date=2026-11-20" / PART_NAME)
    assert str(schema.field("meter_id").type) == "dictionary<values=string, indices=int32, ordered=0>"
    assert str(schema.field("kwh").type) == "float"


def test_append_is_idempotent_and_merges(tmp_path):
    store = ReadingStore(tmp_path)
    first = day_of_readings("2026-11-20", ["M1", "M2"])
    assert store.append(first) == 192
    before = (tmp_path / "date=2026-11-20" / PART_NAME).stat().st_mtime_ns
    assert store.append(first) == 0
    assert store.append(first.iloc[::-1]) == 0
    # Nothing new: the partition file was not even rewritten.
    assert (tmp_path / "date=2026-11-20" / PART_NAME).stat().st_mtime_ns == before
    assert store.count() == 192
    # Overlapping batch: half old, one new meter, one new day.
    more = pd.concat([first.iloc[:50], day_of_readings("2026-11-20", ["M3"]), day_of_readings("2026-11-21", ["M1"])])
    assert store.append(more) == 96 + 96
    assert store.count() == 384
    assert store.dates() == [date(2026, 11, 20), date(2026, 11, 21)]
    loaded = store.load()
    assert not loaded.duplicated(["meter_id", "ts"]).any()


def test_stored_value_wins_over_a_conflicting_reappend(tmp_path, caplog):
    store = ReadingStore(tmp_path)
    df = day_of_readings("2026-11-20", ["M1"], slots=2)
    store.append(df)
    changed = df.assign(kwh=df["kwh"] + 1)
    assert store.append(changed) == 0
    np.testing.assert_allclose(store.load()["kwh"], df["kwh"], atol=1e-6)
    assert "differ from the stored value" in caplog.text


def test_append_refuses_uncleaned_rows(tmp_path):
    store = ReadingStore(tmp_path)
    bad = pd.DataFrame({"meter_id": ["M1"], "ts": [pd.Timestamp("2026-11-20 08:15")], "kwh": [-1.0]})
    with pytest.raises(ValueError, match="clean_readings"):
        store.append(bad)
    aware = bad.assign(kwh=1.0, ts=bad["ts"].dt.tz_localize("Asia/Shanghai"))
    with pytest.raises(ValueError, match="naive"):
        store.append(aware)
    assert store.count() == 0


CRASH_SCRIPT = """
import os, sys
import pandas as pd
import sibifang.readings_store as rs
def crash(src, dst):
    os._exit(9)  # the process dies after the new file is written, before it replaces the old
rs.os.replace = crash
store = rs.ReadingStore(sys.argv[1])
store.append(pd.DataFrame({"meter_id": ["M9"] * 3,
                           "ts": pd.date_range("2026-11-20 08:15", periods=3, freq="15min"),
                           "kwh": [1.0, 1.0, 1.0]}))
"""


def test_crash_mid_write_leaves_old_partition_intact(tmp_path):
    store = ReadingStore(tmp_path)
    original = day_of_readings("2026-11-20", ["M1"])
    store.append(original)
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    partition = tmp_path / "date=2026-11-20"
    leftovers = list(partition.glob(".tmp-*"))
    assert leftovers, "the crash should have left its temporary file"
    # Readers see exactly the old partition: no half file, no M9 rows.
    assert [p.name for p in partition.glob("*.parquet") if not p.name.startswith(".")] == [PART_NAME]
    assert store.count() == len(original)
    assert set(store.load()["meter_id"]) == {"M1"}
    # The next append cleans the leftover and applies normally.
    assert store.append(day_of_readings("2026-11-20", ["M9"], slots=3)) == 3
    assert not list(partition.glob(".tmp-*"))
    assert store.count() == len(original) + 3


def test_failed_write_does_not_leave_temporary_files(tmp_path, monkeypatch):
    store = ReadingStore(tmp_path)
    store.append(day_of_readings("2026-11-20", ["M1"], slots=4))
    import sibifang.readings_store as rs

    real_write = rs.pq.write_table

    def half_write(table, where, **kwargs):
        real_write(table.slice(0, 1), where, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(rs.pq, "write_table", half_write)
    with pytest.raises(OSError):
        store.append(day_of_readings("2026-11-20", ["M2"], slots=4))
    monkeypatch.undo()
    assert not list((tmp_path / "date=2026-11-20").glob(".tmp-*"))
    assert store.count() == 4


def _run_in_threads(worker, args: list) -> None:
    """``worker(arg)`` for each arg, all at once, and wait for them all."""
    threads = [threading.Thread(target=worker, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_appends_to_one_partition_lose_nothing(tmp_path):
    store = ReadingStore(tmp_path)
    errors = []

    def worker(meter: str) -> None:
        try:
            ReadingStore(tmp_path).append(day_of_readings("2026-11-20", [meter]))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    _run_in_threads(worker, [f"M{i}" for i in range(4)])
    assert not errors
    assert store.count() == 4 * 96


def test_load_filters_window_and_meters(tmp_path):
    store = ReadingStore(tmp_path)
    store.append(pd.concat([day_of_readings("2026-11-20", ["M1", "M2"]), day_of_readings("2026-11-21", ["M1"])]))
    window = store.load(pd.Timestamp("2026-11-20 23:00"), pd.Timestamp("2026-11-21 01:00"), meter_ids=["M1"])
    assert window["ts"].min() == pd.Timestamp("2026-11-20 23:15")  # start is exclusive
    assert window["ts"].max() == pd.Timestamp("2026-11-21 01:00")  # end is inclusive
    assert len(window) == 8 and set(window["meter_id"]) == {"M1"}
    assert store.load(meter_ids=["nope"]).empty
    assert ReadingStore(tmp_path / "missing").load().empty


def test_last_ts_and_its_rebuild(tmp_path):
    store = ReadingStore(tmp_path)
    store.append(day_of_readings("2026-11-20", ["M1", "M2"]))
    store.append(day_of_readings("2026-11-21", ["M1"], slots=4))
    expected = {"M1": pd.Timestamp("2026-11-21 01:00"), "M2": pd.Timestamp("2026-11-21 00:00")}
    assert store.last_ts() == expected
    (tmp_path / "_last_ts.parquet").unlink()
    assert store.last_ts() == expected
    assert ReadingStore(tmp_path / "empty").last_ts() == {}
    assert ReadingStore(tmp_path / "empty").count() == 0


def test_load_matrix_shape_values_and_nan_gaps(tmp_path):
    store = ReadingStore(tmp_path)
    df = pd.concat([day_of_readings("2026-11-20", ["M2", "M1"]), day_of_readings("2026-11-21", ["M1"])])
    gappy = df[~((df["meter_id"] == "M2") & (df["ts"].between("2026-11-20 10:00", "2026-11-20 11:00")))]
    store.append(gappy)
    matrix, meters, slots = store.load_matrix(pd.Timestamp("2026-11-20"), pd.Timestamp("2026-11-22"))
    assert matrix.dtype == np.float32 and matrix.shape == (2, 192)
    assert meters == ["M1", "M2"]
    assert slots[0] == pd.Timestamp("2026-11-20 00:15") and slots[-1] == pd.Timestamp("2026-11-22 00:00")
    m1 = df[df["meter_id"] == "M1"].sort_values("ts")["kwh"].to_numpy()
    np.testing.assert_allclose(matrix[0], m1, atol=1e-6)
    # M2: 5 missing slots (10:00 .. 11:00 inclusive) on the 20th, no data on the 21st.
    assert np.isnan(matrix[1, :96]).sum() == 5
    assert np.isnan(matrix[1, slots.get_loc(pd.Timestamp("2026-11-20 10:00"))])
    assert np.isnan(matrix[1, 96:]).all()


def test_load_matrix_off_grid_readings_and_windows(tmp_path):
    store = ReadingStore(tmp_path)
    store.append(pd.DataFrame({
        "meter_id": ["M1", "M1", "M1"],
        "ts": pd.to_datetime(["2026-11-20 08:07", "2026-11-20 08:15", "2026-11-20 08:16"]),
        "kwh": [0.1, 0.2, 0.3],
    }))
    matrix, meters, slots = store.load_matrix(pd.Timestamp("2026-11-20 08:00"), pd.Timestamp("2026-11-20 08:30"))
    # 08:07 and 08:15 both fall in the interval ending 08:15 and add up; 08:16 in the next.
    np.testing.assert_allclose(matrix, [[0.3, 0.3]], atol=1e-6)
    empty, none, slots = store.load_matrix(pd.Timestamp("2026-12-01"), pd.Timestamp("2026-12-02"))
    assert empty.shape == (0, 96) and none == [] and len(slots) == 96


def test_append_hands_back_the_rows_that_contradict_stored_values(tmp_path):
    store = ReadingStore(tmp_path)
    df = pd.concat([day_of_readings("2026-11-20", ["M1"], slots=3), day_of_readings("2026-11-21", ["M1"], slots=2)],
                   ignore_index=True)
    new, conflicts = store.append(df, return_conflicts=True)
    assert (new, conflicts.tolist()) == (5, [])
    again = df.copy()
    again.loc[[1, 4], "kwh"] += 1  # one changed value on each day
    again = pd.concat([again, day_of_readings("2026-11-22", ["M1"], slots=1)], ignore_index=True)
    new, conflicts = store.append(again, return_conflicts=True)
    assert new == 1 and conflicts.tolist() == [1, 4]
    np.testing.assert_allclose(store.load()["kwh"].iloc[:5], df["kwh"], atol=1e-6)
    # Identical values are not conflicts: a re-run is idempotent.
    assert store.append(df, return_conflicts=True)[1].tolist() == []


# ---------------------------------------------------------------------- register state (cumulative feeds)

def register_state(*rows) -> pd.DataFrame:
    return pd.DataFrame([(m, pd.Timestamp(t), v) for m, t, v in rows], columns=["meter_id", "ts", "register_kwh"])


def test_register_state_only_moves_forward_and_is_not_rewritten_when_unchanged(tmp_path):
    store = ReadingStore(tmp_path)
    empty = store.last_registers()
    assert empty.empty and list(empty.columns) == ["meter_id", "ts", "register_kwh"]
    assert store.save_registers(register_state(("A", "2026-11-20 09:30", 100.6),
                                               ("B", "2026-11-20 09:00", 12345678.123))) == 2
    sidecar = tmp_path / "_last_registers.parquet"
    written = sidecar.stat().st_mtime_ns
    assert store.save_registers(store.last_registers()) == 0
    assert sidecar.stat().st_mtime_ns == written  # a re-run rewrites nothing
    # An old file ingested again does not set A back; B moves on; C is new.
    assert store.save_registers(register_state(("A", "2026-11-20 08:00", 100.0), ("B", "2026-11-20 09:15", 12345678.2),
                                               ("C", "2026-11-20 09:15", 0.5))) == 2
    # At an equal ts the stored value is kept, as append keeps a stored reading.
    assert store.save_registers(register_state(("A", "2026-11-20 09:30", 999.0))) == 0
    assert store.last_registers().to_dict("records") == [
        {"meter_id": "A", "ts": pd.Timestamp("2026-11-20 09:30"), "register_kwh": 100.6},
        {"meter_id": "B", "ts": pd.Timestamp("2026-11-20 09:15"), "register_kwh": 12345678.2},  # float64: exact
        {"meter_id": "C", "ts": pd.Timestamp("2026-11-20 09:15"), "register_kwh": 0.5},
    ]
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="register_kwh"):
        store.save_registers(register_state(("D", "2026-11-20 09:15", float("nan"))))


def test_concurrent_register_saves_lose_no_meter(tmp_path):
    errors = []

    def worker(meter: str) -> None:
        try:
            for k in range(5):
                ReadingStore(tmp_path).save_registers(register_state((meter, f"2026-11-20 09:{15 * (k % 4):02d}", k)))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    _run_in_threads(worker, [f"M{i}" for i in range(4)])
    assert not errors
    assert ReadingStore(tmp_path).last_registers()["meter_id"].tolist() == ["M0", "M1", "M2", "M3"]
