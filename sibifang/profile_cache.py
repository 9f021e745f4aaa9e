"""The day's routine profiles and alarm checkpoint (用电画像), kept between hourly runs.

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

import pandas as pd

from sibifang import __version__
from sibifang.detectors import DetectorConfig, RoutineProfiles

KEEP = 3
# the layout of what is stored: a new one (another checkpoint state) makes every stored fit stale
FORMAT = 1


def fingerprint(absences: pd.DataFrame | None, partitions: list, config: DetectorConfig, baseline_days: int) -> str:
    """What a fit depends on besides the midnight, as one digest: the recorded absences as
    stored (an open-ended one is not "until now", which would change every run), the readings
    partitions behind the history, the detector settings, the window and the stored layout."""
    h = hashlib.sha256()
    h.update(repr((FORMAT, __version__, baseline_days)).encode())
    if absences is not None and len(absences):
        h.update(pd.util.hash_pandas_object(absences.sort_values(list(absences.columns)), index=False).values.tobytes())
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
        # (not the hidden temporary files: another run may be writing one)
        for old in sorted(p for p in self.root.glob("*.pkl") if not p.name.startswith("."))[:-KEEP]:
            old.unlink(missing_ok=True)
        return path
