"""The flag_risks flow under Prefect's test harness, on both database engines."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import select

from tests.test_outbox import outbox_db  # noqa: F401  (fixture)


def _meter_flags(database_url: str) -> list[str]:
    from schemas.models import RiskFlag
    from sibifang.db import session_scope

    with session_scope(database_url) as s:
        return list(s.scalars(select(RiskFlag.kind).where(RiskFlag.meter_id == "M1")))


def test_todays_run_judges_the_readings_up_to_now_not_the_hours_still_to_come(prefect_harness, database_url,
                                                                              app_env, monkeypatch):
    """At 10:00 a meter that has read every 15 minutes is not offline for the rest of the day;
    the next morning, silent since, it is."""
    import flows.flag_risks as flag_flow
    from sibifang.readings_store import ReadingStore
    from tests.test_detectors import routine
    from tests.test_inbox_rejects import seed, use_database

    clock = datetime(2026, 11, 20, 10, 0)
    monkeypatch.setattr(flag_flow, "local_now", lambda: clock)
    use_database(monkeypatch, database_url)
    seed(database_url)
    readings = routine("M1", days=40, interval=15, start=pd.Timestamp(clock) - pd.Timedelta(days=40))
    ReadingStore.from_settings().append(readings[readings.ts <= pd.Timestamp(clock)])
    flag_flow.flag_risks(clock.date())
    assert "meter_offline" not in _meter_flags(database_url)

    next_morning = datetime(2026, 11, 21, 10, 0)
    monkeypatch.setattr(flag_flow, "local_now", lambda: next_morning)
    flag_flow.flag_risks(next_morning.date())
    assert "meter_offline" in _meter_flags(database_url)


def _replay(store, as_of: pd.Timestamp, days: int = 35, absences: pd.DataFrame | None = None) -> pd.DataFrame:
    """The whole window replayed at once, as the task did before it kept a checkpoint."""
    from sibifang.detectors import detect_matrix
    from sibifang.profile_cache import hourly_kwh

    end = as_of.ceil("h")
    start = as_of.normalize() - pd.Timedelta(days=days)
    kwh, ids = hourly_kwh(store, start, end)
    out = detect_matrix(kwh, ids, start, 60, absences=absences)
    return out[out.detected_at <= as_of]


def test_later_runs_of_the_day_resume_from_the_midnight_checkpoint(database_url, app_env, monkeypatch):
    """The day's first run replays the month up to midnight and keeps the profiles; a later run
    reads them back and reports what a replay of the whole window reports. A late file for
    yesterday changes the history: the next run replays it again."""
    from sibifang.readings_store import ReadingStore
    from tasks.flag_risks import detect_meter_episodes
    from tests.test_detectors import lights_off, routine
    from tests.test_inbox_rejects import seed, use_database

    use_database(monkeypatch, database_url)
    seed(database_url)
    morning, afternoon = pd.Timestamp("2026-11-20 07:00"), pd.Timestamp("2026-11-20 16:00")
    start = morning.normalize() - pd.Timedelta(days=40)
    meters = [routine(f"M{k}", days=41, interval=15, seed=k, start=start) for k in range(4)]
    meters[1] = lights_off(meters[1], morning.normalize() - pd.Timedelta(hours=3), hours=30, interval=15)
    dropped = meters[2].ts > morning.normalize() - pd.Timedelta(days=4)      # the Wandi case, open at midnight
    meters[2].loc[dropped, "kwh"] *= 0.35
    readings = pd.concat(meters, ignore_index=True)
    held_back = (readings.meter_id == "M3") & (readings.ts > morning.normalize() - pd.Timedelta(hours=6)) \
        & (readings.ts <= morning.normalize())
    store = ReadingStore.from_settings()
    store.append(readings[(readings.ts <= afternoon) & ~held_back])
    profiles = app_env / "data" / "profiles"

    first = detect_meter_episodes.fn(morning.to_pydatetime())
    kept = sorted(profiles.glob("*.pkl"))
    assert [p.name for p in kept] == ["2026-11-20T0000.pkl"]
    stamp = kept[0].stat().st_mtime_ns
    assert "inactivity" in set(first[first.meter_id == "M1"].kind)

    later = detect_meter_episodes.fn(afternoon.to_pydatetime())
    assert kept[0].stat().st_mtime_ns == stamp                    # read back, not fitted again
    key = ["meter_id", "kind", "start", "detected_at", "end", "severity", "score", "evidence"]

    def same_as_replay(got):
        full = _replay(store, afternoon)
        assert (full.detected_at > afternoon.normalize()).sum() >= 1
        assert (full.detected_at < afternoon.normalize()).sum() >= 1
        pd.testing.assert_frame_equal(got[key].sort_values(key[:4]).reset_index(drop=True),
                                      full[key].sort_values(key[:4]).reset_index(drop=True), check_exact=False)
    same_as_replay(later)

    store.append(readings[held_back])                              # yesterday's late readings
    again = detect_meter_episodes.fn(afternoon.to_pydatetime())
    assert kept[0].stat().st_mtime_ns != stamp
    same_as_replay(again)


def test_an_open_ended_absence_does_not_refit_every_run(database_url, app_env, monkeypatch):
    """Away with no return date recorded: the absence runs "until now", which moves every run,
    but the history before midnight does not: the day's fit is read back, and the run reports
    what a replay with the same absence reports (the silence while away raises nothing)."""
    from datetime import date

    from sqlalchemy import update

    from schemas.models import Household
    from sibifang.db import session_scope
    from sibifang.readings_store import ReadingStore
    from tasks.flag_risks import detect_meter_episodes
    from tests.test_detectors import lights_off, routine
    from tests.test_inbox_rejects import seed, use_database

    use_database(monkeypatch, database_url)
    seed(database_url)
    with session_scope(database_url) as s:
        s.execute(update(Household).where(Household.id == "H1").values(away_from=date(2026, 11, 18), away_until=None))
    readings = lights_off(routine("M1", days=41, interval=15, start=pd.Timestamp("2026-10-11")),
                          pd.Timestamp("2026-11-18 09:00"), hours=80, interval=15)
    store = ReadingStore.from_settings()
    store.append(readings[readings.ts <= pd.Timestamp("2026-11-20 16:00")])
    detect_meter_episodes.fn(datetime(2026, 11, 20, 7))
    (kept,) = (app_env / "data" / "profiles").glob("*.pkl")
    stamp = kept.stat().st_mtime_ns
    later = detect_meter_episodes.fn(datetime(2026, 11, 20, 15, 30))
    assert kept.stat().st_mtime_ns == stamp
    away = pd.DataFrame({"meter_id": ["M1"], "start": [pd.Timestamp("2026-11-18")],
                         "end": [pd.Timestamp("2026-11-21 15:30")]})
    key = ["meter_id", "kind", "start", "detected_at", "end", "severity", "score", "evidence"]
    full = _replay(store, pd.Timestamp("2026-11-20 15:30"), absences=away)
    pd.testing.assert_frame_equal(later[key].sort_values(key[:4]).reset_index(drop=True),
                                  full[key].sort_values(key[:4]).reset_index(drop=True), check_exact=False)
    silent_while_away = _replay(store, pd.Timestamp("2026-11-20 15:30"))
    assert (silent_while_away.kind == "inactivity").any() and not (later.kind == "inactivity").any()


# --- the unresolved-difficulty flag across closings (store_flags over derive_flags) -------------

def _set_register(url: str, hid: str, off_at: datetime | None) -> None:
    """Take a family off the register from ``off_at`` (迁出), or put it back (在册: None)."""
    from schemas.models import Household
    from sibifang.db import session_scope

    with session_scope(url) as s:
        h = s.get(Household, hid)
        h.deregistered_at, h.deregistered_reason = off_at, ("moved_away" if off_at else None)


def _difficulty_visits(url: str, hid: str, days: list[datetime]) -> None:
    from tests.test_store_flags import _import_visit

    for i, at in enumerate(days):
        _import_visit(url, f"VR{hid}{i}", hid, at, at, difficulties="老人看病缺钱")


def test_a_family_put_back_on_the_register_with_its_difficulty_still_going_on_is_flagged_again(outbox_db):  # noqa: F811
    """The family moved out (迁出), its open 反复反映困难 flag closed as ``deregistered``; a later file
    puts it back (在册). Nobody answered the difficulty: nothing was measured, the visits are still in
    the window. Its closing answered nothing, as a corrected record's does not: it is flagged again,
    once (a re-run changes nothing)."""
    from datetime import date

    from tests.test_store_flags import _flags, _fresh, _risk_stage

    _fresh(outbox_db)
    _difficulty_visits(outbox_db, "H002", [datetime(2026, 8, 1, 10), datetime(2026, 8, 20, 10),
                                           datetime(2026, 9, 10, 10)])
    _risk_stage(outbox_db, date(2026, 9, 10))
    assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "open", None)]
    _set_register(outbox_db, "H002", datetime(2026, 9, 15))
    _risk_stage(outbox_db, date(2026, 9, 15))
    assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "closed", "deregistered")]
    _set_register(outbox_db, "H002", None)
    for day in (date(2026, 9, 20), date(2026, 9, 20), date(2026, 9, 21)):
        _risk_stage(outbox_db, day)
        assert sorted(_flags(outbox_db, "H002"), key=str) == [("unresolved_difficulty", "closed", "deregistered"),
                                                              ("unresolved_difficulty", "open", None)]


def test_a_family_put_back_after_its_first_visit_left_the_window_is_flagged_again(outbox_db):  # noqa: F811
    """As above, but put back weeks later: the window has slid, the candidate has another key. The
    closing by removal still answered nothing."""
    from datetime import date

    from tests.test_store_flags import _flags, _fresh, _risk_stage

    _fresh(outbox_db)
    _difficulty_visits(outbox_db, "H002", [datetime(2026, 8, 1, 10), datetime(2026, 8, 20, 10),
                                           datetime(2026, 9, 10, 10)])
    _risk_stage(outbox_db, date(2026, 9, 10))
    _set_register(outbox_db, "H002", datetime(2026, 9, 15))
    _risk_stage(outbox_db, date(2026, 9, 15))
    _set_register(outbox_db, "H002", None)
    for day in (date(2026, 11, 1), date(2026, 11, 1)):        # the 08-01 visit left the window on 10-31
        _risk_stage(outbox_db, day)
        assert sorted(_flags(outbox_db, "H002"), key=str) == [("unresolved_difficulty", "closed", "deregistered"),
                                                              ("unresolved_difficulty", "open", None)]


def test_a_closed_difficulty_is_raised_again_by_the_visit_date_not_the_day_the_sheet_came_in(outbox_db):  # noqa: F811
    """The closing answered the family as it was when the grid worker closed the flag. A sheet of a
    visit made before the closing, typed in after it, tells of a time she already answered: it
    raises nothing, even once the window has slid. One of a visit after the closing, typed in
    late, is the difficulty recorded again: it is raised."""
    from datetime import date

    from schemas.models import RiskFlag
    from sibifang.db import session_scope
    from tests.test_store_flags import _flags, _fresh, _import_visit, _risk_stage

    _fresh(outbox_db)
    _difficulty_visits(outbox_db, "H002", [datetime(2026, 8, 1, 10), datetime(2026, 8, 20, 10),
                                           datetime(2026, 9, 10, 10)])
    _risk_stage(outbox_db, date(2026, 9, 10))
    with session_scope(outbox_db) as s:
        s.execute(RiskFlag.__table__.update().where(RiskFlag.household_id == "H002")
                  .values(status="closed", outcome="visited_all_well", closed_at=datetime(2026, 9, 12, 9)))
    _import_visit(outbox_db, "VLATE1", "H002", datetime(2026, 9, 11, 10), datetime(2026, 9, 20, 9),
                  difficulties="看病钱还是没着落")
    for day in (date(2026, 9, 20), date(2026, 11, 1), date(2026, 11, 25)):   # 11-25: only 09-10 and 09-11 left
        _risk_stage(outbox_db, day)
        assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "closed", "visited_all_well")]
    _import_visit(outbox_db, "VLATE2", "H002", datetime(2026, 11, 20, 10), datetime(2026, 11, 26, 9),
                  difficulties="看病钱还是没着落")
    for _ in range(2):
        _risk_stage(outbox_db, date(2026, 11, 26))
        assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "closed", "visited_all_well"),
                                             ("unresolved_difficulty", "open", None)]


def test_a_replayed_day_reads_only_the_sheets_recorded_by_its_end(outbox_db):  # noqa: F811
    """A replay of a past day reads what had been recorded by then: a sheet of a visit made before
    that day but typed in after it is neither a finding nor a difficulty recorded again on that day
    (read as a hand-over's history, by its visit date, it was). The day it came in reads it."""
    from datetime import date

    from tests.test_store_flags import _flags, _fresh, _import_visit, _risk_stage

    _fresh(outbox_db)
    _import_visit(outbox_db, "VR1", "H001", datetime(2026, 11, 15, 10), datetime(2026, 11, 20, 9),
                  notes="女方称丈夫家暴")
    _import_visit(outbox_db, "VR2", "H002", datetime(2026, 9, 1, 10), datetime(2026, 9, 1, 10),
                  difficulties="老人看病缺钱")
    _import_visit(outbox_db, "VR3", "H002", datetime(2026, 9, 5, 10), datetime(2026, 11, 20, 9),
                  difficulties="老人看病缺钱")
    _risk_stage(outbox_db, date(2026, 11, 19))
    assert _flags(outbox_db, "H001") == [] and _flags(outbox_db, "H002") == []
    _risk_stage(outbox_db, date(2026, 11, 20))
    assert _flags(outbox_db, "H001") == [("domestic_violence", "open", None)]
    assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "open", None)]


def test_a_family_still_off_the_register_gets_no_difficulty_flag_as_the_window_slides(outbox_db):  # noqa: F811
    """Its removal closed the flag; while the family stays off (迁出), the window sliding over its
    old visits raises nothing under another key."""
    from datetime import date

    from tests.test_store_flags import _flags, _fresh, _risk_stage

    _fresh(outbox_db)
    _difficulty_visits(outbox_db, "H002", [datetime(2026, 8, 1, 10), datetime(2026, 8, 20, 10),
                                           datetime(2026, 9, 10, 10)])
    _risk_stage(outbox_db, date(2026, 9, 10))
    _set_register(outbox_db, "H002", datetime(2026, 9, 15))
    for day in (date(2026, 9, 15), date(2026, 11, 1), date(2026, 11, 2)):
        _risk_stage(outbox_db, day)
        assert _flags(outbox_db, "H002") == [("unresolved_difficulty", "closed", "deregistered")]


def test_a_cue_in_the_business_finding_is_flagged(outbox_db):  # noqa: F811
    """企情 is read like 家情 and 妇情 (visit_cue_flags): the task reads it from the sheet."""
    from sibifang.db import session_scope
    from sibifang.import_registry import store_accepted
    from tests.test_store_flags import _flags, _fresh, _risk_stage

    _fresh(outbox_db)
    at = datetime(2026, 11, 20, 10)
    row = {"visit_id": "VB1", "household_id": "H001", "cadre_id": "GW1", "visited_at": at, "mode": "visit",
           "business_situation": "丈夫赌博输光店里资金", "notes": None, "difficulties": None, "measures": None}
    with session_scope(outbox_db) as s:
        store_accepted(s, "visits", pd.DataFrame([row]), source="visits.csv", now=at)
    _risk_stage(outbox_db, at.date())
    assert _flags(outbox_db, "H001") == [("gambling", "open", None)]
