"""What an alert says about its deadline (最晚) and what the page behind its link says agree,
also when the first attempt failed and a later one got through."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import unquote

from sqlalchemy import select

import tasks.dispatch_alerts  # noqa: F401 - Prefect sets up logging on import
from schemas.models import Alert
from sibifang.db import session_scope
from tests.http_receiver import HttpReceiver
from tests.test_outbox import ACK_KEY, LINK, NOW, _use_ack_key, _use_webhook, outbox_db  # noqa: F401 - the fixture

DEADLINE = re.compile(r"最晚[：:]?\s*(\d+月\d+日\d\d:\d\d)")


def _deadline(text: str) -> str:
    m = DEADLINE.search(text)
    assert m, text
    return m.group(1)


def test_a_resent_alert_states_the_deadline_its_page_and_escalation_count_from(outbox_db, monkeypatch):  # noqa: F811
    """Queued at 10:00, the receiver down at the first attempt; the retry 40 minutes later gets
    through. The message said 最晚11:00 (worded when queued) while its page counted an hour from
    the send (11:40) and escalation 30 minutes from it: the grid worker was told a deadline the
    system does not hold to. The message delivered is worded for its send: both say 11:40."""
    from sibifang.acknowledge import alert_for_link
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    later = NOW + timedelta(minutes=40)
    with HttpReceiver(down_first_requests=1000) as rx:
        _use_webhook(monkeypatch, rx.url)
        _use_ack_key(monkeypatch)
        enqueue(NOW, outbox_db)
        deliver(None, outbox_db, clock=lambda: NOW)  # every first attempt fails
        assert not rx.accepted()
        rx.down_first_requests = 0
        deliver(None, outbox_db, clock=lambda: later)
        bodies = {r.json["alert_id"]: r.json["text"] for r in rx.accepted()}
    with session_scope(outbox_db) as s:
        critical = s.scalars(select(Alert).where(Alert.severity == "critical", Alert.escalation_level == 0)).all()
        assert critical and {a.status for a in critical} == {"sent"}
        aid = critical[0].id
        first_sent = critical[0].first_sent_at
    text = bodies[aid]
    said = _deadline(text)
    token = unquote(LINK.search(text).group(1))
    page = alert_for_link(token, secret=ACK_KEY, now=later + timedelta(minutes=1), database_url=outbox_db)
    assert page["deadline"] == said == "11月20日11:40"  # an hour (critical) from the send that got through
    # escalation counts from the same send: not before 30 minutes after it
    assert first_sent == later
    assert escalate(later + timedelta(minutes=29), outbox_db) == 0
    assert escalate(later + timedelta(minutes=31), outbox_db) > 0
