"""One bad registry entry must not stop the others' messages; critical alerts go first; notices
are sent once even when a run fails part-way. Real local HTTP receivers, both engines."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select, update

from schemas.models import Alert, DeliveryAttempt, Notice
from sibifang.db import session_scope
from tests.http_receiver import HttpReceiver
from tests.test_outbox import NOW, outbox_db  # noqa: F401  (fixture)


def _own_channels(url, monkeypatch, address):
    from sibifang.settings import reset_settings
    import tasks.dispatch_alerts as td
    from schemas.models import Cadre

    for k in ("SIBIFANG_ALERT_WEBHOOK_URL", "SIBIFANG_ALERT_WEBHOOK_SECRET"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
    reset_settings()
    td._CHANNELS.clear()
    with session_scope(url) as s:
        for c in s.scalars(select(Cadre)):
            c.alert_channel, c.alert_address = "webhook", address


def test_an_alert_without_an_address_is_dead_lettered_and_the_rest_go_out(outbox_db, monkeypatch):  # noqa: F811
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _own_channels(outbox_db, monkeypatch, rx.url + "/hook")
        queued = enqueue(NOW, outbox_db)
        with session_scope(outbox_db) as s:
            # e.g. a chair whose channel was cleared in the registry after routing
            broken = s.scalars(select(Alert.id).order_by(Alert.id).limit(3)).all()
            s.execute(update(Alert).where(Alert.id.in_(broken)).values(address=None))
        totals = deliver(NOW, outbox_db)
        received = {r.json["alert_id"] for r in rx.accepted()}
    assert totals["dead"] == 3 and totals["sent"] == queued - 3
    assert received.isdisjoint(broken) and len(received) == queued - 3
    with session_scope(outbox_db) as s:
        for aid in broken:
            a = s.get(Alert, aid)
            assert a.status == "dead" and "缺少地址" in a.last_error and a.attempts == 1
        codes = set(s.scalars(select(DeliveryAttempt.provider_code).where(DeliveryAttempt.alert_id.in_(broken))))
    assert codes == {"config"}


def test_critical_alerts_are_claimed_first(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.outbox import claim_due
    from tasks.dispatch_alerts import enqueue

    with HttpReceiver() as rx:
        _own_channels(outbox_db, monkeypatch, rx.url + "/hook")
        enqueue(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        n_critical = len(s.scalars(select(Alert.id).where(Alert.severity == "critical")).all())
        first = claim_due(s, now=NOW, limit=n_critical)
        severities = {s.get(Alert, a).severity for a in first}
    assert n_critical > 0 and severities == {"critical"}


def test_notices_are_sent_once_when_one_of_them_cannot_be(database_url, own_channels):
    from sibifang.db import migrate
    from tasks.schedule_visits import send_notices

    migrate(database_url)
    day = date(2026, 11, 20)
    with HttpReceiver() as rx:
        with session_scope(database_url) as s:
            for i, addr in enumerate([rx.url + "/a", None, rx.url + "/b"]):  # the middle one has no address
                s.add(Notice(id=f"N{i}", recipient_id=f"K{i}", kind="daily_digest", day=day, channel="webhook",
                             address=addr, title="今日走访安排", body="今天请走访3户", status="pending", attempts=0,
                             created_at=datetime(2026, 11, 20, 7)))
        first = send_notices.fn(day, database_url)
        second = send_notices.fn(day, database_url)
        hits = len(rx.requests)
    assert first == {"notices_sent": 2, "notices_failed": 1}
    assert second == {"notices_sent": 0, "notices_failed": 0}
    assert hits == 2
    with session_scope(database_url) as s:
        status = dict(s.execute(select(Notice.id, Notice.status)).all())
    assert status == {"N0": "sent", "N1": "dead", "N2": "sent"}
