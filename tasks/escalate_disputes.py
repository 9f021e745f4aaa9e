"""Tasks of the escalation stage: open mediation cases, raise and match service needs."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import case, func, or_, select, update

from sibifang.db import grid_hierarchy, read_frame
from sibifang.records import chunks
from tasks.common import run_logger


def _households_in_grids(grids: pd.DataFrame, database_url: str | None) -> pd.DataFrame:
    """Each household with its grid's village, township and district (``grid_hierarchy``):
    both escalations route by them."""
    from schemas.models import Household

    return (read_frame(select(Household.id.label("household_id"), Household.grid_id), database_url)
            .merge(grids, on="grid_id"))


@task(name="open_mediation_cases", cache_policy=NO_CACHE)
def open_cases_task(as_of: date, database_url: str | None = None) -> int:
    from schemas.models import MediationCase, MediationRoom, RiskFlag
    from sibifang import escalate_disputes as logic
    from sibifang.db import audit, session_scope, upsert
    from sibifang.records import frame_records

    until = datetime.combine(as_of, datetime.max.time())
    flags = read_frame(select(RiskFlag.id.label("flag_id"), RiskFlag.household_id, RiskFlag.kind,
                              RiskFlag.detected_at, RiskFlag.details)
                       .where(RiskFlag.status != "closed", RiskFlag.kind.in_(logic.DISPUTE_KINDS),
                              RiskFlag.detected_at <= until), database_url)
    close_wrong_family_cases(until, database_url)
    close_deregistered_cases(until, database_url)
    follow_up_overdue_cases(until, database_url)
    if flags.empty:
        return 0
    grids = grid_hierarchy(database_url)
    hh = _households_in_grids(grids, database_url)
    rooms = read_frame(select(MediationRoom.id.label("room_id"), MediationRoom.township_id,
                              MediationRoom.mediator_ids), database_url)
    # Every case on record, closed ones too: they hold the flags found before they were closed
    # (one closed without a time, at least those it was opened with).
    closed_at = case((MediationCase.status == "open", None),
                     else_=func.coalesce(MediationCase.closed_at, MediationCase.opened_at))
    known = read_frame(select(MediationCase.id.label("case_id"), MediationCase.household_id,
                              MediationCase.source_flag_id, MediationCase.flag_ids, MediationCase.opened_at,
                              MediationCase.outcome, closed_at.label("closed_at")), database_url)
    cases = logic.open_mediation_cases(flags, hh, rooms, known)
    # Read before any case is opened here: a case opened in this run holds its findings already.
    # A replay of a past day joins nothing to a case opened after it.
    joining = logic.findings_joining_cases(flags, known[pd.to_datetime(known.opened_at) <= until])
    with session_scope(database_url) as s:
        rows = [{"id": c["case_id"], "household_id": c["household_id"], "room_id": c["room_id"],
                 "mediator_id": c["mediator_id"], "source_flag_id": c["source_flag_id"],
                 "source_visit_id": c["source_visit_id"], "cues": c["cues"], "flag_ids": c["flag_ids"],
                 "opened_at": c["opened_at"], "status": "open"} for c in frame_records(cases)]
        # A flag's case is opened once: one closed since (mediated) while the flag stays open is
        # not opened, counted or audited again.
        stored = set()
        for ids in chunks([r["id"] for r in rows], 500):
            stored |= set(s.scalars(select(MediationCase.id).where(MediationCase.id.in_(ids))))
        rows = [r for r in rows if r["id"] not in stored]
        upsert(s, MediationCase, rows, key=["id"], update=())
        for r in rows:
            audit(s, "escalate_disputes", "open_case", "mediation_case", r["id"], {"room": r["room_id"]},
                  at=until)
            # A case nobody can take is still opened (the family is not dropped), and said so once,
            # for the federation to assign it by hand; rows holds only cases opened in this run.
            reason = _no_room_reason(r["room_id"], r["mediator_id"])
            if reason:
                audit(s, "escalate_disputes", "case_without_room", "mediation_case", r["id"],
                      {"reason": reason}, at=until)
                run_logger().warning("调解案件 %s：%s", r["id"], reason)
        for case_id, join in joining.groupby("case_id"):
            c = s.get(MediationCase, case_id)
            c.flag_ids = [*logic.held_flags(c.flag_ids, c.source_flag_id), *join.flag_id]
            c.cues = sorted(set(c.cues or []) | set(join.kind))
            for j in join.itertuples(index=False):
                audit(s, "escalate_disputes", "join_case", "mediation_case", case_id,
                      {"flag": j.flag_id, "kind": j.kind}, at=until)
    if not joining.empty:
        run_logger().info("%d finding(s) joined %d open mediation case(s)", len(joining),
                              joining.case_id.nunique())
    return len(rows)


def close_wrong_family_cases(until: datetime, database_url: str | None) -> int:
    """Close the open cases whose every finding was withdrawn by a corrected visit record
    (``logic.cases_on_corrected_records``), as of ``until``: the case was the wrong family's."""
    from schemas.models import MediationCase, RiskFlag
    from sibifang import escalate_disputes as logic
    from sibifang.db import audit, session_scope

    cases = read_frame(select(MediationCase.id.label("case_id"), MediationCase.source_flag_id,
                              MediationCase.flag_ids, MediationCase.closed_at)
                       .where(MediationCase.status == "open"), database_url)
    if cases.empty:
        return 0
    flags = read_frame(select(RiskFlag.id.label("flag_id"), RiskFlag.status, RiskFlag.outcome, RiskFlag.closed_at)
                       .where(RiskFlag.outcome == logic.RECORD_CORRECTED, RiskFlag.closed_at <= until), database_url)
    wrong = logic.cases_on_corrected_records(cases, flags)
    with session_scope(database_url) as s:
        for c in wrong.itertuples(index=False):
            s.execute(update(MediationCase).where(MediationCase.id == c.case_id, MediationCase.status == "open")
                      .values(status="closed", closed_at=c.closed_at.to_pydatetime(),
                              outcome=logic.RECORD_CORRECTED))
            audit(s, "escalate_disputes", "close_case", "mediation_case", c.case_id,
                  {"outcome": logic.RECORD_CORRECTED}, at=c.closed_at.to_pydatetime())
    return len(wrong)


def _no_room_reason(room_id, mediator_id) -> str | None:
    """Why a case has nobody to mediate it, in the words of the federation's staff (or None)."""
    if room_id is None:
        return "所在乡镇（街道）未设调解室，需区妇联指派调解"
    if mediator_id is None:
        return "所在乡镇调解室未登记调解员，需指派调解员"
    return None


def close_deregistered_cases(until: datetime, database_url: str | None) -> int:
    """Close the open cases of families taken off the register (迁出, 去世, 注销) by ``until``, as of
    the removal, with the outcome ``deregistered``: a room cannot mediate them, and left open
    they would stay open for ever. A replay of a day before the removal closes nothing."""
    from schemas.models import Household, MediationCase
    from sibifang.db import audit, session_scope
    from sibifang.flag_risks import DEREGISTERED

    gone = read_frame(select(MediationCase.id.label("case_id"), Household.deregistered_at)
                      .join(Household, Household.id == MediationCase.household_id)
                      .where(MediationCase.status == "open", Household.deregistered_at <= until), database_url)
    with session_scope(database_url) as s:
        for c in gone.itertuples(index=False):
            at = pd.Timestamp(c.deregistered_at).to_pydatetime()
            s.execute(update(MediationCase).where(MediationCase.id == c.case_id, MediationCase.status == "open")
                      .values(status="closed", closed_at=at, outcome=DEREGISTERED))
            audit(s, "escalate_disputes", "close_case", "mediation_case", c.case_id, {"outcome": DEREGISTERED}, at=at)
    return len(gone)


def record_case_outcome(session, case, outcome: str, *, actor: str, at: datetime) -> bool:
    """Close ``case`` (a ``MediationCase`` in ``session``) with a mediator's ``outcome`` (调解结案),
    answering the finding it was opened for (outcome ``mediated``; findings that joined it stay
    open for the follow-up visit); False when it was closed with that outcome already. The one way
    a case is closed by its room: the CLI and the demo's mediators."""
    from schemas.models import RiskFlag
    from sibifang import escalate_disputes as logic
    from sibifang.db import audit

    outcome = logic.mediation_outcome(outcome)
    if not logic.case_closing(case.status, case.outcome, outcome, case.id):
        return False
    case.status, case.closed_at, case.outcome = "closed", at, outcome
    if case.source_flag_id:
        session.execute(update(RiskFlag).where(RiskFlag.id == case.source_flag_id, RiskFlag.status != "closed")
                        .values(status="closed", outcome="mediated", closed_at=at))
    audit(session, actor, "close_case", "mediation_case", case.id, {"outcome": outcome}, at=at)
    return True


def close_mediation_case(case_id: str, outcome: str, *, actor: str, at: datetime | None = None,
                         database_url: str | None = None) -> dict:
    """A mediation room's outcome for one case (``sibifang close-case``); the same outcome again
    changes nothing, another is refused (``CaseOutcomeError``, Chinese)."""
    from schemas.models import MediationCase
    from sibifang import escalate_disputes as logic
    from sibifang.db import session_scope
    from sibifang.settings import local_now

    at = at or local_now()
    with session_scope(database_url) as s:
        case = s.get(MediationCase, case_id)
        if case is None:
            raise logic.CaseOutcomeError(f"未找到调解案件 {case_id}，请核对案件编号")
        if case.opened_at and at < case.opened_at:
            raise logic.CaseOutcomeError(f"结案时间 {at:%Y-%m-%d %H:%M} 早于案件 {case_id} 的转介时间 "
                                         f"{case.opened_at:%Y-%m-%d %H:%M}")
        changed = record_case_outcome(s, case, outcome, actor=actor, at=at)
        return {"case_id": case.id, "status": case.status, "outcome": case.outcome,
                "closed_at": case.closed_at.isoformat(sep=" "), "changed": changed}


def follow_up_overdue_cases(until: datetime, database_url: str | None) -> list[str]:
    """Record, once each, the open cases with no outcome past their due date
    (``logic.overdue_cases``), so the federation asks the room for the outcome; they are counted
    by ``unrouted_counts`` while they stay open."""
    from schemas.models import AuditEvent, MediationCase
    from sibifang import escalate_disputes as logic
    from sibifang.db import audit, session_scope

    cases = read_frame(select(MediationCase.id.label("case_id"), MediationCase.opened_at, MediationCase.status)
                       .where(MediationCase.status == "open"), database_url)
    late = logic.overdue_cases(cases, until)
    if not late:
        return []
    with session_scope(database_url) as s:
        told = set()
        for ids in chunks(late, 500):
            told |= set(s.scalars(select(AuditEvent.entity_id).where(AuditEvent.action == "case_overdue",
                                                                     AuditEvent.entity_id.in_(ids))))
        new = [c for c in late if c not in told]
        for c in new:
            audit(s, "escalate_disputes", "case_overdue", "mediation_case", c,
                  {"reason": f"立案超过{logic.CASE_DUE_DAYS}天仍无调解结果，已逾期，请跟进调解室"}, at=until)
    if new:
        run_logger().warning("%d 件调解案件逾期无结果，已记录待跟进", len(new))
    return new


def unrouted_counts(database_url: str | None = None) -> dict:
    """What escalation could not route, still open: cases without a room or mediator, needs no
    resource of the pool fits, and cases overdue with no outcome (each recorded once,
    ``case_without_room`` / ``need_unmatched`` / ``case_overdue``)."""
    from schemas.models import AuditEvent, Household, MediationCase, ServiceNeed
    from sibifang.db import session_scope

    with session_scope(database_url) as s:
        cases = s.scalar(select(func.count()).select_from(MediationCase).where(
            MediationCase.status == "open",
            (MediationCase.room_id.is_(None)) | (MediationCase.mediator_id.is_(None))))
        needs = s.scalar(select(func.count()).select_from(ServiceNeed).where(
            ServiceNeed.status == "open",
            ServiceNeed.household_id.in_(select(Household.id).where(Household.deregistered_at.is_(None))),
            ServiceNeed.id.in_(select(AuditEvent.entity_id).where(AuditEvent.action == "need_unmatched"))))
        overdue = s.scalar(select(func.count()).select_from(MediationCase).where(
            MediationCase.status == "open",
            MediationCase.id.in_(select(AuditEvent.entity_id).where(AuditEvent.action == "case_overdue"))))
    return {"cases_without_room": int(cases or 0), "needs_unmatched": int(needs or 0),
            "cases_overdue": int(overdue or 0)}


@task(name="match_service_needs", cache_policy=NO_CACHE)
def match_needs_task(as_of: date, database_url: str | None = None, lookback_days: int = 30) -> dict:
    from schemas.models import AuditEvent, Household, ServiceNeed, ServiceResource, Visit
    from sibifang import escalate_disputes as logic
    from sibifang.db import audit, session_scope, upsert
    from sibifang.records import frame_records

    since = datetime.combine(as_of - timedelta(days=lookback_days), datetime.min.time())
    until = datetime.combine(as_of, datetime.max.time())
    visits = read_frame(select(Visit.id.label("visit_id"), Visit.household_id, Visit.visited_at,
                               Visit.demand_category)
                        .where(Visit.visited_at >= since, Visit.visited_at <= until), database_url)
    grids = grid_hierarchy(database_url)
    hh = _households_in_grids(grids, database_url)
    needs = logic.needs_from_visits(visits, hh) if not visits.empty else pd.DataFrame()
    with session_scope(database_url) as s:
        upsert(s, ServiceNeed, [{"id": n["need_id"], "household_id": n["household_id"], "village_id": n["village_id"],
                                 "category": n["category"], "source_visit_id": n["source_visit_id"],
                                 "created_at": n["created_at"], "status": "open"} for n in frame_records(needs)],
               key=["id"], update=())
    # Only needs known by the end of the day run: a replay of a past day must not match later ones.
    # Nor needs of families taken off the register by then (迁出, 去世): no provider is sent to a
    # family that left, and the pool is not blamed for it.
    open_needs = read_frame(select(ServiceNeed.id.label("need_id"), ServiceNeed.village_id, ServiceNeed.category)
                            .join(Household, Household.id == ServiceNeed.household_id)
                            .where(ServiceNeed.status == "open", ServiceNeed.created_at <= until,
                                   or_(Household.deregistered_at.is_(None), Household.deregistered_at > until)),
                            database_url)
    resources = read_frame(select(ServiceResource.id.label("resource_id"), ServiceResource.village_id,
                                  ServiceResource.offers), database_url)
    areas = grids[["village_id", "township_id", "district_id"]].drop_duplicates("village_id")
    matches = logic.match_needs(open_needs, resources, areas)
    unmatched = sorted(set(open_needs.need_id) - set(matches.need_id)) if not open_needs.empty else []
    with session_scope(database_url) as s:
        for m in frame_records(matches):
            s.execute(update(ServiceNeed).where(ServiceNeed.id == m["need_id"], ServiceNeed.status == "open")
                      .values(status="matched", matched_resource_id=m["resource_id"], matched_at=until))
        # A need no resource fits stays open (a resource registered later may fit it) and is
        # recorded once, so the staff see it rather than it waiting unseen.
        told = set()
        for ids in chunks(unmatched, 500):
            told |= set(s.scalars(select(AuditEvent.entity_id).where(AuditEvent.action == "need_unmatched",
                                                                     AuditEvent.entity_id.in_(ids))))
        new = [n for n in unmatched if n not in told]
        category = dict(zip(open_needs.need_id, open_needs.category)) if new else {}
        for n in new:
            audit(s, "escalate_disputes", "need_unmatched", "service_need", n,
                  {"category": category[n], "reason": "服务资源池中本区暂无可提供该类服务的资源，需人工对接"}, at=until)
    if new:
        run_logger().warning("%d 项需求在服务资源池中暂无匹配资源，已记录待人工对接", len(new))
    return {"needs": len(needs), "matched": len(matches), "unmatched": len(unmatched)}
