"""Deployments: every flow on its schedule, served from one process (``sibifang serve``).

The same deployments are declared in ``prefect.yaml`` for a ``process`` work pool
(``prefect deploy --all`` then ``prefect worker start --pool sibifang``), for a city that
runs workers on several machines against a Prefect server on PostgreSQL.
"""

from __future__ import annotations

import threading

from sibifang.settings import LOCAL_TZ_NAME

# (flow, deployment schedules) — each schedule may carry its own parameters.
SCHEDULES: dict[str, list[dict]] = {
    # Alerts every 30 s: a flag stored is tried within a minute, whatever the run overhead.
    "dispatch_alerts": [{"interval": 30}],
    "ingest_readings": [{"cron": "*/15 * * * *"}],
    "flag_risks": [{"cron": "5 * * * *"}],
    "record_visits": [{"cron": "*/30 * * * *"}],
    "escalate_disputes": [{"cron": "10 * * * *"}],
    "schedule_visits": [{"cron": "0 6 * * *"}],
    # Calendar periods ending yesterday: Monday's run reports the Mon–Sun week before, the 1st's the
    # month before, so every day is in one weekly and one monthly report whatever hour they run.
    "summary_report": [{"cron": "0 8 * * 1", "parameters": {"period": "week"}},
                       {"cron": "0 8 1 * *", "parameters": {"period": "month"}}],
    "closed_loop": [{"cron": "30 23 * * *"}],
    "import_registry": [],  # by hand: a supervisor imports what a village sent
}

# One run of a deployment at a time (Prefect's deployment concurrency limit, enforced by its
# server for `serve` and for a cluster's workers alike). A run of the frequent ones that finds
# the last one still going is dropped: the next, minutes later, does the work, and runs that
# pile up behind a slow receiver would only wait to find nothing left. The others queue, so a
# supervisor's run by hand is never dropped.
CANCEL_NEW_WHEN_BUSY = ("dispatch_alerts", "ingest_readings", "record_visits")


def concurrency_limit(name: str):
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    strategy = (ConcurrencyLimitStrategy.CANCEL_NEW if name in CANCEL_NEW_WHEN_BUSY
                else ConcurrencyLimitStrategy.ENQUEUE)
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategy)


def build_deployments():
    from prefect.schedules import Cron, Interval

    from flows import get_flow

    deployments = []
    for name, specs in SCHEDULES.items():
        schedules = []
        for spec in specs:
            params = spec.get("parameters", {})
            if "cron" in spec:
                schedules.append(Cron(spec["cron"], timezone=LOCAL_TZ_NAME, parameters=params))
            else:
                schedules.append(Interval(spec["interval"], parameters=params))
        deployments.append(get_flow(name).to_deployment(name=name, schedules=schedules or None,
                                                        concurrency_limit=concurrency_limit(name),
                                                        tags=["sibifang"]))
    return deployments


def start_prefect_server(port: int = 4200, timeout: float = 180.0):
    """Start ``prefect server start`` (API, UI and the scheduler service) as a child process.

    Prefect's temporary server cannot schedule runs ("Cannot schedule flows on an ephemeral
    server"), so a county office that runs ``sibifang serve`` with no Prefect server of its own
    gets one here, on 127.0.0.1, logging to ``out/prefect-server.log``. Returns
    ``(process, api_url)``."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from sibifang.settings import get_settings

    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    log_dir = Path(get_settings().out_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "prefect-server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, api
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer on {api} within {timeout:.0f} s")


def serve_all(*, ack_port: int = 8765, prefect_port: int = 4200) -> None:
    import os

    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, api = start_prefect_server(prefect_port)
        os.environ["PREFECT_API_URL"] = api
        print(f"Prefect server (API, UI, scheduler) on {api.removesuffix('/api')}")
    try:
        from prefect import serve

        if ack_port:
            from sibifang.ack_server import make_ack_server

            ack = make_ack_server(port=ack_port)
            threading.Thread(target=ack.serve_forever, daemon=True).start()
            print(f"acknowledgement endpoint on http://{ack.server_address[0]}:{ack.server_address[1]}/ack")
        # pause_on_shutdown=False: stopping this process must not silently pause a county's schedules.
        serve(*build_deployments(), pause_on_shutdown=False)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
