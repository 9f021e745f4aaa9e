"""Wording users read: Jinja templates and TOML tables of format strings, by stage."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def wording(name: str) -> dict[str, str]:
    """A table of format strings in this package, e.g. ``wording("schedule_visits/titles.toml")``."""
    with (HERE / name).open("rb") as f:
        return tomllib.load(f)
