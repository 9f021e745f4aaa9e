"""The hourly ``flag_risks`` detection at city scale, end to end from the readings store.

``judge_meters`` (sibifang/profile_cache.py) is what the task runs: read the day's stored fit
back (a pickle of the profiles, the alarms' checkpoint and the replay's episodes), read the
day before midnight and the hours since from the Parquet store, and judge them from the
checkpoint. 50,000 meters × 15-minute readings (``bench_detect_city.synthesise``); the day's
fit is made here from the matrix (the first run of the day, timed in bench_detect_city.py)
and stored where the task finds it; the store holds the two days the hourly run reads.

    .venv/bin/python benchmarks/bench_flag_risks_hourly.py [--meters 50000] [--hour 17]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect_city import synthesise  # noqa: E402
from sibifang.detectors import DetectorConfig, fit_profiles  # noqa: E402
from sibifang.profile_cache import ProfileCache, fingerprint, judge_meters  # noqa: E402
from sibifang.readings_store import ReadingStore  # noqa: E402

DAYS, PER_DAY, BASELINE = 30, 96, 35


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=50_000)
    ap.add_argument("--hour", type=int, default=17, help="the hour of the last day the run judges up to")
    args = ap.parse_args()
    t0 = pd.Timestamp("2026-10-01")
    midnight = t0 + pd.Timedelta(days=DAYS - 1)
    as_of = midnight + pd.Timedelta(hours=args.hour)
    ids = pd.Index([f"M{i:06d}" for i in range(args.meters)])
    kwh = synthesise(args.meters, DAYS)
    root = Path(tempfile.mkdtemp(prefix="bench-flag-"))
    try:
        store, cache = ReadingStore(root / "readings"), ProfileCache(root / "profiles")
        # the two days the hourly run reads: the day before midnight and today up to as_of
        t = time.perf_counter()
        first = (DAYS - 2) * PER_DAY
        upto = (DAYS - 1) * PER_DAY + args.hour * 4
        for a, b in ((first, first + PER_DAY), (first + PER_DAY, upto)):
            block = kwh[:, a:b]
            ts = t0 + pd.to_timedelta((np.arange(a, b) + 1) * 15, unit="min")
            store.append(pd.DataFrame({
                "meter_id": pd.Categorical.from_codes(np.repeat(np.arange(len(ids)), b - a), categories=ids),
                "ts": np.tile(ts.to_numpy(), len(ids)), "kwh": block.reshape(-1)}))
        print(f"store: {args.meters:,} meters × {(upto - first) / PER_DAY:.2f} days written in "
              f"{time.perf_counter() - t:.1f}s")
        config = DetectorConfig()
        t = time.perf_counter()
        episodes: list = []
        profiles = fit_profiles(kwh[:, : (DAYS - 1) * PER_DAY], ids.to_numpy(object), t0, 15, config=config,
                                episodes=episodes)
        history = midnight - pd.Timedelta(days=BASELINE)
        digest = fingerprint(pd.DataFrame(), store.partition_stamps(history, midnight), config, BASELINE)
        path = cache.save(midnight, digest, profiles, episodes)
        print(f"the day's fit ({DAYS - 1} days, the first run's work): {time.perf_counter() - t:.1f}s, "
              f"stored {path.stat().st_size / 1e6:.0f} MB")
        del kwh, profiles, episodes

        away = pd.DataFrame({"meter_id": [], "start": [], "end": []})
        times = []
        for _ in range(3):
            t = time.perf_counter()
            out, info = judge_meters(store, cache, as_of, away, config, BASELINE)
            times.append(time.perf_counter() - t)
            assert not info["fitted"], "the stored fit was not read back"
        t = time.perf_counter()
        cache.load(midnight, digest)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        store.load_matrix((midnight - pd.Timedelta(days=1)).to_pydatetime(), as_of.ceil("h").to_pydatetime(), 60)
        t_read = time.perf_counter() - t
        print(f"hourly run up to {as_of:%H:%M} ({info['meters']:,} meters, {len(out):,} episodes reported): "
              f"{min(times):.1f}s best of 3 ({', '.join(f'{x:.1f}' for x in times)}); of it, reading the fit back "
              f"{t_load:.1f}s and the two days of readings {t_read:.1f}s; peak RSS {peak_rss_gb():.2f} GB")
        print(f"target: hourly ≤ 5 s → {'OK' if min(times) <= 5 else 'MISSED'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
