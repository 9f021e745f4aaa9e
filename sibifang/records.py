"""Turning DataFrames into database rows and back, with pandas' missing values made ``None``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd


def stable_id(prefix: str, *parts: object, length: int = 16) -> str:
    """A deterministic id: the same inputs give the same id, so re-runs upsert, never duplicate."""
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:length]}"


def clean_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return [clean_value(v) for v in value]
    if isinstance(value, dict):
        return {k: clean_value(v) for k, v in value.items()}
    if value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value).to_pydatetime()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime().replace(tzinfo=None)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def to_date(value: Any) -> date | None:
    value = clean_value(value)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return pd.Timestamp(value).date()


def to_datetime(value: Any) -> datetime | None:
    value = clean_value(value)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return pd.Timestamp(value).to_pydatetime().replace(tzinfo=None)


def as_list(value: Any) -> list[str]:
    value = clean_value(value)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value if v not in (None, "")]
    return [p.strip() for p in str(value).split(";") if p.strip()]


def frame_records(df: pd.DataFrame, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cols = list(columns) if columns is not None else list(df.columns)
    out = []
    for row in df[cols].itertuples(index=False, name=None):
        out.append({c: clean_value(v) for c, v in zip(cols, row)})
    return out


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items (bounded statements and parameter lists)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
