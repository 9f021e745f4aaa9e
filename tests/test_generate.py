"""Tests of the synthetic area generator (village scale, few days: fast)."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sibifang.generate import SCALES, generate_area

DOCS = Path(__file__).resolve().parents[1] / "docs" / "file-formats.md"
START = date(2026, 10, 1)
DAYS = 42  # long enough for the full 21-day baseline before any anomaly
CSV_FILES = ["areas.csv", "households.csv", "cadres.csv", "meters.csv", "visits.csv",
             "resources.csv", "mediation_rooms.csv", "anomalies.csv"]


def gb11643_ok(number: str) -> bool:
    """Independent check of the resident ID check character (GB 11643-1999)."""
    if not re.fullmatch(r"\d{17}[\dX]", number):
        return False
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    total = sum(int(d) * w for d, w in zip(number[:17], weights))
    return "10X98765432"[total % 11] == number[17]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("village_a")
    generate_area("village", 7, out, start=START, days=DAYS)
    return out


@pytest.fixture(scope="module")
def area_again(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("village_b")
    generate_area("village", 7, out, start=START, days=DAYS)
    return out


@pytest.fixture(scope="module")
def readings(area) -> pd.DataFrame:
    return pd.read_parquet(area / "readings.parquet")


@pytest.fixture(scope="module")
def anomalies(area) -> pd.DataFrame:
    df = read(area / "anomalies.csv")
    df["start"] = pd.to_datetime(df.start)
    df["end"] = pd.to_datetime(df.end)
    return df


def documented_columns() -> dict[str, list[str]]:
    text = DOCS.read_text(encoding="utf-8")
    out = {}
    for m in re.finditer(r"^## ([\w.]+\.csv)[^\n]*\n`([^`]*)`", text, flags=re.M):
        cols = re.sub(r"\([^)]*\)", "", m.group(2))
        out[m.group(1)] = [c.strip() for c in cols.split(",") if c.strip()]
    return out


def test_same_seed_gives_identical_files(area, area_again):
    for name in CSV_FILES + ["households.xlsx", "cadres.xlsx", "manifest.json"]:
        assert (area / name).read_bytes() == (area_again / name).read_bytes(), name
    assert pq.read_table(area / "readings.parquet").equals(
        pq.read_table(area_again / "readings.parquet"))


def test_different_seed_differs(area, tmp_path):
    generate_area("village", 8, tmp_path, start=START, days=DAYS)
    assert (tmp_path / "households.csv").read_bytes() != (area / "households.csv").read_bytes()
    a = pd.read_parquet(area / "readings.parquet").kwh.to_numpy()
    b = pd.read_parquet(tmp_path / "readings.parquet").kwh.to_numpy()
    assert len(a) != len(b) or not np.array_equal(a, b)


def test_columns_exactly_as_documented(area, readings):
    documented = documented_columns()
    assert {"areas.csv", "households.csv", "cadres.csv", "meters.csv", "visits.csv",
            "resources.csv", "mediation_rooms.csv", "anomalies.csv"} <= set(documented)
    for name in CSV_FILES:
        assert list(read(area / name).columns) == documented[name], name
    for name in ("households", "cadres"):
        xl = pd.read_excel(area / f"{name}.xlsx", dtype=str, keep_default_na=False)
        assert list(xl.columns) == documented[f"{name}.csv"]
        pd.testing.assert_frame_equal(xl, read(area / f"{name}.csv"))
    assert list(readings.columns) == ["meter_id", "ts", "kwh"]
    assert str(readings.ts.dtype).startswith("datetime64") and readings.ts.dt.tz is None


def test_id_numbers_phones_and_birth_dates(area):
    hh = read(area / "households.csv")
    assert hh.id_number.map(gb11643_ok).all()
    assert hh.id_number.is_unique and hh.household_id.is_unique
    assert hh.phone.str.fullmatch(r"1[3-9]\d{9}|0\d{2,3}-\d{7,8}").all()
    assert (hh.head_name.str.len() >= 2).all()
    births = pd.to_datetime(hh.id_number.str[6:14], format="%Y%m%d")
    alone = hh.elderly_living_alone == "1"
    assert births[alone].dt.year.between(1935, 1955).all()
    assert births.dt.year.between(1930, 2008).all()
    cadres = read(area / "cadres.csv")
    assert cadres.phone.str.fullmatch(r"1[3-9]\d{9}").all()


def test_references_resolve(area):
    areas = read(area / "areas.csv")
    hh = read(area / "households.csv")
    cadres = read(area / "cadres.csv")
    meters = read(area / "meters.csv")
    visits = read(area / "visits.csv")
    resources = read(area / "resources.csv")
    rooms = read(area / "mediation_rooms.csv")
    grids = set(areas.grid_id)
    assert areas.grid_id.is_unique and areas.grid_id.str.fullmatch(r"G\d{4}").all()
    assert set(hh.grid_id) <= grids
    assert {g for ids in cadres.grid_ids for g in ids.split(";") if g} <= grids
    assert set(meters.household_id) <= set(hh.household_id)
    assert set(visits.household_id) <= set(hh[hh.categories != ""].household_id)
    assert set(visits.cadre_id) <= set(cadres.cadre_id)
    # A visit is made by a cadre who covers the family's grid.
    grid_of = dict(zip(hh.household_id, hh.grid_id))
    cover = dict(zip(cadres.cadre_id, cadres.grid_ids.str.split(";")))
    assert all(grid_of[h] in cover[c] for h, c in zip(visits.household_id, visits.cadre_id))
    assert set(resources.village_id) <= set(areas.village_id)
    assert set(rooms.township_id) == set(areas.township_id)
    role = dict(zip(cadres.cadre_id, cadres.role))
    assert all(role[m] == "mediator" for ids in rooms.mediator_ids for m in ids.split(";"))


def test_roles_and_proportions(area):
    areas = read(area / "areas.csv")
    hh = read(area / "households.csv")
    cadres = read(area / "cadres.csv")
    spec = SCALES["village"]
    assert len(hh) == spec.households and len(cadres) == spec.cadres
    per_grid = hh.groupby("grid_id").size()
    assert per_grid.between(60, 170).all()
    roles = cadres.role.value_counts()
    assert roles["grid_worker"] == len(areas)
    assert roles["village_chair"] == areas.village_id.nunique()
    assert roles["mediator"] == areas.township_id.nunique()
    assert set(cadres.role) <= {"cadre", "executive_member", "vice_chair", "grid_worker",
                                "village_chair", "mediator", "supervisor"}
    assert set(cadres.alert_channel) <= {"webhook", "wecom", "dingtalk", "feishu", "sms", "email"}
    chairs = cadres[cadres.role == "village_chair"]
    for gids in chairs.grid_ids:
        villages = areas.set_index("grid_id").loc[gids.split(";"), "village_id"]
        assert villages.nunique() == 1 and len(gids.split(";")) == (
            areas.village_id == villages.iloc[0]).sum()

    alone = hh.elderly_living_alone == "1"
    assert alone.sum() == spec.metered_elderly
    assert hh[alone].categories.str.contains("empty_nest").all()
    assert (hh[alone].members == "1").all()
    must = hh[hh.categories != ""]
    cats = must.categories.str.split(";").explode().value_counts()
    assert set(cats.index) <= {"entrepreneur", "hardship", "empty_nest", "left_behind", "dispute"}
    assert cats["empty_nest"] > cats["hardship"] and cats["left_behind"] > cats["dispute"]
    assert 0.02 <= cats.get("dispute", 0) / len(must) <= 0.14
    capacity = cadres.capacity.astype(int).sum()
    assert 0.8 * capacity <= len(must) <= capacity
    away = hh.away_reason != ""
    assert away.sum() <= 0.05 * len(hh)
    assert (hh.consent == "1").mean() > 0.9


def test_visits_history(area):
    visits = read(area / "visits.csv")
    ts = pd.to_datetime(visits.visited_at)
    assert ts.min() >= pd.Timestamp(START - timedelta(60)) and ts.max() < pd.Timestamp(START)
    steps = {s for v in visits.steps for s in v.split(";")}
    assert steps <= {"identify", "commit", "listen", "guide", "serve"}
    assert set(visits["mode"]) <= {"visit", "phone", "wechat"}
    assert set(visits.demand_category) <= {
        "", "democratic_participation", "marriage_family_rights", "employment_rights",
        "entrepreneurship", "elderly_care", "domestic_services", "family_education", "skills"}
    assert visits.visit_id.is_unique
    assert visits.plan_id.eq("").all()


def test_broken_rows_only_in_households_csv(tmp_path):
    manifest = generate_area("village", 3, tmp_path, start=START, days=2, broken_rows=5)
    hh = read(tmp_path / "households.csv")
    xl = pd.read_excel(tmp_path / "households.xlsx", dtype=str, keep_default_na=False)
    assert len(hh) == len(xl) + 5
    assert len(manifest["broken_rows"]) == 5
    broken = hh[hh.household_id.isin([b["household_id"] for b in manifest["broken_rows"]])]
    problems = {b["problem"] for b in manifest["broken_rows"]}
    assert problems == {"bad_id_check_digit", "unknown_grid_id", "malformed_phone",
                        "empty_name", "bad_date"}
    assert (~broken.id_number.map(gb11643_ok)).sum() == 1
    assert (~broken.grid_id.isin(read(tmp_path / "areas.csv").grid_id)).sum() == 1
    assert (broken.head_name == "").sum() == 1
    assert xl.id_number.map(gb11643_ok).all()


def test_manifest_counts(area):
    manifest = json.loads((area / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["scale"] == "village" and manifest["seed"] == 7
    assert manifest["start"] == "2026-10-01" and manifest["days"] == DAYS
    for name in CSV_FILES:
        assert manifest["counts"][name] == len(read(area / name)), name
    assert manifest["counts"]["readings.parquet"] == pq.ParquetFile(
        area / "readings.parquet").metadata.num_rows


def test_readings_aligned_no_zero_gaps(area, readings, anomalies):
    meters = read(area / "meters.csv")
    assert set(readings.meter_id) == set(meters.meter_id)
    assert (readings.ts.dt.minute % 15 == 0).all() and (readings.ts.dt.second == 0).all()
    assert readings.ts.min() > pd.Timestamp(START)
    assert readings.ts.max() <= pd.Timestamp(START + timedelta(DAYS))
    assert (readings.kwh > 0).all()
    assert not readings.duplicated(["meter_id", "ts"]).any()
    expected = len(meters) * DAYS * 96
    offline = anomalies[anomalies.kind == "meter_offline"]
    lost = ((offline.end - offline.start) / pd.Timedelta("15min")).sum()
    missing = (expected - lost - len(readings)) / expected
    assert 0.001 < missing < 0.006
    # Daily use of one elderly person living alone: a few kWh.
    daily = readings.groupby([readings.meter_id, readings.ts.dt.floor("D")]).kwh.sum()
    assert 1.0 < daily.median() < 8.0


def test_readings_csv_matches_parquet(tmp_path):
    generate_area("village", 5, tmp_path, start=START, days=2, write_readings_csv=True)
    csv_ = pd.read_csv(tmp_path / "readings.csv", dtype={"meter_id": str})
    par = pd.read_parquet(tmp_path / "readings.parquet")
    assert list(csv_.columns) == ["meter_id", "ts", "kwh"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", csv_.ts.iloc[0])
    assert (pd.to_datetime(csv_.ts).to_numpy() == par.ts.to_numpy()).all()
    assert np.allclose(csv_.kwh.to_numpy(), par.kwh.to_numpy())


def _window(readings, row):
    r = readings[readings.meter_id == row.meter_id]
    inside = (r.ts > row.start) & (r.ts <= row.end)
    return r, inside


def test_anomalies_inside_range_and_visible(readings, anomalies):
    assert set(anomalies.kind) == {"inactivity", "sustained_drop", "night_activity", "high_use",
                                   "meter_offline"}
    assert (anomalies.start >= pd.Timestamp(START + timedelta(21))).all()
    assert (anomalies.end <= pd.Timestamp(START + timedelta(DAYS))).all()
    assert (anomalies.end > anomalies.start).all()
    assert anomalies.meter_id.is_unique
    last_week = pd.Timestamp(START + timedelta(DAYS - 7))
    assert (anomalies.end > last_week).sum() >= 1
    for row in anomalies.itertuples():
        r, inside = _window(readings, row)
        base = r[r.ts <= pd.Timestamp(START + timedelta(21))]
        hour = base.ts.dt.hour
        night = base[(hour >= 1) & (hour < 4)].kwh.mean()
        if row.kind == "meter_offline":
            assert not inside.any()
            continue
        win = r[inside]
        assert len(win) > 0
        if row.kind == "inactivity":
            assert win.kwh.mean() < 1.6 * night
            assert win.kwh.mean() < 0.5 * base.kwh.mean()
        elif row.kind == "sustained_drop":
            assert win.kwh.mean() < 0.65 * base.kwh.mean()
        elif row.kind == "high_use":
            assert win.kwh.mean() > base.kwh.mean() + 0.25
        elif row.kind == "night_activity":
            w_hour = win.ts.dt.hour
            assert win[w_hour < 4].kwh.mean() > 2.5 * night


def test_unknown_scale_rejected(tmp_path):
    with pytest.raises(ValueError):
        generate_area("planet", 1, tmp_path)


def test_progress_lines(tmp_path):
    lines: list[str] = []
    generate_area("village", 1, tmp_path, start=START, days=1, progress=lines.append)
    assert lines and all(isinstance(x, str) and x.isascii() for x in lines)
