"""How far the hourly incremental run agrees with the full causal replay of the same day.

The incremental path (``fit_profiles`` at midnight, then ``detect_matrix(..., profiles=...)``
over the last day or two) is what an hourly run would use to stay cheap; the figures in the
README are the full replay's. On synthetic meters (``bench_detect_city.synthesise``), the
script scores the last day up to HOUR both ways and prints, per kind, the meters with an
episode detected that day by each path and by both.

    .venv/bin/python benchmarks/compare_incremental.py [--meters 5000] [--days 36] [--hour 17] [--lead 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect_city import synthesise  # noqa: E402
from sibifang.detectors import KINDS, detect_matrix, fit_profiles  # noqa: E402


def detected_on(episodes: pd.DataFrame, day: pd.Timestamp) -> set[tuple[str, str]]:
    e = episodes[pd.to_datetime(episodes["detected_at"]) >= day]
    return set(zip(e["meter_id"], e["kind"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=5000)
    ap.add_argument("--days", type=int, default=36)
    ap.add_argument("--hour", type=int, default=17, help="the hour of the last day the runs judge up to")
    ap.add_argument("--lead", type=int, default=1, help="days before the last one the incremental run reads")
    args = ap.parse_args()
    kwh = synthesise(args.meters, args.days, per_hour=1)
    ids = np.array([f"M{i:06d}" for i in range(args.meters)], dtype=object)
    t0 = pd.Timestamp("2026-10-16")
    last = args.days - 1
    day, now = t0 + pd.Timedelta(days=last), last * 24 + args.hour

    t = time.perf_counter()
    full = detect_matrix(kwh[:, :now], ids, t0, 60)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    profiles = fit_profiles(kwh[:, : last * 24], ids, t0, 60)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    inc = detect_matrix(kwh[:, (last - args.lead) * 24: now], ids, day - pd.Timedelta(days=args.lead), 60,
                        profiles=profiles)
    t_inc = time.perf_counter() - t
    print(f"{args.meters:,} meters, day {day:%Y-%m-%d} up to {args.hour:02d}:00: full replay {t_full:.1f}s, "
          f"profile fit {t_fit:.1f}s, incremental {t_inc:.2f}s")
    a, b = detected_on(full, day), detected_on(inc, day)
    print(f"{'kind':26s} {'full':>6s} {'incr':>6s} {'both':>6s} {'full only':>10s} {'incr only':>10s}")
    for kind in KINDS:
        fa = {m for m, k in a if k == kind}
        fb = {m for m, k in b if k == kind}
        if fa or fb:
            print(f"{kind:26s} {len(fa):6d} {len(fb):6d} {len(fa & fb):6d} {len(fa - fb):10d} {len(fb - fa):10d}")


if __name__ == "__main__":
    main()
