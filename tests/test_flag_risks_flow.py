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
