"""Families taken off the register (迁出 / 去世 / 注销) and put back (在册): the import, and what
the loop no longer does for them from their date (plans, meter flags, alerts, the report)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
from sqlalchemy import select

from schemas.models import Area, Household
from sibifang.db import migrate, session_scope

GOOD_ID, OTHER_ID = "33020319431206966X", "33020319530402946X"
HEADER = "household_id,head_name,id_number,phone,address,grid_id,categories"


def _areas(database_url: str) -> None:
    migrate(database_url)
    with session_scope(database_url) as s:
        s.add(Area(id="V1", level="village", name="村"))
        s.add(Area(id="G1", level="grid", name="网格", parent_id="V1"))


def _file(tmp_path, name: str, *rows: str, header: str = HEADER):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _state(database_url: str) -> dict[str, tuple]:
    with session_scope(database_url) as s:
        return {h.id: (h.registered_at, h.deregistered_at, h.deregistered_reason)
                for h in s.scalars(select(Household))}


def test_status_column_takes_families_off_and_back_on_the_register(database_url, tmp_path):
    from tasks.import_registry import import_file

    _areas(database_url)
    first = datetime(2026, 11, 2, 9, 0)
    full = _file(tmp_path, "all.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest",
                 f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship", "H3,丙,,,住址,G1,hardship")
    import_file("households", full, database_url=database_url, out_dir=tmp_path, now=first)
    assert {h: v[0] for h, v in _state(database_url).items()} == {"H1": first, "H2": first, "H3": first}

    # The village's later sheet: H1's elderly member died on 20 Nov, H2 moved away (no date: the
    # import's time), H3 is not in it (partial files are normal: it stays), a bad status and a
    # removal date on a row still 在册 are quarantined with their line and field.
    header = HEADER + ",状态,注销日期"
    later = _file(tmp_path, "later.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest,去世,2026-11-20",
                  f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,迁出,",
                  "H4,丁,,,住址,G1,hardship,搬走了,", "H5,戊,,,住址,G1,hardship,在册,2026-11-20",
                  header=header)
    second = datetime(2026, 11, 25, 8, 0)
    out = import_file("households", later, database_url=database_url, out_dir=tmp_path, now=second)
    assert (out["read"], out["accepted"], out["quarantined"]) == (4, 2, 2)
    assert out["read"] == out["accepted"] + out["quarantined"]
    from schemas.models import QuarantinedRow

    with session_scope(database_url) as s:
        quarantined = {(q.line, q.field, q.code, q.reason) for q in s.scalars(select(QuarantinedRow))}
    assert quarantined == {(4, "register_status", "unknown_code", "状态不在可选范围内"),
                           (5, "deregistered_on", "deregistered_on_without_status",
                            "填写了注销日期，但状态不是迁出、去世或注销")}
    state = _state(database_url)
    assert state["H1"] == (first, datetime(2026, 11, 20), "deceased")
    assert state["H2"] == (first, second, "moved_away")
    assert state["H3"] == (first, None, None)
    assert "H4" not in state and "H5" not in state

    # The same file again (a day later) changes nothing: H2 keeps the moment it was first marked.
    import_file("households", later, database_url=database_url, out_dir=tmp_path, now=second + timedelta(days=1))
    assert _state(database_url) == state
    # The first file again (no status column) changes no one's place either.
    import_file("households", full, database_url=database_url, out_dir=tmp_path, now=second + timedelta(days=2))
    assert _state(database_url) == state

    # H2 came back: 在册 clears the removal; registered_at stays the first import's.
    back = _file(tmp_path, "back.csv", f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,在册,", header=header)
    import_file("households", back, database_url=database_url, out_dir=tmp_path, now=second + timedelta(days=3))
    assert _state(database_url)["H2"] == (first, None, None)


def test_status_labels_and_the_suite():
    from sibifang.importing import validate_import

    raw = pd.DataFrame({"household_id": ["H1", "H2", "H3", "H4"], "head_name": ["甲"] * 4,
                        "id_number": [None] * 4, "phone": [None] * 4, "address": ["址"] * 4,
                        "grid_id": ["G1"] * 4, "categories": [""] * 4,
                        "状态": ["在册", "迁出", "去世", "注销"], "注销日期": [None, "2026-11-01", None, None]})
    result = validate_import("households", raw, source="h.csv", now=datetime(2026, 11, 25))
    assert result.quarantined.empty and not result.unknown_columns
    assert list(result.accepted.register_status) == ["registered", "moved_away", "deceased", "other"]
    future = raw.assign(注销日期=[None, "2026-12-30", None, None])
    result = validate_import("households", future, source="h.csv", now=datetime(2026, 11, 25))
    assert {(int(r.line), r.field, r.code) for r in result.quarantined.itertuples()} == {
        (3, "deregistered_on", "future_date")}
    from schemas.suites import households_suite

    assert any(e.expectation == "ExpectColumnValuesToBeInSet" and e.columns == ("register_status",)
               for e in households_suite().expectations)


MONDAY = date(2026, 11, 23)


def _seed_families(database_url: str) -> None:
    from schemas.models import Cadre

    _areas(database_url)
    with session_scope(database_url) as s:
        s.add(Cadre(id="a", name="甲", role="cadre", grid_ids=["G1"], capacity=10))
        s.add_all([Household(id=h, head_name="户主", grid_id="G1", categories=["hardship"]) for h in ("h1", "h2")])


def _deregister(database_url: str, household: str, at: datetime | None, reason: str | None = "deceased") -> None:
    with session_scope(database_url) as s:
        h = s.get(Household, household)
        h.deregistered_at, h.deregistered_reason = at, reason


def _plans(database_url: str) -> set[tuple]:
    from schemas.models import VisitPlan

    with session_scope(database_url) as s:
        return {(p.id, p.household_id, p.due_date, p.status) for p in s.scalars(select(VisitPlan))}


def test_no_visit_is_planned_for_a_family_off_the_register_and_its_open_plans_are_cancelled(database_url, tmp_path):
    from tasks.schedule_visits import plan_visits, store_plan

    _seed_families(database_url)

    def evening(day):
        return store_plan.fn(plan_visits.fn(day, database_url=database_url), day, str(tmp_path),
                             database_url=database_url)

    evening(MONDAY)
    monday = _plans(database_url)
    tuesday = MONDAY + timedelta(days=1)
    h1 = {p for p in monday if p[1] == "h1"}
    assert any(p[2] < tuesday for p in h1) and any(p[2] >= tuesday for p in h1)
    _deregister(database_url, "h1", datetime.combine(tuesday, datetime.min.time()))

    # A replay of Monday: h1 was on the register that day, so its plan due Monday stays; those
    # due from Tuesday on are cancelled (the way nobody is asked to visit), nothing new is stored.
    out = evening(MONDAY)
    replayed = _plans(database_url)
    assert {p[0] for p in replayed} == {p[0] for p in monday}
    assert {p for p in replayed if p[1] == "h1"} == {
        (i, h, d, "planned" if d < tuesday else "cancelled") for i, h, d, _ in h1}
    assert out["cancelled"] == sum(p[2] >= tuesday for p in h1)

    # Tuesday's run: nothing planned for h1, its plan still open from Monday cancelled too (not
    # missed: nobody failed to visit); h2 keeps its plans. Run again, nothing changes.
    out = evening(tuesday)
    after = _plans(database_url)
    assert {p[3] for p in after if p[1] == "h1"} == {"cancelled"}
    assert {p[0] for p in after if p[1] == "h1"} == {p[0] for p in h1}
    assert {p for p in after if p[1] == "h2" and p[3] == "planned"}
    assert evening(tuesday)["cancelled"] == 0 and _plans(database_url) == after

    # Back on the register (在册 again): planned again like any family.
    _deregister(database_url, "h1", None, None)
    evening(tuesday + timedelta(days=1))
    assert any(p[1] == "h1" and p[3] == "planned" for p in _plans(database_url))


def test_coverage_does_not_count_a_plan_cancelled_by_a_removal_as_missed(database_url):
    from schemas.models import VisitPlan
    from sibifang.stats import export_frame

    _seed_families(database_url)
    with session_scope(database_url) as s:
        for h, status in (("h1", "cancelled"), ("h2", "planned")):
            s.add(VisitPlan(id=f"P{h}", household_id=h, cadre_id="a", grid_id="G1", due_date=MONDAY,
                            window_start=MONDAY, window_end=MONDAY, reason="hardship", urgent=False,
                            status=status, planned_on=MONDAY))
    cov = export_frame("coverage", as_of=MONDAY + timedelta(days=9), database_url=database_url)
    grid = cov[(cov.level == "grid") & (cov.unit_id == "G1")].iloc[0]
    assert (grid.due, grid.missed) == (1, 1)


# ------------------------------------------------------------------ flags and alerts
from tests.test_outbox import NOW, outbox_db  # noqa: E402,F401  (fixture)


def _episodes(detected: datetime) -> pd.DataFrame:
    return pd.DataFrame([{"meter_id": m, "kind": "inactivity", "severity": "high", "score": 5.0,
                          "start": detected - timedelta(hours=10), "detected_at": detected, "end": None,
                          "evidence": "用电接近停止"} for m in ("M0", "M1")])


def test_no_meter_flag_is_raised_for_a_family_after_it_left_the_register(outbox_db):  # noqa: F811
    from schemas.models import Meter
    from tasks.flag_risks import derive_flags

    with session_scope(outbox_db) as s:
        s.add_all([Meter(id="M0", household_id="H000", interval_minutes=60),
                   Meter(id="M1", household_id="H001", interval_minutes=60)])
    _deregister(outbox_db, "H000", datetime(2026, 11, 20))
    day = NOW.date()
    got = derive_flags.fn(_episodes(NOW), day, outbox_db)
    assert list(got.household_id) == ["H001"]
    # A replay of the day before: H000 was on the register, its episode is raised as it was then.
    before = derive_flags.fn(_episodes(NOW - timedelta(days=1)), day - timedelta(days=1), outbox_db)
    assert sorted(before.household_id) == ["H000", "H001"]


def test_alerts_not_yet_sent_for_a_family_off_the_register_are_cancelled(outbox_db):  # noqa: F811
    from schemas.models import Alert, RiskFlag
    from sibifang.flag_risks import FLAG_COLUMNS
    from sibifang.outbox import claim_due
    from tasks.dispatch_alerts import enqueue
    from tasks.flag_risks import store_flags

    assert enqueue(NOW, outbox_db)
    _deregister(outbox_db, "H000", datetime(2026, 11, 20), "deceased")
    _deregister(outbox_db, "H005", datetime(2026, 11, 21), "moved_away")  # after the day: still on it
    store_flags.fn(pd.DataFrame(columns=FLAG_COLUMNS), NOW.date(), outbox_db)
    with session_scope(outbox_db) as s:
        flags = {f.household_id: (f.status, f.outcome) for f in s.scalars(select(RiskFlag))}
        assert flags["H000"] == ("closed", "deregistered") and flags["H005"] == ("open", None)
        assert {v for h, v in flags.items() if h != "H000"} == {("open", None)}
        claimed = set(claim_due(s, now=NOW, real_now=NOW, limit=1000))
        alerts = list(s.scalars(select(Alert).join(RiskFlag, RiskFlag.id == Alert.flag_id)
                                .where(RiskFlag.household_id.in_(("H000", "H005")))))
    assert {a.status for a in alerts if a.flag_id == "F000"} == {"cancelled"}
    assert not {a.id for a in alerts if a.flag_id == "F000"} & claimed
    assert {a.id for a in alerts if a.flag_id == "F005"} <= claimed
    # The day's risk map covers the 39 families still on the register; the run again changes nothing.
    from schemas.models import RiskMapSnapshot

    def risk_map():
        with session_scope(outbox_db) as s:
            return {(r.grid_id, r.level): r.households
                    for r in s.scalars(select(RiskMapSnapshot).where(RiskMapSnapshot.as_of == NOW.date()))}
    assert sum(risk_map().values()) == 39
    before = (risk_map(), _flag_states(outbox_db))
    store_flags.fn(pd.DataFrame(columns=FLAG_COLUMNS), NOW.date(), outbox_db)
    assert (risk_map(), _flag_states(outbox_db)) == before


def _flag_states(url: str) -> dict:
    from schemas.models import RiskFlag

    with session_scope(url) as s:
        return {f.id: (f.status, f.outcome, f.closed_at) for f in s.scalars(select(RiskFlag))}


# ------------------------------------------------------------------ the summary report
from tests.test_summary_report import county  # noqa: E402,F401  (fixture)


def test_report_counts_the_register_as_it_stood_at_the_period_end(county):  # noqa: F811
    """在册 / 重点家庭 of a past period: registered by its last day and not taken off by then. A
    plan cancelled because its family left after the period was open at its end; one cancelled
    because it left before its due day was no visit to make."""
    from schemas.models import VisitPlan
    from tasks.summary_report import gather_aggregates

    _deregister(county, "H0", datetime(2026, 11, 15), "moved_away")
    _deregister(county, "H1", datetime(2026, 12, 3), "deceased")
    with session_scope(county) as s:
        s.get(Household, "H5").registered_at = datetime(2026, 12, 2, 9)
        for h, due, status in (("H0", date(2026, 11, 20), "cancelled"), ("H1", date(2026, 11, 20), "cancelled"),
                               ("H2", date(2026, 11, 10), "planned"), ("H3", date(2026, 11, 10), "planned"),
                               ("H4", date(2026, 11, 10), "planned")):
            s.add(VisitPlan(id=f"P{h}", household_id=h, cadre_id="GW1", grid_id="G1", due_date=due,
                            reason="empty_nest", urgent=False, status=status, planned_on=date(2026, 11, 1)))
    november = gather_aggregates.fn(date(2026, 11, 1), date(2026, 11, 30), county)["aggregates"]
    assert (november["households"], november["must_visit_households"]) == (4, 4)   # H1–H4
    assert november["visits_planned"] == 4                                          # H1's still open
    october = gather_aggregates.fn(date(2026, 10, 1), date(2026, 10, 31), county)["aggregates"]
    assert (october["households"], october["must_visit_households"]) == (5, 5)     # H0–H4
    december = gather_aggregates.fn(date(2026, 12, 1), date(2026, 12, 31), county)["aggregates"]
    assert december["households"] == 4                                              # H2–H5


def test_a_family_back_on_the_register_gets_back_the_plans_its_removal_cancelled(database_url, tmp_path):
    """A family removed by mistake and marked 在册 again: its visits are due from its last visit,
    so the planner derives the same plans (same ids) its removal cancelled. They are planned
    again, not left cancelled (insert-or-ignore kept them so: the family had no open visit)."""
    from schemas.models import Visit
    from tasks.schedule_visits import plan_visits, store_plan

    _seed_families(database_url)
    with session_scope(database_url) as s:
        s.add_all([Visit(id=f"X{h}", household_id=h, cadre_id="a", visited_at=datetime(2026, 11, 16, 10),
                         mode="visit", steps=[]) for h in ("h1", "h2")])

    def evening(day):
        return store_plan.fn(plan_visits.fn(day, database_url=database_url), day, str(tmp_path),
                             database_url=database_url)

    tuesday = MONDAY + timedelta(days=1)
    evening(MONDAY)
    _deregister(database_url, "h1", datetime(2026, 11, 24, 10))
    evening(tuesday)
    assert {p[3] for p in _plans(database_url) if p[1] == "h1"} == {"cancelled"}
    # A replay of Monday while h1 is off the register reopens nothing.
    evening(MONDAY)
    assert {p[3] for p in _plans(database_url) if p[1] == "h1"} == {"cancelled"}

    _deregister(database_url, "h1", None, None)
    wednesday = tuesday + timedelta(days=1)
    derived = plan_visits.fn(wednesday, database_url=database_url).plans
    evening(wednesday)
    stored = {p[0]: p[3] for p in _plans(database_url)}
    assert {stored[i] for i in derived.visit_id[derived.household_id == "h1"]} == {"planned"}
    after = _plans(database_url)
    assert evening(wednesday)["new_plans"] == 0 and _plans(database_url) == after



def test_alerts_of_a_family_taken_off_the_register_are_not_sent_before_the_next_risk_run(outbox_db):  # noqa: F811
    """The households import takes a family off the register during the day; ``sibifang serve``
    claims its queued alerts before the evening's risk run closes its flags: none is sent."""
    from schemas.models import Alert
    from sibifang.outbox import claim_due
    from tasks.dispatch_alerts import enqueue

    assert enqueue(NOW, outbox_db)
    _deregister(outbox_db, "H000", NOW - timedelta(hours=1), "moved_away")
    _deregister(outbox_db, "H005", NOW + timedelta(hours=1), "moved_away")  # not yet: its alerts go out
    with session_scope(outbox_db) as s:
        claimed = set(claim_due(s, now=NOW, real_now=NOW, limit=1000))
        alerts = {a.id: (a.flag_id, a.status) for a in s.scalars(select(Alert))}
    gone = {i for i, (f, _) in alerts.items() if f == "F000"}
    assert gone and not gone & claimed
    assert {alerts[i][1] for i in gone} == {"cancelled"}
    assert {i for i, (f, _) in alerts.items() if f == "F005"} <= claimed


def test_a_removal_later_on_the_run_s_day_raises_nothing_that_day(outbox_db):  # noqa: F811
    """A family taken off the register at 15:00 is off it for that whole day, as the planner
    (on_register) and the closing of its open flags (by the day's end) read it: an episode the
    meters showed at 10:00 is not raised that evening as a flag nobody closes until the next day."""
    from schemas.models import Meter, RiskFlag
    from tasks.flag_risks import derive_flags, store_flags

    with session_scope(outbox_db) as s:
        s.add_all([Meter(id="M0", household_id="H000", interval_minutes=60),
                   Meter(id="M1", household_id="H001", interval_minutes=60)])
    _deregister(outbox_db, "H000", datetime.combine(NOW.date(), datetime.min.time()) + timedelta(hours=15))
    got = derive_flags.fn(_episodes(NOW), NOW.date(), outbox_db)
    assert list(got.household_id) == ["H001"]
    store_flags.fn(got, NOW.date(), outbox_db)
    with session_scope(outbox_db) as s:
        assert not list(s.scalars(select(RiskFlag).where(RiskFlag.household_id == "H000",
                                                         RiskFlag.status == "open")))


def test_a_family_back_on_the_register_is_flagged_again_for_an_episode_still_going_on(outbox_db):  # noqa: F811
    """A family taken off the register by mistake has its open flag closed (deregistered); marked
    在册 again while its meter is still silent, the episode is flagged again (a flag of its own,
    so its alerts go out), once. Withdrawn with the removal, the closed flag settled nothing."""
    from schemas.models import Meter, RiskFlag
    from tasks.flag_risks import derive_flags, store_flags

    with session_scope(outbox_db) as s:
        s.add(Meter(id="M9", household_id="H009", interval_minutes=60))
    day = NOW.date()
    episode = pd.DataFrame([{"meter_id": "M9", "kind": "inactivity", "severity": "high", "score": 5.0,
                             "start": NOW - timedelta(hours=10), "detected_at": NOW, "end": None,
                             "evidence": "用电接近停止"}])

    def run(n):
        d = day + timedelta(days=n)
        store_flags.fn(derive_flags.fn(episode.assign(detected_at=NOW + timedelta(days=n)), d, outbox_db),
                       d, outbox_db)
        with session_scope(outbox_db) as s:
            return sorted((f.status, f.outcome) for f in s.scalars(select(RiskFlag).where(RiskFlag.meter_id == "M9")))

    assert run(0) == [("open", None)]
    _deregister(outbox_db, "H009", NOW + timedelta(days=1), "moved_away")
    assert run(1) == [("closed", "deregistered")]
    _deregister(outbox_db, "H009", None, None)
    assert run(2) == [("closed", "deregistered"), ("open", None)]
    assert run(2) == run(3) == [("closed", "deregistered"), ("open", None)]


def test_an_import_moment_with_a_time_zone_is_the_local_time_on_both_engines(database_url, tmp_path):
    """``now`` given with its zone (a flow parameter typed 2026-11-01T16:00:00Z) is the naive local
    time every other stored moment is: SQLite kept 16:00 (its wall time), PostgreSQL converted it
    by the session's zone; a family registered at local midnight of 2 Nov is on November's register."""
    from datetime import timezone

    from tasks.import_registry import import_file

    _areas(database_url)
    header = HEADER + ",状态,注销日期"
    f = _file(tmp_path, "z.csv", f"H1,甲,{GOOD_ID},13800000000,住址,G1,empty_nest,,",
              f"H2,乙,{OTHER_ID},13800000001,住址,G1,hardship,迁出,", header=header)
    import_file("households", f, database_url=database_url, out_dir=tmp_path,
                now=datetime(2026, 11, 1, 16, 0, tzinfo=timezone.utc))
    local = datetime(2026, 11, 2, 0, 0)
    assert _state(database_url) == {"H1": (local, None, None), "H2": (local, local, "moved_away")}
