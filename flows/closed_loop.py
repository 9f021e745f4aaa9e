"""Flow: the whole closed loop (闭环) for one day, each stage a subflow, in order."""

from __future__ import annotations

import time as time_module
from datetime import date, datetime, time, timedelta

from prefect import flow, get_run_logger

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
    failed: dict[str, str] = {}
    for name, run in stages:  # in order; a failed stage stops only the stages that need it
        missing = [need for need in NEEDS.get(name, ()) if need in failed or need in out.get("skipped", {})]
        if missing:
            out.setdefault("skipped", {})[name] = missing
            get_run_logger().error("%s skipped: it needs %s, which did not complete", name, ", ".join(missing))
            continue
        t0 = time_module.perf_counter()
        try:
            out[name] = run()
        except Exception as exc:  # noqa: BLE001 -- reported below, and the run ends failed
            # The subflow's own message (its run holds the traceback); secrets are kept out of
            # these messages where they are made (sibifang.meter_api, sibifang.channels).
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
            get_run_logger().error("%s failed; the stages that do not need it go on: %s", name, failed[name])
        out["seconds"][name] = round(time_module.perf_counter() - t0, 2)
    if failed:
        out["failed"] = failed
        raise ClosedLoopError(out)
    return out


# Which stages need which to have completed. Risks are flagged from the day's readings and
# visits: flagged without the readings of a failed ingest (say the meter API answering 404),
# every meter the API feeds would look offline, and cadres would be sent to check on
# households that are fine. Planning reads the day's visits and the plans they closed: planned
# without them, families visited today would be planned again and tomorrow's notices announce
# visits already made. A report to the party committee and government must not go out missing
# the day's visits or flags. Alerts (already pending ones) and disputes do not depend on today's
# readings: a broken meter feed must not stop them, nor the visit planning.
NEEDS: dict[str, tuple[str, ...]] = {
    "flag_risks": ("record_visits", "ingest_readings"),
    "schedule_visits": ("record_visits",),
    "summary_report": ("record_visits", "flag_risks"),
}


class ClosedLoopError(RuntimeError):
    """One or more stages of the day failed (the others ran); ``result`` holds what ran,
    ``failed`` and ``skipped``. Raised so the run ends failed and the failure is seen."""

    def __init__(self, result: dict):
        self.result = result
        failed = result.get("failed", {})
        skipped = result.get("skipped", {})
        text = "; ".join(f"{k}: {v}" for k, v in failed.items())
        if skipped:
            text += "; skipped: " + ", ".join(skipped)
        super().__init__(f"closed loop: {len(failed)} stage(s) failed, the others ran — {text}")
