"""Flow: ingest smart-meter readings (电表读数) from file drops and the meter platform's API."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow

from sibifang.settings import get_settings
from tasks.common import as_of_date, end_of_day
from tasks.ingest_readings import ingest_file_task, pending_reading_files, pull_api_task


@flow(name="ingest_readings", description="Clean, quarantine and store new meter readings (file drops, API).")
def ingest_readings(as_of: date | None = None, inbox: str | None = None, database_url: str | None = None) -> dict:
    day = as_of_date(as_of)
    folder = Path(inbox) if inbox else Path(get_settings().inbox_dir)
    results = [ingest_file_task(str(p), batch_id, database_url, end_of_day(day))
               for p, batch_id in pending_reading_files(folder, database_url)]
    pulled = pull_api_task(database_url, end_of_day(day))
    if pulled:
        results.append(pulled)
    return {
        "files": len([r for r in results if r["source"] != "meter-api"]),
        "read": sum(r["read"] for r in results), "accepted": sum(r["accepted"] for r in results),
        "quarantined": sum(r["quarantined"] for r in results), "new": sum(r["new"] for r in results),
    }
