"""What a family's removal from the register (迁出 / 去世 / 注销) does to its visit plans: a plan
whose window had ended before the removal day was the cadre's to do while the family was on the
register (missed, and counted so); only a plan whose window the removal cut is cancelled; a visit
made before the removal, recorded later, still closes the plan it answers."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
from sqlalchemy import select

from schemas.models import Visit, VisitPlan
from sibifang.db import session_scope
from tests.test_deregister import MONDAY, _deregister, _plans, _seed_families


def _evening(day: date, database_url: str, tmp_path) -> dict:
    from tasks.schedule_visits import plan_visits, store_plan

    return store_plan.fn(plan_visits.fn(day, database_url=database_url), day, str(tmp_path),
                         database_url=database_url)


def _h1(database_url: str) -> dict[date, str]:
    return {p[2]: p[3] for p in _plans(database_url) if p[1] == "h1"}


def _windows(database_url: str, household: str) -> list[tuple]:
    with session_scope(database_url) as s:
        return sorted((p.due_date, p.window_start, p.window_end, p.id)
                      for p in s.scalars(select(VisitPlan).where(VisitPlan.household_id == household)))


def test_pure_rule_cancels_only_what_the_removal_cut():
    from sibifang.schedule_visits import plans_ended_by_deregistration, plans_missed_before_deregistration

    plans = pd.DataFrame({"household_id": ["h", "h", "h", "h"],
                          "due_date": pd.to_datetime(["2026-11-10", "2026-11-23", "2026-11-23", "2026-12-07"]),
                          "window_end": pd.to_datetime(["2026-11-12", "2026-11-26", "2026-11-28", "2026-12-07"])})
    off = pd.DataFrame({"household_id": ["h"], "deregistered_at": [datetime(2026, 11, 28, 15)]})
    # On and after the removal day every open plan ends; those whose window was over before it are missed.
    ended = plans_ended_by_deregistration(plans, off, date(2026, 11, 28))
    missed = plans_missed_before_deregistration(plans, off, date(2026, 11, 28))
    assert list(ended) == [True, True, True, True]
    assert list(missed) == [True, True, False, False]
    # A replay of a day before the removal: the family was on the register, nothing is missed for it.
    assert not plans_missed_before_deregistration(plans, off, date(2026, 11, 27)).any()


def test_an_overdue_plan_inside_its_grace_days_is_missed_not_cancelled_by_a_removal(database_url, tmp_path):
    from sibifang.stats import export_frame

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    first = _windows(database_url, "h1")[0]
    assert first[0] == MONDAY
    window_end = first[2]
    # Taken off two days after the window closed: overdue, still inside the 4 grace days (not missed yet).
    off = window_end + timedelta(days=2)
    _deregister(database_url, "h1", datetime.combine(off, datetime.min.time()) + timedelta(hours=10))
    out = _evening(off, database_url, tmp_path)
    h1 = _h1(database_url)
    assert h1[MONDAY] == "missed"
    assert {s for d, s in h1.items() if d != MONDAY} == {"cancelled"}
    assert out["missed"] >= 1 and out["cancelled"] == len(h1) - 1
    cov = export_frame("coverage", as_of=off, database_url=database_url)
    grid = cov[(cov.level == "grid") & (cov.unit_id == "G1")].iloc[0]
    assert (grid.due, grid.missed) == (2, 2)                  # h1's and h2's Monday visits
    # The run again changes nothing; the next days neither.
    before = _plans(database_url)
    again = _evening(off, database_url, tmp_path)
    assert (again["missed"], again["cancelled"]) == (0, 0) and _plans(database_url) == before
    _evening(off + timedelta(days=1), database_url, tmp_path)
    assert _h1(database_url) == h1


def test_a_late_sheet_of_a_visit_before_the_removal_closes_the_cancelled_plan(database_url, tmp_path):
    from tasks.record_visits import close_plans

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    second = _windows(database_url, "h1")[1]       # the next visit, due in two weeks
    due, ws, we, plan_id = second
    off = we                                        # the family leaves on the window's last day
    _deregister(database_url, "h1", datetime.combine(off, datetime.min.time()) + timedelta(hours=9), "moved_away")
    _evening(off, database_url, tmp_path)
    assert _h1(database_url)[due] == "cancelled"
    # The cadre visited inside the window the day before; her sheet is typed in two days later,
    # together with a visit made after the family left (it closes nothing).
    recorded = datetime.combine(off + timedelta(days=2), datetime.min.time()) + timedelta(hours=8)
    with session_scope(database_url) as s:
        s.add(Visit(id="VL1", household_id="h1", cadre_id="a", mode="visit", steps=[], recorded_at=recorded,
                    visited_at=datetime.combine(off - timedelta(days=1), datetime.min.time()) + timedelta(hours=10)))
        s.add(Visit(id="VL2", household_id="h1", cadre_id="a", mode="visit", steps=[], recorded_at=recorded,
                    visited_at=datetime.combine(off + timedelta(days=1), datetime.min.time()) + timedelta(hours=10)))
    day = off + timedelta(days=2)
    r = close_plans.fn(day, database_url=database_url)
    assert r["plans_closed"] == 1
    with session_scope(database_url) as s:
        p = s.get(VisitPlan, plan_id)
        assert (p.status, p.closed_by_visit_id) == ("done", "VL1")
    after = _h1(database_url)
    assert {s for d, s in after.items() if d > due} == {"cancelled"}
    # Re-runs (and the evening's planning run) change nothing of the family's plans.
    assert close_plans.fn(day, database_url=database_url)["plans_closed"] == 0
    _evening(day, database_url, tmp_path)
    assert close_plans.fn(day, database_url=database_url)["plans_closed"] == 0
    assert _h1(database_url) == after


def test_matcher_closes_a_plan_with_closes_before_only_by_an_earlier_visit():
    from sibifang.record_visits import match_visits_to_plans

    plans = pd.DataFrame({"plan_id": ["P1"], "household_id": ["H1"], "window_start": [pd.Timestamp("2026-12-03")],
                          "window_end": [pd.Timestamp("2026-12-07")], "due_date": [date(2026, 12, 7)],
                          "status": ["cancelled"], "closes_before": [pd.Timestamp("2026-12-05 09:00")]})
    late = pd.DataFrame({"visit_id": ["V1", "V2"], "plan_id": [None, "P1"], "household_id": ["H1", "H1"],
                         "visited_at": [pd.Timestamp("2026-12-05 10:00"), pd.Timestamp("2026-12-06 10:00")]})
    assert match_visits_to_plans(late, plans).empty
    # The removal's own moment counts: a visit that morning, before the family was taken off, closes it.
    morning = late.assign(visited_at=[pd.Timestamp("2026-12-05 08:00"), pd.Timestamp("2026-12-06 10:00")])
    assert dict(zip(*match_visits_to_plans(morning, plans)[["plan_id", "visit_id"]].T.values)) == {"P1": "V1"}
    early = late.assign(visited_at=[pd.Timestamp("2026-12-06 10:00"), pd.Timestamp("2026-12-04 10:00")])
    assert dict(zip(*match_visits_to_plans(early, plans)[["plan_id", "visit_id"]].T.values)) == {"P1": "V2"}


def test_a_visit_after_the_removal_closes_no_plan_still_open_before_the_evening_run(database_url, tmp_path):
    """The households import takes the family off during the day, the visit sheets are closed before
    the evening's planning run cancels its plans: a visit dated after the removal does not close one."""
    from tasks.record_visits import close_plans

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    due, ws, we, plan_id = _windows(database_url, "h1")[0]
    _deregister(database_url, "h1", datetime.combine(ws, datetime.min.time()) + timedelta(hours=9), "moved_away")
    with session_scope(database_url) as s:
        s.add(Visit(id="VA", household_id="h1", cadre_id="a", mode="phone", steps=[],
                    visited_at=datetime.combine(ws, datetime.min.time()) + timedelta(hours=11)))
    r = close_plans.fn(ws, database_url=database_url)
    assert (r["plans_closed"], r["unplanned"]) == (0, 1)
    with session_scope(database_url) as s:
        assert s.get(VisitPlan, plan_id).status == "planned"
    _evening(ws, database_url, tmp_path)
    assert _h1(database_url)[due] == "cancelled"


def test_a_removal_withdrawn_the_same_day_gives_the_overdue_plan_back_its_grace_days(database_url, tmp_path):
    """Taken off by mistake and marked 在册 again the same day: the overdue plan the removal marked
    missed inside its grace days is planned again, as it was (missed only once the grace is over,
    like any family's). A replay of an earlier day reopens no plan the 4-day rule marked missed."""
    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    we = _windows(database_url, "h1")[0][2]
    off = we + timedelta(days=2)
    _deregister(database_url, "h1", datetime.combine(off, datetime.min.time()) + timedelta(hours=9))
    _evening(off, database_url, tmp_path)
    assert _h1(database_url)[MONDAY] == "missed"
    _deregister(database_url, "h1", None, None)
    out = _evening(off, database_url, tmp_path)
    assert _h1(database_url)[MONDAY] == "planned" and out["reopened"] >= 1
    h2 = {p[2]: p[3] for p in _plans(database_url) if p[1] == "h2"}
    assert h2[MONDAY] == "planned"                            # the family never removed, the same
    assert _evening(off, database_url, tmp_path)["reopened"] == 0
    # Past the grace days: missed like h2's, and a replay of a day inside them changes nothing.
    _evening(we + timedelta(days=5), database_url, tmp_path)
    assert _h1(database_url)[MONDAY] == "missed"
    before = _plans(database_url)
    _evening(we + timedelta(days=3), database_url, tmp_path)
    assert {p for p in _plans(database_url) if p[2] <= we} == {p for p in before if p[2] <= we}


def test_a_backdated_removal_cancels_a_plan_already_marked_missed_whose_window_it_cut(database_url, tmp_path):
    """去世 entered a week late with its date: the plan whose window the death cut, marked missed by
    the 4-day rule meanwhile, was no visit the cadre could make: cancelled, out of the missed figures.
    A plan whose window was over before the date stays missed."""
    from sibifang.stats import export_frame

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    due, ws, we, plan_id = _windows(database_url, "h1")[0]
    later = we + timedelta(days=6)
    _evening(later, database_url, tmp_path)
    assert _h1(database_url)[due] == "missed"
    _deregister(database_url, "h1", datetime.combine(ws + timedelta(days=1), datetime.min.time()))
    out = _evening(later + timedelta(days=1), database_url, tmp_path)
    assert _h1(database_url)[due] == "cancelled" and out["cancelled"] >= 1
    assert {p[3] for p in _plans(database_url) if p[1] == "h2" and p[2] == due} == {"missed"}
    cov = export_frame("coverage", as_of=later + timedelta(days=1), database_url=database_url)
    grid = cov[(cov.level == "grid") & (cov.unit_id == "G1")].iloc[0]
    assert (grid.due, grid.missed) == (1, 1)
    after = _plans(database_url)
    assert _evening(later + timedelta(days=1), database_url, tmp_path)["cancelled"] == 0
    assert _plans(database_url) == after


def test_a_late_sheet_of_a_visit_inside_a_missed_plans_window_closes_that_plan_as_done(database_url, tmp_path):
    """The overdue plan a removal marked missed was visited on its window's last day after all, the
    sheet typed in after the removal: that visit answers it (done: on time), not the next plan the
    removal cancelled, which the visit would fit only as an early one."""
    from tasks.record_visits import close_plans

    _seed_families(database_url)
    _evening(MONDAY, database_url, tmp_path)
    (due, ws, we, first), (due2, ws2, _, second) = _windows(database_url, "h1")[:2]
    assert we >= ws2 - timedelta(days=7)                       # the visit also fits the next plan, early
    off = we + timedelta(days=2)
    _deregister(database_url, "h1", datetime.combine(off, datetime.min.time()) + timedelta(hours=9))
    _evening(off, database_url, tmp_path)
    assert (_h1(database_url)[due], _h1(database_url)[due2]) == ("missed", "cancelled")
    with session_scope(database_url) as s:
        s.add(Visit(id="VW", household_id="h1", cadre_id="a", mode="visit", steps=[],
                    visited_at=datetime.combine(we, datetime.min.time()) + timedelta(hours=10),
                    recorded_at=datetime.combine(off, datetime.min.time()) + timedelta(hours=20)))
    r = close_plans.fn(off + timedelta(days=1), database_url=database_url)
    assert (r["plans_closed"], r["missed_visited_late"]) == (1, 0)
    with session_scope(database_url) as s:
        assert (s.get(VisitPlan, first).status, s.get(VisitPlan, first).closed_by_visit_id) == ("done", "VW")
        assert s.get(VisitPlan, second).status == "cancelled"
    assert close_plans.fn(off + timedelta(days=1), database_url=database_url)["plans_closed"] == 0
