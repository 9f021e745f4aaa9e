"""A grid worker who tapped the wrong visit outcome corrects it from the same link, over the real
acknowledgement server: within the window, once, while nobody else acted on the flag; audited;
the report's counts see one answer."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from schemas.models import Alert, AuditEvent, RiskFlag, ServiceNeed
from sibifang.db import session_scope
from sibifang.settings import local_now
from tests.test_ack_server import _link, _state, _token, server, site  # noqa: F401 - fixtures
from tests.test_outbox import outbox_db  # noqa: F401 - the fixture


def _post(base, alert_id, outcome):
    tok = requests.utils.unquote(_token(_link(base, alert_id)))
    return requests.post(f"{base}/ack", data={"t": tok, "outcome": outcome}, timeout=5)


def _needs(url):
    with session_scope(url) as s:
        return s.scalars(select(ServiceNeed.id)).all()


def _audits(url, action):
    with session_scope(url) as s:
        return s.scalars(select(AuditEvent.detail).where(AuditEvent.action == action)).all()


def test_the_wrong_outcome_is_corrected_from_the_same_link(server):  # noqa: F811
    """已上门，一切正常 tapped instead of 需要帮助: the page offers the correction, the same link
    takes it, the flag is reopened (acknowledged) with the need filed; the acknowledgement is
    counted once and the correction is on the audit trail. Then it is final."""
    base, url = server
    assert _post(base, "A1", "visited_all_well").status_code == 200
    assert _state(url, "A1")[1:] == ("visited_all_well", "closed") and _needs(url) == []
    page = requests.get(_link(base, "A1"), timeout=5).text
    assert "更正为" in page and 'value="needs_help"' in page
    r = _post(base, "A1", "needs_help")
    assert r.status_code == 200 and "处理结果：已上门，需要帮助" in r.text
    assert _state(url, "A1")[1:] == ("needs_help", "acknowledged")
    with session_scope(url) as s:
        assert s.get(RiskFlag, "F1").closed_at is None and s.get(RiskFlag, "F1").outcome == "needs_help"
    assert len(_needs(url)) == 1
    assert [d["outcome"] for d in _audits(url, "acknowledge")] == ["visited_all_well"]  # one answer counted
    assert _audits(url, "correct_outcome") == [{"from": "visited_all_well", "to": "needs_help"}]
    # back again: corrected once, the answer now stands
    r = _post(base, "A1", "visited_all_well")
    assert r.status_code == 409 and "不能再改为" in r.text
    assert _state(url, "A1")[1:] == ("needs_help", "acknowledged") and len(_needs(url)) == 1
    assert "更正为" not in requests.get(_link(base, "A1"), timeout=5).text


def test_needs_help_corrected_to_all_well_withdraws_the_unmatched_need(server):  # noqa: F811
    base, url = server
    assert _post(base, "A1", "needs_help").status_code == 200
    assert len(_needs(url)) == 1
    assert _post(base, "A1", "visited_all_well").status_code == 200
    assert _state(url, "A1")[1:] == ("visited_all_well", "closed") and _needs(url) == []
    assert _audits(url, "correct_outcome")[0]["to"] == "visited_all_well"


@pytest.mark.parametrize("acted", ["matched", "late", "escalate", "other_answer"])
def test_no_correction_once_the_flag_was_acted_on_or_the_window_passed(server, acted):  # noqa: F811
    """A need already matched by the service pool, an answer older than the window, an escalation
    (the chair was told), or another cadre's answer on the flag: the answer stands (409)."""
    from sibifang.acknowledge import CORRECTION_WINDOW, acknowledge

    base, url = server
    first = "escalate" if acted == "escalate" else "needs_help"
    at = local_now() - (CORRECTION_WINDOW + timedelta(minutes=1) if acted == "late" else timedelta(0))
    acknowledge("A1", actor="GW1", outcome=first, at=at, database_url=url)
    with session_scope(url) as s:
        if acted == "matched":
            need = s.scalars(select(ServiceNeed)).one()
            need.status, need.matched_resource_id = "matched", "R1"
        if acted == "other_answer":
            s.add(Alert(id="A3", dedup_key="d-A3", flag_id="F1", recipient_id="VC1", recipient_role="village_chair",
                        channel="sms", address="13900000000", severity="critical", title="t", body="b",
                        status="sent", created_at=at, outcome="needs_help", acked_at=at))
    before = _state(url, "A1")
    assert "更正为" not in requests.get(_link(base, "A1"), timeout=5).text
    r = _post(base, "A1", "visited_all_well")
    assert r.status_code == 409 and "不能再改为" in r.text
    assert _state(url, "A1") == before
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action == "correct_outcome")) == 0


def test_a_correction_on_both_engines_is_one_answer_and_one_need(outbox_db, monkeypatch):  # noqa: F811
    """Through the outbox, on SQLite and PostgreSQL: all well corrected to needs help within the
    window reopens the flag and files one need; the same answer again records nothing; the
    acknowledgement counted is the first one's."""
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue
    from tests.http_receiver import HttpReceiver
    from tests.test_outbox import NOW, _use_webhook

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        aid = s.scalars(select(Alert.id).where(Alert.flag_id == "F001")).first()
    at = NOW + timedelta(minutes=20)
    acknowledge(aid, actor="GW1", outcome="visited_all_well", at=at, database_url=outbox_db)
    out = acknowledge(aid, actor="GW1", outcome="needs_help", at=at + timedelta(minutes=3), database_url=outbox_db)
    assert out["outcome"] == "needs_help" and out["flag_status"] == "acknowledged"
    acknowledge(aid, actor="GW1", outcome="needs_help", at=at + timedelta(minutes=4), database_url=outbox_db)
    assert len(_needs(outbox_db)) == 1
    with session_scope(outbox_db) as s:
        flag = s.get(RiskFlag, "F001")
        assert (flag.status, flag.outcome, flag.closed_at) == ("acknowledged", "needs_help", None)
        acks = s.scalars(select(AuditEvent.at).where(AuditEvent.action == "acknowledge",
                                                     AuditEvent.entity_id == aid)).all()
        assert acks == [at]
    assert _audits(outbox_db, "correct_outcome") == [{"from": "visited_all_well", "to": "needs_help"}]
