"""Readings of one meter and time given twice with different kWh: ``detect`` judges the one the
flow's ingestion keeps (``ReadingStore.append`` and the feeds' ``clean_readings``: the one that
came first), so the library, the command and the flow judge the same hours."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sibifang.detectors import detect, hourly_matrix
from tests.test_detect_causality import area_readings

DAY = pd.Timestamp("2026-11-20")


def _with_resent(readings: pd.DataFrame, every: int = 37) -> pd.DataFrame:
    """``readings`` followed by every ``every``-th reading sent again with another kWh."""
    again = readings.iloc[::every].assign(kwh=lambda d: d.kwh * 3 + 0.5)
    return pd.concat([readings, again], ignore_index=True)


def test_a_reading_sent_twice_counts_as_the_store_keeps_it(tmp_path):
    from sibifang.profile_cache import hourly_kwh
    from sibifang.readings_store import ReadingStore

    ts = pd.date_range(DAY + pd.Timedelta(minutes=15), DAY + pd.Timedelta(days=2), freq="15min")
    readings = pd.DataFrame({"meter_id": "a", "ts": ts, "kwh": 0.125})   # exact in float32
    sent = _with_resent(readings)
    store = ReadingStore(tmp_path / "store")
    store.append(sent)
    kwh, ids = hourly_kwh(store, DAY, DAY + pd.Timedelta(days=2))
    meters, X, _, n = hourly_matrix(sent)
    assert ids == list(meters) == ["a"]
    np.testing.assert_array_equal(kwh, X[:, :n])
    assert (kwh == 0.5).all()                        # the first value of each, not the resent one


def test_detect_judges_what_the_store_keeps_of_readings_sent_twice(tmp_path):
    from sibifang.readings_store import ReadingStore

    readings = area_readings(5, meters=3, days=21)
    readings["kwh"] = readings["kwh"].astype(np.float32).astype(np.float64)   # as the store keeps kWh
    sent = _with_resent(readings)
    store = ReadingStore(tmp_path / "store")
    store.append(sent.iloc[: len(sent) // 2])          # in two batches: what was stored first stays
    store.append(sent.iloc[len(sent) // 2:])
    stored = store.load()
    assert len(stored) == len(readings)
    pd.testing.assert_frame_equal(detect(sent), detect(stored))
    pd.testing.assert_frame_equal(detect(sent), detect(readings))
