"""Alert dispatch figures (issue 5): throughput, a flaky receiver, a killed dispatcher.

    .venv/bin/python benchmarks/bench_dispatch.py [--alerts 3000]

A. throughput to a local receiver with rate limits off (target ≥ 200 alerts/s);
B. a receiver that fails 30% of requests and is down for its first 300 requests ("the first
   minutes"), time simulated in 2-minute steps: every alert delivered once the receiver is
   back, none twice;
C. the dispatcher process killed (SIGKILL) mid-run and restarted: every alert delivered, and
   how many reached the receiver twice (only alerts in flight at the kill can: the receiver
   drops them by ``dedup_key``).
All on SQLite files in a temporary directory; prints its figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 20, 10, 0)


def build_db(url: str, n_flags: int) -> None:
    from schemas.models import Area, Cadre, Household, RiskFlag
    from sibifang.db import migrate, session_scope, upsert

    migrate(url)
    with session_scope(url) as s:
        areas = [{"id": "C1", "level": "city", "name": "甬江市", "parent_id": None, "village_kind": None},
                 {"id": "T1", "level": "township", "name": "东湖街道", "parent_id": "C1", "village_kind": None},
                 {"id": "V1", "level": "village", "name": "万堤村", "parent_id": "T1", "village_kind": "村"}]
        grids = [f"G{i:03d}" for i in range(50)]
        areas += [{"id": g, "level": "grid", "name": f"第{g}网格", "parent_id": "V1", "village_kind": None}
                  for g in grids]
        upsert(s, Area, areas, key=["id"])
        upsert(s, Cadre, [{"id": f"GW{g}", "name": "网格员", "role": "grid_worker", "grid_ids": [g],
                           "alert_channel": "webhook", "alert_address": "http://127.0.0.1:9/x"} for g in grids]
               + [{"id": "VC1", "name": "主席", "role": "village_chair", "grid_ids": grids,
                   "alert_channel": "webhook", "alert_address": "http://127.0.0.1:9/x"}], key=["id"])
        upsert(s, Household, [{"id": f"H{i:06d}", "head_name": f"李{i}", "grid_id": grids[i % 50],
                               "address": f"{i}号", "categories": ["empty_nest"]} for i in range(n_flags)], key=["id"])
        upsert(s, RiskFlag, [{"id": f"F{i:06d}", "dedup_key": f"meter|M{i}|inactivity|2026-11-20T08:00",
                              "household_id": f"H{i:06d}", "meter_id": f"M{i}", "kind": "inactivity",
                              "severity": "high", "score": 5.0, "start": NOW - timedelta(hours=9),
                              "detected_at": NOW, "evidence": "用电接近停止", "details": {}, "status": "open"}
                             for i in range(n_flags)], key=["id"])


def configure(url: str, receiver_url: str) -> None:
    os.environ.update({"SIBIFANG_DATABASE_URL": url, "SIBIFANG_ALERT_WEBHOOK_URL": receiver_url,
                       "SIBIFANG_ALERT_WEBHOOK_SECRET": "bench", "SIBIFANG_RATE_LIMITS": "false",
                       "SIBIFANG_ALERT_MAX_ATTEMPTS": "12"})
    from sibifang.settings import reset_settings

    reset_settings()


def sent_count(url: str) -> tuple[int, int]:
    from schemas.models import Alert, DeliveryAttempt
    from sibifang.db import count, session_scope

    with session_scope(url) as s:
        return count(s, Alert, Alert.status == "sent"), count(s, DeliveryAttempt)


def part_a(tmp: Path, n: int) -> None:
    from tasks.dispatch_alerts import deliver, enqueue
    from tests.http_receiver import HttpReceiver

    url = f"sqlite:///{tmp / 'a.db'}"
    build_db(url, n)
    with HttpReceiver() as rx:
        configure(url, rx.url)
        t0 = time.perf_counter()
        queued = enqueue(NOW, url)
        t1 = time.perf_counter()
        deliver(NOW, url)
        t2 = time.perf_counter()
        keys = [r.json["dedup_key"] for r in rx.accepted()]
    sent, attempts = sent_count(url)
    print(f"A. throughput: {queued} alerts enqueued in {t1 - t0:.2f} s; delivered {sent} in {t2 - t1:.2f} s "
          f"= {sent / (t2 - t1):.0f} alerts/s (rate limits off); receiver got {len(keys)}, distinct {len(set(keys))}")


def part_b(tmp: Path, n: int) -> None:
    from tasks.dispatch_alerts import deliver, enqueue
    from tests.http_receiver import HttpReceiver

    url = f"sqlite:///{tmp / 'b.db'}"
    build_db(url, n)
    with HttpReceiver(fail_fraction=0.3, seed=11, down_first_requests=300) as rx:
        configure(url, rx.url)
        enqueue(NOW, url)
        t, rounds = NOW, 0
        while True:
            # simulated time for leases and backoff too, or the retries are never due
            deliver(t, url, clock=lambda t=t: t)
            rounds += 1
            sent, attempts = sent_count(url)
            if sent == n or rounds > 200:
                break
            t += timedelta(minutes=2)
        keys = [r.json["dedup_key"] for r in rx.accepted()]
        raw = len(rx.requests)
    print(f"B. flaky receiver (30% failures, first 300 requests refused): {sent}/{n} delivered after "
          f"{(t - NOW).total_seconds() / 60:.0f} simulated minutes, {attempts} attempts, {raw} requests; "
          f"accepted {len(keys)}, distinct {len(set(keys))}, delivered twice {len(keys) - len(set(keys))}")


CHILD = """
import sys, time
from datetime import datetime
sys.path.insert(0, {root!r})
from tasks.dispatch_alerts import deliver
now = datetime.fromisoformat({now!r})
deliver(now, {url!r}, clock=lambda: now)  # the lease runs on simulated time: the restart is 6 min later
"""


def part_c(tmp: Path, n: int) -> None:
    from tasks.dispatch_alerts import enqueue
    from tests.http_receiver import HttpReceiver

    url = f"sqlite:///{tmp / 'c.db'}"
    build_db(url, n)
    with HttpReceiver(response_delay=0.005) as rx:
        configure(url, rx.url)
        enqueue(NOW, url)
        env = dict(os.environ)
        proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), now=NOW.isoformat(), url=url)],
                                env=env, cwd=ROOT)
        deadline = time.time() + 60
        while len(rx.requests) < n // 3 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = len(rx.accepted())
        sent_at_kill, _ = sent_count(url)
        # Restart after the claim lease (5 min): claimed-but-unrecorded alerts are retried.
        later = NOW + timedelta(minutes=6)
        proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), now=later.isoformat(), url=url)],
                              env=env, cwd=ROOT, check=True)
        keys = [r.json["dedup_key"] for r in rx.accepted() if r.json is not None]  # cut-off bodies are no delivery
    sent, attempts = sent_count(url)
    print(f"C. dispatcher killed after {before} deliveries ({sent_at_kill} recorded as sent), restarted: "
          f"{sent}/{n} sent; receiver accepted {len(keys)}, distinct {len(set(keys))}; "
          f"repeats (in flight at the kill, dropped by dedup_key at the receiver): {len(keys) - len(set(keys))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        part_a(tmp, args.alerts)
        part_b(tmp, min(args.alerts, 2000))
        part_c(tmp, min(args.alerts, 2000))


if __name__ == "__main__":
    main()
