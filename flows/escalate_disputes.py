"""Flow: escalate family disputes to mediation rooms and needs to the service-resource pool."""

from __future__ import annotations

from datetime import date

from prefect import flow

from tasks.common import as_of_date
from tasks.escalate_disputes import match_needs_task, open_cases_task, unrouted_counts


@flow(name="escalate_disputes", description="Dispute and domestic-violence findings open a case in the township's "
      "mediation room (木兰调解室); demands raised in visits are matched with the service-resource pool.")
def escalate_disputes(as_of: date | None = None) -> dict:
    day = as_of_date(as_of)
    cases = open_cases_task(day)
    needs = match_needs_task(day)
    # Still open and not routed (no room or mediator; no fitting resource): counted every run,
    # so the staff see what waits on them, not only what was opened today.
    return {"cases_opened": cases, **needs, **unrouted_counts()}
