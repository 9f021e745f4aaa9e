"""Flow: the whole closed loop (闭环) for one day, each stage a subflow, in order."""

from __future__ import annotations

import time as time_module
from datetime import date, datetime, time, timedelta

from prefect import flow

from flows.dispatch_alerts import dispatch_alerts
from flows.escalate_disputes import escalate_disputes
from flows.flag_risks import flag_risks
from flows.ingest_readings import ingest_readings
from flows.record_visits import record_visits
from flows.schedule_visits import schedule_visits
from flows.summary_report import summary_report
from tasks.common import as_of_date


@flow(name="closed_loop", description="Visits recorded → readings ingested → risks flagged → alerts dispatched → "
      "disputes escalated → visits scheduled (incl. urgent ones for new flags) → report (when asked).")
def closed_loop(as_of: date | None = None, report: bool = False, report_period_days: int = 7) -> dict:
    day = as_of_date(as_of)
    # Replaying a past day acts at that day's end; today acts now.
    now = datetime.combine(day, time(23, 59, 59)) if as_of is not None else None
    stages = [
        ("record_visits", lambda: record_visits(day)),
        ("ingest_readings", lambda: ingest_readings(day)),
        ("flag_risks", lambda: flag_risks(day)),
        ("dispatch_alerts", lambda: dispatch_alerts(now)),
        ("escalate_disputes", lambda: escalate_disputes(day)),
        # Run at the day's end: the digests announce tomorrow's visits.
        ("schedule_visits", lambda: schedule_visits(day, notify_for=day + timedelta(days=1))),
    ]
    if report:
        stages.append(("summary_report", lambda: summary_report(day, report_period_days)))
    out: dict = {"seconds": {}}
    for name, run in stages:  # in order: a stage that fails stops the ones after it
        t0 = time_module.perf_counter()
        out[name] = run()
        out["seconds"][name] = round(time_module.perf_counter() - t0, 2)
    return out
