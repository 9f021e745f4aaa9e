"""The causal per-household routine: which hours are active (variation above the running
floor, against the household's standby noise), the trailing per-slot profiles (activity,
continuation of silence, level), the level and flatness densities behind the lights-off,
drop and "nothing changes" evidence, the morning deadlines, and a stored profile broadcast
over the days of an incremental run. Every day's figures use earlier days only."""

from __future__ import annotations

import numpy as np

from sibifang.detectors.config import DetectorConfig, RoutineProfiles


def _nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=1)`` for short rows, by one sort (NaNs sort last): numpy's own
    takes a slow masked path for every row with a NaN, and this runs once a day per chunk."""
    a = np.sort(a, axis=1)
    n = np.sum(~np.isnan(a), axis=1)
    lo = np.take_along_axis(a, np.maximum((n - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(a, np.maximum(n // 2, 0)[:, None], axis=1)[:, 0]
    return np.where(n > 0, (lo + hi) / 2, np.nan).astype(a.dtype)



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



def _profiles_from_fixed(prof: RoutineProfiles, sel: np.ndarray, D: int, weekend: np.ndarray):
    """Broadcast a stored one-day profile over D days (incremental run)."""
    dt = weekend.astype(int)
    pick = lambda a: a[sel][:, dt, :]  # noqa: E731
    M = len(sel)
    rep = lambda v: np.repeat(v[sel][:, None], D, axis=1)  # noqa: E731
    return dict(p=pick(prof.p_active), c=pick(prof.p_continue), mean=pick(prof.mean_kwh),
                level=pick(prof.level_kwh if prof.level_kwh is not None else prof.mean_kwh),
                p_all=(prof.p_all[sel] if prof.p_all is not None
                       else prof.p_active[sel].mean(axis=1))[:, None, :].repeat(D, axis=1),
                hist_days=rep(prof.history_days), log_pstar=rep(prof.log_pstar),
                log_pstar_night=rep(prof.log_pstar_night), standby=rep(prof.standby),
                dark=(rep(prof.dark_noise) if prof.dark_noise is not None
                      else np.full((M, D), DetectorConfig.dark_noise_prior, np.float32)),
                level_sig=(rep(prof.level_sigma) if prof.level_sigma is not None
                           else np.full((M, D), np.inf, np.float32)),
                fixed_thr=(prof.silence_threshold[sel].astype(np.float32), prof.night_threshold[sel].astype(np.float32),
                           (prof.low_threshold[sel] if prof.low_threshold is not None
                            else np.full(M, np.inf)).astype(np.float32)))



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
