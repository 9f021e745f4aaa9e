"""Timing of the data contracts: GX start-up, the readings suite on 1 M rows, a household import.

Run: ``.venv/bin/python benchmarks/bench_validation.py [rows]`` from the repository root.
Prints figures; asserts nothing (the tests do that).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def readings_frame(n: int, meters: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "meter_id": pd.Series(np.char.add("M", (np.arange(n) % meters).astype(str)), dtype="str"),
        "ts": pd.Timestamp("2026-10-01") + pd.to_timedelta(np.arange(n) // meters * 15, unit="min"),
        "kwh": rng.gamma(2.0, 0.05, n),
    })


def households_frame(n: int) -> pd.DataFrame:
    from sibifang.checks import resident_id_check_char

    bodies = [f"330203{1940 + i % 60}{1 + i % 12:02d}{1 + i % 28:02d}{i % 1000:03d}" for i in range(n)]
    return pd.DataFrame({
        "household_id": [f"H{i:07d}" for i in range(n)],
        "head_name": ["王秀英"] * n,
        "id_number": [b + resident_id_check_char(b) for b in bodies],
        "phone": [f"138{i:08d}" for i in range(n)],
        "address": ["示例路1号"] * n,
        "grid_id": [f"G{i % 200:04d}" for i in range(n)],
        "categories": ["empty_nest;hardship", "", "困难家庭", "dispute"] * (n // 4) + [""] * (n % 4),
        "members": ["2"] * n,
        "elderly_living_alone": ["0", "1"] * (n // 2) + ["0"] * (n % 2),
        "consent": ["1"] * n,
        "away_from": [""] * n, "away_until": [""] * n,
    }, dtype="str")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    t0 = time.perf_counter()
    from schemas.validation import get_context, validate_frame

    get_context()
    print(f"GX import + ephemeral context: {time.perf_counter() - t0:.2f} s")

    small = readings_frame(1000)
    t0 = time.perf_counter()
    validate_frame(small, "readings", source="warm-up")
    print(f"first validation (suite build), 1k rows: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    validate_frame(small, "readings", source="warm")
    print(f"warm validation, 1k rows: {time.perf_counter() - t0:.3f} s")

    frame = readings_frame(rows)
    for label, df in (("clean", frame),):
        t0 = time.perf_counter()
        report = validate_frame(df, "readings", source="bench")
        print(f"readings suite, {rows:,} rows ({label}): {time.perf_counter() - t0:.2f} s, success={report.success}")
    bad = frame.copy()
    bad.loc[bad.index[::100], "kwh"] = -1.0  # 1 % failing rows: COMPLETE result lists them all
    t0 = time.perf_counter()
    report = validate_frame(bad, "readings", source="bench")
    failing = sum(r.unexpected_count for r in report.failures)
    print(f"readings suite, {rows:,} rows (1 % bad): {time.perf_counter() - t0:.2f} s, {failing:,} failing rows")

    from sibifang.importing import validate_import

    n = 100_000
    raw = households_frame(n)
    known = {"grids": {f"G{i:04d}" for i in range(200)}}
    t0 = time.perf_counter()
    result = validate_import("households", raw, source="bench", known=known)
    print(f"households import, {n:,} rows: {time.perf_counter() - t0:.2f} s, "
          f"accepted={len(result.accepted):,} quarantined={result.quarantined_lines:,}")


if __name__ == "__main__":
    main()
