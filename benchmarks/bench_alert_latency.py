"""From a new flag stored to its first delivery attempt, with ``sibifang serve`` running (issue 5).

    .venv/bin/python benchmarks/bench_alert_latency.py [--flags 6] [--spacing 13]

Starts ``sibifang serve`` (every flow on its schedule, Prefect's temporary local API) against a
temporary SQLite database, with alerts going to a real local receiver. Then stores new flags one
at a time, at spacings that fall at different points of the dispatch schedule, and measures for
each the time from the commit of the flag to the first delivery attempt the outbox recorded
(and to the receiver's arrival). Prints every latency, the median and the maximum.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flags", type=int, default=6)
    ap.add_argument("--spacing", type=float, default=13.0)
    args = ap.parse_args()

    from bench_dispatch import build_db
    from schemas.models import DeliveryAttempt, RiskFlag
    from sibifang.db import session_scope
    from sibifang.settings import local_now
    from tests.http_receiver import HttpReceiver
    from sqlalchemy import select

    with tempfile.TemporaryDirectory() as d, HttpReceiver() as rx:
        url = f"sqlite:///{Path(d) / 'serve.db'}"
        build_db(url, 1)
        with session_scope(url) as s:  # the seeded flag is old news: mark it handled
            s.get(RiskFlag, "F000000").status = "closed"
        env = dict(os.environ, SIBIFANG_DATABASE_URL=url, SIBIFANG_ALERT_WEBHOOK_URL=rx.url,
                   SIBIFANG_DATA_DIR=str(Path(d) / "data"), SIBIFANG_INBOX_DIR=str(Path(d) / "inbox"),
                   SIBIFANG_OUT_DIR=str(Path(d) / "out"), PREFECT_HOME=str(Path(d) / "prefect"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "sibifang"), "serve", "--ack-port", "0",
                                 "--prefect-port", "4391"], env=env,
                                cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(40)  # the Prefect server, the scheduler and the runner come up
            latencies, arrivals = [], []
            for i in range(args.flags):
                # The database keeps naive China time (local_now), whatever the host's zone;
                # the receiver stamps epoch seconds.
                stored, stored_epoch = local_now(), time.time()
                with session_scope(url) as s:
                    s.add(RiskFlag(id=f"L{i}", dedup_key=f"latency|{i}", household_id="H000000", meter_id="M0",
                                   kind="inactivity", severity="critical", score=9.0,
                                   start=stored - timedelta(hours=8), detected_at=stored,
                                   evidence="从昨晚8点起用电接近停止", details={}, status="open"))
                t0 = time.time()
                first = None
                while time.time() - t0 < 180 and first is None:
                    time.sleep(0.5)
                    with session_scope(url) as s:
                        first = s.scalar(select(DeliveryAttempt.at).join(
                            __import__("schemas.models", fromlist=["Alert"]).Alert).where(
                            __import__("schemas.models", fromlist=["Alert"]).Alert.flag_id == f"L{i}")
                            .order_by(DeliveryAttempt.at).limit(1))
                arrived = next((r.received_at for r in rx.requests
                                if (r.json or {}).get("dedup_key", "").startswith(f"latency|{i}|")), None)
                lat = (first - stored).total_seconds() if first else float("nan")
                latencies.append(lat)
                if arrived:
                    arrivals.append(arrived - stored_epoch)
                print(f"flag {i}: first delivery attempt {lat:6.1f} s after it was stored"
                      + (f", at the receiver {arrivals[-1]:6.1f} s" if arrived else ""), flush=True)
                time.sleep(args.spacing)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    ok = sorted(x for x in latencies if x == x)
    print(f"flag stored → first delivery attempt: median {ok[len(ok) // 2]:.1f} s, max {ok[-1]:.1f} s "
          f"over {len(ok)}/{len(latencies)} flags (dispatch_alerts served every 30 s)")


if __name__ == "__main__":
    main()
