"""Flow: the periodic summary report to the party committee and government (工作情况报告)."""

from __future__ import annotations

from datetime import date

from prefect import flow

from sibifang.settings import get_settings
from tasks.common import as_of_date, validate_handover
from tasks.summary_report import gather_aggregates, write_report


@flow(name="summary_report", description="Aggregate visits, flags, alerts, cases and needs over a period into an "
      "HTML report with the dynamic risk map. Aggregates only: no names, ID numbers or addresses. Period: "
      "period_start..period_end, or period=week|month|quarter (the last full Mon–Sun week / calendar month / "
      "calendar quarter before as_of), "
      "or the period_days days ending on as_of (7 by default).")
def summary_report(as_of: date | None = None, period_days: int | None = None, out_dir: str | None = None,
                   period: str | None = None, period_start: date | None = None,
                   period_end: date | None = None) -> dict:
    """One report per period: the same period again rewrites the same report (``Report`` id by period)."""
    from sibifang.summary_report import aggregates_frame, report_period

    # Checked before anything is read: a period a supervisor mistyped fails with a Chinese message.
    start, end = report_period(as_of_date(as_of), period=period, period_days=period_days,
                               period_start=period_start, period_end=period_end)
    gathered = gather_aggregates(start, end)
    validate_handover(aggregates_frame(gathered["aggregates"]), "report_aggregates", stage="summary_report",
                      source=f"summary report {start}..{end}")
    return write_report(gathered, start, end, out_dir or str(get_settings().out_dir))
