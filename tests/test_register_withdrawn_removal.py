"""A removal from the register withdrawn later (the family 在册 again on a later register file).

The register then counts the family as registered throughout (README: one removal is kept, no
longer history), so its cadre's record is that of a family never removed: a plan the removal
cancelled whose window has since ended with no visit is the cadre's missed visit (missed once its
4 grace days are over, like any family's), not a cancelled one that shows no miss for a visit
nobody made. A visit made in that window, typed in later, still closes it as done."""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas.models import Visit, VisitPlan
from sibifang.db import session_scope
from tests.test_deregister import MONDAY, _deregister, _plans, _seed_families
from tests.test_register_removal_plans import _evening, _h1, _windows


def test_a_withdrawn_removal_gives_back_the_long_past_plans_it_cancelled_as_missed(database_url, tmp_path):
    from sibifang.stats import collect_stats, export_frame
    from tasks.record_visits import close_plans

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    due, ws, we, first = _windows(database_url, "h1")[0]
    _deregister(database_url, "h1", datetime.combine(ws, datetime.min.time()) + timedelta(hours=9))
    _evening(ws, database_url, tmp_path)
    assert _h1(database_url)[due] == "cancelled"
    # Two weeks later the village's file marks the family 在册 again (taken off by mistake).
    back = we + timedelta(days=14)
    _deregister(database_url, "h1", None, None)
    out = _evening(back, database_url, tmp_path)
    assert _h1(database_url)[due] == "missed"
    assert out["missed"] >= 1
    h2 = {p[2]: p[3] for p in _plans(database_url) if p[1] == "h2"}
    assert h2[due] == "missed"                                 # the same as a family never removed
    cov = export_frame("coverage", as_of=back, database_url=database_url)
    grid = cov[(cov.level == "grid") & (cov.unit_id == "G1")].iloc[0]
    cadre = cov[(cov.level == "cadre") & (cov.unit_id == "a")].iloc[0]
    assert (grid.missed, cadre.missed) == (cadre.missed, cadre.missed) and cadre.missed >= 2
    stats = collect_stats(database_url, as_of=back)
    assert stats["visit_plans_missed"] == sum(p[3] == "missed" for p in _plans(database_url))
    # The run again changes nothing.
    before = _plans(database_url)
    again = _evening(back, database_url, tmp_path)
    assert (again["missed"], again["cancelled"], again["reopened"]) == (0, 0, 0) and _plans(database_url) == before
    # The cadre's sheet of a visit inside that window, typed in late: done after all.
    with session_scope(database_url) as s:
        s.add(Visit(id="VB", household_id="h1", cadre_id="a", mode="visit", steps=[],
                    visited_at=datetime.combine(we, datetime.min.time()) + timedelta(hours=10),
                    recorded_at=datetime.combine(back, datetime.min.time()) + timedelta(hours=20)))
    close_plans.fn(back + timedelta(days=1), database_url=database_url)
    with session_scope(database_url) as s:
        assert (s.get(VisitPlan, first).status, s.get(VisitPlan, first).closed_by_visit_id) == ("done", "VB")


def test_a_removal_withdrawn_inside_the_window_leaves_no_second_plan_for_the_same_visit(database_url, tmp_path):
    """Withdrawn while the cut window was still open: the family is planned again for that visit;
    the plan the removal cancelled is not given back beside it (one visit, not two)."""
    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    due, ws, we, first = _windows(database_url, "h1")[0]
    _deregister(database_url, "h1", datetime.combine(ws, datetime.min.time()) + timedelta(hours=9))
    _evening(ws, database_url, tmp_path)
    _deregister(database_url, "h1", None, None)
    _evening(ws + timedelta(days=1), database_url, tmp_path)
    later = we + timedelta(days=14)
    _evening(later, database_url, tmp_path)
    with session_scope(database_url) as s:
        from sqlalchemy import select

        h1 = [(p.due_date, p.status) for p in s.scalars(select(VisitPlan).where(
            VisitPlan.household_id == "h1", VisitPlan.window_end < later - timedelta(days=4),
            VisitPlan.window_start <= we, VisitPlan.window_end >= ws))]
    assert sorted(st for _, st in h1 if st != "cancelled") == ["missed"]
