"""A plan missed because its family left the register is stored as ``missed`` like any other:
what tells it apart (its window was over before the removal day) is inferred, and so must be
what closes it. A visit after the removal (a condolence call after a death, a cadre who did
not know the family had moved) closes no plan (``tasks.record_visits``: ``closes_before``):
the coverage export must not count that plan as visited late either, or the cadre's coverage
says late while ``sibifang stats`` and the plan say missed."""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas.models import Visit
from sibifang.db import session_scope
from tests.test_deregister import MONDAY, _deregister, _seed_families
from tests.test_register_removal_plans import _evening, _h1, _windows


def test_a_visit_after_the_removal_does_not_make_the_missed_plan_late_in_the_coverage(database_url, tmp_path):
    from sibifang.stats import collect_stats, export_frame
    from tasks.record_visits import close_plans

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    due, ws, we, first = _windows(database_url, "h1")[0]
    off = we + timedelta(days=2)
    _deregister(database_url, "h1", datetime.combine(off, datetime.min.time()) + timedelta(hours=9))
    _evening(off, database_url, tmp_path)
    assert _h1(database_url)[due] == "missed"
    with session_scope(database_url) as s:
        s.add(Visit(id="VX", household_id="h1", cadre_id="a", mode="visit", steps=[],
                    visited_at=datetime.combine(off, datetime.min.time()) + timedelta(hours=15),
                    recorded_at=datetime.combine(off, datetime.min.time()) + timedelta(hours=18)))
    day = off + timedelta(days=1)
    assert close_plans.fn(day, database_url=database_url)["plans_closed"] == 0
    assert _h1(database_url)[due] == "missed"
    cov = export_frame("coverage", as_of=day, database_url=database_url)
    cadre = cov[(cov.level == "cadre") & (cov.unit_id == "a")].iloc[0]
    assert (cadre.due, cadre.late, cadre.missed) == (2, 0, 2)            # h1's and h2's Monday visits
    # h1's (h2's is still inside its grace days: the coverage reads windows, not the grace)
    assert collect_stats(database_url, as_of=day)["visit_plans_missed"] == 1
    # A visit that morning, before the family was taken off, is a late visit of that plan, as ever.
    with session_scope(database_url) as s:
        s.get(Visit, "VX").visited_at = datetime.combine(off, datetime.min.time()) + timedelta(hours=8)
    cov = export_frame("coverage", as_of=day, database_url=database_url)
    cadre = cov[(cov.level == "cadre") & (cov.unit_id == "a")].iloc[0]
    assert (cadre.due, cadre.late, cadre.missed) == (2, 1, 1)


def test_pure_coverage_ignores_visits_from_the_removal_moment():
    import pandas as pd

    from sibifang.schedule_visits import compute_coverage

    plans = pd.DataFrame({"visit_id": ["P1", "P2"], "household_id": ["h1", "h2"], "cadre_id": ["a", "a"],
                          "grid_id": ["G1", "G1"], "due_date": pd.to_datetime(["2026-11-23"] * 2),
                          "window_start": pd.to_datetime(["2026-11-20"] * 2),
                          "window_end": pd.to_datetime(["2026-11-24"] * 2)})
    visits = pd.DataFrame({"visit_id": ["V1", "V2"], "plan_id": [None, None], "household_id": ["h1", "h2"],
                           "visited_at": pd.to_datetime(["2026-11-27 15:00", "2026-11-27 15:00"])})
    hh = pd.DataFrame({"household_id": ["h1", "h2"], "grid_id": ["G1", "G1"],
                       "deregistered_at": [pd.Timestamp("2026-11-27 09:00"), pd.NaT]})
    cov = compute_coverage(plans, visits, hh, datetime(2026, 11, 30).date())
    grid = cov[cov.level == "grid"].iloc[0]
    assert (grid.late, grid.missed) == (1, 1)
