"""Deployments: every flow on its schedule, served from one process (``sibifang serve``).

The same deployments are declared in ``prefect.yaml`` for a ``process`` work pool
(``prefect deploy --all`` then ``prefect worker start --pool sibifang``), for a city that
runs workers on several machines against a Prefect server on PostgreSQL.
"""

from __future__ import annotations

import threading

TZ = "Asia/Shanghai"

# (flow, deployment schedules) — each schedule may carry its own parameters.
SCHEDULES: dict[str, list[dict]] = {
    # Alerts every 30 s: a flag stored is tried within a minute, whatever the run overhead.
    "dispatch_alerts": [{"interval": 30}],
    "ingest_readings": [{"cron": "*/15 * * * *"}],
    "flag_risks": [{"cron": "5 * * * *"}],
    "record_visits": [{"cron": "*/30 * * * *"}],
    "escalate_disputes": [{"cron": "10 * * * *"}],
    "schedule_visits": [{"cron": "0 6 * * *"}],
    "summary_report": [{"cron": "0 8 * * 1", "parameters": {"period_days": 7}},
                       {"cron": "0 8 1 * *", "parameters": {"period_days": 30}}],
    "closed_loop": [{"cron": "30 23 * * *"}],
    "import_registry": [],  # by hand: a supervisor imports what a village sent
}


def build_deployments():
    from prefect.schedules import Cron, Interval

    from flows import get_flow

    deployments = []
    for name, specs in SCHEDULES.items():
        schedules = []
        for spec in specs:
            params = spec.get("parameters", {})
            if "cron" in spec:
                schedules.append(Cron(spec["cron"], timezone=TZ, parameters=params))
            else:
                schedules.append(Interval(spec["interval"], parameters=params))
        deployments.append(get_flow(name).to_deployment(name=name, schedules=schedules or None,
                                                        tags=["sibifang"]))
    return deployments


def serve_all(*, ack_port: int = 8765) -> None:
    from prefect import serve

    if ack_port:
        from sibifang.ack_server import make_ack_server

        server = make_ack_server(port=ack_port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"acknowledgement endpoint on http://{server.server_address[0]}:{server.server_address[1]}/ack")
    # pause_on_shutdown=False: stopping this process must not silently pause a county's schedules.
    serve(*build_deployments(), pause_on_shutdown=False)
