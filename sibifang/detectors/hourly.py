"""Input handling: readings (long, or a dense matrix at any interval) → the hourly matrix
(meters × hours, kWh/h, NaN gaps, midnight-aligned) every detector runs on, the readings an
hour each meter delivers at each hour (``readings_per_hour``: the one rule the flow's
``profile_cache.hourly_kwh`` applies too), the hours covered by absences, and the calendar day
number of the start."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

# one inference of a meter's interval and clock jitter, the ingestion's
from sibifang.ingest_readings import (LONGEST_HOURLY_SPACING_MINUTES, USUAL_INTERVALS_MINUTES, grid_tolerance_seconds,
                                      infer_interval_minutes, parse_reading_times)
from sibifang.readings_store import first_of_each_reading
from sibifang.settings import LOCAL_TZ_NAME

# Hours with readings in a row that say the same readings an hour (``readings_per_hour``) after
# which that is the meter's cadence (a meter replaced by one read less often): long enough that a
# meter losing readings at random rarely says one lower figure that long, short enough that the
# hours after the change are read at the old cadence for at most CADENCE_SETTLES_HOURS - 1.
CADENCE_SETTLES_HOURS = 8


def readings_per_hour(meter: np.ndarray, count: np.ndarray, spacing: np.ndarray | None = None) -> np.ndarray:
    """The readings an hour a meter is taken to deliver at each of its hours with readings.

    ``meter`` (codes) and ``count`` (readings in the hour, > 0) are one row per meter and hour
    with readings, sorted by meter then hour; ``spacing`` the shortest time in minutes from a
    reading of the hour to the meter's reading before (NaN: none known). An hour's use is its
    readings' sum scaled by ``per / min(count, per)``: a reading lost is never read as a drop.
    An hour says its meter delivers at least its count, and at least what its shortest spacing
    (snapped to a usual interval; longer than hourly says nothing) makes an hour: a 15-minute
    meter that lost most of its readings still shows 15-minute spacings.

    Per reading, not per meter: the most readings any hour held since the meter's cadence last
    settled (``CADENCE_SETTLES_HOURS`` hours with readings in a row holding the same number), so
    an hourly meter replaced by a 15-minute one is read ×4 from the first full hour of the new
    one, and a 15-minute one replaced by an hourly one ×1 once the hourly readings have settled
    (its hourly readings are not read as 15-minute ones for the whole history, which made the
    same use a drop and a silence). Hours without readings are not hours here: a gap is not a
    change of cadence, and the partly covered hour after it is scaled up. Causal (an hour's
    figure depends on it and the hours before), except a meter's first hours with readings,
    which take the most any of its first ``CADENCE_SETTLES_HOURS`` held (a series starting at
    :30 of a half-hourly meter: the first hour holds one reading of two)."""
    n = len(count)
    c = np.asarray(count, dtype=np.int64)
    if n == 0:
        return c
    if spacing is not None:
        c = np.maximum(c, _readings_an_hour(np.asarray(spacing, dtype=np.float64)))
    meter = np.asarray(meter)
    idx = np.arange(n)
    first = np.ones(n, dtype=bool)
    first[1:] = meter[1:] != meter[:-1]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = ~first[1:] & (c[1:] == c[:-1])
    run = idx - np.maximum.accumulate(np.where(repeat, 0, idx)) + 1
    # the running maximum restarts at the meter's first hour and where its count has settled
    segment = np.cumsum(first | (run == CADENCE_SETTLES_HOURS)) - 1
    base = int(c.max()) + 1
    per = np.maximum.accumulate(segment * base + c) - segment * base
    starts = np.flatnonzero(first)
    rank = idx - starts[np.cumsum(first) - 1]
    early = rank < CADENCE_SETTLES_HOURS
    head = np.maximum.reduceat(np.where(early, c, 0), starts)
    per[early] = head[np.cumsum(first)[early] - 1]
    return per


def _local(at: datetime | None) -> pd.Timestamp | None:
    """A time as naive local (Asia/Shanghai) time; one with an offset is converted."""
    if at is None:
        return None
    at = pd.Timestamp(at)
    return at.tz_convert(LOCAL_TZ_NAME).tz_localize(None) if at.tzinfo is not None else at


_USUAL = np.asarray(USUAL_INTERVALS_MINUTES, dtype=np.float64)
# the geometric midpoints between usual intervals: nearest on a log scale, as ``snap_interval``
_USUAL_BOUNDS = np.sqrt(_USUAL[1:] * _USUAL[:-1])


def _readings_an_hour(spacing: np.ndarray) -> np.ndarray:
    """Minutes between readings → readings an hour at the usual interval nearest (on a log
    scale, as ``snap_interval``); 0 where the spacing is unknown or longer than hourly."""
    ok = (spacing > 0) & (spacing <= LONGEST_HOURLY_SPACING_MINUTES)
    per = (60 // _USUAL).astype(np.int64)[np.searchsorted(_USUAL_BOUNDS, np.where(ok, spacing, 60.0))]
    return np.where(ok, per, 0)


def hourly_matrix(readings: pd.DataFrame, as_of: datetime | None = None):
    """Long readings → (meter_ids, X[meter, hour] kWh/h float32 with NaN gaps, t0, n_hours).

    Column j is the hour [t0 + j h, t0 + (j+1) h); t0 is a local midnight. A partly covered
    hour is scaled up from the readings present, by the meter's cadence at that hour
    (``readings_per_hour``; a gap is never a zero). Only hours ending at or before ``as_of``
    are kept.
    """
    df = readings.loc[:, ["meter_id", "ts", "kwh"]].copy()
    if not pd.api.types.is_datetime64_any_dtype(df["ts"]):
        # text read as ingestion reads it: one column may mix "+08:00", "Z" and local times
        df["ts"] = parse_reading_times(df[["ts"]]).ts.to_numpy()
    elif getattr(df["ts"].dt, "tz", None) is not None:
        # an offset (+08:00, Z) is an instant: the households' local time, as ingestion converts it
        # (dropping it would read UTC readings eight hours early)
        df["ts"] = df["ts"].dt.tz_convert(LOCAL_TZ_NAME).dt.tz_localize(None)
    as_of = _local(as_of)
    df["kwh"] = pd.to_numeric(df["kwh"], errors="coerce")
    df = df[np.isfinite(df["kwh"].to_numpy(dtype=float)) & (df["kwh"] >= 0) & df["ts"].notna()]
    if as_of is not None:
        df = df[df["ts"] <= pd.Timestamp(as_of)]
    df["meter_id"] = df["meter_id"].astype(str)
    if df.empty:
        return np.array([], dtype=object), np.zeros((0, 0), np.float32), None, 0
    # a reading sent twice counts as the flow's ingestion stores it: the first
    df = first_of_each_reading(df)
    meters = np.array(sorted(df["meter_id"].unique()), dtype=object)
    # A reading belongs to the hour its interval ends in; a meter clock a few seconds off (at most
    # a tenth of the interval) does not move it into the next hour. Only this jitter allowance
    # takes the meter's interval as ingestion infers it (a low quantile of its spacings, snapped
    # to a divisor of an hour; an hour for anything coarser or unknown); the scaling of partly
    # covered hours follows the meter's cadence hour by hour (``readings_per_hour``).
    intervals = infer_interval_minutes(df)
    interval = df["meter_id"].map({m: min(intervals.get(m, 60), 60) for m in meters}).to_numpy(dtype=float)
    df["hour_end"] = (df["ts"] - pd.to_timedelta(grid_tolerance_seconds(interval), unit="s")).dt.ceil("h")
    # each reading's spacing from the meter's reading before (as the store tallies it for the flow)
    df = df.sort_values(["meter_id", "ts"], kind="stable")
    df["spacing"] = df["ts"].diff().dt.total_seconds().to_numpy() / 60.0
    df.loc[df["meter_id"].ne(df["meter_id"].shift()).to_numpy(), "spacing"] = np.nan
    g = (df.groupby(["meter_id", "hour_end"], sort=True)
         .agg(sum=("kwh", "sum"), count=("kwh", "count"), spacing=("spacing", "min")).reset_index())
    ph = readings_per_hour(pd.Index(meters).get_indexer(g["meter_id"]), g["count"].to_numpy(),
                           g["spacing"].to_numpy()).astype(float)
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



def _day_number(t0) -> int:
    """Calendar day number of ``t0``'s local date (days since 1970-01-01)."""
    return int((pd.Timestamp(t0).tz_localize(None).normalize() - pd.Timestamp(0)).days)



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
