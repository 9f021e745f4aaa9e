"""Acknowledgement of an alert (确认预警) and the outcome of the visit it asked for.

Acknowledging stops the escalation of that flag's alerts; the flag itself closes only with
an outcome: ``visited_all_well`` closes it, ``needs_help`` keeps it (acknowledged) and raises a
need for the service-resource pool in the category its kind calls for, ``escalate`` keeps it
open and sends it one step up at once (the village chair, then the township federation or a
supervisor: ``outbox.queue_escalation``); a dispute kind's flag, open, also goes to mediation
(``escalate_disputes``).

An alert's outcome, once recorded, is final, and a closed flag takes no outcome: a replayed or
forwarded link asking for another is refused (``AckRefused``) and changes nothing; the same
answer again is accepted and records nothing more. One exception, for a wrong tap: the visit
outcome given through an alert (已上门，一切正常 / 已上门，需要帮助) may be changed to the other one
from the same link, once, within ``CORRECTION_WINDOW``, while nobody else acted on the flag
(``correctable``); the change is audited (``correct_outcome``) and is no second answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from schemas.models import Alert, Area, AuditEvent, Household, RiskFlag, ServiceNeed
from sibifang.db import audit, session_scope
from sibifang.dispatch_alerts import stored_moment
from sibifang.outbox import DispatchPolicy, lock_flag, queue_escalation
from sibifang.records import stable_id
from sibifang.settings import local_now

OUTCOMES = {"visited_all_well": "已上门，一切正常", "needs_help": "已上门，需要帮助", "escalate": "需上报处理"}
# The service-pool category (checks.DEMAND_CATEGORY_LABELS) a "needs help" answer files, by flag
# kind: the meter kinds are about elderly people living alone, the rest default to that too.
NEED_CATEGORY = {"dispute": "marriage_family_rights", "domestic_violence": "marriage_family_rights",
                 "gambling": "marriage_family_rights"}
# A wrong tap is noticed at once, on the page the answer returns; past this, or once anyone else
# acted on the flag, the answer stands and a change goes through the chair.
CORRECTION_WINDOW = timedelta(hours=1)
# The outcomes a grid worker may swap (both say she visited; neither told anyone else): 需上报处理
# has queued the step above, which cannot be called back.
CORRECTABLE = ("visited_all_well", "needs_help")
CORRECTED = "correct_outcome"


class AckError(ValueError):
    """The alert cannot be acknowledged (unknown id, unknown outcome); the message is for the
    grid worker, in Chinese, and names no token or secret."""


class AckRefused(AckError):
    """The answer contradicts one already on record (an outcome on an alert that has another,
    or on a closed flag): nothing is recorded. The page behind the link offers no such button;
    this is the server holding to it against a replayed or forwarded link."""


def acknowledge(alert_id: str, *, actor: str, outcome: str | None = None, at: datetime | None = None,
                database_url: str | None = None, session=None) -> dict:
    """Acknowledge one alert (in ``session`` when given, else in its own transaction)."""
    if outcome is not None and outcome not in OUTCOMES:
        raise AckError(f"处理结果“{outcome}”无法识别，可选：{'、'.join(f'{k}（{v}）' for k, v in OUTCOMES.items())}")
    at = stored_moment(at) or local_now()  # stored as naive local time, whatever zone it came in
    if session is not None:
        return _acknowledge(session, alert_id, actor, outcome, at)
    with session_scope(database_url) as s:
        return _acknowledge(s, alert_id, actor, outcome, at)


def _acknowledge(s, alert_id: str, actor: str, outcome: str | None, at: datetime) -> dict:
    alert = s.get(Alert, alert_id)
    if alert is None:
        raise AckError(f"没有编号为“{alert_id}”的预警")
    # The flag's lock first, the one escalation takes before inserting (outbox.lock_flag): an
    # escalation in progress commits before this goes on, and its new alerts are marked below.
    flag = lock_flag(s, alert.flag_id)
    s.refresh(alert)
    first = alert.acked_at is None
    # Judged under the lock, so a double submit sees the first post's answer. An alert's outcome
    # is final and a closed flag takes none: what the page offers. The same answer again (a
    # second tap, 收到 after it) is the answer on record: accepted, nothing written.
    if alert.outcome and outcome not in (None, alert.outcome):
        if outcome in correctable(s, alert, flag, actor, at):
            return _correct(s, alert, flag, actor, outcome, at)
        raise AckRefused(f"这条预警已记录处理结果：{OUTCOMES[alert.outcome]}，不能再改为“{OUTCOMES[outcome]}”。"
                         "如情况有变，请联系村/社区妇联主席。")
    if outcome and alert.outcome is None and flag.status == "closed":
        raise AckRefused("这条预警所涉事项已结案，无需再选择处理结果；如上门发现新情况，请在走访记录中填写。")
    if not first and outcome in (None, alert.outcome):
        if not _answered_through(s, alert_id):
            # Stamped answered by a colleague's answer, now opened by its own recipient: her own
            # first answer, changing nothing but recorded (the report counts an alert confirmed
            # only when answered through itself).
            audit(s, actor, "acknowledge", "alert", alert_id, {"outcome": outcome, "first": False}, at=at)
        return _answer(alert, flag, first)
    # Every alert of the same flag counts as answered: nobody escalates it any more, and what is
    # still queued for it is never sent (outbox.claim_due). Only at an alert's first answer: her
    # link opened again must not answer for the chair an escalation she asked for now tells.
    if first:
        answers = [Alert.flag_id == alert.flag_id, Alert.acked_at.is_(None)]
        if outcome == "escalate":       # she asks for those above: what is on its way to them goes on
            answers.append(Alert.escalation_level <= alert.escalation_level)
        s.execute(update(Alert).where(*answers)
                  .values(acked_at=at, acked_by=actor).execution_options(synchronize_session=False))
        s.refresh(alert)
    if outcome:
        alert.outcome = outcome
        if outcome == "visited_all_well":
            flag.status, flag.outcome, flag.closed_at = "closed", outcome, at
        elif outcome == "escalate":
            # open, so that the step queued now is delivered (outbox.answered) and, for a critical
            # flag left unanswered there, the next one follows (outbox.escalation_due)
            flag.status, flag.outcome = "open", outcome
            rows = s.execute(select(Alert.escalation_level, Alert.recipient_id)
                             .where(Alert.flag_id == flag.id)).all()
            queue_escalation(s, flag, max(r.escalation_level for r in rows), {r.recipient_id for r in rows},
                             now=at, policy=DispatchPolicy.from_settings(), why="requested")
        else:
            flag.status, flag.outcome = "acknowledged", outcome
            if outcome == "needs_help":
                _file_need(s, flag, at)
    elif flag.status == "open":     # 收到 (a first answer: a repeat returned above)
        flag.status = "acknowledged"
    audit(s, actor, "acknowledge", "alert", alert_id, {"outcome": outcome, "first": first}, at=at)
    return _answer(alert, flag, first)


def _need_id(flag: RiskFlag) -> str:
    return stable_id("N", flag.id, NEED_CATEGORY.get(flag.kind, "elderly_care"))


def _file_need(s, flag: RiskFlag, at: datetime) -> None:
    """The need for the service pool a 需要帮助 answer files (once per flag)."""
    hh = s.get(Household, flag.household_id)
    grid = s.get(Area, hh.grid_id)
    if s.get(ServiceNeed, _need_id(flag)) is None:
        s.add(ServiceNeed(id=_need_id(flag), household_id=hh.id, village_id=grid.parent_id,
                          category=NEED_CATEGORY.get(flag.kind, "elderly_care"), created_at=at, status="open"))


def correctable(s, alert: Alert, flag: RiskFlag, actor: str | None, at: datetime) -> tuple[str, ...]:
    """The outcomes this alert's recorded one may still be changed to (a wrong tap), by ``actor``
    at ``at``: none, unless it is a visit outcome (``CORRECTABLE``) given through this very alert
    by ``actor`` less than ``CORRECTION_WINDOW`` ago, never corrected before, and nobody acted on
    the flag since: it still bears this answer (not closed by a visit, reopened by a run), no
    other alert of it has an outcome, the need it filed is not matched yet (the pool may have
    sent someone), no newer flag of the household's same kind (a later episode) exists."""
    if alert.outcome not in CORRECTABLE or flag.outcome != alert.outcome:
        return ()
    trail = s.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.at, AuditEvent.detail).where(
        AuditEvent.entity == "alert", AuditEvent.entity_id == alert.id,
        AuditEvent.action.in_(("acknowledge", CORRECTED)))).all()
    if any(r.action == CORRECTED for r in trail):
        return ()
    given = [r for r in trail if (r.detail or {}).get("outcome") == alert.outcome]
    if len(given) != 1 or given[0].actor != actor or not given[0].at <= at < given[0].at + CORRECTION_WINDOW:
        return ()
    answered_at = given[0].at
    if alert.outcome == "visited_all_well" and (flag.status != "closed" or flag.closed_at != answered_at):
        return ()
    if alert.outcome == "needs_help":
        need = s.get(ServiceNeed, _need_id(flag))
        if flag.status != "acknowledged" or need is None or need.status != "open" or need.created_at != answered_at:
            return ()
    others = select(Alert.id).where(Alert.flag_id == flag.id, Alert.id != alert.id, Alert.outcome.is_not(None))
    later = select(RiskFlag.id).where(RiskFlag.household_id == flag.household_id, RiskFlag.kind == flag.kind,
                                      RiskFlag.id != flag.id, RiskFlag.detected_at > flag.detected_at)
    if s.scalar(others.limit(1)) is not None or s.scalar(later.limit(1)) is not None:
        return ()
    return tuple(o for o in CORRECTABLE if o != alert.outcome)


def _correct(s, alert: Alert, flag: RiskFlag, actor: str, outcome: str, at: datetime) -> dict:
    """Change the visit outcome (``correctable`` said yes): the flag as the right answer leaves it,
    the need filed by the wrong one withdrawn (never matched, so nobody was sent) or the need of
    the right one filed. The acknowledgement stays the one answer the report counts; the change
    is its own audit entry."""
    before = alert.outcome
    if outcome == "needs_help":
        flag.status, flag.outcome, flag.closed_at = "acknowledged", outcome, None
        _file_need(s, flag, at)
    else:
        s.delete(s.get(ServiceNeed, _need_id(flag)))
        flag.status, flag.outcome, flag.closed_at = "closed", outcome, at
    alert.outcome = outcome
    audit(s, actor, CORRECTED, "alert", alert.id, {"from": before, "to": outcome}, at=at)
    return _answer(alert, flag, False)


def _answered_through(s, alert_id: str) -> bool:
    """Whether an answer was given through this very alert (its audit trail)."""
    return s.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.entity == "alert", AuditEvent.entity_id == alert_id, AuditEvent.action == "acknowledge")) > 0


def _answer(alert: Alert, flag: RiskFlag, first: bool) -> dict:
    return {"alert_id": alert.id, "flag_id": flag.id, "flag_status": flag.status, "outcome": alert.outcome,
            "already_acknowledged": not first}


def acknowledge_token(token: str, *, secret: str, outcome: str | None = None, now: datetime | None = None,
                      database_url: str | None = None) -> dict:
    """Acknowledge through the signed link a grid worker received (verifies signature and expiry)."""
    from sibifang.ack_tokens import verify_ack_token

    claims = verify_ack_token(token, secret, now or local_now())
    return acknowledge(claims.alert_id, actor=claims.recipient_id or "link", outcome=outcome, at=now,
                       database_url=database_url)


def alert_for_link(token: str, *, secret: str, now: datetime | None = None, database_url: str | None = None) -> dict:
    """The alert behind a signed link, read only: opening a link records nothing (a chat app's
    link preview opens it too), the grid worker answers on the page."""
    from sibifang.ack_tokens import verify_ack_token
    from sibifang.dispatch_alerts import alert_page_context
    from sibifang.outbox import flag_payload, household_context

    now = stored_moment(now)
    claims = verify_ack_token(token, secret, now or local_now())
    with session_scope(database_url) as s:
        alert = s.get(Alert, claims.alert_id)
        if alert is None:
            raise AckError(f"没有编号为“{claims.alert_id}”的预警")
        flag = s.get(RiskFlag, alert.flag_id)
        household = household_context(s, [flag.household_id]).get(flag.household_id, {})
        ctx = alert_page_context(flag_payload(flag), household, alert.recipient_role or "grid_worker", alert.id,
                                 now=now, sent=alert.first_sent_at or alert.created_at)
        # who was told above her (需上报处理): the page says whether anyone was
        above = s.scalar(select(func.count()).select_from(Alert).where(
            Alert.flag_id == flag.id, Alert.escalation_level > alert.escalation_level, Alert.status != "cancelled"))
        fix = correctable(s, alert, flag, claims.recipient_id or "link", now or local_now())
        return {**ctx, "acked": alert.acked_at is not None, "outcome": alert.outcome, "correct_to": list(fix),
                "correct_minutes": int(CORRECTION_WINDOW.total_seconds() // 60),
                "outcome_label": OUTCOMES.get(alert.outcome or "", ""), "flag_status": flag.status,
                "escalated_to": int(above)}
