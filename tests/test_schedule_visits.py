"""Visit scheduling (走访排期): cadence rules, assignment, calendar, leave, 4+1, urgent, coverage."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest

from sibifang.schedule_visits import (
    PLAN_COLUMNS,
    compute_coverage,
    follow_ups_after_mediation,
    household_intervals,
    load_cadence_rules,
    schedule_visits,
)
from sibifang.settings import reset_settings

RULES = load_cadence_rules(None)
CAL = RULES.work_calendar()
MONDAY = date(2026, 11, 23)


def households(*rows):
    base = dict(grid_id="G1", village_id="V1", categories="", risk_level=None, open_dispute=0, flagged=0,
                away_from=None, away_until=None)
    return pd.DataFrame([{**base, **r} for r in rows])


def cadres(*rows):
    base = dict(role="cadre", grid_ids="G1", capacity=10, four_plus_one=0, grassroots_weekday=None,
                on_leave_from=None, on_leave_until=None)
    return pd.DataFrame([{**base, **r} for r in rows])


def plan(hh, cd, *, as_of=MONDAY, horizon_days=30, last_visits=None, open_plans=None, current_assignments=None,
         urgent_requests=None, follow_ups=None, grid=None, rules=RULES):
    empty = pd.DataFrame
    return schedule_visits(
        hh, cd, as_of=as_of, horizon_days=horizon_days,
        last_visits=last_visits if last_visits is not None else empty(columns=["household_id", "last_visited_at"]),
        open_plans=open_plans if open_plans is not None else empty(),
        current_assignments=current_assignments if current_assignments is not None else empty(),
        urgent_requests=urgent_requests if urgent_requests is not None else empty(),
        follow_ups=follow_ups if follow_ups is not None else empty(),
        rules=rules, calendar=rules.work_calendar(), grid=grid)


def last(**days_ago):
    return pd.DataFrame({"household_id": list(days_ago),
                         "last_visited_at": [pd.Timestamp(MONDAY) - pd.Timedelta(days=d) for d in days_ago.values()]})


# -- rules --------------------------------------------------------------------------------------
def test_packaged_rules_match_the_brief():
    iv = RULES.interval_days
    assert (iv["open_dispute"], iv["hardship"], iv["left_behind"], iv["empty_nest"]) == (7, 14, 14, 14)
    assert (iv["empty_nest_flagged"], iv["entrepreneur"], iv["must_visit_max"]) == (7, 30, 90)
    assert RULES.risk_level_interval_days == {"红": 7}
    assert (RULES.urgent_critical_hours, RULES.urgent_other_hours) == (24, 72)
    assert RULES.follow_up_after_mediation_days == (7, 30)
    assert "mediator" not in RULES.visiting_roles and "supervisor" not in RULES.visiting_roles


def test_settings_cadence_file_overrides(tmp_path, monkeypatch):
    text = (load_cadence_rules.__globals__["resources"].files("sibifang") / "cadence.toml").read_text(encoding="utf-8")
    custom = tmp_path / "cadence.toml"
    custom.write_text(text.replace("hardship = 14", "hardship = 10"), encoding="utf-8")
    monkeypatch.setenv("SIBIFANG_CADENCE_FILE", str(custom))
    reset_settings()
    try:
        assert load_cadence_rules(None).interval_days["hardship"] == 10
    finally:
        monkeypatch.delenv("SIBIFANG_CADENCE_FILE")
        reset_settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("[interval_days]\nhardship = 14\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must_visit_max"):
        load_cadence_rules(bad)


def test_intervals_take_the_shortest_rule():
    hh = households(
        dict(household_id="plain"),
        dict(household_id="hard", categories="hardship"),
        dict(household_id="nest", categories="空巢老人"),
        dict(household_id="nest_flag", categories=["empty_nest"], flagged=1),
        dict(household_id="biz", categories="entrepreneur"),
        dict(household_id="quiet_dispute", categories="dispute"),
        dict(household_id="open_dispute", categories="dispute", open_dispute="是"),
        dict(household_id="red_biz", categories="entrepreneur", risk_level="红"),
        dict(household_id="orange_biz", categories="entrepreneur;left_behind", risk_level="橙"),
    )
    got = household_intervals(hh, RULES).set_index("household_id")
    assert pd.isna(got.loc["plain", "interval_days"])
    assert got["interval_days"].drop("plain").astype(int).to_dict() == {
        "hard": 14, "nest": 14, "nest_flag": 7, "biz": 30, "quiet_dispute": 90, "open_dispute": 7,
        "red_biz": 7, "orange_biz": 14}
    assert got.loc["open_dispute", "reason"] == "open_dispute" and got.loc["red_biz", "reason"] == "risk_red"


# -- plans --------------------------------------------------------------------------------------
def test_plan_columns_and_cadence_chain():
    hh = households(dict(household_id="h1", categories="hardship"), dict(household_id="h0"))
    result = plan(hh, cadres(dict(cadre_id="c1")), last_visits=last(h1=3))
    assert list(result.plans.columns) == PLAN_COLUMNS
    p = result.plans
    assert set(p["household_id"]) == {"h1"}  # ordinary families get no routine visit
    dues = list(p["due_date"].dt.date)
    # last visit 20 Nov + 14 = 4 Dec (Fri), then every <= 14 days on working days
    assert dues[0] == date(2026, 12, 4)
    assert all(b - a <= timedelta(days=14) for a, b in zip(dues, dues[1:]))
    assert all(CAL.is_workday(d) for d in dues)
    assert (p["status"] == "planned").all() and not p["urgent"].any()
    assert (p["window_start"] <= p["due_date"]).all() and (p["due_date"] <= p["window_end"]).all()


def test_never_visited_family_is_visited_within_days_not_on_weekend():
    hh = households(dict(household_id="h1", categories="left_behind"))
    saturday = date(2026, 11, 21)
    p = plan(hh, cadres(dict(cadre_id="c1")), as_of=saturday).plans
    assert p["due_date"].iloc[0].date() == date(2026, 11, 23)


def test_holidays_move_visits_to_working_days_spring_festival():
    # Weekly family last visited Sat 14 Feb 2026 (调休 working day); 15–23 Feb are days off,
    # so the next visit can only be on Tue 24 Feb.
    hh = households(dict(household_id="h1", categories="dispute", open_dispute=1))
    lv = pd.DataFrame({"household_id": ["h1"], "last_visited_at": ["2026-02-14 09:00"]})
    p = plan(hh, cadres(dict(cadre_id="c1")), as_of=date(2026, 2, 14), horizon_days=20, last_visits=lv)
    dues = list(p.plans["due_date"].dt.date)
    assert dues[0] == date(2026, 2, 24)
    assert p.shortfall.empty  # the calendar, not staffing, caused the slip
    # Golden week: a 14-day family due 5 Oct is visited before the holiday instead.
    hh = households(dict(household_id="h2", categories="hardship"))
    lv = pd.DataFrame({"household_id": ["h2"], "last_visited_at": ["2026-09-21 09:00"]})
    dues = list(plan(hh, cadres(dict(cadre_id="c1")), as_of=date(2026, 9, 22), last_visits=lv)
                .plans["due_date"].dt.date)
    assert dues[0] == date(2026, 9, 30)


def test_continuity_capacity_and_least_loaded():
    hh = households(*[dict(household_id=f"h{i}", categories="hardship") for i in range(6)])
    cd = cadres(dict(cadre_id="a", capacity=3), dict(cadre_id="b", capacity=3), dict(cadre_id="m", role="mediator"))
    current = pd.DataFrame({"household_id": ["h0", "h1", "h5"], "cadre_id": ["b", "b", "m"]})
    r = plan(hh, cd, current_assignments=current)
    a = r.assignments.set_index("household_id")
    assert a.loc["h0", "cadre_id"] == "b" and a.loc["h1", "cadre_id"] == "b"
    assert a.loc[["h0", "h1"], "assigned"].eq("kept").all()
    assert a["cadre_id"].value_counts().to_dict() == {"a": 3, "b": 3}  # balanced, capacity kept
    assert "m" not in set(r.plans["cadre_id"])  # mediators carry no families
    # one more family than places: reported, never dropped
    hh7 = pd.concat([hh, households(dict(household_id="h6", categories="hardship"))])
    r7 = plan(hh7, cd, current_assignments=current)
    assert r7.shortfall["reason"].tolist() == ["网格内干部容量不足"]


def test_grid_without_cadre_is_shortfall():
    hh = households(dict(household_id="h1", categories="hardship", grid_id="G9"))
    r = plan(hh, cadres(dict(cadre_id="c1")))
    assert r.plans.empty
    assert r.shortfall.to_dict("records") == [
        {"household_id": "h1", "grid_id": "G9", "reason": "网格内无承担走访的干部"}]


def test_four_plus_one_cadre_visits_on_her_weekday_only():
    hh = households(*[dict(household_id=f"h{i}", categories="empty_nest") for i in range(3)])
    cd = cadres(dict(cadre_id="boss", four_plus_one=1, grassroots_weekday=3))  # Thursday
    r = plan(hh, cd, last_visits=last(h0=1, h1=5, h2=12))
    assert not r.plans.empty
    assert (r.plans["due_date"].dt.weekday == 3).all()


def test_leave_moves_visits_to_colleague_and_both_are_told():
    hh = households(dict(household_id="h1", categories="hardship"))
    cd = cadres(dict(cadre_id="a", on_leave_from="2026-11-23", on_leave_until="2026-12-06"), dict(cadre_id="b"))
    current = pd.DataFrame({"household_id": ["h1"], "cadre_id": ["a"]})
    r = plan(hh, cd, current_assignments=current, last_visits=last(h1=10))
    first = r.plans.iloc[0]
    assert first["cadre_id"] == "b" and first["due_date"].date() <= date(2026, 11, 27)
    assert r.assignments["cadre_id"].tolist() == ["a"]  # she keeps the family
    assert r.moved[["visit_id", "from_cadre_id", "to_cadre_id", "reason"]].iloc[0].tolist() == [
        first["visit_id"], "a", "b", "联系干部请假"]
    texts = r.notices.set_index("cadre_id")["text"]
    assert "转交" in texts["a"] and "代同事走访1次" in texts["b"]
    # after her leave the family's own cadre visits again
    assert (r.plans[r.plans["due_date"] > "2026-12-06"]["cadre_id"] == "a").all()


def test_away_family_is_skipped_until_back():
    hh = households(dict(household_id="h1", categories="hardship", away_from="2026-11-01", away_until="2026-12-10"),
                    dict(household_id="h2", categories="hardship", away_from="2026-11-01"))
    r = plan(hh, cadres(dict(cadre_id="c1")), last_visits=last(h1=60, h2=60))
    assert r.plans[r.plans["household_id"] == "h1"]["due_date"].min().date() > date(2026, 12, 10)
    assert "h2" not in set(r.plans["household_id"])
    assert set(r.away["household_id"]) == {"h1", "h2"}


def test_urgent_requests_ignore_the_calendar():
    hh = households(dict(household_id="h1", categories="empty_nest"), dict(household_id="h2"),
                    dict(household_id="h3", categories="hardship"))
    req = pd.DataFrame({"household_id": ["h1", "h2", "h3"],
                        "requested_at": ["2026-11-21 14:00", "2026-11-21 09:00", "2026-11-19 09:00"],
                        "reason": ["meter_inactivity", "visit_finding", "meter_drop"], "critical": [1, 0, 1]})
    lv = pd.DataFrame({"household_id": ["h3"], "last_visited_at": ["2026-11-20 10:00"]})  # answered already
    r = plan(hh, cadres(dict(cadre_id="c1"), dict(cadre_id="gw", role="grid_worker")), as_of=date(2026, 11, 21),
             urgent_requests=req, last_visits=lv)
    u = r.plans[r.plans["urgent"]].set_index("household_id")
    assert u.loc["h1", "due_date"].date() == date(2026, 11, 22)  # Sunday: 24 h, calendar ignored
    assert u.loc["h2", "due_date"].date() == date(2026, 11, 24)  # 72 h
    assert "h3" not in u.index
    assert u.loc["h1", "reason"] == "meter_inactivity"


def test_urgent_visit_of_four_plus_one_family_goes_to_grid_worker():
    hh = households(dict(household_id="h1", categories="empty_nest"))
    cd = cadres(dict(cadre_id="boss", four_plus_one=1, grassroots_weekday=0), dict(cadre_id="gw", role="grid_worker"))
    req = pd.DataFrame({"household_id": ["h1"], "requested_at": ["2026-11-23 08:00"], "reason": ["meter"],
                        "critical": [1]})
    r = plan(hh, cd, urgent_requests=req, current_assignments=pd.DataFrame({"household_id": ["h1"],
                                                                             "cadre_id": ["boss"]}))
    u = r.plans[r.plans["urgent"]]
    assert u["cadre_id"].tolist() == ["gw"]
    assert r.moved["to_cadre_id"].tolist() == ["gw"]


def test_follow_ups_after_mediation():
    cases = pd.DataFrame({"household_id": ["h1"], "closed_at": ["2026-11-20 16:30"]})
    fu = follow_ups_after_mediation(cases, RULES)
    assert fu["due_date"].dt.date.tolist() == [date(2026, 11, 27), date(2026, 12, 20)]
    hh = households(dict(household_id="h1", categories="dispute"))
    r = plan(hh, cadres(dict(cadre_id="c1")), follow_ups=fu, last_visits=last(h1=3))
    f = r.plans[r.plans["reason"].str.startswith("follow_up")]
    # 27 Nov is a Friday; 20 Dec is a Sunday, so the 30-day follow-up moves to Monday 21 Dec
    assert f["due_date"].dt.date.tolist() == [date(2026, 11, 27), date(2026, 12, 21)]


def test_rerun_is_idempotent_and_open_plans_are_kept():
    hh = households(*[dict(household_id=f"h{i}", categories=c) for i, c in
                      enumerate(["hardship", "empty_nest", "dispute", "entrepreneur"])])
    cd = cadres(dict(cadre_id="a"), dict(cadre_id="b", on_leave_from="2026-11-30", on_leave_until="2026-12-02"))
    kw = dict(last_visits=last(h0=3, h1=10, h2=80, h3=40))
    first = plan(hh, cd, **kw)
    again = plan(hh, cd, **kw)
    pd.testing.assert_frame_equal(first.plans, again.plans)
    fed = plan(hh, cd, open_plans=first.plans, current_assignments=first.assignments, **kw)
    pd.testing.assert_frame_equal(first.plans, fed.plans)
    # the day after, visits already planned keep their ids
    tomorrow = plan(hh, cd, as_of=MONDAY + timedelta(days=1), open_plans=first.plans,
                    current_assignments=first.assignments, **kw)
    still = first.plans[first.plans["due_date"] > pd.Timestamp(MONDAY)]
    assert set(still["visit_id"]) <= set(tomorrow.plans["visit_id"])


def test_one_grid_replan_counts_other_grids_against_capacity():
    hh = households(dict(household_id="x1", categories="hardship", grid_id="G2"),
                    dict(household_id="y1", categories="hardship"), dict(household_id="y2", categories="hardship"))
    cd = cadres(dict(cadre_id="chair", role="village_chair", grid_ids="G1;G2", capacity=2), dict(cadre_id="c1",
                                                                                                    capacity=1))
    current = pd.DataFrame({"household_id": ["x1"], "cadre_id": ["chair"]})
    r = plan(hh, cd, current_assignments=current, grid="G1")
    assert set(r.plans["grid_id"]) == {"G1"}
    assert r.assignments["cadre_id"].value_counts().to_dict() == {"chair": 1, "c1": 1}


# -- coverage -----------------------------------------------------------------------------------
def test_coverage_counts():
    d = pd.Timestamp
    plans = pd.DataFrame({
        "visit_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "household_id": ["h1", "h2", "h3", "h4", "h5", "h6"],
        "cadre_id": ["a", "a", "a", "b", "b", "b"],
        "grid_id": ["G1", "G1", "G1", "G2", "G2", "G2"],
        "due_date": [d("2026-11-10"), d("2026-11-10"), d("2026-11-10"), d("2026-11-20"), d("2026-11-10"),
                     d("2026-12-01")],
        "window_start": [d("2026-11-06")] * 3 + [d("2026-11-18"), d("2026-11-06"), d("2026-11-27")],
        "window_end": [d("2026-11-10")] * 3 + [d("2026-11-24"), d("2026-11-10"), d("2026-12-01")],
    })
    visits = pd.DataFrame({"visit_id": ["v1", "v2"], "plan_id": ["p1", None], "household_id": ["h1", "h2"],
                           "visited_at": ["2026-11-09 10:00", "2026-11-15 10:00"]})
    hh = pd.DataFrame({"household_id": [f"h{i}" for i in range(1, 7)], "grid_id": ["G1"] * 3 + ["G2"] * 3,
                       "village_id": ["V1"] * 6, "away_from": [None] * 4 + ["2026-11-01", None],
                       "away_until": [None] * 4 + ["2026-11-30", None]})
    cov = compute_coverage(plans, visits, hh, date(2026, 11, 22)).set_index(["level", "unit_id"])
    assert cov.loc[("grid", "G1")].to_dict() == dict(due=3, visited_on_time=1, late=1, missed=1, pending=0, away=0)
    assert cov.loc[("grid", "G2")].to_dict() == dict(due=2, visited_on_time=0, late=0, missed=0, pending=1, away=1)
    assert cov.loc[("village", "V1"), "due"] == 5
    assert cov.loc[("cadre", "a"), "missed"] == 1


def test_planned_absence_visit_before_leaving_or_after_return():
    # Leaves on Thu 3 Dec for two weeks; her 14-day visit (deadline 7 Dec) is moved before departure.
    hh = households(dict(household_id="h1", categories="hardship", away_from="2026-12-03", away_until="2026-12-16"),
                    # Leaves tomorrow with no recorded return: one visit today, then listed as away.
                    dict(household_id="h2", categories="hardship", away_from="2026-11-24"))
    r = plan(hh, cadres(dict(cadre_id="c1")), last_visits=last(h1=10, h2=5))
    dues = r.plans[r.plans["household_id"] == "h1"]["due_date"].dt.date.tolist()
    assert dues[0] <= date(2026, 12, 2)
    assert all(not (date(2026, 12, 3) <= d <= date(2026, 12, 16)) for d in dues)
    assert r.plans[r.plans["household_id"] == "h2"]["due_date"].dt.date.tolist() == [MONDAY]
    assert "h2" in set(r.away["household_id"])


def test_coverage_with_nothing_due_is_empty():
    """Right after the registry is imported there are no plans: coverage is empty, not an error."""
    import pandas as pd

    from sibifang.schedule_visits import COVERAGE_COLUMNS, compute_coverage

    plans = pd.DataFrame(columns=["visit_id", "household_id", "cadre_id", "grid_id", "due_date", "window_start",
                                  "window_end"])
    visits = pd.DataFrame({"visit_id": ["X1"], "plan_id": [None], "household_id": ["H1"],
                           "visited_at": pd.to_datetime(["2026-11-01 10:00"])})
    households = pd.DataFrame({"household_id": ["H1"], "grid_id": ["G1"]})
    out = compute_coverage(plans, visits, households, date(2026, 11, 20))
    assert list(out.columns) == COVERAGE_COLUMNS and out.empty


# -- daily cap (每日走访上限) ----------------------------------------------------------------------
def _non_urgent_per_cadre_day(plans: pd.DataFrame) -> pd.Series:
    return plans[~plans["urgent"]].groupby(["cadre_id", "due_date"]).size()


def _first_visits(plans: pd.DataFrame) -> pd.DataFrame:
    return plans[~plans["urgent"]].sort_values("due_date", kind="mergesort").groupby("household_id").first()


def _overdue_archive():
    """30 overdue families of cadre a (h29 the most overdue); colleague b is on leave after Monday."""
    hh = households(*[dict(household_id=f"h{i:02d}", categories="hardship") for i in range(30)])
    cd = cadres(dict(cadre_id="a", capacity=30),
                dict(cadre_id="b", on_leave_from="2026-11-24", on_leave_until="2026-12-31"))
    current = pd.DataFrame({"household_id": hh["household_id"], "cadre_id": "a"})
    lv = last(**{f"h{i:02d}": 20 + i for i in range(30)})
    return hh, cd, dict(current_assignments=current, last_visits=lv)


def test_packaged_daily_cap_is_four():
    assert RULES.max_visits_per_cadre_per_day == 4


def test_overdue_families_spread_over_the_window_then_colleague_then_shortfall():
    hh, cd, kw = _overdue_archive()
    r = plan(hh, cd, **kw)
    assert _non_urgent_per_cadre_day(r.plans).max() == 4
    first = _first_visits(r.plans)
    assert len(first) == 30  # nobody dropped
    # Cadre a: 4 a day over the overdue window (Mon 23 – Thu 26 Nov), most overdue first.
    by_a = first[(first["cadre_id"] == "a") & (first["due_date"] <= "2026-11-26")]
    assert by_a.groupby(by_a["due_date"].dt.date).size().to_dict() == {
        date(2026, 11, d): 4 for d in (23, 24, 25, 26)}
    assert set(by_a.index) == {f"h{i:02d}" for i in range(14, 30)}
    assert set(by_a.index[by_a["due_date"] == "2026-11-23"]) == {"h26", "h27", "h28", "h29"}
    # Colleague b (only Monday before her leave) takes the next four, reported as moved.
    by_b = first[first["cadre_id"] == "b"]
    assert set(by_b.index) == {"h10", "h11", "h12", "h13"}
    assert (by_b["due_date"] == "2026-11-23").all()
    moved = r.moved.set_index("household_id").loc[list(by_b.index)]
    assert (moved["from_cadre_id"] == "a").all() and (moved["to_cadre_id"] == "b").all()
    assert moved["reason"].str.contains("已满").all()
    # Nobody has room for the last ten: the first days after the window where a has room, and
    # each family is listed in the shortfall with a capacity reason.
    late = first.loc[[f"h{i:02d}" for i in range(10)]]
    assert (late["cadre_id"] == "a").all()
    assert late["due_date"].dt.date.value_counts().to_dict() == {
        date(2026, 11, 27): 4, date(2026, 11, 30): 4, date(2026, 12, 1): 2}
    assert late.loc["h09", "due_date"].date() == date(2026, 11, 27)  # the more overdue, the sooner
    sf = r.shortfall.set_index("household_id")
    assert set(sf.index) == set(late.index)
    assert sf["reason"].str.contains("容量").all()


def test_no_daily_cap_when_set_to_zero():
    import dataclasses

    hh, cd, kw = _overdue_archive()
    uncapped = dataclasses.replace(RULES, max_visits_per_cadre_per_day=0)
    first = _first_visits(plan(hh, cd, rules=uncapped, **kw).plans)
    assert (first["due_date"] == "2026-11-23").all() and (first["cadre_id"] == "a").all()


def test_daily_cap_rerun_gives_identical_ids():
    hh, cd, kw = _overdue_archive()
    first = plan(hh, cd, **kw)
    again = plan(hh, cd, **kw)
    pd.testing.assert_frame_equal(first.plans, again.plans)
    # Fed its own plans back (what the database holds after the upsert): nothing changes, the
    # visits a colleague took or that slipped past the window included.
    fed = plan(hh, cd, open_plans=first.plans, current_assignments=first.assignments,
               last_visits=kw["last_visits"])
    pd.testing.assert_frame_equal(first.plans, fed.plans)
    assert set(fed.moved["visit_id"]) == set(first.moved["visit_id"])
    # The next morning, nothing visited yet: the visits still ahead keep their ids.
    tomorrow = plan(hh, cd, as_of=MONDAY + timedelta(days=1), open_plans=first.plans,
                    current_assignments=first.assignments, last_visits=kw["last_visits"])
    ahead = first.plans[first.plans["due_date"] > pd.Timestamp(MONDAY)]
    assert set(ahead["visit_id"]) <= set(tomorrow.plans["visit_id"])
    assert _non_urgent_per_cadre_day(tomorrow.plans).max() <= 4


def test_urgent_visit_on_a_full_day_is_still_planned_and_counts():
    sunday_morning = pd.Timestamp(MONDAY) - pd.Timedelta(hours=14)  # critical: due Monday 10:00
    urgent = pd.DataFrame({"household_id": ["u1"], "requested_at": [sunday_morning], "reason": ["meter_inactivity"],
                           "critical": [1]})
    cd = cadres(dict(cadre_id="a"))
    # Monday already full with four kept open plans of cadre a.
    hh = households(*[dict(household_id=f"k{i}", categories="hardship") for i in range(4)],
                    dict(household_id="late", categories="hardship"), dict(household_id="u1", categories="empty_nest"))
    kept = pd.DataFrame({"visit_id": [f"P{i}" for i in range(4)], "household_id": [f"k{i}" for i in range(4)],
                         "cadre_id": "a", "due_date": pd.Timestamp(MONDAY), "reason": "hardship", "urgent": False})
    current = pd.DataFrame({"household_id": hh["household_id"], "cadre_id": "a"})
    r = plan(hh, cd, open_plans=kept, current_assignments=current, urgent_requests=urgent,
             last_visits=last(k0=10, k1=10, k2=10, k3=10, late=20, u1=3))
    monday = r.plans[r.plans["due_date"] == pd.Timestamp(MONDAY)]
    assert set(monday["visit_id"]) >= {"P0", "P1", "P2", "P3"}
    u = r.plans[r.plans["urgent"]]
    assert u[["household_id", "cadre_id"]].values.tolist() == [["u1", "a"]]
    assert u["due_date"].iloc[0] == pd.Timestamp(MONDAY)  # over the cap: safety first
    assert len(monday) == 5
    # The overdue family does not squeeze in: the first day with room.
    late = r.plans[r.plans["household_id"] == "late"]["due_date"].min()
    assert late.date() == date(2026, 11, 24)
    # Without open plans the urgent visit still takes one of Monday's four places.
    hh = households(*[dict(household_id=f"o{i}", categories="hardship") for i in range(4)],
                    dict(household_id="u1", categories="empty_nest"))
    current = pd.DataFrame({"household_id": hh["household_id"], "cadre_id": "a"})
    r = plan(hh, cd, current_assignments=current, urgent_requests=urgent,
             last_visits=last(o0=20, o1=21, o2=22, o3=23, u1=3))
    monday = r.plans[r.plans["due_date"] == pd.Timestamp(MONDAY)]
    assert len(monday) == 4 and monday["urgent"].sum() == 1
    assert r.plans[r.plans["household_id"] == "o0"]["due_date"].min().date() == date(2026, 11, 24)
    assert r.shortfall.empty


def test_follow_ups_respect_the_daily_cap_within_their_window():
    hh = households(*[dict(household_id=f"f{i}", categories="dispute") for i in range(6)])
    fu = pd.DataFrame({"household_id": [f"f{i}" for i in range(6)], "due_date": pd.Timestamp("2026-11-25"),
                       "reason": "follow_up_mediation_7d"})
    r = plan(hh, cadres(dict(cadre_id="c1")), follow_ups=fu, last_visits=last(**{f"f{i}": 3 for i in range(6)}))
    f = r.plans[r.plans["reason"].str.startswith("follow_up")]
    assert f["due_date"].dt.date.value_counts().to_dict() == {date(2026, 11, 25): 4, date(2026, 11, 26): 2}
    assert _non_urgent_per_cadre_day(r.plans).max() <= 4
    assert r.shortfall.empty


def test_one_grid_replan_counts_the_day_load_of_other_grids():
    # The village chair covers G1 and G2; her Monday is full with four open plans in G2.
    hh = households(dict(household_id="x1", categories="hardship"),
                    *[dict(household_id=f"y{i}", categories="hardship", grid_id="G2") for i in range(4)])
    cd = cadres(dict(cadre_id="chair", role="village_chair", grid_ids="G1;G2"))
    kept = pd.DataFrame({"visit_id": [f"P{i}" for i in range(4)], "household_id": [f"y{i}" for i in range(4)],
                         "cadre_id": "chair", "due_date": pd.Timestamp(MONDAY), "reason": "hardship", "urgent": False})
    current = pd.DataFrame({"household_id": hh["household_id"], "cadre_id": "chair"})
    r = plan(hh, cd, open_plans=kept, current_assignments=current, last_visits=last(x1=20), grid="G1")
    assert r.plans[r.plans["household_id"] == "x1"]["due_date"].min().date() == date(2026, 11, 24)


# -- engine independence -------------------------------------------------------------------------
def test_cadre_ties_are_broken_by_id_not_input_order():
    # Two equally loaded cadres: the family goes to the first by id ("least-loaded, then id"),
    # whatever order the rows come in (a SELECT without ORDER BY has none; PostgreSQL returns an
    # updated row after the others, SQLite in rowid order).
    hh = households(dict(household_id="h1", categories="hardship"))
    a_first = plan(hh, cadres(dict(cadre_id="a"), dict(cadre_id="b")))
    b_first = plan(hh, cadres(dict(cadre_id="b"), dict(cadre_id="a")))
    assert a_first.assignments["cadre_id"].tolist() == ["a"]
    assert b_first.assignments["cadre_id"].tolist() == ["a"]
    pd.testing.assert_frame_equal(a_first.plans, b_first.plans)


def test_plan_from_the_database_does_not_depend_on_row_order(database_url):
    from sqlalchemy import update

    from schemas.models import Area, Cadre, Household
    from sibifang.db import migrate, session_scope
    from tasks.schedule_visits import plan_visits

    migrate(database_url)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add_all([Cadre(id=c, name=c, role="cadre", grid_ids=["G1"], capacity=10) for c in ("a", "b")])
        s.add(Household(id="h1", head_name="户主", grid_id="G1", categories=["hardship"]))
    with session_scope(database_url) as s:  # PostgreSQL now returns cadre a after cadre b
        s.execute(update(Cadre).where(Cadre.id == "a").values(phone="13800000000"))
    r = plan_visits.fn(MONDAY, database_url=database_url)
    assert r.assignments["cadre_id"].tolist() == ["a"]
    assert set(r.plans["cadre_id"]) == {"a"}


# -- an open plan counts until its window closes ------------------------------------------------
def _overlapping_routine(plans: pd.DataFrame) -> pd.DataFrame:
    """Pairs of non-urgent plans of one family whose windows overlap (a family planned twice)."""
    p = plans[~plans["urgent"].astype(bool)]
    m = p.merge(p, on="household_id")
    return m[(m.visit_id_x < m.visit_id_y) & (pd.to_datetime(m.window_start_x) <= pd.to_datetime(m.window_end_y))
             & (pd.to_datetime(m.window_start_y) <= pd.to_datetime(m.window_end_x))]


def test_overdue_visit_still_in_its_window_is_not_planned_again():
    # Never visited: due on the first free day of its window (Monday, window to Thursday). On
    # Tuesday that plan is past its due day but its window is open: it is still the visit.
    hh = households(dict(household_id="h1", categories="hardship"))
    cd = cadres(dict(cadre_id="a"))
    first = plan(hh, cd)
    v1 = first.plans.iloc[0]
    assert v1["due_date"] == pd.Timestamp(MONDAY) and v1["window_end"] > pd.Timestamp(MONDAY) + pd.Timedelta(days=1)
    tuesday = plan(hh, cd, as_of=MONDAY + timedelta(days=1), open_plans=first.plans,
                   current_assignments=first.assignments)
    assert v1["visit_id"] in set(tuesday.plans["visit_id"])
    assert _overlapping_routine(tuesday.plans).empty
    # the chain continues from the open plan, as it did the day before
    assert set(first.plans["visit_id"]) <= set(tuesday.plans["visit_id"])


def test_planner_reads_open_plans_until_their_window_end(database_url, tmp_path):
    from sqlalchemy import select

    from schemas.models import Area, Cadre, Household, VisitPlan
    from sibifang.db import migrate, read_frame, session_scope
    from tasks.schedule_visits import plan_visits, store_plan

    migrate(database_url)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add(Cadre(id="a", name="a", role="cadre", grid_ids=["G1"], capacity=10))
        s.add_all([Household(id=f"h{i}", head_name="户主", grid_id="G1", categories=["hardship"]) for i in range(3)])
    for day in (MONDAY, MONDAY + timedelta(days=1), MONDAY + timedelta(days=2)):
        store_plan.fn(plan_visits.fn(day, database_url=database_url), day, str(tmp_path), database_url=database_url)
    plans = read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.window_start,
                              VisitPlan.window_end, VisitPlan.urgent).where(VisitPlan.status == "planned"),
                       database_url)
    assert _overlapping_routine(plans).empty
    # Old rows without a window, and a visit that slipped past its window: open until the due day.
    thursday = MONDAY + timedelta(days=3)
    with session_scope(database_url) as s:
        s.add(VisitPlan(id="Vold", household_id="h0", cadre_id="a", grid_id="G1", due_date=thursday,
                        reason="hardship", urgent=False, status="planned", planned_on=MONDAY))
        s.add(VisitPlan(id="Vslip", household_id="h1", cadre_id="a", grid_id="G1", due_date=thursday,
                        window_start=MONDAY, window_end=MONDAY + timedelta(days=1),
                        reason="hardship", urgent=False, status="planned", planned_on=MONDAY))
    from tasks.schedule_visits import scheduling_inputs

    kept = scheduling_inputs(thursday, database_url)["open_plans"]
    assert {"Vold", "Vslip"} <= set(kept.visit_id)
    gone = scheduling_inputs(thursday + timedelta(days=1), database_url)["open_plans"]
    assert not {"Vold", "Vslip"} & set(gone.visit_id)


def _slipped_past_window():
    """Friday 27 Nov, cap 1: cadre a has four overdue families and room on Fri, Mon 30 (the window),
    Tue 1 and Wed 2 Dec; b is on leave until Mon 30. h4's visit slips to Wed 2 Dec, past its window
    (Fri 27 – Mon 30). On Saturday the overdue window runs to Tue 1 Dec, when b is back with room."""
    import dataclasses

    cap1 = dataclasses.replace(RULES, max_visits_per_cadre_per_day=1)
    hh = households(*[dict(household_id=f"h{i}", categories="hardship") for i in range(1, 5)])
    cd = cadres(dict(cadre_id="a"), dict(cadre_id="b", on_leave_from="2026-11-20", on_leave_until="2026-11-30"))
    cur = pd.DataFrame({"household_id": hh["household_id"], "cadre_id": "a"})
    return hh, cd, cur, cap1


def _routine_twins(plans: pd.DataFrame) -> pd.DataFrame:
    """Pairs of open non-urgent plans of one family and reason whose windows overlap."""
    p = plans[~plans["urgent"].astype(bool)]
    m = p.merge(p, on=["household_id", "reason"])
    return m[(m.visit_id_x < m.visit_id_y) & (pd.to_datetime(m.window_start_x) <= pd.to_datetime(m.window_end_y))
             & (pd.to_datetime(m.window_start_y) <= pd.to_datetime(m.window_end_x))]


def test_open_plan_that_slipped_past_its_window_is_not_planned_twice():
    # The sibifang demo's H0000145: a visit that slipped past its window is that cadence step's visit.
    # The next morning a colleague with room inside the (now later) overdue window must not get a
    # second visit for the same step, nor the holder a notice that "her" visit moved to the colleague.
    fri = date(2026, 11, 27)
    hh, cd, cur, cap1 = _slipped_past_window()
    d1 = plan(hh, cd, as_of=fri, current_assignments=cur, rules=cap1)
    h4 = d1.plans[d1.plans["household_id"] == "h4"].iloc[0]
    assert h4["due_date"] == pd.Timestamp("2026-12-02") and h4["window_end"] == pd.Timestamp("2026-11-30")
    assert "h4" in set(d1.shortfall["household_id"])
    d2 = plan(hh, cd, as_of=fri + timedelta(days=1), open_plans=d1.plans, current_assignments=d1.assignments,
              rules=cap1)
    assert _routine_twins(d2.plans).empty, _routine_twins(d2.plans)[["household_id", "visit_id_x", "visit_id_y"]]
    assert set(d2.plans["visit_id"]) == set(d1.plans["visit_id"])  # nothing new: every step has its visit
    assert d2.moved.empty
    # still late against its cadence: the family stays listed, with the same reason as the day before
    pd.testing.assert_frame_equal(d2.shortfall[d2.shortfall["household_id"] == "h4"].reset_index(drop=True),
                                  d1.shortfall[d1.shortfall["household_id"] == "h4"].reset_index(drop=True))
    # Replaying Friday with Saturday's plans in hand (what the database holds) plans nothing either.
    replay = plan(hh, cd, as_of=fri, open_plans=d2.plans, current_assignments=d2.assignments, rules=cap1)
    assert set(replay.plans["visit_id"]) <= set(d2.plans["visit_id"])
    assert _routine_twins(replay.plans).empty


def test_missed_visit_planned_again_does_not_slip_next_to_the_next_steps_plan():
    # h1's last visit was 30 days ago and the visit planned for it was missed (its window is over);
    # the next step's plan stands, due Wed 2 Dec (window from Sat 28 Nov). Cadre a is on leave all
    # the overdue window, nobody can cover: the visit planned again would slip to Tue 1 Dec, inside
    # that plan's window, a day before it. That plan is the visit: nothing new, the family listed late.
    hh = households(dict(household_id="h1", categories="hardship"))
    cd = cadres(dict(cadre_id="a", on_leave_from="2026-11-20", on_leave_until="2026-11-30"))
    cur = pd.DataFrame({"household_id": ["h1"], "cadre_id": ["a"]})
    standing = pd.DataFrame([dict(visit_id="Vnext", household_id="h1", cadre_id="a", due_date="2026-12-02",
                                  window_start="2026-11-28", window_end="2026-12-02", reason="hardship",
                                  urgent=False)])
    r = plan(hh, cd, last_visits=last(h1=30), open_plans=standing, current_assignments=cur)
    first = r.plans.sort_values("due_date").iloc[0]
    assert first["visit_id"] == "Vnext" and first["due_date"] == pd.Timestamp("2026-12-02")
    assert (r.plans["due_date"] < pd.Timestamp("2026-12-02")).sum() == 0
    assert "h1" in set(r.shortfall["household_id"])


def test_open_plan_of_another_reason_due_after_the_deadline_does_not_delay_a_tighter_cadence():
    # An open dispute now asks for a visit every 7 days; the open 30-day 'entrepreneur' plan due
    # Mon 30 Nov (window from Tue 24) is not this step's visit: one is planned by Wed 25 Nov.
    hh = households(dict(household_id="h1", categories="entrepreneur", open_dispute=1))
    cd = cadres(dict(cadre_id="a"))
    cur = pd.DataFrame({"household_id": ["h1"], "cadre_id": ["a"]})
    older = pd.DataFrame([dict(visit_id="Vold", household_id="h1", cadre_id="a", due_date="2026-11-30",
                               window_start="2026-11-24", window_end="2026-11-30", reason="entrepreneur",
                               urgent=False)])
    r = plan(hh, cd, last_visits=last(h1=5), open_plans=older, current_assignments=cur)
    dispute = r.plans[r.plans["reason"] == "open_dispute"].sort_values("due_date")
    assert dispute.iloc[0]["due_date"] <= pd.Timestamp("2026-11-25")
    assert "Vold" in set(r.plans["visit_id"])


def test_days_in_a_row_and_replays_store_each_step_once(database_url, tmp_path, monkeypatch):
    """The evening runs of Fri 27 and Sat 28 Nov on the database (plan, store, queue the next day's
    notices), then both days replayed: one open plan per family, reason and step, and the replays
    store no plan and queue no notice (the demo's 12 twins and 4 overdue reminders)."""
    from sqlalchemy import func, select

    from schemas.models import Area, Assignment, Cadre, Household, Notice, Visit, VisitPlan
    from sibifang.db import migrate, read_frame, session_scope
    from tasks.schedule_visits import plan_visits, queue_notices, store_plan

    text = (load_cadence_rules.__globals__["resources"].files("sibifang") / "cadence.toml").read_text(encoding="utf-8")
    assert "max_visits_per_cadre_per_day = 4" in text
    cap1 = tmp_path / "cadence.toml"
    cap1.write_text(text.replace("max_visits_per_cadre_per_day = 4", "max_visits_per_cadre_per_day = 1"),
                    encoding="utf-8")
    monkeypatch.setenv("SIBIFANG_CADENCE_FILE", str(cap1))
    reset_settings()
    migrate(database_url)
    fri, sat = date(2026, 11, 27), date(2026, 11, 28)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add(Cadre(id="a", name="甲", role="cadre", grid_ids=["G1"], capacity=10, alert_channel="webhook",
                    alert_address="http://127.0.0.1:9/a"))
        s.add(Cadre(id="b", name="乙", role="cadre", grid_ids=["G1"], capacity=10, alert_channel="webhook",
                    alert_address="http://127.0.0.1:9/b", on_leave_from=date(2026, 11, 20),
                    on_leave_until=date(2026, 11, 30)))
        s.add_all([Household(id=f"h{i}", head_name=f"户主{i}", grid_id="G1", categories=["hardship"])
                   for i in range(1, 5)])
        s.flush()
        s.add_all([Assignment(household_id=f"h{i}", cadre_id="a", since=fri) for i in range(1, 5)])

    def evening(day):
        store_plan.fn(plan_visits.fn(day, database_url=database_url), day, str(tmp_path), database_url=database_url)
        queue_notices.fn(day + timedelta(days=1), database_url=database_url)

    def counts():
        with session_scope(database_url) as s:
            return (s.scalar(select(func.count()).select_from(VisitPlan)),
                    s.scalar(select(func.count()).select_from(Notice)))

    def open_routine():
        return read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.cadre_id,
                                 VisitPlan.due_date, VisitPlan.window_start, VisitPlan.window_end,
                                 VisitPlan.reason, VisitPlan.urgent).where(VisitPlan.status == "planned"),
                          database_url)

    try:
        evening(fri)
        slipped = open_routine().query("household_id == 'h4'").sort_values("due_date").iloc[0]
        assert str(slipped["due_date"])[:10] == "2026-12-02" and str(slipped["window_end"])[:10] == "2026-11-30"
        evening(sat)
        assert _routine_twins(open_routine()).empty, _routine_twins(open_routine())
        # Friday's and Monday's visits were made (the replays come later): a's Friday is free on a
        # replay of it, and Monday's plan, closed by a visit after the replayed days, was open on them.
        with session_scope(database_url) as s:
            for n, day in enumerate((fri, date(2026, 11, 30))):
                done = s.scalars(select(VisitPlan).where(VisitPlan.cadre_id == "a", VisitPlan.due_date == day)).one()
                s.add(Visit(id=f"VIS{n}", plan_id=done.id, household_id=done.household_id, cadre_id="a",
                            visited_at=datetime.combine(day, datetime.min.time()).replace(hour=10), mode="visit"))
                done.status, done.closed_by_visit_id = "done", f"VIS{n}"
        before = counts()
        evening(fri)
        evening(sat)
        assert counts() == before
        assert _routine_twins(open_routine()).empty
    finally:
        monkeypatch.delenv("SIBIFANG_CADENCE_FILE")
        reset_settings()


def _h2_leaving_tomorrow():
    """Mon 23 Nov, cap 1, cadre a alone: h1 is due today (last visit 14 days ago); h2 (due Fri 27)
    leaves on Tue 24 until Sat 28, so her visit would have to be today too. Today goes to h1 (tie:
    household id) and h2's visit waits for her return (Mon 30)."""
    import dataclasses

    cap1 = dataclasses.replace(RULES, max_visits_per_cadre_per_day=1)
    hh = households(dict(household_id="h1", categories="hardship"),
                    dict(household_id="h2", categories="hardship", away_from="2026-11-24", away_until="2026-11-28"))
    cd = cadres(dict(cadre_id="a"))
    cur = pd.DataFrame({"household_id": ["h1", "h2"], "cadre_id": "a"})
    return hh, cd, cur, cap1


def test_place_of_a_visit_made_today_is_not_given_to_another_family():
    # The morning's plan gives a's Monday to h1. h1 is visited that day; the evening run (or a
    # replay of Monday) reads the visit and the plan it closed as done. The plan held a's Monday
    # when the day began: read as free, Monday went to h2, a visit nobody had planned on a day
    # already over, reminded as overdue the next morning.
    hh, cd, cur, cap1 = _h2_leaving_tomorrow()
    morning = plan(hh, cd, last_visits=last(h1=14, h2=10), current_assignments=cur, rules=cap1)
    visited = morning.plans[(morning.plans["household_id"] == "h1")
                            & (morning.plans["due_date"] == pd.Timestamp(MONDAY))]
    assert len(visited) == 1 and "h2" in set(morning.away["household_id"])
    assert (morning.plans[morning.plans["household_id"] == "h2"]["due_date"] > pd.Timestamp("2026-11-28")).all()
    lv = pd.concat([last(h2=10), pd.DataFrame({"household_id": ["h1"],
                                               "last_visited_at": [pd.Timestamp(MONDAY) + pd.Timedelta(hours=10)]})])
    still_open = morning.plans[~morning.plans["visit_id"].isin(visited["visit_id"])]
    evening = schedule_visits(hh, cd, as_of=MONDAY, last_visits=lv, open_plans=still_open,
                              current_assignments=morning.assignments, urgent_requests=pd.DataFrame(),
                              follow_ups=pd.DataFrame(), rules=cap1, calendar=cap1.work_calendar(),
                              held_plans=visited)
    pd.testing.assert_frame_equal(evening.plans, still_open.reset_index(drop=True))
    # What the fix changes: without the visit's place, Monday is free again and h2 gets it.
    unheld = plan(hh, cd, last_visits=lv, open_plans=still_open, current_assignments=morning.assignments,
                  rules=cap1)
    assert set(unheld.plans["visit_id"]) - set(morning.plans["visit_id"])


def test_open_plan_before_the_last_visit_does_not_take_the_chain_back():
    # Weekly visits (open dispute). The visit of Thu 19 was missed and its plan is open until its
    # window ends today; today's plan was done today (the visit closed that one). The next step is
    # 7 days after today's visit, and planned already (Mon 30): nothing new. Counting the missed
    # plan as the step after today's visit took the chain back to Thu 19 and asked for a visit by
    # Thu 26, 3 days after one was made.
    hh = households(dict(household_id="h1", categories="dispute", open_dispute=1))
    cd = cadres(dict(cadre_id="a"))
    cur = pd.DataFrame({"household_id": ["h1"], "cadre_id": ["a"]})
    standing = pd.DataFrame([
        dict(visit_id="Vmissed", household_id="h1", cadre_id="a", due_date="2026-11-19", window_start="2026-11-19",
             window_end="2026-11-23", reason="open_dispute", urgent=False),
        dict(visit_id="Vnext", household_id="h1", cadre_id="a", due_date="2026-11-30", window_start="2026-11-28",
             window_end="2026-11-30", reason="open_dispute", urgent=False)])
    today = pd.DataFrame({"household_id": ["h1"], "last_visited_at": [pd.Timestamp(MONDAY) + pd.Timedelta(hours=9)]})
    r = plan(hh, cd, last_visits=today, open_plans=standing, current_assignments=cur)
    first_two = r.plans.sort_values("due_date")["visit_id"].tolist()[:2]
    assert first_two == ["Vmissed", "Vnext"], r.plans
    assert "h1" not in set(r.shortfall["household_id"])


def test_replay_after_visits_made_since_changes_nothing(database_url, tmp_path, monkeypatch):
    """Mon 23 and Tue 24 Nov on the database: Monday's run, the day's visit; Tuesday's morning run,
    the day's visit, the evening run; then both days replayed. The replays leave plans and notices
    as they were (before: h1's visit freed a's Monday, and the replay of Monday gave it to h2, a
    visit on a day long over, with an overdue reminder). The evening run is checked the same way."""
    from sqlalchemy import select

    from schemas.models import Area, Assignment, Cadre, Household, Notice, Visit, VisitPlan
    from sibifang.db import migrate, read_frame, session_scope
    from tasks.schedule_visits import plan_visits, queue_notices, store_plan

    text = (load_cadence_rules.__globals__["resources"].files("sibifang") / "cadence.toml").read_text(encoding="utf-8")
    cap1 = tmp_path / "cadence.toml"
    cap1.write_text(text.replace("max_visits_per_cadre_per_day = 4", "max_visits_per_cadre_per_day = 1"),
                    encoding="utf-8")
    monkeypatch.setenv("SIBIFANG_CADENCE_FILE", str(cap1))
    reset_settings()
    migrate(database_url)
    mon, tue = MONDAY, MONDAY + timedelta(days=1)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))
        s.flush()
        s.add(Cadre(id="a", name="甲", role="cadre", grid_ids=["G1"], capacity=10, alert_channel="webhook",
                    alert_address="http://127.0.0.1:9/a"))
        s.add(Household(id="h1", head_name="户主1", grid_id="G1", categories=["hardship"]))
        s.add(Household(id="h2", head_name="户主2", grid_id="G1", categories=["hardship"],
                        away_from=date(2026, 11, 24), away_until=date(2026, 11, 28)))
        # h3 is due Tuesday: Tuesday's visit
        s.add(Household(id="h3", head_name="户主3", grid_id="G1", categories=["hardship"]))
        s.flush()
        s.add_all([Assignment(household_id=h, cadre_id="a", since=mon - timedelta(days=30))
                   for h in ("h1", "h2", "h3")])
        for n, (h, ago) in enumerate((("h1", 14), ("h2", 10), ("h3", 13))):
            s.add(Visit(id=f"OLD{n}", household_id=h, cadre_id="a", mode="visit",
                        visited_at=datetime.combine(mon - timedelta(days=ago), datetime.min.time()).replace(hour=10)))

    def run(day, notify_for):
        store_plan.fn(plan_visits.fn(day, database_url=database_url), day, str(tmp_path), database_url=database_url)
        queue_notices.fn(notify_for, database_url=database_url)

    def visit_due_plans(day):
        with session_scope(database_url) as s:
            for p in s.scalars(select(VisitPlan).where(VisitPlan.due_date == day, VisitPlan.status == "planned")):
                s.add(Visit(id=f"VIS-{p.id}", plan_id=p.id, household_id=p.household_id, cadre_id=p.cadre_id,
                            visited_at=datetime.combine(day, datetime.min.time()).replace(hour=10), mode="visit"))
                p.status, p.closed_by_visit_id = "done", f"VIS-{p.id}"

    def state():
        plans = read_frame(select(VisitPlan.id, VisitPlan.household_id, VisitPlan.cadre_id, VisitPlan.due_date,
                                  VisitPlan.status, VisitPlan.moved_from).order_by(VisitPlan.id), database_url)
        notices = read_frame(select(Notice.id, Notice.kind, Notice.day, Notice.body).order_by(Notice.id), database_url)
        return plans, notices

    def assert_same(before, after):
        for b, a in zip(before, after):
            pd.testing.assert_frame_equal(b.reset_index(drop=True), a.reset_index(drop=True))

    try:
        run(mon, mon)
        monday = state()[0]
        assert monday[pd.to_datetime(monday["due_date"]) == pd.Timestamp(mon)]["household_id"].tolist() == ["h1"]
        visit_due_plans(mon)
        run(tue, tue)
        visit_due_plans(tue)
        assert (state()[0]["status"] == "done").sum() == 2  # h1 on Monday, h3 on Tuesday
        before = state()
        run(tue, tue + timedelta(days=1))  # the evening loop: Wednesday's digest
        assert_same((before[0], before[1][before[1]["day"] <= tue]),
                    (state()[0], state()[1][state()[1]["day"] <= tue]))
        before = state()
        run(mon, tue)  # replays of both days, as the evening loop runs them
        assert_same(before, state())
        assert "overdue_reminder" not in set(state()[1]["kind"])
        run(tue, tue + timedelta(days=1))
        assert_same(before, state())
    finally:
        monkeypatch.delenv("SIBIFANG_CADENCE_FILE")
        reset_settings()


def test_a_late_visit_still_to_be_made_takes_a_place_under_the_daily_cap():
    # Cap 1. Monday's run gave h1 (never visited) a's Monday, window to Thursday; the visit was not
    # made. On Thursday it stands, past its due day, to be made today at the latest. h2, new in
    # the registry, is due within Thu–Sun: Friday, not Thursday, where a would have two visits.
    import dataclasses

    cap1 = dataclasses.replace(RULES, max_visits_per_cadre_per_day=1)
    cd = cadres(dict(cadre_id="a"))
    monday = plan(households(dict(household_id="h1", categories="hardship")), cd,
                  current_assignments=pd.DataFrame({"household_id": ["h1"], "cadre_id": ["a"]}), rules=cap1)
    late = monday.plans.iloc[0]
    assert late["due_date"] == pd.Timestamp(MONDAY) and late["window_end"] == pd.Timestamp("2026-11-26")
    hh = households(dict(household_id="h1", categories="hardship"), dict(household_id="h2", categories="hardship"))
    thursday = plan(hh, cd, as_of=date(2026, 11, 26), open_plans=monday.plans,
                    current_assignments=monday.assignments, rules=cap1)
    assert late["visit_id"] in set(thursday.plans["visit_id"])
    h2 = thursday.plans[thursday.plans["household_id"] == "h2"].sort_values("due_date").iloc[0]
    assert h2["due_date"] == pd.Timestamp("2026-11-27")
    assert thursday.shortfall.empty
    # Its window ends later (Monday's run seen on Tuesday): it takes Tuesday, h2 goes Wednesday.
    tuesday = plan(hh, cd, as_of=MONDAY + timedelta(days=1), open_plans=monday.plans,
                   current_assignments=monday.assignments, rules=cap1)
    h2 = tuesday.plans[tuesday.plans["household_id"] == "h2"].sort_values("due_date").iloc[0]
    assert h2["due_date"] == pd.Timestamp("2026-11-25")
