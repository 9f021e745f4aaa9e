"""Run every benchmark in turn and print their figures (``make bench``; takes several minutes).

Each script runs in its own process so that its peak memory is its own.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ("generator", ["bench_generate.py"]),
    ("validation (GX)", ["bench_validation.py"]),
    ("readings store", ["bench_readings_store.py"]),
    ("scheduling, city", ["bench_schedule_city.py"]),
    ("detection, city", ["bench_detect_city.py"]),
    ("hourly flag_risks detection from the store, city", ["bench_flag_risks_hourly.py"]),
    ("hourly run against the full replay", ["compare_incremental.py"]),
    ("detectors: evaluation on real and generated data", ["evaluate_detectors.py"]),
    ("report small-cell protection, city", ["bench_report_suppression.py"]),
    ("alert dispatch", ["bench_dispatch.py"]),
    ("alert latency under `sibifang serve`", ["bench_alert_latency.py"]),
]


def main() -> int:
    failed = 0
    for title, args in SCRIPTS:
        print(f"\n=== {title} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent,
                             env={**__import__("os").environ, "PYTHONPATH": str(HERE.parent)})
        print(f"--- {title}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
