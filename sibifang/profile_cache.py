"""The day's routine profiles and alarm checkpoint (用电画像), kept between hourly runs, and
the run that uses them (``judge_meters``).

``flag_risks`` replays the trailing weeks once a day (``fit_profiles``, at the first run
after midnight) and judges every later run's new hours from that checkpoint
(``detect_matrix(..., profiles=...)``): a city's hourly run then costs seconds, not the
replay's half minute, and reports what the replay would.

A stored fit is used only while everything it was fitted from is unchanged: the same
midnight, the same meters, the same recorded absences, the same detector settings, and the
same readings before midnight (a late file for yesterday rewrites a partition, and the next
run fits again). One pickle per midnight under ``data_dir/profiles``, written atomically; the
newest few are kept. The files are written by this process only and read back by it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sibifang import __version__
from sibifang.detectors import (EPISODE_COLUMNS, DetectorConfig, RoutineProfiles, detect_matrix, empty_episodes,
                                fit_profiles)
from sibifang.detectors.hourly import readings_per_hour

KEEP = 3
# the layout of what is stored: bump it with any change to RoutineProfiles or AlarmCheckpoint,
# so that a fit stored by the code before is not read back (a new __version__ does the same)
FORMAT = 2
# meters a block when hourly_kwh scales the hours (its float64 temporaries are this many rows)
HOURLY_ROWS = 4096
# readings before a window that hourly_kwh reads to know each meter's cadence at its start
CADENCE_CONTEXT = pd.Timedelta(days=1)


def fingerprint(away: pd.DataFrame | None, partitions: list, config: DetectorConfig, baseline_days: int) -> str:
    """What a fit depends on besides the midnight, as one digest: the recorded absences as
    stored (an open-ended one is not "until now", which would change every run), the readings
    partitions behind the history, the detector settings, the window and the stored layout."""
    h = hashlib.sha256()
    h.update(repr((FORMAT, __version__, baseline_days)).encode())
    if away is not None and len(away):
        h.update(pd.util.hash_pandas_object(away.sort_values(list(away.columns)), index=False).values.tobytes())
    h.update(repr(partitions).encode())
    h.update(repr(config).encode())
    return h.hexdigest()


class ProfileCache:
    """``data_dir/profiles/<midnight>.pkl``: (fingerprint, profiles, the replay's episodes).

    The replay's episodes are kept with the profiles so that every run of the day reports the
    same as the first (what a replay of the whole window reports), whether it fitted or not."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, at: pd.Timestamp) -> Path:
        return self.root / f"{pd.Timestamp(at):%Y-%m-%dT%H%M}.pkl"

    def load(self, at: pd.Timestamp, digest: str) -> tuple[RoutineProfiles, list[dict]] | None:
        path = self._path(at)
        try:
            with path.open("rb") as f:
                stored, profiles, episodes = pickle.load(f)
        except Exception:   # missing, cut short or not ours: fit again (it is only a cache)
            return None
        return (profiles, episodes) if stored == digest else None

    def save(self, at: pd.Timestamp, digest: str, profiles: RoutineProfiles, episodes: list[dict]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(at)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump((digest, profiles, episodes), f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # the newest others, and the one just written even if older (a supervisor replaying a past
        # day reads it back at the next run); not the hidden temporary files: another run may be
        # writing one
        others = sorted(p for p in self.root.glob("*.pkl") if not p.name.startswith(".") and p != path)
        for old in others[: max(len(others) - (KEEP - 1), 0)]:
            old.unlink(missing_ok=True)
        return path


def hourly_kwh(store, start: pd.Timestamp, end: pd.Timestamp) -> tuple[np.ndarray, list[str]]:
    """Each meter's hourly kWh for ``start < ts <= end`` from ``store``, as ``detect`` builds its
    matrix from readings (``detectors.hourly.hourly_matrix``): an hour some of whose readings are
    missing is scaled up from those present, never read as the hour's whole use. Summed as they
    are, a meter silent for part of an hour (a reading lost, an outage that starts at :30) would
    read as a drop there, and the flow would raise other episodes, at other times, than
    `sibifang detect` on the same readings. The readings an hour a meter delivers are taken hour
    by hour by the same rule (``readings_per_hour``: its cadence may change), from the readings
    since ``CADENCE_CONTEXT`` before ``start`` too, so that the first hours of the window are
    scaled as a replay of the longer history scales them. Rows: the meters with readings in the
    window."""
    tally: list = []
    gaps: list = []
    # float64 sums, scaled and rounded to float32 once, as hourly_matrix computes them: the
    # detectors' bins are fine enough that a sum rounded reading by reading may fall in another
    context = start - CADENCE_CONTEXT
    kwh, meter_ids, _ = store.load_matrix(context.to_pydatetime(), end.to_pydatetime(), interval_minutes=60,
                                          counts=tally, dtype=np.float64, spacings=gaps)
    counts, spacings = tally[0], gaps[0]
    lead = int((start - context) / pd.Timedelta(hours=1))
    keep = (counts[:, lead:] > 0).any(axis=1)
    out = np.empty((int(keep.sum()), max(kwh.shape[1] - lead, 0)), np.float32)
    rows = np.flatnonzero(keep)
    for b0 in range(0, len(rows), HOURLY_ROWS):   # in blocks of meters: the temporaries stay small
        block = rows[b0:b0 + HOURLY_ROWS]
        n = counts[block]
        r, c = np.nonzero(n)                       # row-major: by meter, then hour
        per = np.ones(n.shape, np.float64)
        per[r, c] = readings_per_hour(r, n[r, c], spacings[block][r, c])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[b0:b0 + HOURLY_ROWS] = (kwh[block] * per / np.minimum(n, per))[:, lead:]
    return out, [meter_ids[i] for i in rows]


def judge_meters(store, cache: ProfileCache, as_of: pd.Timestamp, away: pd.DataFrame, config: DetectorConfig,
                 baseline_days: int = 35) -> tuple[pd.DataFrame, dict]:
    """Every meter's episodes up to ``as_of`` (what ``detect_matrix`` over the trailing
    ``baseline_days`` reports), from the day's fit: made at the first run after midnight (or
    when what it depends on changed) and read back by the later ones, which judge only the
    hours since midnight. ``store`` is a ``ReadingStore``; ``away`` the recorded absences as
    stored (``meter_id, start, end``, end empty while away). Returns (episodes, what was done)."""
    # Whole hours: the matrix path sums each meter's readings into hourly slots (15-, 30- and
    # 60-minute meters alike, partly covered hours scaled up: ``hourly_kwh``), which is what the
    # detectors score; no per-reading table is built.
    end = pd.Timestamp(as_of).ceil("h")
    midnight = pd.Timestamp(as_of).normalize()
    history_start = midnight - pd.Timedelta(days=baseline_days)
    absences = None
    if len(away):
        absences = away.assign(start=pd.to_datetime(away["start"]),
                               end=pd.to_datetime(away["end"]).fillna(pd.Timestamp(as_of)) + pd.Timedelta(days=1))
    # the day before the window too: hourly_kwh reads it for the meters' cadence
    digest = fingerprint(away.astype(str), store.partition_stamps(history_start - CADENCE_CONTEXT, midnight), config,
                         baseline_days)
    stored = cache.load(midnight, digest)
    profiles, replayed = stored if stored is not None else (None, [])
    info = dict(fitted=False, fitted_meters=0, midnight=midnight, end=end, replayed_meter_hours=0)
    if stored is None:
        kwh, meter_ids = hourly_kwh(store, history_start, midnight)
        if meter_ids:
            profiles = fit_profiles(kwh, meter_ids, history_start, 60, config=config, absences=absences,
                                    episodes=replayed)
            cache.save(midnight, digest, profiles, replayed)
            info.update(fitted=True, fitted_meters=len(meter_ids), replayed_meter_hours=kwh.size)
        del kwh         # the month's matrix: only the day before midnight is read again below

    # the hours since midnight, with the day before as context
    since = midnight - pd.Timedelta(days=1)
    kwh, meter_ids = hourly_kwh(store, since, end)
    # the replay's episodes (up to midnight) come with every run: each run reports what a replay of
    # the whole window would, whether it fitted the profiles or read them back
    parts = [pd.DataFrame(replayed, columns=EPISODE_COLUMNS)] if replayed else []
    known = pd.Index([] if profiles is None else profiles.meter_ids)
    rows = known.get_indexer(meter_ids)
    if len(known) and end > midnight:
        # every profiled meter (one silent since yesterday is still judged), in the profile's order
        X = np.full((len(known), kwh.shape[1]), np.nan, np.float32)
        X[rows[rows >= 0]] = kwh[rows >= 0]
        parts.append(detect_matrix(X, known.to_numpy(), since, 60, absences=absences, config=config,
                                   profiles=profiles))
    new = rows < 0
    if new.any():   # first read since midnight: nothing before to resume from
        parts.append(detect_matrix(kwh[new], np.asarray(meter_ids, object)[new], since, 60, absences=absences,
                                   config=config))
    info["meters"] = len(known) + int(new.sum())
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty_episodes(), info
    # an episode open at midnight comes from both: the hourly run's report (after the replay's in
    # `parts`) has its end
    episodes = (pd.concat(parts, ignore_index=True)
                .drop_duplicates(["meter_id", "kind", "start", "detected_at"], keep="last"))
    return episodes[pd.to_datetime(episodes.detected_at) <= pd.Timestamp(as_of)].reset_index(drop=True), info
