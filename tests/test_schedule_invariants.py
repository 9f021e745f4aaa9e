"""Independent checker of visit plans (排期核查), and property tests of the scheduler against it.

``check_schedule`` is written from the rules, not from the scheduler: it reads the cadence
rules itself, asks ``chinese_calendar`` directly whether a day is a working day, and only uses
the scheduler's public result (plans, assignments, shortfall, moved, away). It returns a list
of violations in plain words; an empty list means the plan keeps every rule.

``synth_inputs`` makes reproducible inputs of any size (the city benchmark uses it too).
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from functools import lru_cache

import chinese_calendar
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sibifang.schedule_visits import load_cadence_rules, schedule_visits

VISITING_ROLES = {"cadre", "executive_member", "vice_chair", "grid_worker", "village_chair"}
CATEGORY_CODES = ["entrepreneur", "hardship", "empty_nest", "left_behind", "dispute"]
LABELS = {"创业困难": "entrepreneur", "困难家庭": "hardship", "空巢老人": "empty_nest",
          "留守妇女儿童": "left_behind", "婚姻家庭矛盾": "dispute"}
ROUTINE_REASONS = {"open_dispute", "risk_red", "empty_nest_flagged", "hardship", "left_behind", "empty_nest",
                   "entrepreneur", "dispute", "must_visit_max"}


# ---------------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _official_workday(d: date, holidays: frozenset, workdays: frozenset) -> bool:
    if d in workdays:
        return True
    if d in holidays:
        return False
    try:
        return chinese_calendar.is_workday(d)
    except NotImplementedError:
        return d.weekday() < 5


def _to_list(v) -> list[str]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    return [x.strip() for x in str(v).split(";") if x.strip()]


def _truthy(v) -> bool:
    return str(v).strip().lower() in {"1", "true", "是", "1.0"}


def _day(v) -> date | None:
    if v is None or (not isinstance(v, (list, tuple)) and pd.isna(v)):
        return None
    return pd.Timestamp(v).date()


def _required_interval(row, rules) -> int | None:
    iv = rules.interval_days
    cats = {LABELS.get(c, c) for c in _to_list(row.get("categories"))}
    options = [iv[c] for c in cats if c in iv]
    if cats & set(CATEGORY_CODES):
        options.append(iv["must_visit_max"])
    if _truthy(row.get("open_dispute")):
        options += [iv["open_dispute"], iv["must_visit_max"]]
    level = row.get("risk_level")
    if isinstance(level, str) and level in rules.risk_level_interval_days:
        options += [rules.risk_level_interval_days[level], iv["must_visit_max"]]
    if "empty_nest" in cats and _truthy(row.get("flagged")):
        options.append(iv["empty_nest_flagged"])
    return min(options) if options else None


def check_schedule(result, households, cadres, last_visits, *, as_of: date, horizon_days: int, rules,
                   default_capacity: int = 10) -> list[str]:
    """All rule violations of ``result`` (a SchedulePlan) for these inputs; [] when it is sound."""
    violations: list[str] = []
    hol, wds = rules.calendar_holidays, rules.calendar_workdays
    plans, assignments = result.plans, result.assignments
    last_day = as_of + timedelta(days=horizon_days - 1)

    cadre_rows = {str(r["cadre_id"]): r for r in cadres.to_dict("records")}
    cadre_grids = {k: set(_to_list(r.get("grid_ids"))) for k, r in cadre_rows.items()}
    hh_grid = dict(zip(households["household_id"].astype(str), households["grid_id"].astype(str)))

    leave = {k: (_day(r.get("on_leave_from")), _day(r.get("on_leave_until"))) for k, r in cadre_rows.items()}
    weekday_only = {k: (int(r["grassroots_weekday"]) if not pd.isna(r.get("grassroots_weekday")) else -1)
                    for k, r in cadre_rows.items() if _truthy(r.get("four_plus_one"))}

    def on_leave(cadre_id: str, d: date) -> bool:
        lf, lu = leave[cadre_id]
        return lf is not None and lf <= d and (lu is None or d <= lu)

    def can_visit(cadre_id: str, d: date) -> bool:
        if not _official_workday(d, hol, wds) or on_leave(cadre_id, d):
            return False
        if cadre_id in weekday_only:
            return d.weekday() == weekday_only[cadre_id]
        return True

    # 1. capacity and grids of the assignments
    counts = assignments.groupby("cadre_id")["household_id"].nunique()
    for cadre_id, n in counts.items():
        r = cadre_rows.get(str(cadre_id))
        if r is None:
            violations.append(f"assignment to unknown cadre {cadre_id}")
            continue
        cap = r.get("capacity")
        cap = default_capacity if cap is None or pd.isna(cap) else int(cap)
        if n > cap:
            violations.append(f"cadre {cadre_id} holds {n} families, capacity {cap}")
        if str(r.get("role")) not in VISITING_ROLES:
            violations.append(f"cadre {cadre_id} with role {r.get('role')} carries families")
    if assignments["household_id"].duplicated().any():
        violations.append("a family is assigned to two cadres")
    for h, c in zip(assignments["household_id"].astype(str), assignments["cadre_id"].astype(str)):
        if hh_grid.get(h) not in cadre_grids.get(c, set()):
            violations.append(f"family {h} assigned to {c} outside her grids")

    # 2. every plan: ids, grid, cadre, day
    if plans["visit_id"].duplicated().any():
        violations.append("duplicate visit_id in plans")
    assigned_to = dict(zip(assignments["household_id"].astype(str), assignments["cadre_id"].astype(str)))
    moved_to = dict(zip(result.moved["visit_id"], result.moved["to_cadre_id"]))
    plan_rows = plans.assign(due_date=pd.to_datetime(plans["due_date"]).dt.date).to_dict("records")
    for p in plan_rows:
        c, h, d = str(p["cadre_id"]), str(p["household_id"]), p["due_date"]
        if c not in cadre_rows:
            violations.append(f"plan {p['visit_id']} for unknown cadre {c}")
            continue
        if str(p["grid_id"]) not in cadre_grids[c] or hh_grid.get(h) != str(p["grid_id"]):
            violations.append(f"plan {p['visit_id']}: cadre {c} visits outside her grids")
        # A family without a cadre (shortfall) still gets urgent visits from whoever is on duty.
        on_duty = p["urgent"] and h not in assigned_to
        if c != assigned_to.get(h) and moved_to.get(p["visit_id"]) != c and not on_duty:
            violations.append(f"plan {p['visit_id']}: cadre {c} is neither the family's cadre "
                              f"nor a recorded substitute")
        if p["urgent"]:
            # an urgent visit past its deadline (a request nobody could take in time) is done from
            # today: its cadre must be there today, not on the day it was due
            if on_leave(c, max(d, as_of)):
                violations.append(f"urgent plan {p['visit_id']} given to {c} on leave")
        elif not can_visit(c, d):
            violations.append(f"plan {p['visit_id']} on {d}: not a day cadre {c} can visit "
                              f"(holiday/weekend, leave or 4+1 weekday)")

    # 2b. the daily cap: no cadre is given more non-urgent visits on one day than the rules allow
    # (urgent visits ignore it: safety first). Slipped visits beyond the horizon count too.
    cap = rules.max_visits_per_cadre_per_day
    if cap:
        per_day: dict[tuple[str, date], int] = {}
        for p in plan_rows:
            if not p["urgent"]:
                key = (str(p["cadre_id"]), p["due_date"])
                per_day[key] = per_day.get(key, 0) + 1
        for (c, d), n in sorted(per_day.items()):
            if n > cap:
                violations.append(f"cadre {c} has {n} non-urgent visits on {d}, over the daily cap of {cap}")

    # 3. no routine visit while the family is recorded away
    away_of = {}
    for row in households.to_dict("records"):
        af = _day(row.get("away_from"))
        if af is not None:
            away_of[str(row["household_id"])] = (af, _day(row.get("away_until")))
    for p in plan_rows:
        span = away_of.get(str(p["household_id"]))
        if span and not p["urgent"] and span[0] <= p["due_date"] and (span[1] is None or p["due_date"] <= span[1]):
            violations.append(f"plan {p['visit_id']} on {p['due_date']} while the family is away")

    # 4. cadence of every must-visit family
    excused = set(result.shortfall["household_id"].astype(str)) | set(result.away["household_id"].astype(str))
    last = {}
    if len(last_visits):
        lv = last_visits.assign(_d=pd.to_datetime(last_visits["last_visited_at"]).dt.date)
        lv = lv[lv["_d"] <= as_of]
        last = lv.groupby(lv["household_id"].astype(str))["_d"].max().to_dict()
    routine = plans[plans["reason"].isin(ROUTINE_REASONS) & ~plans["urgent"]]
    routine_days: dict[str, list[date]] = {}
    routine = routine.sort_values(["household_id", "due_date"])
    for h, d in zip(routine["household_id"].astype(str).tolist(), pd.to_datetime(routine["due_date"]).dt.date.tolist()):
        routine_days.setdefault(h, []).append(d)

    def no_workday(a: date, b: date) -> bool:
        d = a
        while d <= b:
            if _official_workday(d, hol, wds):
                return False
            d += timedelta(days=1)
        return True

    for row in households.to_dict("records"):
        h = str(row["household_id"])
        interval = _required_interval(row, rules)
        if interval is None or h in excused:
            continue
        prev = last.get(h)
        dues = routine_days.get(h, [])
        if prev is None or prev + timedelta(days=interval) < as_of:
            lo, deadline = as_of, as_of + timedelta(days=rules.overdue_within_days)
        else:
            lo, deadline = max(prev + timedelta(days=1), as_of), prev + timedelta(days=interval)
        for d in dues:
            if d > deadline and not no_workday(lo, deadline):
                violations.append(f"family {h}: visit on {d} later than {deadline} (every {interval} d)")
            lo, deadline = d + timedelta(days=1), d + timedelta(days=interval)
        if deadline <= last_day and not (dues and no_workday(lo, deadline)):
            violations.append(f"family {h}: no visit planned by {deadline} (every {interval} d) and not in shortfall")
    return violations


# ---------------------------------------------------------------------------------------------
# Synthetic inputs (tests and the city benchmark)
# ---------------------------------------------------------------------------------------------
def synth_inputs(*, seed: int, n_grids: int, households_per_grid: int = 100, cadres_per_grid: int = 10,
                 must_visit_share: float = 0.6, four_plus_one_share: float = 0.03, leave_share: float = 0.03,
                 away_share: float = 0.02, assigned_share: float = 0.8, capacity: int = 10,
                 as_of: date = date(2026, 11, 23), grids_per_village: int = 5) -> dict[str, pd.DataFrame]:
    """Reproducible registry-like inputs; vectorised so 260,000 families take about a second."""
    rng = np.random.default_rng(seed)
    n_hh = n_grids * households_per_grid
    grid_of_hh = np.repeat(np.arange(n_grids), households_per_grid)
    grid_ids = np.array([f"G{g:05d}" for g in range(n_grids)], dtype=object)
    village_ids = np.array([f"V{g // grids_per_village:05d}" for g in range(n_grids)], dtype=object)

    must = rng.random(n_hh) < must_visit_share
    # Category mix: hardship and empty-nest are the most common in the reports, disputes the rarest.
    first = rng.choice(len(CATEGORY_CODES), size=n_hh, p=[0.12, 0.30, 0.30, 0.18, 0.10])
    second = rng.choice(len(CATEGORY_CODES), size=n_hh)
    two = rng.random(n_hh) < 0.15
    codes = np.array(CATEGORY_CODES, dtype=object)
    cats = np.where(two & (first != second), codes[first] + ";" + codes[second], codes[first])
    cats = np.where(must, cats, "")
    has_dispute = np.char.find(cats.astype(str), "dispute") >= 0
    open_dispute = has_dispute & (rng.random(n_hh) < 0.4)
    risk = rng.choice(np.array(["绿", "黄", "橙", "红", None], dtype=object), size=n_hh,
                      p=[0.5, 0.2, 0.1, 0.03, 0.17])
    risk = np.where(must, risk, None)
    flagged = must & (rng.random(n_hh) < 0.05)
    away = rng.random(n_hh) < away_share
    # Half of the absences started already, half start during the horizon (a planned hospital stay).
    start_offset = np.where(rng.random(n_hh) < 0.5, -10, rng.integers(1, 25, n_hh))
    away_from = np.array([as_of + timedelta(days=int(o)) if a else None for a, o in zip(away, start_offset)],
                         dtype=object)
    away_until = np.array([f + timedelta(days=12) if f is not None and back else None
                           for f, back in zip(away_from, rng.random(n_hh) < 0.5)], dtype=object)
    households = pd.DataFrame({
        "household_id": [f"H{i:07d}" for i in range(n_hh)],
        "grid_id": grid_ids[grid_of_hh],
        "village_id": village_ids[grid_of_hh],
        "categories": cats,
        "risk_level": risk,
        "open_dispute": open_dispute,
        "flagged": flagged,
        "away_from": pd.to_datetime(pd.Series(away_from)),
        "away_until": pd.to_datetime(pd.Series(away_until)),
    })

    n_cd = n_grids * cadres_per_grid
    grid_of_cd = np.repeat(np.arange(n_grids), cadres_per_grid)
    roles = rng.choice(np.array(["cadre", "executive_member", "vice_chair", "grid_worker", "mediator"], dtype=object),
                       size=n_cd, p=[0.45, 0.3, 0.05, 0.15, 0.05])
    cadre_grid_ids = grid_ids[grid_of_cd].astype(object)
    # First cadre of the first grid of each village is the village chair and covers all its grids.
    chair = (np.arange(n_cd) % cadres_per_grid == 0) & (grid_of_cd % grids_per_village == 0)
    roles = np.where(chair, "village_chair", roles)
    village_grids = {}
    for g in range(0, n_grids, grids_per_village):
        village_grids[g] = ";".join(grid_ids[g:g + grids_per_village])
    cadre_grid_ids[chair] = [village_grids[g] for g in grid_of_cd[chair]]
    fpo = rng.random(n_cd) < four_plus_one_share
    leave = rng.random(n_cd) < leave_share
    leave_start = pd.Timestamp(as_of) + pd.to_timedelta(rng.integers(-5, 20, n_cd), unit="D")
    cadres = pd.DataFrame({
        "cadre_id": [f"C{i:06d}" for i in range(n_cd)],
        "role": roles,
        "grid_ids": cadre_grid_ids,
        "capacity": capacity,
        "four_plus_one": fpo.astype(int),
        "grassroots_weekday": np.where(fpo, rng.integers(0, 5, n_cd), np.nan),
        "on_leave_from": pd.Series(np.where(leave, leave_start, pd.NaT)).astype("datetime64[s]"),
        "on_leave_until": pd.Series(np.where(leave, leave_start + pd.Timedelta(days=10), pd.NaT)).astype(
            "datetime64[s]"),
    })

    visited = must & (rng.random(n_hh) < 0.9)
    last_visits = pd.DataFrame({
        "household_id": households["household_id"][visited].to_numpy(),
        "last_visited_at": (pd.Timestamp(as_of) - pd.to_timedelta(rng.integers(1, 100, visited.sum()), unit="D")
                            + pd.Timedelta(hours=10)),
    })
    # Current cadre: a random cadre of the family's grid (may exceed capacity: the scheduler trims).
    pick = grid_of_hh * cadres_per_grid + rng.integers(0, cadres_per_grid, n_hh)
    has_cur = must & (rng.random(n_hh) < assigned_share)
    current_assignments = pd.DataFrame({"household_id": households["household_id"][has_cur].to_numpy(),
                                        "cadre_id": cadres["cadre_id"].to_numpy()[pick[has_cur]]})
    urgent = rng.random(n_hh) < 0.005
    urgent_requests = pd.DataFrame({
        "household_id": households["household_id"][urgent].to_numpy(),
        "requested_at": pd.Timestamp(as_of) - pd.to_timedelta(rng.integers(0, 30, urgent.sum()), unit="h"),
        "reason": "meter_anomaly",
        "critical": rng.random(urgent.sum()) < 0.5,
    })
    fu = must & has_dispute & (rng.random(n_hh) < 0.05)
    follow_ups = pd.DataFrame({
        "household_id": households["household_id"][fu].to_numpy(),
        "due_date": pd.Timestamp(as_of) + pd.to_timedelta(rng.integers(-2, 25, fu.sum()), unit="D"),
        "reason": "follow_up_mediation_7d",
    })
    open_plans = pd.DataFrame(columns=["visit_id", "household_id", "cadre_id", "due_date", "reason", "urgent"])
    return {"households": households, "cadres": cadres, "last_visits": last_visits, "open_plans": open_plans,
            "current_assignments": current_assignments, "urgent_requests": urgent_requests, "follow_ups": follow_ups}


def run_and_check(inputs: dict, *, as_of: date, horizon_days: int = 30, grid: str | None = None,
                  daily_cap: int | None = None):
    rules = load_cadence_rules(None)
    if daily_cap is not None:
        rules = dataclasses.replace(rules, max_visits_per_cadre_per_day=daily_cap)
    result = schedule_visits(inputs["households"], inputs["cadres"], as_of=as_of, horizon_days=horizon_days,
                             last_visits=inputs["last_visits"], open_plans=inputs["open_plans"],
                             current_assignments=inputs["current_assignments"],
                             urgent_requests=inputs["urgent_requests"], follow_ups=inputs["follow_ups"],
                             rules=rules, calendar=rules.work_calendar(), grid=grid)
    hh = inputs["households"]
    if grid is not None:
        hh = hh[hh["grid_id"] == grid]
    return result, check_schedule(result, hh, inputs["cadres"], inputs["last_visits"], as_of=as_of,
                                  horizon_days=horizon_days, rules=rules)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
SHAPES = [
    # name, kwargs, as_of
    ("ordinary month", dict(n_grids=12), date(2026, 11, 23)),
    ("spring festival", dict(n_grids=8), date(2026, 2, 9)),
    ("golden week", dict(n_grids=8), date(2026, 9, 21)),
    ("tight capacity", dict(n_grids=6, capacity=4), date(2026, 11, 23)),
    ("many 4+1 and leave", dict(n_grids=6, four_plus_one_share=0.4, leave_share=0.4), date(2026, 4, 27)),
    ("one cadre per grid", dict(n_grids=10, cadres_per_grid=1, households_per_grid=15), date(2026, 6, 15)),
    ("into 2027 fallback", dict(n_grids=5), date(2026, 12, 20)),
]


@pytest.mark.parametrize("name,kwargs,as_of", SHAPES, ids=[s[0] for s in SHAPES])
def test_scheduler_keeps_every_rule(name, kwargs, as_of):
    inputs = synth_inputs(seed=7, as_of=as_of, **kwargs)
    result, violations = run_and_check(inputs, as_of=as_of)
    assert violations == [], violations[:10]
    assert len(result.plans) > 0


def test_capacity_shortfall_is_reported_not_dropped():
    as_of = date(2026, 11, 23)
    inputs = synth_inputs(seed=3, n_grids=4, capacity=2, as_of=as_of)
    result, violations = run_and_check(inputs, as_of=as_of)
    assert violations == []
    must = inputs["households"][inputs["households"]["categories"] != ""]
    covered = set(result.assignments["household_id"]) | set(result.shortfall["household_id"]) | set(
        result.away["household_id"])
    assert set(must["household_id"]) <= covered
    assert (result.shortfall["reason"] == "网格内干部容量不足").any()


def test_one_grid_replan():
    as_of = date(2026, 11, 23)
    inputs = synth_inputs(seed=5, n_grids=10, as_of=as_of)
    result, violations = run_and_check(inputs, as_of=as_of, grid="G00003")
    assert violations == []
    assert set(result.plans["grid_id"]) == {"G00003"}


def test_checker_catches_broken_plans():
    """The checker is only worth something if it fails on bad plans."""
    as_of = date(2026, 11, 23)
    inputs = synth_inputs(seed=11, n_grids=3, as_of=as_of)
    result, violations = run_and_check(inputs, as_of=as_of)
    assert violations == []
    rules = load_cadence_rules(None)
    args = dict(as_of=as_of, horizon_days=30, rules=rules)
    hh, cd, lv = inputs["households"], inputs["cadres"], inputs["last_visits"]

    routine = result.plans.index[~result.plans["urgent"]][0]
    bad = result.plans.copy()
    bad.loc[routine, "due_date"] = pd.Timestamp("2026-11-29")  # a Sunday
    result_bad = type(result)(**{**result.__dict__, "plans": bad})
    assert any("not a day" in v for v in check_schedule(result_bad, hh, cd, lv, **args))

    bad = result.plans.copy()
    bad.loc[routine, "cadre_id"] = cd[~cd["grid_ids"].str.contains(bad.loc[routine, "grid_id"])]["cadre_id"].iloc[0]
    result_bad = type(result)(**{**result.__dict__, "plans": bad})
    assert any("outside her grids" in v for v in check_schedule(result_bad, hh, cd, lv, **args))

    dropped = result.plans[result.plans["household_id"] != result.plans.loc[routine, "household_id"]]
    result_bad = type(result)(**{**result.__dict__, "plans": dropped})
    assert any("no visit planned" in v or "later than" in v for v in check_schedule(result_bad, hh, cd, lv, **args))

    a = result.assignments.copy()
    first_cadre = a["cadre_id"].iloc[0]
    a.loc[a.index[:15], "cadre_id"] = first_cadre
    result_bad = type(result)(**{**result.__dict__, "assignments": a})
    assert any("capacity" in v for v in check_schedule(result_bad, hh, cd, lv, **args))

    # One cadre's non-urgent visits piled on one working day: over the daily cap.
    busiest = result.plans[~result.plans["urgent"]]["cadre_id"].value_counts().index[0]
    piled = result.plans.index[(result.plans["cadre_id"] == busiest) & ~result.plans["urgent"]]
    assert len(piled) > rules.max_visits_per_cadre_per_day
    bad = result.plans.copy()
    bad.loc[piled, "due_date"] = pd.Timestamp("2026-11-24")  # a Tuesday
    result_bad = type(result)(**{**result.__dict__, "plans": bad})
    assert any("over the daily cap" in v for v in check_schedule(result_bad, hh, cd, lv, **args))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_grids=st.integers(1, 4),
    households_per_grid=st.integers(1, 40),
    cadres_per_grid=st.integers(1, 5),
    capacity=st.integers(1, 12),
    four_plus_one_share=st.sampled_from([0.0, 0.3, 1.0]),
    leave_share=st.sampled_from([0.0, 0.3, 0.9]),
    as_of_offset=st.integers(0, 364),
    horizon_days=st.integers(1, 45),
    daily_cap=st.sampled_from([1, 2, 4, 0]),
)
def test_scheduler_keeps_every_rule_on_generated_inputs(seed, n_grids, households_per_grid, cadres_per_grid, capacity,
                                                        four_plus_one_share, leave_share, as_of_offset, horizon_days,
                                                        daily_cap):
    as_of = date(2026, 1, 1) + timedelta(days=as_of_offset)
    inputs = synth_inputs(seed=seed, n_grids=n_grids, households_per_grid=households_per_grid,
                          cadres_per_grid=cadres_per_grid, capacity=capacity,
                          four_plus_one_share=four_plus_one_share, leave_share=leave_share, as_of=as_of,
                          grids_per_village=2)
    result, violations = run_and_check(inputs, as_of=as_of, horizon_days=horizon_days, daily_cap=daily_cap)
    assert violations == [], violations[:10]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_grids=st.integers(1, 3),
    households_per_grid=st.integers(1, 40),
    cadres_per_grid=st.integers(1, 4),
    four_plus_one_share=st.sampled_from([0.0, 0.3]),
    leave_share=st.sampled_from([0.0, 0.3]),
    as_of_offset=st.integers(0, 364),
    daily_cap=st.sampled_from([1, 2, 4]),
)
def test_rerun_fed_its_own_plans_changes_nothing_under_the_daily_cap(seed, n_grids, households_per_grid,
                                                                    cadres_per_grid, four_plus_one_share,
                                                                    leave_share, as_of_offset, daily_cap):
    """Same day, the plan fed back as open plans: the same plans and ids (the upsert writes nothing),
    even when full days sent visits to colleagues or past their window."""
    as_of = date(2026, 1, 1) + timedelta(days=as_of_offset)
    inputs = synth_inputs(seed=seed, n_grids=n_grids, households_per_grid=households_per_grid,
                          cadres_per_grid=cadres_per_grid, four_plus_one_share=four_plus_one_share,
                          leave_share=leave_share, as_of=as_of, grids_per_village=2)
    first, violations = run_and_check(inputs, as_of=as_of, daily_cap=daily_cap)
    assert violations == []
    fed = {**inputs, "open_plans": first.plans, "current_assignments": first.assignments}
    again, violations = run_and_check(fed, as_of=as_of, daily_cap=daily_cap)
    assert violations == []
    pd.testing.assert_frame_equal(first.plans, again.plans)


def test_first_run_after_archive_import_keeps_the_daily_cap():
    """Nobody visited yet and no cadre chosen: every must-visit family is overdue at once. The
    visits spread over the overdue window at most ``cap`` a day per cadre; what does not fit is a
    capacity shortfall, never a dropped family."""
    as_of = date(2026, 11, 23)
    inputs = synth_inputs(seed=13, n_grids=6, as_of=as_of)
    inputs["last_visits"] = inputs["last_visits"].iloc[:0]
    inputs["current_assignments"] = inputs["current_assignments"].iloc[:0]
    result, violations = run_and_check(inputs, as_of=as_of, daily_cap=2)
    assert violations == [], violations[:10]
    routine = result.plans[~result.plans["urgent"]]
    assert routine.groupby(["cadre_id", "due_date"]).size().max() == 2
    assert result.shortfall["reason"].str.contains("容量").any()
    must = inputs["households"][inputs["households"]["categories"] != ""]
    planned_or_listed = set(routine["household_id"]) | set(result.shortfall["household_id"]) | set(
        result.away["household_id"])
    assert set(must["household_id"]) <= planned_or_listed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_grids=st.integers(1, 3),
    households_per_grid=st.integers(1, 30),
    cadres_per_grid=st.integers(1, 4),
    leave_share=st.sampled_from([0.0, 0.3]),
    as_of_offset=st.integers(0, 364),
    days_later=st.integers(1, 10),
    daily_cap=st.sampled_from([1, 2, 4]),
)
# an urgent request nobody could take before its deadline (every cadre of the grid on leave),
# planned a week later when its cadre is back: due on its deadline, done from today
@example(seed=1159, n_grids=3, households_per_grid=23, cadres_per_grid=1, leave_share=0.3, as_of_offset=0,
         days_later=7, daily_cap=1)
def test_replanning_later_with_open_plans_keeps_every_rule(seed, n_grids, households_per_grid, cadres_per_grid,
                                                           leave_share, as_of_offset, days_later, daily_cap):
    """A later run fed with the open plans and assignments of an earlier one (no visit done since)."""
    as_of = date(2026, 1, 1) + timedelta(days=as_of_offset)
    inputs = synth_inputs(seed=seed, n_grids=n_grids, households_per_grid=households_per_grid,
                          cadres_per_grid=cadres_per_grid, leave_share=leave_share, as_of=as_of,
                          grids_per_village=2)
    first, violations = run_and_check(inputs, as_of=as_of, daily_cap=daily_cap)
    assert violations == []
    later = as_of + timedelta(days=days_later)
    fed = {**inputs, "open_plans": first.plans, "current_assignments": first.assignments}
    second, violations = run_and_check(fed, as_of=later, daily_cap=daily_cap)
    assert violations == [], violations[:10]
    # Plans still ahead keep their ids unless their cadre can no longer do them.
    ahead = first.plans[(first.plans["due_date"] >= pd.Timestamp(later)) & (first.plans["due_date"]
                                                                             <= pd.Timestamp(as_of + timedelta(29)))]
    assert set(ahead["visit_id"]) <= set(second.plans["visit_id"]) | set(first.moved["visit_id"])


# ---------------------------------------------------------------------------------------------
# Day after day, and replays of earlier days: one open plan per family, reason and cadence step
# ---------------------------------------------------------------------------------------------
def open_twins(plans: pd.DataFrame) -> list[str]:
    """Open non-urgent plans of one family and reason planned for one cadence step (twins).

    A step's window opens the day after the visit before it (``prev + 1``; a visit is never placed
    before its window), so of two plans of one chain the later one's window starts after the
    earlier one's due day. Windows of consecutive steps may overlap (a visit placed early in a wide
    window); a window that opens on or before the other plan's day is a second visit for its step.
    """
    p = plans[~plans["urgent"].astype(bool)][["visit_id", "household_id", "reason", "cadre_id", "due_date",
                                               "window_start", "window_end"]]
    m = p.merge(p, on=["household_id", "reason"])
    due_x, due_y = pd.to_datetime(m.due_date_x), pd.to_datetime(m.due_date_y)
    x_first = (due_x < due_y) | ((due_x == due_y) & (m.visit_id_x < m.visit_id_y))
    m = m[x_first & (pd.to_datetime(m.window_start_y) <= due_x)]
    return [f"family {r.household_id} ({r.reason}): {r.visit_id_x} by {r.cadre_id_x} due {r.due_date_x:%m-%d} "
            f"(window {r.window_start_x:%m-%d}–{r.window_end_x:%m-%d}) and {r.visit_id_y} by {r.cadre_id_y} "
            f"due {r.due_date_y:%m-%d} (window {r.window_start_y:%m-%d}–{r.window_end_y:%m-%d})"
            for r in m.itertuples()]


class PlanStore:
    """What the database holds of the plans, as ``store_plan`` and ``scheduling_inputs`` handle them:
    new ids inserted (an id already stored is never rewritten), this run's moves applied once per
    plan, open plans read back while their due day or window end is not past (with those a later
    visit closed, on a replay of an earlier day), and the plans a visit made on the day closed."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def store(self, result) -> set[str]:
        new = set(result.plans["visit_id"]) - set(self.rows)
        for r in result.plans[result.plans["visit_id"].isin(new)].to_dict("records"):
            self.rows[r["visit_id"]] = {**r, "moved_from": None}
        for m in result.moved.to_dict("records"):
            row = self.rows.get(m["visit_id"])
            if row is not None and row["status"] == "planned" and row["moved_from"] is None:
                row["cadre_id"], row["moved_from"] = m["to_cadre_id"], m["from_cadre_id"]
        return new

    def open_plans(self, day: date) -> pd.DataFrame:
        """Open on ``day``: planned, or closed by a visit made after it (a replay of an earlier day)."""
        t = pd.Timestamp(day)
        rows = [r for r in self.rows.values() if (r["status"] == "planned" or r.get("visited_on", t) > t)
                and (r["due_date"] >= t or r["window_end"] >= t)]
        cols = ["visit_id", "household_id", "cadre_id", "due_date", "window_start", "window_end", "reason", "urgent"]
        return pd.DataFrame(rows, columns=[*cols, "grid_id", "status", "moved_from"])[cols + ["grid_id"]]

    def held_plans(self, day: date) -> pd.DataFrame:
        """Closed by a visit made on ``day``: open that morning, they hold their place in the day loads."""
        t = pd.Timestamp(day)
        rows = [r for r in self.rows.values() if r.get("visited_on") == t]
        return pd.DataFrame(rows, columns=["visit_id", "household_id", "cadre_id", "due_date"])[
            ["visit_id", "household_id", "cadre_id", "due_date"]]

    def open_now(self, day: date) -> pd.DataFrame:
        p = self.open_plans(day)
        return p.assign(due_date=pd.to_datetime(p["due_date"]), window_start=pd.to_datetime(p["window_start"]),
                        window_end=pd.to_datetime(p["window_end"]))


def _run_day(inputs, store: PlanStore, day: date, assignments, rules, horizon_days: int):
    result = schedule_visits(inputs["households"], inputs["cadres"], as_of=day, horizon_days=horizon_days,
                             last_visits=inputs["last_visits"], open_plans=store.open_plans(day),
                             current_assignments=assignments, urgent_requests=inputs["urgent_requests"],
                             follow_ups=inputs["follow_ups"], rules=rules, calendar=rules.work_calendar(),
                             held_plans=store.held_plans(day))
    return result, store.store(result)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_grids=st.integers(1, 3),
    households_per_grid=st.integers(5, 40),
    cadres_per_grid=st.integers(1, 4),
    leave_share=st.sampled_from([0.0, 0.3, 0.6]),
    as_of_offset=st.integers(0, 364),
    days=st.integers(2, 6),
    daily_cap=st.sampled_from([1, 2, 4]),
    done_share=st.sampled_from([0.0, 0.5, 1.0]),
)
# a visit made on the replayed day freed its place, given on the replay to a family whose visit
# had been put off until her return
@example(seed=7344, n_grids=3, households_per_grid=30, cadres_per_grid=4, leave_share=0.6, as_of_offset=67, days=2,
         daily_cap=1, done_share=1.0)
# a missed plan still open on the replayed day, counted as the step after that day's visit
@example(seed=7061, n_grids=3, households_per_grid=24, cadres_per_grid=4, leave_share=0.3, as_of_offset=320, days=5,
         daily_cap=4, done_share=0.5)
def test_days_in_a_row_and_replays_plan_each_step_once(seed, n_grids, households_per_grid, cadres_per_grid,
                                                       leave_share, as_of_offset, days, daily_cap, done_share):
    """The daily runs of ``days`` days, each fed what the database holds, a share of each day's
    visits made (none: every overdue window moves on each day); then each earlier day replayed.
    Never two open plans of one family and reason for one step, and a replay plans nothing new: the
    plans its day made are stored, and what the days since needed they planned."""
    as_of = date(2026, 1, 1) + timedelta(days=as_of_offset)
    inputs = synth_inputs(seed=seed, n_grids=n_grids, households_per_grid=households_per_grid,
                          cadres_per_grid=cadres_per_grid, leave_share=leave_share, as_of=as_of,
                          grids_per_village=2)
    rules = dataclasses.replace(load_cadence_rules(None), max_visits_per_cadre_per_day=daily_cap)
    store, assignments = PlanStore(), inputs["current_assignments"]
    visits = [inputs["last_visits"]]
    rng = np.random.default_rng(seed)
    for k in range(days):
        day = as_of + timedelta(days=k)
        result, _ = _run_day({**inputs, "last_visits": pd.concat(visits)}, store, day, assignments, rules, 30)
        assignments = result.assignments
        assert open_twins(store.open_now(day)) == [], (day, open_twins(store.open_now(day))[:5])
        # The day's visits are made (a share of them), closing their plans.
        for row in store.rows.values():
            if (row["status"] == "planned" and row["due_date"] == pd.Timestamp(day) and not row["urgent"]
                    and rng.random() < done_share):
                row["status"], row["visited_on"] = "done", pd.Timestamp(day)
                visits.append(pd.DataFrame({"household_id": [row["household_id"]],
                                            "last_visited_at": [pd.Timestamp(day) + pd.Timedelta(hours=10)]}))
    for k in range(days - 1):
        day = as_of + timedelta(days=k)
        lv = pd.concat(visits)
        lv = lv[pd.to_datetime(lv["last_visited_at"]) < pd.Timestamp(day + timedelta(days=1))]
        _, new = _run_day({**inputs, "last_visits": lv}, store, day, assignments, rules, 30)
        assert open_twins(store.open_now(day)) == [], (f"replay of {day}", open_twins(store.open_now(day))[:5])
        assert new == set(), (f"replay of {day} planned {len(new)} new visits", sorted(new)[:5])
