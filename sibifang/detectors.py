"""Meter risk detectors (用电异常识别): find risk episodes in elderly households' smart-meter readings.

Every household is judged against its own routine, learnt causally from its past only
(trailing ``window_days``, by hour of day × weekday/weekend, so it follows the seasons):

* activity is judged by *variation above the running floor*, not by level: an hour is active
  when it rises above the floor of the previous ``floor_hours`` or changes level by more than
  the household's standby noise, so a constant load left on ("frozen-on") looks as inactive
  as a house with the lights off;
* each slot has a smoothed (Beta-prior) probability of activity and a probability that an
  inactive spell *continues* through it (a per-slot Markov survival model: sleeping hours are
  normally silent, mornings are not);
* a running silence is scored as a CUSUM (Page's test) of the log-likelihood ratio "nobody
  active" against "routine": a silence is alarming by how unlikely it is for the hours it
  spans in that household's routine, not by its length alone. Two such CUSUMs run side by
  side and share the silence budget: one on activity alone (catches a constant load left on,
  "frozen-on"), one on each hour's level instead ("lights off": how likely that use is
  for a dark house — the household's own quietest stretch of each day, so a fridge or a
  water heater cycling still reads as dark — against how likely it is in that hour of the
  household's days; kernel densities over the trailing window);
* a third CUSUM, "nothing changes", sees the constant load that the activity flags can miss
  in a household whose standby swings: how rarely that hour of the household's days is as
  flat (coefficient of variation of the last ``flat_window_hours``) as now, with a fixed
  negative drift under the routine and a fixed alarm level (``flat_threshold``);
* alarm levels: under the routine each excursion passes level h with probability ≤ e^-h, so
  h = log(excursions a month / budget). Real households have heavier tails, so each
  household's own excursions are used too (peaks over threshold): the rate at which they
  pass a moderate reference level, and by how much (mean excess, shrunk to the model's 1
  nat), extrapolate to the level passed ``false_alarms_per_month`` / 2 times a month; the
  alarm level is the higher of the two.

Kinds: ``inactivity`` (lights-off and frozen-on; the evidence says which),
``sustained_drop`` (the Wandi case: a CUSUM of each active hour's evidence for "use halved"
from the hour's own density over its last ``drop_window_days``, see ``_level_llr``; beside
it, trailing-24 h use below half of normal and ``level_z`` robust σ below it, σ the
household's own day-to-day spread, for 12 h), ``missing_morning_routine``
(only for households whose first morning activity is regular: the deadline is the later of
the latest morning of the last weeks + 1 h and median + z × robust spread, z from its
budget; a loose morning is left to the inactivity alarm), ``night_activity``, ``high_use``,
``meter_offline`` (no data: told apart from inactivity, it needs a call to the utility rather
than to the door).

Severity and routing (column ``severity``): only ``medium``, ``high`` and ``critical``
episodes are meant to reach a grid worker (网格员); ``low`` is recorded for the daily
summary and the family archive, not alerted.

One alert budget per household: a missed morning alerts only while such episodes are rare
*for that household*. When its own trailing ``recurrence_days`` already hold
``recurrence_max`` of them (any severity, detected earlier: causal), the new one is recorded
as ``low``. ``fit_profiles`` stores each household's latest such detections so the
incremental run applies the same gate.

One incident, one alert: an episode raised while an alerted episode of the same meter is
still open (a silence that then also reads as a drop) is recorded as ``low`` with a note of
the alert it follows, unless it is the incident's first ``critical`` one (see
``_merge_incidents``).

====================  ==========================================================
kind                  severity
====================  ==========================================================
inactivity            critical (lights off), high (constant load, frozen-on)
missing_morning       high; low when recurrent for the household
sustained_drop        high when use < 35 % of normal, else medium
meter_offline         medium (call the utility first)
high_use              low; medium only beyond 4 × normal
night_activity        low (a daytime phone call, not a visit)
====================  ==========================================================

Everything runs on an hourly matrix (meters × hours, NaN gaps). ``detect`` pivots long
readings into it; ``detect_matrix`` takes a dense matrix at any interval (the city-scale
daily run); ``fit_profiles`` (once a day, over the trailing weeks) + ``detect_matrix(...,
profiles=...)`` over the last day or two is the hourly incremental run.
"""

from __future__ import annotations

import os
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

import templates as _templates_pkg

__all__ = [
    "ALERT_SEVERITIES",
    "SEVERITIES",
    "DetectorConfig",
    "RoutineProfiles",
    "EPISODE_COLUMNS",
    "KINDS",
    "detect",
    "detect_matrix",
    "fit_profiles",
    "hourly_matrix",
]

EPISODE_COLUMNS = [
    "meter_id", "kind", "start", "detected_at", "end", "severity", "score",
    "expected_kwh_per_h", "observed_kwh_per_h", "evidence",
]
KINDS = ("inactivity", "sustained_drop", "missing_morning_routine", "night_activity",
         "high_use", "meter_offline")
_HOUR = np.timedelta64(1, "h")
# severities in rising order; those from "medium" on go to a grid worker, "low" is recorded
# only (see the module docstring)
SEVERITIES = ("low", "medium", "high", "critical")
ALERT_SEVERITIES = SEVERITIES[1:]


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of the routine model. Defaults are domain choices, not fits to any series."""

    # Trailing window of the routine profile (adapts to season) and warm-up before any flag.
    window_days: int = 28
    min_history_days: int = 7
    # Expected false alarms per household-month the silence / night alarms may each spend.
    # 0.15 since the flatness alarm (flat_threshold) took over the constant load left on,
    # which the activity alarm alone had needed 0.25 for (real data, 300 injected episodes
    # per kind: frozen-on 0.74 → 0.85, lights-off 0.92 → 0.93 at a median 10 h instead of 9 h,
    # alerting false alarms 1.02 → 0.95 per household-month).
    false_alarms_per_month: float = 0.15
    night_false_alarms_per_month: float = 0.1
    # Activity: an hour counts as active when it rises above the floor of the previous
    # floor_hours, or changes level, by more than noise_factor × the household's standby
    # noise (median hour-to-hour change in its quiet_slots quietest hours, re-estimated
    # weekly) and never less than min_activity_kwh. A constant load stops counting as
    # activity floor_hours after it switched on.
    floor_hours: int = 2
    noise_factor: float = 3.0
    quiet_slots: int = 6
    min_activity_kwh: float = 0.005
    # Self-calibration: the routine model is first-order and days are correlated, so its tail
    # is too thin. Each household's own rate of silences (night runs) passing a moderate
    # reference level, against the model's prediction for that level, scales the threshold
    # (never below the model's own); the factor is learnt from the trailing window only.
    calibration_p_ref: float = 0.05
    # Second silence alarm, "lights off": the same CUSUM on each hour's *level* instead of its
    # activity: how likely that hour's use is for a dark house (the household's own quietest
    # dark_hours stretch of each of the trailing days) against how likely it is in that hour
    # of the day (the same hour over the trailing days). Both are box-kernel densities on log
    # use (bins of level_bandwidth, counted over a bin and its neighbours), so a dark house
    # whose water heater or fridge cycles
    # still reads as dark, and an hour at a level the household shows in that hour anyway
    # (out at work) is weak evidence. Each hour's evidence is capped at ±level_llr_cap nats.
    # The household's quiet_slots quietest hours carry no level evidence (asleep looks dark).
    # (Real data, 300 injected episodes per kind: lights-off 0.837 → 0.900 within 24 h,
    # median delay 10 → 9 h, inactivity false alarms 0.82 → 0.84 per household-month; on
    # generated elderly households 0.20 → 0.11; against the earlier binary "at standby"
    # evidence added to the activity's.)
    level_bandwidth: float = 0.1
    level_llr_cap: float = 3.0
    # The densities count a reading within ±level_kernel_bins bins, over that hour of the
    # trailing days and the hours either side (a routine
    # moves by an hour from day to day); the ±1 bin, same-hour density before them read a
    # late dinner as a dark evening. (Real data: inactivity false alarms 0.84 → 0.70 per
    # household-month at recall +0.01.)
    level_kernel_bins: int = 2
    # One incident, one alert (_merge_incidents): an episode raised while an alerted one of the
    # same meter is open, or within incident_gap_hours of its end, is recorded, not sent; -1
    # sends every episode. (Real data: alerting false alarms 1.37 → 1.15 per household-month,
    # recall of any alerting row −0.01; 24 h would reach 1.04 at −0.02.)
    incident_gap_hours: int = 0
    # Peaks over threshold: excursions passing the reference level exceed it by an amount
    # that is exponential with mean 1 nat under the model; the household's own mean excess
    # (shrunk to 1 with pot_prior excursions' weight, each excess capped at pot_cap nats)
    # stretches the extrapolation from the reference level to the alarm level.
    pot_prior: float = 3.0
    pot_cap: float = 8.0
    night_calibration_p_ref: float = 0.1
    # Beta-prior strengths: weekday/weekend slot shrinks to the all-days slot, which shrinks
    # to the marginal rate.
    type_prior: float = 4.0
    slot_prior: float = 2.0
    # Sustained drop (Wandi: use about half of normal for days): a CUSUM of each active hour's
    # evidence for "use scaled by drop_design" against the routine (see _level_llr), each
    # hour capped at ±drop_llr_cap nats, alarming at drop_threshold nats; the whole-day ratio
    # test stays beside it (_ratio_episodes). Against that test alone (300 injected 50–70 %
    # drops, any alerting row): real data 0.90 → 0.97 within 48 h, median delay 26 → 13 h,
    # alerting false alarms of this kind 0.28 → 0.14 per household-month; generated elderly
    # households 0.918 → 0.938 (both against the whole 28-day window, at 10 nats).
    drop_design: float = 0.5
    drop_llr_cap: float = 2.0
    drop_threshold: float = 10.0
    # The drop is judged against the last drop_window_days of that hour only, not the whole
    # window: a level follows the season (heating in a cold spell) faster than a routine's
    # shape, and a month-old warm week made a halved cold-week hour look ordinary. (Against
    # 28 days, 300 injected drops per kind on real data, two injection seeds: 0.970 / 0.957 →
    # 0.980 / 0.950 within 48 h, alerting false alarms of this kind 0.14 → 0.15 per
    # household-month; generated elderly households 0.938 / 0.943 → 0.960 / 0.963, their
    # false alarms of this kind 0.08 → 0.22: a warm spell halves a heater's use too.)
    drop_window_days: int = 14
    # Sustained high use: trailing-24 h use over the routine's expectation above high_ratio,
    # and its log level_z robust standard deviations (MAD × 1.4826 of the household's own
    # day-end log-ratios in the trailing window, never below level_min_sigma) above 0.
    high_ratio: float = 2.0
    level_z: float = 2.5
    level_min_sigma: float = 0.1
    level_window_hours: int = 24
    level_baseline_days: int = 7
    level_sustain_hours: int = 12
    # Night activity counts only in slots where the household is normally quiet.
    night_quiet_p: float = 0.25
    # Morning routine: deadline = the latest first activity (after the household's quietest
    # hour) in the window plus a margin; needs that share of days with a morning.
    morning_margin_hours: int = 1
    morning_regular_share: float = 0.9
    # ... and, so that only households with a regular morning get this alarm, the deadline is
    # also pushed to median + z·spread of the window's first activities (robust spread, never
    # below morning_min_spread_hours), z set by the household-month budget of this alarm: a
    # loose morning gets a deadline past the search and is left to the inactivity alarm.
    morning_false_alarms_per_month: float = 0.1
    morning_min_spread_hours: float = 0.5
    morning_search_hours: int = 12
    # Recurrence gate (one alert budget per household): a missed morning is sent to a grid
    # worker only while such episodes are rare *for this household*. When
    # its own trailing ``recurrence_days`` already hold ``recurrence_max`` or more episodes of
    # the same kind (any severity), they are this household's normal and the new one is
    # recorded as ``low`` (daily summary, family archive), so its share of the alert budget
    # is left to the inactivity alarm. Past detections only: causal.
    recurrence_days: int = 28
    recurrence_max: int = 1
    # (Drops left the gate with the drop CUSUM: gating them cost real-data drop recall
    # 0.98 → 0.92 for 0.1 fewer false alarms per household-month.)
    recurrence_kinds: tuple = ("missing_morning_routine",)
    # "Nobody active" still shows the activity rate of a dark house: the share of active
    # hours in each day's quietest dark_hours stretch (only automatic loads running), learnt
    # over the trailing window and shrunk to dark_noise_prior with dark_noise_prior_days'
    # weight. (The quietest slots' rate would count night toilet trips and wake-ups: a dark
    # house has none, and a model that expects them reads hours of true silence as weak
    # evidence. It moved real-data frozen-on recall 0.758 → 0.817.)
    dark_hours: int = 3
    # Third silence alarm, "nothing changes" (frozen-on, 用电平稳无起伏): each hour's
    # coefficient of variation over the last flat_window_hours, judged by how rarely that hour
    # of the household's trailing days is as flat: the evidence is −log F − 1 − flat_drift,
    # F the share of those hours at least as flat, so under the routine it drifts down by
    # flat_drift nats an hour (−log F of a routine hour is exponential with mean 1); a CUSUM
    # of it alarms at flat_threshold nats. A load left on adds a constant, which leaves the
    # hour-to-hour changes those of a dark house but divides them by a higher mean. (Alone,
    # real data: frozen-on 0.87 within 24 h at 0.43 false alarms per household-month;
    # generated: 0.99 at 0.05.)
    flat_window_hours: int = 4
    flat_drift: float = 1.0
    flat_threshold: float = 17.0
    # Share of the silence budget given to the lights-off alarm; the rest goes to the
    # activity-only alarm, which alone sees a constant load left on (frozen-on)
    lights_off_share: float = 0.25
    dark_noise_prior: float = 0.05
    dark_noise_prior_days: float = 3.0
    # No data for this long is a meter_offline episode (gaps shorter than this are skipped).
    offline_hours: int = 6
    # meters per block: small enough that temporaries stay in cache and are reused (no
    # page-fault storm); 1024 against 4096 cut the city's daily run by a sixth
    chunk_meters: int = 1024
    # ... and at most this many meter-hours (a block's temporaries take about 1.4 kB each):
    # a file of years of readings is judged a few meters at a time instead of needing 10 GB
    block_meter_hours: int = 1024 * 24 * 30
    # threads judging blocks of meters at once (0: one per CPU); numpy releases the GIL in
    # the array work, and each block's episodes depend on its own meters only
    workers: int = 0


@dataclass
class RoutineProfiles:
    """Per-meter routine for one day, learnt from the trailing window (stored once a day).

    Arrays are indexed [meter, daytype (0 weekday, 1 weekend), hour-of-day] or [meter].
    """

    meter_ids: np.ndarray
    p_active: np.ndarray        # (M, 2, 24) P(active in slot)
    p_continue: np.ndarray      # (M, 2, 24) P(inactive in slot | inactive in previous hour)
    mean_kwh: np.ndarray        # (M, 2, 24) mean kWh/h in slot
    delta: np.ndarray           # (M,) activity threshold kWh/h
    log_pstar: np.ndarray       # (M,) log P* of a single silence under the model alone (info)
    log_pstar_night: np.ndarray  # (M,)
    standby: np.ndarray         # (M,) standby level kWh/h
    wake_hour: np.ndarray       # (M,) int, hour the morning search starts
    morning_deadline: np.ndarray  # (M,) hours after wake_hour, NaN if no regular morning
    history_days: np.ndarray    # (M,) days of valid history behind the profile
    silence_threshold: np.ndarray | None = None  # (M,) CUSUM alarm level (nats), self-calibrated
    night_threshold: np.ndarray | None = None    # (M,) night-run alarm level (log-prob)
    level_kwh: np.ndarray | None = None          # (M, 2, 24) recent kWh/h (level detectors)
    low_threshold: np.ndarray | None = None      # (M,) lights-off CUSUM alarm level (nats)
    # level evidence (see _level_samples): a dark house's histogram of log-use bins, each hour's
    # bins over the trailing window, and its mean log use
    dark_hist: np.ndarray | None = None          # (M, bins + 2) counts
    slot_sample: np.ndarray | None = None        # (M, 24, window_days) bins, -1 = none
    flat_sample: np.ndarray | None = None        # (M, 24, window_days) flatness bins, -1 = none
    slot_stats: np.ndarray | None = None         # (M, 24, 2) mean log use, readings
    dark_noise: np.ndarray | None = None         # (M,) P(active hour | dark house)
    level_sigma: np.ndarray | None = None        # (M,) day-to-day spread of log(use ratio)
    # (M, len(recurrence_kinds), _RECENT) detection times (datetime64[ns], NaT = none) of the
    # household's latest episodes of each recurrence kind, for the recurrence gate
    recent_detections: np.ndarray | None = None


# --------------------------------------------------------------------------- input handling

def _infer_interval_minutes(ts: np.ndarray) -> int:
    if len(ts) < 2:
        return 60
    d = np.diff(np.sort(ts)).astype("timedelta64[s]").astype(np.int64) / 60.0
    d = d[d > 0]
    if len(d) == 0:
        return 60
    med = float(np.median(d))
    # the nearest divisor of an hour: a minute meter with half an hour's readings missing is
    # scaled up by its own interval (not by five minutes'), clock jitter does not matter
    return min((1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60), key=lambda c: abs(np.log(c / med)))


def hourly_matrix(readings: pd.DataFrame, as_of: datetime | None = None):
    """Long readings → (meter_ids, X[meter, hour] kWh/h float32 with NaN gaps, t0, n_hours).

    Column j is the hour [t0 + j h, t0 + (j+1) h); t0 is a local midnight. Each meter's
    interval is inferred on its own; a partly covered hour is scaled up from the readings
    present (a gap is never a zero). Only hours ending at or before ``as_of`` are kept.
    """
    df = readings.loc[:, ["meter_id", "ts", "kwh"]].copy()
    df["ts"] = pd.to_datetime(df["ts"])
    if getattr(df["ts"].dt, "tz", None) is not None:
        df["ts"] = df["ts"].dt.tz_localize(None)
    df["kwh"] = pd.to_numeric(df["kwh"], errors="coerce")
    df = df[np.isfinite(df["kwh"].to_numpy(dtype=float)) & (df["kwh"] >= 0) & df["ts"].notna()]
    if as_of is not None:
        df = df[df["ts"] <= pd.Timestamp(as_of)]
    df["meter_id"] = df["meter_id"].astype(str)
    if df.empty:
        return np.array([], dtype=object), np.zeros((0, 0), np.float32), None, 0
    df = df.drop_duplicates(["meter_id", "ts"], keep="last")
    meters = np.array(sorted(df["meter_id"].unique()), dtype=object)
    per_hour = {}
    for m, g in df.groupby("meter_id", sort=False):
        per_hour[m] = 60 // _infer_interval_minutes(g["ts"].to_numpy())
    df["hour_end"] = df["ts"].dt.ceil("h")
    g = df.groupby(["meter_id", "hour_end"], sort=False)["kwh"].agg(["sum", "count"]).reset_index()
    ph = g["meter_id"].map(per_hour).to_numpy(dtype=float)
    g["val"] = g["sum"].to_numpy() * ph / np.minimum(g["count"].to_numpy(), ph)
    t0 = (g["hour_end"].min() - pd.Timedelta(hours=1)).normalize()
    if as_of is not None:
        last_end = pd.Timestamp(as_of).floor("h")
    else:
        last_end = g["hour_end"].max()
    n_hours = max(int((last_end - t0) / pd.Timedelta(hours=1)), 0)
    n_cols = max(((n_hours + 23) // 24) * 24, 24)
    X = np.full((len(meters), n_cols), np.nan, dtype=np.float32)
    row = pd.Index(meters).get_indexer(g["meter_id"])
    col = ((g["hour_end"] - t0) / pd.Timedelta(hours=1)).to_numpy().astype(np.int64) - 1
    ok = (col >= 0) & (col < n_hours)
    X[row[ok], col[ok]] = g["val"].to_numpy()[ok]
    return meters, X, t0, n_hours


def _absence_mask(meters, t0, n_cols, absences: pd.DataFrame | None):
    if absences is None or len(absences) == 0:
        return None
    mask = np.zeros((len(meters), n_cols), dtype=bool)
    idx = pd.Index(meters)
    t0 = pd.Timestamp(t0)
    for rec in absences.itertuples(index=False):
        i = idx.get_indexer([str(rec.meter_id)])[0]
        if i < 0:
            continue
        s = pd.Timestamp(rec.start)
        e = pd.Timestamp(rec.end) if pd.notna(rec.end) else t0 + pd.Timedelta(hours=n_cols)
        a = int(np.floor((s - t0) / pd.Timedelta(hours=1)))
        b = int(np.ceil((e - t0) / pd.Timedelta(hours=1)))
        mask[i, max(a, 0):max(min(b, n_cols), 0)] = True
    return mask


# --------------------------------------------------------------------------- activity

def _nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=1)`` for short rows, by one sort (NaNs sort last): numpy's own
    takes a slow masked path for every row with a NaN, and this runs once a day per chunk."""
    a = np.sort(a, axis=1)
    n = np.sum(~np.isnan(a), axis=1)
    lo = np.take_along_axis(a, np.maximum((n - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(a, np.maximum(n // 2, 0)[:, None], axis=1)[:, 0]
    return np.where(n > 0, (lo + hi) / 2, np.nan).astype(a.dtype)


def _day_number(t0) -> int:
    """Calendar day number of ``t0``'s local date (days since 1970-01-01)."""
    return int((pd.Timestamp(t0).tz_localize(None).normalize() - pd.Timestamp(0)).days)


def _noise_delta(X: np.ndarray, cfg: DetectorConfig, day0: int = 0) -> np.ndarray:
    """Per-meter-day activity threshold from the trailing window's quietest slots (M, D).

    ``day0`` is the calendar day number (days since 1970-01-01) of the matrix's first day.
    Each meter's threshold is re-estimated on calendar Mondays, and every day while the meter
    has under a week of readings, from the ``window_days`` before: so a meter's threshold
    depends on its own readings and the date only, not on which other meters share the matrix
    or on the day the matrix starts (a daily run over a sliding window sees the same ones).
    """
    M, T = X.shape
    D = T // 24
    Xd = X.reshape(M, D, 24)
    dX = np.full_like(X, np.nan)
    dX[:, 1:] = np.abs(X[:, 1:] - X[:, :-1])
    dXd = dX.reshape(M, D, 24)
    # trailing per-slot level by cumulative sums over days (a NaN-free nanmean: numpy's own
    # warns on empty slices, and silencing warnings is not thread-safe)
    ok = ~np.isnan(Xd)
    S = np.zeros((M, D + 1, 24), np.float64)
    N = np.zeros((M, D + 1, 24), np.int32)
    np.cumsum(np.where(ok, Xd, 0.0), axis=1, out=S[:, 1:])
    np.cumsum(ok, axis=1, out=N[:, 1:])
    seen = np.zeros((M, D + 1), np.int32)                 # days with a reading, cumulative
    np.cumsum(ok.any(axis=2), axis=1, out=seen[:, 1:])
    out = np.full((M, D), np.nan, dtype=np.float32)
    W = cfg.window_days
    # 1970-01-01 was a Thursday: (day + 3) % 7 == 0 on Mondays
    monday = (day0 + np.arange(D) + 3) % 7 == 0
    for d in range(1, D):
        a = max(0, d - W)
        todo = monday[d] | np.isnan(out[:, d - 1]) | (seen[:, d] - seen[:, a] < 7)
        out[~todo, d] = out[~todo, d - 1]
        if not todo.any():
            continue
        rows = np.flatnonzero(todo)
        n = N[rows, d] - N[rows, a]
        lvl = np.where(n > 0, (S[rows, d] - S[rows, a]) / np.maximum(n, 1), np.inf)     # (m, 24)
        order = np.argsort(lvl, axis=1, kind="stable")[:, : cfg.quiet_slots]
        q = np.take_along_axis(dXd[rows, a:d, :], order[:, None, :], axis=2).reshape(len(rows), -1)
        out[rows, d] = _nanmedian_rows(q)
    # the copy-forward above copied the raw medians; scale once here
    out = np.maximum(np.nan_to_num(out, nan=0.0) * cfg.noise_factor, cfg.min_activity_kwh)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- profiles

def _trailing(Q: np.ndarray, W: int, weekend: np.ndarray) -> np.ndarray:
    """Q (M, D, 24) → sums over the previous W days of the same daytype, and of all days.

    Returns (same_type, all_days), each (M, D, 24); day d never sees day d or later.
    Running sums over days keep it O(M·D·24) without big temporaries.
    """
    M, D, H = Q.shape
    Qt = np.ascontiguousarray(Q.transpose(1, 0, 2))         # day-major: contiguous slices
    same = np.empty((D, M, H), np.float32)
    all_days = np.empty((D, M, H), np.float32)
    run_all = np.zeros((M, H), np.float64)
    run_we = np.zeros((M, H), np.float64)
    for d in range(D):
        if d >= 1:
            run_all += Qt[d - 1]
            if weekend[d - 1]:
                run_we += Qt[d - 1]
            if d - 1 - W >= 0:
                run_all -= Qt[d - 1 - W]
                if weekend[d - 1 - W]:
                    run_we -= Qt[d - 1 - W]
        all_days[d] = run_all
        if weekend[d]:
            same[d] = run_we
        else:
            np.subtract(run_all, run_we, out=same[d], casting="unsafe")
    return same.transpose(1, 0, 2), all_days.transpose(1, 0, 2)


def _quietest_stretch(X, valid, k: int):
    """Each day's quietest ``k`` consecutive hours (M, D, k) as hour-of-day indices, and
    whether the day had such a stretch with readings (M, D): where a dark house is learnt."""
    M, T = X.shape
    Xd = np.where(valid, X, np.inf).reshape(M, T // 24, 24)
    sums = sum(Xd[:, :, j:24 - k + 1 + j] for j in range(k))          # (M, D, 24-k+1)
    j0 = np.argmin(sums, axis=2)
    return j0[:, :, None] + np.arange(k), np.isfinite(np.min(sums, axis=2))


def _dark_noise(X, A, valid, cfg) -> np.ndarray:
    """How often a dark house still looks active (M, D): the share of active hours in each
    day's quietest ``dark_hours`` stretch (everyone asleep, only automatic loads running),
    averaged over the trailing ``window_days`` before day d and shrunk to ``dark_noise_prior``."""
    M, T = X.shape
    D = T // 24
    k = cfg.dark_hours
    Ad = (A & valid).reshape(M, D, 24).astype(np.float32)
    hours, seen = _quietest_stretch(X, valid, k)
    rate = np.take_along_axis(Ad, hours, axis=2).mean(axis=2)
    num = np.zeros((M, D + 1)); np.cumsum(np.where(seen, rate, 0.0), axis=1, out=num[:, 1:])
    den = np.zeros((M, D + 1)); np.cumsum(seen, axis=1, out=den[:, 1:])
    W = cfg.window_days
    lo = np.maximum(np.arange(D) - W, 0)
    n = num[:, np.arange(D)] - num[:, lo]
    c = den[:, np.arange(D)] - den[:, lo]
    return ((n + cfg.dark_noise_prior_days * cfg.dark_noise_prior) / (c + cfg.dark_noise_prior_days)).astype(np.float32)


_LOG_EPS = np.float32(1e-3)
_LOG_MIN = np.float32(np.log(1e-3))
_LEVEL_BINS = 112          # of level_bandwidth each, from 0 up: 0.1 × 112 covers up to ~70 kWh/h


def _level_samples(X, valid, cfg):
    """Each hour's use as a bin of log use (M, D, 24) (width ``level_bandwidth``, -1 = no
    reading) and, for every day d and the day after the last (index D), what its level
    evidence is judged against, from the ``window_days`` before it only:

    * ``dark`` (M, D+1, bins + 2): how many values of each day's quietest ``dark_hours``
      stretch fell in each bin (one empty bin padded at both ends);
    * ``slot`` (M, D+1, 24, W): the bins of each hour of the day on those days (a view);
    * ``slot_stats`` (M, D+1, 24, 2): their mean log use (which hours are the quiet ones)
      and how many readings there are.
    """
    M, T = X.shape
    D = T // 24
    W, k, B = cfg.window_days, cfg.dark_hours, _LEVEL_BINS
    L = np.log(np.where(valid, X, np.nan).astype(np.float32) + _LOG_EPS).reshape(M, D, 24)
    with np.errstate(invalid="ignore"):
        bins = np.floor((L - _LOG_MIN) / np.float32(cfg.level_bandwidth))
    bins = np.where(np.isnan(bins), -1, np.clip(bins, 0, B - 1)).astype(np.int8)     # B < 128
    # each day's quietest stretch → per-day histograms → trailing-window sums
    hours, seen = _quietest_stretch(X, valid, k)
    db = np.take_along_axis(bins, hours, axis=2)
    ok = seen[:, :, None] & (db >= 0)
    # counts stay ≤ dark_hours × days: int16, and no dense temporaries (they page-fault)
    hist = np.zeros((M, D + 1, B + 2), np.int16)
    mi, di, ji = np.nonzero(ok)
    np.add.at(hist, (mi, di + 1, db[mi, di, ji].astype(np.int64) + 1), 1)
    np.cumsum(hist, axis=1, out=hist)                       # hist[:, d] = days before d
    dark = np.empty_like(hist)
    dark[:, :W] = hist[:, :W]
    if D + 1 > W:
        np.subtract(hist[:, W:], hist[:, : D + 1 - W], out=dark[:, W:])
    del hist
    slot = _day_windows(bins, W)
    cs = np.zeros((M, D + 1, 24), np.float32); np.cumsum(np.where(np.isnan(L), 0.0, L), axis=1, out=cs[:, 1:])
    cn = np.zeros((M, D + 1, 24), np.float32); np.cumsum(~np.isnan(L), axis=1, out=cn[:, 1:])
    lo = np.maximum(np.arange(D + 1) - W, 0)
    n_slot = cn - cn[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        slot_mean = (cs - cs[:, lo]) / n_slot
    # the mean log use (NaN: never seen) and how many of the window's days had a reading
    return bins, dark, slot, np.stack([slot_mean, n_slot], axis=-1)


def _level_llr(bins, dark, slot, slot_stats, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Evidence of each hour's level (M, D·24), for two alternatives to the routine:

    * lights off: log f_dark(x) − log f_hour(x);
    * sustained drop (用电骤降, the Wandi case): log f_hour(x / ρ) − log f_hour(x), ρ =
      ``drop_design``: under "use scaled by ρ" an hour's log use is the routine's shifted by
      log ρ, so both terms are the same density, looked up ``-log ρ / level_bandwidth`` bins
      apart, over the last ``drop_window_days`` only.

    Densities are box kernels of ±``level_kernel_bins`` bins on log use, over that hour of
    the trailing days and the hours either side (a
    routine shifts by an hour from day to day), a half-count prior on each; 0 where the hour
    has no reading and in the household's quiet hours (see below)."""
    M, D, _ = bins.shape
    K = cfg.level_kernel_bins
    b = bins.astype(np.int64) + 1                              # padded index of the bin
    dk = dark[:, :D]
    nd = dk.sum(axis=2)[:, :, None] + 1.0
    cd = sum(np.take_along_axis(dk, np.clip(b + j, 0, dk.shape[2] - 1), axis=2) for j in range(-K, K + 1))
    out = np.log((cd + 0.5) / nd)
    ns = slot_stats[:, :D, :, 1]
    shift = int(round(-np.log(cfg.drop_design) / cfg.level_bandwidth))
    drop = np.zeros((M, D, 24), np.float32)
    top = dk.shape[2] - 3                                      # the highest bin

    acc = np.uint8 if 3 * slot.shape[3] < 256 else np.uint16   # counts of up to 3 hours' samples

    def within(diff, width):
        """How many of the offsets ``diff`` (uint8: a value below the range wrapped to > 127)
        are ≤ width: these counts run 48 times over every meter-day."""
        return (diff <= width).view(np.uint8).sum(axis=2, dtype=acc)

    W = slot.shape[3]
    R = min(cfg.drop_window_days, W)
    for hr in range(24):
        x = bins[:, :, hr, None].astype(np.int16)
        # the three hours' older days first, their last R days (the drop's sample) after
        sample = np.concatenate([slot[:, :D, h % 24, :W - R] for h in (hr - 1, hr, hr + 1)]
                                + [slot[:, :D, h % 24, W - R:] for h in (hr - 1, hr, hr + 1)], axis=2)
        n = ns[:, :, hr] + ns[:, :, (hr - 1) % 24] + ns[:, :, (hr + 1) % 24]
        # the readings within ±K bins of x, and (recent days) of x and of x / ρ (the value
        # this hour would have had without a drop: `shift` bins up), from one subtraction
        lo = np.clip(x - K, 0, top)
        lo_up = np.clip(x + shift - K, 0, top)
        width = (np.clip(x + K, 0, top) - lo).astype(np.uint8)
        diff = (sample - lo.astype(np.int8)).view(np.uint8)
        cs = within(diff, width)
        recent = diff[:, :, diff.shape[2] - 3 * R:]
        cs_r = within(recent, width)
        recent -= (lo_up - lo).astype(np.uint8)     # values below lo wrap to ≥ 135, stay out
        cu = within(recent, (np.clip(x + shift + K, 0, top) - lo_up).astype(np.uint8))
        out[:, :, hr] -= np.log((cs + 0.5) / (n + 1.0))
        drop[:, :, hr] = np.log((cu + 0.5) / (cs_r + np.float32(0.5)))
    out = np.clip(out, -cfg.level_llr_cap, cfg.level_llr_cap).astype(np.float32)
    # in the household's quiet_slots quietest hours of the day a dark house and a sleeping one
    # look alike: no evidence either way (the dark sample, each day's minimum, would otherwise
    # read every low night hour as a little evidence of a dark house)
    mean = slot_stats[:, :D, :, 0]
    quiet = np.argsort(np.where(np.isnan(mean), np.inf, mean), axis=2)[:, :, : cfg.quiet_slots]
    np.put_along_axis(out, quiet, 0.0, axis=2)
    out[bins < 0] = 0.0
    # the drop is judged in the household's active hours only: a broken air conditioner
    # lowers the hours it runs in, not the fridge's standby
    drop = np.clip(drop, -cfg.drop_llr_cap, cfg.drop_llr_cap)
    np.put_along_axis(drop, quiet, 0.0, axis=2)
    drop[bins < 0] = 0.0
    return out.reshape(M, D * 24), drop.reshape(M, D * 24)


def _day_windows(bins: np.ndarray, W: int) -> np.ndarray:
    """Bins (M, D, 24) → for every day d and the day after the last, the bins of each hour of
    the day over the W days before it (M, D+1, 24, W), -1 where none: a view. Hour-major
    underneath, so that each window of days is contiguous in memory (the counts read it 24 to
    48 times)."""
    from numpy.lib.stride_tricks import sliding_window_view
    M = bins.shape[0]
    pad = np.concatenate([np.full((M, 24, W), -1, np.int8), bins.transpose(0, 2, 1)], axis=2)
    return sliding_window_view(pad, W, axis=2).transpose(0, 2, 1, 3)


def _flat_samples(X, valid, cfg):
    """Each hour's flatness — the coefficient of variation of the last ``flat_window_hours``
    hourly readings — as a bin of log CV (M, D, 24) (-1 = not known), every day's window of
    those bins over the trailing ``window_days`` (M, D+1, 24, W), as ``_level_samples``, and
    how many of each window's are known (M, D+1, 24)."""
    M, T = X.shape
    D, W, k = T // 24, cfg.window_days, cfg.flat_window_hours
    x = np.where(valid, X, np.float32(0.0)).astype(np.float32)
    n = valid.astype(np.float32)
    s1, s2, nn = x.copy(), x * x, n.copy()
    for j in range(1, k):                                   # sums over the window ending at t
        s1[:, j:] += x[:, :-j]
        s2[:, j:] += x[:, :-j] * x[:, :-j]
        nn[:, j:] += n[:, :-j]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / nn
        cv = np.sqrt(np.maximum(s2 / nn - mean * mean, 0.0)) / np.maximum(mean, np.float32(1e-3))
        b = np.floor((np.log(cv + np.float32(1e-3)) - _LOG_MIN) / np.float32(cfg.level_bandwidth))
    known = valid & (nn >= k - 1)
    bins = np.where(known & np.isfinite(b), np.clip(b, 0, _LEVEL_BINS - 1), -1).astype(np.int8).reshape(M, D, 24)
    cn = np.zeros((M, D + 1, 24), np.int16); np.cumsum(bins >= 0, axis=1, out=cn[:, 1:])
    lo = np.maximum(np.arange(D + 1) - W, 0)
    return bins, _day_windows(bins, W), cn - cn[:, lo]


def _flat_llr(bins, slot, known, cfg) -> np.ndarray:
    """Evidence of "nothing changes" (M, D·24): −log F − 1 − ``flat_drift``, F = (how many of
    the trailing days' readings of this hour are at least as flat + ½) / (how many there are
    + 1); 0 where the hour's flatness is not known."""
    M, D, _ = bins.shape
    out = np.zeros((M, D, 24), np.float32)
    acc = np.uint8 if slot.shape[3] < 256 else np.uint16
    kn = known[:, :D].astype(np.float32)
    for hr in range(24):
        x = bins[:, :, hr, None].astype(np.uint8)
        # a missing one (-1) reads 255 as uint8: never ≤ x
        c = (slot[:, :D, hr, :].view(np.uint8) <= x).view(np.uint8).sum(axis=2, dtype=acc)
        n = kn[:, :, hr]
        out[:, :, hr] = -np.log((c + np.float32(0.5)) / (n + np.float32(1.0))) - np.float32(1.0 + cfg.flat_drift)
    out[bins < 0] = 0.0
    return out.reshape(M, D * 24)


def _rolling_profiles(X, A, valid, weekend, cfg, delta_md=None):
    """Causal per-day profiles: every array (M, D, 24) or (M, D) uses days before d only."""
    M, T = X.shape
    D = T // 24
    W = cfg.window_days
    sh = (M, D, 24)
    v = valid.reshape(sh).astype(np.float32)
    act = (A & valid).reshape(sh).astype(np.float32)
    inact = (~A & valid)
    prev_inact = np.zeros_like(inact)
    prev_inact[:, 1:] = inact[:, :-1]
    prev_act = np.zeros_like(inact)
    prev_act[:, 1:] = (A & valid)[:, :-1]
    ii = (inact & prev_inact).reshape(sh).astype(np.float32)
    pi = (prev_inact & valid).reshape(sh).astype(np.float32)
    starts = (inact & prev_act).reshape(sh).astype(np.float32)
    xs = np.where(valid, X, 0).reshape(sh).astype(np.float32)

    n_t, n_a = _trailing(v, W, weekend)
    a_t, a_a = _trailing(act, W, weekend)
    ii_t, ii_a = _trailing(ii, W, weekend)
    pi_t, pi_a = _trailing(pi, W, weekend)
    x_t, x_a = _trailing(xs, W, weekend)
    # the use level follows the season faster than the routine's shape: the level detectors
    # compare with the last level_baseline_days only (all days, by hour of day)
    x_r, _ = _trailing(xs, cfg.level_baseline_days, np.zeros_like(weekend))
    n_r, _ = _trailing(v, cfg.level_baseline_days, np.zeros_like(weekend))
    st_t, st_a = _trailing(starts, W, weekend)
    del v, act, ii, pi, xs, starts

    p_all = (a_a + 1.0) / (n_a + 2.0)
    p = (a_t + cfg.type_prior * p_all) / (n_t + cfg.type_prior)
    # uninformative Beta(1, 1): a slot seldom seen silent gives little evidence either way
    c_all = (ii_a + 0.5 * cfg.slot_prior) / (pi_a + cfg.slot_prior)
    c = (ii_t + cfg.type_prior * c_all) / (pi_t + cfg.type_prior)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_all = np.where(n_a > 0, x_a / np.maximum(n_a, 1), np.nan)
        mean = np.where(n_t > 0, (x_t + cfg.type_prior * np.nan_to_num(m_all)) / (n_t + cfg.type_prior), m_all)
    hist_days = n_a.sum(axis=2) / 24.0                      # (M, D)
    starts_per_day = st_a.sum(axis=2) / np.maximum(hist_days, 1.0)
    # Expected number of silences a month × P(one survives past p*) = budget.
    log_pstar = np.log(cfg.false_alarms_per_month / (30.0 * np.maximum(starts_per_day, 1.0)))
    log_pstar_night = np.full((M, D), np.log(cfg.night_false_alarms_per_month / 30.0), np.float32)
    with np.errstate(invalid="ignore"):
        standby = np.nanmin(np.where(np.isnan(m_all), np.inf, m_all), axis=2)
    standby[np.isinf(standby)] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        level = np.where(n_r >= 1, x_r / np.maximum(n_r, 1), mean)
    dark = _dark_noise(X, A, valid, cfg)
    return dict(dark=dark, p=p.astype(np.float32), c=c.astype(np.float32), mean=mean.astype(np.float32),
                level=level.astype(np.float32),
                p_all=p_all.astype(np.float32), hist_days=hist_days, log_pstar=log_pstar.astype(np.float32),
                log_pstar_night=log_pstar_night, standby=standby.astype(np.float32))


def _morning_deadlines(A, valid, P, cfg):
    """Per meter-day: wake hour (quietest slot), deadline (hours after it) from past days."""
    M, T = A.shape
    D = T // 24
    wake = np.argmin(P["p_all"], axis=2)                    # (M, D) quietest slot, causal
    S = cfg.morning_search_hours
    first = np.full((M, D), np.nan, dtype=np.float32)       # first activity offset on day d
    idx = (np.arange(D)[None, :, None] * 24 + wake[:, :, None] + np.arange(S)[None, None, :])
    inb = idx < T
    idxc = np.minimum(idx, T - 1)
    rows = np.arange(M)[:, None, None]
    a = A[rows, idxc] & valid[rows, idxc] & inb
    vv = valid[rows, idxc] & inb
    has = a.any(axis=2)
    first[has] = np.argmax(a, axis=2)[has]
    seen = vv.sum(axis=2) >= S * 0.75
    first[~has & ~seen] = np.nan
    first[~has & seen] = np.inf                              # a day without a morning
    deadline = np.full((M, D), np.nan, dtype=np.float32)
    W = cfg.window_days
    from statistics import NormalDist
    z_morning = NormalDist().inv_cdf(1.0 - min(cfg.morning_false_alarms_per_month / 30.0, 0.5))
    for d in range(cfg.min_history_days, D):
        # a day's morning search can run into the next day, so the latest day whose search is
        # surely over before day d starts is d - 2 (keeps the deadline causal)
        f = first[:, max(0, d - W - 1):max(d - 1, 0)]
        n = np.sum(~np.isnan(f), axis=1)
        reg = np.sum(np.isfinite(f), axis=1)
        # latest first-activity among the window's mornings, plus a margin: a morning later
        # than every one of the last weeks' is a record, rare by construction (~1/window)
        q = np.max(np.where(np.isfinite(f), f, -np.inf), axis=1) + cfg.morning_margin_hours
        ff = np.where(np.isfinite(f), f, np.nan)
        med = _nanmedian_rows(ff)
        mad = 1.4826 * _nanmedian_rows(np.abs(ff - med[:, None]))
        spread = np.maximum(np.nan_to_num(mad, nan=np.inf), cfg.morning_min_spread_hours)
        q = np.maximum(q, np.ceil(med + z_morning * spread))
        ok = (n >= cfg.min_history_days) & (reg >= cfg.morning_regular_share * np.maximum(n, 1)) & np.isfinite(q)
        ok &= q < cfg.morning_search_hours
        deadline[ok, d] = q[ok]
    return wake, deadline, idx


# --------------------------------------------------------------------------- scanning

def _breaks(valid, gap_ok, cfg) -> np.ndarray:
    """Hours (M, T) that reset a running CUSUM: a long gap (offline) or an absence ends an
    episode's evidence; a short gap only pauses it."""
    idx = np.arange(valid.shape[1])
    last_valid = np.maximum.accumulate(np.where(valid, idx[None, :], -10**6), axis=1)
    return (~valid & (idx[None, :] - last_valid >= cfg.offline_hours)) | ~gap_ok


def _scan(X, A, valid, gap_ok, P, cfg, T_eff):
    """Walk hours in time order (vectorised over meters), emit episode dicts.

    Everything that does not depend on the running state is precomputed as (M, T) arrays so
    the per-hour loop does a handful of array operations. Returns dicts with hour indices.
    """
    M, T = X.shape
    eps = []
    D = T // 24
    p = P["p"].reshape(M, -1)
    c = P["c"].reshape(M, -1)
    warm = P["hist_days"] >= cfg.min_history_days          # (M, D)
    logp_act = np.log(np.clip(p, 1e-6, 1.0))
    W = cfg.window_days

    # --- silence (inactivity): CUSUM of "routine" against "nobody active" (Page's test).
    # Under "nobody active" an hour still looks active with the dark house's noise rate
    # (fridge, pumps: see dark_hours in DetectorConfig), never more than in the routine's
    # own slot; under the routine an inactive hour has
    # probability c (continuation, after an inactive hour) or 1 - p. One noisy hour costs a
    # little evidence instead of resetting the silence.
    srt = np.sort(P["p_all"], axis=2)[:, :, : cfg.quiet_slots].mean(axis=2)
    noise = np.clip(srt, 0.02, 0.5).astype(np.float32)      # (M, D)
    # ... but a dark house is quieter than a sleeping one (no night toilet trips): its
    # activity rate is that of the household's quietest stretch of each day (_dark_noise)
    dark = np.clip(P["dark"], 0.01, 0.5).astype(np.float32)
    av = A & valid
    prev_inact = np.zeros_like(av)
    prev_inact[:, 1:] = (~A & valid)[:, :-1]
    e1 = np.minimum(np.repeat(dark, 24, axis=1), p)
    q = np.where(prev_inact, c, 1.0 - p)
    with np.errstate(divide="ignore"):
        llr = np.where(av, np.log(np.maximum(e1, 1e-6)) - logp_act,
                       np.log1p(-e1) - np.log(np.maximum(q, 1e-6)))
    llr = np.where(valid, llr, 0.0).astype(np.float32)
    # lights-off alternative: each hour's level is evidence too (see level_bandwidth)
    # (on the level alone: an hour at standby is also an inactive hour, so adding the activity
    # evidence would count the same silence twice)
    llr2 = np.where(valid, P["level_llr"][:, :T], 0.0).astype(np.float32)
    brk = _breaks(valid, gap_ok, cfg)
    wv = valid & np.repeat(warm, 24, axis=1)
    del e1, q, prev_inact

    # --- night activity: active hours in slots where the household is normally quiet; the
    # run's probability uses the slot's rate but never below the household's quiet-slot
    # rate, so a rarely-seen slot's noisy estimate cannot make one hour look impossible
    quiet = (P["p"] <= cfg.night_quiet_p).reshape(M, -1)
    nact = av & quiet
    nl = np.where(nact, np.maximum(logp_act, np.log(np.repeat(noise, 24, axis=1))), 0.0).astype(np.float32)
    nactf = nact.astype(np.float32)
    del quiet

    lref = np.float32(-np.log(cfg.calibration_p_ref))
    nlref = np.float32(np.log(cfg.night_calibration_p_ref))
    cross = np.zeros((M, D + 1), np.float32)      # excursions passing the reference level, by day
    exc = np.zeros((M, D + 1), np.float32)        # excursions (S leaving 0), by day
    ncross = np.zeros((M, D + 1), np.float32)     # night runs passing theirs
    S = np.zeros(M, np.float32)
    S2 = np.zeros(M, np.float32)
    cross2 = np.zeros((M, D + 1), np.float32)
    # completed excursions that passed the reference level: count and summed excess, by day
    ncomp = np.zeros((2, M, D + 1), np.float32)
    exsum = np.zeros((2, M, D + 1), np.float32)
    smax = np.zeros((2, M), np.float32)
    crossed2 = np.zeros(M, bool)
    thr2 = np.zeros(M, np.float32)
    run_start = np.full(M, -1, np.int64)
    alarmed = np.zeros(M, bool)
    crossed = np.zeros(M, bool)
    NL = np.zeros(M, np.float32)
    n_start = np.full(M, -1, np.int64)
    n_alarmed = np.zeros(M, bool)
    n_crossed = np.zeros(M, bool)
    open_sil = {}
    open_night = {}
    thr = np.zeros(M, np.float32)
    nthr = np.zeros(M, np.float32)
    for t in range(T_eff):
        d = t // 24
        # An alerted silence is over at the first activity after its detection, and known to be
        # then (causal: a replay cut at any later hour sees the same end).
        for i in [i for i in open_sil if av[i, t]]:
            open_sil.pop(i)["end"] = t
        if t % 24 == 0:
            lo = max(0, d - W)
            hist = np.maximum(P["hist_days"][:, d], 1.0)
            e_pd = np.maximum(exc[:, lo:d].sum(axis=1) / hist, 1.0 / 7)
            # each excursion passes h with probability <= e^-h under the routine, so
            # h = log(excursions a month / budget). The two silence alarms share the budget;
            # each uses that level or, if higher, the household's own rate of passing the
            # reference level extrapolated with its own mean excess (peaks over threshold)
            ths = []
            for j, cr in enumerate((cross, cross2)):
                b = cfg.false_alarms_per_month * (cfg.lights_off_share if j else 1.0 - cfg.lights_off_share)
                h0 = np.log(30.0 * e_pd / b)
                n_c = cr[:, lo:d].sum(axis=1)
                beta = (exsum[j, :, lo:d].sum(axis=1) + cfg.pot_prior) / (ncomp[j, :, lo:d].sum(axis=1) + cfg.pot_prior)
                rate = 30.0 * (n_c + cfg.calibration_p_ref * e_pd) / hist
                ths.append(np.maximum(h0, lref + np.maximum(beta, 1.0) * np.log(np.maximum(rate / b, 1.0))))
            thr, thr2 = (x.astype(np.float32) for x in ths)
            nk = (ncross[:, lo:d].sum(axis=1) + 1.0) / (cfg.night_calibration_p_ref * hist + 1.0)
            nthr = (P["log_pstar_night"][:, d] - np.log(np.maximum(nk, 1.0))).astype(np.float32)
            if "fixed_thr" in P:          # incremental run: thresholds stored with the profile
                thr, nthr, thr2 = P["fixed_thr"]
            P["last_thr"] = (thr, nthr, thr2)
        S = np.maximum(S + llr[:, t], 0.0)
        S[brk[:, t]] = 0.0
        S2 = np.maximum(S2 + llr2[:, t], 0.0)
        S2[brk[:, t]] = 0.0
        pos = (S > 0) | (S2 > 0)
        np.maximum(smax[0], S, out=smax[0])
        np.maximum(smax[1], S2, out=smax[1])
        ended = ~pos & (run_start >= 0)
        if ended.any():
            for j, cd in enumerate((crossed, crossed2)):
                done = ended & cd
                ncomp[j, :, d] += done
                exsum[j, :, d] += np.where(done, np.minimum(smax[j] - lref, cfg.pot_cap), 0.0)
            smax[:, ended] = 0.0
            for i in np.nonzero(ended & alarmed)[0]:
                e = open_sil.pop(i, None)
                if e is not None:  # no activity came back before its evidence was used up
                    e["end"] = t
            run_start[ended] = -1
            alarmed &= ~ended
            crossed &= ~ended
            crossed2 &= ~ended
        new = pos & (run_start < 0)
        run_start[new] = t
        exc[:, d] += new
        xr = pos & ~crossed & (S > lref)
        cross[:, d] += xr
        crossed |= xr
        xr2 = pos & ~crossed2 & (S2 > lref)
        cross2[:, d] += xr2
        crossed2 |= xr2
        fire = pos & ~alarmed & wv[:, t] & ((S > thr) | (S2 > thr2))
        if fire.any():
            for i in np.nonzero(fire)[0]:
                e = dict(kind="inactivity", i=i, start=int(run_start[i]), det=t, end=None,
                         score=float(max(S[i], S2[i]) / np.log(10)))
                eps.append(e)
                open_sil[i] = e
            alarmed |= fire

        na = nact[:, t]
        NL = (NL + nl[:, t]) * nactf[:, t]
        nend = ~na & (n_start >= 0)
        if nend.any():
            for i in np.nonzero(nend & n_alarmed)[0]:
                open_night.pop(i)["end"] = t
            n_start[nend] = -1
            n_alarmed &= ~nend
            n_crossed &= ~nend
        n_start[na & (n_start < 0)] = t
        nx = na & ~n_crossed & (NL < nlref)
        ncross[:, d] += nx
        n_crossed |= nx
        nfire = na & ~n_alarmed & wv[:, t] & (NL < nthr)
        if nfire.any():
            for i in np.nonzero(nfire)[0]:
                e = dict(kind="night_activity", i=i, start=int(n_start[i]), det=t, end=None,
                         score=float(-NL[i] / np.log(10)))
                eps.append(e)
                open_night[i] = e
            n_alarmed |= nfire
    return eps


def _offline_episodes(valid, gap_ok, T_eff, cfg):
    eps = []
    V = valid[:, :T_eff]
    seen = np.maximum.accumulate(V, axis=1)
    miss = ~V & seen & gap_ok[:, :T_eff]
    for i in np.nonzero(miss.any(axis=1))[0]:
        m = np.concatenate([[False], miss[i], [False]]).astype(np.int8)
        dm = np.diff(m)
        s = np.nonzero(dm == 1)[0]
        e = np.nonzero(dm == -1)[0]
        for a, b in zip(s, e):
            if b - a >= cfg.offline_hours:
                eps.append(dict(kind="meter_offline", i=i, start=int(a), det=int(a + cfg.offline_hours - 1),
                                end=(int(b) if b < T_eff else None), score=float(cfg.offline_hours)))
    return eps


def _level_ratio(X, valid, gap_ok, P, cfg):
    """Trailing-24 h observed / expected use (M, T), NaN where not judged, and the sums."""
    M, T = X.shape
    Wh = cfg.level_window_hours
    mean = P["level"].reshape(M, -1)
    ok = valid & gap_ok & ~np.isnan(mean)
    def window_sums(v):
        c = np.zeros((M, T + 1), np.float64)
        np.cumsum(v, axis=1, out=c[:, 1:])
        out = c[:, 1:].copy()
        out[:, Wh:] -= c[:, 1:T + 1 - Wh]
        return out
    Obs = window_sums(np.where(ok, X, 0))
    E = window_sums(np.where(ok, mean, 0))
    N = window_sums(ok)
    warm = np.repeat(P["hist_days"] >= cfg.min_history_days, 24, axis=1)
    good = (N >= 0.75 * Wh) & (E > 0) & warm
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(good, Obs / np.where(E > 0, E, 1), np.nan)
    return r, Obs, E, N


def _level_sigma(r, cfg):
    """The household's own day-to-day spread of log(ratio) (M, D): robust (MAD) over the day
    ends of the trailing ``window_days`` before day d; inf while fewer than
    ``min_history_days`` are known (then only the ratio bounds apply)."""
    M, T = r.shape
    D = T // 24
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log(np.maximum(r[:, 23::24], 1e-3))                  # (M, D) day-end log-ratios
    sig = np.full((M, D), np.nan, np.float32)
    for d in range(1, D):
        w = L[:, max(0, d - cfg.window_days):d]
        med = _nanmedian_rows(w)
        sig[:, d] = 1.4826 * _nanmedian_rows(np.abs(w - med[:, None]))
    # too few past day ends to know the spread: inf (a drop below drop_design still counts)
    nobs = np.cumsum(np.isfinite(L), axis=1) - np.isfinite(L)
    return np.where((nobs >= cfg.min_history_days) & np.isfinite(sig), np.maximum(sig, cfg.level_min_sigma),
                    np.inf).astype(np.float32)


def _ratio_episodes(X, valid, gap_ok, P, T_eff, cfg):
    """Sustained drop and high use judged over whole days: trailing-24 h use against the
    routine's expectation held for ``level_sustain_hours``, the ratio's log judged against the
    household's own day-to-day spread (a drop below ``drop_design`` always counts). This
    catches the drops that the hourly CUSUM (_cusum_episodes) reads weakly: a household whose
    hours are either standby or busy, where half of a busy hour still looks like a busy hour."""
    M, T = X.shape
    Wh = cfg.level_window_hours
    r, Obs, E, N = _level_ratio(X, valid, gap_ok, P, cfg)
    sig = P["level_sig"] if "level_sig" in P else _level_sigma(r, cfg)
    zs = np.repeat(sig * cfg.level_z, 24, axis=1)[:, :T]
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.maximum(r, 1e-3))
    eps = []
    S = cfg.level_sustain_hours
    zd = np.minimum(zs, -np.log(cfg.drop_design))
    for kind, cond in (("sustained_drop", (r < cfg.drop_design) & (lr < -zd)),
                       ("high_use", (r > cfg.high_ratio) & (lr > zs))):
        cond = cond[:, :T_eff]
        for i in np.nonzero(cond.sum(axis=1) >= S)[0]:
            m = np.concatenate([[0], cond[i].astype(np.int8), [0]])
            dm = np.diff(m)
            for a, b in zip(np.nonzero(dm == 1)[0], np.nonzero(dm == -1)[0]):
                if b - a >= S:
                    det = a + S - 1
                    eps.append(dict(kind=kind, i=i, start=int(max(a - Wh + 1, 0)), det=int(det),
                                    end=(int(b) if b < T_eff else None),
                                    score=float(abs(np.log(max(r[i, det], 1e-3)))),
                                    ratio=float(r[i, det]), obs=float(Obs[i, det] / max(N[i, det], 1)),
                                    exp=float(E[i, det] / max(N[i, det], 1))))
    return eps


def _one_per_event(eps):
    """Two tests of one kind see one event once (the silence CUSUMs and the flatness CUSUM,
    both ``inactivity``; the drop CUSUM and the whole-day ratio, both ``sustained_drop``): an
    episode raised while a kept episode of the same meter and kind is still open (not ended by
    its detection: causal) is dropped."""
    kept: dict[tuple, list[dict]] = {}
    for e in sorted(eps, key=lambda e: (e["det"], e["start"])):
        same = kept.setdefault((e["i"], e["kind"]), [])
        if not any(k["end"] is None or k["end"] > e["det"] for k in same):
            same.append(e)
    return [e for v in kept.values() for e in v]


def _cusum_episodes(tests, X, valid, gap_ok, P, T_eff, cfg):
    """Page's CUSUM of hourly evidence (nats), for each ``(kind, evidence (M, T), threshold)``
    of ``tests``: an episode of ``kind`` when it passes ``threshold``; it starts where the
    evidence began to pile up and ends when it is used up again. A long gap or an absence
    resets it. Used for the sustained drop (用电骤降, ``P["drop_llr"]``) and for "nothing
    changes" (frozen-on, ``P["flat_llr"]``); the tests run stacked, in one pass over the hours."""
    M, T = X.shape
    K = len(tests)
    L = np.concatenate([np.where(valid & gap_ok, ev[:, :T], 0.0) for _, ev, _ in tests]).astype(np.float32)
    brk = np.tile(_breaks(valid, gap_ok, cfg), (K, 1))
    warm = np.tile(np.repeat(P["hist_days"] >= cfg.min_history_days, 24, axis=1), (K, 1))
    threshold = np.repeat([h for _, _, h in tests], M).astype(np.float32)
    expected = P["level"].reshape(M, -1)
    S = np.zeros(K * M, np.float32)
    start = np.full(K * M, -1, np.int64)
    alarmed = np.zeros(K * M, bool)
    opened: dict[int, dict] = {}
    eps = []
    for t in range(T_eff):
        S = np.maximum(S + L[:, t], 0.0)
        S[brk[:, t]] = 0.0
        done = (S <= 0) & (start >= 0)
        for j in np.nonzero(done & alarmed)[0]:
            opened.pop(j)["end"] = t
        start[done] = -1
        alarmed &= ~done
        start[(S > 0) & (start < 0)] = t
        fire = (S > threshold) & ~alarmed & warm[:, t]
        for j in np.nonzero(fire)[0]:
            i, s0 = j % M, int(start[j])
            ok = valid[i, s0:t + 1] & ~np.isnan(expected[i, s0:t + 1])
            obs = float(X[i, s0:t + 1][ok].mean()) if ok.any() else float("nan")
            exp = float(expected[i, s0:t + 1][ok].mean()) if ok.any() else float("nan")
            e = dict(kind=tests[j // M][0], i=i, start=s0, det=t, end=None, score=float(S[j] / np.log(10)),
                     ratio=obs / exp if exp > 0 else float("nan"), obs=obs, exp=exp)
            eps.append(e)
            opened[j] = e
        alarmed |= fire
    return eps


def _drop_covered_mornings(mornings, eps, av):
    """One event, one episode: a missed morning while an inactivity episode already raised
    is still silent (no activity since its detection) adds nothing. Uses only hours up to
    the morning's detection, so it stays causal."""
    raised = {}
    for e in eps:
        if e["kind"] == "inactivity":
            raised.setdefault(e["i"], []).append(e["det"])
    keep = []
    for m in mornings:
        covered = any(d <= m["det"] and not av[m["i"], d + 1:m["det"] + 1].any()
                      for d in raised.get(m["i"], ()))
        if not covered:
            keep.append(m)
    return keep


def _morning_episodes(A, valid, gap_ok, P, wake, deadline, T_eff, cfg):
    """No activity from the household's quietest hour until past its latest usual morning."""
    M, T = A.shape
    D = T // 24
    av = A & valid
    cA = np.zeros((M, T + 1), np.int32); np.cumsum(av, axis=1, out=cA[:, 1:])
    cV = np.zeros((M, T + 1), np.int32); np.cumsum(valid, axis=1, out=cV[:, 1:])
    cG = np.zeros((M, T + 1), np.int32); np.cumsum(~gap_ok, axis=1, out=cG[:, 1:])
    rows = np.arange(M)
    eps = []
    for d in range(D):
        dl = deadline[:, d]
        has = ~np.isnan(dl)
        if not has.any():
            continue
        s = d * 24 + wake[:, d].astype(np.int64)
        e = s + np.where(has, dl, 0).astype(np.int64)      # last hour a morning normally shows by
        ok = has & (e < T_eff)
        e1 = np.minimum(e + 1, T)
        n = e1 - s
        quiet = (cA[rows, e1] - cA[rows, s] == 0) & (cV[rows, e1] - cV[rows, s] >= 0.75 * n) \
            & (cG[rows, e1] - cG[rows, s] == 0) & ok
        for i in np.nonzero(quiet)[0]:
            after = np.nonzero(av[i, e[i] + 1:T_eff])[0]
            end = int(e[i] + 1 + after[0]) if len(after) else None
            eps.append(dict(kind="missing_morning_routine", i=i, start=int(s[i]), det=int(e[i]), end=end,
                            score=float(np.log10(cfg.window_days + 1) + (e[i] - s[i]) / 24)))
    return eps


# --------------------------------------------------------------------------- assembly

def _fmt_time(ts: pd.Timestamp) -> str:
    return f"{ts.month}月{ts.day}日{ts.hour}时"


# The evidence wording lives in templates/ (one str.format string per case); the numbers
# and the choice of case stay here.
EVIDENCE_TEMPLATE = Path(_templates_pkg.__file__).parent / "flag_risks" / "evidence.toml"


@lru_cache(maxsize=1)
def _evidence_templates() -> dict[str, str]:
    with EVIDENCE_TEMPLATE.open("rb") as f:
        return tomllib.load(f)


def _evidence(key: str, **fields) -> str:
    return _evidence_templates()[key].format(**fields)


def _rows(eps, meters, X, A, P, t0, T_eff, delta_md):
    """Episode dicts → output rows with the figures and the Chinese evidence a grid worker reads.

    Everything is computed over [start, detected_at] only, so replaying up to detected_at
    gives the same row (apart from ``end``)."""
    rows = []
    if not eps:
        return rows
    M, T = X.shape
    mean = P["mean"].reshape(M, -1)
    t0 = np.datetime64(pd.Timestamp(t0).to_datetime64(), "ns")
    meter_ix = np.array([e["i"] for e in eps])
    S0 = np.array([e["start"] for e in eps])
    S1 = np.array([e["det"] for e in eps]) + 1

    def seg_means(V):
        # mean over [start, detected] of each episode, NaN-aware, from cumulative sums of the
        # meters' rows (one per meter, not per episode: a meter with years of readings has
        # hundreds of episodes)
        ok = ~np.isnan(V)
        c = np.zeros((M, T + 1)); np.cumsum(np.where(ok, V, 0), axis=1, out=c[:, 1:])
        n = np.zeros((M, T + 1), np.int32); np.cumsum(ok, axis=1, out=n[:, 1:])
        cnt = n[meter_ix, S1] - n[meter_ix, S0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, (c[meter_ix, S1] - c[meter_ix, S0]) / np.maximum(cnt, 1), np.nan)
    OBS = seg_means(X)
    EXP = seg_means(mean)
    for k, e in enumerate(eps):
        i, s, det = e["i"], e["start"], e["det"]
        start = pd.Timestamp(t0 + np.timedelta64(int(s), "h"))
        detected = pd.Timestamp(t0 + np.timedelta64(int(det) + 1, "h"))
        end = pd.NaT if e["end"] is None else pd.Timestamp(t0 + np.timedelta64(int(e["end"]), "h"))
        obs, exp = float(OBS[k]), float(EXP[k])
        kind = e["kind"]
        hours = det + 1 - s
        d = min(det // 24, P["standby"].shape[1] - 1)
        standby = float(P["standby"][i, d])
        dlt = float(delta_md[i, d])
        since = _fmt_time(start)
        if kind == "inactivity":
            # a constant load left on: use well above standby, or as high as usual (a household
            # whose standby swings reads "near standby" too broadly), yet nothing changes
            frozen = np.isfinite(standby) and np.isfinite(obs) and (
                obs > standby + max(2 * dlt, 0.5 * standby) or (np.isfinite(exp) and obs >= 0.75 * exp))
            if frozen:
                sev = "high"
                ev = _evidence("inactivity_frozen", since=since, obs=obs, exp=exp, hours=hours)
            else:
                sev = "critical"
                ev = _evidence("inactivity", since=since, obs=obs, exp=exp, hours=hours)
        elif kind == "sustained_drop":
            obs, exp = e["obs"], e["exp"]
            sev = "high" if e["ratio"] < 0.35 else "medium"
            ev = _evidence("sustained_drop", obs=obs, exp=exp, hours=hours, ratio_pct=e["ratio"] * 100)
        elif kind == "high_use":
            obs, exp = e["obs"], e["exp"]
            sev = "medium" if e["ratio"] > 4 else "low"
            ev = _evidence("high_use", obs=obs, exp=exp, hours=hours, ratio=e["ratio"])
        elif kind == "missing_morning_routine":
            sev = "high"
            ev = _evidence("missing_morning_routine", detected=_fmt_time(detected), since=since,
                           obs=obs, exp=exp)
        elif kind == "night_activity":
            sev = "low"
            ev = _evidence("night_activity", since=since, obs=obs, exp=exp, hours=hours)
        else:  # meter_offline
            sev = "medium"
            obs = float("nan")
            ev = _evidence("meter_offline", since=since, hours=hours)
        if e.get("recurrent"):
            sev = "low"
            n_prev, n_days = e["recurrent"]
            ev += _evidence("suffix_recurrent", n_days=n_days, n_prev=n_prev)
        rows.append(dict(meter_id=meters[i], kind=kind, start=start, detected_at=detected, end=end,
                         severity=sev, score=float(e["score"]), expected_kwh_per_h=exp,
                         observed_kwh_per_h=obs, evidence=ev))
    return rows


def _empty() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in EPISODE_COLUMNS})
    for c in ("start", "detected_at", "end"):
        df[c] = pd.Series(dtype="datetime64[ns]")
    for c in ("score", "expected_kwh_per_h", "observed_kwh_per_h"):
        df[c] = pd.Series(dtype=float)
    return df


def _finish(rows) -> pd.DataFrame:
    if not rows:
        return _empty()
    out = pd.DataFrame(rows, columns=EPISODE_COLUMNS)
    for c in ("start", "detected_at", "end"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    out = out.sort_values(["meter_id", "detected_at", "kind"], kind="stable").reset_index(drop=True)
    return out


def _profiles_from_fixed(prof: RoutineProfiles, sel: np.ndarray, D: int, weekend: np.ndarray):
    """Broadcast a stored one-day profile over D days (incremental run)."""
    dt = weekend.astype(int)
    pick = lambda a: a[sel][:, dt, :]  # noqa: E731
    M = len(sel)
    rep = lambda v: np.repeat(v[sel][:, None], D, axis=1)  # noqa: E731
    return dict(p=pick(prof.p_active), c=pick(prof.p_continue), mean=pick(prof.mean_kwh),
                level=pick(prof.level_kwh if prof.level_kwh is not None else prof.mean_kwh),
                p_all=prof.p_active[sel].mean(axis=1)[:, None, :].repeat(D, axis=1),
                hist_days=rep(prof.history_days), log_pstar=rep(prof.log_pstar),
                log_pstar_night=rep(prof.log_pstar_night), standby=rep(prof.standby),
                dark=(rep(prof.dark_noise) if prof.dark_noise is not None
                      else np.full((M, D), DetectorConfig.dark_noise_prior, np.float32)),
                level_sig=(rep(prof.level_sigma) if prof.level_sigma is not None
                           else np.full((M, D), np.inf, np.float32)),
                fixed_thr=(prof.silence_threshold[sel].astype(np.float32), prof.night_threshold[sel].astype(np.float32),
                           (prof.low_threshold[sel] if prof.low_threshold is not None
                            else np.full(M, np.inf)).astype(np.float32)))


def _map_chunks(fn, M: int, T: int, cfg: DetectorConfig) -> list:
    """``fn`` over blocks of meters (of ``T`` hours each), on ``cfg.workers`` threads, in order."""
    size = max(1, min(cfg.chunk_meters, cfg.block_meter_hours // max(T, 1)))
    blocks = [slice(c0, min(M, c0 + size)) for c0 in range(0, M, size)]
    workers = min(cfg.workers or os.cpu_count() or 1, len(blocks))
    if workers <= 1:
        return [fn(sl) for sl in blocks]
    with ThreadPoolExecutor(workers, thread_name_prefix="detect") as pool:
        return list(pool.map(fn, blocks))


def _detect_hourly(meters, X, t0, n_hours, absent, cfg: DetectorConfig, profiles: RoutineProfiles | None = None):
    """Core: hourly matrix → list of row dicts, judged in blocks of meters (bounded memory) on
    worker threads."""
    M, T = X.shape
    if M == 0 or n_hours <= 0:
        return []
    D = T // 24
    days = pd.Timestamp(t0) + pd.to_timedelta(np.arange(D), unit="D")
    weekend = np.asarray(days.day_of_week >= 5)

    def judge(sl: slice) -> list[dict]:
        Xc = X[sl]
        valid = ~np.isnan(Xc)
        gap_ok = np.ones_like(valid) if absent is None else ~absent[sl]
        valid &= gap_ok
        Xc = np.where(valid, Xc, np.nan).astype(np.float32)
        if profiles is None:
            delta_md = _noise_delta(Xc, cfg, _day_number(t0))
        else:
            delta_md = np.repeat(profiles.delta[sl][:, None], D, axis=1)
        delta_h = np.repeat(delta_md, 24, axis=1)
        A = _activity_per_hour(Xc, delta_h, cfg.floor_hours)
        bins, dark_s, slot_s, sstats = _level_samples(Xc, valid, cfg)
        fbins, flat_s, flat_n = _flat_samples(Xc, valid, cfg)
        if profiles is None:
            P = _rolling_profiles(Xc, A, valid, weekend, cfg, delta_md)
            wake, deadline, _ = _morning_deadlines(A, valid, P, cfg)
        else:
            ix = np.arange(sl.start, sl.stop)
            P = _profiles_from_fixed(profiles, ix, D, weekend)
            wake = np.repeat(profiles.wake_hour[ix][:, None], D, axis=1)
            deadline = np.repeat(profiles.morning_deadline[ix][:, None], D, axis=1)
            if profiles.dark_hist is not None:      # judged against the stored samples
                dark_s = np.broadcast_to(profiles.dark_hist[ix][:, None, :],
                                         (len(ix), D) + profiles.dark_hist.shape[1:])
                # one day's samples: the counts in _level_llr broadcast them over the days
                slot_s = profiles.slot_sample[ix][:, None]
            if profiles.flat_sample is not None:
                flat_s = profiles.flat_sample[ix][:, None]
                flat_n = np.broadcast_to(np.count_nonzero(profiles.flat_sample[ix] >= 0, axis=2)[:, None],
                                         (len(ix), D, 24))
                sstats = np.broadcast_to(profiles.slot_stats[ix][:, None], (len(ix), D, 24, 2))
        P["level_llr"], P["drop_llr"] = _level_llr(bins, dark_s, slot_s, sstats, cfg)
        P["flat_llr"] = _flat_llr(fbins, flat_s, flat_n, cfg)
        del bins, dark_s, slot_s, sstats, fbins, flat_s, flat_n
        eps = _scan(Xc, A, valid, gap_ok, P, cfg, n_hours)
        eps += _cusum_episodes([("inactivity", P["flat_llr"], cfg.flat_threshold),
                                ("sustained_drop", P["drop_llr"], cfg.drop_threshold)],
                               Xc, valid, gap_ok, P, n_hours, cfg)
        eps += _ratio_episodes(Xc, valid, gap_ok, P, n_hours, cfg)
        eps = _one_per_event(eps) + _offline_episodes(~np.isnan(X[sl]), gap_ok, n_hours, cfg)
        eps += _drop_covered_mornings(_morning_episodes(A, valid, gap_ok, P, wake, deadline, n_hours, cfg), eps,
                                      A & valid)
        past = None
        if profiles is not None and profiles.recent_detections is not None:
            past = _past_detections(profiles.recent_detections[sl], cfg, t0)
        _gate_recurrent(eps, cfg, past)
        return _merge_incidents(_rows(eps, meters[sl], Xc, A, P, t0, n_hours, delta_md), cfg)

    return [row for rows in _map_chunks(judge, M, T, cfg) for row in rows]


def _merge_incidents(rows: list[dict], cfg: DetectorConfig) -> list[dict]:
    """One incident, one alert (同一事件只派一次): an episode of any kind raised while an
    alerted episode of the same meter is still open, or within ``incident_gap_hours`` of its
    end, is a later signal of the same incident (a silence that then also reads as a drop, a
    missed morning inside a trip away). It is recorded as ``low`` with a note of the alert it
    follows, unless it is ``critical`` and the incident's alerts were not (that escalates).
    Only what is known at its detection counts: an earlier episode's end is used only if it
    came before that (causal)."""
    if cfg.incident_gap_hours < 0:
        return rows
    gap = pd.Timedelta(hours=cfg.incident_gap_hours)
    rank = {s: k for k, s in enumerate(SEVERITIES)}
    by_meter: dict = {}
    for r in sorted(rows, key=lambda r: (r["detected_at"], r["kind"])):
        if r["severity"] == "low":
            continue
        sent = by_meter.setdefault(r["meter_id"], [])
        follows = None
        for e in sent:
            end = e["end"]
            # `end` is the hour in which it ended, known when that hour is over
            still_open = pd.isna(end) or end >= r["detected_at"]
            if still_open or r["start"] <= end + gap:
                follows = e
        if follows is not None and not (r["severity"] == "critical"
                                         and max(rank[e["severity"]] for e in sent) < rank["critical"]):
            r["severity"] = "low"
            r["evidence"] += _evidence("suffix_same_incident", first=_fmt_time(follows["detected_at"]))
            continue
        sent.append(r)
    return rows


_RECENT = 8


def _past_detections(rd: np.ndarray, cfg: DetectorConfig, t0) -> dict:
    """Stored detection times (M, K, R) → {(meter, kind): [hour index of detection]} on the
    hour grid starting at ``t0`` (negative: before it)."""
    t0 = np.datetime64(pd.Timestamp(t0).to_datetime64(), "ns")
    out = {}
    for i, k, r in zip(*np.nonzero(~np.isnat(rd))):
        det = int((rd[i, k, r] - t0) // _HOUR) - 1
        out.setdefault((int(i), cfg.recurrence_kinds[k]), []).append(det)
    return out


def _recent_detections(eps, M: int, cfg: DetectorConfig, t0) -> np.ndarray:
    """The latest detections of each recurrence kind per meter."""
    t0 = np.datetime64(pd.Timestamp(t0).to_datetime64(), "ns")
    out = np.full((M, len(cfg.recurrence_kinds), _RECENT), np.datetime64("NaT"), "datetime64[ns]")
    by = {}
    for e in eps:
        if e["kind"] in cfg.recurrence_kinds:
            by.setdefault((e["i"], cfg.recurrence_kinds.index(e["kind"])), []).append(e["det"])
    for (i, k), dets in by.items():
        last = sorted(dets)[-_RECENT:]
        out[i, k, : len(last)] = t0 + (np.asarray(last, np.int64) + 1) * _HOUR
    return out


def _gate_recurrent(eps, cfg: DetectorConfig, past: dict | None = None):
    """Mark (``e["recurrent"]`` = number of earlier same-kind episodes) the episodes of
    ``cfg.recurrence_kinds`` whose household already had ``recurrence_max`` or more of them
    detected in the trailing ``recurrence_days`` (before this one's detection: causal).
    ``past`` maps (meter index, kind) to earlier detection hours (incremental run)."""
    win = cfg.recurrence_days * 24
    seen = {k: set(v) for k, v in (past or {}).items()}   # a set: a stored detection may recur in the run
    for e in sorted((e for e in eps if e["kind"] in cfg.recurrence_kinds), key=lambda e: e["det"]):
        key = (e["i"], e["kind"])
        prev = [d for d in seen.get(key, ()) if e["det"] - win <= d < e["det"]]
        if len(prev) >= cfg.recurrence_max:
            e["recurrent"] = (len(prev), cfg.recurrence_days)
        seen.setdefault(key, set()).add(e["det"])


def _activity_per_hour(X, delta_h, floor_hours):
    """Active hour (活动): rises above the floor of the previous ``floor_hours`` hours, or
    changes level from the previous hour, by more than the household's noise ``delta_h``.

    Past hours only (causal). A constant load is active only while it switches on, so
    standby plus an appliance left on reads as "nobody active".
    """
    M, T = X.shape
    big = np.where(np.isnan(X), np.inf, X)
    floor = np.full((M, T), np.inf, dtype=np.float32)
    for k in range(1, floor_hours + 1):
        np.minimum(floor[:, k:], big[:, :-k], out=floor[:, k:])
    prev = np.full((M, T), np.nan, dtype=np.float32)
    prev[:, 1:] = X[:, :-1]
    with np.errstate(invalid="ignore"):
        rise = X - np.where(np.isinf(floor), X, floor)
        jump = np.abs(X - prev)
        return (rise > delta_h) | (jump > delta_h)


# --------------------------------------------------------------------------- public API

def detect(readings: pd.DataFrame, *, as_of: datetime | None = None, absences: pd.DataFrame | None = None,
           config: DetectorConfig | None = None) -> pd.DataFrame:
    """Find risk episodes in meter readings (``meter_id, ts, kwh``), one row per episode.

    Causal: an episode's ``detected_at`` is when a live system fed readings in time order
    would raise it; nothing after it influences the flag. ``absences`` (``meter_id, start,
    end``) suppress flags in those times. Columns: see ``EPISODE_COLUMNS``.
    """
    cfg = config or DetectorConfig()
    meters, X, t0, n_hours = hourly_matrix(readings, as_of)
    if len(meters) == 0:
        return _empty()
    absent = _absence_mask(meters, t0, X.shape[1], absences)
    return _finish(_detect_hourly(meters, X, t0, n_hours, absent, cfg))


def _to_hourly(kwh: np.ndarray, t0: pd.Timestamp, interval_minutes: int, chunk: int = 4096):
    """Dense (meters, slots) at any interval → hourly float32, midnight-aligned."""
    M, K = kwh.shape
    per = 60 // interval_minutes
    lead = int(((t0 - t0.normalize()) / pd.Timedelta(minutes=interval_minutes)))
    total = lead + K
    H = -(-total // per)
    D = -(-H // 24)
    out = np.full((M, D * 24), np.nan, dtype=np.float32)
    for c0 in range(0, M, chunk):
        blk = np.full((min(chunk, M - c0), H * per), np.nan, dtype=np.float32)
        blk[:, lead:lead + K] = kwh[c0:c0 + chunk]
        blk = blk.reshape(blk.shape[0], H, per)
        ok = ~np.isnan(blk)
        n = ok.view(np.uint8).sum(axis=2, dtype=np.uint8)
        s = np.where(ok, blk, np.float32(0.0)).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c0:c0 + chunk, :H] = np.where(n > 0, s * per / np.maximum(n, 1), np.nan)
    n_hours = total // per                       # only complete hours count
    return out, t0.normalize(), n_hours


def detect_matrix(kwh: np.ndarray, meter_ids, t0: datetime, interval_minutes: int, *,
                  absences: pd.DataFrame | None = None, config: DetectorConfig | None = None,
                  profiles: RoutineProfiles | None = None) -> pd.DataFrame:
    """City-scale path: ``kwh[meter, k]`` (float32, NaN gaps) is the energy in
    [t0 + k·interval, t0 + (k+1)·interval). Without ``profiles`` the routine is learnt
    causally inside the matrix (needs ``min_history_days`` of warm-up); with ``profiles``
    (from ``fit_profiles`` on the trailing weeks, stored once a day) the whole matrix is
    judged against them — the incremental hourly run over the last few days.
    """
    cfg = config or DetectorConfig()
    t0 = pd.Timestamp(t0)
    meters = np.asarray(meter_ids, dtype=object)
    X, t0h, n_hours = _to_hourly(np.asarray(kwh, dtype=np.float32), t0, int(interval_minutes), cfg.chunk_meters)
    absent = _absence_mask(meters, t0h, X.shape[1], absences)
    if profiles is not None:
        pos = pd.Index(profiles.meter_ids).get_indexer(meters)
        if (pos < 0).any():
            raise ValueError("profiles lack some meters")
        profiles = _subset(profiles, pos)
    return _finish(_detect_hourly(meters, X, t0h, n_hours, absent, cfg, profiles))


def _subset(p: RoutineProfiles, pos) -> RoutineProfiles:
    return RoutineProfiles(meter_ids=p.meter_ids[pos], p_active=p.p_active[pos], p_continue=p.p_continue[pos],
                           mean_kwh=p.mean_kwh[pos], delta=p.delta[pos], log_pstar=p.log_pstar[pos],
                           log_pstar_night=p.log_pstar_night[pos], standby=p.standby[pos],
                           wake_hour=p.wake_hour[pos], morning_deadline=p.morning_deadline[pos],
                           history_days=p.history_days[pos], silence_threshold=p.silence_threshold[pos],
                           night_threshold=p.night_threshold[pos], level_kwh=p.level_kwh[pos],
                           low_threshold=None if p.low_threshold is None else p.low_threshold[pos],
                           dark_hist=None if p.dark_hist is None else p.dark_hist[pos],
                           slot_sample=None if p.slot_sample is None else p.slot_sample[pos],
                           flat_sample=None if p.flat_sample is None else p.flat_sample[pos],
                           slot_stats=None if p.slot_stats is None else p.slot_stats[pos],
                           dark_noise=None if p.dark_noise is None else p.dark_noise[pos],
                           level_sigma=None if p.level_sigma is None else p.level_sigma[pos],
                           recent_detections=None if p.recent_detections is None else p.recent_detections[pos])


def fit_profiles(kwh: np.ndarray, meter_ids, t0: datetime, interval_minutes: int,
                 config: DetectorConfig | None = None) -> RoutineProfiles:
    """Learn each meter's routine from the trailing weeks in ``kwh`` (stored once a day).

    The profile describes the day *after* the matrix ends; pass it to ``detect_matrix`` for
    the hourly incremental run.
    """
    cfg = config or DetectorConfig()
    t0 = pd.Timestamp(t0)
    meters = np.asarray(meter_ids, dtype=object)
    X, t0h, n_hours = _to_hourly(np.asarray(kwh, dtype=np.float32), t0, int(interval_minutes), cfg.chunk_meters)
    D0 = n_hours // 24
    X = X[:, : D0 * 24]
    # one extra empty day: its causal profile is "everything before it"
    X = np.concatenate([X, np.full((X.shape[0], 24), np.nan, np.float32)], axis=1)
    D = D0 + 1
    days = t0h + pd.to_timedelta(np.arange(D), unit="D")
    weekend = np.asarray(days.day_of_week >= 5)
    M = len(meters)

    def learn(sl: slice) -> dict[str, np.ndarray]:
        out = {}
        Xc = X[sl]
        valid = ~np.isnan(Xc)
        delta_md = _noise_delta(Xc, cfg, _day_number(t0h))
        A = _activity_per_hour(Xc, np.repeat(delta_md, 24, axis=1), cfg.floor_hours)
        # last day profiles for both day types: recompute with the last day as each type
        res = {}
        for typ in (0, 1):
            wk = weekend.copy()
            wk[-1] = bool(typ)
            P = _rolling_profiles(Xc, A, valid, wk, cfg, delta_md)
            res[typ] = P
        P = res[0]
        wake, deadline, _ = _morning_deadlines(A, valid, P, cfg)
        bins, dark_s, slot_s, sstats = _level_samples(Xc, valid, cfg)
        P["level_llr"], P["drop_llr"] = _level_llr(bins, dark_s, slot_s, sstats, cfg)
        fbins, flat_s, flat_n = _flat_samples(Xc, valid, cfg)
        P["flat_llr"] = _flat_llr(fbins, flat_s, flat_n, cfg)
        out["fsample"] = np.ascontiguousarray(flat_s[:, D - 1])
        # replay the history to learn the self-calibrated alarm levels for the next day, and the
        # household's own past episodes of the recurrence kinds (recurrence gate), as detect does
        ones = np.ones_like(valid)
        eps = _scan(Xc, A, valid, ones, P, cfg, Xc.shape[1])
        eps += _cusum_episodes([("inactivity", P["flat_llr"], cfg.flat_threshold),
                                ("sustained_drop", P["drop_llr"], cfg.drop_threshold)], Xc, valid, ones, P,
                               Xc.shape[1], cfg)
        eps = _one_per_event(eps + _ratio_episodes(Xc, valid, ones, P, Xc.shape[1], cfg))
        eps += _drop_covered_mornings(_morning_episodes(A, valid, ones, P, wake, deadline, Xc.shape[1], cfg),
                                      eps, A & valid)
        out["recent"] = _recent_detections(eps, Xc.shape[0], cfg, t0h)
        out["thr"] = P["last_thr"][0]
        out["nthr"] = P["last_thr"][1]
        out["thr2"] = P["last_thr"][2]
        # the samples behind the day after the history (the appended empty day, D - 1)
        out["dhist"] = np.ascontiguousarray(dark_s[:, D - 1])
        out["ssample"] = np.ascontiguousarray(slot_s[:, D - 1])
        out["sstats"] = np.ascontiguousarray(sstats[:, D - 1])
        out["dark"] = P["dark"][:, -1]
        out["lsig"] = _level_sigma(_level_ratio(Xc, valid, np.ones_like(valid), P, cfg)[0], cfg)[:, -1]
        out["p"] = np.stack([res[0]["p"][:, -1], res[1]["p"][:, -1]], axis=1)
        out["c"] = np.stack([res[0]["c"][:, -1], res[1]["c"][:, -1]], axis=1)
        out["mean"] = np.stack([res[0]["mean"][:, -1], res[1]["mean"][:, -1]], axis=1)
        out["level"] = np.stack([res[0]["level"][:, -1], res[1]["level"][:, -1]], axis=1)
        out["delta"] = delta_md[:, -1]
        out["lp"] = P["log_pstar"][:, -1]
        out["lpn"] = P["log_pstar_night"][:, -1]
        out["sb"] = P["standby"][:, -1]
        out["wake"] = wake[:, -1]
        out["dl"] = deadline[:, -1]
        out["hd"] = P["hist_days"][:, -1]
        return out

    parts = _map_chunks(learn, M, X.shape[1], cfg)
    cat = lambda k: np.concatenate([part[k] for part in parts], axis=0)  # noqa: E731
    return RoutineProfiles(meter_ids=meters, p_active=cat("p"), p_continue=cat("c"), mean_kwh=cat("mean"),
                           delta=cat("delta"), log_pstar=cat("lp"), log_pstar_night=cat("lpn"),
                           standby=cat("sb"), wake_hour=cat("wake"), morning_deadline=cat("dl"),
                           history_days=cat("hd"), silence_threshold=cat("thr"), night_threshold=cat("nthr"),
                           level_kwh=cat("level"), low_threshold=cat("thr2"), dark_noise=cat("dark"),
                           dark_hist=cat("dhist"), slot_sample=cat("ssample"), slot_stats=cat("sstats"),
                           flat_sample=cat("fsample"),
                           level_sigma=cat("lsig"), recent_detections=cat("recent"))
