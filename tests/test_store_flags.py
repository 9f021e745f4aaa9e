"""Flags on record across runs (store_flags): raised once, settled by the records, and the
household levels and risk map that follow from them."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
from sqlalchemy import delete, select

from schemas.models import Household, RiskFlag, RiskMapSnapshot, Visit
from sibifang.db import session_scope
from sibifang.flag_risks import FLAG_COLUMNS, Lexicon, visit_cue_flags
from tests.test_outbox import outbox_db  # noqa: F401  (fixture)


def _fresh(url: str) -> None:
    """The fixture's village without its flags."""
    with session_scope(url) as s:
        s.execute(delete(RiskFlag))


def _visit(vid: str, hid: str, when: str, notes: str) -> pd.DataFrame:
    return visit_cue_flags(pd.DataFrame([{"visit_id": vid, "household_id": hid, "visited_at": when, "notes": notes}]),
                           Lexicon.load())


def _flags(url: str, hid: str) -> list[tuple]:
    with session_scope(url) as s:
        return [(f.kind, f.status, f.outcome) for f in
                s.scalars(select(RiskFlag).where(RiskFlag.household_id == hid).order_by(RiskFlag.start))]


def _map(url: str, day: date) -> dict:
    with session_scope(url) as s:
        return {(r.grid_id, r.level): r.households
                for r in s.scalars(select(RiskMapSnapshot).where(RiskMapSnapshot.as_of == day))}


def test_the_days_map_is_redrawn_whole_when_a_level_empties_between_runs(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    _fresh(outbox_db)
    store_flags.fn(pd.DataFrame(columns=FLAG_COLUMNS), date(2026, 11, 19), outbox_db)
    day = date(2026, 11, 20)
    store_flags.fn(_visit("V1", "H001", "2026-11-20 10:00", "女方称丈夫家暴"), day, outbox_db)
    assert _map(outbox_db, day)[("G1", "红")] == 1
    with session_scope(outbox_db) as s:
        s.execute(RiskFlag.__table__.update().values(status="closed", outcome="visited_all_well",
                                                     closed_at=datetime(2026, 11, 20, 12)))
    store_flags.fn(pd.DataFrame(columns=FLAG_COLUMNS), day, outbox_db)      # the day's later run
    m = _map(outbox_db, day)
    assert m.get(("G1", "红"), 0) == 0
    assert sum(m.values()) == 40 == sum(m.get((g, "绿"), 0) for g in ("G1", "G2"))


def test_a_visit_merged_into_a_closed_flag_is_not_raised_again(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    _fresh(outbox_db)
    both = pd.concat([_visit("V1", "H001", "2026-11-18 10:00", "丈夫家暴"),
                      _visit("V2", "H001", "2026-11-19 10:00", "又被家暴")], ignore_index=True)
    store_flags.fn(both, date(2026, 11, 19), outbox_db)
    assert _flags(outbox_db, "H001") == [("domestic_violence", "open", None)]
    with session_scope(outbox_db) as s:
        s.execute(RiskFlag.__table__.update().values(status="closed", outcome="visited_all_well",
                                                     closed_at=datetime(2026, 11, 20, 9)))
    store_flags.fn(both, date(2026, 11, 21), outbox_db)
    assert _flags(outbox_db, "H001") == [("domestic_violence", "closed", "visited_all_well")]
    # a new finding days after is a new flag
    store_flags.fn(pd.concat([both, _visit("V3", "H001", "2026-11-25 10:00", "丈夫殴打")]), date(2026, 11, 25),
                   outbox_db)
    assert _flags(outbox_db, "H001")[-1] == ("domestic_violence", "open", None)


def test_flags_the_records_settle_close_and_the_level_follows(outbox_db):  # noqa: F811
    from sibifang.flag_risks import overdue_visit_flags
    from tasks.flag_risks import store_flags

    _fresh(outbox_db)
    plan = pd.DataFrame([{"id": "P1", "household_id": "H001", "status": "planned", "due_date": date(2026, 11, 1),
                          "window_end": date(2026, 11, 5), "urgent": True}])
    overdue = overdue_visit_flags(plan, date(2026, 11, 20))
    meter = pd.DataFrame([{"flag_id": "FM", "dedup_key": "meter|M3|inactivity|2026-11-19T20:00", "household_id": "H003",
                           "meter_id": "M3", "kind": "inactivity", "severity": "critical", "score": 5.0,
                           "start": pd.Timestamp("2026-11-19 20:00"), "detected_at": pd.Timestamp("2026-11-20 08:00"),
                           "end": pd.NaT, "evidence": "用电接近停止", "details": {}}], columns=FLAG_COLUMNS)
    store_flags.fn(pd.concat([overdue, meter], ignore_index=True), date(2026, 11, 20), outbox_db)
    with session_scope(outbox_db) as s:
        assert s.get(Household, "H001").risk_level == "橙" and s.get(Household, "H003").risk_level == "红"
        # the family of H003 turns out to have been in hospital since the 19th
        s.get(Household, "H003").away_from = date(2026, 11, 19)
    # the planner marked the plan missed (no longer a candidate): the family still waits
    store_flags.fn(pd.DataFrame(columns=FLAG_COLUMNS), date(2026, 11, 21), outbox_db)
    assert _flags(outbox_db, "H001") == [("overdue_visit", "open", None)]
    with session_scope(outbox_db) as s:
        s.add(Visit(id="VX", household_id="H001", cadre_id="GW1", visited_at=datetime(2026, 11, 21, 15), mode="visit"))
    store_flags.fn(pd.DataFrame(columns=FLAG_COLUMNS), date(2026, 11, 21), outbox_db)
    assert _flags(outbox_db, "H001") == [("overdue_visit", "closed", "visited")]
    assert _flags(outbox_db, "H003") == [("inactivity", "closed", "absence_recorded")]
    with session_scope(outbox_db) as s:
        assert s.get(Household, "H001").risk_level == "绿" and s.get(Household, "H003").risk_level == "绿"


def test_the_reasons_follow_the_flags_when_the_score_stays_the_same(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    _fresh(outbox_db)
    store_flags.fn(_visit("V1", "H001", "2026-11-18 10:00", "闹离婚"), date(2026, 11, 18), outbox_db)
    with session_scope(outbox_db) as s:
        s.execute(RiskFlag.__table__.update().values(status="closed", outcome="visited_all_well",
                                                     closed_at=datetime(2026, 11, 19, 9)))
    store_flags.fn(_visit("V2", "H001", "2026-11-20 10:00", "丈夫欠下赌债"), date(2026, 11, 20), outbox_db)
    with session_scope(outbox_db) as s:
        h = s.get(Household, "H001")
        assert h.risk_score == 35 and any("赌" in r for r in h.risk_reasons)
        assert not any("离婚" in r for r in h.risk_reasons)


def test_a_visit_corrected_to_another_family_moves_its_flag_there(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    _fresh(outbox_db)
    store_flags.fn(_visit("V1", "H001", "2026-11-18 10:00", "女方称丈夫家暴"), date(2026, 11, 18), outbox_db)
    # the village re-sends the sheet: the visit was to H002, typed against H001 by mistake
    corrected = _visit("V1", "H002", "2026-11-18 10:00", "女方称丈夫家暴")
    for _ in range(2):  # and a re-run changes nothing
        store_flags.fn(corrected, date(2026, 11, 19), outbox_db)
        assert _flags(outbox_db, "H001") == [("domestic_violence", "closed", "record_corrected")]
        assert _flags(outbox_db, "H002") == [("domestic_violence", "open", None)]
    with session_scope(outbox_db) as s:
        assert s.get(Household, "H001").risk_level == "绿" and s.get(Household, "H002").risk_level == "红"


def test_a_visit_corrected_back_to_its_first_family_flags_that_family_again(outbox_db):  # noqa: F811
    from tasks.flag_risks import store_flags

    _fresh(outbox_db)
    store_flags.fn(_visit("V1", "H001", "2026-11-18 10:00", "女方称丈夫家暴"), date(2026, 11, 18), outbox_db)
    store_flags.fn(_visit("V1", "H002", "2026-11-18 10:00", "女方称丈夫家暴"), date(2026, 11, 19), outbox_db)
    # the re-sent sheet was the mistake: the visit was to H001 after all
    back = _visit("V1", "H001", "2026-11-18 10:00", "女方称丈夫家暴")
    for _ in range(2):  # and a re-run changes nothing
        store_flags.fn(back, date(2026, 11, 20), outbox_db)
        assert ("domestic_violence", "open", None) in _flags(outbox_db, "H001")
        assert _flags(outbox_db, "H002") == [("domestic_violence", "closed", "record_corrected")]


def _import_visit(url: str, vid: str, hid: str, when: datetime, recorded: datetime, *, notes: str | None = None,
                  difficulties: str | None = None, history: bool = False) -> None:
    """A visit sheet stored by the import on ``recorded`` (the county office's batch of paper sheets;
    ``history``: part of a register hand-over)."""
    from sibifang.import_registry import store_accepted

    row = {"visit_id": vid, "household_id": hid, "cadre_id": "GW1", "visited_at": when, "mode": "visit",
           "notes": notes, "difficulties": difficulties, "measures": None}
    with session_scope(url) as s:
        store_accepted(s, "visits", pd.DataFrame([row]), source="county_batch.csv", now=recorded, history=history)


def _risk_stage(url: str, day: date) -> None:
    from tasks.flag_risks import derive_flags, store_flags

    store_flags.fn(derive_flags.fn(pd.DataFrame(), day, url), day, url)


def test_a_danger_cue_on_a_sheet_recorded_weeks_late_reaches_a_grid_worker(outbox_db):  # noqa: F811
    """A sheet typed in 40 days after the visit (家暴 on it) is still read: the flag starts at the
    visit, is detected when the sheet came in, stays open and is alerted; re-running and
    re-importing the sheet change nothing."""
    from schemas.models import Alert
    from tasks.dispatch_alerts import enqueue

    _fresh(outbox_db)
    day = date(2026, 11, 20)
    visited, recorded = datetime(2026, 10, 11, 10), datetime(2026, 11, 20, 9)
    _import_visit(outbox_db, "VL1", "H001", visited, recorded, notes="女方称丈夫家暴")
    _risk_stage(outbox_db, day - timedelta(days=1))          # a replay of the day before: not recorded yet
    assert _flags(outbox_db, "H001") == []
    _risk_stage(outbox_db, day)
    assert _flags(outbox_db, "H001") == [("domestic_violence", "open", None)]
    with session_scope(outbox_db) as s:
        flag = s.scalars(select(RiskFlag).where(RiskFlag.household_id == "H001")).one()
        assert (flag.start, flag.detected_at) == (visited, recorded)
    enqueue(datetime(2026, 11, 20, 10), outbox_db)
    with session_scope(outbox_db) as s:
        alerts = sorted(s.scalars(select(Alert.id).where(Alert.flag_id == flag.id)))
    assert alerts
    # the office sends the batch again the next week: the sheet keeps when it was first recorded
    _import_visit(outbox_db, "VL1", "H001", visited, datetime(2026, 11, 27, 9), notes="女方称丈夫家暴")
    with session_scope(outbox_db) as s:
        assert s.get(Visit, "VL1").recorded_at == recorded
    for _ in range(2):
        _risk_stage(outbox_db, day)
        enqueue(datetime(2026, 11, 20, 10), outbox_db)
    assert _flags(outbox_db, "H001") == [("domestic_violence", "open", None)]
    with session_scope(outbox_db) as s:
        assert sorted(s.scalars(select(Alert.id).where(Alert.flag_id == flag.id))) == alerts


def test_a_hand_overs_visit_history_is_read_by_its_visit_dates_not_alerted_as_news(outbox_db):  # noqa: F811
    """The register handed over at go-live holds months of visits: they were recorded when they
    were made. Read as sheets typed in that day, every old 家暴 note of the archive would be
    raised and alerted at once (the demo's five days went from 505 to 1,177 alerts). A hand-over's
    visits keep no recorded_at: the 40-day-old note is outside the 30-day window as before, and a
    10-day-old one is flagged at its visit time, which dispatch (flags of the last 48 h) does not
    alert on go-live day."""
    from schemas.models import Alert
    from tasks.dispatch_alerts import enqueue

    _fresh(outbox_db)
    day = date(2026, 11, 20)
    go_live = datetime(2026, 11, 20, 9)
    _import_visit(outbox_db, "VH1", "H001", datetime(2026, 10, 11, 10), go_live, notes="女方称丈夫家暴", history=True)
    _import_visit(outbox_db, "VH2", "H002", datetime(2026, 11, 10, 10), go_live, notes="女方称丈夫家暴", history=True)
    _risk_stage(outbox_db, day)
    assert _flags(outbox_db, "H001") == []
    with session_scope(outbox_db) as s:
        assert s.get(Visit, "VH1").recorded_at is None
        (flag,) = s.scalars(select(RiskFlag).where(RiskFlag.household_id == "H002")).all()
        assert flag.detected_at == datetime(2026, 11, 10, 10)
    enqueue(datetime(2026, 11, 20, 10), outbox_db)
    with session_scope(outbox_db) as s:
        assert s.scalars(select(Alert.id).where(Alert.flag_id == flag.id)).all() == []


def test_a_closed_unresolved_difficulty_is_not_raised_again_when_its_first_visit_leaves_the_window(outbox_db):  # noqa: F811
    """The grid worker closed the 反复反映困难 flag; as days pass, its first visit leaves the 90-day
    window and the visits left make up a candidate under another key. Nothing new was recorded:
    nothing is raised. A visit after the closing that records the difficulty again, still without
    a measure, raises it again."""
    _fresh(outbox_db)
    for vid, day in (("VD1", date(2026, 8, 1)), ("VD2", date(2026, 8, 20)), ("VD3", date(2026, 9, 10))):
        at = datetime.combine(day, datetime.min.time()).replace(hour=10)
        _import_visit(outbox_db, vid, "H002", at, at, difficulties="老人看病缺钱")
    _risk_stage(outbox_db, date(2026, 9, 10))
    assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "open", None)]
    with session_scope(outbox_db) as s:
        s.execute(RiskFlag.__table__.update().where(RiskFlag.household_id == "H002")
                  .values(status="closed", outcome="visited_all_well", closed_at=datetime(2026, 9, 12, 9)))
    for day in (date(2026, 10, 30), date(2026, 10, 31), date(2026, 11, 1)):   # VD1 leaves the window on 10-31
        _risk_stage(outbox_db, day)
        assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "closed", "visited_all_well")]
    again = datetime(2026, 11, 5, 10)
    _import_visit(outbox_db, "VD4", "H002", again, again, difficulties="看病钱还是没着落")
    for _ in range(2):  # and a re-run changes nothing
        _risk_stage(outbox_db, again.date())
        assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "closed", "visited_all_well"),
                                             ("unresolved_difficulty", "open", None)]
