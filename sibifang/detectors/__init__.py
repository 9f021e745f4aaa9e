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
from the hour's own density over its last ``drop_window_days``, see ``_level_llr``, held at
its alarm level once raised (``drop_ceiling``) so that the episode ends with the recovery; beside
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
daily run); ``fit_profiles`` (once a day, over the trailing weeks up to midnight) +
``detect_matrix(..., profiles=...)`` over the day before that midnight and the hours since
is the hourly incremental run. The fit replays the weeks and keeps where every alarm stood
at midnight (``AlarmCheckpoint``: the running CUSUMs and runs, the sums of the runs under
way, the episodes still open with their rows, the day before as the replay saw it), and the
hourly run resumes from it: it reports the episodes raised since midnight and the ends of
those open at it exactly as a replay of the whole window does
(``tests/test_incremental_run.py``, ``benchmarks/compare_incremental.py``).

The package (small modules, each depending only on those above it):

* ``config``: ``DetectorConfig``, ``RoutineProfiles`` and the shared constants;
* ``hourly``: readings → the hourly matrix;
* ``routine``: the causal per-household routine (activity, profiles, level and flatness
  densities, morning deadlines);
* ``alarms``: the tests that raise episodes;
* ``evidence``: episodes → rows with the Chinese evidence, one alert per incident;
* ``run``: ``detect``, ``detect_matrix`` and ``fit_profiles``.
"""

from __future__ import annotations

from sibifang.detectors.config import (ALERT_SEVERITIES, EPISODE_COLUMNS, KINDS, SEVERITIES, DetectorConfig,
                                       RoutineProfiles)
from sibifang.detectors.evidence import _empty as empty_episodes
from sibifang.detectors.hourly import hourly_matrix
from sibifang.detectors.run import detect, detect_matrix, fit_profiles

__all__ = [
    "ALERT_SEVERITIES",
    "SEVERITIES",
    "DetectorConfig",
    "RoutineProfiles",
    "EPISODE_COLUMNS",
    "KINDS",
    "detect",
    "detect_matrix",
    "empty_episodes",
    "fit_profiles",
    "hourly_matrix",
]
