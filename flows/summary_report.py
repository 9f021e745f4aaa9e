"""Flow: the periodic summary report to the party committee and government (工作情况报告)."""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow

from sibifang.settings import get_settings
from tasks.common import as_of_date, validate_handover
from tasks.summary_report import gather_aggregates, write_report


@flow(name="summary_report", description="Aggregate visits, flags, alerts, cases and needs over a period into an "
      "HTML report with the dynamic risk map. Aggregates only: no names, ID numbers or addresses.")
def summary_report(as_of: date | None = None, period_days: int = 7, out_dir: str | None = None) -> dict:
    end = as_of_date(as_of)
    start = end - timedelta(days=period_days - 1)
    gathered = gather_aggregates(start, end)
    from sibifang.summary_report import aggregates_frame

    validate_handover(aggregates_frame(gathered["aggregates"]), "report_aggregates", stage="summary_report",
                      source=f"summary report {start}..{end}")
    return write_report(gathered, start, end, out_dir or str(get_settings().out_dir))
