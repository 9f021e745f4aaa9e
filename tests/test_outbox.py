"""The alert outbox against a real local receiver: delivered once, retried, dead-lettered, escalated."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

import tasks.dispatch_alerts  # noqa: F401 - Prefect sets up logging on import: before caplog's handler, not over it
from schemas.models import Alert, Area, Cadre, DeliveryAttempt, Household, RiskFlag
from sibifang.db import count, migrate, session_scope, upsert
from tests.http_receiver import HttpReceiver, verify_generic

NOW = datetime(2026, 11, 20, 10, 0)


@pytest.fixture
def outbox_db(database_url, monkeypatch):
    """A village with two grids, grid workers, a chair, a supervisor and some open flags."""
    from sibifang.settings import reset_settings

    for k in ("SIBIFANG_ALERT_WEBHOOK_URL", "SIBIFANG_ALERT_WEBHOOK_SECRET"):
        monkeypatch.delenv(k, raising=False)
    reset_settings()
    migrate(database_url)
    with session_scope(database_url) as s:
        upsert(s, Area, [
            {"id": "C1", "level": "city", "name": "甬江市", "parent_id": None, "village_kind": None},
            {"id": "D1", "level": "district", "name": "鄞东区", "parent_id": "C1", "village_kind": None},
            {"id": "T1", "level": "township", "name": "东湖街道", "parent_id": "D1", "village_kind": None},
            {"id": "V1", "level": "village", "name": "万堤村", "parent_id": "T1", "village_kind": "村"},
            {"id": "G1", "level": "grid", "name": "万堤村第1网格", "parent_id": "V1", "village_kind": None},
            {"id": "G2", "level": "grid", "name": "万堤村第2网格", "parent_id": "V1", "village_kind": None},
        ], key=["id"])
        s.add_all([
            Cadre(id="GW1", name="陈丽", role="grid_worker", grid_ids=["G1"], alert_channel="webhook",
                  alert_address="http://127.0.0.1:9/unused"),
            Cadre(id="GW2", name="周敏", role="grid_worker", grid_ids=["G2"], alert_channel="webhook",
                  alert_address="http://127.0.0.1:9/unused"),
            Cadre(id="VC1", name="王秀英", role="village_chair", grid_ids=["G1", "G2"], alert_channel="webhook",
                  alert_address="http://127.0.0.1:9/unused"),
            Cadre(id="SV1", name="徐红", role="supervisor", grid_ids=["G1", "G2"], alert_channel="webhook",
                  alert_address="http://127.0.0.1:9/unused"),
        ])
        for i in range(40):
            s.add(Household(id=f"H{i:03d}", head_name=f"李{i}英", grid_id="G1" if i % 2 else "G2",
                            address=f"万堤村{i}号", categories=["empty_nest"], birth_year=1940, sex="F",
                            id_number="330203194001011234"))
        s.flush()
        for i in range(40):
            s.add(RiskFlag(id=f"F{i:03d}", dedup_key=f"meter|M{i}|inactivity|2026-11-20T0{i % 9}:00",
                           household_id=f"H{i:03d}", meter_id=f"M{i}", kind="inactivity",
                           severity="critical" if i % 5 == 0 else "high", score=5.0,
                           start=NOW - timedelta(hours=10), detected_at=NOW - timedelta(minutes=5),
                           evidence="从昨晚8点起用电接近停止，平时此时段约0.30千瓦时/小时",
                           details={"expected_kwh_per_h": 0.3, "observed_kwh_per_h": 0.02}, status="open"))
    return database_url


def _use_webhook(monkeypatch, url, secret="s3cret"):
    from sibifang.settings import reset_settings
    import tasks.dispatch_alerts as td

    monkeypatch.setenv("SIBIFANG_ALERT_WEBHOOK_URL", url)
    monkeypatch.setenv("SIBIFANG_ALERT_WEBHOOK_SECRET", secret)
    monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
    reset_settings()
    td._CHANNELS.clear()


def _drain(url, start=NOW, rounds=60, step=timedelta(minutes=2)):
    from tasks.dispatch_alerts import deliver

    t = start
    for _ in range(rounds):
        deliver(t, url, clock=lambda t=t: t)  # the simulated moment is the real clock too (backoff, leases)
        with session_scope(url) as s:
            if count(s, Alert, Alert.status.in_(("pending", "sending"))) == 0:
                return t
        t += step
    return t


def test_flaky_receiver_gets_every_alert_exactly_once(outbox_db, monkeypatch):
    from tasks.dispatch_alerts import enqueue

    with HttpReceiver(fail_fraction=0.3, seed=7, down_first_requests=25,
                      verifier=verify_generic("s3cret")) as rx:
        _use_webhook(monkeypatch, rx.url)
        queued = enqueue(NOW, outbox_db)
        assert queued >= 40  # one per flag, plus the chair for critical ones
        assert enqueue(NOW, outbox_db) == 0  # a re-run inserts nothing ...
        assert count_alerts(outbox_db) == queued  # ... and the outbox holds exactly the first run's alerts
        _drain(outbox_db)
        accepted = [r.json["dedup_key"] for r in rx.accepted()]
    assert len(accepted) == len(set(accepted)) == count_alerts(outbox_db)
    with session_scope(outbox_db) as s:
        assert count(s, Alert, Alert.status != "sent") == 0
        assert count(s, DeliveryAttempt) > count(s, Alert)  # retries were needed and recorded
        assert count(s, DeliveryAttempt, DeliveryAttempt.ok.is_(False)) >= 25


def count_alerts(url):
    with session_scope(url) as s:
        return count(s, Alert)


def test_messages_carry_no_id_numbers(outbox_db, monkeypatch):
    from tasks.dispatch_alerts import enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        _drain(outbox_db)
        bodies = [r.body.decode("utf-8") for r in rx.accepted()]
    assert bodies and not any("330203194001011234" in b for b in bodies)
    assert any("用电" in b for b in bodies)


def test_permanent_failures_are_dead_lettered_after_one_try(outbox_db, monkeypatch):
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver(fixed_response=(400, {"error": "bad payload"})) as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        assert count(s, Alert, Alert.status == "dead") == count(s, Alert)
        assert count(s, DeliveryAttempt) == count(s, Alert)


def test_retries_stop_at_the_limit(outbox_db, monkeypatch):
    from tasks.dispatch_alerts import enqueue

    monkeypatch.setenv("SIBIFANG_ALERT_MAX_ATTEMPTS", "3")
    with HttpReceiver(fixed_response=(503, {"error": "down"})) as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        _drain(outbox_db, rounds=20, step=timedelta(minutes=10))
    with session_scope(outbox_db) as s:
        alerts = s.scalars(select(Alert)).all()
        assert {a.status for a in alerts} == {"dead"}
        assert {a.attempts for a in alerts} == {3}


def test_two_overlapping_dispatchers_never_send_twice(outbox_db, monkeypatch):
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver(response_delay=0.01) as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        threads = [threading.Thread(target=deliver, args=(NOW, outbox_db)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        keys = [r.json["dedup_key"] for r in rx.accepted()]
    assert len(keys) == len(set(keys)) == count_alerts(outbox_db)


def test_unacknowledged_critical_alert_escalates_once_per_level(outbox_db, monkeypatch):
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        assert escalate(NOW + timedelta(minutes=10), outbox_db) == 0  # not yet
        with session_scope(outbox_db) as s:
            # acknowledge one critical flag's alert: that one must not escalate
            a = s.scalars(select(Alert).where(Alert.flag_id == "F005")).first()
        acknowledge(a.id, actor="GW1", at=NOW + timedelta(minutes=5), database_url=outbox_db)
        first = escalate(NOW + timedelta(minutes=31), outbox_db)
        again = escalate(NOW + timedelta(minutes=32), outbox_db)  # the next step waits its own 30 min
        deliver(NOW + timedelta(minutes=32), outbox_db)
        second = escalate(NOW + timedelta(minutes=63), outbox_db)
        third = escalate(NOW + timedelta(minutes=200), outbox_db)
    with session_scope(outbox_db) as s:
        esc = s.scalars(select(Alert).where(Alert.escalation_level > 0)).all()
        critical_flags = {f"F{i:03d}" for i in range(0, 40, 5)}
        # The chair got critical alerts at once, so the one step left is the township level; then it stops.
        assert first > 0 and again == 0 and second == 0 and third == 0
        assert {e.flag_id for e in esc} == critical_flags - {"F005"}
        assert {e.escalation_level for e in esc} == {2}
        assert {e.recipient_id for e in esc} == {"SV1"}
        assert all(e.title.startswith("【升级】") for e in esc)


def test_quiet_hours_hold_non_critical_alerts_until_morning(outbox_db, monkeypatch):
    from tasks.dispatch_alerts import deliver, enqueue

    late = datetime(2026, 11, 20, 23, 0)
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(late, outbox_db)
        deliver(late, outbox_db)
        sent_at_night = {r.json["severity"] for r in rx.accepted()}
        deliver(datetime(2026, 11, 21, 7, 1), outbox_db)
        total = len(rx.accepted())
    assert sent_at_night == {"critical"}
    assert total == count_alerts(outbox_db)


def test_acknowledge_with_outcome_closes_the_flag(outbox_db, monkeypatch):
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        a = s.scalars(select(Alert).where(Alert.flag_id == "F001")).first()
    acknowledge(a.id, actor="GW1", at=NOW, database_url=outbox_db)
    with session_scope(outbox_db) as s:
        assert s.get(RiskFlag, "F001").status == "acknowledged"  # no outcome yet: still open
    acknowledge(a.id, actor="GW1", outcome="visited_all_well", at=NOW, database_url=outbox_db)
    with session_scope(outbox_db) as s:
        assert s.get(RiskFlag, "F001").status == "closed"


def _send_over_own_channels(url, monkeypatch, rx, channel, address_of):
    """The people of the village on their own channel (no webhook override): enqueue and deliver."""
    from sibifang.settings import reset_settings
    import tasks.dispatch_alerts as td
    from tasks.dispatch_alerts import deliver, enqueue

    with session_scope(url) as s:
        for cid in ("GW1", "GW2", "VC1"):
            c = s.get(Cadre, cid)
            c.alert_channel, c.alert_address = channel, address_of(cid)
    monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
    reset_settings()
    td._CHANNELS.clear()
    enqueue(NOW, url)
    deliver(NOW, url)
    return [r.json for r in rx.accepted()]


def test_non_critical_alerts_to_a_group_robot_go_as_one_digest(outbox_db, monkeypatch):
    """WeCom takes 20 messages a minute: a grid worker's non-critical alerts go as one digest,
    critical ones on their own; each alert is marked sent. A digest longer than WeCom's 4096 bytes
    would be cut, its last items and their ack links lost: it goes as a few, each whole."""

    with HttpReceiver(flavor="wecom") as rx:
        bodies = _send_over_own_channels(outbox_db, monkeypatch, rx, "wecom",
                                         lambda cid: f"{rx.url}/cgi-bin/webhook/send?key={cid}")
    with session_scope(outbox_db) as s:
        n_alerts = count(s, Alert)
        assert count(s, Alert, Alert.status == "sent") == n_alerts
        n_critical = count(s, Alert, Alert.severity == "critical")
        n_high = {rid: count(s, Alert, Alert.severity == "high", Alert.recipient_id == rid) for rid in ("GW1", "GW2")}
    assert n_high == {"GW1": 16, "GW2": 16}
    contents = [b["markdown"]["content"] for b in bodies]
    digests = [c for c in contents if "待处理提醒" in c]
    # a few digests per grid worker for her 16 high alerts, plus every critical alert alone
    assert len(bodies) == n_critical + len(digests) and 2 <= len(digests) <= 8
    assert all(len(c.encode("utf-8")) <= 4096 and not c.endswith("…") for c in contents)
    items = [line for c in digests for line in c.splitlines() if "[确认](" in line]
    assert len(items) == 32 and len({_links(line)[0] for line in items}) == 32  # each item whole, with its link
    assert not any("330203194001011234" in c for c in contents)


def test_sms_alerts_go_through_the_configured_gateway(outbox_db, monkeypatch):

    with HttpReceiver(flavor="sms") as rx:
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        monkeypatch.setenv("SIBIFANG_SMS_BODY_TEMPLATE", '{"to": "{phone}", "content": "{text}", "key": "{secret}"}')
        monkeypatch.setenv("SIBIFANG_SMS_API_KEY", "sms-key-123")
        bodies = _send_over_own_channels(outbox_db, monkeypatch, rx, "sms", lambda cid: "13800000000")
    with session_scope(outbox_db) as s:
        assert count(s, Alert, Alert.status == "sent") == count(s, Alert) == len(bodies)
    assert {b["to"] for b in bodies} == {"13800000000"} and all(b["key"] == "sms-key-123" for b in bodies)
    assert not any("330203194001011234" in b["content"] for b in bodies)


@pytest.mark.slow
def test_a_dispatcher_killed_mid_run_loses_nothing(tmp_path, monkeypatch):
    """SIGKILL in the middle of a batch, restart after the claim lease: every alert delivered;
    only requests in flight at the kill can reach the receiver twice, with the same dedup_key."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_dispatch import CHILD, ROOT, build_db, configure

    for key in ("SIBIFANG_DATABASE_URL", "SIBIFANG_ALERT_WEBHOOK_URL", "SIBIFANG_ALERT_WEBHOOK_SECRET",
                "SIBIFANG_RATE_LIMITS", "SIBIFANG_ALERT_MAX_ATTEMPTS"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # so that monkeypatch restores them
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    n = 300
    build_db(url, n)
    with HttpReceiver(response_delay=0.01) as rx:
        configure(url, rx.url)
        from tasks.dispatch_alerts import enqueue

        enqueue(NOW, url)
        proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), now=NOW.isoformat(), url=url)],
                                env=dict(os.environ), cwd=ROOT)
        deadline = time.time() + 60
        while len(rx.requests) < n // 3 and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Leases run on the real clock: let the killed run's lease run out. (Row by row: SQLite
        # has no datetime arithmetic, SQL's "- interval" stored a number, not a time.)
        with session_scope(url) as s:
            for a in s.scalars(select(Alert).where(Alert.status == "sending")):
                a.next_attempt_at -= timedelta(minutes=6)
        later = NOW + timedelta(minutes=6)
        subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), now=later.isoformat(), url=url)],
                       env=dict(os.environ), cwd=ROOT, check=True, timeout=120)
        # A request cut off by the kill arrives with a truncated body: not a delivery.
        keys = [r.json["dedup_key"] for r in rx.accepted() if r.json is not None]
    from sibifang.settings import reset_settings

    reset_settings()
    with session_scope(url) as s:
        assert count(s, Alert, Alert.status == "sent") == n
    assert len(set(keys)) == n
    assert len(keys) - n <= 2 * 8 + 16  # in flight (2 × workers) plus one unflushed group at most


def test_each_dingtalk_robot_signs_with_its_own_secret(monkeypatch):
    """Secrets come from the environment per robot; a robot not listed uses the single one."""
    import json

    import tasks.dispatch_alerts as td
    from sibifang.channels import OutgoingMessage
    from sibifang.outbox import DispatchPolicy
    from sibifang.settings import get_settings, reset_settings
    from tests.http_receiver import verify_dingtalk

    secrets = {"AAA": "SECa-robot-one", "BBB": "SECb-robot-two", "CCC": "SECdefault-single"}
    with HttpReceiver("dingtalk", verifier=verify_dingtalk("AAA", secrets["AAA"])) as ra, \
            HttpReceiver("dingtalk", verifier=verify_dingtalk("BBB", secrets["BBB"])) as rb, \
            HttpReceiver("dingtalk", verifier=verify_dingtalk("CCC", secrets["CCC"])) as rc:
        urls = {tok: f"{rx.url}/robot/send?access_token={tok}" for tok, rx in (("AAA", ra), ("BBB", rb), ("CCC", rc))}
        # AAA and BBB are listed with their own secrets; CCC is not: it falls back to SIBIFANG_DINGTALK_SECRET.
        monkeypatch.setenv("SIBIFANG_ROBOT_SECRETS", json.dumps({urls["AAA"]: secrets["AAA"],
                                                                 urls["BBB"]: secrets["BBB"]}))
        monkeypatch.setenv("SIBIFANG_DINGTALK_SECRET", secrets["CCC"])
        monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
        reset_settings()
        td._CHANNELS.clear()
        try:
            s = get_settings()
            assert td.robot_secret("dingtalk", urls["AAA"], s) == secrets["AAA"]
            assert td.robot_secret("dingtalk", urls["CCC"], s) is None  # not listed
            assert secrets["AAA"] not in repr(s) and secrets["CCC"] not in repr(s)  # SecretStr: never in logs
            results = {tok: td._channel("dingtalk", url, DispatchPolicy()).send(
                OutgoingMessage(alert_id=f"AL-{tok}", dedup_key=f"F-{tok}:GW1", severity="high",
                                title="用电异常", text="用电接近停止"))
                for tok, url in urls.items()}
        finally:
            td._CHANNELS.clear()
            reset_settings()
    for tok, rx in (("AAA", ra), ("BBB", rb), ("CCC", rc)):
        assert results[tok].ok, (tok, results[tok])
        assert len(rx.requests) == 1 and len(rx.accepted()) == 1, tok
    # Each signature verifies with its robot's secret only, not with another robot's.
    for tok, rx in (("AAA", ra), ("BBB", rb), ("CCC", rc)):
        for other, secret in secrets.items():
            verdict = verify_dingtalk(tok, secret)(rx.requests[0])
            assert (verdict is None) == (other == tok), (tok, other, verdict)


# --------------------------------------------------------------------------- the override webhook's token

ROBOT_KEY = "wk-7f3a9c2e51d84b60aa19"


def _key_checked(secret: str):
    """The generic contract's signature, and the robot key in the query: proves the real URL was used."""
    signed = verify_generic(secret)

    def check(rec):
        if rec.query.get("key") != [ROBOT_KEY]:
            return 403, "wrong or missing key"
        return signed(rec)

    return check


def _everything_stored(url) -> str:
    """Every text the database holds about alerts, attempts and audit events, as one string."""
    import json

    from schemas.models import AuditEvent

    with session_scope(url) as s:
        parts = [repr((a.channel, a.address, a.last_error, a.title, a.body)) for a in s.scalars(select(Alert))]
        parts += [repr((d.error, d.provider_code)) for d in s.scalars(select(DeliveryAttempt))]
        parts += [json.dumps([e.action, e.entity_id, e.detail], ensure_ascii=False, default=str)
                  for e in s.scalars(select(AuditEvent))]
    return "\n".join(parts)


def test_override_webhook_token_is_never_stored_or_logged_and_still_delivered(outbox_db, monkeypatch, caplog):
    """The override URL carries a robot key: the outbox stores a marker, the sender resolves the
    real URL from the settings at send time, through retries, a new process and escalation."""
    import logging

    import tasks.dispatch_alerts as td
    from sibifang.outbox import DispatchPolicy
    from sibifang.settings import reset_settings
    from tasks.dispatch_alerts import enqueue, escalate

    caplog.set_level(logging.DEBUG)
    with HttpReceiver(down_first_requests=12, verifier=_key_checked("s3cret")) as rx:
        hook = f"{rx.url}/cgi-bin/webhook/send?key={ROBOT_KEY}"
        _use_webhook(monkeypatch, hook)
        queued = enqueue(NOW, outbox_db)
        assert ROBOT_KEY not in repr(DispatchPolicy.from_settings())
        # the next run is another process with the same settings
        reset_settings()
        td._CHANNELS.clear()
        _drain(outbox_db)  # the first 12 requests fail: retried
        later = NOW + timedelta(minutes=45)  # 30 min after the retried ones went out too
        escalated = escalate(later, outbox_db)
        _drain(outbox_db, start=later)
        keys = [r.json["dedup_key"] for r in rx.accepted()]
    assert queued > 0 and escalated > 0
    assert len(keys) == len(set(keys)) == count_alerts(outbox_db)
    with session_scope(outbox_db) as s:
        assert count(s, Alert, Alert.status != "sent") == 0
        assert count(s, DeliveryAttempt, DeliveryAttempt.ok.is_(False)) >= 12
        addresses = set(s.scalars(select(Alert.address)))
    stored = _everything_stored(outbox_db)
    assert ROBOT_KEY not in stored and "key=" not in stored
    assert all(a and "127.0.0.1" in a for a in addresses)  # still says where it went, host only
    assert ROBOT_KEY not in caplog.text


def test_override_webhook_gone_at_send_time_dead_letters_the_alerts(outbox_db, monkeypatch, caplog):
    """Queued for the override webhook, sent after the setting was removed: nothing goes anywhere,
    each alert is dead-lettered with a reason naming the missing setting."""
    import tasks.dispatch_alerts as td
    from sibifang.settings import reset_settings
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, f"{rx.url}/cgi-bin/webhook/send?key={ROBOT_KEY}")
        queued = enqueue(NOW, outbox_db)
        monkeypatch.delenv("SIBIFANG_ALERT_WEBHOOK_URL")
        reset_settings()
        td._CHANNELS.clear()
        totals = deliver(NOW, outbox_db)
        deliver(NOW + timedelta(hours=1), outbox_db)  # a re-run sends nothing either
        received = len(rx.requests)
    assert queued > 0 and received == 0
    assert totals["dead"] == queued
    with session_scope(outbox_db) as s:
        alerts = s.scalars(select(Alert)).all()
        assert {a.status for a in alerts} == {"dead"}
        assert all("SIBIFANG_ALERT_WEBHOOK_URL" in (a.last_error or "") for a in alerts)
    assert ROBOT_KEY not in _everything_stored(outbox_db) and ROBOT_KEY not in caplog.text


# --------------------------------------------------------------------------- escalation with nobody left


def test_escalation_with_nobody_left_is_recorded_once_and_reported(outbox_db, monkeypatch, caplog):
    """The grid workers and the chair got the critical alerts and the supervisor is on leave: the
    step up finds no one. Recorded once per flag (audit, a warning without names), shown as a count
    in the summary report; the flag stays open and escalates once someone is back."""
    import logging
    from datetime import date

    from schemas.models import AuditEvent
    from sibifang.summary_report import render_report
    from tasks.dispatch_alerts import deliver, enqueue, escalate
    from tasks.summary_report import gather_aggregates

    with session_scope(outbox_db) as s:
        s.get(Cadre, "SV1").on_leave_from = NOW.date() - timedelta(days=1)
    critical = {f"F{i:03d}" for i in range(0, 40, 5)}
    caplog.set_level(logging.WARNING)
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        runs = [escalate(NOW + timedelta(minutes=m), outbox_db) for m in (31, 45, 90)]
        exhausted_logs = [r for r in caplog.records if "no one left" in r.getMessage()]
        with session_scope(outbox_db) as s:
            events = s.scalars(select(AuditEvent).where(AuditEvent.action == "escalation_exhausted")).all()
            recorded = sorted((e.entity, e.entity_id, e.detail["level"]) for e in events)
            assert {f.status for f in s.scalars(select(RiskFlag).where(RiskFlag.id.in_(critical)))} == {"open"}
            s.get(Cadre, "SV1").on_leave_from = None  # back from leave
        back = escalate(NOW + timedelta(minutes=120), outbox_db)
    assert runs == [0, 0, 0]
    assert recorded == sorted(("risk_flag", f, 0) for f in critical)  # once each, whatever the re-runs
    assert len(exhausted_logs) == len(critical)
    text = "\n".join(r.getMessage() for r in exhausted_logs)
    assert not any(x in text for x in ("徐红", "陈丽", "周敏", "王秀英", "李", "H0", "F0", "SV1"))
    assert back == len(critical)  # the flags were kept open: the step is taken once she can answer
    day = NOW.date()
    gathered = gather_aggregates.fn(day, day, outbox_db)
    assert gathered["aggregates"]["flags_escalation_exhausted"] == len(critical)
    html = render_report(gathered["aggregates"], risk_map_svg_text="<svg></svg>")
    assert f"本期有 {len(critical)} 条风险预警无人响应" in html
    # another period does not count them
    assert gather_aggregates.fn(date(2026, 10, 1), date(2026, 10, 31), outbox_db)["aggregates"][
        "flags_escalation_exhausted"] == 0


# --------------------------------------------------------------------------- ack links signed at send time

ACK_KEY = "ack-links-test-key-of-32-chars!!"
LINK = re.compile(r"/ack\?t=([A-Za-z0-9_\-.%]+)")


def _ack_site(monkeypatch, url):
    """The ack page (``sibifang serve``) over real HTTP, and the settings that make links point at it."""
    from sibifang.ack_server import make_ack_server
    from sibifang.settings import reset_settings

    srv = make_ack_server(port=0, database_url=url, secret=ACK_KEY)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    monkeypatch.setenv("SIBIFANG_ACK_SECRET", ACK_KEY)
    monkeypatch.setenv("SIBIFANG_ACK_BASE_URL", base)
    reset_settings()
    return srv, base


def _links(text: str) -> list[str]:
    from urllib.parse import unquote

    return [unquote(t) for t in LINK.findall(text)]


def _received_texts(rx) -> list[str]:
    """What each accepted request carried, as the receiver saw it (JSON unescaped)."""
    import json

    return [json.dumps(r.json, ensure_ascii=False) if r.json is not None else r.body.decode("utf-8")
            for r in rx.accepted()]


def _mail_texts(smtp) -> list[str]:
    import email
    import email.policy

    out = []
    for m in smtp.messages:
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        out.append("\n".join(p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"))
    return out


@pytest.mark.parametrize("channel", ["webhook", "wecom", "dingtalk", "feishu", "sms", "email"])
def test_no_ack_token_is_stored_and_every_sent_link_opens_the_alert(outbox_db, monkeypatch, channel):
    """A signed ack link lets its holder acknowledge or close a flag (and so stop its escalation):
    the outbox stores the body with a slot for it, the sender signs the link as the alert goes out.
    Over every channel (single alerts, digests, masked SMS), each alert reaches its recipient with
    a link the ack page opens, and nothing in the database is a token the page accepts."""
    import requests

    from sibifang.acknowledge import alert_for_link
    from sibifang.ack_tokens import verify_ack_token
    from tests.http_receiver import SmtpReceiver

    srv, base = _ack_site(monkeypatch, outbox_db)
    smtp = SmtpReceiver().start() if channel == "email" else None
    try:
        with HttpReceiver(flavor={"webhook": "generic", "email": "generic"}.get(channel, channel)) as rx:
            if channel == "sms":
                monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
                monkeypatch.setenv("SIBIFANG_SMS_BODY_TEMPLATE", '{"to": "{phone}", "content": "{text}"}')
            if channel == "email":
                monkeypatch.setenv("SIBIFANG_SMTP_HOST", "127.0.0.1")
                monkeypatch.setenv("SIBIFANG_SMTP_PORT", str(smtp.port))
            # a sensitive flag too: its group-robot and SMS messages are the masked ones
            with session_scope(outbox_db) as s:
                s.get(RiskFlag, "F001").kind = "domestic_violence"
            address = {"sms": lambda cid: "13800000000", "email": lambda cid: f"{cid.lower()}@example.org"}.get(
                channel, lambda cid: f"{rx.url}/robot/send?key={cid}")
            _send_over_own_channels(outbox_db, monkeypatch, rx, channel, address)
            texts = _mail_texts(smtp) if smtp else _received_texts(rx)
    finally:
        if smtp:
            smtp.stop()
    stored = _everything_stored(outbox_db)
    with session_scope(outbox_db) as s:
        alerts = {a.id: (a.recipient_id, a.status) for a in s.scalars(select(Alert))}
    try:
        assert alerts and {st for _, st in alerts.values()} == {"sent"}
        assert "/ack?t=" not in stored and not _links(stored)
        linked = {}
        for text in texts:
            assert "ack_url" not in text  # no slot left unfilled
            for tok in _links(text):
                claims = verify_ack_token(tok, ACK_KEY, NOW)
                linked[claims.alert_id] = (claims.recipient_id, tok)
        assert set(linked) == set(alerts)  # every alert went out with its own link ...
        assert all(linked[a][0] == alerts[a][0] for a in alerts)  # ... for its own recipient
        for aid, (_, tok) in sorted(linked.items())[:3]:
            assert alert_for_link(tok, secret=ACK_KEY, now=NOW, database_url=outbox_db)["alert_id"] == aid
            page = requests.get(f"{base}/ack", params={"t": tok}, timeout=5)
            assert page.status_code == 200 and "万堤村" in page.text
    finally:
        srv.shutdown()
        srv.server_close()


def test_ack_link_is_signed_at_each_send_and_lives_from_it(outbox_db, monkeypatch):
    """An alert held over quiet hours, or retried, carries a link signed when it goes out: it is
    valid for the whole lifetime from that send, and a retry's link works too."""
    from sibifang.ack_tokens import verify_ack_token
    from sibifang.settings import LOCAL_TZ
    from tasks.dispatch_alerts import enqueue

    srv, _ = _ack_site(monkeypatch, outbox_db)
    late, morning = datetime(2026, 11, 20, 23, 0), datetime(2026, 11, 21, 7, 1)
    try:
        with HttpReceiver(down_first_requests=6, verifier=verify_generic("s3cret")) as rx:
            _use_webhook(monkeypatch, rx.url)
            enqueue_n = enqueue(late, outbox_db)
            _drain(outbox_db, start=morning)
            sent = [(r.json["dedup_key"], r.answered_status, r.json["markdown"]) for r in rx.requests]
    finally:
        srv.shutdown()
        srv.server_close()
    with session_scope(outbox_db) as s:
        by_dedup = {a.dedup_key: a for a in s.scalars(select(Alert))}
        s.expunge_all()
    assert enqueue_n == len(by_dedup) and {a.status for a in by_dedup.values()} == {"sent"}
    failed = [x for x in sent if x[1] != 200]
    assert len(failed) == 6  # the first sends failed and were retried
    issued: dict[str, list] = {}
    for dedup, status, text in sent:
        a = by_dedup[dedup]
        (tok,) = _links(text)
        claims = verify_ack_token(tok, ACK_KEY, morning)
        assert (claims.alert_id, claims.recipient_id) == (a.id, a.recipient_id)
        issued.setdefault(dedup, []).append(claims.issued_at)
        if status == 200:
            # signed at the send that reached her (not at the enqueue the night before) ...
            assert claims.issued_at == a.sent_at.replace(tzinfo=LOCAL_TZ)
            # ... so it lasts its whole lifetime from that send
            verify_ack_token(tok, ACK_KEY, a.sent_at + timedelta(hours=72) - timedelta(minutes=1))
    retried = [v for d, v in issued.items() if len(v) > 1]
    assert retried and all(v == sorted(v) and v[0] < v[-1] for v in retried)  # each attempt signs anew


def test_alerts_stored_with_their_link_before_are_sent_as_stored(outbox_db, monkeypatch):
    """An outbox row written by an earlier version holds the whole body, link included (no slot):
    it is sent as it is."""
    from sibifang.ack_tokens import ack_url, make_ack_token
    from tasks.dispatch_alerts import deliver

    old_body = ("**【较急】李奶奶家用电异常**\n[收到请点此确认](" +
                ack_url("http://127.0.0.1:8765", make_ack_token("A-OLD", "GW1", ACK_KEY, 72, NOW)) + ")")
    with session_scope(outbox_db) as s:
        s.add(Alert(id="A-OLD", dedup_key="old|GW1|L0", flag_id="F001", recipient_id="GW1",
                    recipient_role="grid_worker", channel="webhook", address="http://127.0.0.1:9/unused",
                    severity="high", title="用电异常", body=old_body, status="pending", attempts=0,
                    escalation_level=0, created_at=NOW, next_attempt_at=NOW))
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        deliver(NOW, outbox_db)
        (got,) = [r.json for r in rx.accepted()]
    assert got["markdown"] == got["text"] == old_body


def test_an_id_number_run_into_a_phone_number_in_an_address_never_goes_out(outbox_db, monkeypatch):
    """Addresses copied with their spaces lost or typed with dots: the messages and the page behind
    the link hide the ID number and keep the phone number the grid worker may call."""
    import requests

    from sibifang.acknowledge import alert_for_link

    addresses = {"H001": "石溪镇万堤村6组19号 户主身份证 33020319400101123413800138000",
                 "H002": "石溪镇万堤村7组3号（身份证330203.19400101.1234，电话13800138000）"}
    with session_scope(outbox_db) as s:
        for hid, addr in addresses.items():
            s.get(Household, hid).address = addr
    srv, base = _ack_site(monkeypatch, outbox_db)
    try:
        with HttpReceiver() as rx:
            _use_webhook(monkeypatch, rx.url)
            tasks.dispatch_alerts.enqueue(NOW, outbox_db)
            tasks.dispatch_alerts.deliver(NOW, outbox_db)  # links signed on the real clock: the page opens them
            mine = [r.json for r in rx.accepted() if r.json["markdown"] and "石溪镇" in r.json["markdown"]]
        pages = [requests.get(f"{base}/ack", params={"t": _links(m["markdown"])[0]}, timeout=5).text for m in mine]
        page_ctx = [alert_for_link(_links(m["markdown"])[0], secret=ACK_KEY, database_url=outbox_db) for m in mine]
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(mine) >= 2
    texts = [m["markdown"] + m["text"] for m in mine] + pages + [c["address"] for c in page_ctx]
    for t in texts:
        assert "身份证号已隐去" in t and "13800138000" in t
        plain = "".join(c for c in t if c.isdigit() or c in "Xx")
        assert "330203194001011234" not in plain


def test_escalation_alerts_store_no_ack_token_and_go_out_with_a_working_link(outbox_db, monkeypatch):
    """The 【升级】 alerts queued one step up are stored with the link's slot too, and reach the
    township with a link the ack page opens (signed when they go out)."""
    import requests

    from sibifang.ack_tokens import verify_ack_token
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    srv, base = _ack_site(monkeypatch, outbox_db)
    try:
        with HttpReceiver() as rx:
            _use_webhook(monkeypatch, rx.url)
            enqueue(NOW, outbox_db)
            deliver(NOW, outbox_db)
            assert escalate(NOW + timedelta(minutes=31), outbox_db) > 0
            with session_scope(outbox_db) as s:
                stored = [a.body for a in s.scalars(select(Alert).where(Alert.escalation_level > 0))]
            deliver(NOW + timedelta(minutes=32), outbox_db)
            sent = [r.json for r in rx.accepted() if r.json["title"].startswith("【升级】")]
        with session_scope(outbox_db) as s:
            esc = {a.id: a.recipient_id for a in s.scalars(select(Alert).where(Alert.escalation_level > 0))}
        assert stored and not any("/ack?t=" in b for b in stored)
        assert len(sent) == len(esc)
        for m in sent:
            (tok,) = set(_links(m["markdown"]))
            claims = verify_ack_token(tok, ACK_KEY, NOW)
            assert esc[claims.alert_id] == claims.recipient_id == "SV1"
            assert requests.get(f"{base}/ack", params={"t": tok}, timeout=5).status_code == 200
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- messages never cut mid-item

# What each robot takes in one message (what the receivers of tests/http_receiver.py and the
# providers enforce), and where each puts the text we send.
ROBOT_LIMITS = {"wecom": 4096, "dingtalk": 18000, "feishu": 18000}
ROBOT_TEXT = {"wecom": lambda j: j["markdown"]["content"], "dingtalk": lambda j: j["markdown"]["text"],
              "feishu": lambda j: j["content"]["text"]}
# Evidence far longer than any robot takes (36,000 bytes), with an ID number in it.
LONG_EVIDENCE = ("从昨晚8点起用电接近停止（已10小时），平时此时段约0.30千瓦时/小时，现约0.02；"
                 "邻居说老人身份证330203194001011234放在家里，" + "按该户作息这样长的安静很少见，" * 700)


def _use_ack_key(monkeypatch, base: str | None = None) -> None:
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_ACK_SECRET", ACK_KEY)
    if base is not None:
        monkeypatch.setenv("SIBIFANG_ACK_BASE_URL", base)
    reset_settings()


@pytest.mark.parametrize("channel", ["wecom", "dingtalk", "feishu"])
def test_an_alert_longer_than_its_robot_takes_keeps_its_link_and_its_facts(outbox_db, monkeypatch, channel):
    """A critical alert whose evidence runs past what the robot takes was cut at the limit by the
    channel (its facts after the evidence and its ack link lost) and marked sent. Now its evidence
    gives way, visibly (…), and the header, the address, what to do, the deadline, the code and a
    link that opens the alert all arrive, within the limit."""
    from sibifang.ack_tokens import verify_ack_token
    from sibifang.dispatch_alerts import reference_code

    _use_ack_key(monkeypatch)
    with session_scope(outbox_db) as s:
        s.get(RiskFlag, "F000").evidence = LONG_EVIDENCE  # critical: sent alone, evidence and all
    with HttpReceiver(flavor=channel) as rx:
        bodies = _send_over_own_channels(outbox_db, monkeypatch, rx, channel,
                                         lambda cid: f"{rx.url}/robot/send?key={cid}")
    with session_scope(outbox_db) as s:
        assert {a.status for a in s.scalars(select(Alert))} == {"sent"}
        long_ones = {a.id for a in s.scalars(select(Alert).where(Alert.flag_id == "F000"))}
    texts = [ROBOT_TEXT[channel](b) for b in bodies]
    assert all(len(t.encode("utf-8")) <= ROBOT_LIMITS[channel] for t in texts)
    mine = {}
    for t in texts:
        for tok in _links(t):
            mine[verify_ack_token(tok, ACK_KEY, NOW).alert_id] = t
    assert len(long_ones) == 2 and long_ones <= set(mine)  # the grid worker's and the chair's, each linked
    for aid in long_ones:
        t = mine[aid]
        assert t.splitlines()[0].lstrip("# ").startswith("【紧急】")
        assert "依据：从昨晚8点起用电接近停止" in t and "…" in t  # the evidence shortened, visibly
        assert "地点：万堤村第2网格，万堤村0号" in t and "1小时内" in t and re.search("最晚：?11月20日", t)
        assert reference_code("F000") in t
        assert "330203194001011234" not in t


def test_a_long_sms_ack_base_url_never_cuts_the_link(outbox_db, monkeypatch):
    """The SMS body was cut to 300 characters after its link was put in: with an ack base URL of
    some 70 characters the link lost its end and could not be opened. Now the wording before the
    link gives way and the link arrives whole, for masked messages too."""
    from sibifang.ack_tokens import verify_ack_token

    base = "https://sibifang.fulian.example-county.gov.cn/grassroots-service/alerts-ack"
    _use_ack_key(monkeypatch, base)
    with HttpReceiver(flavor="sms") as rx:
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        monkeypatch.setenv("SIBIFANG_SMS_BODY_TEMPLATE", '{"to": "{phone}", "content": "{text}"}')
        with session_scope(outbox_db) as s:
            s.get(RiskFlag, "F001").kind = "domestic_violence"
        bodies = _send_over_own_channels(outbox_db, monkeypatch, rx, "sms", lambda cid: "13800000000")
    with session_scope(outbox_db) as s:
        alerts = {a.id for a in s.scalars(select(Alert).where(Alert.status == "sent"))}
        assert count(s, Alert) == len(alerts) == len(bodies)
    linked = set()
    for b in bodies:
        text = b["content"]
        assert len(text) <= 300 and "最晚" in text
        (tok,) = _links(text)
        assert text.endswith(f"{base}/ack?t={tok}")  # whole, at the end
        linked.add(verify_ack_token(tok, ACK_KEY, NOW).alert_id)
    assert linked == alerts


def test_an_sms_link_too_long_to_fit_is_dead_lettered_not_sent_broken(outbox_db, monkeypatch):
    """An ack base URL so long that the link alone does not fit in an SMS: nothing is sent (no
    broken link reaches anyone), each alert is dead-lettered at once with a reason naming the
    link and the setting, and a re-run sends nothing."""
    from tasks.dispatch_alerts import deliver

    _use_ack_key(monkeypatch, "https://sibifang.fulian.example-county.gov.cn/" + "grassroots/" * 15)
    with HttpReceiver(flavor="sms") as rx:
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        _send_over_own_channels(outbox_db, monkeypatch, rx, "sms", lambda cid: "13800000000")
        deliver(NOW + timedelta(hours=1), outbox_db)
        received = len(rx.requests)
    assert received == 0
    with session_scope(outbox_db) as s:
        alerts = s.scalars(select(Alert)).all()
        assert alerts and {a.status for a in alerts} == {"dead"} and {a.attempts for a in alerts} == {1}
        assert all("确认链接" in a.last_error and "SIBIFANG_ACK_BASE_URL" in a.last_error for a in alerts)


# --------------------------------------------------------------------------- columns fed from the registry

# Registry names as long as the areas table keeps them (128): a merged village's full name and a
# grid named after the streets it covers, not starting with the village's name.
LONG_VILLAGE = ("宁波市鄞东区东湖街道万堤新塘下应三村合并后组建的万堤社区股份经济合作社暨万堤社区居民委员会（原东湖乡"
                "万堤村、新塘村、下应村于二〇〇一年合并，二〇一九年撤村建居，社区党委、居委会、妇联、股份经济合作社、"
                "综治中心、新时代文明实践站合署办公）")
LONG_GRID = ("滨江北路一至一百二十八号、新塘老街东段、下应路西侧沿河住宅楼、万堤花园一期至三期及周边沿街商铺混合网格"
             "（含原新塘村第三、第四、第五村民小组，原下应村第一、第二村民小组，万堤工业区东区外来务工人员集中居住点"
             "及滨江公寓一号至六号楼、万堤幼儿园）第二责任片区")


def test_an_alert_titled_after_long_registry_names_is_queued_escalated_and_sent(outbox_db, monkeypatch):
    """A title is built from the village's and the grid's names: with names as long as the registry
    keeps them, a title ran past its 256-character column, which PostgreSQL refuses (SQLite keeps
    it): the whole run's alerts were lost, and the escalation too. Now the title is fitted to its
    column with a visible "…", its header first; the alerts are queued, escalated and sent."""
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    # 118 and 126 characters: the title's header and the two names come to 259 (263 escalated)
    assert len(LONG_VILLAGE) > 100 and len(LONG_GRID) > 100
    assert max(len(LONG_VILLAGE), len(LONG_GRID)) <= Area.__table__.c.name.type.length
    with session_scope(outbox_db) as s:
        s.get(Area, "V1").name = LONG_VILLAGE
        s.get(Area, "G2").name = LONG_GRID  # F000 (critical) is in G2
    limit = Alert.__table__.c.title.type.length
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        assert enqueue(NOW, outbox_db) > 0
        deliver(NOW, outbox_db)
        assert escalate(NOW + timedelta(minutes=31), outbox_db) > 0
        deliver(NOW + timedelta(minutes=32), outbox_db)
        sent = [r.json["title"] for r in rx.accepted()]
    with session_scope(outbox_db) as s:
        alerts = s.scalars(select(Alert).where(Alert.flag_id == "F000")).all()
        assert {a.status for a in s.scalars(select(Alert))} == {"sent"}
    titles = {a.escalation_level: a.title for a in alerts}
    assert set(titles) == {0, 2}
    assert titles[0].startswith("【紧急】长时间无用电活动 · ")
    assert titles[2].startswith("【升级】【紧急】长时间无用电活动 · ")
    for title in titles.values():
        assert len(title) == limit and title.endswith("…") and LONG_VILLAGE[:60] in title
    assert set(titles.values()) <= set(sent)


# --------------------------------------------------------------------------- the ack base URL, checked at the start

SMS_BREAKING_BASE = "https://sibifang.fulian.example-county.gov.cn/" + "grassroots/" * 15


def test_dispatch_logs_an_error_at_the_start_on_an_ack_base_url_no_sms_can_hold(outbox_db, monkeypatch, caplog):
    """An ack base URL too long for any SMS alert's link: every SMS alert was queued and then
    dead-lettered one by one, with nothing said up front. Now dispatch logs an error at its start
    naming SIBIFANG_ACK_BASE_URL and the SMS limit, and goes on (the other channels' alerts must
    not wait for an SMS setting); with no SMS gateway in use (none set, or the override webhook
    takes every message) it is a warning."""
    import logging

    from flows.dispatch_alerts import dispatch_alerts
    from sibifang.settings import reset_settings
    from tasks.dispatch_alerts import check_settings

    _use_ack_key(monkeypatch, SMS_BREAKING_BASE)
    monkeypatch.setenv("SIBIFANG_DATABASE_URL", outbox_db)
    monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", "http://127.0.0.1:9/sms/send")
    reset_settings()
    with caplog.at_level(logging.ERROR):
        dispatch_alerts.fn(NOW)
    assert [r for r in caplog.records if r.levelno == logging.ERROR
            and re.search(r"SIBIFANG_ACK_BASE_URL .*SMS limit of 300 characters", r.getMessage())]
    assert count_alerts(outbox_db) > 0  # queued all the same
    for env in ({"SIBIFANG_SMS_GATEWAY_URL": None}, {"SIBIFANG_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook"}):
        for k, v in env.items():
            monkeypatch.delenv(k) if v is None else monkeypatch.setenv(k, v)
        reset_settings()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sibifang.outbox"):
            check_settings()
        assert [r.getMessage() for r in caplog.records if "SIBIFANG_ACK_BASE_URL" in r.getMessage()]
    _use_ack_key(monkeypatch, "https://sibifang.fulian.example-county.gov.cn/ack")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sibifang.outbox"):
        check_settings()
    assert not [r for r in caplog.records if "SIBIFANG_ACK_BASE_URL" in r.getMessage()]


def test_the_start_check_refuses_exactly_the_base_urls_no_sms_alert_fits_with():
    """The check and the render agree: with the longest base URL the check lets through, a plain
    and a masked SMS alert (the shortest link, a December 31 deadline) are fitted and go whole; one
    character more and one of them cannot be fitted (it would be dead-lettered too_long)."""
    from sibifang.channels import fits
    from sibifang.dispatch_alerts import Recipient, render_alert
    from sibifang.outbox import ACK_URL_SLOT, DispatchPolicy, ack_link_length, check_ack_base_url, with_ack_link
    from sibifang.records import stable_id

    at = datetime(2026, 12, 31, 10, 0)
    household = {"household_id": "H1", "head_name": "李秀英", "address": "万堤村0号", "grid_id": "G1",
                 "grid_name": "万堤村第1网格", "village_name": "万堤村", "birth_year": 1940, "sex": "F"}
    sms = Recipient("", "徐红", "village_chair", "sms", "13800000000", "critical")

    def sent_whole(base: str) -> bool:
        policy = DispatchPolicy(ack_base_url=base, ack_secret=ACK_KEY)
        aid = stable_id("A", base, length=12)
        ok = True
        for kind in ("inactivity", "domestic_violence"):
            flag = {"flag_id": "F1", "dedup_key": "k", "household_id": "H1", "kind": kind, "severity": "critical",
                    "start": at - timedelta(hours=14), "detected_at": at, "evidence": "用电接近停止"}
            body = render_alert(flag, household, sms, ACK_URL_SLOT, alert_id=aid, now=at,
                                link_length=ack_link_length(policy, aid, "", at)).text
            ok = ok and fits("sms", with_ack_link(body, aid, "", policy, at))
        return ok

    def passes(base: str) -> bool:
        try:
            check_ack_base_url(DispatchPolicy(ack_base_url=base, ack_secret=ACK_KEY), sms_used=True)
        except ValueError:
            return False
        return True

    bases = ["https://a.example.cn/" + "p" * n for n in range(0, 260)]
    longest = max(i for i, b in enumerate(bases) if passes(b))
    assert 0 < longest < len(bases) - 1 and not passes(bases[longest + 1])
    assert sent_whole(bases[longest]) and not sent_whole(bases[longest + 1])


def test_sms_alerts_queued_before_the_ack_base_url_grew_are_worded_again_not_dead_lettered(outbox_db,
                                                                                             monkeypatch):
    """An SMS alert is fitted, when queued, to the link of that day's SIBIFANG_ACK_BASE_URL. The
    base URL lengthened while alerts waited (held over quiet hours): each was refused at send
    time (too_long) and dead-lettered, though a shorter wording would have fitted. Now one that no
    longer fits is worded again for today's link when it goes, once; the alerts sent before keep
    their stored message, and nothing is sent twice."""
    from sibifang.ack_tokens import verify_ack_token
    from sibifang.outbox import ACK_URL_SLOT
    from sibifang.settings import reset_settings
    import tasks.dispatch_alerts as td
    from tasks.dispatch_alerts import deliver, enqueue

    night = datetime(2026, 11, 20, 23, 0)  # quiet hours: the 'high' alerts wait for the morning
    morning = datetime(2026, 11, 21, 7, 0)
    long_base = "https://sibifang.fulian.example-county.gov.cn/grassroots-service/acknowledgements/links"
    _use_ack_key(monkeypatch, "https://fl.example.cn")
    with HttpReceiver(flavor="sms") as rx:
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        monkeypatch.setenv("SIBIFANG_SMS_BODY_TEMPLATE", '{"to": "{phone}", "content": "{text}"}')
        monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
        with session_scope(outbox_db) as s:
            for cid in ("GW1", "GW2", "VC1"):
                c = s.get(Cadre, cid)
                c.alert_channel, c.alert_address = "sms", "13800000000"
        reset_settings()
        td._CHANNELS.clear()
        enqueue(night, outbox_db)
        deliver(night, outbox_db, clock=lambda: night)
        with session_scope(outbox_db) as s:
            first = {a.id: a.body for a in s.scalars(select(Alert).where(Alert.status == "sent"))}
            held = {a.id for a in s.scalars(select(Alert).where(Alert.status == "pending"))}
        _use_ack_key(monkeypatch, long_base)  # lengthened overnight
        td._CHANNELS.clear()
        deliver(morning, outbox_db, clock=lambda: morning)
        deliver(morning + timedelta(hours=1), outbox_db, clock=lambda: morning + timedelta(hours=1))
        texts = [r.json["content"] for r in rx.accepted()]
    assert first and held
    with session_scope(outbox_db) as s:
        alerts = {a.id: a for a in s.scalars(select(Alert))}
        assert {a.status for a in alerts.values()} == {"sent"}
        assert {a.attempts for a in alerts.values()} == {1}
        assert {aid: alerts[aid].body for aid in first} == first  # sent before: stored message unchanged
        assert all(ACK_URL_SLOT in alerts[aid].body and "/ack?t=" not in alerts[aid].body for aid in held)
    assert len(texts) == len(alerts)
    linked = []
    for text in texts:
        assert len(text) <= 300 and "最晚" in text
        (tok,) = _links(text)
        linked.append(verify_ack_token(tok, ACK_KEY, morning).alert_id)
        if linked[-1] in held:
            assert text.endswith(f"{long_base}/ack?t={tok}")
    assert sorted(linked) == sorted(alerts)


@pytest.mark.parametrize("base", ["http://127.0.0.1:8765", "https://fl.example.cn/sibifang/"])
def test_the_ack_link_length_computed_without_signing_is_the_signed_links(base):
    """Queueing leaves room for each alert's link without signing one (``ack_link_length``): its
    length, computed from the token's layout, is the length of every link signed for that alert
    (any key, any send), for ids of any length and script, any lifetime, naive and aware times."""
    from zoneinfo import ZoneInfo

    from sibifang.outbox import DispatchPolicy, ack_link_length, signed_ack_url
    from sibifang.records import stable_id

    recipients = ["GW1", "", None, "网格员-陈丽-07", 'q"uo\\te', "C" * 64]
    times = [NOW, datetime(2026, 12, 31, 23, 59, 59), datetime(2026, 11, 20, 2, 0, tzinfo=ZoneInfo("UTC"))]
    checked = 0
    for ttl in (timedelta(hours=1), timedelta(hours=72), timedelta(days=400)):
        for key in (ACK_KEY, "another-key-of-at-least-16"):
            policy = DispatchPolicy(ack_base_url=base, ack_secret=key, ack_ttl=ttl)
            for i, rid in enumerate(recipients):
                aid = stable_id("A", f"flag-{i}|{rid}", length=12)
                for at in times:
                    assert ack_link_length(policy, aid, rid, at) == len(signed_ack_url(policy, aid, rid, at))
                    checked += 1
    assert checked == 3 * 2 * len(recipients) * len(times)


def test_a_gateway_refusal_code_longer_than_its_column_is_recorded_and_dead_lettered(outbox_db, monkeypatch):
    """An SMS gateway answers with its own codes (Tencent Cloud's run to 50 characters): one longer
    than the attempts' provider_code column (32) made PostgreSQL refuse the attempt's record, so
    the dispatcher failed and the alerts stayed claimed, to be sent again after the lease. Now
    the code is fitted to its column with "…" (the whole code is in the error), and each alert is
    recorded and dead-lettered once."""
    code = "FailedOperation.ContainSensitiveWord"  # 35 characters
    with HttpReceiver(fixed_response=(200, {"code": code, "message": "内容含敏感词"})) as rx:
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        _send_over_own_channels(outbox_db, monkeypatch, rx, "sms", lambda cid: "13800000000")
        sent = len(rx.requests)
    limit = DeliveryAttempt.__table__.c.provider_code.type.length
    with session_scope(outbox_db) as s:
        alerts = s.scalars(select(Alert)).all()
        attempts = s.scalars(select(DeliveryAttempt)).all()
        assert alerts and {a.status for a in alerts} == {"dead"} and {a.attempts for a in alerts} == {1}
        assert all(code in a.last_error for a in alerts)
        assert len(attempts) == len(alerts) == sent
        assert {t.provider_code for t in attempts} == {code[:limit - 1] + "…"}
