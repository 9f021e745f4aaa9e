"""The profile cache (sibifang/profile_cache.py): a stored fit comes back only under the same
fingerprint; a damaged file means fitting again, never a failed run; pruning leaves another
writer's temporary file alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sibifang.detectors import DetectorConfig, RoutineProfiles
from sibifang.profile_cache import ProfileCache, fingerprint

AT = pd.Timestamp("2026-11-20")


def _profiles() -> RoutineProfiles:
    z = np.zeros((1, 2, 24), np.float32)
    one = np.zeros(1, np.float32)
    return RoutineProfiles(meter_ids=np.array(["M1"], object), p_active=z, p_continue=z, mean_kwh=z, delta=one,
                           log_pstar=one, log_pstar_night=one, standby=one, wake_hour=np.zeros(1, int),
                           morning_deadline=one, history_days=one)


def test_a_stored_fit_comes_back_under_its_fingerprint_only(tmp_path):
    cache = ProfileCache(tmp_path)
    digest = fingerprint(None, [("2026-11-19", 1, 2)], DetectorConfig(), 35)
    cache.save(AT, digest, _profiles(), [{"meter_id": "M1"}])
    profiles, episodes = cache.load(AT, digest)
    assert list(profiles.meter_ids) == ["M1"] and episodes == [{"meter_id": "M1"}]
    # a late file for yesterday, other absences, other settings or another window: fit again
    for other in (fingerprint(None, [("2026-11-19", 3, 2)], DetectorConfig(), 35),
                  fingerprint(pd.DataFrame({"meter_id": ["M1"], "start": ["2026-11-10"], "end": ["None"]}),
                              [("2026-11-19", 1, 2)], DetectorConfig(), 35),
                  fingerprint(None, [("2026-11-19", 1, 2)], DetectorConfig(offline_hours=8), 35),
                  fingerprint(None, [("2026-11-19", 1, 2)], DetectorConfig(), 28)):
        assert other != digest and cache.load(AT, other) is None
    assert cache.load(AT + pd.Timedelta(days=1), digest) is None


def test_a_damaged_file_is_fitted_again_and_pruning_spares_temporary_files(tmp_path):
    cache = ProfileCache(tmp_path)
    path = cache.save(AT, "d", _profiles(), [])
    data = path.read_bytes()
    for cut in (b"", data[: len(data) // 2], b"\x80\x05garbage" * 3, data[:20] + b"\xff" * 8 + data[28:]):
        path.write_bytes(cut)
        assert cache.load(AT, "d") is None
    writing = tmp_path / ".tmp-another-run.pkl"
    writing.write_bytes(b"half written")
    for k in range(5):
        cache.save(AT + pd.Timedelta(days=k), "d", _profiles(), [])
    assert writing.exists()
    assert sorted(p.name for p in tmp_path.glob("2026-*.pkl")) == [
        "2026-11-22T0000.pkl", "2026-11-23T0000.pkl", "2026-11-24T0000.pkl"]
    # a past day replayed by hand keeps its fit for its next run
    cache.save(AT - pd.Timedelta(days=5), "d", _profiles(), [])
    assert cache.load(AT - pd.Timedelta(days=5), "d") is not None


def test_hourly_kwh_scales_a_partly_covered_hour_up_as_detect_does(tmp_path):
    """The flow's hours are detect's: a 15-minute meter missing a reading, a 30-minute one missing
    half an hour, an hourly one; a gap is never a zero, and a whole hour is its plain sum."""
    from sibifang.detectors import hourly_matrix
    from sibifang.profile_cache import hourly_kwh
    from sibifang.readings_store import ReadingStore

    day = pd.Timestamp("2026-11-20")
    rows = []
    for meter, minutes in (("a", 15), ("b", 30), ("c", 60)):
        ts = pd.date_range(day + pd.Timedelta(minutes=minutes), day + pd.Timedelta(days=1), freq=f"{minutes}min")
        rows.append(pd.DataFrame({"meter_id": meter, "ts": ts, "kwh": 0.125 * minutes / 15}))
    readings = pd.concat(rows, ignore_index=True)
    # 09:00-10:00 loses its 09:30 reading (a) and its 10:00 one (b, c: c's hour is then empty)
    readings = readings[~(((readings.meter_id == "a") & (readings.ts == day + pd.Timedelta(hours=9, minutes=30)))
                          | (readings.meter_id.isin(["b", "c"]) & (readings.ts == day + pd.Timedelta(hours=10))))]
    store = ReadingStore(tmp_path / "store")
    store.append(readings)
    kwh, ids = hourly_kwh(store, day, day + pd.Timedelta(days=1))
    assert ids == ["a", "b", "c"]
    assert kwh[:, 9].tolist()[:2] == [0.5, 0.5] and np.isnan(kwh[2, 9])
    assert (kwh[:2, [0, 8, 10, 23]] == 0.5).all() and (kwh[2, [0, 8, 10, 23]] == 0.5).all()
    meters, X, _, n = hourly_matrix(readings)
    np.testing.assert_array_equal(kwh, X[:, :n])
