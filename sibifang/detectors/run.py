"""The public entry points and the run that ties the modules together: ``detect`` (long
readings), ``detect_matrix`` (a dense matrix, optionally against stored profiles) and
``fit_profiles`` (the daily profile for the incremental run), judging blocks of meters on
worker threads."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pandas as pd

from sibifang.detectors.alarms import (_cusum_episodes, _drop_covered_mornings, _gate_recurrent, _level_ratio,
                                       _level_sigma, _morning_episodes, _offline_episodes, _one_per_event,
                                       _past_detections, _ratio_episodes, _recent_detections, _scan)
from sibifang.detectors.config import DetectorConfig, RoutineProfiles
from sibifang.detectors.evidence import _empty, _finish, _merge_incidents, _rows
from sibifang.detectors.hourly import _absence_mask, _day_number, _to_hourly, hourly_matrix
from sibifang.detectors.routine import (_activity_per_hour, _flat_llr, _flat_samples, _level_llr, _level_samples,
                                        _morning_deadlines, _noise_delta, _profiles_from_fixed, _rolling_profiles)


def _map_chunks(fn, M: int, T: int, cfg: DetectorConfig) -> list:
    """``fn`` over blocks of meters (of ``T`` hours each), on ``cfg.workers`` threads, in order."""
    size = max(1, min(cfg.chunk_meters, cfg.block_meter_hours // max(T, 1)))
    blocks = [slice(c0, min(M, c0 + size)) for c0 in range(0, M, size)]
    # the CPUs this process may run on (a container or a pinned worker may get fewer than the host's)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cfg.workers or cpus, len(blocks))
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
                           recent_detections=None if p.recent_detections is None else p.recent_detections[pos],
                           p_all=None if p.p_all is None else p.p_all[pos])



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
        out["pall"] = P["p_all"][:, -1]
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
                           level_sigma=cat("lsig"), recent_detections=cat("recent"), p_all=cat("pall"))
