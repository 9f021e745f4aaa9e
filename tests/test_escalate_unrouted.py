"""Escalation on a database: what cannot be routed is recorded, once, and counted; a family
taken off the register while its case is open."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import func, select

from schemas.models import AuditEvent, Household, MediationCase, ServiceNeed, ServiceResource
from sibifang.db import session_scope
from tests.test_escalate_disputes import _finding, _one_household_village, _room


def _audits(database_url, action):
    with session_scope(database_url) as s:
        return [(a.entity_id, a.detail) for a in s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                                          .order_by(AuditEvent.id))]


def test_a_dispute_in_a_township_without_a_room_is_recorded_once_and_counted(database_url):
    """No mediation room serves township T1: the case is still opened (the family is not dropped),
    and that it has no room is recorded once, in Chinese, and counted in the stage's result."""
    from tasks.escalate_disputes import unrouted_counts
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))
    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 1
    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 0
    assert open_cases_task.fn(date(2026, 11, 21), database_url) == 0
    rec = _audits(database_url, "case_without_room")
    assert len(rec) == 1
    assert "调解室" in rec[0][1]["reason"]
    assert unrouted_counts(database_url)["cases_without_room"] == 1
    with session_scope(database_url) as s:
        assert s.scalar(select(func.count()).select_from(MediationCase)) == 1


def test_a_room_without_mediators_is_recorded_too(database_url):
    from schemas.models import MediationRoom
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        s.add(MediationRoom(id="R1", name="木兰调解室", township_id="T1", mediator_ids=[]))
        s.flush()
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))
    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 1
    rec = _audits(database_url, "case_without_room")
    assert len(rec) == 1 and "调解员" in rec[0][1]["reason"]


def test_a_routed_case_records_nothing_unrouted(database_url):
    from tasks.escalate_disputes import unrouted_counts
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))
    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 1
    assert _audits(database_url, "case_without_room") == []
    assert unrouted_counts(database_url)["cases_without_room"] == 0


def test_a_need_no_resource_fits_is_recorded_once_and_counted(database_url):
    """No resource offers legal aid: the need stays open, its being unmatched is recorded once in
    Chinese (not again by the next runs) and counted; once a resource fits, it is matched."""
    from tasks.escalate_disputes import unrouted_counts
    from tasks.escalate_disputes import match_needs_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        s.add(ServiceResource(id="R1", name="王老师", provider_type="volunteer", offers=["family_education"],
                              village_id="V1"))
        s.flush()
        s.add(ServiceNeed(id="N1", household_id="H1", village_id="V1", category="legal_aid",
                          created_at=datetime(2026, 11, 20, 10), status="open"))
    r = match_needs_task.fn(date(2026, 11, 20), database_url)
    assert r["matched"] == 0 and r["unmatched"] == 1
    assert match_needs_task.fn(date(2026, 11, 21), database_url)["unmatched"] == 1
    rec = _audits(database_url, "need_unmatched")
    assert [e for e, _ in rec] == ["N1"]
    assert "资源" in rec[0][1]["reason"]
    assert unrouted_counts(database_url)["needs_unmatched"] == 1
    with session_scope(database_url) as s:
        s.add(ServiceResource(id="R2", name="李律师", provider_type="lawyer", offers=["legal_aid"], village_id="V1"))
    r = match_needs_task.fn(date(2026, 11, 22), database_url)
    assert r["matched"] == 1 and r["unmatched"] == 0
    assert unrouted_counts(database_url)["needs_unmatched"] == 0
    assert len(_audits(database_url, "need_unmatched")) == 1


def test_an_open_case_of_a_family_taken_off_the_register_is_closed(database_url):
    """H1's case is open when the family moves away (迁出): the room is not left with a case it can
    never close. From the day of the removal it is closed as ``deregistered``, once; a replay
    of an earlier day does not close it."""
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))
    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 1
    with session_scope(database_url) as s:
        h = s.get(Household, "H1")
        h.deregistered_at, h.deregistered_reason = datetime(2026, 11, 24, 8), "moved_away"

    def case():
        with session_scope(database_url) as s:
            c = s.scalars(select(MediationCase)).one()
            return c.status, c.outcome, c.closed_at

    open_cases_task.fn(date(2026, 11, 22), database_url)
    assert case()[0] == "open"
    open_cases_task.fn(date(2026, 11, 24), database_url)
    assert case() == ("closed", "deregistered", datetime(2026, 11, 24, 8))
    open_cases_task.fn(date(2026, 11, 25), database_url)
    assert len([1 for _, d in _audits(database_url, "close_case") if d["outcome"] == "deregistered"]) == 1


def test_a_case_with_no_outcome_past_its_due_date_is_followed_up_once(database_url):
    """A case still open 30 days after it was opened (CASE_DUE_DAYS) is recorded as overdue once, in
    Chinese, and counted while it stays open; a replay of an earlier day records nothing."""
    from sqlalchemy import update

    from sibifang.escalate_disputes import CASE_DUE_DAYS
    from tasks.escalate_disputes import open_cases_task, unrouted_counts

    assert CASE_DUE_DAYS == 30
    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 1, 9)))
    open_cases_task.fn(date(2026, 11, 1), database_url)
    open_cases_task.fn(date(2026, 11, 30), database_url)
    assert _audits(database_url, "case_overdue") == []
    assert unrouted_counts(database_url)["cases_overdue"] == 0
    open_cases_task.fn(date(2026, 12, 1), database_url)
    open_cases_task.fn(date(2026, 12, 2), database_url)
    rec = _audits(database_url, "case_overdue")
    assert len(rec) == 1 and "逾期" in rec[0][1]["reason"]
    assert unrouted_counts(database_url)["cases_overdue"] == 1
    with session_scope(database_url) as s:
        s.execute(update(MediationCase).values(status="closed", closed_at=datetime(2026, 12, 3, 10),
                                                outcome="调解成功"))
    assert unrouted_counts(database_url)["cases_overdue"] == 0


def test_overdue_cases_pure():
    import pandas as pd

    from sibifang.escalate_disputes import overdue_cases

    cases = pd.DataFrame({"case_id": ["C1", "C2", "C3"],
                          "opened_at": pd.to_datetime(["2026-11-01 09:00", "2026-11-10 09:00", "2026-10-01 09:00"]),
                          "status": ["open", "open", "closed"]})
    assert overdue_cases(cases, datetime(2026, 12, 1, 23, 59)) == ["C1"]
    assert overdue_cases(cases.iloc[0:0], datetime(2026, 12, 1)) == []


def test_what_a_mediation_room_receives_holds_no_id_number(database_url):
    """The case, its audit trail and the cases export (what a room is handed) name the family by its
    archive id only: never its ID number or phone."""
    from sibifang.stats import export_frame
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        h = s.get(Household, "H1")
        h.id_number, h.phone = "320282198503150027", "13912345678"
        _room(s)
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))
    open_cases_task.fn(date(2026, 11, 20), database_url)
    with session_scope(database_url) as s:
        c = s.scalars(select(MediationCase)).one()
        held = repr({k: getattr(c, k) for k in MediationCase.__table__.columns.keys()})
        held += repr([(a.entity_id, a.detail) for a in s.scalars(select(AuditEvent))])
    held += export_frame("cases", database_url=database_url).to_csv()
    assert "320282198503150027" not in held and "13912345678" not in held


def test_a_need_of_a_family_taken_off_the_register_is_not_matched(database_url):
    """H1 moved away (迁出) before its need was matched: no provider is sent to a family that left,
    and the need is not reported as one the pool cannot serve."""
    from tasks.escalate_disputes import match_needs_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        h = s.get(Household, "H1")
        h.deregistered_at, h.deregistered_reason = datetime(2026, 11, 21, 8), "moved_away"
        s.add(ServiceResource(id="R1", name="王老师", provider_type="volunteer", offers=["family_education"],
                              village_id="V1"))
        s.flush()
        s.add(ServiceNeed(id="N1", household_id="H1", village_id="V1", category="family_education",
                          created_at=datetime(2026, 11, 20, 10), status="open"))
    r = match_needs_task.fn(date(2026, 11, 22), database_url)
    assert (r["matched"], r["unmatched"]) == (0, 0)
    with session_scope(database_url) as s:
        assert s.get(ServiceNeed, "N1").status == "open"
    # a replay of the day before the removal matches it, as that day's run did
    assert match_needs_task.fn(date(2026, 11, 20), database_url)["matched"] == 1
