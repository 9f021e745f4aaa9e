"""Flow: take in visit records (走访记录) from file drops and close the plans they fulfil."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from sibifang.settings import get_settings
from tasks.common import as_of_date
from tasks.record_visits import close_plans, import_visit_files


@flow(name="record_visits", description="Import visit sheets dropped by villages or the mobile form (validated, "
      "bad rows quarantined) and close the visit plans they fulfil; unplanned visits are kept too.")
def record_visits(as_of: date | None = None, inbox: str | None = None) -> dict:
    day = as_of_date(as_of)
    settings = get_settings()
    imported = import_visit_files(inbox or str(settings.inbox_dir), out_dir=str(settings.out_dir), as_of=day)
    if imported["rejected"]:
        # The files were set aside with their report; the rest of the day's loop goes on.
        get_run_logger().warning("%d visit file(s) not imported, moved to rejected/: %s", imported["rejected"],
                                 "; ".join(f"{r['file']}: {r['reason']}" for r in imported["rejected_files"]))
    closed = close_plans(day)
    return {**imported, **closed}
