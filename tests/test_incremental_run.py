"""The hourly incremental run (``fit_profiles`` at midnight, then ``detect_matrix(...,
profiles=...)``) reports what the full causal replay of the whole history reports for the same
hours: the episodes raised since the checkpoint and the ends of those still open at it, with
the same starts, severities, scores and evidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sibifang.detectors import detect_matrix, fit_profiles
from tests.test_detectors import START, _sel, lights_off, routine

CHECKPOINT = START + pd.Timedelta(days=32)      # a Thursday midnight
KEY = ["meter_id", "kind", "start", "detected_at"]
COLUMNS = KEY + ["end", "severity", "score", "expected_kwh_per_h", "observed_kwh_per_h", "evidence"]


def _households() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Episodes of every kind, many of them running across the checkpoint's midnight."""
    day = CHECKPOINT
    h = lambda n: pd.Timedelta(hours=n)  # noqa: E731
    frames, absences = [], []
    for k in range(14):
        df = routine(f"m{k:02d}", days=34, seed=k)
        if k == 1:                                   # lights off from the evening before
            df = lights_off(df, day - h(5), hours=40)
        elif k == 2:                                 # lights off at dawn
            df = lights_off(df, day + h(5), hours=30)
        elif k == 3:                                 # a drop that began days before
            df.loc[_sel(df, day - h(80), day + h(30)), "kwh"] *= 0.4
        elif k == 4:                                 # no data across midnight
            df.loc[_sel(df, day - h(3), day + h(4)), "kwh"] = np.nan
        elif k == 5:                                 # offline for days, back in the morning
            df.loc[_sel(df, day - h(50), day + h(9)), "kwh"] = np.nan
        elif k == 6:                                 # a constant load left on (frozen-on)
            s = _sel(df, day - h(6), day + h(30))
            df.loc[s, "kwh"] = 0.03 + 0.4 * 0.5
        elif k == 7:                                 # high use for days
            df.loc[_sel(df, day - h(40), day + h(20)), "kwh"] *= 3.5
        elif k == 8:                                 # no morning on the checkpoint's day
            df = lights_off(df, day, hours=13)
        elif k == 9:                                 # away (recorded) across midnight, silent
            df = lights_off(df, day - h(20), hours=40)
            absences.append((f"m{k:02d}", day - h(21), day + h(2)))
        elif k == 10:                                # up and about through the night
            s = _sel(df, day - h(3), day + h(4))
            df.loc[s, "kwh"] += np.resize([0.4, 0.0, 0.3, 0.05], s.sum())
        elif k == 11:                                # a drop that starts in the day judged
            df.loc[_sel(df, day + h(2), day + h(40)), "kwh"] *= 0.3
        elif k == 12:                                # an alert open at midnight ends; a new one
            df.loc[_sel(df, day - h(20), day + h(2)), "kwh"] = np.nan
            df.loc[_sel(df, day + h(6), day + h(40)), "kwh"] *= 0.3
        elif k == 13:                                # high use over at 01:00, then a drop
            df.loc[_sel(df, day - h(40), day + h(1)), "kwh"] *= 5
            df.loc[_sel(df, day + h(8), day + h(40)), "kwh"] *= 0.3
        frames.append(df)
    long = pd.concat(frames, ignore_index=True)
    return long, pd.DataFrame(absences, columns=["meter_id", "start", "end"])


@pytest.fixture(scope="module")
def city():
    long, absences = _households()
    wide = long.pivot(index="meter_id", columns="ts", values="kwh")
    kwh = wide.to_numpy(np.float32)
    ids = wide.index.to_numpy(dtype=object)
    per_day = 48
    eps: list = []
    prof = fit_profiles(kwh[:, : 32 * per_day], ids, START, 30, absences=absences, episodes=eps)
    return kwh, ids, absences, prof, pd.DataFrame(eps)


def _expected(full: pd.DataFrame) -> pd.DataFrame:
    """What the hourly run owes the flow: the replay's episodes detected after the checkpoint or
    still open at it."""
    keep = (full["detected_at"] > CHECKPOINT) | full["end"].isna() | (full["end"] >= CHECKPOINT)
    return full[keep][COLUMNS].sort_values(KEY).reset_index(drop=True)


@pytest.mark.parametrize("hour", [0, 1, 7, 15, 20, 23, 24])
def test_incremental_run_reports_what_the_full_replay_does(city, hour):
    kwh, ids, absences, prof, _ = city
    now = 32 * 48 + hour * 2
    full = detect_matrix(kwh[:, :now], ids, START, 30, absences=absences)
    inc = detect_matrix(kwh[:, 31 * 48: now], ids, CHECKPOINT - pd.Timedelta(days=1), 30,
                        absences=absences, profiles=prof)
    want = _expected(full)
    got = inc[COLUMNS].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5)


def test_the_hours_judged_hold_episodes_of_many_kinds(city):
    """The comparison above is not vacuous: episodes of most kinds cross the checkpoint or
    are raised after it, and some are still open at it."""
    kwh, ids, absences, prof, _ = city
    full = detect_matrix(kwh[:, : 33 * 48 + 12], ids, START, 30, absences=absences)
    want = _expected(full)
    assert {"inactivity", "sustained_drop", "meter_offline", "high_use"} <= set(want["kind"])
    carried = want[want["detected_at"] <= CHECKPOINT]
    assert len(carried) >= 3 and (carried["end"] > CHECKPOINT).any()
    # an alert that was open at midnight and is over does not swallow the day's next one
    drop = want[(want["meter_id"] == "m12") & (want["kind"] == "sustained_drop")]
    assert len(drop) == 1 and drop.iloc[0]["severity"] != "low"


def test_the_profile_fit_replays_the_history_as_detect_matrix_does(city):
    kwh, ids, absences, _, fit_rows = city
    full = detect_matrix(kwh[:, : 32 * 48], ids, START, 30, absences=absences)
    cols = [c for c in COLUMNS if c != "end"]
    got = fit_rows[cols].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, full[cols].sort_values(KEY).reset_index(drop=True), check_dtype=False)


def test_the_incremental_run_needs_the_day_before_the_checkpoint(city):
    kwh, ids, absences, prof, _ = city
    with pytest.raises(ValueError, match="the day before"):
        detect_matrix(kwh[:, 32 * 48: 33 * 48], ids, CHECKPOINT, 30, profiles=prof)
    # a longer window is cut to it
    longer = detect_matrix(kwh[:, 28 * 48: 32 * 48 + 20], ids, CHECKPOINT - pd.Timedelta(days=4), 30,
                           absences=absences, profiles=prof)
    exact = detect_matrix(kwh[:, 31 * 48: 32 * 48 + 20], ids, CHECKPOINT - pd.Timedelta(days=1), 30,
                          absences=absences, profiles=prof)
    pd.testing.assert_frame_equal(longer, exact)


def test_the_profiles_serve_one_day(city):
    kwh, ids, absences, prof, _ = city
    with pytest.raises(ValueError, match="fit them again"):
        detect_matrix(kwh[:, 31 * 48: 33 * 48 + 2], ids, CHECKPOINT - pd.Timedelta(days=1), 30, profiles=prof)
