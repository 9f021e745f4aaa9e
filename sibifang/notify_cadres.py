"""Notifications of the scheduling stage (工作提醒): daily digests, overdue reminders, the
supervisor's overdue list. Pure: frames in, notice rows out; wording in ``templates/schedule_visits``.

A cadre's digest names her own families (surname and honorific, grid, reason): she keeps them
and needs to know whom to visit. No ID numbers, phones or addresses. The supervisor's list is
counts per village only (grids with no village on file: one line of their own), adding up to its
total.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader

import templates as _templates
from templates import wording
from sibifang.records import stable_id

NOTICE_COLUMNS = ["notice_id", "recipient_id", "kind", "day", "title", "body"]


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(Path(_templates.__file__).parent), trim_blocks=True,
                       lstrip_blocks=True, autoescape=False)


def _title(kind: str, **fields) -> str:
    return wording("schedule_visits/titles.toml")[kind].format(**fields)


# A family number that is a resident ID (18 or old 15 digits) or a mobile number: some villages
# number families by the head's ID card or phone, and a digest must carry no such number.
_PERSONAL_NUMBER = re.compile(r"\d{17}[\dXx]|\d{15}|1\d{10}")


def _family(name: str | None, household_id: str) -> str:
    surname = (name or "?")[0]
    number = str(household_id).strip()
    if _PERSONAL_NUMBER.fullmatch(number):  # the last four tell her families apart, as on a receipt
        return f"{surname}家（编号尾号{number[-4:].upper()}）"
    return f"{surname}家（{number}）"


def _reason(code: str) -> str:
    from sibifang.schedule_visits import REASON_LABELS

    if code.startswith("follow_up"):
        return REASON_LABELS["follow_up"]
    return REASON_LABELS.get(code, code)


def build_notices(day: date, *, plans: pd.DataFrame, cadres: pd.DataFrame, households: pd.DataFrame,
                  grids: pd.DataFrame, grace_days: int = 3, moved: pd.DataFrame | None = None) -> pd.DataFrame:
    """plans: ``visit_id, household_id, cadre_id, grid_id, due_date, window_end, reason, urgent, status``;
    cadres: ``cadre_id, name, role, grid_ids``; households: ``household_id, head_name``;
    grids: ``grid_id, grid_name, village_id, village_name``."""
    env = _env()
    names = dict(zip(households.household_id, households.head_name))
    gnames = dict(zip(grids.grid_id, grids.grid_name))
    cname = dict(zip(cadres.cadre_id, cadres.name))
    p = plans[plans.status == "planned"].copy()
    p["due_date"] = pd.to_datetime(p.due_date).dt.date
    rows = []
    today = p[p.due_date == day].sort_values(["cadre_id", "urgent", "household_id"], ascending=[True, False, True])
    moved_in = (moved[pd.to_datetime(moved.due_date).dt.date == day].groupby("to_cadre_id").size()
                if moved is not None and len(moved) else pd.Series(dtype=int))
    tpl = env.get_template("schedule_visits/daily_digest.md.j2")
    for cid, g in today.groupby("cadre_id"):
        visits = [{"family": _family(names.get(h), h), "grid_name": gnames.get(gr, gr), "reason": _reason(r),
                   "urgent": bool(u)} for h, gr, r, u in zip(g.household_id, g.grid_id, g.reason, g.urgent)]
        body = tpl.render(day=day, name=cname.get(cid, ""), visits=visits, urgent=int(g.urgent.sum()),
                          moved_in=int(moved_in.get(cid, 0)))
        rows.append([stable_id("N", cid, "daily_digest", day), cid, "daily_digest", day,
                     _title("daily_digest", day=day, count=len(g)), body])
    overdue = p[p.due_date < day].sort_values(["cadre_id", "due_date", "household_id"])
    tpl = env.get_template("schedule_visits/overdue_reminder.md.j2")
    for cid, g in overdue.groupby("cadre_id"):
        visits = [{"family": _family(names.get(h), h), "grid_name": gnames.get(gr, gr), "due": d,
                   "days": (day - d).days} for h, gr, d in zip(g.household_id, g.grid_id, g.due_date)]
        body = tpl.render(name=cname.get(cid, ""), visits=visits)
        rows.append([stable_id("N", cid, "overdue_reminder", day), cid, "overdue_reminder", day,
                     _title("overdue_reminder", count=len(g)), body])
    # Past the window and the grace period: the supervisors of the area see it, by village.
    end = pd.to_datetime(p.window_end.fillna(p.due_date)).dt.date
    late = p[end < pd.Timestamp(day - pd.Timedelta(days=grace_days)).date()].merge(
        grids[["grid_id", "village_name"]], on="grid_id", how="left")
    tpl = env.get_template("schedule_visits/supervisor_overdue.md.j2")
    sups = cadres[cadres.role == "supervisor"]
    for sid, sgrids in zip(sups.cadre_id, sups.grid_ids):
        mine = late[late.grid_id.isin(set(sgrids or []))]
        if mine.empty:
            continue
        # A grid with no village on file (or not on file at all) has its own line, last: grouping
        # drops a missing key, and the lines must add up to the total.
        groups = [{"unit": v, "count": int(len(g)), "cadres": int(g.cadre_id.nunique())}
                  for v, g in mine.groupby("village_name")]
        no_village = mine[mine.village_name.isna()]
        if len(no_village):
            groups.append({"unit": None, "count": int(len(no_village)),
                           "cadres": int(no_village.cadre_id.nunique())})
        body = tpl.render(day=day, name=cname.get(sid, ""), total=len(mine), grace=grace_days, groups=groups)
        rows.append([stable_id("N", sid, "supervisor_overdue", day), sid, "supervisor_overdue", day,
                     _title("supervisor_overdue", count=len(mine)), body])
    return pd.DataFrame(rows, columns=NOTICE_COLUMNS)


def build_move_notices(day: date, *, moved: pd.DataFrame, cadres: pd.DataFrame,
                       households: pd.DataFrame) -> pd.DataFrame:
    """Leave and absence move visits to a colleague of the same grid: both are told (调整通知).

    moved: ``visit_id, household_id, from_cadre_id, to_cadre_id, due_date`` (the scheduler's
    ``SchedulePlan.moved``). One notice per cadre and direction for the moves of this run; the
    id covers the visits concerned, so the same moves are announced once."""
    if moved is None or moved.empty:
        return pd.DataFrame(columns=NOTICE_COLUMNS)
    env = _env()
    tpl = env.get_template("schedule_visits/visit_moved.md.j2")
    names = dict(zip(households.household_id, households.head_name))
    cname = dict(zip(cadres.cadre_id, cadres.name))
    m = moved.copy()
    m["due"] = pd.to_datetime(m.due_date).dt.date
    m = m[m.due >= day].sort_values(["due", "visit_id"])
    rows = []
    for direction, me, other in (("out", "from_cadre_id", "to_cadre_id"), ("in", "to_cadre_id", "from_cadre_id")):
        for cid, g in m.groupby(me):
            visits = [{"family": _family(names.get(h), h), "due": d, "other": cname.get(o, o)}
                      for h, d, o in zip(g.household_id, g.due, g[other])]
            body = tpl.render(name=cname.get(cid, ""), direction=direction, visits=visits)
            key = stable_id("N", cid, "visit_moved", direction, *sorted(g.visit_id))
            rows.append([key, cid, f"visit_moved_{direction}", day, _title("visit_moved", count=len(g)), body])
    return pd.DataFrame(rows, columns=NOTICE_COLUMNS)
