"""Time and peak memory of the synthetic area generator.

    python benchmarks/bench_generate.py            # village and county
    python benchmarks/bench_generate.py --city     # also the Ningbo-sized city (~34 M readings)

Each scale runs in a fresh child process so that its peak RSS (resource.getrusage) is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run(scale: str, seed: int, days: int | None, csv: bool, queue: mp.Queue) -> None:
    from sibifang.generate import generate_area

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = generate_area(scale, seed, Path(tmp), days=days, write_readings_csv=csv)
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"scale": scale, "days": manifest["days"], "seconds": round(seconds, 2),
               "peak_rss_mb": round(peak_mb), "output_mb": round(size / 2**20, 1),
               "readings": manifest["counts"]["readings.parquet"],
               "households": manifest["counts"]["households.csv"],
               "anomalies": manifest["counts"]["anomalies.csv"]})


def measure(scale: str, seed: int = 1, days: int | None = None, csv: bool = False) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(scale, seed, days, csv, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--city", action="store_true", help="also run the city scale")
    ap.add_argument("--csv", action="store_true", help="also write readings.csv")
    args = ap.parse_args()
    scales = ["village", "county"] + (["city"] if args.city else [])
    for scale in scales:
        r = measure(scale, csv=args.csv)
        rate = r["readings"] / r["seconds"] / 1e6
        print(f"{scale:8s} days={r['days']:3d} {r['seconds']:7.2f} s"
              f"  peak RSS {r['peak_rss_mb']:5d} MB"
              f"  readings {r['readings']:>11,} ({rate:.1f} M/s)  households {r['households']:,}"
              f"  anomalies {r['anomalies']}  output {r['output_mb']} MB", flush=True)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
