"""The tests that raise episodes (episode dicts on the hour grid): the silence and night
CUSUMs with their self-calibrated alarm levels, meter offline, the whole-day ratio tests
(sustained drop, high use), the hourly drop and flatness CUSUMs, the missed morning, one
episode per event, and the recurrence gate with the detections it keeps between runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sibifang.detectors.config import _HOUR, DetectorConfig
from sibifang.detectors.routine import _nanmedian_rows


# The running state each test carries from one hour to the next: name → (dtype, fill, shape
# after the meter axis). Hour indices (``*start``) are _NO_RUN when no run is under way (a
# run carried into an incremental run may have started before its matrix: negative).
_NO_RUN = -(2 ** 62)
_SCAN_STATE = {"S": (np.float32, 0, ()), "S2": (np.float32, 0, ()), "smax": (np.float32, 0, (2,)),
               "NL": (np.float32, 0, ()), "run_start": (np.int64, _NO_RUN, ()), "alarmed": (bool, False, ()),
               "crossed": (bool, False, ()), "crossed2": (bool, False, ()), "n_start": (np.int64, _NO_RUN, ()),
               "n_alarmed": (bool, False, ()), "n_crossed": (bool, False, ()),
               "pre": (np.float64, 0, (4,)), "npre": (np.float64, 0, (4,))}
_CUSUM_STATE = {"S": (np.float32, 0, ()), "start": (np.int64, _NO_RUN, ()), "alarmed": (bool, False, ()),
                "pre": (np.float64, 0, (4,))}


def _carry_in(spec: dict, M: int, carry: dict | None) -> dict:
    """Fresh running state for ``M`` rows, or a copy of the carried one (never mutated: a
    stored checkpoint serves every hourly run of its day)."""
    if carry is None:
        return {k: np.full((M,) + shape, fill, dtype) for k, (dtype, fill, shape) in spec.items()}
    return {k: np.array(carry[k], dtype=dtype, copy=True) for k, (dtype, _, _) in spec.items()}


def _span_sums(V, rows, a, b):
    """Sum and count of the non-NaN values of ``V[rows[k], a[k]:b[k]]`` for every k, from one
    cumulative sum per row of ``V`` used (not one per span: a meter with years of readings has
    hundreds of episodes)."""
    u, inv = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    W = V[u]
    ok = ~np.isnan(W)
    c = np.zeros((len(u), W.shape[1] + 1)); np.cumsum(np.where(ok, W, 0), axis=1, dtype=np.float64, out=c[:, 1:])
    n = np.zeros((len(u), W.shape[1] + 1), np.int64); np.cumsum(ok, axis=1, out=n[:, 1:])
    return c[inv, b] - c[inv, a], n[inv, b] - n[inv, a]


def _pre_sums(X, mean, start, t_from, T_eff, pre_in):
    """[Σ use, hours with use, Σ expected, hours with expected] over [start, T_eff) of each
    row with a run under way, the part before ``t_from`` taken from ``pre_in``: what an
    episode raised later from that run reports over its whole span."""
    out = np.zeros((len(start), 4), np.float64)
    rows = np.nonzero(start != _NO_RUN)[0]
    if not len(rows):
        return out
    a = np.maximum(start[rows], t_from)
    for k, V in enumerate((X, mean)):
        out[rows, 2 * k], out[rows, 2 * k + 1] = _span_sums(V[:, :T_eff], rows, a, T_eff)
    carried = start[rows] < t_from
    out[rows[carried]] += pre_in[rows[carried]]
    return out


def _breaks(valid, gap_ok, cfg) -> np.ndarray:
    """Hours (M, T) that reset a running CUSUM: a long gap (offline) or an absence ends an
    episode's evidence; a short gap only pauses it."""
    idx = np.arange(valid.shape[1])
    last_valid = np.maximum.accumulate(np.where(valid, idx[None, :], -10**6), axis=1)
    return (~valid & (idx[None, :] - last_valid >= cfg.offline_hours)) | ~gap_ok


def _scan(X, A, valid, gap_ok, P, cfg, T_eff, t_from=0, carry=None):
    """Walk hours [t_from, T_eff) in time order (vectorised over meters), emit episode dicts.

    Everything that does not depend on the running state is precomputed as (M, T) arrays so
    the per-hour loop does a handful of array operations. Returns (episode dicts with hour
    indices, the running state at T_eff). ``carry`` is that state as it stood at ``t_from``
    (the incremental run resumes where the daily replay stopped; see ``_carry_in``).
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
    cross2 = np.zeros((M, D + 1), np.float32)
    # completed excursions that passed the reference level: count and summed excess, by day
    ncomp = np.zeros((2, M, D + 1), np.float32)
    exsum = np.zeros((2, M, D + 1), np.float32)
    st = _carry_in(_SCAN_STATE, M, carry)
    S, S2, smax, NL = st["S"], st["S2"], st["smax"].T, st["NL"]      # smax: a (2, M) view
    run_start, alarmed, crossed, crossed2 = st["run_start"], st["alarmed"], st["crossed"], st["crossed2"]
    n_start, n_alarmed, n_crossed = st["n_start"], st["n_alarmed"], st["n_crossed"]
    pre, npre = st["pre"], st["npre"]
    open_sil = {e["i"]: e for e in (carry or {}).get("open", ()) if e["kind"] == "inactivity"}
    open_night = {e["i"]: e for e in (carry or {}).get("open", ()) if e["kind"] == "night_activity"}
    thr = np.zeros(M, np.float32)
    thr2 = np.zeros(M, np.float32)
    nthr = np.zeros(M, np.float32)

    def thresholds(d):
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
        nk = (ncross[:, lo:d].sum(axis=1) + 1.0) / (cfg.night_calibration_p_ref * hist + 1.0)
        out = (ths[0].astype(np.float32), (P["log_pstar_night"][:, d] - np.log(np.maximum(nk, 1.0))).astype(np.float32),
               ths[1].astype(np.float32))
        if "fixed_thr" in P:          # incremental run: thresholds stored with the profile
            out = P["fixed_thr"]
        P["last_thr"] = out
        return out

    for t in range(t_from, T_eff):
        d = t // 24
        # An alerted silence is over at the first activity after its detection, and known to be
        # then (causal: a replay cut at any later hour sees the same end).
        for i in [i for i in open_sil if av[i, t]]:
            open_sil.pop(i)["end"] = t
        if t % 24 == 0 or t == t_from:
            thr, nthr, thr2 = thresholds(d)
        S = np.maximum(S + llr[:, t], 0.0)
        S[brk[:, t]] = 0.0
        S2 = np.maximum(S2 + llr2[:, t], 0.0)
        S2[brk[:, t]] = 0.0
        pos = (S > 0) | (S2 > 0)
        np.maximum(smax[0], S, out=smax[0])
        np.maximum(smax[1], S2, out=smax[1])
        ended = ~pos & (run_start != _NO_RUN)
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
            run_start[ended] = _NO_RUN
            alarmed &= ~ended
            crossed &= ~ended
            crossed2 &= ~ended
        new = pos & (run_start == _NO_RUN)
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
                if run_start[i] < t_from:
                    e["pre"] = (t_from, pre[i].copy())
                eps.append(e)
                open_sil[i] = e
            alarmed |= fire

        na = nact[:, t]
        NL = (NL + nl[:, t]) * nactf[:, t]
        nend = ~na & (n_start != _NO_RUN)
        if nend.any():
            for i in np.nonzero(nend & n_alarmed)[0]:
                open_night.pop(i)["end"] = t
            n_start[nend] = _NO_RUN
            n_alarmed &= ~nend
            n_crossed &= ~nend
        n_start[na & (n_start == _NO_RUN)] = t
        nx = na & ~n_crossed & (NL < nlref)
        ncross[:, d] += nx
        n_crossed |= nx
        nfire = na & ~n_alarmed & wv[:, t] & (NL < nthr)
        if nfire.any():
            for i in np.nonzero(nfire)[0]:
                e = dict(kind="night_activity", i=i, start=int(n_start[i]), det=t, end=None,
                         score=float(-NL[i] / np.log(10)))
                if n_start[i] < t_from:
                    e["pre"] = (t_from, npre[i].copy())
                eps.append(e)
                open_night[i] = e
            n_alarmed |= nfire
    if T_eff % 24 == 0 and T_eff // 24 < P["hist_days"].shape[1]:
        thresholds(T_eff // 24)         # the next day's (fit_profiles stores them)
    mean = P["mean"].reshape(M, -1)
    st["pre"] = _pre_sums(X, mean, run_start, t_from, T_eff, pre)
    st["npre"] = _pre_sums(X, mean, n_start, t_from, T_eff, npre)
    st.update(S=S, S2=S2, NL=NL, open=list(open_sil.values()) + list(open_night.values()))
    return eps, st


def _runs(cond, t_from, carried):
    """Runs of True in ``cond[:, t_from:]`` as (row, first, end) (``end`` exclusive, None while
    still running); a run under way at ``t_from`` began ``carried[row]`` hours earlier. Also
    returns how long each row's run has lasted at the end (0: none)."""
    M, T = cond.shape
    c = cond[:, t_from:]
    # a carried run that stops right at t_from ends there
    out = [(int(i), int(t_from - carried[i]), t_from) for i in np.nonzero((carried > 0) & ~c[:, 0])[0]] \
        if c.shape[1] else []
    for i in np.nonzero(c.any(axis=1))[0]:
        dm = np.diff(np.concatenate([[0], c[i].astype(np.int8), [0]]))
        for a, b in zip(np.nonzero(dm == 1)[0] + t_from, np.nonzero(dm == -1)[0] + t_from):
            first = a - carried[i] if a == t_from else a
            out.append((i, int(first), int(b) if b < T else None))
    if not c.shape[1]:
        return out, np.asarray(carried, np.int64).copy()
    # trailing run length: hours since the last False (the whole window: plus the carried run)
    last_false = np.where(~c.all(axis=1), c.shape[1] - 1 - np.argmax(~c[:, ::-1], axis=1), -1)
    tail = c.shape[1] - 1 - last_false
    tail = np.where(last_false < 0, tail + carried, tail)
    return out, tail.astype(np.int64)


def _offline_episodes(valid, gap_ok, T_eff, cfg, t_from=0, carry=None):
    """No data for ``offline_hours`` or more, after the meter was first seen. Returns
    (episodes, ends of the carried open ones {meter: end}, state at T_eff)."""
    eps = []
    V = valid[:, :T_eff]
    seen_before = np.zeros(V.shape[0], bool) if carry is None else carry["seen"]
    seen = np.maximum.accumulate(V, axis=1) | seen_before[:, None]
    miss = ~V & seen & gap_ok[:, :T_eff]
    carried = np.zeros(V.shape[0], np.int64) if carry is None else carry["len"]
    runs, tail = _runs(miss, t_from, carried)
    ends = {}
    for i, a, b in runs:
        det = a + cfg.offline_hours - 1
        if (b if b is not None else T_eff) - a < cfg.offline_hours:
            continue
        if det < t_from:            # raised before: only its end is news
            ends[i] = b
            continue
        eps.append(dict(kind="meter_offline", i=i, start=a, det=det, end=b, score=float(cfg.offline_hours)))
    return eps, ends, dict(seen=seen[:, -1] if T_eff else seen_before, len=tail)


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


def _ratio_episodes(X, valid, gap_ok, P, T_eff, cfg, t_from=0, carry=None):
    """Sustained drop and high use judged over whole days: trailing-24 h use against the
    routine's expectation held for ``level_sustain_hours``, the ratio's log judged against the
    household's own day-to-day spread (a drop below ``drop_design`` always counts). This
    catches the drops that the hourly CUSUM (_cusum_episodes) reads weakly: a household whose
    hours are either standby or busy, where half of a busy hour still looks like a busy hour.
    Returns (episodes, ends of the carried open ones {(meter, kind): end}, the hours each
    condition has held at T_eff, shape (2, M))."""
    M, T = X.shape
    Wh = cfg.level_window_hours
    r, Obs, E, N = _level_ratio(X, valid, gap_ok, P, cfg)
    sig = P["level_sig"] if "level_sig" in P else _level_sigma(r, cfg)
    zs = np.repeat(sig * cfg.level_z, 24, axis=1)[:, :T]
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.maximum(r, 1e-3))
    eps, ends, tails = [], {}, []
    S = cfg.level_sustain_hours
    zd = np.minimum(zs, -np.log(cfg.drop_design))
    for k, (kind, cond) in enumerate((("sustained_drop", (r < cfg.drop_design) & (lr < -zd)),
                                      ("high_use", (r > cfg.high_ratio) & (lr > zs)))):
        carried = np.zeros(M, np.int64) if carry is None else carry[k]
        runs, tail = _runs(cond[:, :T_eff], t_from, carried)
        tails.append(tail)
        for i, a, b in runs:
            if (b if b is not None else T_eff) - a < S:
                continue
            det = a + S - 1
            if det < t_from:        # raised before: only its end is news
                ends[(i, kind)] = b
                continue
            # it started with the first of the 24 hours behind the ratio (not before the data, in
            # a replay from the data's start)
            first = a - Wh + 1 if t_from else max(a - Wh + 1, 0)
            eps.append(dict(kind=kind, i=i, start=int(first), det=int(det),
                            end=b, score=float(abs(np.log(max(r[i, det], 1e-3)))),
                            ratio=float(r[i, det]), obs=float(Obs[i, det] / max(N[i, det], 1)),
                            exp=float(E[i, det] / max(N[i, det], 1))))
    return eps, ends, np.stack(tails)


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


def _cusum_episodes(tests, X, valid, gap_ok, P, T_eff, cfg, t_from=0, carry=None):
    """Page's CUSUM of hourly evidence (nats), for each ``(kind, evidence (M, T), threshold[,
    ceiling])`` of ``tests``: an episode of ``kind`` when it passes ``threshold``; it starts
    where the evidence began to pile up and ends when it is used up again. Once raised, its
    sum is held at ``ceiling`` at most (default: none), so that the episode ends within a
    bounded number of hours of the use coming back, not after as many hours as it was low
    (the CUSUM's inertia), and a later event is a new episode. A long gap or an absence
    resets it. Used for the sustained drop (用电骤降, ``P["drop_llr"]``) and for "nothing
    changes" (frozen-on, ``P["flat_llr"]``); the tests run stacked, in one pass over the hours
    [t_from, T_eff). Returns (episodes, the running state at T_eff; rows are test × meter)."""
    M, T = X.shape
    K = len(tests)
    L = np.concatenate([np.where(valid & gap_ok, t[1][:, :T], 0.0) for t in tests]).astype(np.float32)
    brk = np.tile(_breaks(valid, gap_ok, cfg), (K, 1))
    warm = np.tile(np.repeat(P["hist_days"] >= cfg.min_history_days, 24, axis=1), (K, 1))
    threshold = np.repeat([t[2] for t in tests], M).astype(np.float32)
    ceiling = np.repeat([t[3] if len(t) > 3 else np.inf for t in tests], M).astype(np.float32)
    expected = P["level"].reshape(M, -1)
    st = _carry_in(_CUSUM_STATE, K * M, carry)
    S, start, alarmed, pre = st["S"], st["start"], st["alarmed"], st["pre"]
    opened: dict[int, dict] = {e["j"]: e for e in (carry or {}).get("open", ())}
    eps = []
    for t in range(t_from, T_eff):
        S = np.maximum(S + L[:, t], 0.0)
        S[brk[:, t]] = 0.0
        done = (S <= 0) & (start != _NO_RUN)
        for j in np.nonzero(done & alarmed)[0]:
            opened.pop(j)["end"] = t
        start[done] = _NO_RUN
        alarmed &= ~done
        start[(S > 0) & (start == _NO_RUN)] = t
        fire = (S > threshold) & ~alarmed & warm[:, t]
        for j in np.nonzero(fire)[0]:
            i, s0 = j % M, int(start[j])
            a = max(s0, t_from)          # before t_from: the carried sums
            ok = valid[i, a:t + 1] & ~np.isnan(expected[i, a:t + 1])
            so = X[i, a:t + 1][ok].sum(dtype=np.float64)
            se, n = expected[i, a:t + 1][ok].sum(dtype=np.float64), int(ok.sum())
            if s0 < t_from:
                so, se, n = so + pre[j, 0], se + pre[j, 2], n + pre[j, 1]
            obs = float(so / n) if n else float("nan")
            exp = float(se / n) if n else float("nan")
            e = dict(kind=tests[j // M][0], i=i, j=int(j), start=s0, det=t, end=None, score=float(S[j] / np.log(10)),
                     ratio=obs / exp if exp > 0 else float("nan"), obs=obs, exp=exp)
            eps.append(e)
            opened[j] = e
        alarmed |= fire
        S = np.where(alarmed, np.minimum(S, ceiling), S)
    ok = np.tile(valid, (K, 1)) & ~np.isnan(np.tile(expected, (K, 1)))
    Xk = np.where(ok, np.tile(X, (K, 1)), np.nan)
    st.update(S=S, pre=_pre_sums(Xk, np.where(ok, np.tile(expected, (K, 1)), np.nan), start, t_from, T_eff, pre),
              open=list(opened.values()))
    return eps, st


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
        # (an episode carried into an incremental run was detected before its matrix: d < 0)
        covered = any(d <= m["det"] and not av[m["i"], max(d + 1, 0):m["det"] + 1].any()
                      for d in raised.get(m["i"], ()))
        if not covered:
            keep.append(m)
    return keep


def _morning_episodes(A, valid, gap_ok, P, wake, deadline, T_eff, cfg, t_from=0):
    """No activity from the household's quietest hour until past its latest usual morning
    (the mornings whose deadline passes in [t_from, T_eff))."""
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
        ok = has & (e < T_eff) & (e >= t_from)
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
