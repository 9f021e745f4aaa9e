"""Unit tests of sibifang.escalate_disputes: mediation cases and the service-resource pool (no database)."""

from __future__ import annotations

import pandas as pd

from sibifang.escalate_disputes import (CASE_COLUMNS, findings_joining_cases, match_needs, needs_from_visits,
                                       open_mediation_cases)
from sibifang.records import stable_id

T = pd.Timestamp

HOUSEHOLDS = pd.DataFrame({
    "household_id": ["H1", "H2", "H3", "H4", "H5"],
    "township_id": ["T1", "T1", "T2", "T3", "T1"],
    "village_id": ["V1", "V2", "V3", "V9", "V1"],
})
ROOMS = pd.DataFrame({
    "room_id": ["R-T1", "R-T2", "R-T3"],
    "township_id": ["T1", "T2", "T3"],
    "mediator_ids": [["MED-a", "MED-b", "MED-c"], ["MED-z"], []],
})
NO_CASES = pd.DataFrame(columns=["household_id"])


def _flag(fid, hid, kind, when, visit_id=None):
    return {"flag_id": fid, "household_id": hid, "kind": kind, "detected_at": T(when),
            "details": {"visit_id": visit_id, "terms": ["x"]} if visit_id else {}}


# --- open_mediation_cases --------------------------------------------------------------------

def test_one_case_per_household_in_its_township_room():
    flags = pd.DataFrame([
        _flag("F-b", "H1", "domestic_violence", "2026-07-03 10:00", "V-13"),
        _flag("F-a", "H1", "dispute", "2026-07-01 10:00", "V-11"),
        _flag("F-c", "H3", "dispute", "2026-07-02 09:00", "V-31"),
        _flag("F-m", "H2", "inactivity", "2026-07-02 09:00"),          # a meter flag: not a dispute
        _flag("F-g", "H2", "gambling", "2026-07-02 09:00", "V-21"),      # not a mediation kind
    ])
    cases = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, NO_CASES)
    assert list(cases.columns) == CASE_COLUMNS
    assert sorted(cases.household_id) == ["H1", "H3"]
    c1 = cases.set_index("household_id").loc["H1"]
    assert c1.room_id == "R-T1"
    assert c1.mediator_id in {"MED-a", "MED-b", "MED-c"}
    assert c1.source_flag_id == "F-a"                 # the earliest finding opens the case
    assert c1.source_visit_id == "V-11"
    assert c1.opened_at == T("2026-07-01 10:00")
    assert c1.cues == ["dispute", "domestic_violence"]
    assert c1.case_id == stable_id("C", "H1", "F-a")
    c3 = cases.set_index("household_id").loc["H3"]
    assert c3.room_id == "R-T2" and c3.mediator_id == "MED-z" and c3.cues == ["dispute"]


def test_household_with_open_case_gets_none():
    flags = pd.DataFrame([_flag("F-a", "H1", "dispute", "2026-07-01"), _flag("F-c", "H3", "dispute", "2026-07-02")])
    cases = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, pd.DataFrame({"household_id": ["H1"]}))
    assert list(cases.household_id) == ["H3"]
    none = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, pd.DataFrame({"household_id": ["H1", "H3"]}))
    assert none.empty


def test_only_non_dispute_flags_gives_empty_frame():
    flags = pd.DataFrame([_flag("F-s", "H1", "self_harm", "2026-07-01"), _flag("F-o", "H1", "overdue_visit",
                                                                                "2026-07-01")])
    cases = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, NO_CASES)
    assert cases.empty and list(cases.columns) == CASE_COLUMNS


def test_mediator_choice_is_stable_and_spread():
    many = pd.DataFrame({"household_id": [f"H{i:03d}" for i in range(60)], "township_id": ["T1"] * 60})
    flags = pd.DataFrame([_flag(f"F{i}", f"H{i:03d}", "dispute", "2026-07-01") for i in range(60)])
    a = open_mediation_cases(flags, many, ROOMS, NO_CASES).set_index("household_id").mediator_id
    # different order of flags, another flag of the household: same mediator
    extra = pd.DataFrame([_flag("F-x", "H000", "domestic_violence", "2026-06-30")])
    b = open_mediation_cases(pd.concat([flags.iloc[::-1], extra]), many, ROOMS, NO_CASES).set_index(
        "household_id").mediator_id
    assert a.to_dict() == b.loc[a.index].to_dict()
    assert set(a) == {"MED-a", "MED-b", "MED-c"}       # all three mediators get cases
    assert a.value_counts().min() >= 8                  # and roughly evenly (60 cases over 3)


def test_room_without_mediators_and_township_without_room():
    flags = pd.DataFrame([_flag("F-4", "H4", "dispute", "2026-07-01"),
                          _flag("F-9", "H-unknown", "dispute", "2026-07-01")])
    cases = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, NO_CASES).set_index("household_id")
    assert cases.loc["H4", "room_id"] == "R-T3" and pd.isna(cases.loc["H4", "mediator_id"])
    # nothing silently dropped: a household with no known room still gets a case, without a room
    assert pd.isna(cases.loc["H-unknown", "room_id"]) and pd.isna(cases.loc["H-unknown", "mediator_id"])


def test_cases_are_deterministic():
    flags = pd.DataFrame([_flag("F-a", "H1", "dispute", "2026-07-01"), _flag("F-c", "H3", "dispute", "2026-07-02")])
    a = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, NO_CASES)
    b = open_mediation_cases(flags.iloc[::-1], HOUSEHOLDS, ROOMS, NO_CASES)
    assert a.sort_values("case_id").to_dict("records") == b.sort_values("case_id").to_dict("records")


def test_case_source_visit_belongs_to_source_flag():
    flags = pd.DataFrame([
        {"flag_id": "F-1", "household_id": "H1", "kind": "dispute", "detected_at": T("2026-07-01"), "details": None},
        _flag("F-2", "H1", "domestic_violence", "2026-07-02", "V-2"),
    ])
    c = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, NO_CASES).iloc[0]
    assert c.source_flag_id == "F-1"
    assert c.source_visit_id is None


def test_a_flag_found_after_the_households_case_closed_opens_a_new_case():
    """F-a's case was mediated and closed on 07-06 while F-a stays open; F-b, found on 07-28, has
    no case: it opens one (F-a, whose case exists, must not stand in its way)."""
    flags = pd.DataFrame([_flag("F-a", "H1", "dispute", "2026-07-02 09:00"),
                          _flag("F-b", "H1", "domestic_violence", "2026-07-28 09:00", "V-28")])
    cases = pd.DataFrame({"household_id": ["H1"], "closed_at": [T("2026-07-06 10:00")]})
    c = open_mediation_cases(flags, HOUSEHOLDS, ROOMS, cases)
    assert list(c.source_flag_id) == ["F-b"] and c.cues.iloc[0] == ["domestic_violence"]
    assert c.case_id.iloc[0] == stable_id("C", "H1", "F-b") and c.source_visit_id.iloc[0] == "V-28"


def test_flags_found_while_a_case_was_open_belong_to_it_after_it_closed():
    """The findings a case was opened with, and those that joined it while it was open, get no
    case of their own once it is closed; one found after it closed does."""
    flags = pd.DataFrame([_flag("F-a", "H1", "dispute", "2026-07-02 09:00"),
                          _flag("F-b", "H1", "domestic_violence", "2026-07-02 15:00"),   # opened with F-a
                          _flag("F-c", "H1", "dispute", "2026-07-05 09:00"),             # joined it
                          _flag("F-d", "H3", "dispute", "2026-07-03 09:00")])           # H3's case still open
    cases = pd.DataFrame({"household_id": ["H1", "H3"], "closed_at": [T("2026-07-06 10:00"), pd.NaT]})
    assert open_mediation_cases(flags, HOUSEHOLDS, ROOMS, cases).empty
    later = pd.concat([flags, pd.DataFrame([_flag("F-e", "H1", "dispute", "2026-07-09 09:00"),
                                            _flag("F-f", "H3", "dispute", "2026-07-09 09:00")])])
    assert list(open_mediation_cases(later, HOUSEHOLDS, ROOMS, cases).source_flag_id) == ["F-e"]


def test_a_case_holds_the_findings_it_was_opened_with():
    flags = pd.DataFrame([_flag("F-b", "H1", "domestic_violence", "2026-07-03 10:00"),
                          _flag("F-a", "H1", "dispute", "2026-07-01 10:00")])
    assert open_mediation_cases(flags, HOUSEHOLDS, ROOMS, NO_CASES).flag_ids.iloc[0] == ["F-a", "F-b"]


def test_findings_made_while_a_case_is_open_join_it():
    """H1's case was opened with F-a; violence found since (F-c) joins it, once; H3's finding
    has no open case to join (it opens its own), and a meter flag joins nothing."""
    flags = pd.DataFrame([_flag("F-a", "H1", "dispute", "2026-07-01 10:00"),
                          _flag("F-c", "H1", "domestic_violence", "2026-07-05 10:00"),
                          _flag("F-m", "H1", "inactivity", "2026-07-05 11:00"),
                          _flag("F-d", "H3", "dispute", "2026-07-05 09:00")])
    open_cases = pd.DataFrame({"case_id": ["C1"], "household_id": ["H1"], "source_flag_id": ["F-a"],
                               "flag_ids": [["F-a"]], "closed_at": [pd.NaT]})
    j = findings_joining_cases(flags, open_cases)
    assert j.to_dict("records") == [{"case_id": "C1", "flag_id": "F-c", "kind": "domestic_violence"}]
    open_cases.at[0, "flag_ids"] = ["F-a", "F-c"]
    assert findings_joining_cases(flags, open_cases).empty
    # a case recorded before the findings it holds were kept holds its source flag
    legacy = open_cases.assign(flag_ids=[None])
    assert list(findings_joining_cases(flags, legacy).flag_id) == ["F-c"]


def test_a_case_resting_only_on_corrected_records_is_the_wrong_familys():
    from sibifang.escalate_disputes import cases_on_corrected_records

    cases = pd.DataFrame({"case_id": ["C1", "C2", "C3", "C4"], "source_flag_id": ["F1", "F2", "F3", "F5"],
                          "flag_ids": [["F1"], ["F2", "F4"], None, ["F5"]],
                          "closed_at": [pd.NaT, pd.NaT, pd.NaT, T("2026-07-09")]})
    flags = pd.DataFrame({"flag_id": ["F1", "F2", "F3", "F5"], "status": ["closed", "closed", "closed", "closed"],
                          "outcome": ["record_corrected", "record_corrected", "visited_all_well", "record_corrected"],
                          "closed_at": [T("2026-07-03"), T("2026-07-04"), T("2026-07-05"), T("2026-07-06")]})
    # C2 still holds F4 (not withdrawn), C3's flag was settled otherwise, C4 is closed already
    assert cases_on_corrected_records(cases, flags).to_dict("records") == [
        {"case_id": "C1", "closed_at": T("2026-07-03")}]


def test_findings_left_with_a_closed_case_join_no_later_case():
    """F-a's case was mediated and closed on 07-06 while F-a stays open; F-e opened a new case on
    07-20. F-a belongs to the closed case and does not join the new one; F-f (07-25) does."""
    flags = pd.DataFrame([_flag("F-a", "H1", "dispute", "2026-07-02 09:00"),
                          _flag("F-e", "H1", "dispute", "2026-07-20 09:00"),
                          _flag("F-f", "H1", "domestic_violence", "2026-07-25 09:00")])
    cases = pd.DataFrame({"case_id": ["C1", "C2"], "household_id": ["H1", "H1"], "source_flag_id": ["F-a", "F-e"],
                          "flag_ids": [["F-a"], ["F-e"]], "closed_at": [T("2026-07-06 10:00"), pd.NaT]})
    assert findings_joining_cases(flags, cases).to_dict("records") == [
        {"case_id": "C2", "flag_id": "F-f", "kind": "domestic_violence"}]


# --- needs_from_visits -----------------------------------------------------------------------

def test_needs_from_visits_one_per_visit_with_a_demand():
    visits = pd.DataFrame([
        {"visit_id": "V1", "household_id": "H1", "visited_at": "2026-07-01 10:00",
         "demand_category": "family_education"},
        {"visit_id": "V2", "household_id": "H3", "visited_at": "2026-07-02 11:00", "demand_category": "elderly_care"},
        {"visit_id": "V3", "household_id": "H2", "visited_at": "2026-07-02 11:00", "demand_category": None},
        {"visit_id": "V4", "household_id": "H2", "visited_at": "2026-07-02 11:00", "demand_category": ""},
        {"visit_id": "V5", "household_id": "H2", "visited_at": "2026-07-02 11:00", "demand_category": float("nan")},
    ])
    needs = needs_from_visits(visits, HOUSEHOLDS)
    assert list(needs.columns) == ["need_id", "household_id", "village_id", "category", "source_visit_id",
                                   "created_at"]
    assert list(needs.source_visit_id) == ["V1", "V2"]
    assert list(needs.village_id) == ["V1", "V3"]
    assert list(needs.category) == ["family_education", "elderly_care"]
    assert needs.need_id.iloc[0] == stable_id("N", "V1", "family_education")
    assert needs.created_at.iloc[1] == T("2026-07-02 11:00")
    again = needs_from_visits(visits.iloc[::-1], HOUSEHOLDS)
    assert set(again.need_id) == set(needs.need_id)


def test_needs_from_visits_none():
    visits = pd.DataFrame([{"visit_id": "V3", "household_id": "H2", "visited_at": "2026-07-02",
                            "demand_category": None}])
    needs = needs_from_visits(visits, HOUSEHOLDS)
    assert needs.empty and "need_id" in needs.columns


# --- match_needs -----------------------------------------------------------------------------

AREAS = pd.DataFrame({
    "village_id": ["V1", "V2", "V3", "V4", "V9"],
    "township_id": ["T1", "T1", "T2", "T2", "T9"],
    "district_id": ["D1", "D1", "D1", "D1", "D9"],
})
RESOURCES = pd.DataFrame([
    {"resource_id": "R-v1", "village_id": "V1", "offers": ["family_education"], "name": "王老师",
     "phone": "13800000000"},
    {"resource_id": "R-v2a", "village_id": "V2", "offers": ["family_education", "skills"], "name": "x", "phone": "y"},
    {"resource_id": "R-v2b", "village_id": "V2", "offers": ["family_education"], "name": "x", "phone": "y"},
    {"resource_id": "R-v3", "village_id": "V3", "offers": ["elderly_care"], "name": "x", "phone": "y"},
    {"resource_id": "R-v9", "village_id": "V9", "offers": ["domestic_services"], "name": "x", "phone": "y"},
])


def _needs(*rows):
    return pd.DataFrame([{"need_id": n, "village_id": v, "category": c} for n, v, c in rows])


def _match(needs):
    m = match_needs(needs, RESOURCES, AREAS)
    assert list(m.columns) == ["need_id", "resource_id"]
    assert m.need_id.is_unique
    return dict(zip(m.need_id, m.resource_id))


def test_match_same_village_first():
    # two needs in V1: both go to V1's own resource even though V2's are unused
    assert _match(_needs(("N1", "V1", "family_education"), ("N2", "V1", "family_education"))) == {
        "N1": "R-v1", "N2": "R-v1"}


def test_match_then_township():
    assert _match(_needs(("N1", "V1", "skills"))) == {"N1": "R-v2a"}


def test_match_then_district_with_load_spread():
    got = _match(_needs(("N1", "V4", "family_education"), ("N2", "V4", "family_education"),
                        ("N3", "V4", "family_education"), ("N4", "V3", "family_education")))
    # no family_education in T2: the district's three resources take one need each, then the least-used again
    assert sorted(got[n] for n in ("N1", "N2", "N3")) == ["R-v1", "R-v2a", "R-v2b"]
    assert got["N4"] in {"R-v1", "R-v2a", "R-v2b"}
    counts = pd.Series(list(got.values())).value_counts()
    assert counts.max() - counts.min() <= 1


def test_match_least_used_within_village():
    got = _match(_needs(("N1", "V2", "family_education"), ("N2", "V2", "family_education"),
                        ("N3", "V2", "family_education")))
    assert set(got.values()) == {"R-v2a", "R-v2b"}
    assert sorted(pd.Series(list(got.values())).value_counts().tolist()) == [1, 2]


def test_unmatched_when_no_resource_offers_the_category():
    got = _match(_needs(("N1", "V1", "democratic_participation"),   # nobody offers it
                        ("N2", "V1", "domestic_services"),          # only in another district
                        ("N3", "V9", "family_education"),           # only in another district
                        ("N4", "V3", "elderly_care")))
    assert got == {"N4": "R-v3"}


def test_match_needs_empty_inputs():
    assert match_needs(_needs(), RESOURCES, AREAS).empty
    assert match_needs(_needs(("N1", "V1", "skills")), RESOURCES.iloc[0:0], AREAS).empty


def test_match_needs_is_deterministic():
    needs = _needs(*[(f"N{i:02d}", ["V1", "V2", "V3", "V4"][i % 4], "family_education") for i in range(12)])
    a = match_needs(needs, RESOURCES, AREAS)
    b = match_needs(needs.iloc[::-1], RESOURCES.iloc[::-1], AREAS)
    assert dict(zip(a.need_id, a.resource_id)) == dict(zip(b.need_id, b.resource_id))
    assert len(a) == 12


# --- the task on a database ------------------------------------------------------------------
def test_a_flags_case_is_opened_once_even_after_it_was_closed(database_url):
    """A case mediated and closed while its dispute flag stays open is not opened (or counted,
    or audited) again by the next run."""
    from datetime import date, datetime

    from sqlalchemy import func, select, update

    from schemas.models import AuditEvent, MediationCase
    from sibifang.db import session_scope
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "dispute|H1|1", "H1", "dispute", datetime(2026, 11, 20, 9)))

    def audits() -> int:
        with session_scope(database_url) as s:
            return s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "open_case"))

    assert open_cases_task.fn(date(2026, 11, 20), database_url) == 1
    assert audits() == 1
    with session_scope(database_url) as s:
        s.execute(update(MediationCase).values(status="closed", closed_at=datetime(2026, 11, 21, 10),
                                                outcome="调解成功"))
    assert open_cases_task.fn(date(2026, 11, 22), database_url) == 0
    assert audits() == 1
    with session_scope(database_url) as s:
        assert [c.status for c in s.scalars(select(MediationCase))] == ["closed"]


def test_a_new_dispute_after_a_closed_case_opens_a_case(database_url):
    """A dispute flag F1 opens a case; the case is mediated and closed while F1 stays open (as
    above). Weeks later a visit finds domestic violence in the same family (F2). No case is open,
    so F2 opens one, once: the next run opens nothing more."""
    from datetime import date, datetime

    from sqlalchemy import select, update

    from schemas.models import MediationCase
    from sibifang.db import session_scope
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "visit|V1|dispute", "H1", "dispute", datetime(2026, 11, 2, 9)))
    assert open_cases_task.fn(date(2026, 11, 2), database_url) == 1
    with session_scope(database_url) as s:
        s.execute(update(MediationCase).values(status="closed", closed_at=datetime(2026, 11, 6, 10),
                                                outcome="调解成功"))
        s.add(_finding("F2", "visit|V2|domestic_violence", "H1", "domestic_violence", datetime(2026, 11, 28, 9)))
    assert open_cases_task.fn(date(2026, 11, 28), database_url) == 1
    assert open_cases_task.fn(date(2026, 11, 28), database_url) == 0
    assert open_cases_task.fn(date(2026, 11, 29), database_url) == 0
    with session_scope(database_url) as s:
        cases = sorted((c.source_flag_id, c.status, c.cues) for c in s.scalars(select(MediationCase)))
    assert cases == [("F1", "closed", ["dispute"]), ("F2", "open", ["domestic_violence"])]


def test_violence_found_while_a_dispute_case_is_open_reaches_the_case(database_url):
    """A quarrel (F1) opens a case. While it is open a later visit finds violence in the same
    family (F2): no second case, but the open case now holds F2 and its cues name the violence,
    with one audit entry; the next runs change nothing."""
    from datetime import date, datetime

    from sqlalchemy import func, select

    from schemas.models import AuditEvent, MediationCase
    from sibifang.db import session_scope
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        _room(s)
        s.add(_finding("F1", "visit|V1|dispute", "H1", "dispute", datetime(2026, 11, 2, 9)))
    assert open_cases_task.fn(date(2026, 11, 2), database_url) == 1
    with session_scope(database_url) as s:
        s.add(_finding("F2", "visit|V2|domestic_violence", "H1", "domestic_violence", datetime(2026, 11, 4, 9)))
    for day in (4, 4, 5):
        assert open_cases_task.fn(date(2026, 11, day), database_url) == 0
    with session_scope(database_url) as s:
        (case_,) = s.scalars(select(MediationCase)).all()
        assert (case_.source_flag_id, case_.flag_ids, case_.cues) == ("F1", ["F1", "F2"],
                                                                      ["dispute", "domestic_violence"])
        joins = s.scalars(select(AuditEvent).where(AuditEvent.action == "join_case")).all()
        assert [(a.entity_id, a.detail) for a in joins] == [(case_.id, {"flag": "F2", "kind": "domestic_violence"})]
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "open_case")) == 1


def test_a_case_opened_on_a_visit_record_corrected_to_another_family_is_closed(database_url):
    """A visit sheet named H1 by mistake: its quarrel finding (F1) opened H1's case. The sheet is
    re-sent naming H2; flag_risks closes F1 as record_corrected and flags H2 (F2). The next run
    closes H1's case with that outcome, as of F1's closing, and opens H2's; again, nothing."""
    from datetime import date, datetime

    from sqlalchemy import select, update

    from schemas.models import AuditEvent, Household, MediationCase, RiskFlag
    from sibifang.db import session_scope, upsert
    from sibifang.flag_risks import RECORD_CORRECTED
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        upsert(s, Household, [{"id": "H2", "head_name": "李桂英", "grid_id": "G1", "categories": []}], key=["id"])
        _room(s)
        s.add(_finding("F1", "visit|V1|dispute", "H1", "dispute", datetime(2026, 11, 2, 9)))
    assert open_cases_task.fn(date(2026, 11, 2), database_url) == 1
    with session_scope(database_url) as s:
        s.execute(update(RiskFlag).where(RiskFlag.id == "F1").values(
            status="closed", outcome=RECORD_CORRECTED, closed_at=datetime(2026, 11, 3, 8)))
        s.add(_finding("F2", "visit|V1|dispute|H2", "H2", "dispute", datetime(2026, 11, 2, 9),
                       detected_at=datetime(2026, 11, 3, 8)))
    assert open_cases_task.fn(date(2026, 11, 3), database_url) == 1
    assert open_cases_task.fn(date(2026, 11, 3), database_url) == 0
    with session_scope(database_url) as s:
        cases = sorted((c.household_id, c.status, c.outcome, c.closed_at) for c in s.scalars(select(MediationCase)))
        closes = s.scalars(select(AuditEvent).where(AuditEvent.action == "close_case")).all()
    assert cases == [("H1", "closed", RECORD_CORRECTED, datetime(2026, 11, 3, 8)), ("H2", "open", None, None)]
    assert len(closes) == 1


def test_a_record_corrected_back_to_its_first_family_opens_that_family_a_case_again(database_url):
    """As above, then the re-sent sheet proves the mistake: the visit was to H1 after all.
    flag_risks closes H2's flag F2 and flags H1 again under the visit's time (F3): H1's case
    closed as record_corrected was never mediated and does not hold F3; H1 gets a case again."""
    from datetime import date, datetime

    from sqlalchemy import select, update

    from schemas.models import Household, MediationCase, RiskFlag
    from sibifang.db import session_scope, upsert
    from sibifang.flag_risks import RECORD_CORRECTED
    from tasks.escalate_disputes import open_cases_task

    _one_household_village(database_url)
    visit = datetime(2026, 11, 2, 9)
    with session_scope(database_url) as s:
        upsert(s, Household, [{"id": "H2", "head_name": "李桂英", "grid_id": "G1", "categories": []}], key=["id"])
        _room(s)
        s.add(_finding("F1", "visit|V1|domestic_violence", "H1", "domestic_violence", visit))
    assert open_cases_task.fn(date(2026, 11, 2), database_url) == 1
    with session_scope(database_url) as s:
        s.execute(update(RiskFlag).where(RiskFlag.id == "F1").values(
            status="closed", outcome=RECORD_CORRECTED, closed_at=datetime(2026, 11, 3, 8)))
        s.add(_finding("F2", "visit|V1|domestic_violence|H2", "H2", "domestic_violence", visit))
    assert open_cases_task.fn(date(2026, 11, 3), database_url) == 1
    with session_scope(database_url) as s:
        s.execute(update(RiskFlag).where(RiskFlag.id == "F2").values(
            status="closed", outcome=RECORD_CORRECTED, closed_at=datetime(2026, 11, 4, 8)))
        s.add(_finding("F3", "visit|V1|domestic_violence|H1", "H1", "domestic_violence", visit))
    for _ in range(2):  # again: nothing
        open_cases_task.fn(date(2026, 11, 4), database_url)
        with session_scope(database_url) as s:
            cases = sorted((c.household_id, c.source_flag_id, c.status, c.outcome)
                           for c in s.scalars(select(MediationCase)))
        assert cases == [("H1", "F1", "closed", RECORD_CORRECTED), ("H1", "F3", "open", None),
                         ("H2", "F2", "closed", RECORD_CORRECTED)]


def test_replaying_a_past_day_matches_only_the_needs_known_that_day(database_url):
    """A need raised on 11-25 is not matched by a replay of 11-20 (nor counted in its matches)."""
    from datetime import date, datetime

    from sqlalchemy import select

    from schemas.models import ServiceNeed, ServiceResource
    from sibifang.db import session_scope
    from tasks.escalate_disputes import match_needs_task

    _one_household_village(database_url)
    with session_scope(database_url) as s:
        s.add(ServiceResource(id="R1", name="王老师", provider_type="volunteer", offers=["family_education"],
                              village_id="V1"))
        s.flush()
        s.add(ServiceNeed(id="N-later", household_id="H1", village_id="V1", category="family_education",
                          created_at=datetime(2026, 11, 25, 10), status="open"))

    def status() -> str:
        with session_scope(database_url) as s:
            return s.scalar(select(ServiceNeed.status).where(ServiceNeed.id == "N-later"))

    assert match_needs_task.fn(date(2026, 11, 20), database_url)["matched"] == 0
    assert status() == "open"
    assert match_needs_task.fn(date(2026, 11, 25), database_url)["matched"] == 1
    assert status() == "matched"


def _one_household_village(database_url: str) -> None:
    """District D1 > township T1 > village V1 > grid G1, with household H1 (migrated first)."""
    from schemas.models import Area, Household
    from sibifang.db import migrate, session_scope, upsert

    migrate(database_url)
    areas = [("D1", "district", None), ("T1", "township", "D1"), ("V1", "village", "T1"), ("G1", "grid", "V1")]
    with session_scope(database_url) as s:
        upsert(s, Area, [{"id": i, "level": lv, "name": i, "parent_id": p, "village_kind": None}
                         for i, lv, p in areas], key=["id"])
        upsert(s, Household, [{"id": "H1", "head_name": "王秀兰", "grid_id": "G1", "categories": []}], key=["id"])


def _room(session) -> None:
    """Township T1's mediation room, with one mediator."""
    from schemas.models import MediationRoom
    from sibifang.db import upsert

    upsert(session, MediationRoom, [{"id": "R1", "name": "木兰调解室", "township_id": "T1", "mediator_ids": ["MED1"]}],
           key=["id"])


def _finding(flag_id: str, key: str, household_id: str, kind: str, start, *, detected_at=None, severity=None,
             score=None, evidence=None):
    """An open dispute or violence flag found in a visit, as flag_risks stores it."""
    from schemas.models import RiskFlag

    high = kind == "domestic_violence"
    return RiskFlag(id=flag_id, dedup_key=key, household_id=household_id, kind=kind,
                    severity=severity or ("critical" if high else "high"), score=score or (5.0 if high else 3.0),
                    start=start, detected_at=detected_at or start,
                    evidence=evidence or ("走访记录提到丈夫酒后动手" if high else "走访记录提到夫妻吵架"), details={},
                    status="open")
