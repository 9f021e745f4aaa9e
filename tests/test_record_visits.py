"""Unit tests of sibifang.record_visits.match_visits_to_plans (no database).

Visits carry ``visit_id, plan_id, household_id, visited_at`` (the file-format contract and the
``close_fulfilled_plans`` task both include ``plan_id``); plans carry ``plan_id, household_id,
window_start, window_end, due_date``.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from sibifang.record_visits import match_visits_to_plans

T = pd.Timestamp
COLS = ["plan_id", "visit_id", "done_on"]


def _plan(pid, hid, due, ws=None, we=None):
    return {"plan_id": pid, "household_id": hid, "window_start": T(ws) if ws else pd.NaT,
            "window_end": T(we) if we else pd.NaT, "due_date": T(due).date()}


def _visit(vid, hid, when, plan_id=None):
    return {"visit_id": vid, "plan_id": plan_id, "household_id": hid, "visited_at": when}


PLANS = pd.DataFrame([
    _plan("P1", "H1", "2026-07-10", ws="2026-07-01", we="2026-07-10"),
    _plan("P2", "H1", "2026-08-10", ws="2026-08-01", we="2026-08-10"),
    _plan("P3", "H2", "2026-07-20", ws="2026-07-13", we="2026-07-20"),
])


def _pairs(out: pd.DataFrame) -> dict[str, str]:
    assert list(out.columns) == COLS
    assert out.plan_id.is_unique, "a plan closed twice"
    assert out.visit_id.is_unique, "a visit used twice"
    return dict(zip(out.plan_id, out.visit_id))


def test_empty_inputs_give_empty_frame():
    v = pd.DataFrame([_visit("V1", "H1", "2026-07-02 10:00")])
    for out in (match_visits_to_plans(v, PLANS.iloc[0:0]), match_visits_to_plans(v.iloc[0:0], PLANS)):
        assert out.empty and list(out.columns) == COLS


def test_explicit_plan_id_wins():
    # the form named the later plan P2: it closes P2 even though P1 is earlier and also open
    v = pd.DataFrame([_visit("V1", "H1", "2026-07-05 10:00", plan_id="P2")])
    out = match_visits_to_plans(v, PLANS)
    assert _pairs(out) == {"P2": "V1"}
    assert out.done_on.tolist() == [date(2026, 7, 5)]


def test_earliest_open_plan_in_window_is_closed():
    v = pd.DataFrame([_visit("V1", "H1", "2026-07-05 10:00"), _visit("V2", "H2", "2026-07-15 09:00")])
    out = match_visits_to_plans(v, PLANS)
    assert _pairs(out) == {"P1": "V1", "P3": "V2"}
    assert dict(zip(out.plan_id, out.done_on)) == {"P1": date(2026, 7, 5), "P3": date(2026, 7, 15)}


def test_early_days_before_window():
    # P1's window opens 07-01: a visit from 06-24 (7 days early) counts, one from 06-23 does not
    assert _pairs(match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-06-24 00:00")]), PLANS)) == {"P1": "V1"}
    assert match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-06-23 23:00")]), PLANS).empty
    assert match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-06-23 23:00")]), PLANS,
                                 early_days=8).plan_id.tolist() == ["P1"]


def test_nearest_open_plan_when_no_window_holds_the_visit():
    # P1 is overdue (window ended 07-10), P2's window opens 08-01: the nearer window wins
    late = match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-07-14 10:00")]), PLANS)
    assert _pairs(late) == {"P1": "V1"}
    early = match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-07-28 10:00")]), PLANS)
    assert _pairs(early) == {"P2": "V1"}


def _with_missed(*plans):
    return pd.concat([PLANS.assign(status="planned"), pd.DataFrame(list(plans))], ignore_index=True)


def test_visit_closes_the_plan_whose_window_holds_it_not_an_old_missed_one():
    # A September plan of H1 was missed; the visit inside P2's window is P2's visit.
    plans = _with_missed({**_plan("P0", "H1", "2026-06-01", ws="2026-05-28", we="2026-06-01"), "status": "missed"})
    out = match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-08-05 10:00")]), plans)
    assert _pairs(out) == {"P2": "V1"}
    # inside a window, an earlier overdue open plan does not take it either
    plans = _with_missed(_plan("P0", "H1", "2026-07-25", ws="2026-07-20", we="2026-07-25") | {"status": "planned"})
    out = match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-08-05 10:00")]), plans)
    assert _pairs(out) == {"P2": "V1"}


def test_missed_plan_only_when_no_open_plan_fits_and_not_long_after():
    plans = pd.DataFrame([{**_plan("P0", "H3", "2026-09-01", ws="2026-08-28", we="2026-09-01"), "status": "missed"},
                          {**_plan("P9", "H3", "2026-12-01", ws="2026-11-25", we="2026-12-01"), "status": "planned"}])
    # a late visit with no open plan near: the missed plan's (the caller keeps it missed)
    assert _pairs(match_visits_to_plans(pd.DataFrame([_visit("V1", "H3", "2026-09-10 10:00")]), plans)) == {
        "P0": "V1"}
    # an open plan opening within a week is preferred to the missed one
    assert _pairs(match_visits_to_plans(pd.DataFrame([_visit("V1", "H3", "2026-11-20 10:00")]), plans)) == {
        "P9": "V1"}
    # months later, with no open plan fitting, it is an unplanned visit, not the September one's
    assert match_visits_to_plans(pd.DataFrame([_visit("V1", "H3", "2026-11-10 10:00")]), plans).empty


def test_close_plans_keeps_the_current_plan_and_a_missed_one_missed(database_url):
    from datetime import datetime

    from sqlalchemy import select

    from schemas.models import Area, Cadre, Household, Visit, VisitPlan
    from sibifang.db import migrate, session_scope
    from tasks.record_visits import close_plans

    migrate(database_url)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add(Household(id="H1", head_name="户主", grid_id="G1", categories=["hardship"]))
        s.add(Cadre(id="a", name="a", role="cadre", grid_ids=["G1"], capacity=10))
        s.flush()
        s.add_all([VisitPlan(id="Psep", household_id="H1", grid_id="G1", due_date=date(2026, 9, 1),
                             window_start=date(2026, 8, 28), window_end=date(2026, 9, 1), reason="hardship",
                             urgent=False, status="missed", planned_on=date(2026, 8, 20)),
                   VisitPlan(id="Pnow", household_id="H1", grid_id="G1", due_date=date(2026, 11, 23),
                             window_start=date(2026, 11, 23), window_end=date(2026, 11, 26), reason="hardship",
                             urgent=False, status="planned", planned_on=date(2026, 11, 23))])
        s.flush()
        s.add(Visit(id="SV1", household_id="H1", cadre_id="a", mode="visit", visited_at=datetime(2026, 11, 24, 10)))
    r = close_plans.fn(date(2026, 11, 24), database_url=database_url)
    assert r["plans_closed"] == 1 and r["unplanned"] == 0
    # a late visit of the missed plan, with no open plan left: recorded against it, still missed
    with session_scope(database_url) as s:
        s.add(VisitPlan(id="Pdec", household_id="H1", grid_id="G1", due_date=date(2026, 12, 20),
                        window_start=date(2026, 12, 16), window_end=date(2026, 12, 20), reason="hardship",
                        urgent=False, status="missed", planned_on=date(2026, 12, 1)))
        s.add(Visit(id="SV2", household_id="H1", cadre_id="a", mode="visit", visited_at=datetime(2026, 12, 28, 10)))
    again = close_plans.fn(date(2026, 12, 28), database_url=database_url)
    assert again == {"plans_closed": 0, "missed_visited_late": 1, "unplanned": 0}
    assert close_plans.fn(date(2026, 12, 28), database_url=database_url)["missed_visited_late"] == 0  # a re-run
    with session_scope(database_url) as s:
        rows = {p.id: (p.status, p.closed_by_visit_id) for p in s.scalars(select(VisitPlan))}
    assert rows == {"Psep": ("missed", None), "Pnow": ("done", "SV1"), "Pdec": ("missed", "SV2")}


def test_each_plan_closed_once_each_visit_used_once():
    v = pd.DataFrame([_visit("V3", "H1", "2026-07-09 10:00"), _visit("V1", "H1", "2026-07-02 10:00"),
                      _visit("V2", "H1", "2026-07-05 10:00"), _visit("V4", "H1", "2026-08-03 10:00")])
    out = match_visits_to_plans(v, PLANS)
    # the earliest visit closes P1; V2 and V3 are too early for P2 and stay unmatched; V4 closes P2
    assert _pairs(out) == {"P1": "V1", "P2": "V4"}


def test_unplanned_visits_are_left_unmatched():
    v = pd.DataFrame([_visit("V9", "H-none", "2026-07-05 10:00"),        # no plan for this household
                      _visit("V8", "H2", "2026-07-01 10:00"),            # too early for P3 (window 07-13)
                      _visit("V7", "H1", "2026-07-05 10:00", plan_id="")])
    out = match_visits_to_plans(v, PLANS)
    assert _pairs(out) == {"P1": "V7"}


def test_plan_id_of_a_plan_no_longer_open_falls_back_to_window_matching():
    v = pd.DataFrame([_visit("V1", "H1", "2026-07-05 10:00", plan_id="P-closed-long-ago")])
    assert _pairs(match_visits_to_plans(v, PLANS)) == {"P1": "V1"}


def test_missing_window_start_uses_due_date():
    plans = pd.DataFrame([_plan("P1", "H1", "2026-07-10")])
    assert match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-07-02 10:00")]), plans).empty
    assert _pairs(match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-07-03 10:00")]), plans)) == {"P1": "V1"}


def test_result_is_independent_of_input_order():
    v = pd.DataFrame([_visit("V1", "H1", "2026-07-02 10:00"), _visit("V2", "H1", "2026-08-02 10:00"),
                      _visit("V3", "H2", "2026-07-14 10:00"), _visit("V4", "H2", "2026-07-15 10:00")])
    a = _pairs(match_visits_to_plans(v, PLANS))
    b = _pairs(match_visits_to_plans(v.iloc[::-1], PLANS.iloc[::-1]))
    assert a == b == {"P1": "V1", "P2": "V2", "P3": "V3"}


def test_two_records_naming_the_same_plan_close_it_once():
    v = pd.DataFrame([_visit("V1", "H1", "2026-07-02 10:00", plan_id="P1"),
                      _visit("V2", "H1", "2026-07-03 10:00", plan_id="P1")])
    out = match_visits_to_plans(v, PLANS)
    assert out.plan_id.tolist() == ["P1"]
    assert out.visit_id.tolist() == ["V1"]


def test_a_visit_corrected_to_another_family_reopens_the_plan_it_closed(database_url):
    from datetime import datetime

    from sqlalchemy import select, update

    from schemas.models import Area, Cadre, Household, Visit, VisitPlan
    from sibifang.db import migrate, session_scope
    from tasks.record_visits import close_plans

    migrate(database_url)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add_all([Household(id=h, head_name="户主", grid_id="G1", categories=["hardship"]) for h in ("H1", "H2")])
        s.add(Cadre(id="a", name="a", role="cadre", grid_ids=["G1"], capacity=10))
        s.flush()
        s.add_all([VisitPlan(id=f"P{h}", household_id=h, grid_id="G1", due_date=date(2026, 11, 26),
                             window_start=date(2026, 11, 23), window_end=date(2026, 11, 26), reason="hardship",
                             urgent=False, status="planned", planned_on=date(2026, 11, 20)) for h in ("H1", "H2")])
        s.flush()
        s.add(Visit(id="SV1", household_id="H1", cadre_id="a", mode="visit", visited_at=datetime(2026, 11, 24, 10)))
    close_plans.fn(date(2026, 11, 24), database_url=database_url)
    # the sheet is re-sent: the visit was to H2, typed against H1 by mistake
    with session_scope(database_url) as s:
        s.execute(update(Visit).where(Visit.id == "SV1").values(household_id="H2"))
    for _ in range(2):  # and a re-run changes nothing
        close_plans.fn(date(2026, 11, 25), database_url=database_url)
        with session_scope(database_url) as s:
            rows = {p.id: (p.status, p.closed_by_visit_id) for p in s.scalars(select(VisitPlan))}
        assert rows == {"PH1": ("planned", None), "PH2": ("done", "SV1")}


def test_a_plan_id_of_another_family_closes_nothing_of_that_family():
    # the form named H2's plan for a visit to H1 (a typo in either): H2 was not visited
    out = match_visits_to_plans(pd.DataFrame([_visit("V1", "H1", "2026-07-05 10:00", plan_id="P3")]), PLANS)
    assert _pairs(out) == {"P1": "V1"}
