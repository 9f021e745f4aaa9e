"""Prefect flows, one per stage of the loop, plus ``closed_loop`` that runs them in order.

No flow takes a database URL: Prefect stores a run's parameters and shows them in its UI, and a
URL can carry a password. Every stage reads ``SIBIFANG_DATABASE_URL`` (``sibifang.settings``) in
the environment of the process that runs it.
"""

from __future__ import annotations

from importlib import import_module

# Flow name → module; the flow object in each module carries the same name.
STAGES = ("import_registry", "record_visits", "ingest_readings", "flag_risks", "dispatch_alerts",
          "escalate_disputes", "schedule_visits", "summary_report", "closed_loop")


def get_flow(name: str):
    if name not in STAGES:
        raise KeyError(f"unknown flow {name!r}; flows: {', '.join(STAGES)}")
    return getattr(import_module(f"flows.{name}"), name)
