"""Flow: flag risks (风险研判) from meter readings, visit records and overdue visits."""

from __future__ import annotations

from datetime import date

from prefect import flow

from sibifang.settings import local_now
from tasks.common import as_of_date, end_of_day, validate_handover
from tasks.flag_risks import derive_flags, detect_meter_episodes, store_flags


@flow(name="flag_risks", description="Detect electricity anomalies of elderly people living alone, dispute and "
      "safety cues in visit notes and overdue must-visits; raise each episode once; update risk levels and map.")
def flag_risks(as_of: date | None = None) -> dict:
    day = as_of_date(as_of)
    # Today's run judges the readings up to now: the hours still to come are not a meter
    # that went silent (a replayed past day is judged to its end).
    episodes = detect_meter_episodes(min(end_of_day(day), local_now()))
    candidates = derive_flags(episodes, day)
    if len(candidates):
        validate_handover(candidates, "risk_flags", stage="flag_risks", source="flag_risks candidates")
    return store_flags(candidates, day)
