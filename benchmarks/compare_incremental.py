"""How far the hourly incremental run agrees with the full causal replay of the same hours.

The incremental path (``fit_profiles`` at midnight: the replay of the trailing weeks, the
next day's routine and where every alarm stood; then ``detect_matrix(..., profiles=...)`` over
the day before that midnight and the hours since) is what an hourly run uses to stay cheap.
On synthetic meters (``bench_detect_city.synthesise``), the script scores the last day up to
each of HOURS both ways and prints, per kind, the episodes the replay owes the hour (raised
since midnight, or still open at it) found by each path, and how many of the common ones
differ in end, severity, score or evidence.

    .venv/bin/python benchmarks/compare_incremental.py [--meters 5000] [--days 36] [--hours 3 9 17 23]
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

KEY = ["meter_id", "kind", "start", "detected_at"]


def owed(full: pd.DataFrame, midnight: pd.Timestamp) -> pd.DataFrame:
    """The replay's episodes an hourly run after ``midnight`` reports: raised since, or open then."""
    return full[(full["detected_at"] > midnight) | full["end"].isna() | (full["end"] >= midnight)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=5000)
    ap.add_argument("--days", type=int, default=36)
    ap.add_argument("--hours", type=int, nargs="+", default=[3, 9, 17, 23],
                    help="the hours of the last day the runs judge up to")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    kwh = synthesise(args.meters, args.days, per_hour=1, seed=args.seed)
    ids = np.array([f"M{i:06d}" for i in range(args.meters)], dtype=object)
    t0 = pd.Timestamp("2026-10-16")
    last = args.days - 1
    day = t0 + pd.Timedelta(days=last)
    t = time.perf_counter()
    profiles = fit_profiles(kwh[:, : last * 24], ids, t0, 60)
    print(f"{args.meters:,} meters, checkpoint {day:%Y-%m-%d %H:%M}: "
          f"profile fit and replay {time.perf_counter() - t:.1f}s")
    for hour in args.hours:
        now = last * 24 + hour
        t = time.perf_counter()
        full = detect_matrix(kwh[:, :now], ids, t0, 60)
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        inc = detect_matrix(kwh[:, (last - 1) * 24: now], ids, day - pd.Timedelta(days=1), 60, profiles=profiles)
        t_inc = time.perf_counter() - t
        want = owed(full, day)
        print(f"\nup to {hour:02d}:00: full replay {t_full:.1f}s, incremental {t_inc:.2f}s; "
              f"episodes owed {len(want)}, reported {len(inc)}")
        m = want.merge(inc, on=KEY, how="outer", suffixes=("_full", "_inc"), indicator=True)
        print(f"{'kind':26s} {'full':>6s} {'incr':>6s} {'both':>6s} {'full only':>10s} {'incr only':>10s}")
        for kind in KINDS:
            k = m[m["kind"] == kind]
            if len(k):
                n = k["_merge"].value_counts()
                print(f"{kind:26s} {n['both'] + n['left_only']:6d} {n['both'] + n['right_only']:6d} {n['both']:6d} "
                      f"{n['left_only']:10d} {n['right_only']:10d}")
        both = m[m["_merge"] == "both"]
        for col in ("end", "severity", "score", "evidence"):
            a, b = both[f"{col}_full"], both[f"{col}_inc"]
            same = (a == b) | (a.isna() & b.isna())
            if col == "score":
                same = np.isclose(a.astype(float), b.astype(float), rtol=1e-5)
            print(f"  common episodes whose {col} differs: {int((~same).sum())}")


if __name__ == "__main__":
    main()
