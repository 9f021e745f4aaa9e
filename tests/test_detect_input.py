"""`sibifang detect` on files as they come (issue #3, part 5): the contract's columns however
they are spelt, offsets, cadences, bad values, Parquet; rows read = used + set aside, a clean
error naming the file for what cannot be judged, and the same output, in the same order, every
time."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sibifang.cli import app
from tests.test_detect_causality import area_readings

runner = CliRunner()
CONTRACT = ["meter_id", "kind", "start", "detected_at", "severity", "score"]
COUNTS = re.compile(r"：读取 (\d+) 行，接受 (\d+) 行，隔离 (\d+) 行")
ISO_LOCAL = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$"


@pytest.fixture(scope="module")
def area() -> pd.DataFrame:
    """Three households, 30 days of 15-minute readings, ts as local text."""
    df = area_readings(11, meters=3, days=30)
    return df.assign(ts=df.ts.dt.strftime("%Y-%m-%d %H:%M:%S"))


def run(src, out, *args):
    result = runner.invoke(app, ["detect", "--readings", str(src), "--out", str(out), "--min-severity", "low",
                                 *map(str, args)])
    assert "Traceback" not in result.output
    return result


def detect_ok(tmp_path, frame: pd.DataFrame, name: str = "r.csv", *args) -> tuple[pd.DataFrame, tuple, str]:
    src = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(src)
    else:
        frame.to_csv(src, index=False)
    out = tmp_path / f"{name}.flags.csv"
    result = run(src, out, *args)
    assert result.exit_code == 0, result.output
    read, used, rejected = (int(n) for n in COUNTS.search(result.output).groups())
    assert read == used + rejected == len(frame)
    assert len(pd.read_csv(out.with_name(f"{out.stem}.quarantine.csv"))) == rejected
    return pd.read_csv(out, dtype=str), (read, used, rejected), out.read_bytes()


def test_output_is_the_contract_one_row_an_episode_in_a_fixed_order(tmp_path, area):
    flags, counts, first = detect_ok(tmp_path, area)
    assert counts == (len(area), len(area), 0)
    assert list(flags.columns[:6]) == CONTRACT
    assert len(flags) >= 3
    assert not flags.duplicated(["meter_id", "kind", "start"]).any()        # one row an episode
    for col in ("start", "detected_at"):
        assert flags[col].str.match(ISO_LOCAL).all(), flags[col]
    assert (pd.to_datetime(flags.start) <= pd.to_datetime(flags.detected_at)).all()
    key = flags.assign(d=pd.to_datetime(flags.detected_at))
    assert key.equals(key.sort_values(["meter_id", "d", "kind"], kind="stable"))
    _, _, again = detect_ok(tmp_path, area)                                 # same result twice, byte for byte
    assert again == first
    shuffled = area.sample(frac=1, random_state=3)                          # unsorted rows: the same flags
    assert detect_ok(tmp_path, shuffled, "shuffled.csv")[2] == first


def test_columns_however_spelt_and_extra_columns_change_nothing(tmp_path, area):
    _, _, expected = detect_ok(tmp_path, area)
    spelt = area.rename(columns={"meter_id": " Meter_ID ", "ts": "TS", "kwh": " KWH"})
    assert detect_ok(tmp_path, spelt, "spelt.csv")[2] == expected
    extra = area.assign(note="抄表", temperature=21.5)[["note", "meter_id", "temperature", "ts", "kwh"]]
    assert detect_ok(tmp_path, extra, "extra.csv")[2] == expected


def test_offsets_are_converted_to_shanghai_time(tmp_path, area):
    _, _, expected = detect_ok(tmp_path, area)
    utc = pd.to_datetime(area.ts) - pd.Timedelta(hours=8)
    for name, text in (("z.csv", utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ")),
                       ("plus0.csv", utc.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")),
                       ("minus5.csv", (utc - pd.Timedelta(hours=5)).dt.strftime("%Y-%m-%dT%H:%M:%S-05:00"))):
        assert detect_ok(tmp_path, area.assign(ts=text), name)[2] == expected, name


def test_duplicates_and_bad_values_are_set_aside_and_counted(tmp_path, area):
    _, _, expected = detect_ok(tmp_path, area)
    bad = pd.concat([area, area.iloc[100:130]], ignore_index=True).astype({"kwh": object})
    bad.loc[5, "kwh"] = ""              # missing
    bad.loc[6, "kwh"] = -0.4            # negative
    bad.loc[7, "kwh"] = 1e6             # absurd
    bad.loc[8, "kwh"] = "abc"
    bad.loc[9, "meter_id"] = ""
    bad.loc[10, "ts"] = "not a time"
    flags, counts, _ = detect_ok(tmp_path, bad, "bad.csv")
    assert counts == (len(bad), len(bad) - 36, 36)
    q = pd.read_csv(tmp_path / "bad.csv.flags.quarantine.csv", dtype=str)
    assert sorted(q.line.astype(int)) == sorted([7, 8, 9, 10, 11, 12, *range(len(area) + 2, len(area) + 32)])
    assert {"line", "field", "code", "reason", "value"} <= set(q.columns)
    assert q.set_index("line").loc["8", "field"] == "kwh"
    assert len(flags)


def test_the_same_use_read_every_15_30_or_60_minutes_raises_the_same_flags(tmp_path):
    """Each meter's interval is its own: the hours add up to the same use, so the same flags.
    (kWh in 1/1024 steps: sums exact in any order, so no rounding differs between the files.)"""
    fine = area_readings(11, meters=3, days=30, lost=False)
    fine = fine.assign(kwh=np.round(fine.kwh * 1024) / 1024)
    outputs = {}
    for minutes in (15, 30, 60):
        df = (fine.set_index("ts").groupby("meter_id")["kwh"]
              .resample(f"{minutes}min", label="right", closed="right").sum(min_count=1).dropna().reset_index())
        df = df.assign(ts=df.ts.dt.strftime("%Y-%m-%d %H:%M:%S"))
        flags, counts, outputs[minutes] = detect_ok(tmp_path, df, f"c{minutes}.csv")
        assert counts == (len(df), len(df), 0) and len(flags)
    assert outputs[15] == outputs[30] == outputs[60]


def test_parquet_with_integer_meter_ids_and_a_single_meter(tmp_path, area):
    ints = area.assign(meter_id=area.meter_id.str[1:].astype(np.int64), ts=pd.to_datetime(area.ts))
    flags, counts, _ = detect_ok(tmp_path, ints, "ints.parquet")
    expected, _, _ = detect_ok(tmp_path, area)
    pd.testing.assert_frame_equal(flags, expected.assign(meter_id=expected.meter_id.str[1:]))
    one = area[area.meter_id == "M1"]
    single, counts, _ = detect_ok(tmp_path, one, "one.csv")
    assert counts == (len(one), len(one), 0)
    pd.testing.assert_frame_equal(single, expected[expected.meter_id == "M1"].reset_index(drop=True))


def test_as_of_with_an_offset_and_before_the_data(tmp_path, area):
    src = tmp_path / "r.csv"
    area.to_csv(src, index=False)
    local = run(src, tmp_path / "local.csv", "--as-of", "2026-10-20 10:00")
    shifted = run(src, tmp_path / "utc.csv", "--as-of", "2026-10-20T02:00:00Z")
    assert local.exit_code == shifted.exit_code == 0
    assert (tmp_path / "local.csv").read_bytes() == (tmp_path / "utc.csv").read_bytes()
    flags = pd.read_csv(tmp_path / "local.csv")
    assert (pd.to_datetime(flags.detected_at) <= pd.Timestamp("2026-10-20 10:00")).all()
    early = run(src, tmp_path / "early.csv", "--as-of", "2020-01-01T00:00+08:00")
    assert early.exit_code == 2 and "r.csv" in early.output and "早于" in early.output


def test_an_empty_file_and_a_header_only_file_are_clean_errors(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_text("meter_id,ts,kwh\n")
    for name in ("empty.csv", "header.csv"):
        result = run(tmp_path / name, tmp_path / "o.csv")
        assert result.exit_code == 2 and name in result.output, result.output
        assert isinstance(result.exception, SystemExit)
