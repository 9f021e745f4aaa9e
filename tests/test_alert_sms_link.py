"""The start-of-dispatch check of SIBIFANG_ACK_BASE_URL and what SMS alerts then do, against a
real local SMS gateway: the check errs exactly when some SMS alert cannot carry its link."""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

import tasks.dispatch_alerts  # noqa: F401 - Prefect sets up logging on import: before caplog's handler
from schemas.models import Alert, AuditEvent, Cadre, DeliveryAttempt, RiskFlag
from sibifang.channels import TOO_LONG
from sibifang.db import session_scope
from tests.http_receiver import HttpReceiver
from tests.test_outbox import NOW, _use_ack_key, outbox_db  # noqa: F401 - the fixture


def test_the_start_check_errs_exactly_when_an_sms_alert_would_be_refused(outbox_db, monkeypatch, caplog):  # noqa: F811
    """The check measured the shortest link an alert can have (an empty recipient id) while each
    real alert's link carries its recipient's id: with a base URL a few characters short of the
    check's limit (about 100 characters), the check passed in silence and every masked SMS alert
    was refused at send time (too_long) and dead-lettered one by one. For base URLs around the
    limit, the check's error and the alerts refused must go together."""
    from sibifang.settings import reset_settings
    import tasks.dispatch_alerts as td
    from tasks.dispatch_alerts import check_settings, deliver, enqueue

    with session_scope(outbox_db) as s:
        keep = ("F000", "F001", "F005")  # critical (plain), high masked, critical masked
        for f in s.scalars(select(RiskFlag)):
            if f.id not in keep:
                f.status = "closed"
        s.get(RiskFlag, "F001").kind = "domestic_violence"
        s.get(RiskFlag, "F005").kind = "self_harm"
        for cid in ("GW1", "GW2", "VC1"):
            c = s.get(Cadre, cid)
            c.alert_channel, c.alert_address = "sms", "13800000000"
    verdicts = {}
    with HttpReceiver(flavor="sms") as rx:
        monkeypatch.setenv("SIBIFANG_DATABASE_URL", outbox_db)
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        monkeypatch.setenv("SIBIFANG_SMS_BODY_TEMPLATE", '{"to": "{phone}", "content": "{text}"}')
        monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
        for n in range(92, 114):
            base = "https://a.example.cn/" + "p" * (n - len("https://a.example.cn/"))
            with session_scope(outbox_db) as s:
                for model in (DeliveryAttempt, AuditEvent, Alert):
                    s.execute(delete(model))
            _use_ack_key(monkeypatch, base)
            reset_settings()
            td._CHANNELS.clear()
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                check_settings()
            erred = any("SIBIFANG_ACK_BASE_URL" in r.getMessage() for r in caplog.records
                        if r.levelno >= logging.ERROR)
            assert enqueue(NOW, outbox_db) == 5
            deliver(NOW, outbox_db)
            with session_scope(outbox_db) as s:
                refused = s.scalars(select(Alert.id).join(DeliveryAttempt).where(
                    DeliveryAttempt.provider_code == TOO_LONG)).all()
                sent = s.scalars(select(Alert.id).where(Alert.status == "sent")).all()
            verdicts[n] = (erred, bool(refused), len(sent))
    assert {n: v for n, v in verdicts.items() if v[0] != v[1]} == {}  # the check and the sends agree
    assert {v[0] for v in verdicts.values()} == {False, True}  # the limit lies in the range
    assert all(v[2] == 5 for v in verdicts.values() if not v[0])  # check passed: every alert went
