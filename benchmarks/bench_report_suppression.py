"""Small-cell protection of the risk map (``summary_report.protect_table``) at city size.

A city has about 2,300 grids; this protects tables of 2,500 and 5,000 grids × 4 levels, a
fifth of the cells small, and prints the time and how many cells were hidden.

    .venv/bin/python benchmarks/bench_report_suppression.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sibifang.summary_report import SUPPRESSED, protect_table  # noqa: E402


def table(n: int, seed: int = 5) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice([0] * 8 + [1, 2, 3, 5]), rng.choice([0] * 5 + [1, 2, 4, 6]),
             rng.choice([0, 1, 2, 3, 5, 8, 12]), rng.randint(40, 150)] for _ in range(n)]


def main() -> None:
    for n in (2500, 5000):
        raw = table(n)
        t0 = time.perf_counter()
        pub = protect_table(raw)
        took = time.perf_counter() - t0
        hidden = sum(r.count(SUPPRESSED) for r in pub) if pub is not None else 0
        print(f"protect_table: {n} grids x 4 levels in {took:.3f} s, {hidden} cells hidden as '*'")


if __name__ == "__main__":
    main()
