"""Visit records in (走访记录): match each record to the plan it fulfils.

A record names its plan (``plan_id``) when the cadre's form knew it (a plan of another household
is ignored). Otherwise, of the plans of the same household, it fulfils, in this order:

1. an open plan whose window holds the visit day (the visit it was made for);
2. the nearest other open plan: overdue (late visit) or opening within ``early_days``;
3. only when no open plan fits, a plan already marked ``missed`` whose window ended at most
   ``missed_within_days`` before the visit (a late visit of that plan; the caller keeps it
   ``missed``, so reports do not count it as done on time). A missed plan whose window holds the
   visit (a sheet typed in after the plan was marked missed) is matched as in 1: visited on time.

A plan with a ``closes_before`` moment (the plans of a family taken off the register: when it
was) is closed only by a visit made before it, while the family was on the register: a plan the
removal cancelled is answered by a sheet of such a visit typed in late, and no plan by a visit
after it.

Ties go to the earlier due date, then the plan id. A record that matches no plan is an unplanned
visit: kept, and counted as such.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def match_visits_to_plans(visits: pd.DataFrame, plans: pd.DataFrame, *, early_days: int = 7,
                          missed_within_days: int = 30) -> pd.DataFrame:
    """visits ``visit_id, plan_id, household_id, visited_at``; plans ``plan_id, household_id, window_start,
    window_end, due_date`` and optionally ``status`` (``planned`` when absent, or ``missed``) and
    ``closes_before`` (empty: no limit) →
    ``plan_id, visit_id, done_on`` (each plan closed at most once, each visit used at most once)."""
    cols = ["plan_id", "visit_id", "done_on"]
    if visits.empty or plans.empty:
        return pd.DataFrame(columns=cols)
    v = visits.copy()
    v["visited_at"] = pd.to_datetime(v["visited_at"])
    if "plan_id" not in v:
        v["plan_id"] = None
    # A named plan counts only if it is the same family's: a plan id of another family (a typo
    # in either) must not mark that family visited.
    own = set(zip(plans.plan_id, plans.household_id))
    before = (pd.to_datetime(plans.set_index("plan_id")["closes_before"]).dropna()
              if "closes_before" in plans.columns else pd.Series(dtype="datetime64[ns]"))
    limit = pd.to_datetime(v.plan_id.map(before)) if len(before) else pd.Series(pd.NaT, index=v.index)
    explicit = v[v.plan_id.notna() & (v.plan_id.astype(str) != "")
                 & pd.Series([(p, h) in own for p, h in zip(v.plan_id, v.household_id)], index=v.index, dtype=bool)
                 & (limit.isna() | (v.visited_at < limit)).to_numpy(dtype=bool)]
    # Two records naming the same plan: the first closes it, the other is matched like any visit.
    explicit = explicit.sort_values(["visited_at", "visit_id"]).drop_duplicates("plan_id", keep="first")
    out = [pd.DataFrame({"plan_id": explicit.plan_id, "visit_id": explicit.visit_id,
                         "done_on": explicit.visited_at.dt.date})]
    used_plans = set(explicit.plan_id)
    used_visits = set(explicit.visit_id)
    rest = v[~v.visit_id.isin(used_visits)].sort_values(["visited_at", "visit_id"])
    p = plans[~plans.plan_id.isin(used_plans)].copy()
    due = pd.to_datetime(p.due_date)
    # The window as the cadre sees it: a visit that slipped past its window is due after it.
    p["ws"] = pd.to_datetime(p.window_start).fillna(due).where(lambda s: s <= due, due)
    p["we"] = pd.to_datetime(p.window_end).fillna(due).where(lambda s: s >= due, due)
    p["due_date"] = due
    p["missed"] = (p["status"].astype(str).eq("missed") if "status" in p.columns
                   else pd.Series(False, index=p.index))
    p["cb"] = p.plan_id.map(before) if len(before) else pd.NaT
    p["cb"] = pd.to_datetime(p["cb"])
    m = rest.drop(columns="plan_id").merge(p[["plan_id", "household_id", "ws", "we", "due_date", "missed", "cb"]],
                                           on="household_id")
    day = m.visited_at.dt.normalize()
    m = m[(day >= m.ws - pd.Timedelta(days=early_days))
          & (~m.missed | (day <= m.we + pd.Timedelta(days=missed_within_days)))
          & (m.cb.isna() | (m.visited_at < m.cb))].copy()
    day = m.visited_at.dt.normalize()
    inside = (day >= m.ws) & (day <= m.we)
    # A missed plan whose window holds the visit was visited on time (its sheet came in late): it
    # is that visit's plan like any other, before an open plan the visit would fit only early.
    m["tier"] = np.where(inside, 0, np.where(m.missed, 2, 1))
    # Days between the visit and the plan's window (0 inside it).
    m["gap"] = np.maximum(np.maximum((m.ws - day).dt.days, (day - m.we).dt.days), 0)
    m = m.sort_values(["visited_at", "visit_id", "tier", "gap", "due_date", "plan_id"])
    taken_p, taken_v, rows = set(), set(), []
    for r in m.itertuples(index=False):
        if r.plan_id in taken_p or r.visit_id in taken_v:
            continue
        taken_p.add(r.plan_id)
        taken_v.add(r.visit_id)
        rows.append({"plan_id": r.plan_id, "visit_id": r.visit_id, "done_on": r.visited_at.date()})
    out.append(pd.DataFrame(rows, columns=cols))
    return pd.concat(out, ignore_index=True)[cols]
