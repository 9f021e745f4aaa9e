"""Tasks of the summary-report stage: gather aggregates, render, store."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from sibifang.db import grid_hierarchy, read_frame



@task(name="gather_report_aggregates", cache_policy=NO_CACHE)
def gather_aggregates(period_start: date, period_end: date, database_url: str | None = None) -> dict:
    from schemas.models import (Alert, Area, AuditEvent, DeliveryAttempt, Household, MediationCase, RiskFlag,
                                RiskMapSnapshot, ServiceNeed, Visit, VisitPlan)
    from sibifang.outbox import ESCALATION_EXHAUSTED
    from sibifang.summary_report import summarise

    closing = aliased(Visit)
    # An alert's own answer: acknowledge stamps acked_at on every alert of the flag, and only
    # the audit trail tells which alert the answer came through (summary_report.confirmed_at).
    confirmed = (select(func.min(AuditEvent.at))
                 .where(AuditEvent.action == "acknowledge", AuditEvent.entity == "alert",
                        AuditEvent.entity_id == Alert.id, AuditEvent.at >= Alert.first_sent_at)
                 .correlate(Alert).scalar_subquery())
    # A dead alert's last attempt is the one that dead-lettered it (outbox.record_attempt).
    last_attempt = (select(func.max(DeliveryAttempt.at)).where(DeliveryAttempt.alert_id == Alert.id)
                    .correlate(Alert).scalar_subquery())
    hh = read_frame(select(Household.id.label("household_id"), Household.categories, Household.registered_at,
                           Household.deregistered_at), database_url)
    hh["categories"] = hh.categories.map(lambda c: c if isinstance(c, list) else [])
    grids = grid_hierarchy(database_url)
    names = read_frame(select(Area.id, Area.name), database_url)
    grids = grids.merge(names.rename(columns={"id": "village_id", "name": "village_name"}), on="village_id", how="left")
    frames = dict(
        # done_at: when the visit that closed the plan was made, so the report can say what was
        # done by the period's end (summary_report.as_of_period_end). close_plans records that
        # visit in closed_by_visit_id, also for visit sheets that name no plan (a village's never
        # do); a visit naming the plan is the fallback for a plan closed without one recorded.
        # deregistered_at: a plan cancelled because its family left the register after the
        # period was still open at its end.
        plans=read_frame(select(VisitPlan.id, VisitPlan.due_date, VisitPlan.status, VisitPlan.urgent,
                                func.coalesce(func.min(closing.visited_at), func.min(Visit.visited_at))
                                .label("done_at"), func.max(Household.deregistered_at).label("deregistered_at"))
                         .join(closing, closing.id == VisitPlan.closed_by_visit_id, isouter=True)
                         .join(Visit, Visit.plan_id == VisitPlan.id, isouter=True)
                         .join(Household, Household.id == VisitPlan.household_id, isouter=True)
                         .group_by(VisitPlan.id),
                         database_url),
        visits=read_frame(select(Visit.id, Visit.visited_at), database_url),
        flags=read_frame(select(RiskFlag.id, RiskFlag.kind, RiskFlag.detected_at), database_url),
        alerts=read_frame(select(Alert.id, Alert.status, Alert.created_at, Alert.first_sent_at, Alert.acked_at,
                                 confirmed.label("confirmed_at"), last_attempt.label("last_attempt_at"),
                                 Alert.channel, Household.grid_id, RiskFlag.detected_at.label("flag_detected_at"),
                                 RiskFlag.closed_at.label("flag_closed_at"))
                          .join(RiskFlag, RiskFlag.id == Alert.flag_id)
                          .join(Household, Household.id == RiskFlag.household_id), database_url),
        cases=read_frame(select(MediationCase.id, MediationCase.opened_at, MediationCase.status,
                                MediationCase.closed_at, MediationCase.outcome), database_url),
        needs=read_frame(select(ServiceNeed.id, ServiceNeed.category, ServiceNeed.status, ServiceNeed.created_at,
                                ServiceNeed.matched_at), database_url),
        risk_map=read_frame(select(RiskMapSnapshot).where(RiskMapSnapshot.as_of <= period_end), database_url),
        escalations_exhausted=read_frame(select(AuditEvent.entity_id.label("flag_id"), AuditEvent.at)
                                         .where(AuditEvent.action == ESCALATION_EXHAUSTED,
                                                AuditEvent.entity == "risk_flag"), database_url),
    )
    agg = summarise(period_start=period_start, period_end=period_end, households=hh, areas=grids, **frames)
    return {"aggregates": agg, "risk_map": frames["risk_map"], "areas": grids}


@task(name="write_report", cache_policy=NO_CACHE)
def write_report(gathered: dict, period_start: date, period_end: date, out_dir: str,
                 database_url: str | None = None, kind: str = "periodic") -> dict:
    from schemas.models import Report
    from sibifang.db import session_scope, upsert
    from sibifang.summary_report import render_report, risk_map_svg

    agg = gathered["aggregates"]
    svg = risk_map_svg(gathered["risk_map"], gathered["areas"])
    html = render_report(agg, risk_map_svg_text=svg)
    out = Path(out_dir) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"summary-{period_start}-{period_end}.html"
    path.write_text(html, encoding="utf-8")
    (out / f"risk-map-{period_end}.svg").write_text(svg, encoding="utf-8")
    digest = hashlib.sha256(html.encode("utf-8")).hexdigest()
    with session_scope(database_url) as s:
        # Same period, same id: a re-run rewrites the same report instead of adding one.
        upsert(s, Report, [{"id": f"R-{kind}-{period_start}-{period_end}", "kind": kind, "period_start": period_start,
                            "period_end": period_end, "created_at": datetime.combine(period_end, datetime.max.time())
                            .replace(microsecond=0), "path": str(path), "content_sha256": digest,
                            "aggregates": agg}], key=["id"])
    return {"path": str(path), "sha256": digest}
