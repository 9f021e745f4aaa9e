"""A meter's cadence is read hour by hour, not once for its whole history (issue #3, review): an
hourly meter replaced by a 15-minute one (or the other way round) keeps its hours' use, a gap
is not a change of cadence, and the flow's hours (``profile_cache.hourly_kwh``) are the
command's (``detectors.hourly_matrix``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sibifang.detectors import hourly_matrix
from sibifang.detectors.hourly import CADENCE_SETTLES_HOURS, readings_per_hour

DAY = pd.Timestamp("2026-11-02")
USE = 0.5   # kWh every hour, whatever the cadence


def series(meter: str, start: pd.Timestamp, end: pd.Timestamp, minutes: int) -> pd.DataFrame:
    """Readings of ``meter`` every ``minutes`` in (start, end], USE kWh an hour."""
    ts = pd.date_range(start + pd.Timedelta(minutes=minutes), end, freq=f"{minutes}min")
    return pd.DataFrame({"meter_id": meter, "ts": ts, "kwh": USE * minutes / 60})


SWITCH = DAY + pd.Timedelta(days=3, hours=10)
END = DAY + pd.Timedelta(days=6)
MIXED = pd.concat([
    # hourly, then every 15 minutes
    series("up", DAY, SWITCH, 60), series("up", SWITCH, END, 15),
    # every 15 minutes, then hourly
    series("down", DAY, SWITCH, 15), series("down", SWITCH, END, 60),
    # every 15 minutes, off from 09:00 to 14:30 on day 2 and a reading lost at 05:30 on day 4
    series("gap", DAY, END, 15).pipe(lambda d: d[~(((d.ts > DAY + pd.Timedelta(days=2, hours=9))
                                                    & (d.ts <= DAY + pd.Timedelta(days=2, hours=14, minutes=30)))
                                                   | (d.ts == DAY + pd.Timedelta(days=4, hours=5, minutes=30)))]),
], ignore_index=True)


def hours(meters, X, meter) -> pd.Series:
    row = list(meters).index(meter)
    return pd.Series(X[row], index=DAY + pd.to_timedelta(np.arange(1, X.shape[1] + 1), unit="h"))


def test_an_hourly_meter_replaced_by_a_15_minute_one_keeps_its_hours_use():
    meters, X, t0, n = hourly_matrix(MIXED)
    assert t0 == DAY
    up = hours(meters, X[:, :n], "up")
    np.testing.assert_allclose(up.to_numpy(), USE, rtol=1e-6)      # before the switch not ×4


def test_a_15_minute_meter_replaced_by_an_hourly_one_keeps_its_hours_use_once_settled():
    meters, X, _, n = hourly_matrix(MIXED)
    down = hours(meters, X[:, :n], "down")
    settled = SWITCH + pd.Timedelta(hours=CADENCE_SETTLES_HOURS)
    np.testing.assert_allclose(down[down.index <= SWITCH].to_numpy(), USE, rtol=1e-6)
    np.testing.assert_allclose(down[down.index >= settled].to_numpy(), USE, rtol=1e-6)
    # the hours before it settles are read as the 15-minute cadence (causal: no hour after them
    # is known yet), never more than CADENCE_SETTLES_HOURS - 1 of them
    transient = down[(down.index > SWITCH) & (down.index < settled)]
    assert len(transient) == CADENCE_SETTLES_HOURS - 1
    np.testing.assert_allclose(transient.to_numpy(), 4 * USE, rtol=1e-6)


def test_a_gap_is_not_a_change_of_cadence():
    meters, X, _, n = hourly_matrix(MIXED)
    gap = hours(meters, X[:, :n], "gap")
    off = (gap.index > DAY + pd.Timedelta(days=2, hours=9)) & (gap.index <= DAY + pd.Timedelta(days=2, hours=14))
    assert gap[off].isna().all()
    # 14:00-15:00 holds 14:45 and 15:00 only, 05:00-06:00 three readings: both scaled up
    np.testing.assert_allclose(gap[~off].to_numpy(), USE, rtol=1e-6)


def test_readings_per_hour_by_example():
    s = CADENCE_SETTLES_HOURS
    meter = np.r_[np.zeros(s + 3, int), np.ones(4, int)]
    count = np.r_[[2, 2], np.ones(s + 1, int), [4, 3, 4, 4]]
    per = readings_per_hour(meter, count)
    # meter 0: its first hours take the most of its first s; 1 once s hours held one each
    assert per[:s].tolist() == [2] * s
    # the run of ones starts at its third hour and settles s hours later
    assert per[s:s + 3].tolist() == [2, 1, 1]
    assert per[-4:].tolist() == [4, 4, 4, 4]          # meter 1 starts afresh


@pytest.mark.parametrize("start_hour", [0, 72, 24 * 3 + 13, 96])
def test_the_flows_hours_are_the_commands_hours_on_a_changing_cadence(tmp_path, start_hour):
    """hourly_kwh reads the day before its window for the cadence: a window starting on the
    switch's day, after it or while the new cadence settles (13:00, three hours after it) scales
    its first hours as the whole history does."""
    from sibifang.profile_cache import hourly_kwh
    from sibifang.readings_store import ReadingStore

    store = ReadingStore(tmp_path / "store")
    store.append(MIXED)
    start = DAY + pd.Timedelta(hours=start_hour)
    kwh, ids = hourly_kwh(store, start, END)
    meters, X, _, n = hourly_matrix(MIXED)
    assert ids == sorted(meters)
    lead = start_hour
    np.testing.assert_array_equal(kwh, X[:, lead:n])


def test_the_flows_hours_are_the_commands_hours_on_a_meter_that_lost_most_readings(tmp_path):
    """60 % of a 15-minute meter's readings lost: few of its hours are whole, but its spacings
    still say 15 minutes, in the store's tally as in ``hourly_matrix``."""
    from sibifang.profile_cache import hourly_kwh
    from sibifang.readings_store import ReadingStore

    full = series("sparse", DAY, END, 15)
    sparse = full[np.random.default_rng(3).random(len(full)) < 0.4]
    store = ReadingStore(tmp_path / "store")
    store.append(sparse)
    kwh, _ = hourly_kwh(store, DAY, END)
    _, X, _, n = hourly_matrix(sparse)
    np.testing.assert_array_equal(kwh, X[:, :n])
    np.testing.assert_allclose(kwh[~np.isnan(kwh)], USE, rtol=1e-6)
