"""The dynamic risk map (家庭风险动态预警图) stored per run of ``flag_risks``: per grid (villages
derived from the areas), the change since the last run, and a re-run that changes nothing."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
from sqlalchemy import delete, select

from schemas.models import Area, Household, RiskFlag, RiskMapSnapshot
from sibifang.db import read_frame, session_scope
from sibifang.flag_risks import FLAG_COLUMNS
from tests.test_outbox import outbox_db  # noqa: F401  (fixture)

NONE = pd.DataFrame(columns=FLAG_COLUMNS)


def _rows(url: str, day: date) -> list[tuple]:
    with session_scope(url) as s:
        return [(r.grid_id, r.level, r.households) for r in s.scalars(
            select(RiskMapSnapshot).where(RiskMapSnapshot.as_of == day)
            .order_by(RiskMapSnapshot.grid_id, RiskMapSnapshot.level))]


def _svg(url: str) -> str:
    from sibifang.summary_report import risk_map_svg

    snap = read_frame(select(RiskMapSnapshot), url)
    areas = pd.DataFrame({"grid_id": ["G1", "G2"], "village_name": ["万堤村", "万堤村"]})
    return risk_map_svg(snap, areas)


def test_a_replayed_day_maps_the_families_registered_by_then_not_those_registered_since(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    url = outbox_db
    with session_scope(url) as s:
        s.execute(delete(RiskFlag))
    store_flags.fn(NONE, date(2026, 11, 19), url)
    assert _rows(url, date(2026, 11, 19)) == [("G1", "绿", 20), ("G2", "绿", 20)]
    with session_scope(url) as s:  # a family imported on the 21st
        s.add(Household(id="H100", head_name="赵英", grid_id="G1", categories=["dispute"], birth_year=1980,
                        registered_at=datetime(2026, 11, 21, 10)))
    result = store_flags.fn(NONE, date(2026, 11, 21), url)
    assert _rows(url, date(2026, 11, 21)) == [("G1", "绿", 20), ("G1", "黄", 1), ("G2", "绿", 20)]
    assert result["map_change"] == {"黄": 1}  # since the last run (the 19th), county-wide
    # the 19th run again: what the 19th saw
    store_flags.fn(NONE, date(2026, 11, 19), url)
    assert _rows(url, date(2026, 11, 19)) == [("G1", "绿", 20), ("G2", "绿", 20)]


def test_re_running_the_same_day_changes_neither_the_rows_nor_the_picture(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    url = outbox_db
    with session_scope(url) as s:
        s.execute(delete(RiskFlag).where(RiskFlag.household_id != "H001"))
    store_flags.fn(NONE, date(2026, 11, 20), url)
    rows, svg = _rows(url, date(2026, 11, 20)), _svg(url)
    with session_scope(url) as s:
        households = {h.id: (h.risk_level, h.risk_score, h.risk_reasons) for h in s.scalars(select(Household))}
    store_flags.fn(NONE, date(2026, 11, 20), url)
    assert _rows(url, date(2026, 11, 20)) == rows
    assert _svg(url) == svg
    with session_scope(url) as s:
        assert {h.id: (h.risk_level, h.risk_score, h.risk_reasons) for h in s.scalars(select(Household))} == households
        assert s.scalar(select(Area.id).where(Area.id == "G1")) == "G1"


def test_a_level_that_emptied_is_shown_once_not_carried_from_run_to_run():
    from sibifang.flag_risks import risk_map

    scored = pd.DataFrame({"household_id": ["a", "b"], "grid_id": ["G1", "G2"], "risk_level": ["绿", "绿"]})
    before = pd.DataFrame({"as_of": [date(2026, 7, 19)] * 3, "grid_id": ["G1", "G1", "G2"],
                           "level": ["绿", "红", "绿"], "households": [0, 1, 1]})
    m = risk_map(scored, date(2026, 7, 20), before)
    # G1 红 emptied since the last run: shown with its change; empty in the next run too, it is no
    # row at all (a grid emptied for good does not stay on the map with zeros)
    got = {(r.grid_id, r.level): (r.households, r.change) for r in m.itertuples()}
    assert got == {("G1", "绿"): (1, 1), ("G1", "红"): (0, -1), ("G2", "绿"): (1, 0)}
    later = risk_map(scored, date(2026, 7, 21), m)
    assert {(r.grid_id, r.level): (r.households, r.change) for r in later.itertuples()} == {
        ("G1", "绿"): (1, 0), ("G2", "绿"): (1, 0)}
