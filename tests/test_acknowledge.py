"""What a grid worker's answer does to the flag and to who is told next (确认预警与上报)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
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
