"""Visit records in (走访记录): match each record to the plan it fulfils.

A record names its plan (``plan_id``) when the cadre's form knew it; otherwise it fulfils the
earliest open plan of the same household whose window it falls in (or that is overdue). A
record that matches no plan is an unplanned visit: kept, and counted as such.
"""

from __future__ import annotations

import pandas as pd


def match_visits_to_plans(visits: pd.DataFrame, plans: pd.DataFrame, *, early_days: int = 7) -> pd.DataFrame:
    """visits ``visit_id, plan_id, household_id, visited_at``; plans ``plan_id, household_id, window_start,
    window_end, due_date`` (open ones) → ``plan_id, visit_id, done_on`` (each plan closed at most once)."""
    cols = ["plan_id", "visit_id", "done_on"]
    if visits.empty or plans.empty:
        return pd.DataFrame(columns=cols)
    v = visits.copy()
    v["visited_at"] = pd.to_datetime(v["visited_at"])
    if "plan_id" not in v:
        v["plan_id"] = None
    explicit = v[v.plan_id.notna() & (v.plan_id.astype(str) != "") & v.plan_id.isin(set(plans.plan_id))]
    # Two records naming the same plan: the first closes it, the other is matched like any visit.
    explicit = explicit.sort_values(["visited_at", "visit_id"]).drop_duplicates("plan_id", keep="first")
    out = [pd.DataFrame({"plan_id": explicit.plan_id, "visit_id": explicit.visit_id,
                         "done_on": explicit.visited_at.dt.date})]
    used_plans = set(explicit.plan_id)
    used_visits = set(explicit.visit_id)
    rest = v[~v.visit_id.isin(used_visits)].sort_values(["visited_at", "visit_id"])
    p = plans[~plans.plan_id.isin(used_plans)].copy()
    p["ws"] = pd.to_datetime(p.window_start.fillna(p.due_date)) - pd.Timedelta(days=early_days)
    p = p.sort_values(["due_date", "plan_id"])
    m = rest.drop(columns="plan_id").merge(p[["plan_id", "household_id", "ws", "due_date"]], on="household_id")
    m = m[m.visited_at >= m.ws].sort_values(["visited_at", "visit_id", "due_date", "plan_id"])
    taken_p, taken_v, rows = set(), set(), []
    for r in m.itertuples(index=False):
        if r.plan_id in taken_p or r.visit_id in taken_v:
            continue
        taken_p.add(r.plan_id)
        taken_v.add(r.visit_id)
        rows.append({"plan_id": r.plan_id, "visit_id": r.visit_id, "done_on": r.visited_at.date()})
    out.append(pd.DataFrame(rows, columns=cols))
    return pd.concat(out, ignore_index=True)[cols]
