"""Tasks of the visit-record stage: import dropped visit sheets, close the plans they fulfil."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, case, or_, select, update

from sibifang.db import read_frame
from sibifang.inbox import claim, ready_files
from sibifang.settings import get_settings

from tasks.common import run_logger
from tasks.import_registry import import_file, move_aside, record_rejected_file

VISIT_SUFFIXES = (".csv", ".xlsx", ".json")


@task(name="import_visit_files", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def import_visit_files(inbox: str, database_url: str | None = None, out_dir: str | None = None,
                       as_of: date | None = None) -> dict:
    """Import every visit sheet in ``inbox/visits``; imported files move to ``done/`` (never twice).

    A file that cannot be imported at all (unreadable, missing columns, ...) is recorded (a
    failed validation run and the clerk's report) and moved to ``rejected/``; the other files
    are imported all the same. ``rejected`` counts such files, ``rejected_files`` names them.
    Only ready files are read (one still being copied in waits), and one run at a time: ``busy``
    when another run holds the folder (``sibifang.inbox``)."""
    totals: dict = {"files": 0, "read": 0, "accepted": 0, "quarantined": 0, "rejected": 0, "rejected_files": [],
                    "busy": False}
    folder = Path(inbox) / "visits"
    if not folder.exists():
        return totals
    with claim(folder) as mine:
        if not mine:
            run_logger().info("%s: another run is reading this folder; its files are left to it", folder)
            return totals | {"busy": True}
        files = ready_files(folder, VISIT_SUFFIXES, settle_seconds=get_settings().inbox_settle_seconds)
        return _import_visit_sheets(files, totals, database_url, out_dir, as_of)


def _import_visit_sheets(files: list[Path], totals: dict, database_url: str | None, out_dir: str | None,
                         as_of: date | None) -> dict:
    from schemas.validation import DataContractError
    from sibifang.importing import content_digest

    now = datetime.combine(as_of, time(23, 59, 59)) if as_of else None
    out = Path(out_dir) if out_dir else None
    for p in files:
        digest = content_digest(p)
        try:
            r = import_file("visits", p, database_url=database_url, out_dir=out, now=now, digest=digest)
        except DataContractError as e:
            rejected = record_rejected_file("visits", p, e, database_url=database_url, out_dir=out, now=now,
                                            move=True, digest=digest)
            totals["rejected"] += 1
            totals["rejected_files"].append({"file": p.name, "reason": rejected["reason"],
                                             "error_report": rejected["error_report"]})
            continue
        move_aside(p, "done", digest)
        totals["files"] += 1
        for k in ("read", "accepted", "quarantined"):
            totals[k] += r[k]
    return totals


@task(name="close_fulfilled_plans", cache_policy=NO_CACHE)
def close_plans(as_of: date, database_url: str | None = None, lookback_days: int = 45) -> dict:
    import pandas as pd

    from schemas.models import Household, Visit, VisitPlan
    from sibifang.db import session_scope
    from sibifang.record_visits import match_visits_to_plans
    from sibifang.records import frame_records

    since = as_of - timedelta(days=lookback_days)
    # A plan closed by a visit since corrected to another family (a sheet re-sent) was not
    # visited: it is open again (a missed one stays missed), and the visit is matched anew below.
    with session_scope(database_url) as s:
        wrong = select(Visit.id).where(Visit.id == VisitPlan.closed_by_visit_id,
                                       Visit.household_id != VisitPlan.household_id).exists()
        s.execute(update(VisitPlan).where(wrong).values(
            status=case((VisitPlan.status == "missed", "missed"), else_="planned"), closed_by_visit_id=None))
    visits = read_frame(select(Visit.id.label("visit_id"), Visit.plan_id, Visit.household_id, Visit.visited_at)
                        .where(Visit.visited_at >= since, Visit.visited_at < as_of + timedelta(days=1)), database_url)
    # Missed plans not yet answered by a late visit are candidates too, after every open plan.
    # A family taken off the register (迁出, 去世) has its plans closed only by a visit made before
    # the removal (closes_before), and those are answered so even when the removal cancelled them:
    # a sheet typed in late of a visit made while the family was on the register closes its plan
    # as done. A visit after the removal closes none, also before the evening's run cancels them.
    plans = read_frame(select(VisitPlan.id.label("plan_id"), VisitPlan.household_id, VisitPlan.window_start,
                              VisitPlan.window_end, VisitPlan.due_date, VisitPlan.status,
                              Household.deregistered_at.label("closes_before"))
                       .outerjoin(Household, Household.id == VisitPlan.household_id)
                       .where(VisitPlan.closed_by_visit_id.is_(None),
                              or_(VisitPlan.status.in_(("planned", "missed")),
                                  and_(VisitPlan.status == "cancelled", Household.deregistered_at.is_not(None),
                                       Household.deregistered_at >= since))), database_url)
    closed_visits = read_frame(select(VisitPlan.closed_by_visit_id).where(VisitPlan.closed_by_visit_id.is_not(None)),
                               database_url)
    visits = visits[~visits.visit_id.isin(set(closed_visits.closed_by_visit_id))]
    matches = match_visits_to_plans(visits, plans)
    # A missed plan stays missed when visited late; when the visit was inside its window (the
    # sheet came in after the plan was marked missed) it was done on time.
    due = pd.to_datetime(plans.due_date)
    last_day = dict(zip(plans.plan_id, pd.to_datetime(plans.window_end).fillna(due).where(
        lambda e: e >= due, due).dt.date))
    on_time = {m["plan_id"] for m in frame_records(matches) if m["done_on"] <= last_day[m["plan_id"]]}
    was_missed = set(plans.plan_id[plans.status.eq("missed")]) - on_time
    with session_scope(database_url) as s:
        for m in frame_records(matches):
            # A missed plan visited late keeps its status (reports count done plans as done on
            # time); the visit is recorded against it, so it is not an unplanned visit.
            status = "missed" if m["plan_id"] in was_missed else "done"
            s.execute(update(VisitPlan).where(VisitPlan.id == m["plan_id"]).values(
                status=status, closed_by_visit_id=m["visit_id"]))
    late = int(matches.plan_id.isin(was_missed).sum())
    return {"plans_closed": len(matches) - late, "missed_visited_late": late,
            "unplanned": int(len(visits) - len(matches))}
