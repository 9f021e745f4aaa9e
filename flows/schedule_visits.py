"""Flow: schedule must-visits (走访排期) within cadre capacity, grid and the working calendar."""

from __future__ import annotations

from datetime import date

from prefect import flow

from sibifang.settings import get_settings
from tasks.common import as_of_date, validate_handover
from tasks.schedule_visits import plan_visits, queue_notices, send_notices, store_plan


@flow(name="schedule_visits", description="Plan the next days' must-visits by category cadence, keeping each family "
      "with its cadre within capacity and grid, on working days; urgent visits for new flags; shortfall reported.")
def schedule_visits(as_of: date | None = None, grid: str | None = None, horizon_days: int = 30,
                    notify_for: date | None = None, out_dir: str | None = None) -> dict:
    """``notify_for``: the day whose visits the digests announce (the morning run: today; the
    evening loop: tomorrow)."""
    from sibifang.schedule_visits import check_schedule_parameters

    check_schedule_parameters(horizon_days=horizon_days)  # before any task: a mistyped horizon plans nothing
    day = as_of_date(as_of)
    plan = plan_visits(day, horizon_days, grid)
    if len(plan.plans):  # nothing to plan (a new installation, no family due) hands nothing over
        validate_handover(plan.plans, "visit_plans", stage="schedule_visits", source=f"schedule_visits {day}")
    stored = store_plan(plan, day, out_dir or str(get_settings().out_dir))
    if grid is None:  # a re-plan of one grid by hand does not re-send everyone's digest
        notify_day = as_of_date(notify_for) if notify_for else day
        queued = queue_notices(notify_day)
        stored |= {"notices_queued": queued, **send_notices(notify_day)}
    return stored
