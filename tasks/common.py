"""What every stage's tasks share: retry policy for I/O and the hand-over validation."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger


def retry_unless_bad_data(task, task_run, state) -> bool:  # noqa: ANN001
    """Retry I/O failures, never a data-contract failure: bad data fails the same way again."""
    from schemas.validation import DataContractError

    try:
        state.result()
    except DataContractError:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth another try
        return True
    return False


def run_logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (plain function call in tests)
        import logging

        return logging.getLogger("sibifang")


def as_of_date(as_of: date | datetime | str | None) -> date:
    if as_of is None:
        from sibifang.settings import local_today

        return local_today()
    from sibifang.settings import LOCAL_TZ

    if isinstance(as_of, str):
        as_of = pd.Timestamp(as_of).to_pydatetime()
    if isinstance(as_of, datetime):
        # A time with a zone (a scheduler's UTC time, "...Z") is read in China's zone: its UTC
        # date is the day before for the first eight hours of the local day.
        return (as_of.astimezone(LOCAL_TZ) if as_of.tzinfo is not None else as_of).date()
    return as_of


def end_of_day(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 23, 59, 59)


@task(name="validate_handover", cache_policy=NO_CACHE)
def validate_handover(df: pd.DataFrame, suite: str, *, stage: str, source: str,
                      database_url: str | None = None) -> dict:
    """Validate a stage's output with its GX suite, record the run, stop on a critical failure."""
    from schemas.validation import raise_for_critical, validate_frame
    from sibifang.db import session_scope
    from sibifang.import_registry import frame_digest, record_validation

    report = validate_frame(df, suite, source=source)
    failures = [f"{r.expectation}({r.column}): {r.unexpected_count}" + (f" [{r.exception}]" if r.exception else "")
                for r in report.results if not r.success]
    with session_scope(database_url) as s:
        record_validation(s, stage=stage, suite=suite, source=source, read=len(df), accepted=len(df),
                          quarantined=None, failures=failures, success=report.success,
                          content=frame_digest(df))  # a re-run hands over the same frame: one run
    if failures:
        run_logger().warning("%s: %s expectation(s) failed: %s", source, len(failures), "; ".join(failures[:5]))
    raise_for_critical(report)
    return {"suite": suite, "rows": len(df), "success": report.success}
