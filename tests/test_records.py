"""Unit tests of sibifang.records: stable ids and pandas → Python value cleaning (no database)."""

from __future__ import annotations

import math
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest

from sibifang.records import as_list, chunks, clean_value, frame_records, stable_id, to_date, to_datetime


# --- stable_id -------------------------------------------------------------------------------

def test_stable_id_is_deterministic_and_prefixed():
    a = stable_id("F", "visit", "V-1", "dispute")
    b = stable_id("F", "visit", "V-1", "dispute")
    assert a == b
    assert a.startswith("F-")
    assert len(a) == len("F-") + 16
    assert all(c in "0123456789abcdef" for c in a[2:])


def test_stable_id_known_value_does_not_drift():
    # Ids are stored in the database: a change of the hashing would duplicate every row on re-run.
    import hashlib

    expected = "C-" + hashlib.sha1("H-001\x1fF-abc".encode("utf-8")).hexdigest()[:16]
    assert stable_id("C", "H-001", "F-abc") == expected


def test_stable_id_differs_with_parts_order_and_prefix():
    assert stable_id("F", "a", "b") != stable_id("F", "b", "a")
    assert stable_id("F", "a", "b") != stable_id("F", "a", "c")
    assert stable_id("F", "a")[2:] == stable_id("N", "a")[2:]  # prefix is a label, not hashed
    assert stable_id("F", "a") != stable_id("N", "a")


def test_stable_id_parts_are_not_simply_concatenated():
    assert stable_id("X", "ab", "c") != stable_id("X", "a", "bc")


def test_stable_id_length_and_unicode():
    assert len(stable_id("N", "走访", "家庭教育", length=8)) == len("N-") + 8
    assert stable_id("N", "走访") == stable_id("N", "走访")
    assert stable_id("N", "走访") != stable_id("N", "走访 ")


# --- clean_value -----------------------------------------------------------------------------

@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NaT, pd.NA, np.float64("nan"),
                                     np.float32("nan"), np.datetime64("NaT")])
def test_clean_value_missing_becomes_none(missing):
    assert clean_value(missing) is None


def test_clean_value_numpy_scalars_become_python():
    v = clean_value(np.int64(7))
    assert v == 7 and type(v) is int
    v = clean_value(np.int32(-3))
    assert v == -3 and type(v) is int
    v = clean_value(np.float64(1.5))
    assert v == 1.5 and type(v) is float
    v = clean_value(np.float32(0.25))
    assert v == 0.25 and type(v) is float
    v = clean_value(np.bool_(True))
    assert v is True
    v = clean_value(np.bool_(False))
    assert v is False


def test_clean_value_timestamp_becomes_naive_datetime():
    v = clean_value(pd.Timestamp("2026-07-12 08:30:00"))
    assert type(v) is datetime
    assert v == datetime(2026, 7, 12, 8, 30)
    v = clean_value(pd.Timestamp("2026-07-12 08:30:00", tz="Asia/Shanghai"))
    assert v.tzinfo is None
    assert v == datetime(2026, 7, 12, 8, 30)


def test_clean_value_nested_containers():
    out = clean_value({"a": np.int64(1), "b": [np.nan, "x", np.float64(2.0)], "c": (pd.NaT,)})
    assert out == {"a": 1, "b": [None, "x", 2.0], "c": [None]}
    assert type(out["a"]) is int
    arr = clean_value(np.array([1, 2, 3]))
    assert arr == [1, 2, 3] and all(type(x) is int for x in arr)


def test_clean_value_leaves_plain_python_alone():
    for v in ("", "家暴", 0, 0.0, False, date(2026, 1, 1), datetime(2026, 1, 1, 1, 2)):
        assert clean_value(v) == v
        assert type(clean_value(v)) is type(v)


def test_clean_value_numpy_datetime64_becomes_python_datetime():
    v = clean_value(np.datetime64("2026-07-12T08:30:00"))
    assert isinstance(v, datetime)
    assert v == datetime(2026, 7, 12, 8, 30)


def test_frame_records_cleans_each_cell():
    df = pd.DataFrame({"id": ["a", "b"], "n": [1, np.nan], "ts": [pd.Timestamp("2026-01-02 03:04"), pd.NaT]})
    recs = frame_records(df)
    assert recs == [{"id": "a", "n": 1.0, "ts": datetime(2026, 1, 2, 3, 4)}, {"id": "b", "n": None, "ts": None}]
    assert frame_records(df, ["id"]) == [{"id": "a"}, {"id": "b"}]


def test_chunks():
    assert [list(c) for c in chunks(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    assert list(chunks([], 3)) == []


# --- as_list ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("dispute;hardship", ["dispute", "hardship"]),
    (" dispute ; hardship ;", ["dispute", "hardship"]),
    ("困难家庭;;空巢老人", ["困难家庭", "空巢老人"]),
    ("single", ["single"]),
    ("", []),
    (None, []),
    (float("nan"), []),
    (pd.NA, []),
    (["a", None, "", "b"], ["a", "b"]),
    (["a", np.nan, "b"], ["a", "b"]),
    (("x", "y"), ["x", "y"]),
    (np.array(["g1", "g2"]), ["g1", "g2"]),
    ([1, 2], ["1", "2"]),
])
def test_as_list(value, expected):
    assert as_list(value) == expected


# --- to_date / to_datetime -------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("2026-03-05", date(2026, 3, 5)),
    ("2026-03-05 23:59:59", date(2026, 3, 5)),
    (date(2026, 3, 5), date(2026, 3, 5)),
    (datetime(2026, 3, 5, 12, 0), date(2026, 3, 5)),
    (pd.Timestamp("2026-03-05 10:00"), date(2026, 3, 5)),
    (np.datetime64("2026-03-05"), date(2026, 3, 5)),
    ("", None),
    (None, None),
    (pd.NaT, None),
    (float("nan"), None),
])
def test_to_date(value, expected):
    out = to_date(value)
    assert out == expected
    if expected is not None:
        assert type(out) is date


@pytest.mark.parametrize("value, expected", [
    ("2026-03-05 08:30", datetime(2026, 3, 5, 8, 30)),
    ("2026-03-05 08:30:15", datetime(2026, 3, 5, 8, 30, 15)),
    ("2026-03-05", datetime(2026, 3, 5)),
    (date(2026, 3, 5), datetime(2026, 3, 5)),
    (datetime(2026, 3, 5, 1, 2, 3), datetime(2026, 3, 5, 1, 2, 3)),
    (pd.Timestamp("2026-03-05 08:30"), datetime(2026, 3, 5, 8, 30)),
    (np.datetime64("2026-03-05T08:30"), datetime(2026, 3, 5, 8, 30)),
    ("", None),
    (None, None),
    (pd.NaT, None),
])
def test_to_datetime(value, expected):
    out = to_datetime(value)
    assert out == expected
    if expected is not None:
        assert type(out) is datetime
        assert out.tzinfo is None


def test_to_datetime_drops_local_offset_keeping_wall_time():
    # Local (Asia/Shanghai) offset: the wall-clock time is kept, stored naive.
    assert to_datetime("2026-03-05 08:30+08:00") == datetime(2026, 3, 5, 8, 30)


def test_to_date_rejects_garbage():
    with pytest.raises((ValueError, TypeError)):
        to_date("not a date")


def test_clean_value_nan_inside_float_check_not_confused_with_zero():
    assert clean_value(0.0) == 0.0
    assert clean_value(np.float64(0.0)) == 0.0
    assert not math.isnan(clean_value(np.float64(-1.0)))
