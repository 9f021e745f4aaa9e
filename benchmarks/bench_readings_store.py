"""Benchmark the readings store at city scale: 30 days x 50,000 meters x 96 readings a day.

Run: ``.venv/bin/python benchmarks/bench_readings_store.py [--meters 50000] [--days 30]``.
Prints seconds and peak RSS (ru_maxrss, the process high-water mark so far) per step.
Writes into a temporary directory that is removed at the end.
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
from sibifang.ingest_readings import clean_readings  # noqa: E402
from sibifang.readings_store import ReadingStore  # noqa: E402

SLOTS_PER_DAY = 96


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_day(day: pd.Timestamp, meter_ids: pd.Index, rng: np.random.Generator) -> pd.DataFrame:
    """A day of 15-minute readings for every meter, generated without Python loops."""
    n_meters = len(meter_ids)
    slot_ends = pd.date_range(day + pd.Timedelta(minutes=15), periods=SLOTS_PER_DAY, freq="15min")
    hour = (np.arange(SLOTS_PER_DAY) * 15 / 60.0)
    daily_shape = 0.04 + 0.06 * np.exp(-((hour - 19) ** 2) / 8) + 0.03 * np.exp(-((hour - 7) ** 2) / 2)
    kwh = rng.gamma(2.0, 0.5, size=(n_meters, SLOTS_PER_DAY)) * daily_shape
    frame = pd.DataFrame({
        "meter_id": pd.Categorical.from_codes(np.repeat(np.arange(n_meters), SLOTS_PER_DAY), categories=meter_ids),
        "ts": np.tile(slot_ends.to_numpy(), n_meters),
        "kwh": kwh.ravel().astype(np.float32),
    })
    # Real feeds miss readings: drop ~0.5 % at random so the matrix has NaN gaps.
    return frame[rng.random(len(frame)) > 0.005]


def timed(label: str, func):
    start = time.perf_counter()
    result = func()
    seconds = time.perf_counter() - start
    print(f"{label:<46} {seconds:8.2f} s   peak RSS {peak_rss_mb():8.0f} MB", flush=True)
    return result


def bench_cleaning(first_day: pd.Timestamp, meter_ids: pd.Index, rng: np.random.Generator) -> None:
    # Cleaning one day of the city, as a CSV feed delivers it (text) and as Parquet (typed).
    day = one_day(first_day, meter_ids, rng)
    as_text = pd.DataFrame({"meter_id": day["meter_id"].astype(str),
                            "ts": day["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"),
                            "kwh": day["kwh"].round(3).astype(str)}).sample(frac=1, random_state=0)
    known = set(meter_ids)
    now = first_day + pd.Timedelta(days=2)
    cleaned = timed(f"clean_readings one day, text ({len(as_text):,} rows)",
                    lambda: clean_readings(as_text, source="bench.csv", known_meters=known, now=now))
    assert cleaned.counts["accepted"] == len(day)
    timed("clean_readings one day, typed (Parquet)",
          lambda: clean_readings(day, source="bench.parquet", known_meters=known, now=now))
    register = day.assign(register_kwh=day.groupby("meter_id", observed=True)["kwh"].cumsum()).drop(columns="kwh")
    timed("clean_readings one day, cumulative register",
          lambda: clean_readings(register, source="bench-register.parquet", now=now))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(20261120)
    meter_ids = pd.Index([f"330281{i:08d}" for i in range(args.meters)])
    first_day = pd.Timestamp("2026-10-22")

    root = Path(tempfile.mkdtemp(prefix="bench_readings_"))
    try:
        store = ReadingStore(root)
        write_start = time.perf_counter()
        total = 0
        for d in range(args.days):
            day = first_day + pd.Timedelta(days=d)
            total += store.append(one_day(day, meter_ids, rng))
        write_s = time.perf_counter() - write_start
        print(f"write {args.days} days x {args.meters} meters ({total:,} readings) "
              f"{write_s:8.2f} s   peak RSS {peak_rss_mb():8.0f} MB")
        size_mb = sum(p.stat().st_size for p in root.rglob("*.parquet")) / 2**20
        print(f"store size on disk {size_mb:,.0f} MB ({size_mb * 2**20 / max(total, 1):.2f} bytes/reading)")
        timed("count() from Parquet metadata", store.count)
        timed("last_ts()", store.last_ts)

        end = first_day + pd.Timedelta(days=args.days)
        matrix, meters, slots = timed(f"load_matrix all {args.days} days",
                                      lambda: store.load_matrix(first_day, end))
        print(f"  matrix {matrix.shape}, {matrix.nbytes / 2**20:,.0f} MB, "
              f"NaN share {np.isnan(matrix).mean():.4f}")
        del matrix
        timed("load_matrix last day", lambda: store.load_matrix(end - pd.Timedelta(days=1), end))
        timed("load() last day as DataFrame", lambda: store.load(end - pd.Timedelta(days=1), end))

        next_day = one_day(end, meter_ids, rng)
        timed("append one new day", lambda: store.append(next_day))
        same = timed("re-append the same day (idempotent merge)", lambda: store.append(next_day))
        print(f"  new rows on re-append: {same}")
        # Late data: 1 % more meters, newly installed meters back-fill a day that is already stored.
        new_meters = pd.Index([f"330282{i:08d}" for i in range(max(args.meters // 100, 1))])
        late = one_day(end - pd.Timedelta(days=3), new_meters, rng)
        timed(f"append {len(late):,} late rows into an existing day", lambda: store.append(late))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # Last, so the store's peak RSS figures above are not the cleaner's.
    bench_cleaning(first_day, meter_ids, rng)


if __name__ == "__main__":
    main()
