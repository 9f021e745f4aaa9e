"""The tests that raise episodes (episode dicts on the hour grid): the silence and night
CUSUMs with their self-calibrated alarm levels, meter offline, the whole-day ratio tests
(sustained drop, high use), the hourly drop and flatness CUSUMs, the missed morning, one
episode per event, and the recurrence gate with the detections it keeps between runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sibifang.detectors.config import _HOUR, DetectorConfig
from sibifang.detectors.routine import _nanmedian_rows


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
