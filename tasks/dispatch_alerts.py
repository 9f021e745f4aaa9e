"""Tasks of the alert dispatch stage: enqueue, deliver a batch, escalate the unanswered."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from sibifang.dispatch_alerts import stored_moment
from sibifang.outbox import flag_payload
from sibifang.settings import local_now
from tasks.common import run_logger


# Signals for the household's risk level, the visit plan and the supervisor, not a knock on the
# door: overdue visits and difficulties left unresolved; and 'low' findings are recorded only.
NO_ALERT_KINDS = ("overdue_visit", "unresolved_difficulty")


def dispatch_policy():
    from sibifang.outbox import DispatchPolicy

    return DispatchPolicy.from_settings()


def check_settings(database_url: str | None = None) -> None:
    """What dispatch checks before it starts (``outbox.check_ack_base_url``, for the links of the
    cadres alerted by SMS): an error logged on the run, naming the setting, for the operator to
    fix once. Dispatch goes on: the alerts on other channels (WeCom, DingTalk, a webhook) must not
    wait for an SMS setting, and the SMS alerts that cannot hold their link are dead-lettered with
    the reason, for a person to pass on (and for the escalation of a critical one to go on)."""
    from sibifang.db import session_scope
    from sibifang.outbox import check_ack_base_url, sms_recipient_ids
    from sibifang.settings import get_settings

    s = get_settings()
    try:
        with session_scope(database_url) as session:
            ids = sms_recipient_ids(session) or [""]
    except Exception as e:  # noqa: BLE001 - no registry yet (a first run): the shortest link
        # the class only: a database URL that cannot be parsed is echoed whole, password included
        run_logger().debug("SMS recipients not read (%s); the ack link is measured without a recipient",
                           type(e).__name__)
        ids = [""]
    try:
        check_ack_base_url(dispatch_policy(), sms_used=bool(s.sms_gateway_url) and not s.alert_webhook_url,
                           recipient_ids=ids)
    except ValueError as e:
        run_logger().error("%s; SMS alerts are dead-lettered (too_long) until it is fixed", e)


def _quiet(now: datetime) -> datetime | None:
    from sibifang.dispatch_alerts import in_quiet_hours, release_time

    # Stored times are naive local time (Asia/Shanghai), as everywhere in the database.
    return release_time(now).replace(tzinfo=None) if in_quiet_hours(now) else None


def enqueue(now: datetime, database_url: str | None = None) -> int:
    from schemas.models import Alert, RiskFlag
    from sibifang.db import session_scope
    from sibifang.dispatch_alerts import render_alert, route_flag
    from sibifang.outbox import enqueue_alerts

    now = stored_moment(now)
    policy = dispatch_policy()
    with session_scope(database_url) as s:
        has_alert = select(Alert.flag_id)
        # New flags, and older ones still going on; a finding of weeks ago is for the visit plan
        # and the report, not for a knock on the door tonight.
        recent = now - timedelta(hours=48)
        flags = s.scalars(select(RiskFlag).where(
            RiskFlag.status == "open", RiskFlag.id.not_in(has_alert), RiskFlag.detected_at <= now,
            RiskFlag.kind.not_in(NO_ALERT_KINDS), RiskFlag.severity != "low",
            (RiskFlag.detected_at >= recent) | (RiskFlag.meter_id.is_not(None) & RiskFlag.end.is_(None)))
            .order_by(RiskFlag.detected_at, RiskFlag.id)).all()
        return enqueue_alerts(s, [flag_payload(f) for f in flags], now=now, policy=policy, route=route_flag,
                              render=render_alert, quiet=_quiet)


_CHANNELS: dict = {}


def robot_secret(kind: str, address: str, settings) -> str | None:
    """The signing secret of one group robot, from ``SIBIFANG_ROBOT_SECRETS`` (never the database)."""
    import json

    if kind not in ("dingtalk", "feishu") or settings.robot_secrets is None:
        return None
    try:
        table = json.loads(settings.robot_secrets.get_secret_value())
    except json.JSONDecodeError:
        raise ValueError("SIBIFANG_ROBOT_SECRETS is not valid JSON") from None  # the value stays unprinted
    return table.get(address)


def _channel(kind: str, address: str, policy):
    """One adapter per address, kept for the process: its rate limiter must see every send."""
    from sibifang.channels import channel_for
    from sibifang.settings import get_settings

    key = (kind, address)
    if key not in _CHANNELS:
        s = get_settings()
        secret = robot_secret(kind, address, s) or {
            "webhook": policy.override_secret or (s.alert_webhook_secret.get_secret_value()
                                                  if s.alert_webhook_secret else None),
            "dingtalk": s.dingtalk_secret.get_secret_value() if s.dingtalk_secret else None,
            "feishu": s.feishu_secret.get_secret_value() if s.feishu_secret else None}.get(kind)
        opts = {"timeout": s.alert_timeout_seconds}
        if kind == "email":
            opts.update(host=s.smtp_host, port=s.smtp_port, sender=s.smtp_from)
        if kind == "sms":
            import json

            if not s.sms_gateway_url:
                raise ValueError("an SMS alert needs SIBIFANG_SMS_GATEWAY_URL")
            secret = s.sms_api_key.get_secret_value() if s.sms_api_key else None
            opts.update(url=s.sms_gateway_url, method=s.sms_method, body_template=json.loads(s.sms_body_template),
                        headers=json.loads(s.sms_headers), success_path=s.sms_success_path)
        _CHANNELS[key] = channel_for(kind, address, secret, rate_limited=s.rate_limits, **opts)
    return _CHANNELS[key]


# Group robots take 20 messages a minute and are read by people: non-critical alerts due for one
# robot at the same time go as one digest, most urgent first (critical ones always go alone).
DIGEST_CHANNELS = ("wecom", "dingtalk", "feishu")


def _digest_groups(session, alerts, policy, now: datetime, signed_at: datetime | None = None,
                   resumed: dict | None = None, replay: bool = False, worded: dict | None = None) -> dict:
    """``{(alert_id, ...): (channel, address, OutgoingMessage)}`` for robot digests of 2+ alerts.

    ``now`` words the digest (a replay's moment); each item's ack link is signed at ``signed_at``
    (the real clock of the send, default ``now``), as a single alert's is (``outbox.with_ack_link``),
    or, for an alert sent before by a dispatcher that died before recording it, at that send's
    (``resumed``, from ``outbox.claim_due``): the digest sent again is the same text.
    A digest longer than the robot takes (WeCom: 4096 bytes, about 15 items) is split, most urgent
    items first, so that no item and no ack link is cut off. ``worded`` (a dict, filled in): the
    moment each item's digest was worded at, which its first delivery is stamped with."""
    from schemas.models import RiskFlag
    from sibifang.dispatch_alerts import PendingAlert, Recipient, digest_order
    from sibifang.outbox import household_context, signed_ack_url

    if policy.override_webhook:
        return {}
    by_robot: dict = {}
    for a in alerts:
        if a.channel in DIGEST_CHANNELS and a.severity != "critical" and a.escalation_level == 0:
            by_robot.setdefault((a.channel, a.address or "", a.recipient_id), []).append(a)
    out = {}
    for (channel, address, rid), group in sorted(by_robot.items()):
        if len(group) < 2:
            continue
        # a digest sent before (``resumed``) is worded as then: its time phrases and deadlines
        # count from that send, the moment it was claimed on the wall clock (a ``replay`` words
        # at the moment it replays, which the claim's stamp is not)
        stamps = {(resumed or {}).get(a.id) for a in group}
        word_at = stamps.pop() if not replay and len(stamps) == 1 and None not in stamps else now
        if worded is not None:
            worded.update((a.id, word_at) for a in group)
        flags = {a.id: session.get(RiskFlag, a.flag_id) for a in group}
        ctx = household_context(session, sorted({f.household_id for f in flags.values()}))
        rcpt = Recipient(rid or "", "", group[0].recipient_role or "grid_worker", channel, address, "digest")
        pending = [PendingAlert(a.id, flag_payload(f), ctx.get(f.household_id, {}), rcpt,
                                signed_ack_url(policy, a.id, rid, (resumed or {}).get(a.id) or signed_at or now))
                   for a in group for f in [flags[a.id]]]
        for items, msg in _digest_parts(digest_order(pending), rcpt, channel, word_at):
            out[tuple(sorted(p.alert_id for p in items))] = (channel, address, msg)
    return out


def _digest_parts(items: list, rcpt, channel: str, now: datetime) -> list:
    """``[(items, OutgoingMessage)]``: ``items`` (in digest order) as one digest, or halved until
    each part goes whole over ``channel``; an item too long alone is fitted to it (``build_digest``)."""
    from sibifang.channels import sent_whole
    from sibifang.dispatch_alerts import build_digest

    msg = build_digest(items, rcpt, now=now)
    if msg is None:
        return []
    if len(items) == 1 or sent_whole(channel, msg):
        return [(items, msg)]
    half = len(items) // 2
    return _digest_parts(items[:half], rcpt, channel, now) + _digest_parts(items[half:], rcpt, channel, now)


def _add_job(jobs: dict, unusable: list, ids: tuple, channel: str, address: str | None, msg, policy) -> None:
    """Queue one send, or, when its channel cannot be built (no address, no SMS gateway, an alert
    for the override webhook whose setting is gone), a failed attempt that is not retried: one
    recipient's bad registry entry dead-letters her alert for the supervisor instead of stopping
    every delivery behind it. Where it goes is decided now (``outbox.send_target``)."""
    from sibifang.channels import DeliveryResult
    from sibifang.outbox import send_target

    try:
        jobs[ids] = (_channel(*send_target(channel, address, policy), policy), msg)
    except ValueError as e:
        result = DeliveryResult(ok=False, status_code=None, provider_code="config", error=str(e), retryable=False,
                                latency_ms=0.0)
        unusable.extend((aid, result) for aid in ids)


def batch_limit(settings) -> int:
    """How many alerts one claim takes: what the workers send in half a lease, each send taking
    the channel timeout (8 workers, 5 s, 5 min: 240), at most 500."""
    from sibifang.outbox import LEASE

    per_lease = settings.dispatch_workers * LEASE.total_seconds() / (2 * max(settings.alert_timeout_seconds, 0.1))
    return max(1, min(500, int(per_lease)))


def deliver(now: datetime | None = None, database_url: str | None = None, *, max_batches: int = 1000,
            clock=local_now, flush_every: int = 16) -> dict:
    """Send every due alert: claim a batch (committed), send it concurrently, record each attempt.

    Attempts are committed as they complete, a few at a time, so that a dispatcher killed
    mid-batch leaves at most the requests in flight plus one small group unrecorded: only those
    can reach a receiver twice (with the same ``dedup_key``) when the lease runs out.

    A claim never runs out while its alerts are being sent (else a second dispatcher claims and
    sends them again): a batch is sized to be sent in half a lease (``batch_limit``), a send
    only *starts* in the first half of the lease, and what has not started by then goes back to
    pending at once for a fresh claim; the other half is the margin of the sends in flight (150 s
    for a 5 s timeout by default). Each claim carries its own token: a result that comes back
    after all (a send hung past the lease) is dropped, not recorded over the new owner's. No
    lease renewal is needed. ``now`` (a replay) decides what is due; leases and backoff use
    ``clock``, the real one."""
    import uuid

    import requests

    from schemas.models import Alert
    from sibifang.channels import OutgoingMessage
    from sibifang.db import session_scope
    from sibifang.outbox import (LEASE, LOCAL_RATE_LIMIT, claim_due, record_attempt, release, with_ack_link,
                                 word_for_send)
    from sibifang.settings import get_settings

    now = stored_moment(now)
    policy = dispatch_policy()
    settings = get_settings()
    totals = {"attempted": 0, "sent": 0, "retry": 0, "dead": 0, "deferred": 0}
    http = requests.Session()
    limit = batch_limit(settings)

    worded: dict = {}  # alert id -> the moment its message was worded for (record_attempt)

    def flush(done: list, token: str) -> None:
        lost = 0
        with session_scope(database_url) as s:
            for alert_id, result in done:
                a = s.get(Alert, alert_id)
                status = record_attempt(s, a, result, now=now or clock(), policy=policy, token=token,
                                        real_now=clock(), worded_at=worded.pop(alert_id, None))
                if status == "lost":
                    lost += 1
                elif result.provider_code == LOCAL_RATE_LIMIT and not result.ok:
                    totals["deferred"] += 1
                else:
                    totals["attempted"] += 1
                    totals["sent" if status == "sent" else "dead" if status == "dead" else "retry"] += 1
        done.clear()
        if lost:
            run_logger().warning("%d alert(s) were claimed again by another dispatcher before their result "
                                 "was recorded: left to it", lost)

    with ThreadPoolExecutor(max_workers=settings.dispatch_workers) as pool:
        for _ in range(max_batches):
            at = now or clock()
            token = uuid.uuid4().hex
            with session_scope(database_url) as s:
                claimed_at = clock()
                resumed: dict = {}
                ids = claim_due(s, now=at, limit=limit, token=token, real_now=claimed_at, resumed=resumed)
                alerts = s.scalars(select(Alert).where(Alert.id.in_(ids))).all() if ids else []
                jobs = {}
                # ack links are signed now, on the real clock: they live from the send, even in a
                # replay of a past moment; the database holds only their slot
                # worded for the send: a replay at its moment, else the claim's, which the first
                # delivery is stamped with (the page's deadline and escalation count from it)
                word_at = at if now is not None else claimed_at
                digests = _digest_groups(s, alerts, policy, word_at, signed_at=claimed_at, resumed=resumed,
                                         replay=now is not None, worded=worded)
                grouped = {aid for ids in digests for aid in ids}
                unusable: list = []
                for ids, (channel, address, msg) in digests.items():
                    _add_job(jobs, unusable, ids, channel, address, msg, policy)
                for a in alerts:
                    if a.id in grouped:
                        continue
                    # Sent again after a dispatcher died between its send and its record: the link
                    # signed as then, so the resend is byte for byte the first (the receiver drops
                    # it by dedup_key; a person who got both sees one text, one link)
                    signed_at = resumed.get(a.id) or claimed_at
                    if a.id in resumed:
                        worded[a.id] = signed_at if now is None else at  # as stored at that claim
                    else:
                        # its deadline counts from this send, as its page and its escalation do
                        # (and it fits the link it goes with, the base URL lengthened since)
                        word_for_send(s, a, policy, now=word_at, signed_at=signed_at)
                        worded[a.id] = word_at
                    body = with_ack_link(a.body, a.id, a.recipient_id, policy, signed_at)
                    msg = OutgoingMessage(alert_id=a.id, dedup_key=a.dedup_key, severity=a.severity, title=a.title,
                                          text=body, markdown=body)
                    # the override webhook, or the alert's own channel (send_target)
                    _add_job(jobs, unusable, (a.id,), a.channel, a.address, msg, policy)
            if unusable:
                flush(unusable, token)
            if not jobs:
                if unusable:
                    continue
                break
            start_by = claimed_at + LEASE / 2
            # Bounded in flight: what a crash can leave sent-but-unrecorded stays small.
            queue = list(jobs.items())
            in_flight: dict = {}
            done: list = []
            while queue or in_flight:
                while queue and len(in_flight) < 2 * settings.dispatch_workers:
                    if clock() >= start_by:
                        with session_scope(database_url) as s:
                            release(s, [aid for ids, _ in queue for aid in ids], token)
                        queue.clear()
                        break
                    aid, (ch, msg) = queue.pop(0)
                    in_flight[pool.submit(ch.send, msg, session=http)] = aid
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    result = fut.result()
                    done.extend((aid, result) for aid in in_flight.pop(fut))  # a digest answers for each
                if len(done) >= flush_every or not (queue or in_flight):
                    flush(done, token)
            if done:
                flush(done, token)
    if totals["dead"]:
        run_logger().warning("%d alert(s) dead-lettered: shown to the supervisor", totals["dead"])
    return totals


def escalate(now: datetime, database_url: str | None = None) -> int:
    """Unanswered critical flags go one step up: village chair, then the township federation."""
    from schemas.models import Alert
    from sibifang.db import session_scope
    from sibifang.outbox import answered, escalation_due, lock_flag, queue_escalation

    now = stored_moment(now)
    policy = dispatch_policy()
    created = 0
    with session_scope(database_url) as s:
        for flag_id, level, alerted in escalation_due(s, now=now, policy=policy):
            # Checked again under the flag's lock, in the transaction that inserts: an
            # acknowledgement committed since escalation_due read (it takes the same lock)
            # stops this step; one coming after waits for us and marks these alerts answered.
            flag = lock_flag(s, flag_id)
            answered_here = select(Alert.id).where(Alert.flag_id == flag_id, Alert.escalation_level >= level,
                                                   answered())
            if flag is None or s.scalar(answered_here.limit(1)):
                continue
            created += len(queue_escalation(s, flag, level, alerted, now=now, policy=policy))
    return created


@task(name="enqueue_alerts", cache_policy=NO_CACHE)
def enqueue_task(now: datetime, database_url: str | None = None) -> int:
    return enqueue(now, database_url)


@task(name="deliver_alerts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def deliver_task(now: datetime | None = None, database_url: str | None = None) -> dict:
    return deliver(now, database_url)


@task(name="escalate_unacknowledged", cache_policy=NO_CACHE)
def escalate_task(now: datetime, database_url: str | None = None) -> int:
    return escalate(now, database_url)
