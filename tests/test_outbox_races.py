"""Races of the outbox, both engines: nothing is sent for an answered flag, escalation never follows
an acknowledgement, a replay or a slow batch never takes over a live claim, overlapping notice runs
send each notice once, our own rate limiter never dead-letters an alert."""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import select

from schemas.models import Alert, DeliveryAttempt, Notice, RiskFlag
from sibifang.db import count, session_scope
from tests.http_receiver import HttpReceiver
from tests.test_outbox import NOW, _use_webhook, outbox_db  # noqa: F401  (fixture)


def _l0_alert(url, flag_id):
    with session_scope(url) as s:
        return s.scalar(select(Alert.id).where(Alert.flag_id == flag_id, Alert.escalation_level == 0)
                        .order_by(Alert.id).limit(1))


def test_an_escalation_queued_before_the_acknowledgement_is_not_sent(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        t1 = NOW + timedelta(minutes=31)
        assert escalate(t1, outbox_db) > 0  # queued for F000, F005, ...
        acknowledge(_l0_alert(outbox_db, "F005"), actor="GW2", at=t1 + timedelta(seconds=5), database_url=outbox_db)
        before = len(rx.accepted())
        deliver(t1 + timedelta(seconds=10), outbox_db)
        got = {r.json["alert_id"] for r in rx.accepted()[before:]}
    with session_scope(outbox_db) as s:
        esc = {a.id: a for a in s.scalars(select(Alert).where(Alert.escalation_level > 0))}
    answered = [a for a in esc.values() if a.flag_id == "F005"]
    assert answered and all(a.status == "cancelled" and a.attempts == 0 for a in answered)
    assert got.isdisjoint(a.id for a in answered)
    assert got == {a.id for a in esc.values() if a.flag_id != "F005"}  # the others still go out


def test_an_alert_held_overnight_whose_flag_closed_is_not_sent(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue

    late = datetime(2026, 11, 20, 23, 0)
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(late, outbox_db)
        deliver(late, outbox_db)  # critical ones only; F001 (high) is held for the morning
        held = _l0_alert(outbox_db, "F001")
        # Someone saw Grandma Li at night (a call, another alert's visit) and closed the flag.
        acknowledge(held, actor="VC1", outcome="visited_all_well", at=late + timedelta(hours=1),
                    database_url=outbox_db)
        deliver(datetime(2026, 11, 21, 7, 1), outbox_db)
        got = {r.json["alert_id"] for r in rx.accepted()}
    with session_scope(outbox_db) as s:
        a = s.get(Alert, held)
        assert s.get(RiskFlag, "F001").status == "closed"
        assert a.status == "cancelled" and a.attempts == 0 and a.sent_at is None
        assert count(s, DeliveryAttempt, DeliveryAttempt.alert_id == held) == 0
        others = count(s, Alert, Alert.flag_id != "F001")
    assert held not in got and len(got) == others


def test_no_escalation_after_an_acknowledgement_that_lands_while_escalating(outbox_db, monkeypatch):  # noqa: F811
    """The acknowledgement commits after escalate() read what is due and before it inserts."""
    import sibifang.outbox as ob
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    t1 = NOW + timedelta(minutes=31)
    real_due = ob.escalation_due

    def due_then_acknowledged(session, **kw):
        due = real_due(session, **kw)
        assert "F000" in {d[0] for d in due}
        acknowledge(_l0_alert(outbox_db, "F000"), actor="GW2", at=t1, database_url=outbox_db)
        return due

    monkeypatch.setattr(ob, "escalation_due", due_then_acknowledged)
    assert escalate(t1, outbox_db) > 0  # the other critical flags do escalate
    with session_scope(outbox_db) as s:
        assert count(s, Alert, Alert.flag_id == "F000", Alert.escalation_level > 0) == 0
        assert count(s, Alert, Alert.flag_id == "F005", Alert.escalation_level > 0) > 0


def test_a_replay_of_a_past_moment_leaves_live_claims_and_backoff_on_the_real_clock(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.channels import DeliveryResult
    from sibifang.outbox import LEASE, DispatchPolicy, claim_due, record_attempt
    from sibifang.settings import local_now
    from tasks.dispatch_alerts import enqueue

    assert local_now() > NOW + 2 * LEASE  # NOW is a past moment: the replay's
    enqueue(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        replayed = claim_due(s, now=NOW)
    assert replayed
    with session_scope(outbox_db) as s:
        live = claim_due(s, now=local_now())  # the wall-clock dispatcher, a moment later
    assert live == []  # the replay's claims are fresh: claimed just now
    before = local_now()
    with session_scope(outbox_db) as s:
        a = s.get(Alert, replayed[0])
        failed = DeliveryResult(False, 503, None, "down", True, 1.0)
        assert record_attempt(s, a, failed, now=NOW, policy=DispatchPolicy()) == "pending"
        assert a.next_attempt_at >= before + timedelta(seconds=30)  # not in the past: no tight retry loop
        at = s.scalar(select(DeliveryAttempt.at).where(DeliveryAttempt.alert_id == a.id))
    assert at == NOW  # what happened is still told at the replayed moment


def test_a_claim_taken_over_after_its_lease_cannot_record(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.channels import DeliveryResult
    from sibifang.outbox import LEASE, DispatchPolicy, claim_due, record_attempt
    from tasks.dispatch_alerts import enqueue

    enqueue(NOW, outbox_db)
    t = NOW + timedelta(minutes=1)
    with session_scope(outbox_db) as s:
        first = claim_due(s, now=t, limit=1, token="a" * 32, real_now=t)
    with session_scope(outbox_db) as s:
        second = claim_due(s, now=t + LEASE, limit=500, token="b" * 32, real_now=t + LEASE)
    assert first[0] in second  # the lease ran out: claimed again
    ok = DeliveryResult(True, 200, None, None, False, 1.0)
    with session_scope(outbox_db) as s:
        assert record_attempt(s, s.get(Alert, first[0]), ok, now=t, policy=DispatchPolicy(), token="a" * 32,
                              real_now=t + LEASE) == "lost"
    with session_scope(outbox_db) as s:
        a = s.get(Alert, first[0])
        assert (a.status, a.claim_token, a.attempts) == ("sending", "b" * 32, 0)
        assert record_attempt(s, a, ok, now=t, policy=DispatchPolicy(), token="b" * 32, real_now=t + LEASE) == "sent"


def test_a_batch_slower_than_the_lease_is_never_sent_twice(outbox_db, monkeypatch):  # noqa: F811
    """One worker, 5 s timeout; each request takes 10 s of the (simulated) real clock, so the 48
    alerts take 8 min, longer than the 5 min lease. A second dispatcher runs all along."""
    from sibifang.settings import reset_settings
    from tasks.dispatch_alerts import batch_limit, deliver, enqueue

    monkeypatch.setenv("SIBIFANG_DISPATCH_WORKERS", "1")
    monkeypatch.setenv("SIBIFANG_ALERT_TIMEOUT_SECONDS", "5")
    with HttpReceiver(response_delay=0.01) as rx:
        _use_webhook(monkeypatch, rx.url)
        from sibifang.settings import get_settings

        assert batch_limit(get_settings()) == 30
        n = enqueue(NOW, outbox_db)

        def clock():
            return NOW + timedelta(seconds=10) * len(rx.requests)

        stop = threading.Event()
        errors: list = []

        def a():
            try:
                deliver(None, outbox_db, clock=clock)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            finally:
                stop.set()

        def b():
            try:
                while not stop.is_set():
                    deliver(None, outbox_db, clock=clock)
                    time.sleep(0.005)
                deliver(None, outbox_db, clock=clock)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        keys = [r.json["dedup_key"] for r in rx.accepted()]
    reset_settings()
    assert not errors
    assert len(keys) == len(set(keys)) == n
    with session_scope(outbox_db) as s:
        assert count(s, Alert, Alert.status == "sent") == n
        assert count(s, DeliveryAttempt) == n


def test_a_dispatcher_beaten_to_its_whole_batch_claims_again(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.outbox import claim_due
    from tasks.dispatch_alerts import enqueue

    if outbox_db.startswith("sqlite"):
        pytest.skip("SQLite: claim_due holds the write lock from its first statement, nobody claims in between")
    enqueue(NOW, outbox_db)

    class Beaten:
        """The session of a dispatcher that another one beats between its SELECT and its UPDATEs."""

        def __init__(self, s):
            self.s, self.first = s, True

        def __getattr__(self, k):
            return getattr(self.s, k)

        def scalars(self, stmt):
            ids = list(self.s.scalars(stmt))
            if self.first:
                self.first = False
                with session_scope(outbox_db) as other:
                    assert claim_due(other, now=NOW, limit=len(ids)) == ids
            return ids

    with session_scope(outbox_db) as s:
        mine = claim_due(Beaten(s), now=NOW, limit=10)
    with session_scope(outbox_db) as s:
        assert len(mine) == 10 and count(s, Alert, Alert.status == "sending") == 20


def test_two_overlapping_notice_runs_send_each_notice_once(database_url, own_channels):
    from sibifang.db import migrate
    from tasks.schedule_visits import send_notices

    migrate(database_url)
    day = date(2026, 11, 20)
    with HttpReceiver(response_delay=0.05) as rx:
        with session_scope(database_url) as s:
            for i in range(10):
                s.add(Notice(id=f"N{i}", recipient_id=f"K{i}", kind="daily_digest", day=day, channel="webhook",
                             address=rx.url + "/n", title="今日走访安排", body="今天请走访3户", status="pending",
                             attempts=0, created_at=datetime(2026, 11, 20, 7)))
        results: list = []
        go = threading.Barrier(2)

        def run():
            go.wait()
            results.append(send_notices.fn(day, database_url))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        ids = [r.json["alert_id"] for r in rx.accepted()]
    assert sorted(ids) == [f"N{i}" for i in range(10)]
    assert sum(r["notices_sent"] for r in results) == 10
    with session_scope(database_url) as s:
        assert set(s.scalars(select(Notice.status))) == {"sent"}
        assert set(s.scalars(select(Notice.attempts))) == {1}


def test_our_own_rate_limit_is_no_attempt_and_never_dead_letters(outbox_db):  # noqa: F811
    from sibifang.channels import DeliveryResult
    from sibifang.outbox import DispatchPolicy, claim_due, record_attempt
    from tasks.dispatch_alerts import enqueue

    enqueue(NOW, outbox_db)
    policy = DispatchPolicy(max_attempts=2)
    t = NOW
    with session_scope(outbox_db) as s:
        aid = claim_due(s, now=t, limit=1, real_now=t)[0]
    for _ in range(5):  # the robot is blocked locally for ten minutes, deferral after deferral
        with session_scope(outbox_db) as s:
            a = s.get(Alert, aid)
            deferred = DeliveryResult(False, None, "local_rate_limit", "已达到发送频率上限", True, 0.0, retry_after=600)
            assert record_attempt(s, a, deferred, now=t, policy=policy, real_now=t) == "pending"
            assert a.attempts == 0 and a.next_attempt_at == t + timedelta(seconds=600)
        with session_scope(outbox_db) as s:
            t = t + timedelta(seconds=600)
            assert aid in claim_due(s, now=t, limit=500, real_now=t)
    with session_scope(outbox_db) as s:
        assert count(s, DeliveryAttempt) == 0
        a = s.get(Alert, aid)
        # A provider's own Retry-After is honoured when longer than our backoff.
        busy = DeliveryResult(False, 429, "429", "too many", True, 3.0, retry_after=120)
        assert record_attempt(s, a, busy, now=t, policy=policy, real_now=t) == "pending"
        assert a.attempts == 1 and a.next_attempt_at == t + timedelta(seconds=120)
