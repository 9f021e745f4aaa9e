"""Prefect flows, one per stage of the loop, plus ``closed_loop`` that runs them in order."""

from __future__ import annotations

from importlib import import_module

# Flow name → module; the flow object in each module carries the same name.
STAGES = ("import_registry", "record_visits", "ingest_readings", "flag_risks", "dispatch_alerts",
          "escalate_disputes", "schedule_visits", "summary_report", "closed_loop")


def get_flow(name: str):
    if name not in STAGES:
        raise KeyError(f"unknown flow {name!r}; flows: {', '.join(STAGES)}")
    return getattr(import_module(f"flows.{name}"), name)
