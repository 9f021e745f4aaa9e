"""The public entry points and the run that ties the modules together: ``detect`` (long
readings), ``detect_matrix`` (a dense matrix, optionally against stored profiles) and
``fit_profiles`` (the daily profile for the incremental run), judging blocks of meters on
worker threads."""

from __future__ import annotations

import copy
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pandas as pd

from sibifang.detectors.alarms import (_cusum_episodes, _drop_covered_mornings, _gate_recurrent, _level_ratio,
                                       _level_sigma, _morning_episodes, _offline_episodes, _one_per_event,
                                       _NO_RUN, _past_detections, _ratio_episodes, _recent_detections, _scan)
from sibifang.detectors.config import AlarmCheckpoint, DetectorConfig, RoutineProfiles
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


def _source(e: dict) -> str:
    """Which test raised an episode (the incremental run brings each carried one's end up to
    date from that test's carried state)."""
    if "j" in e:
        return "cusum"
    return {"inactivity": "scan", "night_activity": "scan", "meter_offline": "offline",
            "missing_morning_routine": "morning"}.get(e["kind"], "ratio")


def _alarms(Xc, seen, A, valid, gap_ok, P, wake, deadline, cfg, n_hours, t_from=0, carry=None, past=None):
    """Every test over hours [t_from, n_hours) of one block of meters.

    Returns (the episodes raised there, the carried open ones with their ends brought up to
    date, the state at ``n_hours``). ``carry`` (block-local, on this matrix's hour grid) is
    the state at ``t_from``; without it the tests start from nothing at hour 0."""
    c = carry or {}
    kept_before = c.get("kept", [])
    eps, scan_st = _scan(Xc, A, valid, gap_ok, P, cfg, n_hours, t_from, c.get("scan"))
    ceps, cus_st = _cusum_episodes([("inactivity", P["flat_llr"], cfg.flat_threshold),
                                    ("sustained_drop", P["drop_llr"], cfg.drop_threshold,
                                     cfg.drop_threshold * cfg.drop_ceiling)],
                                   Xc, valid, gap_ok, P, n_hours, cfg, t_from, c.get("cusum"))
    reps, rends, rtails = _ratio_episodes(Xc, valid, gap_ok, P, n_hours, cfg, t_from, c.get("ratio"))
    oeps, oends, off_st = _offline_episodes(seen, gap_ok, n_hours, cfg, t_from, c.get("offline"))
    av = A & valid
    for e in kept_before:               # the scan and the CUSUMs closed theirs in place
        src = _source(e)
        if src == "ratio" and (e["i"], e["kind"]) in rends:
            e["end"] = rends[(e["i"], e["kind"])]
        elif src == "offline" and e["i"] in oends:
            e["end"] = oends[e["i"]]
        elif src == "morning":
            after = np.nonzero(av[e["i"], t_from:n_hours])[0]
            e["end"] = int(t_from + after[0]) if len(after) else None
    eps = [e for e in _one_per_event(kept_before + eps + ceps + reps) if e["det"] >= t_from] + oeps
    silent = [dict(kind="inactivity", i=i, det=int(d)) for i, d in enumerate(c.get("silent", ())) if d != _NO_RUN]
    eps += _drop_covered_mornings(_morning_episodes(A, valid, gap_ok, P, wake, deadline, n_hours, cfg, t_from),
                                  eps + kept_before + silent, av)
    _gate_recurrent(eps, cfg, past)
    # the latest inactivity detection with no activity since (it still covers a missed morning)
    last = np.full(Xc.shape[0], _NO_RUN, np.int64)
    for e in silent + kept_before + eps:
        if e["kind"] == "inactivity":
            last[e["i"]] = max(last[e["i"]], e["det"])
    for i in np.nonzero(last != _NO_RUN)[0]:
        if av[i, max(last[i] + 1, 0):n_hours].any():
            last[i] = _NO_RUN
    state = dict(scan=scan_st, cusum=cus_st, ratio=rtails, offline=off_st, silent=last)
    return eps, kept_before, state


def _detect_hourly(meters, X, t0, n_hours, absent, cfg: DetectorConfig, profiles: RoutineProfiles | None = None):
    """Core: hourly matrix → list of row dicts, judged in blocks of meters (bounded memory) on
    worker threads. With ``profiles`` (and their checkpoint), the matrix starts the day before
    the checkpoint and the hours from the checkpoint on are judged, resuming from it."""
    M, T = X.shape
    if M == 0 or n_hours <= 0:
        return []
    D = T // 24
    days = pd.Timestamp(t0) + pd.to_timedelta(np.arange(D), unit="D")
    weekend = np.asarray(days.day_of_week >= 5)
    ck = None if profiles is None else profiles.checkpoint
    t_from = 0 if ck is None else 24

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
            if ck is not None:              # the day before the checkpoint as the replay saw it
                cs = ck.state
                A[:, :24] = cs["A_prev"][sl]
                P["level"] = P["level"].copy()
                P["level"][:, 0] = cs["level_prev"][sl]
                P["mean"] = P["mean"].copy()
                P["mean"][:, 0] = cs["mean_prev"][sl]
                wake[:, 0] = cs["wake_prev"][sl]
                deadline[:, 0] = cs["deadline_prev"][sl]
        P["level_llr"], P["drop_llr"] = _level_llr(bins, dark_s, slot_s, sstats, cfg)
        P["flat_llr"] = _flat_llr(fbins, flat_s, flat_n, cfg)
        del bins, dark_s, slot_s, sstats, fbins, flat_s, flat_n
        past = None
        if profiles is not None and profiles.recent_detections is not None:
            past = _past_detections(profiles.recent_detections[sl], cfg, t0)
        carry, prior = (None, []) if ck is None else _block_carry(ck, sl, t_from, meters)
        eps, kept_before, _ = _alarms(Xc, ~np.isnan(X[sl]), A, valid, gap_ok, P, wake, deadline, cfg, n_hours,
                                      t_from, carry, past)
        t0n = np.datetime64(pd.Timestamp(t0).to_datetime64(), "ns")
        for e in kept_before:           # still open at the checkpoint: reported again with its end,
            # which the incidents below must see (an alert that ended does not swallow a later one)
            e["row"]["end"] = pd.NaT if e["end"] is None else pd.Timestamp(t0n + np.timedelta64(int(e["end"]), "h"))
        rows = _merge_incidents(_rows(eps, meters[sl], Xc, A, P, t0, n_hours, delta_md), cfg, prior)
        return [e["row"] for e in kept_before] + rows

    return [row for rows in _map_chunks(judge, M, T, cfg) for row in rows]


def _block_carry(ck: AlarmCheckpoint, sl: slice, t_from: int, meters) -> tuple[dict, list]:
    """The checkpoint's part for the meters in ``sl``, on the block's own meter indices and
    on the hour grid of a matrix in which the checkpoint is hour ``t_from``."""
    cs = ck.state
    Mb = sl.stop - sl.start
    shift = lambda a: np.where(a == _NO_RUN, _NO_RUN, a + t_from)  # noqa: E731
    scan = {k[5:]: v[sl] for k, v in cs.items() if k.startswith("scan.")}
    scan["run_start"], scan["n_start"] = shift(scan["run_start"]), shift(scan["n_start"])
    cusum = {k[6:]: np.moveaxis(v[sl], 0, 1).reshape((-1,) + v.shape[2:]) for k, v in cs.items()
             if k.startswith("cusum.")}
    cusum["start"] = shift(cusum["start"])
    opened = _moved(ck.open, {i: i - sl.start for i in range(sl.start, sl.stop)}, t_from, Mb)
    names = set(meters[sl])
    prior = [r for r in ck.prior if r["meter_id"] in names]
    # the rows of the open ones come with them (copied: their ends move in this run)
    prior += [e["row"] for e in opened["kept"] if e["row"]["severity"] != "low"]
    carry = dict(scan=dict(scan, open=opened["scan"]), cusum=dict(cusum, open=opened["cusum"]),
                 ratio=cs["ratio"][sl].T.copy(), offline=dict(seen=cs["off.seen"][sl], len=cs["off.len"][sl]),
                 silent=shift(cs["silent"][sl]), kept=opened["kept"])
    return carry, prior


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
    (from ``fit_profiles`` on the trailing weeks up to a midnight, stored once a day) the
    hours from that midnight on are judged against them, resuming every alarm from the
    profiles' checkpoint — the hourly incremental run. The matrix then has to start at or
    before the day before that midnight (earlier columns are skipped); it reports the episodes
    raised since and those still open at the checkpoint, with their ends, as the full replay
    of the whole history would.
    """
    cfg = config or DetectorConfig()
    t0 = pd.Timestamp(t0)
    meters = np.asarray(meter_ids, dtype=object)
    X, t0h, n_hours = _to_hourly(np.asarray(kwh, dtype=np.float32), t0, int(interval_minutes), cfg.chunk_meters)
    if profiles is not None:
        pos = pd.Index(profiles.meter_ids).get_indexer(meters)
        if (pos < 0).any():
            raise ValueError("profiles lack some meters")
        profiles = _subset(profiles, pos)
        if profiles.checkpoint is not None:
            # resume at the checkpoint, with the day before it as context (activity, 24-h use)
            begin = profiles.checkpoint.at - pd.Timedelta(days=1)
            skip = int((begin - t0h) / pd.Timedelta(hours=1))
            if skip < 0 or skip % 24:
                raise ValueError(f"the incremental run needs the readings from {begin} (the day before the "
                                 f"profile's checkpoint) on; they start at {t0h}")
            X, t0h, n_hours = X[:, skip:], t0h + pd.Timedelta(hours=skip), n_hours - skip
            if n_hours < 24:
                return _empty()
            if n_hours > 48:
                raise ValueError(f"the profiles serve the day from {profiles.checkpoint.at} only: fit them again "
                                 "at the next midnight")
    absent = _absence_mask(meters, t0h, X.shape[1], absences)
    return _finish(_detect_hourly(meters, X, t0h, n_hours, absent, cfg, profiles))



def _moved(opened: dict, meter_of: dict, hours: int = 0, blocks: int = 0) -> dict:
    """A copy of a checkpoint's open episodes (``{list name: [episode dict]}``) of the meters
    in ``meter_of`` (old meter index → new), their hours moved by ``hours``. An episode held in
    two lists (a kept one the scan also holds) stays one object, so an end set through one is
    seen through the other. ``blocks`` (the meters of a block) turns a stored CUSUM row's test
    index ``k`` into its row ``j`` there."""
    out = copy.deepcopy({name: [e for e in v if e["i"] in meter_of] for name, v in opened.items()})
    for e in {id(e): e for v in out.values() for e in v}.values():
        e["i"] = meter_of[e["i"]]
        for k in ("start", "det", "end"):
            if e.get(k) is not None:
                e[k] += hours
        if blocks and "k" in e:
            e["j"] = e["k"] * blocks + e["i"]
    return out


def _subset(p: RoutineProfiles, pos) -> RoutineProfiles:
    """The profiles (and checkpoint) of the meters at ``pos``, in that order."""
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    out = {k: (v[pos] if isinstance(v, np.ndarray) else v) for k, v in fields.items()}
    ck = p.checkpoint
    if ck is not None:
        opened = _moved(ck.open, {int(old): k for k, old in enumerate(pos)})
        names = set(p.meter_ids[pos])
        out["checkpoint"] = AlarmCheckpoint(at=ck.at, state={k: v[pos] for k, v in ck.state.items()}, open=opened,
                                            prior=[r for r in ck.prior if r["meter_id"] in names])
    return RoutineProfiles(**out)



def fit_profiles(kwh: np.ndarray, meter_ids, t0: datetime, interval_minutes: int,
                 config: DetectorConfig | None = None, absences: pd.DataFrame | None = None,
                 episodes: list | None = None) -> RoutineProfiles:
    """Learn each meter's routine from the trailing weeks in ``kwh`` (stored once a day) and
    replay them, keeping where every alarm stood at their end (the checkpoint).

    ``kwh`` should end at a midnight; the profile describes the day after it. Pass it to
    ``detect_matrix`` with the readings from the day before that midnight on, for the hourly
    incremental run. The replay's own episodes (as ``detect_matrix`` without profiles would
    report them over the same readings) are appended to ``episodes`` when it is given.
    """
    cfg = config or DetectorConfig()
    t0 = pd.Timestamp(t0)
    meters = np.asarray(meter_ids, dtype=object)
    X, t0h, n_hours = _to_hourly(np.asarray(kwh, dtype=np.float32), t0, int(interval_minutes), cfg.chunk_meters)
    D0 = n_hours // 24
    T_hist = D0 * 24
    X = X[:, :T_hist]
    # one extra empty day: its causal profile is "everything before it"
    X = np.concatenate([X, np.full((X.shape[0], 24), np.nan, np.float32)], axis=1)
    D = D0 + 1
    days = t0h + pd.to_timedelta(np.arange(D), unit="D")
    weekend = np.asarray(days.day_of_week >= 5)
    M = len(meters)
    absent = _absence_mask(meters, t0h, X.shape[1], absences)
    at = t0h + pd.Timedelta(hours=T_hist)

    def learn(sl: slice) -> dict[str, np.ndarray]:
        out = {}
        Xc = X[sl]
        seen = ~np.isnan(Xc)
        gap_ok = np.ones_like(seen) if absent is None else ~absent[sl]
        valid = seen & gap_ok
        Xc = np.where(valid, Xc, np.nan).astype(np.float32)
        delta_md = _noise_delta(Xc, cfg, _day_number(t0h))
        A = _activity_per_hour(Xc, np.repeat(delta_md, 24, axis=1), cfg.floor_hours)
        # the profile serves the day after the history only (the hourly runs of that day), so it
        # is that day's, of that day's type: one pass, as the replay computes it
        P = _rolling_profiles(Xc, A, valid, weekend, cfg, delta_md)
        wake, deadline, _ = _morning_deadlines(A, valid, P, cfg)
        bins, dark_s, slot_s, sstats = _level_samples(Xc, valid, cfg)
        P["level_llr"], P["drop_llr"] = _level_llr(bins, dark_s, slot_s, sstats, cfg)
        fbins, flat_s, flat_n = _flat_samples(Xc, valid, cfg)
        P["flat_llr"] = _flat_llr(fbins, flat_s, flat_n, cfg)
        out["fsample"] = np.ascontiguousarray(flat_s[:, D - 1])
        # replay the history as detect does: the self-calibrated alarm levels for the next day,
        # the household's own past episodes of the recurrence kinds (recurrence gate), and
        # where every alarm stands at its end (the checkpoint)
        eps, _, st = _alarms(Xc, seen, A, valid, gap_ok, P, wake, deadline, cfg, T_hist)
        rows = _merge_incidents(_rows(eps, meters[sl], Xc, A, P, t0h, T_hist, delta_md), cfg)
        out["rows"] = rows
        out["recent"] = _recent_detections(eps, Xc.shape[0], cfg, t0h)
        out["thr"], out["nthr"], out["thr2"] = P["last_thr"]
        # the checkpoint: indices on the profile's meters, hours counted from `at`
        rel = lambda a: np.where(a == _NO_RUN, _NO_RUN, a - T_hist)  # noqa: E731
        sc = {k: v for k, v in st["scan"].items() if k != "open"}
        sc["run_start"], sc["n_start"] = rel(sc["run_start"]), rel(sc["n_start"])
        cu = {k: v for k, v in st["cusum"].items() if k != "open"}
        cu["start"] = rel(cu["start"])
        Mb = Xc.shape[0]
        state = {f"scan.{k}": v for k, v in sc.items()}
        state.update({f"cusum.{k}": np.moveaxis(v.reshape((2, Mb) + v.shape[1:]), 0, 1) for k, v in cu.items()})
        state.update({"ratio": st["ratio"].T.copy(), "off.seen": st["offline"]["seen"],
                      "off.len": st["offline"]["len"], "silent": rel(st["silent"]),
                      "A_prev": A[:, T_hist - 24:T_hist].copy() if T_hist else np.zeros((Mb, 24), bool),
                      "level_prev": P["level"][:, D0 - 1].copy() if D0 else np.full((Mb, 24), np.nan, np.float32),
                      "mean_prev": P["mean"][:, D0 - 1].copy() if D0 else np.full((Mb, 24), np.nan, np.float32),
                      "wake_prev": wake[:, D0 - 1].copy() if D0 else np.zeros(Mb, wake.dtype),
                      "deadline_prev": deadline[:, D0 - 1].copy() if D0 else np.full(Mb, np.nan, np.float32)})
        out["state"] = state
        kept = [e for e in eps if e["end"] is None]
        for e, r in zip(eps, rows):
            if e["end"] is None:
                e["row"] = r
        for e in st["cusum"]["open"]:      # stored by test, not by this block's row
            e["k"] = e.pop("j") // Mb
        opened = {"scan": st["scan"]["open"], "cusum": st["cusum"]["open"], "kept": kept}
        out["open"] = _moved(opened, {i: i + sl.start for i in range(Mb)}, -T_hist)
        # every alerted one that is over: a later episode may belong to its incident, and whether
        # a critical one escalates an incident depends on all the household's alerts so far
        out["prior"] = [r for e, r in zip(eps, rows) if r["severity"] != "low" and e["end"] is not None]
        # the samples behind the day after the history (the appended empty day, D - 1)
        out["dhist"] = np.ascontiguousarray(dark_s[:, D - 1])
        out["ssample"] = np.ascontiguousarray(slot_s[:, D - 1])
        out["sstats"] = np.ascontiguousarray(sstats[:, D - 1])
        out["dark"] = P["dark"][:, -1]
        out["lsig"] = _level_sigma(_level_ratio(Xc, valid, gap_ok, P, cfg)[0], cfg)[:, -1]
        # (M, daytype, 24) as stored: both day types hold that day's
        for k in ("p", "c", "mean", "level"):
            out[k] = np.repeat(P[k][:, -1][:, None], 2, axis=1)
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
    if episodes is not None:
        episodes.extend(r for part in parts for r in part["rows"])
    checkpoint = AlarmCheckpoint(
        at=at, state={k: np.concatenate([part["state"][k] for part in parts], axis=0) for k in parts[0]["state"]},
        open={k: [e for part in parts for e in part["open"][k]] for k in ("scan", "cusum", "kept")},
        prior=[r for part in parts for r in part["prior"]])
    return RoutineProfiles(meter_ids=meters, p_active=cat("p"), p_continue=cat("c"), mean_kwh=cat("mean"),
                           delta=cat("delta"), log_pstar=cat("lp"), log_pstar_night=cat("lpn"),
                           standby=cat("sb"), wake_hour=cat("wake"), morning_deadline=cat("dl"),
                           history_days=cat("hd"), silence_threshold=cat("thr"), night_threshold=cat("nthr"),
                           level_kwh=cat("level"), low_threshold=cat("thr2"), dark_noise=cat("dark"),
                           dark_hist=cat("dhist"), slot_sample=cat("ssample"), slot_stats=cat("sstats"),
                           flat_sample=cat("fsample"),
                           level_sigma=cat("lsig"), recent_detections=cat("recent"), p_all=cat("pall"),
                           checkpoint=checkpoint)
