"""Meter ingestion: cleaning rules, file formats, cumulative registers, and properties."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sibifang.ingest_readings import (
    QUARANTINE_CODES,
    QUARANTINE_COLUMNS,
    REGISTER_JITTER_KWH,
    CleanResult,
    clean_readings,
    read_readings_file,
)

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
    assert "60 分钟" in gap_reason and "1.0 kWh" in gap_reason
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
    assert raw["line"].tolist() == [2, 3, 4]
    r = clean_readings(raw, source=path.name, now=NOW)
    assert_balanced(r, 3)
    assert codes_by_line(r) == {3: "missing_meter_id", 4: "bad_kwh"}
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
        "wide.csv": (b"meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\nM1,2026-11-20 08:30,0.1,9\n",
                     "wide.csv 第3行的列数多于表头（表头3列，该行4列）"),
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
