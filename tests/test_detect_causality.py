"""Causality of the detectors (issue #3, part 5): replaying a history as the readings would have
arrived, an episode's ``detected_at`` is when the live system raises it, and nothing read after
it changes it. Checked on random synthetic areas from :mod:`sibifang.generate` (its household
simulation and anomaly plan), on the library and on `sibifang detect`."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sibifang import generate
from sibifang.detectors import detect

KEY = ["meter_id", "kind", "start", "detected_at", "severity"]
START = date(2026, 10, 1)


def area_readings(seed: int, meters: int = 6, days: int = 30, interval: int = 15, lost: bool = True) -> pd.DataFrame:
    """Readings (``meter_id, ts, kwh``, ts the end of the interval) of ``meters`` simulated
    households with the generator's planned anomalies, read every ``interval`` minutes
    (``lost``: with the readings lost in transmission, else only the planned outages)."""
    rng = generate._rng(seed, 99)
    temp = generate._daily_temperature(START, days, generate._rng(seed, 1))
    rest = generate._rest_days(START, days)
    anomalies = generate._plan_anomalies(meters, days, rng)
    kwh, present = generate._readings_chunk(seed, 0, meters, days, temp, rest, anomalies, 0)
    if not lost:
        offline = np.zeros_like(present)
        for a in anomalies:
            if a.kind == "meter_offline":
                offline[a.meter, a.start:a.end] = True
        present = ~offline
    per = interval // 15      # coarser meters: the sum of the 15-minute slots of each interval
    kwh = kwh.reshape(meters, -1, per).sum(axis=2)
    present = present.reshape(meters, -1, per).all(axis=2)
    ts = pd.Timestamp(START) + pd.to_timedelta(np.arange(1, kwh.shape[1] + 1) * interval, unit="min")
    mi, si = np.nonzero(present)
    ids = np.array([f"M{i}" for i in range(meters)], dtype=object)
    return pd.DataFrame({"meter_id": ids[mi], "ts": ts[si], "kwh": kwh[mi, si]})


def _match(frame: pd.DataFrame, ep) -> pd.DataFrame:
    return frame[(frame.meter_id == ep.meter_id) & (frame.kind == ep.kind) & (frame.start == ep.start)]


def assert_causal(df: pd.DataFrame, full: pd.DataFrame, cut_at) -> None:
    """Every episode of ``full`` detected by ``cut_at`` is raised the same from the readings up to
    ``cut_at`` only: same kind, start, detected_at, severity and score."""
    cut = detect(df[df.ts <= cut_at], as_of=cut_at)
    assert not (cut.detected_at > cut_at).any()
    for ep in full[full.detected_at <= cut_at].itertuples(index=False):
        same = _match(cut, ep)
        assert len(same) == 1, (cut_at, ep, cut[KEY])
        got = same.iloc[0]
        assert (got.detected_at, got.severity) == (ep.detected_at, ep.severity), (cut_at, ep, got)
        # the score is the test's statistic at the detection: nothing later moves it
        assert got.score == pytest.approx(ep.score, rel=1e-5), (cut_at, ep, got)
    # and nothing is raised from the truncated history that the whole history does not raise
    for ep in cut.itertuples(index=False):
        assert len(_match(full, ep)) == 1, (cut_at, ep, full[KEY])


@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), interval=st.sampled_from([15, 30, 60]), cut_hours=st.integers(24, 30 * 24),
       cut_minutes=st.sampled_from([0, 15, 30, 45]))
def test_property_truncating_at_a_detection_or_as_of_raises_the_same_episodes(seed, interval, cut_hours,
                                                                               cut_minutes):
    df = area_readings(seed, interval=interval)
    full = detect(df)
    for ep in full.drop_duplicates("detected_at").itertuples(index=False):
        assert_causal(df, full, ep.detected_at)
    # an arbitrary as-of, on or off the hour
    assert_causal(df, full, pd.Timestamp(START) + pd.Timedelta(hours=cut_hours, minutes=cut_minutes))


@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), split_hours=st.integers(10 * 24, 28 * 24))
def test_property_readings_still_to_come_never_move_an_episode_already_raised(seed, split_hours):
    """Appending the future: the episodes raised by the split keep their start, detection,
    kind and severity when the later readings arrive."""
    df = area_readings(seed)
    split = pd.Timestamp(START) + pd.Timedelta(hours=split_hours)
    before = detect(df[df.ts <= split], as_of=split)
    after = detect(df)
    for ep in before.itertuples(index=False):
        same = _match(after, ep)
        assert len(same) == 1, (split, ep, after[KEY])
        assert (same.iloc[0].detected_at, same.iloc[0].severity) == (ep.detected_at, ep.severity)


@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**20), cut_hours=st.integers(3 * 24, 29 * 24), interval=st.sampled_from([15, 60]))
def test_property_the_command_as_of_a_time_writes_what_the_file_cut_there_gives(tmp_path_factory, seed, cut_hours,
                                                                                interval):
    """`sibifang detect --as-of T` on the whole file (cleaned, intervals learnt, with the readings
    after T in it) writes the same flags as on the file cut at T: the readings after T are not
    seen."""
    from typer.testing import CliRunner

    from sibifang.cli import app

    tmp_path = tmp_path_factory.mktemp("cut")
    df = area_readings(seed, interval=interval)
    cut = pd.Timestamp(START) + pd.Timedelta(hours=cut_hours)
    df = df.assign(ts=df.ts.dt.strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(tmp_path / "all.csv", index=False)
    df[pd.to_datetime(df.ts) <= cut].to_csv(tmp_path / "cut.csv", index=False)
    runner = CliRunner()
    for name, extra in (("all", ["--as-of", f"{cut:%Y-%m-%d %H:%M:%S}"]), ("cut", [])):
        result = runner.invoke(app, ["detect", "--readings", str(tmp_path / f"{name}.csv"), "--out",
                                     str(tmp_path / f"{name}.flags.csv"), "--min-severity", "low", *extra])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "all.flags.csv").read_bytes() == (tmp_path / "cut.flags.csv").read_bytes()


def _cadence_switch(meter: str, switch: pd.Timestamp, hourly_first: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the area read every 15 minutes, the same with ``meter`` read hourly before ``switch``
    (``hourly_first``) or after it): the same use, only the cadence changes."""
    df = area_readings(3, meters=6, days=35)
    m = df[df.meter_id == meter]
    hourly = (m.set_index("ts")["kwh"].resample("h", label="right", closed="right").sum(min_count=1).dropna()
              .reset_index().assign(meter_id=meter))
    parts = ((hourly[hourly.ts <= switch], m[m.ts > switch]) if hourly_first
             else (m[m.ts <= switch], hourly[hourly.ts > switch]))
    return m, pd.concat(parts)[["meter_id", "ts", "kwh"]]


def _alerted_near(out: pd.DataFrame, switch: pd.Timestamp) -> set:
    return set(out[out.severity.isin(["medium", "high", "critical"])
                   & (out.start >= switch - pd.Timedelta(days=1))
                   & (out.start < switch + pd.Timedelta(days=2))].kind)


def test_a_meter_read_hourly_then_every_15_minutes_raises_no_alert_for_the_change():
    """(Review) a meter's interval was one for its whole history: an hourly meter replaced by a
    15-minute one had its hourly readings read as 15-minute ones (x4), and the same use then read
    as a drop and a silence."""
    switch = pd.Timestamp("2026-10-25")
    m, mixed = _cadence_switch("M0", switch, hourly_first=True)
    assert _alerted_near(detect(mixed), switch) <= _alerted_near(detect(m), switch)


@pytest.mark.parametrize("meter, switch", [("M0", "2026-10-25"), ("M2", "2026-10-20 13:00")])
def test_a_meter_read_every_15_minutes_then_hourly_raises_no_alert_for_the_change(meter, switch):
    switch = pd.Timestamp(switch)
    m, mixed = _cadence_switch(meter, switch, hourly_first=False)
    assert _alerted_near(detect(mixed), switch) <= _alerted_near(detect(m), switch)
