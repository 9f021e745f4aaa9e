"""The drop folders (收件目录) that villages' visit sheets and meter exports are written into.

Two things make a drop folder safe to read while others write into it:

* only files that are *ready*: a file still being copied in (an upload, a copy over the
  network share) looks like a short file, and read now it would be recorded as if whole and
  moved to ``done/``. A file is ready once it has not changed for ``settle_seconds``. Hidden
  files and the owner files Office keeps beside an open workbook (``~$名单.xlsx``) are never
  read;
* one run at a time per folder: the evening loop and the quarter-hourly ingest, or two
  workers of a cluster on a shared folder, must not both read, record and move the same
  file. ``claim`` takes a lock that the other run sees and then leaves the files to the
  holder (the next run takes what it did not get to).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Hidden and editor / Office temporary files: not a delivery.
_NOT_DELIVERIES = (".", "~")
LOCK_NAME = ".lock"


def ready_files(folder: Path, suffixes: Iterable[str], *, settle_seconds: float,
                now: float | None = None) -> list[Path]:
    """The files of ``folder`` with one of ``suffixes`` that are complete, in name order."""
    if not folder.exists():
        return []
    suffixes = {s.lower() for s in suffixes}
    now = time.time() if now is None else now
    ready = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(_NOT_DELIVERIES) or p.suffix.lower() not in suffixes:
            continue
        try:
            st = p.stat()
        except FileNotFoundError:  # moved away meanwhile
            continue
        if p.is_file() and now - st.st_mtime >= settle_seconds:
            ready.append(p)
    return ready


@contextmanager
def claim(folder: Path, name: str = LOCK_NAME) -> Iterator[bool]:
    """Hold ``folder`` for this run: yields True, or False when another run holds it.

    An advisory ``flock`` on ``folder/<name>`` (``.lock``): released when the holder exits,
    crashes or is killed, so a dead run never blocks the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
