"""Counts per stage and CSV exports, read from the database."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from schemas.models import (Alert, Cadre, DeliveryAttempt, Household, MediationCase, Notice, QuarantinedRow,
                            ReadingBatch, Report, RiskFlag, ServiceNeed, ValidationRun, Visit, VisitPlan)
from sibifang.db import count, grid_hierarchy, read_frame, session_scope
from sibifang.settings import local_today


def collect_stats(database_url: str | None = None, *, as_of: date | None = None) -> dict:
    """``households``: the register as of ``as_of`` (today): families not taken off it (迁出, 去世,
    注销) by that day, read by the day as the planner reads it (``on_register``);
    ``households_must_visit``: those of them in a must-visit category; ``households_deregistered``:
    the families taken off it by then."""
    from sibifang.schedule_visits import on_register

    day = as_of or local_today()
    hh = read_frame(select(Household.categories, Household.deregistered_at), database_url)
    on = on_register(hh.deregistered_at, day) if len(hh) else np.zeros(0, dtype=bool)
    must = hh.categories.map(lambda c: bool(c) if isinstance(c, list) else False).to_numpy(dtype=bool)
    with session_scope(database_url) as s:
        out = {
            "households": int(on.sum()), "households_must_visit": int((on & must).sum()),
            "households_deregistered": int((~on).sum()), "cadres": count(s, Cadre),
            "visit_plans": count(s, VisitPlan),
            "visit_plans_done": count(s, VisitPlan, VisitPlan.status == "done"),
            "visit_plans_missed": count(s, VisitPlan, VisitPlan.status == "missed"),
            "visits": count(s, Visit),
            "readings": int(s.scalar(select(func.coalesce(func.sum(ReadingBatch.rows_new), 0))) or 0),
            "readings_quarantined": int(
                s.scalar(select(func.coalesce(func.sum(ReadingBatch.rows_quarantined), 0))) or 0),
            "flags": count(s, RiskFlag), "flags_open": count(s, RiskFlag, RiskFlag.status != "closed"),
            "alerts": count(s, Alert), "alerts_sent": count(s, Alert, Alert.status == "sent"),
            "alerts_pending": count(s, Alert, Alert.status.in_(("pending", "sending"))),
            "alerts_dead": count(s, Alert, Alert.status == "dead"),
            "alerts_cancelled": count(s, Alert, Alert.status == "cancelled"),
            "alerts_acked": count(s, Alert, Alert.acked_at.is_not(None)),
            "alerts_escalated": count(s, Alert, Alert.escalation_level > 0),
            "delivery_attempts": count(s, DeliveryAttempt),
            "cases": count(s, MediationCase), "cases_closed": count(s, MediationCase, MediationCase.status == "closed"),
            "needs": count(s, ServiceNeed), "needs_matched": count(s, ServiceNeed, ServiceNeed.status == "matched"),
            "reports": count(s, Report),
            "notices": count(s, Notice), "notices_sent": count(s, Notice, Notice.status == "sent"),
            "validation_runs": count(s, ValidationRun),
            "quarantined_rows": count(s, QuarantinedRow),
        }
    return out


def export_frame(what: str, *, as_of: date | None = None, database_url: str | None = None) -> pd.DataFrame:
    """A checkable export: ids and codes, no ID numbers or phone numbers."""
    if what == "visits":
        return read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.cadre_id,
                             VisitPlan.grid_id, VisitPlan.due_date, VisitPlan.window_start, VisitPlan.window_end,
                             VisitPlan.reason, VisitPlan.urgent, VisitPlan.status, VisitPlan.planned_on,
                             VisitPlan.closed_by_visit_id).order_by(VisitPlan.due_date, VisitPlan.id), database_url)
    if what == "cadres":
        df = read_frame(select(Cadre.id.label("cadre_id"), Cadre.role, Cadre.grid_ids, Cadre.capacity,
                           Cadre.four_plus_one, Cadre.grassroots_weekday, Cadre.on_leave_from, Cadre.on_leave_until)
                    .order_by(Cadre.id), database_url)
        df["grid_ids"] = df.grid_ids.map(lambda g: ";".join(g or []))
        return df
    if what == "flags":
        return read_frame(select(RiskFlag.id.label("flag_id"), RiskFlag.household_id, RiskFlag.meter_id, RiskFlag.kind,
                             RiskFlag.severity, RiskFlag.score, RiskFlag.start, RiskFlag.detected_at, RiskFlag.end,
                             RiskFlag.status, RiskFlag.outcome, RiskFlag.evidence)
                      .order_by(RiskFlag.detected_at, RiskFlag.id), database_url)
    if what == "alerts":
        return read_frame(select(Alert.id.label("alert_id"), Alert.flag_id, Alert.recipient_id.label("recipient"),
                             Alert.recipient_role, Alert.channel, Alert.severity, Alert.status, Alert.attempts,
                             Alert.escalation_level, Alert.created_at, Alert.first_sent_at, Alert.acked_at,
                             Alert.outcome, Alert.last_error).order_by(Alert.created_at, Alert.id), database_url)
    if what == "cases":
        return read_frame(select(MediationCase.id.label("case_id"), MediationCase.household_id, MediationCase.room_id,
                             MediationCase.mediator_id, MediationCase.source_flag_id, MediationCase.opened_at,
                             MediationCase.status, MediationCase.closed_at, MediationCase.outcome)
                      .order_by(MediationCase.opened_at, MediationCase.id), database_url)
    if what == "coverage":
        from sibifang.schedule_visits import compute_coverage, on_register

        day = as_of or local_today()
        # A plan cancelled because its family left the register (迁出, 去世) was no visit to make,
        # from the removal day on: a day before it (a past day's coverage), it was a visit due.
        plans = read_frame(select(VisitPlan.id.label("visit_id"), VisitPlan.household_id, VisitPlan.cadre_id,
                              VisitPlan.grid_id, VisitPlan.due_date, VisitPlan.window_start, VisitPlan.window_end,
                              VisitPlan.status, Household.deregistered_at)
                           .outerjoin(Household, Household.id == VisitPlan.household_id), database_url)
        gone = plans.status.eq("cancelled").to_numpy(dtype=bool) & ~(
            plans.deregistered_at.notna().to_numpy(dtype=bool) & on_register(plans.deregistered_at, day))
        plans = plans[~gone].drop(columns=["status", "deregistered_at"]).reset_index(drop=True)
        visits = read_frame(select(Visit.id.label("visit_id"), Visit.plan_id, Visit.household_id, Visit.visited_at),
                        database_url)
        hh = read_frame(select(Household.id.label("household_id"), Household.grid_id, Household.away_from,
                           Household.away_until, Household.deregistered_at), database_url)
        hh = hh.merge(grid_hierarchy(database_url)[["grid_id", "village_id"]], on="grid_id", how="left")
        return compute_coverage(plans, visits, hh, day)
    raise ValueError(f"unknown export {what!r}")
