"""The flag_risks flow under Prefect's test harness, on both database engines."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import select


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
