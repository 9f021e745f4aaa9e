"""The coverage export of a past day counts the plans of that day: a plan cancelled because its
family left the register later was still due (or open) that day."""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas.models import VisitPlan
from sibifang.db import session_scope
from tests.test_deregister import MONDAY, _deregister, _seed_families


def test_coverage_of_a_day_before_a_removal_counts_the_plan_the_removal_cancelled_later(database_url):
    from sibifang.stats import export_frame

    _seed_families(database_url)
    with session_scope(database_url) as s:
        for h in ("h1", "h2"):
            s.add(VisitPlan(id=f"P{h}", household_id=h, cadre_id="a", grid_id="G1", due_date=MONDAY,
                            window_start=MONDAY - timedelta(days=3), window_end=MONDAY + timedelta(days=4),
                            reason="hardship", urgent=False, status="cancelled" if h == "h1" else "planned",
                            planned_on=MONDAY - timedelta(days=7)))
    _deregister(database_url, "h1", datetime.combine(MONDAY + timedelta(days=2), datetime.min.time()))

    def grid(day):
        cov = export_frame("coverage", as_of=day, database_url=database_url)
        g = cov[(cov.level == "grid") & (cov.unit_id == "G1")].iloc[0]
        return int(g.due), int(g.pending), int(g.missed)

    # Monday: both families on the register, both visits due and still open.
    assert grid(MONDAY) == (2, 2, 0)
    # After the removal cut h1's window, only h2's counts (and is missed once its window is over).
    assert grid(MONDAY + timedelta(days=9)) == (1, 0, 1)
