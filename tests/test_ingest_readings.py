"""Meter ingestion: cleaning rules, file formats, cumulative registers, and properties."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sibifang.ingest_readings import (
    CONFLICT_SET_ASIDE_REASON,
    CONFLICTS_SET_ASIDE,
    INFORMATIONAL_CODES,
    QUARANTINE_CODES,
    QUARANTINE_COLUMNS,
    REGISTER_JITTER_KWH,
    CleanResult,
    clean_readings,
    parse_reading_times,
)
from sibifang.readings_files import read_readings_file

NOW = datetime(2026, 11, 21, 12, 0)


def clean(rows, **kwargs) -> CleanResult:
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"])
    kwargs.setdefault("now", NOW)
    return clean_readings(raw, source="test.csv", **kwargs)


def assert_balanced(result: CleanResult, n: int) -> None:
    assert result.counts["read"] == n
    assert len(result.accepted) + len(result.quarantined) == n
    assert result.counts["accepted"] == len(result.accepted)
    assert result.counts["quarantined"] == len(result.quarantined)
    assert sum(result.counts[c] for c in QUARANTINE_CODES) == len(result.quarantined)


def codes_by_line(result: CleanResult) -> dict[int, str]:
    return dict(zip(result.quarantined["line"], result.quarantined["code"]))


# --------------------------------------------------------------------------- single rules

def test_clean_feed_is_accepted_sorted_with_contract_dtypes():
    r = clean([
        ("M2", "2026-11-20 08:30", "0.20"),
        ("M1", "2026-11-20 08:30:00", "0.10"),
        ("M1", "2026-11-20 08:15", "0.05"),
    ])
    assert_balanced(r, 3)
    assert r.quarantined.empty
    assert list(r.accepted.columns) == ["meter_id", "ts", "kwh"]
    assert r.accepted["ts"].dtype == "datetime64[ns]"
    assert r.accepted["kwh"].dtype == np.float64
    assert r.accepted["meter_id"].tolist() == ["M1", "M1", "M2"]
    assert r.accepted["ts"].tolist() == [pd.Timestamp("2026-11-20 08:15"), pd.Timestamp("2026-11-20 08:30"),
                                         pd.Timestamp("2026-11-20 08:30")]


def test_offsets_and_utc_are_converted_to_shanghai_and_naive_is_local():
    r = clean([
        ("M1", "2026-11-20T00:15:00Z", "0.1"),
        ("M2", "2026-11-20T08:15:00+08:00", "0.1"),
        ("M3", "2026-11-20T01:15:00+0100", "0.1"),
        ("M4", "2026-11-20 08:15", "0.1"),
    ])
    assert_balanced(r, 4)
    assert set(r.accepted["ts"]) == {pd.Timestamp("2026-11-20 08:15")}


def test_missing_and_unparseable_fields_are_quarantined_with_line_field_reason():
    r = clean([
        ("", "2026-11-20 08:15", "0.1"),          # line 2
        ("M1", "", "0.1"),                          # line 3
        ("M1", "20/11/2026 soon", "0.1"),           # line 4
        ("M1", "2026-11-20 08:30", ""),             # line 5
        ("M1", "2026-11-20 08:45", "abc"),          # line 6
        ("M1", "2026-11-20 09:00", None),           # line 7
        ("M1", "2026-11-20 09:15", "nan"),          # line 8
        ("M1", "2026-11-20 09:30", "inf"),          # line 9
        ("M1", "2026-11-20 09:45", "0.3"),          # line 10 ok
    ])
    assert_balanced(r, 9)
    assert codes_by_line(r) == {2: "missing_meter_id", 3: "missing_ts", 4: "bad_ts", 5: "missing_kwh",
                                6: "bad_kwh", 7: "missing_kwh", 8: "missing_kwh", 9: "bad_kwh"}
    q = r.quarantined.set_index("line")
    assert q.loc[4, "field"] == "ts" and q.loc[4, "value"] == "20/11/2026 soon"
    assert q.loc[6, "field"] == "kwh" and "数字" in q.loc[6, "reason"]
    assert list(r.quarantined.columns) == QUARANTINE_COLUMNS
    assert (r.quarantined["source_file"] == "test.csv").all()


def test_unknown_meter_future_and_too_old_timestamps():
    r = clean([
        ("M9", "2026-11-20 08:15", "0.1"),
        ("M1", "2026-11-21 12:05", "0.1"),   # within 10 min skew of NOW: fine
        ("M1", "2026-11-21 13:00", "0.1"),   # an hour ahead: clock fast
        ("M1", "1970-01-01 08:15", "0.1"),   # clock reset after power cut
    ], known_meters={"M1"})
    assert_balanced(r, 4)
    assert codes_by_line(r) == {2: "unknown_meter", 4: "future_ts", 5: "ts_too_old"}
    assert "时钟" in r.quarantined.set_index("line").loc[4, "reason"]


def test_now_with_timezone_is_compared_in_local_time():
    # 04:00 UTC = 12:00 Shanghai; a reading at 12:30 local is 30 min in the future.
    r = clean([("M1", "2026-11-21 12:30", "0.1")], now=datetime(2026, 11, 21, 4, 0, tzinfo=timezone.utc))
    assert r.counts["future_ts"] == 1


def test_negative_and_implausible_kwh_scaled_by_interval():
    r = clean([
        ("M1", "2026-11-20 08:15", "-0.01"),
        ("M1", "2026-11-20 08:30", "6.0"),     # 24 kW for 15 min: possible
        ("M1", "2026-11-20 08:45", "7.0"),     # 28 kW: not on 220 V / 100 A
        ("H1", "2026-11-20 09:00", "20.0"),    # hourly meter: 20 kW, possible
        ("H1", "2026-11-20 10:00", "30.0"),    # 30 kW: not possible
    ], interval_minutes={"M1": 15, "H1": 60})
    assert_balanced(r, 5)
    assert codes_by_line(r) == {2: "negative_kwh", 4: "implausible_kwh", 6: "implausible_kwh"}


def test_exact_and_conflicting_duplicates_keep_first_in_file_order():
    r = clean([
        ("M1", "2026-11-20 08:30", "0.4"),          # line 2: kept
        ("M1", "2026-11-20 08:15", "0.1"),          # line 3: kept
        ("M1", "2026-11-20T00:30:00Z", "0.4"),      # line 4: same instant, same kwh
        ("M1", "2026-11-20 08:30", "0.9"),          # line 5: conflicting
        ("M1", "2026-11-20 08:30:00", "0.4"),       # line 6: same again
    ])
    assert_balanced(r, 5)
    assert codes_by_line(r) == {4: "duplicate", 5: "conflicting_duplicate", 6: "duplicate"}
    assert r.accepted["kwh"].tolist() == [0.1, 0.4]
    assert r.counts["duplicate"] == 2 and r.counts["conflicting_duplicate"] == 1


def test_conflicts_set_aside_keeps_none_of_the_readings_that_disagree():
    """``sibifang detect``'s rule: a meter and time whose readings disagree keeps none of them,
    every such row quarantined with a reason that says so; readings that agree are still one."""
    rows = [
        ("M1", "2026-11-20 08:30", "0.4"),          # line 2: conflicts with line 5
        ("M1", "2026-11-20 08:15", "0.1"),          # line 3: kept
        ("M1", "2026-11-20T00:30:00Z", "0.4"),      # line 4: same instant as line 2
        ("M1", "2026-11-20 08:30", "0.9"),          # line 5: conflicting
        ("M1", "2026-11-20 08:45", "0.2"),          # line 6: kept (line 7 agrees)
        ("M1", "2026-11-20 08:45:00", "0.2"),       # line 7: duplicate
    ]
    r = clean(rows, conflicts=CONFLICTS_SET_ASIDE)
    assert_balanced(r, 6)
    assert codes_by_line(r) == {2: "conflicting_duplicate", 4: "conflicting_duplicate",
                                5: "conflicting_duplicate", 7: "duplicate"}
    assert r.accepted["kwh"].tolist() == [0.1, 0.2] and r.accepted_lines.tolist() == [3, 6]
    q = r.quarantined.set_index("line")
    assert (q.loc[[2, 4, 5], "reason"] == CONFLICT_SET_ASIDE_REASON).all()
    assert q.loc[7, "reason"] == QUARANTINE_CODES["duplicate"][1]
    assert r.counts["conflicting_duplicate"] == 3 and r.counts["duplicate"] == 1
    # the default (feeds, the store) is unchanged: the first in file order is kept
    assert codes_by_line(clean(rows)) == {4: "duplicate", 5: "conflicting_duplicate", 7: "duplicate"}


_conflict_rows = st.lists(st.tuples(st.sampled_from(["M1", "M2"]), st.integers(0, 5), st.sampled_from(
    ["0.1", "0.2", "0.10", "0.3", "x", "-1"])), max_size=30)


@settings(max_examples=200, deadline=None)
@given(rows=_conflict_rows, data=st.data())
def test_property_conflicts_set_aside_does_not_depend_on_the_order_of_the_rows(rows, data):
    """Any permutation of the rows: the same accepted readings and the same rows set aside for
    the same reasons, every row accounted for."""
    times = pd.date_range("2026-11-20 08:15", periods=6, freq="15min").strftime("%Y-%m-%d %H:%M")
    as_text = [(m, times[k], v) for m, k, v in rows]  # "0.1" and "0.10" agree
    order = data.draw(st.permutations(range(len(rows))))
    first = clean(as_text, conflicts=CONFLICTS_SET_ASIDE)
    again = clean([as_text[i] for i in order], conflicts=CONFLICTS_SET_ASIDE)
    assert_balanced(again, len(rows))
    pd.testing.assert_frame_equal(again.accepted, first.accepted)
    assert again.counts == first.counts

    def set_aside(r):
        return sorted(r.quarantined[["meter_id", "ts", "code", "reason", "value"]].itertuples(index=False))

    assert set_aside(again) == set_aside(first)
    # no meter and time keeps a reading when its rows disagree
    values = pd.DataFrame(as_text, columns=["meter_id", "ts", "kwh"]).assign(
        kwh=lambda f: pd.to_numeric(f.kwh, errors="coerce")).query("kwh >= 0")
    disagree = values.groupby(["meter_id", "ts"]).kwh.nunique().loc[lambda n: n > 1].index
    kept = set(zip(first.accepted.meter_id, first.accepted.ts.dt.strftime("%Y-%m-%d %H:%M")))
    assert not kept & set(disagree)


def test_repeated_autumn_hour_is_not_a_duplicate_and_real_duplicates_still_are():
    # Europe/Paris falls back on 2024-10-27 at 03:00 (CEST) to 02:00 (CET): hourly readings
    # (end of interval) stamped 02:00 twice, once per pass of the clock.
    rows = [
        ("M1", "2024-10-27 01:00", "0.1"),   # line 2
        ("M1", "2024-10-27 02:00", "0.2"),   # line 3: first pass, kept
        ("M1", "2024-10-27 02:00", "0.2"),   # line 4: second pass (same kWh at night), not a duplicate
        ("M1", "2024-10-27 03:00", "0.3"),   # line 5
        ("M1", "2024-10-27 02:00", "0.2"),   # line 6: a third 02:00 is a duplicate
        ("M1", "2024-10-27 03:00", "0.3"),   # line 7: outside the repeated hour: a duplicate
        ("M2", "2024-10-27T00:30:00Z", "0.4"),   # line 8: 02:30 CEST
        ("M2", "2024-10-27T01:30:00Z", "0.5"),   # line 9: 02:30 CET, the same local time
    ]
    r = clean(rows, timezone="Europe/Paris")
    assert_balanced(r, 8)
    assert codes_by_line(r) == {4: "ambiguous_dst_hour", 6: "duplicate", 7: "duplicate", 9: "ambiguous_dst_hour"}
    assert r.counts["ambiguous_dst_hour"] == 2 and r.counts["duplicate"] == 2
    assert r.quarantined.reason[r.quarantined.code == "ambiguous_dst_hour"].str.startswith("夏令时回拨").all()
    # One reading per meter and local time: the first pass (first in the file) is kept.
    assert r.accepted.values.tolist() == [["M1", pd.Timestamp("2024-10-27 01:00"), 0.1],
                                          ["M1", pd.Timestamp("2024-10-27 02:00"), 0.2],
                                          ["M1", pd.Timestamp("2024-10-27 03:00"), 0.3],
                                          ["M2", pd.Timestamp("2024-10-27 02:30"), 0.4]]
    # No summer time in China (since 1991): the same rows are duplicates there, as before.
    shanghai = clean(rows[:6])
    assert codes_by_line(shanghai) == {4: "duplicate", 6: "duplicate", 7: "duplicate"}
    assert shanghai.counts["ambiguous_dst_hour"] == 0


def test_skipped_spring_hour_is_just_an_hour_without_readings():
    # Europe/Paris springs forward on 2024-03-31 from 02:00 (CET) to 03:00 (CEST).
    ts = pd.date_range("2024-03-30 22:00", "2024-03-31 06:00", freq="15min", tz="UTC").tz_convert("Europe/Paris")
    rows = [("M1", t.strftime("%Y-%m-%d %H:%M:%S"), "0.05") for t in ts]
    r = clean(rows, timezone="Europe/Paris", interval_minutes=15, snap_to_grid=True)
    assert_balanced(r, len(rows))
    assert r.quarantined.empty and len(r.accepted) == len(ts)
    assert not r.accepted.ts.dt.strftime("%H:%M").isin(["02:00", "02:15", "02:30", "02:45"]).any()


def test_empty_input():
    r = clean([])
    assert_balanced(r, 0)
    assert list(r.accepted.columns) == ["meter_id", "ts", "kwh"]
    assert list(r.quarantined.columns) == QUARANTINE_COLUMNS


def test_typed_input_from_parquet_like_frames():
    raw = pd.DataFrame({
        "meter_id": [1001, 1002],
        "ts": pd.to_datetime(["2026-11-20 00:15", "2026-11-20 00:15"]).tz_localize("UTC"),
        "kwh": [0.1, np.nan],
    })
    r = clean_readings(raw, source="x.parquet", now=NOW)
    assert_balanced(r, 2)
    assert r.accepted.iloc[0].tolist() == ["1001", pd.Timestamp("2026-11-20 08:15"), 0.1]
    assert r.quarantined["code"].tolist() == ["missing_kwh"]


# --------------------------------------------------------------------------- cumulative registers

def register(rows, **kwargs) -> CleanResult:
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "register_kwh"])
    kwargs.setdefault("now", NOW)
    return clean_readings(raw, source="register.csv", **kwargs)


def test_register_differencing_with_reset_replacement_gap_and_jitter():
    r = register([
        ("A", "2026-11-20 00:15", "1000.0"),   # 2 baseline
        ("A", "2026-11-20 00:45", "1000.5"),   # 3 (out of order: sorted below)
        ("A", "2026-11-20 00:30", "1000.2"),   # 4 -> 0.2
        ("A", "2026-11-20 01:00", "0.05"),     # 5 reset to ~0: new baseline
        ("A", "2026-11-20 01:15", "0.35"),     # 6 -> 0.3
        ("A", "2026-11-20 01:30", "0.33"),     # 7 jitter backwards: 0 kWh
        ("A", "2026-11-20 02:30", "1.33"),     # 8 gap of 60 min: not spread, new baseline
        ("A", "2026-11-20 02:45", "1.43"),     # 9 -> 0.1
        ("A", "2026-11-20 03:00", "512.0"),    # 10 replaced meter (large drop? no: jump) -> implausible
        ("A", "2026-11-20 03:15", "512.1"),    # 11 -> 0.1 from the new baseline
        ("B", "2026-11-20 00:15", "80.0"),     # 12 baseline
        ("B", "2026-11-20 00:30", "20.0"),     # 13 large drop not near 0: replacement
        ("B", "2026-11-20 00:45", "20.25"),    # 14 -> 0.25
    ])
    assert_balanced(r, 13)
    assert codes_by_line(r) == {2: "register_baseline", 5: "register_reset", 8: "register_gap",
                                10: "implausible_kwh", 12: "register_baseline", 13: "register_drop"}
    got = {(m, t.strftime("%H:%M")): round(k, 6) for m, t, k in r.accepted.itertuples(index=False)}
    assert got == {("A", "00:30"): 0.2, ("A", "00:45"): 0.3, ("A", "01:15"): 0.3, ("A", "01:30"): 0.0,
                   ("A", "02:45"): 0.1, ("A", "03:15"): 0.1, ("B", "00:45"): 0.25}
    assert (r.accepted["kwh"] >= 0).all()
    gap_reason = r.quarantined.set_index("line").loc[8, "reason"]
    # Measured from 0.35, the reference the 0.33 read noise did not lower: 0.3 + 0 + 0.98 is the
    # register's whole rise from 0.05 to 1.33 (from 0.33 it would count 0.02 twice).
    assert "60 分钟" in gap_reason and "0.98 kWh" in gap_reason
    assert r.quarantined.set_index("line").loc[8, "field"] == "register_kwh"


def test_meter_replacement_by_new_meter_id_starts_new_baseline():
    r = register([
        ("OLD", "2026-11-20 00:15", "5000"), ("OLD", "2026-11-20 00:30", "5000.1"),
        ("NEW", "2026-11-20 00:45", "0.0"), ("NEW", "2026-11-20 01:00", "0.2"),
    ])
    assert codes_by_line(r) == {2: "register_baseline", 4: "register_baseline"}
    assert dict(zip(r.accepted["meter_id"], r.accepted["kwh"].round(6))) == {"OLD": 0.1, "NEW": 0.2}


def test_register_batches_chain_through_last_registers():
    first = register([("A", "2026-11-20 00:15", "10.0"), ("A", "2026-11-20 00:30", "10.5")])
    assert first.last_registers.to_dict("records") == [
        {"meter_id": "A", "ts": pd.Timestamp("2026-11-20 00:30"), "register_kwh": 10.5}]
    second = register([("A", "2026-11-20 00:45", "10.9"), ("C", "2026-11-20 00:45", "3.0")],
                      last_registers=first.last_registers)
    assert_balanced(second, 2)
    assert second.accepted["kwh"].round(6).tolist() == [0.4]
    assert codes_by_line(second) == {3: "register_baseline"}
    assert sorted(second.last_registers["meter_id"]) == ["A", "C"]


def test_register_duplicates_are_removed_before_differencing():
    r = register([("A", "2026-11-20 00:15", "1.0"), ("A", "2026-11-20 00:30", "1.5"),
                  ("A", "2026-11-20 00:30", "1.5"), ("A", "2026-11-20 00:30", "9.0")])
    assert codes_by_line(r) == {2: "register_baseline", 4: "duplicate", 5: "conflicting_duplicate"}
    assert r.accepted["kwh"].tolist() == [0.5]


# --------------------------------------------------------------------------- files

def test_read_csv_gbk_with_chinese_headers_and_blank_line(tmp_path):
    path = tmp_path / "读数.csv"
    text = "电表编号,读数时间,用电量\nM1,2026-11-20 08:15,0.1\n\nM1,2026-11-20 08:30,坏\n"
    path.write_bytes(text.encode("gbk"))
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [2, 4]  # the blank line 3 is no row, but is counted
    r = clean_readings(raw, source=path.name, now=NOW)
    assert_balanced(r, 2)
    assert codes_by_line(r) == {4: "bad_kwh"}
    assert r.quarantined.set_index("line").loc[4, "value"] == "坏"


def test_read_csv_utf8_bom_register(tmp_path):
    path = tmp_path / "reg.csv"
    path.write_bytes("\ufeffmeter_id,ts,register_kwh\nA,2026-11-20 08:15,1.0\nA,2026-11-20 08:30,1.2\n".encode())
    r = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert r.accepted["kwh"].round(6).tolist() == [0.2]


def test_read_parquet_and_xlsx(tmp_path):
    frame = pd.DataFrame({"meter_id": ["M1", "M2"], "ts": pd.to_datetime(["2026-11-20 08:15", "2026-11-20 08:30"]),
                          "kwh": [0.1, 0.2]})
    frame.to_parquet(tmp_path / "r.parquet")
    frame.to_excel(tmp_path / "r.xlsx", index=False)
    for name in ("r.parquet", "r.xlsx"):
        raw = read_readings_file(tmp_path / name)
        assert raw["line"].tolist() == [2, 3]
        r = clean_readings(raw, source=name, now=NOW)
        assert r.accepted["kwh"].tolist() == [0.1, 0.2], name
        assert r.accepted["ts"].tolist() == frame["ts"].tolist(), name


def test_read_file_without_value_column_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("meter_id,ts\nM1,2026-11-20 08:15\n")
    with pytest.raises(ValueError, match="kwh"):
        read_readings_file(path)


# --------------------------------------------------------------------------- properties

meter_ids = st.sampled_from(["M1", "M2", "M3", "", "  M1 ", None])
base = datetime(2026, 11, 20)
ts_texts = st.one_of(
    st.integers(0, 200).map(lambda k: (base + pd.Timedelta(minutes=15 * k)).strftime("%Y-%m-%d %H:%M")),
    st.integers(0, 200).map(lambda k: (pd.Timestamp(base) + pd.Timedelta(minutes=15 * k))
                            .tz_localize("Asia/Shanghai").tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.integers(0, 200).map(lambda k: (pd.Timestamp(base) + pd.Timedelta(minutes=15 * k)).isoformat() + "+08:00"),
    st.sampled_from(["", "garbage", "2099-01-01 00:00", "1970-01-01 00:00", "2026-13-40 25:61", None]),
)
kwh_texts = st.one_of(
    st.floats(min_value=-5, max_value=10).map(repr),
    st.floats().map(repr),
    st.decimals(min_value=0, max_value=3, places=3).map(str),
    st.sampled_from(["", "NaN", "abc", "1e400", "-0", " 0.5 ", None]),
)
rows_strategy = st.lists(st.tuples(meter_ids, ts_texts, kwh_texts), max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, data=st.data())
def test_property_messy_interval_feeds(rows, data):
    # Random duplication and shuffling on top of the random rows.
    if rows:
        extra = data.draw(st.lists(st.sampled_from(rows), max_size=10))
        rows = data.draw(st.permutations(rows + extra))
    r = clean(rows, known_meters={"M1", "M2"})
    check_invariants(r, len(rows))
    assert (r.accepted["kwh"] <= 25.0 * 15 / 60).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy)
def test_property_messy_register_feeds(rows):
    r = register(rows)
    check_invariants(r, len(rows))


def check_invariants(r: CleanResult, n: int) -> None:
    assert_balanced(r, n)
    acc = r.accepted
    assert not acc.duplicated(["meter_id", "ts"]).any()
    assert acc.equals(acc.sort_values(["meter_id", "ts"], ignore_index=True))
    assert np.isfinite(acc["kwh"]).all() and (acc["kwh"] >= 0).all()
    assert acc["ts"].dtype == "datetime64[ns]" and acc["ts"].notna().all()
    assert (acc["ts"] <= pd.Timestamp(NOW) + pd.Timedelta(minutes=10)).all()
    assert not acc["meter_id"].isin(["", " M1 "]).any()
    q = r.quarantined
    assert (q["line"] >= 2).all() and q["line"].is_unique
    assert q["field"].isin(["meter_id", "ts", "kwh", "register_kwh"]).all()
    assert q["code"].isin(list(QUARANTINE_CODES)).all()
    assert (q["reason"].str.len() > 0).all()


@pytest.mark.parametrize("text, expected", [
    ("2026-11-20", "2026-11-20 00:00"),                 # date only: midnight, not offset "-20"
    ("2026-11-20 08:15:00.5+08", "2026-11-20 08:15"),   # sub-second floored, short offset
    ("2026-11-20 08:15 +0800", "2026-11-20 08:15"),
    ("2026/11/20 8:15", "2026-11-20 08:15"),
    ("2026年11月20日 08:15", "2026-11-20 08:15"),
    ("2026.11.20 08:15", "2026-11-20 08:15"),
    ("08:15", None),                                     # no date: not completed with today's
    ("1763596800", None),                                # epoch seconds are not a documented format
    ("2026-11-20 24:00", "2026-11-21 00:00"),            # end of day (ISO 8601): the next day's 00:00
    ("2026-11-20T24:00:00+08:00", "2026-11-21 00:00"),
    ("2026/11/20 24:00", "2026-11-21 00:00"),
    ("2026-11-20 24:15", None),                          # no such time
    ("2026-11-20 12:24:00", "2026-11-20 12:24"),         # "24:00" inside a time is not the end of day
    ("2026-11-20T02:45:00z", "2026-11-20 10:45"),        # lower-case UTC designator
    ("2026-11-20T02:45:00.5 z", "2026-11-20 10:45"),
])
def test_timestamp_formats(text, expected):
    r = clean([("M1", text, "0.1")])
    if expected is None:
        assert r.quarantined["code"].tolist() == ["bad_ts"]
    else:
        assert r.accepted["ts"].tolist() == [pd.Timestamp(expected)]


@settings(max_examples=30, deadline=None)
@given(
    intervals=st.lists(st.integers(0, 2000), min_size=2, max_size=40),  # Wh per 15 min
    start_register=st.integers(0, 10**7),
    reset_at=st.integers(0, 60),
    seed=st.integers(0, 2**16),
)
def test_property_register_round_trip_with_reset(intervals, start_register, reset_at, seed):
    """Intervals -> cumulative register (with a reset to 0 at one point) -> shuffled feed -> the
    same intervals back, except the baseline and the reading right after the reset."""
    kwh = np.array(intervals) / 1000.0
    register_values, level = [], start_register / 1000.0
    reset_index = reset_at if 1 <= reset_at < len(kwh) else None
    for i, k in enumerate(kwh):
        level = 0.0 if i == reset_index else level + k  # reset: the register restarts at 0
        register_values.append(round(level, 3))
    ts = pd.date_range("2026-11-20 00:15", periods=len(kwh), freq="15min")
    feed = pd.DataFrame({"meter_id": "A", "ts": ts.strftime("%Y-%m-%d %H:%M"), "register_kwh": register_values})
    feed["line"] = np.arange(2, len(feed) + 2)
    feed = feed.sample(frac=1, random_state=seed)
    r = clean_readings(feed, source="reg", now=NOW)
    check_invariants(r, len(feed))
    expected = {ts[i]: kwh[i] for i in range(1, len(kwh))}
    if reset_index is not None:
        if register_values[reset_index - 1] > REGISTER_JITTER_KWH:
            del expected[ts[reset_index]]  # a real reset: new baseline, no interval
        else:
            expected[ts[reset_index]] = 0.0  # indistinguishable from read jitter: 0 kWh
    got = dict(zip(r.accepted["ts"], r.accepted["kwh"]))
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[t] for t in expected], list(expected.values()), atol=2e-3)
    codes = set(r.quarantined["code"])
    assert "register_baseline" in codes
    if reset_index is not None and register_values[reset_index - 1] > REGISTER_JITTER_KWH:
        assert codes & {"register_reset"}


def test_categorical_meter_ids_as_parquet_dictionaries_arrive():
    raw = pd.DataFrame({
        "meter_id": pd.Categorical([" M1", "M1", None, "M2"], categories=["M2", " M1", "M1", "unused"]),
        "ts": pd.to_datetime(["2026-11-20 08:15", "2026-11-20 08:30", "2026-11-20 08:15", "2026-11-20 08:15"]),
        "kwh": [0.1, 0.2, 0.3, 0.4],
    })
    r = clean_readings(raw, source="x.parquet", now=NOW, known_meters={"M1", "M2"})
    assert_balanced(r, 4)
    assert r.accepted["meter_id"].tolist() == ["M1", "M1", "M2"]
    assert r.quarantined["code"].tolist() == ["missing_meter_id"]


# --------------------------------------------------------------------------- file-level faults

def test_file_faults_are_data_contract_errors_naming_file_and_line(tmp_path):
    from schemas.validation import DataContractError

    cases = {
        "quote.csv": (b'meter_id,ts,kwh\nM1,"2026-11-20 08:15,0.1\nM1,2026-11-20 08:30,0.1\n',
                      "quote.csv 第2行引号未闭合"),
        "enc.csv": ("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\n".encode() + "电表".encode() + b"\xff,x,1\n",
                    "enc.csv 第3行有无法识别的字符"),
        "empty.csv": (b"", "empty.csv 是空文件"),
        # "meter" is read as meter_id
        "cols.csv": (b"meter,when,value\nM1,2026-11-20 08:15,0.1\n", "cols.csv 缺少必需的列：ts、kwh"),
        "r.json": (b"[]", "r.json 的格式不支持"),
        "r.xlsx": (b"not a zip", "r.xlsx 不是有效的 Excel"),
        "r.parquet": (b"not parquet", "r.parquet 不是有效的 Parquet"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataContractError) as err:
            read_readings_file(path)
        assert message in err.value.message_zh, (name, err.value.message_zh)
        assert name in str(err.value)


def test_clean_readings_without_columns_is_a_data_contract_error():
    from schemas.validation import DataContractError

    with pytest.raises(DataContractError):
        clean_readings(pd.DataFrame({"meter_id": ["M1"], "ts": ["2026-11-20 08:15"]}), source="meter-api")
    with pytest.raises(DataContractError):
        clean_readings(pd.DataFrame({"meter_id": ["M1"], "kwh": ["0.1"]}), source="meter-api")


def test_accepted_lines_follow_the_accepted_rows():
    r = clean([("M2", "2026-11-20 08:30", "0.2"), ("M1", "2026-11-20 08:15", "x"), ("M1", "2026-11-20 08:30", "0.1")])
    assert r.accepted["meter_id"].tolist() == ["M1", "M2"]
    assert r.accepted_lines.tolist() == [4, 2]


# --------------------------------------------------------------------------- meter ids, headers

def test_float_meter_ids_from_parquet_are_written_as_integers(tmp_path):
    # An integer id column with one missing id is stored as float64.
    frame = pd.DataFrame({"meter_id": [3302810001.0, np.nan, 3302810002.0, 17.5],
                          "ts": ["2026-11-20 08:15"] * 4, "kwh": [0.1, 0.2, 0.3, 0.4]})
    frame.to_parquet(tmp_path / "ids.parquet")
    raw = read_readings_file(tmp_path / "ids.parquet")
    r = clean_readings(raw, source="ids.parquet", now=NOW, known_meters={"3302810001", "3302810002"})
    assert_balanced(r, 4)
    assert r.accepted["meter_id"].tolist() == ["3302810001", "3302810002"]
    assert codes_by_line(r) == {3: "missing_meter_id", 5: "unknown_meter"}
    # A non-integral number is not silently turned into another meter.
    assert r.quarantined.set_index("line").loc[5, "value"] == "17.5"
    # Frames handed over directly (not read from a file) are normalised too.
    direct = clean_readings(frame, source="frame", now=NOW)
    assert sorted(direct.accepted["meter_id"]) == ["17.5", "3302810001", "3302810002"]


@pytest.mark.parametrize("header, clash", [
    ("meter_id,ts,kwh,用电量", "kwh、用电量 都表示用电量（kwh）"),
    ("meter_id,表号,ts,kwh", "meter_id、表号 都表示电表编号（meter_id）"),
    ("电表编号,读数时间,时间,用电量", "读数时间、时间 都表示读数时间（ts）"),
    ("meter_id,ts,kwh,kwh", "kwh 出现了 2 次（用电量（kwh））"),
    ("meter_id,ts,register_kwh,示数", "register_kwh、示数 都表示累计读数（register_kwh）"),
])
def test_two_headers_for_one_column_refuse_the_file_naming_them(tmp_path, header, clash):
    from schemas.validation import DataContractError

    path = tmp_path / "clash.csv"
    path.write_text(f"{header}\nM1,X,2026-11-20 08:15,0.1\n", encoding="utf-8")
    with pytest.raises(DataContractError) as err:
        read_readings_file(path)
    assert "clash.csv" in err.value.message_zh and clash in err.value.message_zh, err.value.message_zh
    assert err.value.line == 1


def test_kwh_and_register_columns_together_are_no_clash(tmp_path):
    path = tmp_path / "both.csv"
    path.write_text("meter_id,ts,kwh,register_kwh\nM1,2026-11-20 08:15,0.1,100.0\n", encoding="utf-8")
    assert list(read_readings_file(path).columns) == ["line", "meter_id", "ts", "kwh"]


# --------------------------------------------------------------------------- register noise and chaining

def test_register_read_noise_creates_no_energy():
    values = [100.00, 100.04] * 4
    ts = pd.date_range("2026-11-20 00:15", periods=len(values), freq="15min").strftime("%Y-%m-%d %H:%M")
    r = register(list(zip(["A"] * len(values), ts, map(str, values))))
    assert_balanced(r, len(values))
    assert codes_by_line(r) == {2: "register_baseline"}
    assert r.accepted["kwh"].round(6).tolist() == [0.04, 0, 0, 0, 0, 0, 0]
    # The next reading is measured from the reference 100.04, not from the noisy 100.00.
    assert r.last_registers["register_kwh"].tolist() == [100.04]
    more = register([("A", "2026-11-20 02:15", "100.01"), ("A", "2026-11-20 02:30", "100.10")],
                    last_registers=r.last_registers)
    assert more.quarantined.empty
    assert more.accepted["kwh"].round(6).tolist() == [0.0, 0.06]


def test_a_drop_beyond_the_noise_is_measured_from_the_reference():
    # 100.04 -> 100.00 -> 99.98: each step within the noise, but 0.06 below the highest reading:
    # the register did not run backwards by read noise, the meter was changed (or reads wrong).
    r = register([("A", "2026-11-20 00:15", "100.00"), ("A", "2026-11-20 00:30", "100.04"),
                  ("A", "2026-11-20 00:45", "100.00"), ("A", "2026-11-20 01:00", "99.98"),
                  ("A", "2026-11-20 01:15", "100.08")])
    assert codes_by_line(r) == {2: "register_baseline", 5: "register_drop"}
    assert r.accepted["kwh"].round(6).tolist() == [0.04, 0.0, 0.1]


def test_a_resent_reading_is_differenced_within_its_batch_and_the_state_never_moves_back():
    state = pd.DataFrame({"meter_id": ["A"], "ts": [pd.Timestamp("2026-11-20 09:30")], "register_kwh": [100.6]})
    # An overlapping pull: 09:15 and 09:30 were ingested before, 09:45 is new.
    r = register([("A", "2026-11-20 09:15", "100.5"), ("A", "2026-11-20 09:30", "100.6"),
                  ("A", "2026-11-20 09:45", "100.7")], last_registers=state)
    assert codes_by_line(r) == {2: "register_baseline"}
    assert r.accepted["kwh"].round(6).tolist() == [0.1, 0.1]
    assert r.last_registers.to_dict("records") == [
        {"meter_id": "A", "ts": pd.Timestamp("2026-11-20 09:45"), "register_kwh": 100.7}]
    # An old file again: its own first reading is its baseline; the state stays at 09:45.
    old = register([("A", "2026-11-20 08:00", "100.0"), ("A", "2026-11-20 08:15", "100.1")],
                   last_registers=r.last_registers)
    assert old.accepted["kwh"].round(6).tolist() == [0.1]
    assert old.last_registers.to_dict("records") == r.last_registers.to_dict("records")


def noisy_register(steps_wh: list[int], noise_wh: list[int], start_wh: int) -> list[float]:
    """A true register (rising by ``steps_wh``) as read with up to 40 Wh of read noise."""
    level = np.cumsum([start_wh, *steps_wh])
    return [round((level[i] + noise_wh[i % len(noise_wh)]) / 1000.0, 3) for i in range(len(level))]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.one_of(st.just(0), st.integers(0, 2000)), min_size=1, max_size=40),
    noise=st.lists(st.integers(0, 40), min_size=1, max_size=40),
    start=st.integers(0, 10**7),
    cuts=st.sets(st.integers(1, 40), max_size=5),
    seed=st.integers(0, 2**16),
)
def test_property_register_intervals_sum_to_its_rise_however_the_feed_is_split(steps, noise, start, cuts, seed):
    """Read noise adds no energy: the accepted intervals sum to the register's rise (to its
    highest reading; the net rise when it ends there), and cutting the feed into batches
    chained through ``last_registers`` changes no interval."""
    values = noisy_register(steps, noise, start)
    ts = pd.date_range("2026-11-20 00:15", periods=len(values), freq="15min")
    feed = pd.DataFrame({"meter_id": "A", "ts": ts.strftime("%Y-%m-%d %H:%M"), "register_kwh": values})
    feed["line"] = np.arange(2, len(feed) + 2)

    whole = clean_readings(feed.sample(frac=1, random_state=seed), source="reg", now=NOW)
    check_invariants(whole, len(feed))
    assert codes_by_line(whole) == {2: "register_baseline"}
    total = whole.accepted["kwh"].sum()
    assert total == pytest.approx(max(values) - values[0], abs=1e-6)
    net_rise = values[-1] - values[0]
    assert net_rise - 1e-6 <= total <= net_rise + REGISTER_JITTER_KWH
    if values[-1] == max(values):
        assert total == pytest.approx(net_rise, abs=1e-6)

    state, parts = None, []
    bounds = [0, *sorted(c for c in cuts if c < len(feed)), len(feed)]
    for lo, hi in zip(bounds, bounds[1:]):
        part = clean_readings(feed.iloc[lo:hi], source="reg", now=NOW, last_registers=state)
        check_invariants(part, hi - lo)
        assert part.counts["quarantined"] == (1 if lo == 0 else 0)  # only the very first reading
        state, parts = part.last_registers, [*parts, part.accepted]
    chained = pd.concat(parts, ignore_index=True)
    assert chained["ts"].tolist() == whole.accepted["ts"].tolist()
    np.testing.assert_allclose(chained["kwh"], whole.accepted["kwh"], atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(-300, 300), st.booleans(), st.integers(1, 400)), min_size=1, max_size=60),
    passes=st.sampled_from([None, 0, 1]),
)
def test_property_vectorised_baselines_follow_the_rule_reading_by_reading(rows, passes):
    """register_baselines (passes until settled, then the scan for what is left) gives what the
    rule gives applied one reading after the other — with jitter, drops, jumps and gaps."""
    import sibifang.ingest_readings as ingest

    steps, fixed, limit = (np.array(c) for c in zip(*rows))
    reg = 100.0 + np.cumsum(steps) / 100.0  # rises, noise, drops and jumps of up to 3 kWh
    fixed = fixed & (np.arange(len(rows)) % 7 == 0)  # a few forced baselines (meter change, gap)
    limit = limit / 100.0
    expected = ingest.register_baselines_scan(reg, fixed, limit)
    saved = ingest._BASELINE_PASSES
    try:
        if passes is not None:
            ingest._BASELINE_PASSES = passes  # 0: the scan fallback alone; 1: a pass, then the scan
        got = ingest.register_baselines(reg, fixed, limit)
    finally:
        ingest._BASELINE_PASSES = saved
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# --------------------------------------------------------------------------- the ingest task and flow

def test_ingest_frame_judges_future_readings_by_the_clock_alone(database_url, app_env):
    """(Review #4) ``as_of`` used to bound future readings too: in a replay of a past day the next
    morning's readings were quarantined as a fast meter clock. Only the real clock does."""
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import quarantined, seed

    seed(database_url)
    rows = [("M1", "2026-11-20 07:45", "0.1"), ("M1", "2026-11-20 13:00", "0.1"), ("M1", "2026-11-21 06:00", "0.1")]
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"])
    day_end = datetime(2026, 11, 20, 23, 59, 59)
    today = ingest_frame(raw, source="today.csv", batch_id="today", database_url=database_url,
                         now=datetime(2026, 11, 20, 8, 0), as_of=day_end)
    assert (today["accepted"], today["quarantined"]) == (1, 2)  # 13:00 is five hours ahead of the clock
    assert {q.code for q in quarantined(database_url, "ingest_readings")} == {"future_ts"}
    replay = ingest_frame(raw, source="replay.csv", batch_id="replay", database_url=database_url,
                          now=datetime(2026, 12, 1, 8, 0), as_of=datetime(2026, 11, 19, 23, 59, 59))
    # Every reading is in the past of the clock: none is a fast meter clock, whatever the as-of day.
    assert (replay["accepted"], replay["quarantined"]) == (3, 0)


def test_readings_after_counts_a_later_day_not_a_fast_meter_clock():
    from sibifang.ingest_readings import readings_after

    raw = pd.DataFrame({"ts": ["2026-11-19 23:45", "2026-11-20 00:00", "2026-11-20 00:00:01",
                               "2026-11-20T07:55:00+08:00", "2026-11-20 08:05", "2026-11-20 13:00", "garbage", None]})
    as_of, now = datetime(2026, 11, 19, 23, 59, 59), datetime(2026, 11, 20, 8, 0)
    # 00:00 closes the 19th (a day's export runs to the next midnight); 00:00:01, 07:55 and 08:05
    # (within the 10-minute skew) are the next day's; 13:00 is ahead of the clock.
    assert readings_after(raw, as_of, now) == 3
    assert readings_after(raw, datetime(2026, 11, 20, 23, 59, 59), now) == 0


def test_a_register_feed_split_over_files_loses_no_interval(database_url, app_env):
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import quarantined, seed

    seed(database_url)
    store = ReadingStore(app_env / "data" / "readings")
    first_file = [("M1", "2026-11-20 08:00", "100.0"), ("M1", "2026-11-20 08:15", "100.1"),
                  ("M1", "2026-11-20 08:30", "100.2"), ("M1", "2026-11-20 08:45", "100.3")]
    second_file = [("M1", "2026-11-20 09:00", "100.4"), ("M1", "2026-11-20 09:15", "100.5"),
                   ("M1", "2026-11-20 09:30", "100.6")]

    def ingest(batch, rows):
        raw = pd.DataFrame(rows, columns=["meter_id", "ts", "register_kwh"])
        return ingest_frame(raw, source=f"{batch}.csv", batch_id=batch, database_url=database_url, now=NOW)

    a = ingest("a", first_file)
    # The new meter's very first reading is its baseline: counted, with its reason.
    assert (a["read"], a["accepted"], a["quarantined"]) == (4, 3, 1)
    assert [(q.line, q.code) for q in quarantined(database_url, "ingest_readings")] == [(2, "register_baseline")]
    b = ingest("b", second_file)
    assert (b["read"], b["accepted"], b["quarantined"], b["new"]) == (3, 3, 0, 3)  # 09:00 is an interval
    stored = store.load()
    assert stored["ts"].tolist() == list(pd.date_range("2026-11-20 08:15", "2026-11-20 09:30", freq="15min"))
    np.testing.assert_allclose(stored["kwh"], 0.1, atol=1e-6)
    state = store.last_registers().to_dict("records")
    assert state == [{"meter_id": "M1", "ts": pd.Timestamp("2026-11-20 09:30"), "register_kwh": 100.6}]
    # The first file again (by hand, under another batch): no reading changes, the state does not go back.
    again = ingest("a-again", first_file)
    assert (again["new"], again["conflicting"]) == (0, 0)
    assert store.load().equals(stored)
    assert store.last_registers().to_dict("records") == state


THIS_MORNING = datetime(2026, 11, 20, 8, 0)


@pytest.fixture
def readings_inbox_this_morning(prefect_harness, database_url, app_env, monkeypatch) -> Path:
    """The readings inbox of a seeded database (meter M1), the clock at 08:00 today, no meter API."""
    import flows.ingest_readings as ingest_flow
    import sibifang.settings as settings_module
    from tests.test_inbox_rejects import inbox, seed, use_database

    monkeypatch.setattr(settings_module, "local_now", lambda: THIS_MORNING)
    monkeypatch.setattr(ingest_flow, "local_now", lambda: THIS_MORNING, raising=False)
    monkeypatch.delenv("SIBIFANG_METER_API_URL", raising=False)
    use_database(monkeypatch, database_url)
    seed(database_url)
    return inbox(app_env, "readings")


def test_todays_ingest_run_uses_the_clock_and_rejects_clashing_headers(readings_inbox_this_morning, database_url):
    from tests.test_inbox_rejects import runs

    readings = readings_inbox_this_morning
    (readings / "today.csv").write_text("meter_id,ts,kwh\nM1,2026-11-20 07:45,0.1\nM1,2026-11-20 08:05,0.1\n"
                                        "M1,2026-11-20 13:00,0.1\n", encoding="utf-8")
    (readings / "clash.csv").write_text("meter_id,ts,kwh,用电量\nM1,2026-11-20 07:30,0.1,0.1\n", encoding="utf-8")
    result = ingest_readings_flow(readings)
    # 08:05 is within the 10 min clock skew; 13:00 is a meter clock five hours fast.
    assert (result["files"], result["accepted"], result["quarantined"]) == (1, 2, 1)
    assert (result["rejected"], result["failed"]) == (1, 0), result["failed_files"]
    assert "kwh、用电量 都表示用电量（kwh）" in result["rejected_files"][0]["reason"]
    assert [p.name[:6] for p in (readings / "rejected").iterdir()] == ["clash."]
    [run] = runs(database_url, "clash.csv")
    assert run.at == THIS_MORNING  # recorded when it happened, not at the end of the day


def test_the_inbox_refuses_a_file_written_with_decimal_commas_naming_line_and_field(readings_inbox_this_morning):
    """An export from a machine whose decimal mark is a comma: every value would be a bad number.
    The file goes to rejected/ with one Chinese reason instead of hundreds of quarantined rows."""
    readings = readings_inbox_this_morning
    (readings / "commas.csv").write_text("meter_id;ts;kwh\nM1;2026-11-20 07:15;0,1\nM1;2026-11-20 07:30;0,2\n",
                                         encoding="utf-8")
    result = ingest_readings_flow(readings)
    assert (result["files"], result["accepted"], result["rejected"]) == (0, 0, 1)
    reason = result["rejected_files"][0]["reason"]
    assert "第2行" in reason and "逗号作小数点" in reason, reason


def test_a_replay_of_yesterday_leaves_todays_file_for_todays_run(readings_inbox_this_morning, database_url):
    """(Review #4) replaying yesterday quarantined today's readings as future_ts and moved the
    file to done/: today's run then read nothing."""
    from flows.ingest_readings import ingest_readings

    readings = readings_inbox_this_morning
    (readings / "today.csv").write_text("meter_id,ts,kwh\nM1,2026-11-20 07:15,0.1\nM1,2026-11-20 07:30,0.1\n",
                                        encoding="utf-8")
    # Yesterday's export runs to this midnight: the reading stamped 00:00 closes yesterday.
    (readings / "yesterday.csv").write_text("meter_id,ts,kwh\nM1,2026-11-19 20:00,0.2\nM1,2026-11-20 00:00,0.2\n",
                                            encoding="utf-8")
    replay = ingest_readings(date(2026, 11, 19), inbox=str(readings.parent))
    assert (replay["files"], replay["read"], replay["accepted"], replay["quarantined"]) == (1, 2, 2, 0)
    assert replay["deferred_files"] == [{"file": "today.csv", "later_readings": 2}]
    assert (readings / "today.csv").exists()
    assert _ledger(database_url)[2] == []  # nothing quarantined
    today = ingest_readings(inbox=str(readings.parent))
    assert (today["files"], today["read"], today["accepted"], today["quarantined"]) == (1, 2, 2, 0)
    assert today["deferred"] == 0
    assert not list(readings.glob("*.csv"))


def ingest_readings_flow(readings):
    from flows.ingest_readings import ingest_readings

    return ingest_readings(inbox=str(readings.parent))


def test_each_meter_is_cleaned_at_its_own_interval(database_url, app_env):
    """An hourly register meter (meters.interval_minutes = 60): a reading an hour on is an interval,
    not a gap, and 7 kWh in an hour (a heater) is not an impossible 15-minute spike."""
    from schemas.models import Meter
    from sibifang.db import session_scope, upsert
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import seed

    seed(database_url)
    with session_scope(database_url) as s:
        upsert(s, Meter, [{"id": "M60", "household_id": "H1", "interval_minutes": 60}], key=["id"])
    rows = [("M60", f"2026-11-20 0{h}:00", f"{100 + 7 * h:.1f}") for h in range(1, 5)]
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "register_kwh"])
    r = ingest_frame(raw, source="hourly.csv", batch_id="hourly", database_url=database_url, now=NOW)
    assert (r["read"], r["accepted"], r["quarantined"]) == (4, 3, 1)  # only the first reading: its baseline


# --------------------------------------------------------------------------- files from elsewhere
# (what `sibifang detect` is fed: other people's exports, not our feeds)

from sibifang.importing import ImportFileError  # noqa: E402
from sibifang.ingest_readings import infer_interval_minutes  # noqa: E402
from sibifang.readings_files import check_readings_text  # noqa: E402


def _meter(meter: str, start: str, periods: int, minutes: int) -> pd.DataFrame:
    ts = pd.date_range(start, periods=periods, freq=f"{minutes}min")
    return pd.DataFrame({"meter_id": meter, "ts": ts, "kwh": 0.1})


def test_interval_is_the_low_percentile_spacing_despite_gaps_and_jitter():
    rng = np.random.default_rng(5)
    m15 = _meter("q", "2026-03-01 00:15", 2000, 15)
    m15 = m15[rng.random(len(m15)) < 0.35]  # two readings in three missing: the median spacing is 30+ min
    m15 = m15.assign(ts=m15.ts + pd.to_timedelta(rng.integers(-5, 6, len(m15)), unit="s"))  # clock jitter
    assert m15.ts.diff().median() > pd.Timedelta(minutes=29)
    frame = pd.concat([m15, _meter("h", "2026-03-01 01:00", 200, 60), _meter("d", "2026-03-01", 60, 1440),
                       _meter("one", "2026-03-01", 1, 15)])
    assert infer_interval_minutes(frame) == {"q": 15, "h": 60, "d": 1440}  # one reading: no interval


def test_jittered_clock_is_snapped_to_the_meter_grid_and_collisions_are_duplicates():
    rows = [("M1", "2026-11-20 10:00:03", "0.1"), ("M1", "2026-11-20 10:14:56", "0.2"),
            ("M1", "2026-11-20 10:30:00", "0.3"), ("M1", "2026-11-20 10:29:58", "0.3"),  # same slot twice
            ("M1", "2026-11-20 10:37:30", "0.4")]  # half an interval off: not jitter, left where it is
    r = clean(rows, interval_minutes={"M1": 15}, snap_to_grid=True)
    assert_balanced(r, 5)
    assert r.accepted.ts.dt.strftime("%H:%M:%S").tolist() == ["10:00:00", "10:15:00", "10:30:00", "10:37:30"]
    assert codes_by_line(r) == {5: "duplicate"}
    unsnapped = clean(rows, interval_minutes={"M1": 15})
    assert unsnapped.quarantined.empty and "10:00:03" in unsnapped.accepted.ts.astype(str).str[11:].tolist()


def test_meters_read_less_often_than_hourly_are_set_aside_with_a_reason():
    frame = pd.concat([_meter("d", "2026-03-01", 5, 1440), _meter("h", "2026-03-01 01:00", 5, 60)])
    r = clean_readings(frame, source="x.csv", now=NOW, interval_minutes=infer_interval_minutes(frame),
                       max_interval_minutes=60)
    assert_balanced(r, 10)
    assert set(r.accepted.meter_id) == {"h"}
    assert set(r.quarantined.code) == {"interval_too_long"} and r.counts["interval_too_long"] == 5
    assert r.quarantined.reason.str.contains("约每 1440 分钟一条").all()


@pytest.mark.parametrize("header", ["Meter ID,Timestamp,kWh", "meter-id, TIMESTAMP ,Energy (kWh)",
                                    "电表编号,读数时间,用电量（kWh）", "MeterID,DateTime,KWH"])
def test_header_variants_are_the_contract_columns(tmp_path, header):
    src = tmp_path / "r.csv"
    src.write_text(f"{header}\nM1,2026-11-20 10:00,0.1\n", encoding="utf-8")
    raw = read_readings_file(src)
    assert list(raw.columns) == ["line", "meter_id", "ts", "kwh"]


def test_semicolon_and_tab_separated_files_are_read(tmp_path):
    for sep, name in ((";", "semi.csv"), ("\t", "tab.txt")):
        src = tmp_path / name
        src.write_text(f"meter_id{sep}ts{sep}kwh\nM1{sep}2026-11-20 10:00{sep}0.1\n", encoding="utf-8")
        raw = read_readings_file(src)
        assert raw[["meter_id", "ts", "kwh"]].values.tolist() == [["M1", "2026-11-20 10:00", "0.1"]]


def test_a_value_column_in_wh_is_refused_naming_the_header(tmp_path):
    src = tmp_path / "wh.csv"
    src.write_text("meter_id,ts,Energy (Wh)\nM1,2026-11-20 10:00,100\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(src)
    assert "Energy (Wh)" in e.value.message_zh and "除以 1000" in e.value.message_zh and e.value.line == 1


def _raw(ts, kwh=None):
    n = len(ts)
    return pd.DataFrame({"line": np.arange(2, n + 2), "meter_id": "M1", "ts": ts,
                         "kwh": kwh if kwh is not None else ["0.1"] * n})


def test_epoch_seconds_are_refused_naming_file_line_and_field():
    with pytest.raises(ImportFileError) as e:
        check_readings_text(_raw(["1700000000", "1700000900", "1700001800"]), "e.csv")
    assert e.value.line == 2
    assert "文件 e.csv 第2行 ts" in e.value.message_zh and "Unix 时间戳" in e.value.message_zh
    with pytest.raises(ImportFileError):  # a Parquet integer column, in milliseconds
        check_readings_text(_raw(pd.Series([1700000000000, 1700000900000])), "e.parquet")


def test_day_month_order_is_settled_by_the_file_or_refused():
    with pytest.raises(ImportFileError) as e:  # 03/04: 3 April or 4 March?
        check_readings_text(_raw(["03/04/2024 10:00", "03/04/2024 10:15", "04/04/2024 10:00"]), "a.csv")
    assert "第2行 ts" in e.value.message_zh and "日/月/年" in e.value.message_zh
    day_first = check_readings_text(_raw(["13/04/2024 10:00", "03/04/2024 10:15"]), "b.csv")
    assert day_first.ts.tolist() == ["2024-04-13 10:00", "2024-04-03 10:15"]
    month_first = check_readings_text(_raw(["4/13/2024 10:00", "4/3/2024 10:15"]), "c.csv")
    assert month_first.ts.tolist() == ["2024-04-13 10:00", "2024-04-03 10:15"]
    with pytest.raises(ImportFileError, match="ambiguous"):  # 13/04 and 04/13 in one file
        check_readings_text(_raw(["13/04/2024 10:00", "04/13/2024 10:15"]), "d.csv")
    # One stray cell is a row defect (bad_ts when cleaned), not a file-level one.
    stray = _raw(["2024-04-03 10:00", "2024-04-03 10:15", "03/04/2024 10:30"])
    assert check_readings_text(stray, "e.csv").ts.tolist() == stray.ts.tolist()


def test_decimal_commas_are_refused_naming_file_line_and_field():
    with pytest.raises(ImportFileError) as e:
        check_readings_text(_raw(["2024-04-03 10:00", "2024-04-03 10:15", "2024-04-03 10:30"],
                                 ["1", "0,25", "0,5"]), "c.csv")
    assert e.value.line == 3 and "第3行 kwh" in e.value.message_zh and "0,25" in e.value.message_zh
    ok = _raw(["2024-04-03 10:00", "2024-04-03 10:15"], ["0.25", "1"])
    assert check_readings_text(ok, "ok.csv") is ok


def test_na_and_null_written_by_other_tools_are_missing_readings_not_bad_ones():
    r = clean([("M1", "2026-11-20 10:00", "NA"), ("M1", "2026-11-20 10:15", "null"),
               ("M1", "2026-11-20 10:30", "N/A"), ("M1", "2026-11-20 10:45", "NAN1")])
    assert_balanced(r, 4)
    assert codes_by_line(r) == {2: "missing_kwh", 3: "missing_kwh", 4: "missing_kwh", 5: "bad_kwh"}


def test_csv_read_in_blocks_keeps_true_line_numbers(tmp_path, monkeypatch):
    import sibifang.readings_files as readings_files

    monkeypatch.setattr(readings_files, "CSV_BLOCK_ROWS", 2)
    src = tmp_path / "r.csv"
    src.write_text("meter_id,ts,kwh\n" + "M1,2026-11-20 10:00,0.1\n\n" * 3, encoding="utf-8")
    raw = read_readings_file(src)
    assert raw.line.tolist() == [2, 4, 6] and raw.meter_id.tolist() == ["M1"] * 3  # blank lines: no rows
    src.write_text("meter_id,ts,kwh\n" + "M1,2026-11-20 10:00,0.1\n" * 5 + "M1,2026-11-20 10:15,0.1,9\n",
                   encoding="utf-8")
    # A row wider than the header in the last block: marked on its own line, not a shift.
    raw = read_readings_file(src)
    assert raw.line.tolist() == [2, 3, 4, 5, 6, 7] and raw["_extra_fields"].tolist() == [""] * 5 + ["9"]
    src.write_text("meter_id,ts,kwh\n" + "M1,2026-11-20 10:00,0.1\n" * 5 + 'M1,"2026-11-20 10:15,0.1\n',
                   encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(src)
    assert e.value.line == 7 and "第7行引号未闭合" in e.value.message_zh


def test_a_quoted_line_break_does_not_shift_the_lines_of_the_rows_after_it(tmp_path):
    """A cell with a line break in it (Alt+Enter in Excel) makes its row span two lines: the
    rows after it are reported on the lines they are on, in the quarantine and in file errors,
    in every encoding and with Windows line ends."""
    text = ('meter_id,ts,kwh\n'
            '"M\n1",2026-11-20 08:15,0.1\n'           # lines 2-3
            'M1,2026-11-20 08:30,0.1\n'                # line 4
            '\n'                                        # line 5: blank
            'M1,"2026-11-20\n\n08:45",0.1\n'           # lines 6-8
            'M1,notatime,0.1\n')                        # line 9
    for name, data in {"lf.csv": text.encode(), "crlf.csv": text.replace("\n", "\r\n").encode(),
                       "gbk.csv": text.replace("M1", "电表1").encode("gbk"),
                       "utf16.csv": text.encode("utf-16")}.items():
        src = tmp_path / name
        src.write_bytes(data)
        raw = read_readings_file(src)
        assert raw.line.tolist() == [2, 4, 6, 9], name  # the blank line 5 is no row
        q = clean_readings(raw, source=name, now=NOW).quarantined.set_index("line")
        assert q.loc[9, "code"] == "bad_ts" and q.loc[9, "value"] == "notatime", name
        assert 5 not in q.index, name
    src = tmp_path / "wide.csv"  # a row wider than the header after a multi-line one: pandas' record 4
    src.write_text('meter_id,ts,kwh\n"M\n1",2026-11-20 08:15,0.1\n\nM1,"x\ny",0.1,9\n', encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(src)
    assert e.value.line == 5 and "第5行的列数多于表头" in e.value.message_zh and "line 5" in str(e.value)
    src = tmp_path / "quote.csv"  # an unclosed quote after a multi-line row: pandas' record 4
    src.write_text('meter_id,ts,kwh\n"M\n1",2026-11-20 08:15,0.1\nM1,2026-11-20 08:30,0.1\n'
                   'M1,"2026-11-20 08:45,0.1\nM1,2026-11-20 09:00,0.1\n', encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(src)
    assert e.value.line == 5 and "第5行引号未闭合" in e.value.message_zh


_cells = st.lists(st.sampled_from(["a", "1", " ", ",", '"', "\n", "\r\n", "电"]), max_size=6).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(st.none(), st.tuples(_cells, _cells, _cells)), max_size=12),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_property_line_is_the_physical_line_a_row_starts_on(tmp_path, rows, newline):
    """Whatever the cells hold (separators, quotes, line breaks) and wherever blank lines are:
    each row's ``line`` is the line it starts on, counted as a text editor counts them."""
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(["meter_id", "ts", "kwh"])
    expected = []
    for row in rows:
        if row is None:
            out.write(newline)  # a blank line: counted, but no row
            continue
        if any(cell.strip() for cell in row):  # a row of blank cells (" ", "", "\n") is no row either
            expected.append(out.getvalue().count("\n") + 1)
        writer.writerow(row)
    src = tmp_path / "r.csv"
    src.write_bytes(out.getvalue().encode("utf-8"))
    try:
        raw = read_readings_file(src)
    except ImportFileError:
        return  # a whole column written a way the file checks refuse: not about lines
    assert raw.line.tolist() == expected


# --------------------------------------------------------------------------- rows wider than the header
# (review, HIGH: a comma at the end of each row made pandas take meter_id as the index and shift
# every field one column left -- every row bad_ts, raw {"meter_id": "2025-01-15 12:00", ...})

@pytest.mark.parametrize("encoding", ["utf-8", "gb18030", "utf-16"])
@pytest.mark.parametrize("rows", [
    ["M000012,2025-01-15 12:00,0.1,", "M000012,2025-01-15 12:15,0.2,"],  # every row
    ["M000012,2025-01-15 12:00,0.1,", "M000012,2025-01-15 12:15,0.2"],  # only the first
    ["M000012,2025-01-15 12:00,0.1", "M000012,2025-01-15 12:15,0.2,,"],  # a later one, twice
])
def test_empty_trailing_fields_are_harmless(tmp_path, rows, encoding):
    path = tmp_path / "trailing.csv"
    path.write_bytes(("meter_id,ts,kwh\n" + "\n".join(rows) + "\n").encode(encoding))
    result = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert_balanced(result, 2)
    assert result.accepted["meter_id"].tolist() == ["M000012", "M000012"]
    assert result.accepted["kwh"].tolist() == [0.1, 0.2]


@pytest.mark.parametrize("sep", [",", ";"])
def test_a_row_wider_than_the_header_is_quarantined_alone_naming_its_line(tmp_path, sep):
    """As the registry import does: the row is set aside whole (which of its fields is the
    reading is a guess), with what was extra; the other rows and the file go on."""
    lines = ["meter_id,ts,kwh", "M1,2026-11-20 08:15,0.1,9", "M1,2026-11-20 08:30,0.2",
             "M1,2026-11-20 08:45,0.3,,7,", "M1,2026-11-20 09:00,0.4,"]
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(line.replace(",", sep) for line in lines) + "\n", encoding="utf-8")
    result = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert_balanced(result, 4)
    assert result.accepted["ts"].dt.strftime("%H:%M").tolist() == ["08:30", "09:00"]
    q = result.quarantined
    assert q["line"].tolist() == [2, 4] and set(q["code"]) == {"extra_fields"}
    assert q["field"].tolist() == ["_row", "_row"] and q["value"].tolist() == ["9", "7"]
    assert q["meter_id"].tolist() == ["M1", "M1"] and q["ts"].tolist() == ["2026-11-20 08:15", "2026-11-20 08:45"]
    assert "列数多于表头" in q["reason"].iloc[0]


def test_a_wide_row_is_kept_with_its_fields_in_the_ledger(database_url, app_env):
    """Through the ingest: the quarantined row's raw fields are its own, not shifted."""
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import quarantined, seed

    seed(database_url)
    path = app_env / "wide.csv"
    path.write_text("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1,9\nM1,2026-11-20 08:30,0.2,\n", encoding="utf-8")
    r = ingest_frame(read_readings_file(path), source=path.name, batch_id="wide", database_url=database_url, now=NOW)
    assert (r["read"], r["accepted"], r["quarantined"]) == (2, 1, 1)
    [row] = quarantined(database_url, "ingest_readings")
    assert (row.line, row.field, row.code) == (2, "_row", "extra_fields")
    assert row.raw == {"meter_id": "M1", "ts": "2026-11-20 08:15", "kwh": "0.1"}


# ------------------------------------------------------------------ the readings suite agrees with the cleaning
# (review, HIGH: the suite capped every reading at 24 kWh while the cleaning allows 25 kW over
# the meter's interval, so one hourly 24.5 kWh rejected the whole file with a 0-based row)

def _meters(url: str, **intervals: int) -> None:
    from schemas.models import Meter
    from sibifang.db import session_scope, upsert

    with session_scope(url) as s:
        upsert(s, Meter, [{"id": m, "household_id": "H1", "interval_minutes": n} for m, n in intervals.items()],
               key=["id"])


def test_a_reading_the_cleaning_accepts_never_rejects_its_file(database_url, app_env):
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import seed

    seed(database_url)
    _meters(database_url, M60=60, DAY=1440)
    rows = [("M1", "2026-11-20 08:00", "0.1"),
            ("M60", "2026-11-20 08:00", "24.5"),  # an hour at 24.5 kW: under 25 kW
            ("DAY", "2026-11-20 00:00", "31"),  # a day's use
            ("M1", "2026-11-20 08:15", "6.3")]  # 25.2 kW over 15 minutes: impossible
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"])
    r = ingest_frame(raw, source="big.csv", batch_id="big", database_url=database_url, now=NOW)
    assert (r["read"], r["accepted"], r["quarantined"]) == (4, 3, 1)
    # A cumulative hourly register: 36 kWh over 90 minutes (1.5 intervals) is still an interval.
    reg = pd.DataFrame([("M60", "2026-11-21 01:00", "100"), ("M60", "2026-11-21 02:30", "136")],
                       columns=["meter_id", "ts", "register_kwh"])
    r = ingest_frame(reg, source="reg.csv", batch_id="reg", database_url=database_url, now=NOW)
    assert (r["read"], r["accepted"], r["quarantined"]) == (2, 1, 1)  # the first is its baseline


def test_a_reading_that_breaks_the_contract_is_named_by_line_and_field(database_url, app_env, monkeypatch):
    """Should the suite ever be stricter than the cleaning, the clerk reads which lines and field."""
    import schemas.suites
    from schemas.validation import DataContractError
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import seed

    seed(database_url)
    monkeypatch.setattr(schemas.suites, "max_kwh_per_reading", lambda minutes, **kw: minutes * 0 + 1.0)
    rows = [("M1", "2026-11-20 08:15", "0.5"), ("M1", "2026-11-20 08:00", "2.5")]
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"])
    with pytest.raises(DataContractError) as e:
        ingest_frame(raw, source="odd.csv", batch_id="odd", database_url=database_url, now=NOW)
    assert "文件 odd.csv 第3行 kwh（用电量）列未通过入库检查" in e.value.message_zh
    assert "lines [3]" in str(e.value)


def test_the_ingest_snaps_seconds_of_clock_jitter_onto_the_meter_grid(database_url, app_env):
    """(Review) an hourly meter stamped 10:00:03, 10:59:58, 12:00:02 was stored off its grid:
    the hourly table read NaN, 1.0, NaN, 1.0."""
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import seed

    seed(database_url)
    _meters(database_url, M60=60)
    rows = [("M60", "2026-11-20 10:00:03", "1.0"), ("M60", "2026-11-20 10:59:58", "1.0"),
            ("M60", "2026-11-20 12:00:02", "1.0"), ("M1", "2026-11-20 10:14:55", "0.1")]
    r = ingest_frame(pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"]), source="jitter.csv",
                     batch_id="jitter", database_url=database_url, now=NOW)
    assert (r["read"], r["accepted"], r["quarantined"]) == (4, 4, 0)
    stored = ReadingStore(app_env / "data" / "readings").load().sort_values(["meter_id", "ts"])
    assert stored["ts"].dt.strftime("%H:%M:%S").tolist() == ["10:15:00", "10:00:00", "11:00:00", "12:00:00"]


# ------------------------------------------------------------------ the same file twice (review #6)

REGISTER_FILE = ("meter_id,ts,register_kwh\nM1,2026-11-20 06:00,100.0\nM1,2026-11-20 06:15,100.1\n"
                 "M1,2026-11-20 06:30,100.2\n")


def _ledger(url: str) -> tuple:
    from sqlalchemy import select

    from schemas.models import QuarantinedRow, ReadingBatch, ValidationRun
    from sibifang.db import session_scope

    with session_scope(url) as s:
        batches = sorted((b.rows_read, b.rows_accepted, b.rows_quarantined, b.rows_new)
                         for b in s.scalars(select(ReadingBatch)))
        validations = sorted((v.source, v.success, v.rows_read) for v in s.scalars(select(ValidationRun)))
        quarantine = sorted((q.batch, q.line, q.code) for q in s.scalars(select(QuarantinedRow)))
    return batches, validations, quarantine


def test_two_identical_files_in_one_inbox_run_are_ingested_once(readings_inbox_this_morning, database_url):
    """Both copies used to be ingested: the second turned the register's first reading into a
    baseline, and recorded a failed validation run the ledger contradicted."""
    readings = readings_inbox_this_morning
    (readings / "a.csv").write_text(REGISTER_FILE, encoding="utf-8")
    (readings / "b_copy.csv").write_text(REGISTER_FILE, encoding="utf-8")
    result = ingest_readings_flow(readings)
    assert (result["files"], result["read"], result["accepted"], result["quarantined"]) == (1, 3, 2, 1)
    assert result["duplicates"] == 1
    batches, validations, quarantine = _ledger(database_url)
    assert batches == [(3, 2, 1, 2)]
    assert [v[0] for v in validations] == ["a.csv"]
    assert [code for _, _, code in quarantine] == ["register_baseline"]
    assert sorted(p.name.split(".")[0] for p in (readings / "done").iterdir()) == ["a", "b_copy"]
    assert not list(readings.glob("*.csv"))
    # The same file dropped again on a later run: moved aside unread, nothing changes.
    (readings / "a_again.csv").write_text(REGISTER_FILE, encoding="utf-8")
    again = ingest_readings_flow(readings)
    assert (again["files"], again["read"], again["duplicates"]) == (0, 0, 1)
    assert _ledger(database_url) == (batches, validations, quarantine)


def test_importing_the_same_readings_file_twice_says_so_and_changes_nothing(database_url, app_env, monkeypatch):
    from typer.testing import CliRunner

    from sibifang.cli import app
    from tests.test_inbox_rejects import seed, use_database

    use_database(monkeypatch, database_url)
    seed(database_url)
    path = app_env / "readings.csv"
    path.write_text(REGISTER_FILE, encoding="utf-8")
    runner = CliRunner()
    first = runner.invoke(app, ["import", "readings", str(path)], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "读取 3 行，导入 2 行，隔离 1 行（新增 2 条）" in first.output
    before = _ledger(database_url)
    second = runner.invoke(app, ["import", "readings", str(path)], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert "已导入过" in second.output and "未重复导入" in second.output
    assert "读取 3 行，导入 2 行，隔离 1 行（新增 2 条）" in second.output  # the earlier counts
    assert _ledger(database_url) == before


def test_full_width_digits_in_kwh_are_read_as_digits():
    r = clean([("M1", "2026-11-20 08:15", "０.５"), ("M1", "2026-11-20 08:30", "0.25"),
               ("M1", "2026-11-20 08:45", "约0.3")])
    assert_balanced(r, 3)
    assert list(r.accepted["kwh"]) == [0.5, 0.25]
    assert list(r.quarantined["code"]) == ["bad_kwh"]


_pulled_rows = st.lists(st.tuples(
    st.sampled_from(["M1", "M2", "", None]),
    st.one_of(st.integers(0, 8).map(lambda k: f"2026-11-20T{8 + k // 4:02d}:{k % 4 * 15:02d}:0{k % 3}+08:00"),
              st.sampled_from(["2026-11-20 08:15", "2026-11-20 24:00", "2026-11-20T00:30:00z", "", None, "later"])),
    st.sampled_from(["0.1", "0.2", "-1", "x", "", 30.0, 0.25])), max_size=25)


@settings(max_examples=150, deadline=None)
@given(rows=_pulled_rows, keep=st.lists(st.booleans(), min_size=25, max_size=25))
def test_property_times_read_once_clean_as_they_would_be_read_again(rows, keep):
    """clean_readings with the times a pull read first (of the rows it keeps) gives the result
    it gives reading them itself."""
    raw = pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"], dtype=object)
    kept = np.asarray(keep[:len(raw)], dtype=bool)
    times = parse_reading_times(raw).take(kept)
    raw = raw.loc[kept].reset_index(drop=True)
    options = dict(source="meter-api", now=NOW, known_meters={"M1"}, interval_minutes=15, snap_to_grid=True)
    once, again = clean_readings(raw, times=times, **options), clean_readings(raw, **options)
    pd.testing.assert_frame_equal(once.accepted, again.accepted)
    pd.testing.assert_frame_equal(once.quarantined, again.quarantined)
    assert once.counts == again.counts and once.accepted_lines.tolist() == again.accepted_lines.tolist()
    with pytest.raises(ValueError):
        clean_readings(raw, times=parse_reading_times(raw, "Europe/Paris"), **options)


# --------------------------------------------------------------------------- what county offices' Excel exports hold
# (review: trailing ",,," rows, as Excel writes below the data of a sheet formatted further down,
# were each quarantined as "缺少电表编号"; a blank row is no row, as in the registry import)

def _xlsx_with_formatted_empty_rows(path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import PatternFill

    wb = Workbook()
    ws = wb.active
    ws.append(["meter_id", "ts", "kwh"])
    ws.append(["M1", "2026-11-20 08:15", 0.1])
    ws.append([None, None, None])                      # row 3: left empty
    ws.append(["M1", "2026-11-20 08:30", "坏"])
    ws.append(["  ", "", None])                        # row 5: spaces only
    ws.append(["M1", "2026-11-20 08:45", 0.3])
    for row in range(7, 40):                           # formatted, never filled
        for column in range(1, 4):
            ws.cell(row=row, column=column).fill = PatternFill("solid", fgColor="FFFF00")
    wb.save(path)


@pytest.mark.parametrize("kind", ["csv", "csv-gbk-crlf", "xlsx", "parquet"])
def test_rows_of_blank_cells_are_no_rows_in_any_format(tmp_path, kind):
    """Blank lines, ",,," rows, rows of spaces, empty and formatted sheet rows, all-null Parquet
    rows: not rows read, not quarantined; the other rows keep their own lines."""
    text = ("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\n,,\nM1,2026-11-20 08:30,坏\n  , ,\t\n"
            "M1,2026-11-20 08:45,0.3\n,,\n\n,,\n")
    if kind == "csv":
        path = tmp_path / "r.csv"
        path.write_text(text, encoding="utf-8")
    elif kind == "csv-gbk-crlf":
        path = tmp_path / "r.csv"
        path.write_bytes(text.replace("\n", "\r\n").encode("gbk"))
    elif kind == "xlsx":
        path = tmp_path / "r.xlsx"
        _xlsx_with_formatted_empty_rows(path)
    else:
        path = tmp_path / "r.parquet"
        pd.DataFrame({"meter_id": ["M1", None, "M1", None, "M1", None],
                      "ts": ["2026-11-20 08:15", None, "2026-11-20 08:30", None, "2026-11-20 08:45", None],
                      "kwh": [0.1, None, None, None, 0.3, np.nan],
                      "note": [None, None, "坏", None, None, ""]}).to_parquet(path)
    raw = read_readings_file(path)
    r = clean_readings(raw, source=path.name, now=NOW)
    assert raw["line"].tolist() == [2, 4, 6]
    assert_balanced(r, 3)
    assert r.accepted["kwh"].tolist() == [0.1, 0.3]
    assert codes_by_line(r) == {4: "missing_kwh" if kind == "parquet" else "bad_kwh"}


def test_a_row_with_anything_in_it_is_still_a_row(tmp_path):
    """Only rows blank in every column, those not read included, are no rows: a note, a field
    beyond the header, keep the row, quarantined with its reason."""
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,kwh,备注\nM1,2026-11-20 08:15,0.1,\n,,,已拆表\n,,,\nM1,2026-11-20 08:30,0.2\n"
                    ",,,,9\n", encoding="utf-8")
    r = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert_balanced(r, 4)
    assert codes_by_line(r) == {3: "missing_meter_id", 6: "extra_fields"}
    path = tmp_path / "r.parquet"
    pd.DataFrame({"meter_id": ["M1", None, None], "ts": ["2026-11-20 08:15", None, None], "kwh": [0.1, None, None],
                  "note": [None, "已拆表", None], "count": [None, None, np.nan]}).to_parquet(path)
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [2, 3]  # the unread column "note" keeps line 3
    assert codes_by_line(clean_readings(raw, source=path.name, now=NOW)) == {3: "missing_meter_id"}


def test_full_width_meter_ids_and_times_are_read_as_typed_in_ascii(tmp_path):
    """Typed with a Chinese input method: Ｍ１ is the registered meter M1 (the registry import
    folds ids the same way), ２０２６－１１－２０ ０８：４５ a time; a copy so typed is a duplicate."""
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\nＭ１,2026-11-20 08:30,0.2\n"
                    "M1,２０２６－１１－２０　０８：４５,０.３\n　Ｍ１　,2026-11-20 08:15,0.1\n"
                    "M1,２０２６－１１－２０ ２４：００,0.4\n", encoding="utf-8")
    r = clean_readings(read_readings_file(path), source=path.name, now=NOW, known_meters={"M1"})
    assert_balanced(r, 5)
    assert r.accepted["meter_id"].tolist() == ["M1"] * 4
    assert r.accepted["ts"].dt.strftime("%m-%d %H:%M").tolist() == ["11-20 08:15", "11-20 08:30", "11-20 08:45",
                                                                   "11-21 00:00"]
    assert codes_by_line(r) == {5: "duplicate"}


def test_thousands_separators_are_read_where_the_file_shows_its_decimal_point(tmp_path):
    """Excel's "use 1000 separator" format, exported as shown: a register past 1,000 kWh had
    every reading quarantined as "not a number"."""
    path = tmp_path / "reg.csv"
    path.write_text('meter_id,ts,register_kwh\nM1,2026-11-20 08:15,"1,234.50"\nM1,2026-11-20 08:30,"1,234.75"\n'
                    'M1,2026-11-20 08:45,"1,235"\nM1,2026-11-20 09:00,"1,235.25"\n', encoding="utf-8")
    r = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert_balanced(r, 4)
    assert r.accepted["kwh"].round(6).tolist() == [0.25, 0.25, 0.25]  # "1,235" is 1235: the file's mark is "."
    path.write_text('meter_id,ts,register_kwh\nM1,2026-11-20 08:15,"1,234,567"\nM1,2026-11-20 08:30,"1,234,567.5"\n',
                    encoding="utf-8")
    assert clean_readings(read_readings_file(path), source=path.name, now=NOW).accepted["kwh"].tolist() == [0.5]
    # "12,345" alone: 12345 -- the decimal mark here is the point (a file of decimal commas is refused)
    path.write_text('meter_id,ts,register_kwh\nM1,2026-11-20 08:00,"12,345"\nM1,2026-11-20 08:15,"12,346"\n',
                    encoding="utf-8")
    assert read_readings_file(path)["register_kwh"].tolist() == ["12345", "12346"]
    path.write_text('meter_id,ts,kwh\nM1,2026-11-20 08:00,"0,25"\nM1,2026-11-20 09:00,"1,250"\n', encoding="utf-8")
    with pytest.raises(ImportFileError, match="decimal comma"):  # a decimal comma stays refused
        read_readings_file(path)


def test_excel_serial_dates_are_refused_naming_what_they_are(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,kwh\nM1,46346.34375,0.1\nM1,46346.3541666667,0.2\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(path)
    assert e.value.line == 2 and "第2行 ts（读数时间）列的值 46346.34375 是 Excel 的日期序号" in e.value.message_zh
    pd.DataFrame({"meter_id": ["M1", "M1"], "ts": [46346.34375, 46346.3541666667], "kwh": [0.1, 0.2]}).to_parquet(
        tmp_path / "r.parquet")
    with pytest.raises(ImportFileError, match="Excel serial"):
        read_readings_file(tmp_path / "r.parquet")
    path.write_text("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\nM1,46346.3541666667,0.2\nM1,2026-11-20 08:45,0.3\n",
                    encoding="utf-8")
    r = clean_readings(read_readings_file(path), source=path.name, now=NOW)  # a stray one: that row
    assert codes_by_line(r) == {3: "bad_ts"}


def test_a_totals_row_is_set_aside_as_one_not_read_as_a_meter(tmp_path):
    """合计 at the foot of a sheet: with a date it was accepted as the readings of a meter named
    合计; without one it read "缺少读数时间"."""
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\nM1,2026-11-20 08:30,0.2\n合计,2026-11-20,0.3\n"
                    "合 计：,,0.3\n,总计,0.3\nTotal,,0.3\n", encoding="utf-8")
    r = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert_balanced(r, 6)
    assert r.accepted["meter_id"].tolist() == ["M1", "M1"]
    assert codes_by_line(r) == {4: "total_row", 5: "total_row", 6: "total_row", 7: "total_row"}
    assert r.quarantined["reason"].str.startswith("合计行").all()
    assert "total_row" in INFORMATIONAL_CODES


@pytest.mark.parametrize("name", ["title.csv", "titles-gbk.csv", "title.xlsx"])
def test_a_title_above_the_header_is_skipped_naming_the_header_line(tmp_path, name):
    from openpyxl import Workbook

    path = tmp_path / name
    if name == "title.csv":
        path.write_text("城关镇2026年11月电表读数\nmeter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\n", encoding="utf-8")
        header = 2
    elif name == "titles-gbk.csv":
        path.write_bytes(("城关镇2026年11月电表读数,,\n制表：城关镇妇联,,\n"
                          "电表编号,读数时间,用电量\nM1,2026-11-20 08:15,0.1\n").encode("gbk"))
        header = 3
    else:
        wb = Workbook()
        ws = wb.active
        ws.append(["城关镇2026年11月电表读数"])
        ws.merge_cells("A1:C1")
        ws.append(["电表编号", "读数时间", "用电量（kWh）"])
        ws.append(["M1", "2026-11-20 08:15", 0.1])
        wb.save(path)
        header = 2
    raw = read_readings_file(path)  # read from its header, as the registry import reads it
    assert raw["line"].tolist() == [header + 1] and raw["meter_id"].tolist() == ["M1"]
    assert raw.attrs["header_layout"].lines == (header,)


def test_a_header_of_two_rows_is_refused_not_read_as_its_first_column(tmp_path):
    """用电量 merged over 峰 | 谷: read as one header, kwh was the peak alone (the valley dropped
    without a word) and the sub-header row a "missing meter id"."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["电表编号", "读数时间", "用电量（kWh）", None])
    ws.merge_cells("C1:D1")
    ws.append([None, None, "峰", "谷"])
    ws.append(["M1", "2026-11-20 08:15", 0.25, 0.1])
    wb.save(tmp_path / "two.xlsx")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(tmp_path / "two.xlsx")
    assert e.value.line == 2 and "第2行是第二行表头（峰、谷）" in e.value.message_zh
