"""Flow: dispatch alerts (预警推送) to grid workers from the outbox, and escalate the unanswered."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from sibifang.dispatch_alerts import stored_moment
from sibifang.settings import local_now

from tasks.dispatch_alerts import check_settings, deliver_task, enqueue_task, escalate_task


@flow(name="dispatch_alerts", description="Route new flags to grid workers and chairs, deliver the outbox "
      "(retried, never twice), escalate unacknowledged critical alerts.")
def dispatch_alerts(now: datetime | None = None) -> dict:
    # ``now`` replays a moment (the demo, a re-run); unset, it is the wall clock. Given with a
    # zone (a supervisor's ISO time in UTC, Prefect's scheduled time) it is the same moment in
    # the naive local time the database stores, else every comparison would be 8 h off.
    now = stored_moment(now)
    at = now or local_now()
    check_settings()  # a setting no SMS alert can be sent with is an error on the run, before anything is queued
    queued = enqueue_task(at)
    escalated = escalate_task(at)
    delivered = deliver_task(now)
    return {"queued": queued, "escalated": escalated, **delivered}
