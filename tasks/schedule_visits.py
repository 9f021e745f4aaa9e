"""Tasks of the visit-scheduling stage: load the registry, plan, store, notify."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, or_, select, update

from sibifang.db import grid_hierarchy, read_frame


METER_KINDS = ("inactivity", "sustained_drop", "missing_morning_routine", "night_activity", "high_use",
               "meter_offline")


def scheduling_inputs(as_of: date, database_url: str | None = None) -> dict[str, pd.DataFrame]:
    """Everything the planner needs, as frames (ids and codes; no personal data)."""
    from schemas.models import Assignment, Cadre, Household, MediationCase, RiskFlag, Visit, VisitPlan
    from sibifang.schedule_visits import (follow_ups_after_mediation, load_cadence_rules, on_register,
                                          plans_ended_by_deregistration)

    rules = load_cadence_rules()
    grids = grid_hierarchy(database_url)
    hh = read_frame(select(Household.id.label("household_id"), Household.grid_id, Household.categories,
                           Household.risk_level, Household.away_from, Household.away_until,
                           Household.deregistered_at), database_url)
    # A family taken off the register by this day (迁出, 去世) is planned no more.
    deregistered = hh.loc[hh.deregistered_at.notna(), ["household_id", "deregistered_at"]]
    hh = hh[on_register(hh.deregistered_at, as_of)].reset_index(drop=True)
    hh = hh.merge(grids[["grid_id", "village_id"]], on="grid_id", how="left")
    open_cases = set(read_frame(select(MediationCase.household_id).where(MediationCase.status == "open"),
                                database_url).household_id)
    flags = read_frame(select(RiskFlag.household_id, RiskFlag.kind, RiskFlag.severity, RiskFlag.detected_at,
                              RiskFlag.id).where(RiskFlag.status != "closed"), database_url)
    hh["open_dispute"] = hh.household_id.isin(open_cases | set(flags[flags.kind.isin(("dispute", "domestic_violence"))]
                                                             .household_id))
    hh["flagged"] = hh.household_id.isin(set(flags.household_id))
    cadres = read_frame(select(Cadre.id.label("cadre_id"), Cadre.role, Cadre.grid_ids, Cadre.capacity,
                               Cadre.four_plus_one, Cadre.grassroots_weekday, Cadre.on_leave_from,
                               Cadre.on_leave_until), database_url)
    last = read_frame(select(Visit.household_id, func.max(Visit.visited_at).label("last_visited_at"))
                      .where(Visit.visited_at < as_of + timedelta(days=1)).group_by(Visit.household_id), database_url)
    # With their windows: without them the planner shows a carried plan's window as its due day
    # alone, and a re-run hands over (and validates) another plan than the run it repeats.
    # Open until its window closes, not just its due day: an overdue or first visit is due on the
    # first day of its window, and read by its due day it looked overdue the next morning and the
    # family was planned again. The due day still counts: a visit that slipped past its window is
    # due after it (and old rows have no window).
    # A replay of an earlier day also reads the plans a later visit closed: on that day they were
    # open, and read as done the family looked unplanned and was planned again (a new plan, then an
    # overdue reminder). A day's own run knows no visit after it, so it reads the same as before.
    open_plans = read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.cadre_id,
                                   VisitPlan.due_date, VisitPlan.window_start, VisitPlan.window_end,
                                   VisitPlan.reason, VisitPlan.urgent)
                            .outerjoin(Visit, Visit.id == VisitPlan.closed_by_visit_id)
                            .where(or_(VisitPlan.status == "planned",
                                       Visit.visited_at >= as_of + timedelta(days=1)),
                                   or_(VisitPlan.due_date >= as_of, VisitPlan.window_end >= as_of)), database_url)
    # The plans the removal ended are cancelled when the plan is stored: they hold no place.
    open_plans = open_plans[~plans_ended_by_deregistration(open_plans, deregistered, as_of)].reset_index(drop=True)
    # Plans a visit made on the day itself closed: open when the day began, they keep their place in
    # the cadre's day (the day's visits are recorded before the evening run, and a replay reads them).
    held_plans = read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.cadre_id,
                                   VisitPlan.due_date, VisitPlan.urgent)
                            .join(Visit, Visit.id == VisitPlan.closed_by_visit_id)
                            .where(Visit.visited_at >= as_of, Visit.visited_at < as_of + timedelta(days=1)),
                            database_url)
    assignments = read_frame(select(Assignment.household_id, Assignment.cadre_id), database_url)
    # A new flag asks for a visit within 24 h (critical) or 72 h, once: not when an urgent visit
    # has already been planned for that household since the flag was raised.
    urgent_plans = read_frame(select(VisitPlan.household_id, func.max(VisitPlan.planned_on).label("planned_on"))
                              .where(VisitPlan.urgent.is_(True)).group_by(VisitPlan.household_id), database_url)
    recent = flags[(pd.to_datetime(flags.detected_at) >= pd.Timestamp(as_of) - pd.Timedelta(days=2))
                   & (pd.to_datetime(flags.detected_at) < pd.Timestamp(as_of) + pd.Timedelta(days=1))
                   & flags.severity.isin(("critical", "high"))]
    if not recent.empty and not urgent_plans.empty:
        done_since = recent.merge(urgent_plans, on="household_id", how="left")
        keep = done_since.planned_on.isna() | (pd.to_datetime(done_since.planned_on) <
                                               pd.to_datetime(done_since.detected_at).dt.normalize())
        recent = recent[keep.to_numpy()]
    urgent = recent.sort_values("detected_at").groupby("household_id", as_index=False).first()
    # The 24/72 h run from when the loop learnt of the flag: an episode detected in a feed that
    # arrived late must not produce a visit that is overdue the moment it is planned.
    learnt = pd.to_datetime(urgent.detected_at).clip(lower=pd.Timestamp(as_of))
    urgent = pd.DataFrame({"household_id": urgent.household_id, "requested_at": learnt,
                           "reason": "urgent", "critical": urgent.severity.eq("critical")})
    closed = read_frame(select(MediationCase.household_id, MediationCase.closed_at)
                        .where(MediationCase.status == "closed"), database_url)
    follow = follow_ups_after_mediation(closed, rules)
    if not follow.empty:
        follow = follow[(follow.due_date >= pd.Timestamp(as_of) - pd.Timedelta(days=3))]
    return {"households": hh.drop(columns="deregistered_at"), "cadres": cadres, "last_visits": last,
            "open_plans": open_plans,
            "held_plans": held_plans, "current_assignments": assignments, "urgent_requests": urgent,
            "follow_ups": follow, "rules": rules}


@task(name="plan_visits", cache_policy=NO_CACHE)
def plan_visits(as_of: date, horizon_days: int = 30, grid: str | None = None, database_url: str | None = None):
    from sibifang.schedule_visits import check_schedule_parameters, schedule_visits

    # A grid that is not registered would plan nothing and then fail the plan's validation with
    # an empty frame: say which parameter is wrong instead, before anything is read.
    if grid is not None:
        check_schedule_parameters(horizon_days=horizon_days, grid=grid,
                                  known_grids=grid_hierarchy(database_url).grid_id)
    inputs = scheduling_inputs(as_of, database_url)
    rules = inputs.pop("rules")
    return schedule_visits(inputs.pop("households"), inputs.pop("cadres"), as_of=as_of, horizon_days=horizon_days,
                           rules=rules, calendar=rules.work_calendar(), grid=grid, **inputs)


@task(name="store_plan", cache_policy=NO_CACHE)
def store_plan(plan, as_of: date, out_dir: str, database_url: str | None = None) -> dict:
    """Upsert plans (insert-or-ignore: a re-run changes nothing), assignments; mark missed; export notices."""
    from schemas.models import Assignment, Household, VisitPlan
    from sibifang.db import audit, session_scope, upsert
    from sibifang.records import frame_records
    from sibifang.schedule_visits import (plans_back_after_withdrawal, plans_ended_by_deregistration,
                                          plans_missed_before_deregistration)

    p = plan.plans
    deregistered = read_frame(select(Household.id.label("household_id"), Household.deregistered_at)
                              .where(Household.deregistered_at.is_not(None)), database_url)
    # A replay of a day before a family was taken off the register stores none of its visits due
    # from that day on (they were cancelled, or never needed).
    p = p[~plans_ended_by_deregistration(p, deregistered, as_of)]
    # A family back on the register (在册 again: no removal on record) whose visits the planner
    # derives again with the ids its removal cancelled (due from its last visit): planned again.
    reopen = p[~p.household_id.isin(set(deregistered.household_id))]
    # Only plans not stored yet are written: a re-run (or the next day's run, which re-derives
    # most of the same visits with the same ids) must not rewrite tens of thousands of rows.
    if len(p):
        known = set(read_frame(select(VisitPlan.id).where(VisitPlan.due_date >= p.due_date.min()), database_url).id)
        p = p[~p.visit_id.isin(known)]
    rows = [{"id": r["visit_id"], "household_id": r["household_id"], "cadre_id": r["cadre_id"],
             "grid_id": r["grid_id"],
             "due_date": r["due_date"].date() if hasattr(r["due_date"], "date") else r["due_date"],
             "window_start": _d(r["window_start"]), "window_end": _d(r["window_end"]), "reason": r["reason"],
             "urgent": bool(r["urgent"]), "status": "planned", "planned_on": as_of} for r in frame_records(p)]
    for r in rows:
        r["due_date"] = _d(r["due_date"])
    with session_scope(database_url) as s:
        before = s.scalar(select(func.count()).select_from(VisitPlan))
        upsert(s, VisitPlan, rows, key=["id"], update=())
        after = s.scalar(select(func.count()).select_from(VisitPlan))
        reopened = 0
        if len(reopen):  # (cancelled plans are few: read those, not every derived id)
            gone = set(s.scalars(select(VisitPlan.id).where(VisitPlan.status == "cancelled",
                                                            VisitPlan.due_date >= reopen.due_date.min())))
            reopen = reopen[reopen.visit_id.isin(gone)]
        for r in frame_records(reopen[["visit_id", "cadre_id"]]):
            reopened += s.execute(update(VisitPlan)
                                  .where(VisitPlan.id == r["visit_id"], VisitPlan.status == "cancelled")
                                  .values(status="planned", cadre_id=r["cadre_id"], planned_on=as_of)).rowcount
        # An overdue plan a removal marked missed inside its grace days, of a family back on the
        # register (the removal withdrawn): open again, as the family's never removed (the 4-day rule
        # below marks no plan missed inside them, so only a removal did). A replay of an earlier day
        # than a run already made reopens nothing: the plans that run marked missed stay so.
        replay = (s.scalar(select(func.max(VisitPlan.planned_on))) or as_of) > as_of
        if not replay:
            back = select(Household.id).where(Household.deregistered_at.is_(None))
            reopened += s.execute(update(VisitPlan).where(
                VisitPlan.status == "missed", VisitPlan.closed_by_visit_id.is_(None),
                VisitPlan.window_end >= as_of - timedelta(days=4), VisitPlan.window_end < as_of,
                VisitPlan.household_id.in_(back)).values(status="planned")
                .execution_options(synchronize_session=False)).rowcount
        # Plans a removal cancelled, of a family back on the register since: what the 4-day rule
        # would have made of them (plans_back_after_withdrawal), so the cadre's record shows the
        # visit nobody made. Inside the grace days only on the day's own run (as above).
        missed_back = 0
        back_plans = pd.DataFrame(s.execute(
            select(VisitPlan.id, VisitPlan.household_id, VisitPlan.due_date, VisitPlan.window_start,
                   VisitPlan.window_end)
            .where(VisitPlan.status == "cancelled", VisitPlan.closed_by_visit_id.is_(None),
                   VisitPlan.due_date < as_of,
                   VisitPlan.household_id.in_(select(Household.id).where(Household.deregistered_at.is_(None))))
        ).all(), columns=["id", "household_id", "due_date", "window_start", "window_end"])
        if len(back_plans):
            others = pd.DataFrame(s.execute(
                select(VisitPlan.household_id, VisitPlan.due_date)
                .where(VisitPlan.status != "cancelled",
                       VisitPlan.household_id.in_(set(back_plans.household_id)))).all(),
                columns=["household_id", "due_date"])
            status = plans_back_after_withdrawal(back_plans, others, as_of)
            for new in ("missed", "planned") if not replay else ("missed",):
                ids = list(back_plans.id[status.eq(new).to_numpy(dtype=bool)])
                for part in range(0, len(ids), 500):
                    n = s.execute(update(VisitPlan).where(VisitPlan.id.in_(ids[part:part + 500]),
                                                          VisitPlan.status == "cancelled")
                                  .values(status=new)).rowcount
                    if new == "missed":
                        missed_back += n
                    else:
                        reopened += n
        # Moves of a cadre on leave: the colleague takes the visit (both are told in the notices).
        # A visit moved already is not moved again: ``moved`` counts this run's moves only.
        moved = 0
        for m in frame_records(plan.moved):
            moved += s.execute(update(VisitPlan).where(VisitPlan.id == m["visit_id"], VisitPlan.status == "planned",
                                                       VisitPlan.moved_from.is_(None))
                               .values(cadre_id=m["to_cadre_id"], moved_from=m["from_cadre_id"])).rowcount
        a = plan.assignments
        upsert(s, Assignment, [{"household_id": r["household_id"], "cadre_id": r["cadre_id"], "since": as_of}
                               for r in frame_records(a[a.cadre_id.notna()])], key=["household_id"],
               update=("cadre_id",))
        # Open plans of a family taken off the register (迁出, 去世) that its removal ended, before
        # any is marked missed: cancelled when the removal cut their window (nobody failed to
        # visit), missed when their window was over before it (plans_missed_before_deregistration).
        cancelled = missed_by_removal = 0
        if not deregistered.empty:
            # Missed ones too, unvisited: a removal entered late with its date (去世 typed in a week
            # after) can have cut the window of a plan the 4-day rule has marked missed meanwhile.
            still_open = pd.DataFrame(s.execute(
                select(VisitPlan.id, VisitPlan.household_id, VisitPlan.due_date, VisitPlan.window_end,
                       VisitPlan.status)
                .where(or_(VisitPlan.status == "planned",
                           (VisitPlan.status == "missed") & VisitPlan.closed_by_visit_id.is_(None)),
                       VisitPlan.household_id.in_(select(Household.id).where(Household.deregistered_at.is_not(None))))
            ).all(), columns=["id", "household_id", "due_date", "window_end", "status"])
            ended = plans_ended_by_deregistration(still_open, deregistered, as_of)
            lapsed = plans_missed_before_deregistration(still_open, deregistered, as_of)
            was = still_open.status.to_numpy()
            for status, ids in (("missed", list(still_open.id[ended & lapsed & (was == "planned")])),
                                ("cancelled", list(still_open.id[ended & ~lapsed]))):
                for part in range(0, len(ids), 500):
                    n = s.execute(update(VisitPlan).where(VisitPlan.id.in_(ids[part:part + 500]),
                                                          VisitPlan.status.in_(("planned", "missed")),
                                                          VisitPlan.closed_by_visit_id.is_(None))
                                  .values(status=status)).rowcount
                    if status == "missed":
                        missed_by_removal += n
                    else:
                        cancelled += n
        # Windows long past without a visit: missed (the overdue flag was raised the day before).
        missed = s.execute(update(VisitPlan).where(VisitPlan.status == "planned",
                                                   VisitPlan.window_end < as_of - timedelta(days=4))
                           .values(status="missed")).rowcount + missed_by_removal + missed_back
        if after - before or missed or moved or cancelled or reopened:  # a re-run that changes nothing records nothing
            audit(s, "schedule_visits", "plan", "visit_plan", None,
                  {"new": after - before, "missed": missed, "moved": moved, "cancelled": cancelled,
                   "reopened": reopened},
                  at=datetime.combine(as_of, datetime.min.time()))
    out = Path(out_dir) / "schedule" / str(as_of)
    out.mkdir(parents=True, exist_ok=True)
    plan.notices.to_csv(out / "cadre_digests.csv", index=False)
    plan.shortfall.to_csv(out / "shortfall.csv", index=False)
    plan.moved.to_csv(out / "moved.csv", index=False)
    return {"planned": len(plan.plans), "new_plans": after - before, "shortfall": len(plan.shortfall),
            "moved": len(plan.moved), "away": len(plan.away), "missed": missed, "cancelled": cancelled,
            "reopened": reopened}


def _d(v):
    if v is None:
        return None
    return v.date() if isinstance(v, datetime) else v


def later_day_run(as_of: date, notify_day: date, database_url: str | None = None) -> bool:
    """True when a run for a later day has been made already (plans planned after ``as_of``, or
    notices for a day after ``notify_day``): this run replays a past day, whose digests and
    reminders would reach the cadres days late (or again, under another day)."""
    from schemas.models import Notice, VisitPlan

    from sibifang.db import session_scope
    from sibifang.settings import local_today

    # Only runs up to today count: a hand run for a future day (a preview, a mistyped date) must
    # not make every real run until then a silent "replay" that sends nothing.
    today = local_today()
    with session_scope(database_url) as s:
        planned = s.scalar(select(func.max(VisitPlan.planned_on)).where(VisitPlan.planned_on <= today))
        noticed = s.scalar(select(func.max(Notice.day)).where(Notice.day <= today + timedelta(days=1)))
    return bool((planned is not None and _d(planned) > as_of) or (noticed is not None and _d(noticed) > notify_day))


@task(name="queue_notices", cache_policy=NO_CACHE)
def queue_notices(day: date, database_url: str | None = None) -> int:
    """Digests, overdue reminders and the supervisors' overdue lists for ``day`` (insert-or-ignore)."""
    from schemas.models import Area, Cadre, Household, Notice, VisitPlan
    from sibifang.db import session_scope, upsert
    from sibifang.notify_cadres import build_move_notices, build_notices
    from sibifang.records import frame_records

    plans = read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.cadre_id,
                              VisitPlan.grid_id, VisitPlan.due_date, VisitPlan.window_end, VisitPlan.reason,
                              VisitPlan.urgent, VisitPlan.status)
                       .where(VisitPlan.status == "planned", VisitPlan.due_date <= day), database_url)
    cadres = read_frame(select(Cadre.id.label("cadre_id"), Cadre.name, Cadre.role, Cadre.grid_ids,
                               Cadre.alert_channel, Cadre.alert_address), database_url)
    hh = read_frame(select(Household.id.label("household_id"), Household.head_name)
                    .where(Household.id.in_(select(VisitPlan.household_id).where(VisitPlan.status == "planned",
                                                                                VisitPlan.due_date <= day))),
                    database_url)
    grids = grid_hierarchy(database_url)
    names = read_frame(select(Area.id, Area.name), database_url)
    nm = dict(zip(names.id, names.name))
    grids["grid_name"] = grids.grid_id.map(nm)
    grids["village_name"] = grids.village_id.map(nm)
    moved = read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id,
                              VisitPlan.moved_from.label("from_cadre_id"), VisitPlan.cadre_id.label("to_cadre_id"),
                              VisitPlan.due_date)
                       .where(VisitPlan.status == "planned", VisitPlan.moved_from.is_not(None),
                              VisitPlan.due_date >= day), database_url)
    if not moved.empty:
        more = read_frame(select(Household.id.label("household_id"), Household.head_name)
                          .where(Household.id.in_(list(set(moved.household_id)))), database_url)
        hh = pd.concat([hh, more]).drop_duplicates("household_id")
    notices = pd.concat([build_notices(day, plans=plans, cadres=cadres, households=hh, grids=grids, moved=moved),
                         build_move_notices(day, moved=moved, cadres=cadres, households=hh)], ignore_index=True)
    if notices.empty:
        return 0
    channel = dict(zip(cadres.cadre_id, cadres.alert_channel))
    address = dict(zip(cadres.cadre_id, cadres.alert_address))
    created = datetime.combine(day, datetime.min.time()).replace(hour=7)
    with session_scope(database_url) as s:
        upsert(s, Notice, [{"id": n["notice_id"], "recipient_id": n["recipient_id"], "kind": n["kind"],
                            "day": n["day"], "channel": channel.get(n["recipient_id"]) or "webhook",
                            "address": address.get(n["recipient_id"]), "title": n["title"], "body": n["body"],
                            "status": "pending", "attempts": 0, "created_at": created}
                           for n in frame_records(notices)], key=["id"], update=())
    return len(notices)


@task(name="send_notices", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def send_notices(day: date, database_url: str | None = None, max_attempts: int = 3) -> dict:
    """Deliver pending notices over each person's channel; each is sent once (status moves on)."""
    import requests

    from schemas.models import Notice
    from sibifang.channels import OutgoingMessage
    from sibifang.db import session_scope
    from tasks.dispatch_alerts import _channel, dispatch_policy

    policy = dispatch_policy()
    http = requests.Session()
    sent = failed = 0
    with session_scope(database_url) as s:
        pending = list(s.scalars(select(Notice.id).where(Notice.status == "pending", Notice.day <= day)
                                 .order_by(Notice.id)))
    # Each notice is claimed before its send by a conditional UPDATE (pending → sending), committed:
    # of two overlapping runs only the one whose UPDATE changed the row sends it. The result is
    # committed right after the send, so a failure or a crash part-way (and this task's retries)
    # never sends again the notices already delivered. A run killed mid-send leaves its notice
    # ``sending``: it may have arrived, so it is not sent again (shown as not sent).
    for notice_id in pending:
        with session_scope(database_url) as s:
            claimed = s.execute(update(Notice).where(Notice.id == notice_id, Notice.status == "pending")
                                .values(status="sending", attempts=Notice.attempts + 1)
                                .execution_options(synchronize_session=False)).rowcount == 1
            n = s.get(Notice, notice_id) if claimed else None
        if n is None:
            continue
        kind, address = (("webhook", policy.override_webhook) if policy.override_webhook
                         else (n.channel, n.address or ""))
        msg = OutgoingMessage(alert_id=n.id, dedup_key=n.id, severity="low", title=n.title, text=n.body,
                              markdown=n.body)
        try:
            result = _channel(kind, address, policy).send(msg, session=http)
        except ValueError as e:  # no address, no gateway: a registry fix, not a retry
            result = None
            error = str(e)
        with session_scope(database_url) as s:
            n = s.get(Notice, notice_id)
            if result is None:
                n.status, n.last_error = "dead", error
                failed += 1
            elif result.ok:
                n.status, n.sent_at, n.last_error = "sent", datetime.combine(day, datetime.min.time()), None
                sent += 1
            else:
                n.last_error = result.error
                n.status = "dead" if not result.retryable or n.attempts >= max_attempts else "pending"
                failed += 1
    return {"notices_sent": sent, "notices_failed": failed}
