"""A ``now`` given with its time zone (a supervisor's ISO time with +00:00, Prefect's scheduled
time) is the same moment as the naive Asia/Shanghai time the database stores."""

from __future__ import annotations

from datetime import timedelta, timezone

from sqlalchemy import select

import tasks.dispatch_alerts  # noqa: F401 - Prefect sets up logging on import
from schemas.models import Alert, RiskFlag
from sibifang.db import session_scope
from sibifang.settings import LOCAL_TZ
from tests.http_receiver import HttpReceiver, verify_generic
from tests.test_outbox import NOW, _use_webhook, outbox_db  # noqa: F401 - the fixture

UTC_NOW = NOW.replace(tzinfo=LOCAL_TZ).astimezone(timezone.utc)  # 02:00+00:00, the same moment as NOW


def test_the_dispatch_flow_given_a_utc_now_acts_at_the_same_local_moment(prefect_harness, outbox_db, monkeypatch):  # noqa: F811
    """The flags were detected five minutes before NOW (local): a run at NOW given in UTC must
    queue and deliver them, stamped with NOW's local time, and escalate nothing yet; and a re-run
    with the same moment in local time changes nothing."""
    from flows.dispatch_alerts import dispatch_alerts

    monkeypatch.setenv("SIBIFANG_DATABASE_URL", outbox_db)
    with HttpReceiver(verifier=verify_generic("s3cret")) as rx:
        _use_webhook(monkeypatch, rx.url)
        out = dispatch_alerts.fn(UTC_NOW)
        again = dispatch_alerts.fn(NOW)
        received = len(rx.accepted())
    with session_scope(outbox_db) as s:
        alerts = s.scalars(select(Alert)).all()
        flags = s.scalars(select(RiskFlag)).all()
    assert out["queued"] == len(alerts) >= len(flags)
    assert {a.created_at for a in alerts} == {NOW} and {a.sent_at for a in alerts} == {NOW}
    assert {a.status for a in alerts} == {"sent"} and received == len(alerts)
    assert out["escalated"] == 0
    assert again["queued"] == again["escalated"] == again["sent"] == 0


def test_escalation_and_acknowledgement_given_aware_moments_compare_in_local_time(outbox_db, monkeypatch):  # noqa: F811
    """Escalation 29 minutes after the send, given in UTC, is not yet due (it was 8 h late or
    early); an acknowledgement stamped with an aware moment is stored as local time."""
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver(verifier=verify_generic("s3cret")) as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(UTC_NOW, outbox_db)
        deliver(UTC_NOW, outbox_db, clock=lambda: NOW)
        assert escalate(UTC_NOW + timedelta(minutes=29), outbox_db) == 0
        assert escalate(UTC_NOW + timedelta(minutes=31), outbox_db) > 0
    with session_scope(outbox_db) as s:
        aid = s.scalars(select(Alert.id).where(Alert.flag_id == "F001")).first()
    acknowledge(aid, actor="GW1", at=UTC_NOW + timedelta(minutes=40), database_url=outbox_db)
    with session_scope(outbox_db) as s:
        a = s.get(Alert, aid)
        assert a.acked_at == NOW + timedelta(minutes=40)
