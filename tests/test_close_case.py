"""A mediation room records its outcome for a case (调解结案): ``sibifang close-case``.

Before, only the demo's simulated mediators could close a case; the outcome of the loop's
escalation had no way in. The outcome is one of four, typed as mediators write it; the same
outcome again changes nothing; a recorded outcome is not overwritten; the report counts
mediated cases apart from those the system closed (family left the register, wrong family)."""

from __future__ import annotations

import json
from datetime import date, datetime

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from schemas.models import AuditEvent, MediationCase, RiskFlag
from sibifang.db import session_scope
from sibifang.escalate_disputes import CaseOutcomeError, cases_closed_by_kind, mediation_outcome
from tests.test_escalate_disputes import _finding, _one_household_village, _room


@pytest.mark.parametrize("typed, outcome", [("调解成功", "调解成功"), (" 达成协议 ", "调解成功"),
                                            ("调解不成功", "调解未成功"), ("起诉", "转诉讼"), ("撤回", "当事人撤回")])
def test_a_mediators_words_are_one_of_four_outcomes(typed, outcome):
    assert mediation_outcome(typed) == outcome


@pytest.mark.parametrize("typed", ["", None, "还行", "调解中"])
def test_an_outcome_that_is_none_of_them_is_refused_naming_the_four(typed):
    with pytest.raises(CaseOutcomeError, match="调解成功、调解未成功、转诉讼、当事人撤回"):
        mediation_outcome(typed)


def test_system_closings_are_counted_apart():
    cases = pd.DataFrame({"status": ["closed", "closed", "closed", "open"],
                          "outcome": ["调解成功", "deregistered", "record_corrected", None]})
    assert cases_closed_by_kind(cases) == (1, 2)
    assert cases_closed_by_kind(cases.drop(columns="outcome")) == (3, 0)


def _a_case(database_url) -> str:
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))
    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 1
    with session_scope(database_url) as s:
        return s.scalars(select(MediationCase.id)).one()


def test_closing_a_case_records_the_outcome_once_and_answers_its_finding(database_url):
    from tasks.escalate_disputes import close_mediation_case

    case_id = _a_case(database_url)
    at = datetime(2026, 11, 24, 16)
    first = close_mediation_case(case_id, "达成协议", actor="MED1", at=at, database_url=database_url)
    assert (first["status"], first["outcome"], first["changed"]) == ("closed", "调解成功", True)
    again = close_mediation_case(case_id, "调解成功", actor="MED1", at=datetime(2026, 11, 25),
                                 database_url=database_url)
    assert again["changed"] is False and again["closed_at"] == "2026-11-24 16:00:00"
    with pytest.raises(CaseOutcomeError, match="已结案（调解成功）"):
        close_mediation_case(case_id, "调解未成功", actor="MED2", at=at, database_url=database_url)
    with session_scope(database_url) as s:
        case = s.get(MediationCase, case_id)
        assert (case.status, case.outcome, case.closed_at) == ("closed", "调解成功", at)
        flag = s.get(RiskFlag, "F1")
        assert (flag.status, flag.outcome, flag.closed_at) == ("closed", "mediated", at)
        audits = s.scalars(select(AuditEvent).where(AuditEvent.action == "close_case")).all()
        assert [(a.actor, a.detail) for a in audits] == [("MED1", {"outcome": "调解成功"})]


def test_an_unknown_case_or_a_closing_before_the_referral_is_refused(database_url):
    from tasks.escalate_disputes import close_mediation_case

    case_id = _a_case(database_url)
    with pytest.raises(CaseOutcomeError, match="未找到调解案件 NOPE"):
        close_mediation_case("NOPE", "调解成功", actor="MED1", database_url=database_url)
    with pytest.raises(CaseOutcomeError, match="早于案件"):
        close_mediation_case(case_id, "调解成功", actor="MED1", at=datetime(2026, 11, 1), database_url=database_url)
    with session_scope(database_url) as s:
        assert s.get(MediationCase, case_id).status == "open"


def test_the_command_closes_a_case_and_explains_a_refusal(database_url, monkeypatch):
    from sibifang.cli import app
    from sibifang.settings import reset_settings

    case_id = _a_case(database_url)
    monkeypatch.setenv("SIBIFANG_DATABASE_URL", database_url)
    reset_settings()
    try:
        runner = CliRunner()
        bad = runner.invoke(app, ["close-case", case_id, "--outcome", "还行"])
        assert bad.exit_code == 1 and "无法识别" in bad.output
        ok = runner.invoke(app, ["close-case", case_id, "--outcome", "转诉讼", "--actor", "MED1",
                                 "--at", "2026-11-26 10:30"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.output) == {"case_id": case_id, "status": "closed", "outcome": "转诉讼",
                                              "closed_at": "2026-11-26 10:30:00", "changed": True}
    finally:
        reset_settings()
