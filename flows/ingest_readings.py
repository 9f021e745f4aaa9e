"""Flow: ingest smart-meter readings (电表读数) from file drops and the meter platform's API."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger

from sibifang.inbox import claim
from sibifang.settings import get_settings, local_now
from tasks.common import as_of_date, end_of_day
from tasks.ingest_readings import ingest_file_task, pending_reading_files, pull_api_task


@flow(name="ingest_readings", description="Clean, quarantine and store new meter readings (file drops, API).")
def ingest_readings(as_of: date | None = None, inbox: str | None = None) -> dict:
    """Each dropped file is its own task: a file that cannot be read as readings is recorded
    (failed validation run, the clerk's report) and moved to ``readings/rejected/``; the other
    files and the API pull go on. ``rejected`` counts such files; ``failed`` counts files left
    in the inbox after an unexpected error (tried again on the next run); ``duplicates`` counts
    files whose content was already ingested (in the ledger, or earlier in this run), moved to
    ``readings/done/`` unread; ``deferred`` counts files left in the inbox by a replay of a past
    day because they hold readings of a later day (``ingest_file_task``); ``busy`` when another
    run held the drop folder (``sibifang.inbox.claim``) and this one left its files to it;
    ``pull_busy`` when another pull of the meter API, or a readings file of another run, held the
    readings store and this pull was skipped (a file waits for the store instead:
    ``ReadingStore.hold_for_batch``; one that waits too long is ``failed``, left in the inbox);
    ``pulls_set_aside`` lists earlier pulls that failed to finish too often and were set aside
    (``tasks.ingest_readings.finish_unfinished_pulls``)."""
    from schemas.validation import DataContractError
    from tasks.import_registry import record_rejected_file

    day = as_of_date(as_of)
    # Files and pulls are ingested as of the day's end (kept in the ledger); future readings are
    # judged by the clock alone. A rejected file is recorded at the day's end capped at the
    # clock, never at a time still to come.
    until = min(end_of_day(day), local_now())
    settings = get_settings()
    folder = Path(inbox) if inbox else Path(settings.inbox_dir)
    logger = get_run_logger()
    results, rejected, failed, duplicates, deferred = [], [], [], [], []
    with claim(folder / "readings") as mine:  # one run at a time reads the drop folder
        if not mine:
            logger.info("another run is reading %s; its files are left to it", folder / "readings")
        for p, batch_id in pending_reading_files(folder, duplicates=duplicates) if mine else []:
            state = ingest_file_task(str(p), batch_id, as_of=end_of_day(day), return_state=True)
            if state.is_completed():
                done = state.result()
                if done.get("deferred"):
                    deferred.append({"file": p.name, "later_readings": done["deferred"]})
                else:
                    results.append(done)
                continue
            error = state.result(raise_on_failure=False)
            if isinstance(error, DataContractError):
                r = record_rejected_file("readings", p, error, out_dir=settings.out_dir,
                                         now=until, stage="ingest_readings", move=True)
                rejected.append({"file": p.name, "reason": r["reason"], "error_report": r["error_report"]})
            else:
                failed.append({"file": p.name, "error": f"{type(error).__name__}: {error}"[:300]})
                logger.error("%s: not ingested, left in the inbox for the next run: %s", p.name,
                             failed[-1]["error"])
    if rejected:
        logger.warning("%d readings file(s) not ingested, moved to rejected/: %s", len(rejected),
                       "; ".join(f"{r['file']}: {r['reason']}" for r in rejected))
    pulled = pull_api_task(as_of=end_of_day(day))
    if pulled:
        results.append(pulled)
    return {
        "files": len([r for r in results if r["source"] != "meter-api"]),
        "read": sum(r["read"] for r in results), "accepted": sum(r["accepted"] for r in results),
        "quarantined": sum(r["quarantined"] for r in results), "new": sum(r["new"] for r in results),
        "rejected": len(rejected), "rejected_files": rejected, "failed": len(failed), "failed_files": failed,
        "duplicates": len(duplicates), "duplicate_files": duplicates,
        "deferred": len(deferred), "deferred_files": deferred,
        "busy": not mine,
        "pull_busy": bool(pulled and pulled.get("busy")),
        "pulls_set_aside": (pulled or {}).get("set_aside", []),
    }
