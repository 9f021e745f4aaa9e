"""Episode dicts → output rows: the figures over [start, detected_at], the severity and the
Chinese evidence a grid worker reads (wording from templates/flag_risks/evidence.toml), one
alert per incident, and the episode frame (``EPISODE_COLUMNS``)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

import templates as _templates_pkg
from sibifang.detectors.alarms import _span_sums
from sibifang.detectors.config import EPISODE_COLUMNS, SEVERITIES, DetectorConfig


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
    M = X.shape[0]
    mean = P["mean"].reshape(M, -1)
    t0 = np.datetime64(pd.Timestamp(t0).to_datetime64(), "ns")
    meter_ix = np.array([e["i"] for e in eps])
    # an episode whose run began before this matrix (carried into an incremental run) brings
    # its sums up to the hour the matrix resumed from (``pre``)
    S0 = np.array([e["pre"][0] if "pre" in e else max(e["start"], 0) for e in eps])
    S1 = np.array([e["det"] for e in eps]) + 1
    pre = np.array([e["pre"][1] if "pre" in e else np.zeros(4) for e in eps])

    def seg_means(V, k):
        # mean over [start, detected] of each episode, NaN-aware
        total, cnt = _span_sums(V, meter_ix, S0, S1)
        total, cnt = total + pre[:, 2 * k], cnt + pre[:, 2 * k + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
    OBS = seg_means(X, 0)
    EXP = seg_means(mean, 1)
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



def _merge_incidents(rows: list[dict], cfg: DetectorConfig, prior: list[dict] = ()) -> list[dict]:
    """One incident, one alert (同一事件只派一次): an episode of any kind raised while an
    alerted episode of the same meter is still open, or within ``incident_gap_hours`` of its
    end, is a later signal of the same incident (a silence that then also reads as a drop, a
    missed morning inside a trip away). It is recorded as ``low`` with a note of the alert it
    follows, unless it is ``critical`` and the incident's alerts were not (that escalates).
    Only what is known at its detection counts: an earlier episode's end is used only if it
    came before that (causal). ``prior``: rows judged by an earlier run (the incremental
    run's, from the checkpoint), taken as they are."""
    if cfg.incident_gap_hours < 0:
        return rows
    gap = pd.Timedelta(hours=cfg.incident_gap_hours)
    rank = {s: k for k, s in enumerate(SEVERITIES)}
    by_meter: dict = {}
    for r in sorted(prior, key=lambda r: (r["detected_at"], r["kind"])):
        if r["severity"] != "low":
            by_meter.setdefault(r["meter_id"], []).append(r)
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
