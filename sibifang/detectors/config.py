"""Detector settings and shapes: ``DetectorConfig`` (every parameter of the routine model and
the alarms, with the evidence behind its default), ``RoutineProfiles`` (a day's stored
per-meter routine for the incremental run) and the constants every other module shares
(episode columns, kinds, severities)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


EPISODE_COLUMNS = [
    "meter_id", "kind", "start", "detected_at", "end", "severity", "score",
    "expected_kwh_per_h", "observed_kwh_per_h", "evidence",
]
KINDS = ("inactivity", "sustained_drop", "missing_morning_routine", "night_activity",
         "high_use", "meter_offline")
_HOUR = np.timedelta64(1, "h")
# severities in rising order; those from "medium" on go to a grid worker, "low" is recorded
# only (see the package docstring, sibifang/detectors/__init__.py)
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
    # Once a drop is raised, its CUSUM is held at drop_ceiling × drop_threshold at most: the
    # evidence beyond the alarm level is not banked (the CUSUM's inertia). Unbounded, three
    # days at 40 % kept the episode open nine days after use came back, and a second drop two
    # days after the recovery raised nothing (tests/test_detectors.py); now the episode ends
    # within about drop_threshold / drop_llr_cap ordinary active hours of the recovery. 1 is
    # the alarm level itself, not a fit; inf turns it off. (300 injected drops per seed, any
    # alerting row: real data seeds 7 / 11 / 13 0.947 / 0.967 / 0.983 → 0.947 / 0.973 / 0.983
    # within 48 h, alerting false alarms 0.89 per household-month both, lights-off and
    # frozen-on the same or +0.004; generated elderly households 0.969 / 0.973 / 0.969 →
    # 0.970 / 0.975 / 0.973 at 0.32 false alarms per household-month both.)
    drop_ceiling: float = 1.0
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
    ``fit_profiles`` learns the profile of the one day after its history (both daytype slots
    hold that day's); the hourly runs of that day use it.
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
    # (M, 24) the all-days activity rate by hour (the quiet-slot noise of the silence and night
    # tests); without it, the mean of the weekday and weekend rates stands in, which is not the
    # same (5 weekdays to 2 weekend days, and each rate is shrunk to it): the incremental run
    # then raised half again as many night_activity episodes as the full replay of the same day
    p_all: np.ndarray | None = None
    # where every alarm stood when the history ended, so the incremental run resumes the replay
    # instead of starting it afresh (see AlarmCheckpoint)
    checkpoint: AlarmCheckpoint | None = None


@dataclass
class AlarmCheckpoint:
    """Where each household's alarms stood at ``at``, the midnight the history behind a
    profile ended: what ``detect_matrix(..., profiles=...)`` resumes from, so that an hourly
    run over the day before ``at`` and the hours since judges those hours as the full
    replay of the whole history does.

    ``state``: arrays with the meter on axis 0 (the running CUSUMs and runs, the sums of the
    runs under way, and the day before ``at`` as the replay saw it: its activity, expected
    use and morning); their hour indices count from ``at`` (negative: before it; ``_NO_RUN``:
    none). ``open``: the episodes still open at ``at`` (dicts on the same hour grid, meter
    index into the profile's meters): ``scan`` and ``cusum`` as the running tests hold them,
    ``kept`` those that were reported, each with its output ``row``. ``prior``: the alerted
    rows that are over, which an episode raised later could still join as one incident, and
    which decide whether a critical one escalates it (``_merge_incidents``).
    """

    at: object                   # pd.Timestamp
    state: dict
    open: dict
    prior: list
