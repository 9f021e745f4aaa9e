"""Flow: schedule must-visits (走访排期) within cadre capacity, grid and the working calendar."""

from __future__ import annotations

from datetime import date

from prefect import flow

from sibifang.settings import get_settings
from tasks.common import as_of_date, validate_handover
from tasks.schedule_visits import later_day_run, plan_visits, queue_notices, send_notices, store_plan


@flow(name="schedule_visits", description="Plan the next days' must-visits by category cadence, keeping each family "
      "with its cadre within capacity and grid, on working days; urgent visits for new flags; shortfall reported.",
      validate_parameters=False)  # read below, so that a mistyped one gets a Chinese message naming it
def schedule_visits(as_of: date | None = None, grid: str | None = None, horizon_days: int = 30,
                    notify_for: date | None = None, out_dir: str | None = None) -> dict:
    """``notify_for``: the day whose visits the digests announce (the morning run: today; the
    evening loop: tomorrow). A replay of a past day (a run for a later day made already) plans
    and stores as that day's run did, but queues and sends no notice: they would be days late."""
    from sibifang.schedule_visits import check_schedule_parameters, parse_schedule_day

    # before any task: a mistyped parameter plans nothing
    horizon_days = check_schedule_parameters(horizon_days=horizon_days)
    as_of, notify_for = parse_schedule_day(as_of, "as_of"), parse_schedule_day(notify_for, "notify_for")
    grid = None if grid is None else str(grid)
    day = as_of_date(as_of)
    notify_day = as_of_date(notify_for) if notify_for else day
    replay = grid is None and later_day_run(day, notify_day)
    plan = plan_visits(day, horizon_days, grid)
    if len(plan.plans):  # nothing to plan (a new installation, no family due) hands nothing over
        validate_handover(plan.plans, "visit_plans", stage="schedule_visits", source=f"schedule_visits {day}")
    stored = store_plan(plan, day, out_dir or str(get_settings().out_dir))
    if replay:
        stored["notices_skipped"] = "replay"
    elif grid is None:  # a re-plan of one grid by hand does not re-send everyone's digest
        queued = queue_notices(notify_day)
        stored |= {"notices_queued": queued, **send_notices(notify_day)}
    return stored
