"""Resends after a crash between a send and its recording, against a real local receiver."""

from __future__ import annotations

from datetime import timedelta

import pytest

import tasks.dispatch_alerts  # noqa: F401 - Prefect sets up logging on import
from schemas.models import Cadre
from sibifang.db import session_scope
from tests.http_receiver import HttpReceiver
from tests.test_outbox import ACK_KEY, NOW, _use_ack_key, outbox_db  # noqa: F401 - the fixture

LONG_BASE = "https://sibifang.fulian.example-county.gov.cn/grassroots-service/acknowledgements/links"


class Crash(Exception):
    pass


def test_a_refitted_sms_resent_after_a_crash_is_byte_identical(outbox_db, monkeypatch):  # noqa: F811
    """The dispatcher sent a re-fitted SMS alert (the ack base URL grew while it waited) and died
    before recording it; after the lease the alert goes again. The grid worker must get the very
    same text twice (a receiver drops the repeat by its dedup_key; a person sees one message)."""
    from sibifang.settings import reset_settings
    import sibifang.outbox as outbox
    import tasks.dispatch_alerts as td
    from tasks.dispatch_alerts import deliver, enqueue

    _use_ack_key(monkeypatch, "https://fl.example.cn")
    with HttpReceiver(flavor="sms") as rx:
        monkeypatch.setenv("SIBIFANG_SMS_GATEWAY_URL", f"{rx.url}/sms/send")
        monkeypatch.setenv("SIBIFANG_SMS_BODY_TEMPLATE", '{"to": "{phone}", "content": "{text}", "id": "{dedup_key}"}')
        monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
        with session_scope(outbox_db) as s:
            for cid in ("GW1", "GW2", "VC1"):
                c = s.get(Cadre, cid)
                c.alert_channel, c.alert_address = "sms", "13800000000"
        reset_settings()
        td._CHANNELS.clear()
        enqueue(NOW, outbox_db)
        _use_ack_key(monkeypatch, LONG_BASE)
        td._CHANNELS.clear()

        def crash(*a, **k):
            raise Crash

        first = NOW + timedelta(minutes=1)
        with monkeypatch.context() as m:
            m.setattr(outbox, "record_attempt", crash)
            with pytest.raises(Crash):
                deliver(NOW, outbox_db, clock=lambda: first, flush_every=1000)
        sent_first = {r.json["id"]: r.json["content"] for r in rx.accepted()}
        assert sent_first
        later = first + timedelta(minutes=6)  # the lease ran out
        deliver(NOW + timedelta(minutes=7), outbox_db, clock=lambda: later)
        resent = [r.json for r in rx.accepted()][len(sent_first):]
    again = {r["id"]: r["content"] for r in resent if r["id"] in sent_first}
    assert set(again) == set(sent_first)
    assert again == sent_first


def test_robot_messages_resent_after_a_crash_are_byte_identical(outbox_db, monkeypatch):  # noqa: F811
    """The same over a WeCom robot: the digests of the non-critical alerts and the critical ones
    alone, sent, unrecorded (the dispatcher died), sent again after the lease: the same texts."""
    from sibifang.settings import reset_settings
    import sibifang.outbox as outbox
    import tasks.dispatch_alerts as td
    from tasks.dispatch_alerts import deliver, enqueue

    _use_ack_key(monkeypatch)
    with HttpReceiver(flavor="wecom") as rx:
        monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
        with session_scope(outbox_db) as s:
            for cid in ("GW1", "GW2", "VC1"):
                c = s.get(Cadre, cid)
                c.alert_channel, c.alert_address = "wecom", f"{rx.url}/cgi-bin/webhook/send?key={cid}"
        reset_settings()
        td._CHANNELS.clear()
        enqueue(NOW, outbox_db)

        def crash(*a, **k):
            raise Crash

        with monkeypatch.context() as m:
            m.setattr(outbox, "record_attempt", crash)
            with pytest.raises(Crash):
                deliver(None, outbox_db, clock=lambda: NOW, flush_every=1000)  # a run on the wall clock
        sent_first = sorted(r.json["markdown"]["content"] for r in rx.accepted())
        later = NOW + timedelta(minutes=6)  # the lease ran out
        deliver(None, outbox_db, clock=lambda: later)
        resent = sorted(r.json["markdown"]["content"] for r in rx.accepted()[len(sent_first):])
    assert any("待处理提醒" in c for c in sent_first)
    assert resent == sent_first
