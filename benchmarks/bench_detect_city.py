"""City-scale timing of the meter detectors (issue figure: 50,000 households × 30 days × 96
readings = 144 M readings in ≤ 30 s, peak memory ≤ 4 GB; hourly incremental run ≤ 5 s).

Synthesises the matrix (vectorised), runs
  1. the daily run: ``detect_matrix`` over the 30 days (routine learnt causally inside),
  2. the once-a-day profile fit (``fit_profiles``) over the first 29 days,
  3. the hourly incremental run: ``detect_matrix(..., profiles=...)`` over the last 2 days,
  4. the fastest baseline (fixed "no activity for 12 h" rule, vectorised) on the same matrix,
and prints seconds, peak RSS and the ratio to the baseline.

    .venv/bin/python benchmarks/bench_detect_city.py [--meters 50000] [--days 30]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sibifang.detectors import detect_matrix, fit_profiles  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # Linux: KiB


def synthesise(meters: int, days: int, per_hour: int = 4, seed: int = 0) -> np.ndarray:
    """Elderly routines: standby + meal/evening activity, 1% lights-off, 0.5% gaps. float32."""
    rng = np.random.default_rng(seed)
    slots = days * 24 * per_hour
    hour = (np.arange(slots) // per_hour) % 24
    p = np.select([(hour >= 6) & (hour < 9), (hour >= 11) & (hour < 13), (hour >= 17) & (hour < 21),
                   (hour >= 9) & (hour < 17)], [0.6, 0.5, 0.7, 0.2], 0.02).astype(np.float32)
    out = np.empty((meters, slots), dtype=np.float32)
    step = 2048
    for a in range(0, meters, step):
        b = min(meters, a + step)
        scale = rng.uniform(0.5, 2.0, (b - a, 1)).astype(np.float32)
        standby = rng.uniform(0.01, 0.02, (b - a, 1)).astype(np.float32)
        act = rng.random((b - a, slots), dtype=np.float32) < p
        blk = standby + 0.005 * rng.random((b - a, slots), dtype=np.float32) \
            + act * rng.random((b - a, slots), dtype=np.float32) * 0.2 * scale
        gaps = rng.random(b - a) < 0.005
        blk[gaps, slots // 2: slots // 2 + 40] = np.nan
        off = rng.random(b - a) < 0.01
        blk[off, -per_hour * 30:] = standby[off] + 0.005 * rng.random((off.sum(), per_hour * 30), dtype=np.float32)
        out[a:b] = blk
    return out


def rule_12h_matrix(kwh: np.ndarray, per_hour: int) -> int:
    """Baseline, vectorised: 12 consecutive hours ≤ the meter's 95th pct night (01–05 h) use."""
    M, K = kwh.shape
    alarms = 0
    for a in range(0, M, 4096):
        X = kwh[a:a + 4096]
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            H = np.nanmean(X.reshape(X.shape[0], -1, per_hour), axis=2) * per_hour
        hr = np.arange(H.shape[1]) % 24
        thr = np.nanquantile(H[:, (hr >= 1) & (hr <= 5)], 0.95, axis=1)[:, None]
        low = (H <= thr).astype(np.int8)
        run = np.zeros(H.shape[0], np.int32)
        for t in range(H.shape[1]):
            run = (run + 1) * low[:, t]
            alarms += int(np.sum(run == 12))
    return alarms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    t0 = pd.Timestamp("2026-10-01")
    ids = np.array([f"M{i:06d}" for i in range(args.meters)], dtype=object)

    t = time.perf_counter()
    kwh = synthesise(args.meters, args.days)
    print(f"synthesised {kwh.shape[0]:,} meters × {kwh.shape[1]:,} slots = {kwh.size / 1e6:.0f} M readings "
          f"({kwh.nbytes / 1e9:.2f} GB float32) in {time.perf_counter() - t:.1f}s; peak RSS {peak_rss_gb():.2f} GB")

    t, c = time.perf_counter(), time.process_time()
    out = detect_matrix(kwh, ids, t0, 15)
    t_daily, c_daily = time.perf_counter() - t, time.process_time() - c
    print(f"daily run (detect_matrix, 30 days, causal routine): {t_daily:.1f}s wall, {c_daily:.1f}s CPU, "
          f"{len(out):,} episodes {out['kind'].value_counts().to_dict()}; peak RSS {peak_rss_gb():.2f} GB")

    t, c = time.perf_counter(), time.process_time()
    rule_alarms = rule_12h_matrix(kwh, 4)
    t_rule, c_rule = time.perf_counter() - t, time.process_time() - c
    print(f"baseline 12 h rule on the same matrix: {t_rule:.1f}s wall, {c_rule:.1f}s CPU ({rule_alarms:,} alarms); "
          f"ratio ours/baseline = {t_daily / t_rule:.2f} wall, {c_daily / c_rule:.2f} CPU")

    per_day = 96
    t = time.perf_counter()
    prof = fit_profiles(kwh[:, : (args.days - 1) * per_day], ids, t0, 15)
    t_fit = time.perf_counter() - t
    print(f"once-a-day profile fit (29 days): {t_fit:.1f}s; peak RSS {peak_rss_gb():.2f} GB")

    # the hourly run: last 2 days of readings (yesterday + today so far) against the stored profile
    last = kwh[:, (args.days - 2) * per_day:]
    t, c = time.perf_counter(), time.process_time()
    inc = detect_matrix(last, ids, t0 + pd.Timedelta(days=args.days - 2), 15, profiles=prof)
    t_inc, c_inc = time.perf_counter() - t, time.process_time() - c
    print(f"hourly incremental run (2 days × {args.meters:,} meters, stored profile): {t_inc:.1f}s wall, "
          f"{c_inc:.1f}s CPU, {len(inc):,} episodes {inc['kind'].value_counts().to_dict()}; "
          f"peak RSS {peak_rss_gb():.2f} GB")
    print(f"load average during run: {__import__('os').getloadavg()}")
    print(f"targets: daily ≤ 30 s → {'OK' if t_daily <= 30 else 'MISSED'}; hourly ≤ 5 s → "
          f"{'OK' if t_inc <= 5 else 'MISSED'}; peak ≤ 4 GB → {'OK' if peak_rss_gb() <= 4 else 'MISSED'}")


if __name__ == "__main__":
    main()
