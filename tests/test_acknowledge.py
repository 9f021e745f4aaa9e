"""What a grid worker's answer does to the flag and to who is told next (确认预警与上报)."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import delete, select

from schemas.models import Alert, Cadre, RiskFlag, ServiceNeed
from sibifang.db import session_scope
from tests.http_receiver import HttpReceiver
from tests.test_outbox import NOW, _use_webhook, outbox_db  # noqa: F401  (fixture)


def _episode(start: datetime, end: datetime | None):
    from sibifang.flag_risks import FLAG_COLUMNS
    from sibifang.records import stable_id

    key = f"meter|MX|inactivity|{start:%Y-%m-%dT%H:%M}"
    return pd.DataFrame([{
        "flag_id": stable_id("F", key), "dedup_key": key, "household_id": "H001", "meter_id": "MX",
        "kind": "inactivity", "severity": "critical", "score": 5.0, "start": pd.Timestamp(start),
        "detected_at": pd.Timestamp(start + timedelta(hours=2)), "end": pd.Timestamp(end) if end else pd.NaT,
        "evidence": "用电停止", "details": {}}], columns=FLAG_COLUMNS)


def _first_alert(url: str, flag_id: str) -> str:
    """The grid worker's alert of the flag."""
    with session_scope(url) as s:
        return s.scalars(select(Alert.id).where(Alert.flag_id == flag_id, Alert.recipient_role == "grid_worker")
                         .order_by(Alert.id)).one()


def test_an_acknowledged_episode_gets_its_end_and_a_later_one_is_a_new_flag(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import enqueue
    from tasks.flag_risks import store_flags

    with session_scope(outbox_db) as s:       # the fixture's flags would take this episode in
        s.execute(delete(RiskFlag))
    day1 = datetime(2026, 11, 20, 8)
    first = _episode(day1, None)
    store_flags.fn(first, day1.date(), outbox_db)
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(day1 + timedelta(hours=3), outbox_db)
    acknowledge(_first_alert(outbox_db, first.flag_id[0]), actor="GW1", at=day1 + timedelta(hours=4),
                database_url=outbox_db)     # 收到, no outcome yet
    ended = _episode(day1, day1 + timedelta(hours=10))
    store_flags.fn(ended, date(2026, 11, 21), outbox_db)
    week_later = _episode(day1 + timedelta(days=7), None)
    store_flags.fn(pd.concat([ended, week_later], ignore_index=True), date(2026, 11, 27), outbox_db)
    with session_scope(outbox_db) as s:
        flags = {f.id: f for f in s.scalars(select(RiskFlag).where(RiskFlag.meter_id == "MX"))}
    assert flags[first.flag_id[0]].end == day1 + timedelta(hours=10)
    assert flags[first.flag_id[0]].status == "acknowledged"
    assert week_later.flag_id[0] in flags and flags[week_later.flag_id[0]].status == "open"
    # ... while an episode starting within the acknowledged one (its replay, a few hours apart) is not raised
    again = _episode(day1 + timedelta(hours=5), day1 + timedelta(hours=9))
    store_flags.fn(again, date(2026, 11, 27), outbox_db)
    with session_scope(outbox_db) as s:
        assert s.get(RiskFlag, again.flag_id[0]) is None


def test_needs_escalation_sends_the_flag_one_step_up_at_once(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        at = NOW + timedelta(minutes=5)
        out = acknowledge(_first_alert(outbox_db, "F001"), actor="GW1", outcome="escalate", at=at,
                          database_url=outbox_db)
        assert out["flag_status"] == "open"
        # a second click sends nothing more
        acknowledge(_first_alert(outbox_db, "F001"), actor="GW1", outcome="escalate", at=at, database_url=outbox_db)
        deliver(at, outbox_db)
        with session_scope(outbox_db) as s:
            up = s.scalars(select(Alert).where(Alert.flag_id == "F001", Alert.escalation_level > 0)).all()
            assert [(a.recipient_id, a.escalation_level, a.status) for a in up] == [("VC1", 1, "sent")]
            assert up[0].title.startswith("【升级】")
        assert any(r.json["alert_id"] == up[0].id for r in rx.accepted())
        # F001 is not critical: nothing climbs on by itself; the chair's answer settles it
        escalate(at + timedelta(hours=2), outbox_db)
        with session_scope(outbox_db) as s:
            assert s.scalars(select(Alert.id).where(Alert.flag_id == "F001", Alert.escalation_level > 0)).all() \
                == [up[0].id]
        acknowledge(up[0].id, actor="VC1", at=at + timedelta(hours=1), database_url=outbox_db)
    with session_scope(outbox_db) as s:
        assert s.get(RiskFlag, "F001").status == "acknowledged"


def test_a_critical_flag_escalated_by_hand_climbs_on_if_the_chair_does_not_answer(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)       # critical: the grid worker and the chair at once (level 0)
        deliver(NOW, outbox_db)
        acknowledge(_first_alert(outbox_db, "F000"), actor="GW1", outcome="escalate",
                    at=NOW + timedelta(minutes=5), database_url=outbox_db)
        deliver(NOW + timedelta(minutes=5), outbox_db)
        escalate(NOW + timedelta(minutes=40), outbox_db)    # the township step was queued at once, not again
    with session_scope(outbox_db) as s:
        up = s.scalars(select(Alert).where(Alert.flag_id == "F000", Alert.escalation_level > 0)).all()
        assert [(a.recipient_id, a.escalation_level) for a in up] == [("SV1", 2)]


def test_escalation_passes_over_a_chair_on_leave(outbox_db, monkeypatch):  # noqa: F811
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with session_scope(outbox_db) as s:
        chair = s.get(Cadre, "VC1")
        chair.on_leave_from, chair.on_leave_until = date(2026, 11, 1), date(2026, 12, 31)
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        assert escalate(NOW + timedelta(minutes=31), outbox_db) > 0
    with session_scope(outbox_db) as s:
        up = s.scalars(select(Alert).where(Alert.flag_id == "F000", Alert.escalation_level > 0)).all()
        assert [(a.recipient_id, a.escalation_level) for a in up] == [("SV1", 2)]


def test_needs_help_files_the_need_its_flag_kind_calls_for(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import enqueue

    with session_scope(outbox_db) as s:
        s.get(RiskFlag, "F002").kind = "dispute"
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
    for flag in ("F002", "F003"):
        acknowledge(_first_alert(outbox_db, flag), actor="GW", outcome="needs_help", at=NOW, database_url=outbox_db)
    with session_scope(outbox_db) as s:
        needs = {n.household_id: n.category for n in s.scalars(select(ServiceNeed))}
    assert needs == {"H002": "marriage_family_rights", "H003": "elderly_care"}


def test_asking_for_escalation_keeps_what_is_already_on_its_way_up(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue, escalate

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        assert escalate(NOW + timedelta(minutes=31), outbox_db) > 0      # F000's township step, not sent yet
        acknowledge(_first_alert(outbox_db, "F000"), actor="GW2", outcome="escalate",
                    at=NOW + timedelta(minutes=32), database_url=outbox_db)
        deliver(NOW + timedelta(minutes=33), outbox_db)
    with session_scope(outbox_db) as s:
        up = s.scalars(select(Alert).where(Alert.flag_id == "F000", Alert.escalation_level > 0)).all()
        assert [(a.recipient_id, a.status, a.acked_at) for a in up] == [("SV1", "sent", None)]


def test_the_chair_can_ask_for_the_next_step_after_the_grid_worker(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
        acknowledge(_first_alert(outbox_db, "F001"), actor="GW1", outcome="escalate", at=NOW + timedelta(minutes=5),
                    database_url=outbox_db)
        with session_scope(outbox_db) as s:
            chair = s.scalars(select(Alert.id).where(Alert.flag_id == "F001", Alert.escalation_level == 1)).one()
        acknowledge(chair, actor="VC1", outcome="escalate", at=NOW + timedelta(minutes=20), database_url=outbox_db)
    with session_scope(outbox_db) as s:
        up = s.scalars(select(Alert).where(Alert.flag_id == "F001", Alert.escalation_level == 2)).all()
        assert [(a.recipient_id, a.status) for a in up] == [("SV1", "pending")]
        assert s.get(RiskFlag, "F001").status == "open"


# --- an answer once recorded stands: replays, double submits, closed flags ---------------------
KEY = "a-test-signing-key-of-32-chars!!"


def _ack_state(url: str, alert_id: str) -> dict:
    """Everything an answer could change: the alert, its flag, alerts queued, needs filed, audit rows."""
    from schemas.models import AuditEvent

    with session_scope(url) as s:
        a = s.get(Alert, alert_id)
        f = s.get(RiskFlag, a.flag_id)
        return {"alert": (a.acked_at, a.outcome), "flag": (f.status, f.outcome, f.closed_at),
                "alerts": sorted(s.scalars(select(Alert.id).where(Alert.flag_id == f.id))),
                "needs": sorted(s.scalars(select(ServiceNeed.id))),
                "audits": len(s.scalars(select(AuditEvent.id).where(AuditEvent.action == "acknowledge")).all())}


@pytest.mark.parametrize("replayed", ["escalate", "needs_help"])
def test_a_link_replayed_after_the_flag_was_closed_does_not_reopen_or_escalate_it(outbox_db, monkeypatch,  # noqa: F811
                                                                                  replayed):
    """The grid worker closes the flag (已上门，一切正常) through her link and the page offers no
    more buttons. The same link posted again (a forwarded link, a browser re-posting the form)
    must not reopen the flag, queue 【升级】 alerts to the chair for a family found well, or file a
    need: it is refused, and nothing is recorded."""
    from sibifang.ack_tokens import make_ack_token
    from sibifang.acknowledge import AckError, acknowledge_token
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    alert_id = _first_alert(outbox_db, "F001")                  # F001: high, open
    token = make_ack_token(alert_id, "GW1", KEY, 72, NOW)
    acknowledge_token(token, secret=KEY, outcome="visited_all_well", now=NOW + timedelta(minutes=10),
                      database_url=outbox_db)
    closed = _ack_state(outbox_db, alert_id)
    assert closed["flag"][:2] == ("closed", "visited_all_well")
    with pytest.raises(AckError, match="已记录处理结果：已上门，一切正常"):
        acknowledge_token(token, secret=KEY, outcome=replayed, now=NOW + timedelta(hours=3), database_url=outbox_db)
    assert _ack_state(outbox_db, alert_id) == closed


# (first answer, second answer on the same link): 收到 then an outcome is the usual course; a second
# tap of the same button (or 收到 again) is the answer already recorded and records nothing more; a
# different outcome is refused, as the page offers none once an outcome is recorded.
SAME_LINK = [(None, o, "accepted") for o in ("visited_all_well", "needs_help", "escalate")] + [
    (None, None, "repeat")] + [
    (first, second, "repeat" if second in (None, first) else "refused")
    for first in ("visited_all_well", "needs_help", "escalate")
    for second in (None, "visited_all_well", "needs_help", "escalate")]


@pytest.mark.parametrize("first, second, expect", SAME_LINK)
def test_the_second_answer_on_one_link(outbox_db, monkeypatch, first, second, expect):  # noqa: F811
    from sibifang.acknowledge import AckError, acknowledge
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    alert_id = _first_alert(outbox_db, "F001")
    acknowledge(alert_id, actor="GW1", outcome=first, at=NOW + timedelta(minutes=5), database_url=outbox_db)
    before = _ack_state(outbox_db, alert_id)
    later = NOW + timedelta(hours=2)
    if expect == "refused":
        with pytest.raises(AckError, match="不能再改为"):
            acknowledge(alert_id, actor="GW1", outcome=second, at=later, database_url=outbox_db)
    else:
        out = acknowledge(alert_id, actor="GW1", outcome=second, at=later, database_url=outbox_db)
        assert out["already_acknowledged"] and out["outcome"] == (second or first)
    after = _ack_state(outbox_db, alert_id)
    if expect == "accepted":        # 收到 first, the outcome after the visit
        assert after["alert"] == (before["alert"][0], second) and after["audits"] == before["audits"] + 1
        assert after["flag"][0] == {"visited_all_well": "closed", "needs_help": "acknowledged",
                                    "escalate": "open"}[second]
    else:                           # the answer recorded stands, and nothing more is recorded
        assert after == before
        if expect == "repeat":
            assert out["flag_status"] == before["flag"][0]


def test_an_outcome_on_another_alert_of_a_closed_flag_is_refused_a_receipt_is_not(outbox_db, monkeypatch):  # noqa: F811
    """F000 (critical) went to its grid worker and the chair at once. Once the grid worker closed
    it, the chair's own link records her receipt but no outcome: the matter is settled."""
    from sibifang.acknowledge import AckError, acknowledge
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        chair = s.scalars(select(Alert.id).where(Alert.flag_id == "F000", Alert.recipient_id == "VC1")).one()
    acknowledge(_first_alert(outbox_db, "F000"), actor="GW2", outcome="visited_all_well",
                at=NOW + timedelta(minutes=20), database_url=outbox_db)
    before = _ack_state(outbox_db, chair)
    for outcome in ("escalate", "needs_help", "visited_all_well"):
        with pytest.raises(AckError, match="已结案"):
            acknowledge(chair, actor="VC1", outcome=outcome, at=NOW + timedelta(hours=1), database_url=outbox_db)
    assert _ack_state(outbox_db, chair) == before
    out = acknowledge(chair, actor="VC1", at=NOW + timedelta(hours=1), database_url=outbox_db)
    assert out["flag_status"] == "closed"
    with session_scope(outbox_db) as s:
        assert s.get(RiskFlag, "F000").outcome == "visited_all_well"


def test_another_alert_of_an_open_or_acknowledged_flag_can_still_answer(outbox_db, monkeypatch):  # noqa: F811
    """The grid worker found the family needs help (flag acknowledged); the chair, following up
    later, closes it from her own link."""
    from sibifang.acknowledge import acknowledge
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    with session_scope(outbox_db) as s:
        chair = s.scalars(select(Alert.id).where(Alert.flag_id == "F000", Alert.recipient_id == "VC1")).one()
    acknowledge(_first_alert(outbox_db, "F000"), actor="GW2", outcome="needs_help", at=NOW + timedelta(minutes=20),
                database_url=outbox_db)
    out = acknowledge(chair, actor="VC1", outcome="visited_all_well", at=NOW + timedelta(days=2),
                      database_url=outbox_db)
    assert out["flag_status"] == "closed"
    with session_scope(outbox_db) as s:
        assert s.get(Alert, chair).outcome == "visited_all_well"


@pytest.mark.parametrize("answers", [("needs_help", "needs_help"), ("visited_all_well", "escalate")])
def test_a_double_submit_records_one_answer(outbox_db, monkeypatch, answers):  # noqa: F811
    """Two posts of one link at the same moment (a double tap, two tabs): the flag's lock orders
    them, so one answer is recorded; the same one again is that answer, another is refused."""
    from sibifang.acknowledge import AckError, acknowledge
    from tasks.dispatch_alerts import deliver, enqueue

    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(NOW, outbox_db)
        deliver(NOW, outbox_db)
    alert_id = _first_alert(outbox_db, "F001")
    start, results = threading.Barrier(2), []

    def post(outcome):
        start.wait()
        try:
            results.append((outcome, acknowledge(alert_id, actor="GW1", outcome=outcome,
                                                 at=NOW + timedelta(minutes=5), database_url=outbox_db)))
        except AckError as e:
            results.append((outcome, e))

    threads = [threading.Thread(target=post, args=(o,)) for o in answers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = _ack_state(outbox_db, alert_id)
    refused = [o for o, r in results if isinstance(r, AckError)]
    assert state["audits"] == 1 and len(refused) == (0 if answers[0] == answers[1] else 1)
    winner = state["alert"][1]
    assert len(results) == 2 and winner in answers and winner not in refused
    assert state["flag"][0] == {"needs_help": "acknowledged", "visited_all_well": "closed", "escalate": "open"}[winner]
    assert len(state["needs"]) == (1 if winner == "needs_help" else 0)
    assert len(state["alerts"]) == (2 if winner == "escalate" else 1)     # the chair's 【升级】 only if escalated


def test_a_new_finding_weeks_after_an_acknowledged_one_is_a_new_flag(outbox_db, monkeypatch):  # noqa: F811
    from sibifang.acknowledge import acknowledge
    from sibifang.flag_risks import Lexicon, visit_cue_flags
    from tasks.dispatch_alerts import enqueue
    from tasks.flag_risks import store_flags

    def visit(vid, when):
        return visit_cue_flags(pd.DataFrame([{"visit_id": vid, "household_id": "H001", "visited_at": when,
                                              "notes": "女方称丈夫家暴"}]), Lexicon.load())

    with session_scope(outbox_db) as s:
        s.execute(delete(RiskFlag))
    first = visit("V1", "2026-11-02 10:00")
    store_flags.fn(first, date(2026, 11, 2), outbox_db)
    with HttpReceiver() as rx:
        _use_webhook(monkeypatch, rx.url)
        enqueue(datetime(2026, 11, 2, 11), outbox_db)
    acknowledge(_first_alert(outbox_db, first.flag_id[0]), actor="GW1", at=datetime(2026, 11, 2, 12),
                outcome="needs_help", database_url=outbox_db)    # she went; the family needs help
    # three weeks on, another visit finds violence again
    later = visit("V2", "2026-11-23 10:00")
    store_flags.fn(pd.concat([first, later], ignore_index=True), date(2026, 11, 23), outbox_db)
    with session_scope(outbox_db) as s:
        flags = {f.id: f.status for f in s.scalars(select(RiskFlag).where(RiskFlag.household_id == "H001"))}
    assert flags == {first.flag_id[0]: "acknowledged", later.flag_id[0]: "open"}
