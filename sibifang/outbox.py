"""The alert outbox (预警发件箱): committed before any send, claimed, attempted, recorded.

Guarantees, on SQLite and PostgreSQL alike:
- an alert row exists (committed) before any delivery is tried;
- one alert per flag episode and recipient and escalation level: ``dedup_key`` is unique,
  so a re-run, a crashed run or two overlapping runs insert nothing twice;
- a delivery is tried only by the process that claimed the row with a conditional UPDATE
  (``status='pending'`` → ``'sending'``), so two dispatchers never send the same alert;
- every attempt is a row; retries back off exponentially and stop at the limit, after
  which the alert is dead-lettered (``dead``) for the supervisor.
A process killed between a receiver's 200 and our commit leaves the row ``sending``; after
the lease it is retried, and the receiver sees the same ``dedup_key`` again: receivers use
it to drop the repeat (documented in the README). That window is one HTTP round trip.

Nothing is sent for a flag already answered: alerts of an acknowledged or closed flag (or
acknowledged themselves) still queued are ``cancelled`` at the next claim, never claimed.
Leases and retry backoff run on the real clock (``local_now``), whatever moment a replay
passes as ``now`` (which only decides what is due): a replay of yesterday never takes over a
live dispatcher's claims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import and_, not_, or_, select, update
from sqlalchemy.orm import Session

from schemas.models import Alert, Area, AuditEvent, Cadre, DeliveryAttempt, Household, RiskFlag
from sibifang.db import audit, upsert
from sibifang.records import stable_id
from sibifang.settings import local_now

LEASE = timedelta(minutes=5)
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
# Our own limiter deferring a send (a robot's quota, a block after "too fast"): nothing left the
# process, so it is not a delivery attempt and never counts toward ``max_attempts``.
LOCAL_RATE_LIMIT = "local_rate_limit"
# An alert of a flag answered (acknowledged or closed) before it went out: never sent.
CANCELLED = "cancelled"
# Audit action of a critical flag whose next escalation step found no one left to tell.
ESCALATION_EXHAUSTED = "escalation_exhausted"
# The address stored for an alert routed to the override webhook (``SIBIFANG_ALERT_WEBHOOK_URL``):
# this prefix and the URL's scheme and host only. The URL often carries a robot key (``?key=``,
# ``access_token=``, Feishu's ``/hook/<token>``), which must not reach the database; the sender
# takes the real URL from the settings at send time (``send_target``).
OVERRIDE_MARKER = "override:"
# Where the acknowledgement link goes in a stored alert body. The link carries a signed bearer
# token (it lets its holder acknowledge or close the flag, which stops the escalation), so the
# database keeps only this slot: the sender signs the link when the alert goes out
# (``signed_ack_url``, as it does for a digest) and fills it in (``with_ack_link``), on every
# attempt, so the token's lifetime counts from the send. A body stored before (with the link
# in it, no slot) is sent as stored.
ACK_URL_SLOT = "{{ack_url}}"


@dataclass(frozen=True)
class DispatchPolicy:
    max_attempts: int = 5
    escalate_after: timedelta = timedelta(minutes=30)
    ack_base_url: str = "http://127.0.0.1:8765"
    # repr=False: the keys, and the override URL's robot key, stay out of tracebacks and logs
    ack_secret: str = field(default="", repr=False)  # no default key: an empty one refuses to sign (ack_tokens)
    ack_ttl: timedelta = timedelta(hours=72)
    override_webhook: str | None = field(default=None, repr=False)
    override_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls) -> DispatchPolicy:
        """The policy the settings (``SIBIFANG_*``) give."""
        from sibifang.settings import get_settings

        s = get_settings()
        return cls(max_attempts=s.alert_max_attempts, escalate_after=timedelta(minutes=s.escalate_after_minutes),
                   ack_base_url=s.ack_base_url, ack_secret=s.ack_signing_key(),
                   ack_ttl=timedelta(hours=s.ack_token_ttl_hours), override_webhook=s.alert_webhook_url,
                   override_secret=s.alert_webhook_secret.get_secret_value() if s.alert_webhook_secret else None)


def override_address(url: str) -> str:
    """What the outbox stores for the override webhook: a marker and the host, never the key."""
    from sibifang.channels import redact_url

    return OVERRIDE_MARKER + redact_url(url)


def stored_address(recipient: Any) -> str | None:
    """A recipient's address as the outbox stores it: the override webhook as its marker."""
    address = getattr(recipient, "address", None)
    if getattr(recipient, "overridden", False) and address:
        return override_address(address)
    return address


def send_target(channel: str, address: str | None, policy: DispatchPolicy) -> tuple[str, str]:
    """Where an alert is sent now: the override webhook when the settings give one (every message
    goes there), else its own channel and address. An alert stored for the override webhook when
    the setting is gone raises ``ValueError``: it is not sent anywhere else (the caller
    dead-letters it with this reason)."""
    if policy.override_webhook:
        return "webhook", policy.override_webhook
    if (address or "").startswith(OVERRIDE_MARKER):
        raise ValueError("该预警原定发往统一告警 webhook，但发送时未设置 SIBIFANG_ALERT_WEBHOOK_URL，"
                         "未发送（不会改发到其他地址），请恢复该设置或重新派发")
    return channel, address or ""


def signed_ack_url(policy: DispatchPolicy, alert_id: str, recipient_id: str | None, now: datetime) -> str:
    """The link of one alert, signed at ``now`` (the send) for its recipient; never stored."""
    from sibifang.ack_tokens import ack_url, make_ack_token

    return ack_url(policy.ack_base_url, make_ack_token(alert_id, recipient_id or "", policy.ack_secret,
                                                       policy.ack_ttl, now))


def ack_link_length(policy: DispatchPolicy, alert_id: str, recipient_id: str | None, now: datetime) -> int:
    """How long the link ``signed_ack_url`` puts into this alert's slot, at any send: the same
    whatever key signs it (an HMAC-SHA256 is 32 bytes) and whenever (epoch seconds keep 10 digits
    until 2286), so it is computed, not signed (``ack_url_length``). Rendering leaves this much
    for it when it fits the message to its channel."""
    from sibifang.ack_tokens import ack_url_length

    return ack_url_length(policy.ack_base_url, alert_id, recipient_id or "", policy.ack_ttl, now)


def sms_recipient_ids(session: Session) -> list[str]:
    """The ids of the cadres alerted by SMS: each one's id is signed into her alerts' links."""
    return list(session.scalars(select(Cadre.id).where(Cadre.alert_channel == "sms")))


def check_ack_base_url(policy: DispatchPolicy, *, sms_used: bool, recipient_ids=("",)) -> None:
    """Whether every SMS alert can hold its ack link under ``SIBIFANG_ACK_BASE_URL``: checked when
    dispatch starts, so that a base URL too long is the operator's error to fix at once, not each
    SMS alert dead-lettered ``too_long`` one by one with nothing said up front. The link holds its
    recipient's id (``ack_tokens``), so it is measured for the longest of ``recipient_ids`` (the
    cadres alerted by SMS, ``sms_recipient_ids``): the check fails exactly when some SMS alert
    cannot go (it measured an empty id, and passed while real recipients' alerts were refused).
    ``sms_used`` (an SMS gateway is set and no override webhook takes every message): a
    ``ValueError``; otherwise a warning, for the day SMS is set up."""
    import logging

    from sibifang.channels import SMS_MAX_CHARS
    from sibifang.dispatch_alerts import least_sms_length

    at = local_now()
    aid = stable_id("A", "", length=12)  # every alert id has this length
    link = max(ack_link_length(policy, aid, rid or "", at) for rid in (recipient_ids or ("",)))
    need = least_sms_length(link)
    if need <= SMS_MAX_CHARS:
        return
    problem = (f"SIBIFANG_ACK_BASE_URL is too long for an SMS alert: its ack link alone is {link} characters, "
               f"and the shortest SMS alert with it is {need}, over the SMS limit of {SMS_MAX_CHARS} characters "
               f"(channels.SIZE_LIMITS); use a base URL at least {need - SMS_MAX_CHARS} characters shorter")
    if sms_used:
        raise ValueError(problem + "; SMS alerts with this link (the longest of the cadres alerted by SMS) "
                         "cannot be sent")
    logging.getLogger(__name__).warning("%s (no SMS gateway is in use now)", problem)


def with_ack_link(body: str, alert_id: str, recipient_id: str | None, policy: DispatchPolicy,
                  now: datetime) -> str:
    """A stored body as it is sent: its ``ACK_URL_SLOT`` filled with a link signed now."""
    if ACK_URL_SLOT not in (body or ""):
        return body
    return body.replace(ACK_URL_SLOT, signed_ack_url(policy, alert_id, recipient_id, now))


def insert_alerts(session: Session, rows: list[dict[str, Any]]) -> None:
    """Rows into the outbox, none twice (keyed by ``dedup_key``): the one way alerts are stored.

    A title is worded from registry names (the village's and the grid's, each up to its column's
    length) and can run past its own column, which PostgreSQL refuses (SQLite keeps it): the
    whole run's alerts would be lost. It is cut to the column's length with a visible "…"; its
    header (【升级】, severity, kind) comes first and stays."""
    from sibifang.channels import truncate_chars

    limit = Alert.__table__.c.title.type.length
    upsert(session, Alert, [{**r, "title": truncate_chars(r["title"], limit)} for r in rows], key=["dedup_key"],
           update=())


def word_for_send(session: Session, alert: Alert, policy: DispatchPolicy, *, now: datetime,
                  signed_at: datetime) -> bool:
    """Word a claimed alert for the send at ``now``: its deadline (最晚) and time phrases count from
    the send, as its page (``acknowledge.alert_for_link``, from ``first_sent_at``) and its escalation
    (``escalation_due``) do. Worded when queued, an alert whose first attempt failed and a retry
    got through an hour later said 最晚11:00 while the system held her to 12:00. Rendered as at
    queueing (``render_alert``), fitted to its channel for the link signed at ``signed_at`` (a base
    URL lengthened while it waited makes it shorter), and stored so: the claim commits it before
    the send, so a resend after a crash (sent as stored, not worded again) is the same text.
    Only a body with the link's slot (``ACK_URL_SLOT``); one stored with its link in is sent as
    stored. Returns whether the stored body changed."""
    from sibifang.dispatch_alerts import Recipient, render_alert

    if ACK_URL_SLOT not in (alert.body or ""):
        return False
    flag = session.get(RiskFlag, alert.flag_id)
    household = household_context(session, [flag.household_id]).get(flag.household_id) if flag else None
    if household is None:
        return False
    rcpt = Recipient(alert.recipient_id or "", "", alert.recipient_role or "", alert.channel, alert.address or "",
                     "send")
    link_length = None if policy.override_webhook else ack_link_length(policy, alert.id, alert.recipient_id,
                                                                        signed_at)
    msg = render_alert(flag_payload(flag), household, rcpt, ACK_URL_SLOT, alert_id=alert.id, now=now,
                       link_length=link_length)
    body = msg.markdown or msg.text
    if body == alert.body:
        return False
    alert.body = body
    return True


# The name of ``word_for_send`` when it only re-fitted a body to a longer link.
refit_to_link = word_for_send


def backoff(attempt_no: int) -> timedelta:
    """Delay before attempt ``attempt_no + 1``: 30 s, 1 min, 2 min, ... capped at an hour."""
    return min(BACKOFF_MAX, BACKOFF_BASE * (2 ** max(0, attempt_no - 1)))


def cadres_frame(session: Session) -> pd.DataFrame:
    rows = session.execute(select(Cadre.id, Cadre.name, Cadre.role, Cadre.grid_ids, Cadre.alert_channel,
                                  Cadre.alert_address, Cadre.on_leave_from, Cadre.on_leave_until)
                           .order_by(Cadre.id)).all()
    return pd.DataFrame(rows, columns=["cadre_id", "name", "role", "grid_ids", "alert_channel", "alert_address",
                                       "on_leave_from", "on_leave_until"])


def flag_payload(flag: RiskFlag) -> dict[str, Any]:
    """What routing and the message templates know of a flag (its evidence, no personal data)."""
    return {"flag_id": flag.id, "dedup_key": flag.dedup_key, "household_id": flag.household_id, "kind": flag.kind,
            "severity": flag.severity, "start": flag.start, "detected_at": flag.detected_at,
            "evidence": flag.evidence, **(flag.details or {})}


def household_context(session: Session, household_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What a message may say about a household: name, address, grid, village. No ID numbers."""
    grid = Area.__table__.alias("grid")
    village = Area.__table__.alias("village")
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(household_ids), 500):
        ids = household_ids[i:i + 500]
        rows = session.execute(
            select(Household.id, Household.head_name, Household.address, Household.grid_id, grid.c.name,
                   village.c.id, village.c.name, Household.birth_year, Household.sex)
            .join(grid, grid.c.id == Household.grid_id)
            .join(village, village.c.id == grid.c.parent_id, isouter=True)
            .where(Household.id.in_(ids))).all()
        for hid, name, addr, gid, gname, vid, vname, by, sex in rows:
            out[hid] = {"household_id": hid, "head_name": name, "address": addr, "grid_id": gid,
                        "grid_name": gname, "village_id": vid, "village_name": vname, "birth_year": by, "sex": sex}
    return out


def enqueue_alerts(session: Session, flags: list[dict[str, Any]], *, now: datetime, policy: DispatchPolicy,
                   route: Callable, render: Callable, quiet: Callable[[datetime], datetime | None]) -> int:
    """Route and render alerts for new flags and commit them to the outbox (nothing is sent here).
    The body holds ``ACK_URL_SLOT`` where the link goes: the link is signed at send time."""
    if not flags:
        return 0
    cadres = cadres_frame(session)
    cadres = cadres[cadres.role.isin(("grid_worker", "village_chair", "supervisor"))].reset_index(drop=True)
    # Routing looks only at the people of the household's grid (and the supervisors as last
    # resort): index them once instead of scanning every cadre of a county per flag.
    by_grid: dict[str, list[int]] = {}
    for i, grids in enumerate(cadres.grid_ids):
        for g in grids or []:
            by_grid.setdefault(g, []).append(i)
    supervisors = cadres[cadres.role == "supervisor"]
    local: dict[str, pd.DataFrame] = {}

    def cadres_for(grid_id: str) -> pd.DataFrame:
        if grid_id not in local:
            sub = cadres.iloc[by_grid.get(grid_id, [])]
            local[grid_id] = sub if (sub.role != "supervisor").any() else pd.concat([sub, supervisors]).drop_duplicates(
                "cadre_id")
        return local[grid_id]

    ctx = household_context(session, sorted({f["household_id"] for f in flags}))
    rows = []
    skipped: list[tuple[str, str]] = []
    for flag in flags:
        household = ctx.get(flag["household_id"])
        if household is None:
            continue
        try:
            recipients = route(flag, household, cadres_for(household["grid_id"]))
        except LookupError as e:
            # Nobody to tell in this area: keep the flag open and tell the supervisor via the log
            # and the report; one such flag must not stop the others' alerts.
            skipped.append((flag["flag_id"], str(e)))
            continue
        for rcpt in recipients:
            rid = getattr(rcpt, "cadre_id", None)
            dedup = f"{flag['dedup_key']}|{rid}|L0"
            alert_id = stable_id("A", dedup, length=12)
            held_until = None if flag["severity"] == "critical" else quiet(now)
            # Worded for the moment it is read: an alert held overnight is read in the morning.
            msg = render(flag, household, rcpt, ACK_URL_SLOT, alert_id=alert_id, now=held_until or now,
                         link_length=ack_link_length(policy, alert_id, rid, now))
            rows.append({
                "id": alert_id, "dedup_key": dedup, "flag_id": flag["flag_id"], "recipient_id": rid,
                "recipient_role": getattr(rcpt, "role", None), "channel": rcpt.channel,
                "address": stored_address(rcpt),
                "severity": flag["severity"], "title": msg.title, "body": msg.markdown or msg.text,
                "status": "pending", "attempts": 0, "escalation_level": 0, "created_at": now,
                "next_attempt_at": held_until or now,
            })
    if rows:
        # The hand-over contract of the outbox (the alerts suite), checked before anything is
        # committed: a broken batch stops here and nothing of it can be sent.
        from schemas.validation import raise_for_critical, validate_frame

        raise_for_critical(validate_frame(pd.DataFrame(rows), "alerts", source="dispatch_alerts outbox"))
    insert_alerts(session, rows)
    if skipped:
        import logging

        logging.getLogger(__name__).warning("%d flag(s) have no one to alert in their area", len(skipped))
    return len(rows)


def answered():
    """Alerts nobody needs any more: acknowledged, or of a flag acknowledged or closed."""
    return or_(Alert.acked_at.is_not(None),
               Alert.flag_id.in_(select(RiskFlag.id).where(RiskFlag.status.in_(("acknowledged", "closed")))))


def off_register(now: datetime):
    """Alerts of a family taken off the register (迁出, 去世, 注销) by ``now``: nobody is to call.
    The next risk run closes its flags; the households import can come hours before it."""
    return Alert.flag_id.in_(select(RiskFlag.id).join(Household, Household.id == RiskFlag.household_id)
                             .where(Household.deregistered_at <= now))


def lock_flag(session: Session, flag_id: str) -> RiskFlag | None:
    """The flag, read fresh and locked until the transaction ends.

    Escalation and acknowledgement both take this lock before writing for a flag, so one
    sees the other's outcome: no escalation is inserted after an acknowledgement committed,
    and an acknowledgement waiting for an escalation marks its new alerts answered too.
    PostgreSQL locks the row (``FOR UPDATE``); SQLite has no row locks, and a transaction only
    takes the database's write lock at its first write: a no-op UPDATE takes it now."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(RiskFlag).where(RiskFlag.id == flag_id).values(status=RiskFlag.status)
                        .execution_options(synchronize_session=False))
    return session.get(RiskFlag, flag_id, with_for_update=True, populate_existing=True)


def claim_due(session: Session, *, now: datetime, limit: int = 500, token: str | None = None,
              real_now: datetime | None = None, tries: int = 3, resumed: dict | None = None) -> list[str]:
    """Claim pending alerts that are due, and stale ``sending`` ones whose lease ran out; critical
    ones first, so a backlog never holds them back.

    ``now`` decides what is due (a replay passes a past moment); the lease is stamped with
    ``real_now`` (the real clock) and expires on it, so two dispatchers agree on it whatever
    moment each replays. ``token`` marks the claim as the caller's (see ``record_attempt``).
    Alerts of an answered flag, or of a family off the register by ``now``, still waiting are
    cancelled first, never claimed. A caller that
    loses the race for every row it selected selects again (``tries`` times in all): others'
    claims must not make it stop while alerts are due.

    ``resumed`` (a dict, filled in): for each alert claimed again after its lease ran out (a
    dispatcher died between its send and its record), the moment of the claim that sent it,
    which its ack link was signed at: the resend carries the very same link (``deliver``)."""
    real_now = real_now or local_now()
    stale = and_(Alert.status == "sending", Alert.next_attempt_at <= real_now - LEASE)
    session.execute(update(Alert).where(or_(Alert.status == "pending", stale), answered())
                    .values(status=CANCELLED, claim_token=None, last_error="预警已确认或已结案，不再发送")
                    .execution_options(synchronize_session=False))
    claimable = and_(or_(and_(Alert.status == "pending", Alert.next_attempt_at <= now), stale), not_(answered()))
    wanted = claimable
    # (looked for only where some family is off the register: the check costs a join per claim)
    if session.scalar(select(Household.id).where(Household.deregistered_at <= now).limit(1)) is not None:
        session.execute(update(Alert).where(or_(Alert.status == "pending", stale), off_register(now))
                        .values(status=CANCELLED, claim_token=None,
                                last_error="该户已不在册（迁出、去世或注销），不再发送")
                        .execution_options(synchronize_session=False))
        wanted = and_(claimable, not_(off_register(now)))
    for _ in range(max(1, tries)):
        # Each row is claimed under ``claimable``, answered() included (an answer may come in
        # between); a removal from the register in those milliseconds is the next claim's to cancel.
        ids = list(session.scalars(
            select(Alert.id).where(wanted)
            .order_by((Alert.severity == "critical").desc(), Alert.next_attempt_at, Alert.id).limit(limit)))
        if not ids:
            return []
        # a stale row's stamp is the last claim's (its lease); claimed only if still so (below)
        stale_since = {} if resumed is None else dict(session.execute(
            select(Alert.id, Alert.next_attempt_at).where(Alert.id.in_(ids), Alert.status == "sending")).all())
        claimed = []
        for aid in ids:
            cond = [Alert.id == aid, claimable]
            if aid in stale_since:
                cond.append(Alert.next_attempt_at == stale_since[aid])
            res = session.execute(update(Alert).where(*cond)
                                  .values(status="sending", next_attempt_at=real_now, claim_token=token)
                                  .execution_options(synchronize_session=False))
            if res.rowcount == 1:
                claimed.append(aid)
                if aid in stale_since:
                    resumed[aid] = stale_since[aid]
        if claimed:
            return claimed
    return []


def release(session: Session, ids: list[str], token: str) -> int:
    """Give back claimed alerts not sent yet (still ours): due again at once, for any dispatcher."""
    if not ids:
        return 0
    return session.execute(update(Alert).where(Alert.id.in_(ids), Alert.claim_token == token,
                                               Alert.status == "sending")
                           .values(status="pending", claim_token=None)
                           .execution_options(synchronize_session=False)).rowcount


def record_attempt(session: Session, alert: Alert, result: Any, *, now: datetime, policy: DispatchPolicy,
                   token: str | None = None, real_now: datetime | None = None,
                   worded_at: datetime | None = None) -> str:
    """Store one attempt and move the alert on: sent, back to pending with backoff, or dead.

    With ``token``, only the claim that sent it records it: a row claimed again by another
    dispatcher since (its lease ran out) is left to that one, and ``"lost"`` is returned.
    ``now`` is the moment recorded (a replay's); the retry is scheduled on the real clock,
    ``real_now``, or on ``now`` when that is later. Our own rate limiter's deferral
    (``local_rate_limit``) is no attempt: the alert just waits for the limiter. ``worded_at``: the
    moment the message sent was worded for (``word_for_send``, the claim's): a first delivery
    is stamped with it, so that its page's deadline and its escalation count from the moment
    its deadline was (to the minute, not a flush later)."""
    if token is not None:
        # A conditional write, so the check holds until commit (row lock; SQLite's write lock).
        mine = session.execute(update(Alert).where(Alert.id == alert.id, Alert.claim_token == token,
                                                   Alert.status == "sending")
                               .values(claim_token=token).execution_options(synchronize_session=False))
        if mine.rowcount != 1:
            return "lost"
        session.refresh(alert)
    base = max(now, real_now or local_now())
    retry_after = timedelta(seconds=result.retry_after) if getattr(result, "retry_after", None) else timedelta(0)
    if result.provider_code == LOCAL_RATE_LIMIT and not result.ok:
        alert.status = "pending"
        alert.claim_token = None
        alert.next_attempt_at = base + max(backoff(alert.attempts), retry_after)
        alert.last_error = result.error
        return alert.status
    attempt_no = alert.attempts + 1
    # A provider's own code (an SMS gateway's run to 50 characters) fitted to its column, which
    # PostgreSQL would refuse past it: the attempt unrecorded, the alert sent again after the lease.
    # The whole code is in the error.
    code = result.provider_code
    if code is not None:
        from sibifang.channels import truncate_chars

        code = truncate_chars(code, DeliveryAttempt.__table__.c.provider_code.type.length)
    session.add(DeliveryAttempt(alert_id=alert.id, attempt_no=attempt_no, at=now, ok=bool(result.ok),
                                status_code=result.status_code, provider_code=code,
                                error=result.error, latency_ms=result.latency_ms))
    alert.attempts = attempt_no
    alert.claim_token = None
    if result.ok:
        alert.status = "sent"
        alert.sent_at = now
        alert.first_sent_at = alert.first_sent_at or worded_at or now
        alert.last_error = None
    elif result.retryable and attempt_no < policy.max_attempts:
        alert.status = "pending"
        alert.next_attempt_at = base + max(backoff(attempt_no), retry_after)
        alert.last_error = result.error
    else:
        alert.status = "dead"
        alert.last_error = result.error
        audit(session, "dispatch_alerts", "dead_letter", "alert", alert.id,
              {"attempts": attempt_no, "channel": alert.channel}, at=now)
    return alert.status


def escalation_due(session: Session, *, now: datetime, policy: DispatchPolicy) -> list[tuple[str, int, set[str]]]:
    """Critical flags whose alerts nobody acknowledged within the escalation time (超时未响应).

    Returns ``(flag_id, current_level, already_alerted_cadre_ids)``. The clock of each step
    starts when its alerts went out (or died): a step is never skipped for being queued."""
    rows = session.execute(select(Alert.flag_id, Alert.recipient_id, Alert.escalation_level, Alert.status,
                                  Alert.first_sent_at, Alert.created_at, Alert.acked_at)
                           .join(RiskFlag, RiskFlag.id == Alert.flag_id)
                           .where(Alert.severity == "critical", RiskFlag.status == "open")).all()
    by_flag: dict[str, list] = {}
    for r in rows:
        by_flag.setdefault(r.flag_id, []).append(r)
    due = []
    cutoff = now - policy.escalate_after
    for flag_id, alerts in sorted(by_flag.items()):
        level = max(a.escalation_level for a in alerts)
        step = [a for a in alerts if a.escalation_level == level]
        # answered at this step; an answer below it that asked for escalation (需上报处理, which
        # keeps the flag open) queued this step, whose own clock now runs
        if level >= 2 or any(a.acked_at is not None for a in step):
            continue
        started = [a.first_sent_at or (a.created_at if a.status == "dead" else None) for a in step]
        if any(t is None for t in started):
            continue  # this step's alerts are still on their way
        if max(started) <= cutoff:
            due.append((flag_id, level, {a.recipient_id for a in alerts if a.recipient_id}))
    return due


def escalation_targets(session: Session, flag_id: str, level: int, alerted: set[str], *, now: datetime,
                       override: bool = False) -> tuple[int, list[Cadre]]:
    """Who is told next: the village chair (村/社区妇联主席) if she has not been yet, then the
    township federation (vice chairs covering the township) or, failing that, a supervisor.

    As in routing (``dispatch_alerts.route_flag``), a cadre on leave on ``now``'s date or without
    a channel (unless ``override``: every message goes to the one webhook) is passed over: the
    step goes to whoever can answer, not to an inbox nobody reads for the next half hour."""
    from sibifang.dispatch_alerts import _on_leave

    flag = session.get(RiskFlag, flag_id)
    hh = session.get(Household, flag.household_id)
    grid = session.get(Area, hh.grid_id)
    village = session.get(Area, grid.parent_id) if grid and grid.parent_id else None
    today = now.date()
    cadres = [c for c in session.scalars(select(Cadre).where(Cadre.role.in_(("village_chair", "supervisor",
                                                                             "vice_chair")))
                                         .order_by(Cadre.id)).all()
              if c.id not in alerted and (override or (c.alert_channel and c.alert_address))
              and not _on_leave({"on_leave_from": c.on_leave_from, "on_leave_until": c.on_leave_until}, today)]
    if level == 0 and village is not None:
        village_grids = set(session.scalars(select(Area.id).where(Area.parent_id == village.id)))
        chairs = [c for c in cadres if c.role == "village_chair" and set(c.grid_ids) & village_grids]
        if chairs:
            return 1, chairs
    township_grids: set[str] = set()
    if village is not None and village.parent_id:
        villages = list(session.scalars(select(Area.id).where(Area.parent_id == village.parent_id)))
        township_grids = set(session.scalars(select(Area.id).where(Area.parent_id.in_(villages))))
    near = [c for c in cadres if c.role in ("vice_chair", "supervisor") and set(c.grid_ids) & township_grids]
    if near:
        return 2, near
    return 2, [c for c in cadres if c.role == "supervisor"][:1]


def queue_escalation(session: Session, flag: RiskFlag, level: int, alerted: set[str], *, now: datetime,
                     policy: DispatchPolicy, why: str = "unanswered") -> list[str]:
    """Queue the flag's alerts one step up (``escalation_targets``), titled 【升级】; returns the
    ids of the alerts inserted (none twice: keyed by flag, cadre and level). The caller holds the
    flag's lock (``lock_flag``). ``why``: ``unanswered`` (no acknowledgement in time) or
    ``requested`` (a cadre it reached answered 需上报处理). Nobody left to tell (everyone alerted
    already, on leave or without a channel): recorded once (``record_escalation_exhausted``), the
    flag stays open, and a later run escalates it if someone has become available."""
    from sibifang.dispatch_alerts import Recipient, render_alert

    new_level, targets = escalation_targets(session, flag.id, level, alerted, now=now,
                                            override=bool(policy.override_webhook))
    household = household_context(session, [flag.household_id]).get(flag.household_id)
    if household is None:
        return []
    if not targets:
        record_escalation_exhausted(session, flag, level, now=now, why=why)
        return []
    fdict = flag_payload(flag)
    rows = []
    for c in targets:
        dedup = f"{flag.dedup_key}|{c.id}|L{new_level}"
        aid = stable_id("A", dedup, length=12)
        overridden = bool(policy.override_webhook)
        rcpt = Recipient(c.id, c.name, c.role, "webhook" if overridden else (c.alert_channel or "webhook"),
                         policy.override_webhook if overridden else (c.alert_address or ""),
                         f"escalation_level_{new_level}", overridden)
        msg = render_alert(fdict, household, rcpt, ACK_URL_SLOT, alert_id=aid, now=now,  # signed at send time
                           link_length=ack_link_length(policy, aid, c.id, now))
        rows.append({"id": aid, "dedup_key": dedup, "flag_id": flag.id, "recipient_id": c.id,
                     "recipient_role": c.role, "channel": rcpt.channel, "address": stored_address(rcpt),
                     "severity": flag.severity, "title": "【升级】" + msg.title,
                     "body": msg.markdown or msg.text, "status": "pending", "attempts": 0,
                     "escalation_level": new_level, "created_at": now, "next_attempt_at": now})
    stored = set(session.scalars(select(Alert.id).where(Alert.id.in_([r["id"] for r in rows]))))
    rows = [r for r in rows if r["id"] not in stored]
    if rows:
        insert_alerts(session, rows)
        audit(session, "dispatch_alerts", "escalate", "risk_flag", flag.id,
              {"level": new_level, "to": [r["recipient_id"] for r in rows], "why": why}, at=now)
    return [r["id"] for r in rows]


def record_escalation_exhausted(session: Session, flag: RiskFlag, level: int, *, now: datetime,
                                why: str = "unanswered") -> bool:
    """Record once that the flag's escalation from step ``level`` found no one left to tell: an
    audit entry (``escalation_exhausted``, counted in the summary report) and a warning without
    personal data. A re-run (or an overlapping one: the caller holds the flag's lock) records
    nothing twice; returns whether it recorded now. The flag is left open."""
    import logging

    seen = session.scalars(select(AuditEvent.detail).where(
        AuditEvent.entity == "risk_flag", AuditEvent.entity_id == flag.id,
        AuditEvent.action == ESCALATION_EXHAUSTED)).all()
    if any((d or {}).get("level") == level for d in seen):
        return False
    audit(session, "dispatch_alerts", ESCALATION_EXHAUSTED, "risk_flag", flag.id,
          {"level": level, "why": why, "severity": flag.severity}, at=now)
    logging.getLogger(__name__).warning(
        "escalation (%s) of a %s flag from step %d found no one left to tell (all alerted, on leave or "
        "without a channel): the flag stays open; recorded once for the supervisor", why, flag.severity, level)
    return True
