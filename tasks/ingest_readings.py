"""Tasks of the meter-reading ingestion stage: one task per dropped file or API pull."""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from tasks.common import retry_unless_bad_data, run_logger

READING_SUFFIXES = (".csv", ".parquet", ".xlsx")


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_batch_id(path: Path) -> str:
    return f"file-{file_digest(path)[:24]}"


def pending_reading_files(inbox: Path, database_url: str | None = None) -> list[tuple[Path, str]]:
    """New files in the drop folder with their batch id (content hash), each hashed once.

    Ingested files move to ``readings/done/``, so a run reads only what arrived since the last
    one; a file dropped again (same content) is already in the ledger and is moved aside unread."""
    from schemas.models import ReadingBatch
    from sibifang.db import session_scope

    folder = inbox / "readings"
    if not folder.exists():
        return []
    files = [(p, file_batch_id(p)) for p in sorted(folder.iterdir()) if p.suffix in READING_SUFFIXES]
    with session_scope(database_url) as s:
        done = set(s.scalars(select(ReadingBatch.id).where(ReadingBatch.id.in_([b for _, b in files]))))
    for p, batch in files:
        if batch in done:
            move_to_done(p)
    return [(p, b) for p, b in files if b not in done]


def move_to_done(path: Path) -> None:
    done = path.parent / "done"
    done.mkdir(exist_ok=True)
    shutil.move(str(path), done / path.name)


def ingest_frame(raw: pd.DataFrame, *, source: str, batch_id: str, database_url: str | None = None,
                 now: datetime | None = None, as_of: datetime | None = None) -> dict:
    """Clean, store and account for one batch of readings (read = accepted + quarantined)."""
    from schemas.models import Meter, ReadingBatch
    from sibifang.db import session_scope, upsert
    from sibifang.import_registry import record_validation
    from sibifang.ingest_readings import clean_readings
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import get_settings, local_now

    settings = get_settings()
    now = now or local_now()
    with session_scope(database_url) as s:
        known = set(s.scalars(select(Meter.id)))
    result = clean_readings(raw, source=source, known_meters=known, now=as_of or now)
    acc, q = result.accepted, result.quarantined
    if result.counts["read"] != len(acc) + result.counts["quarantined"]:
        raise RuntimeError(f"{source}: rows lost in cleaning: read {result.counts['read']} != "
                           f"{len(acc)} accepted + {result.counts['quarantined']} quarantined")
    if len(acc):
        # The hand-over contract of what goes into the store (the readings suite).
        from schemas.validation import raise_for_critical, validate_frame

        raise_for_critical(validate_frame(acc, "readings", source=source))
    store = ReadingStore(Path(settings.data_dir) / "readings")
    new_rows = store.append(acc) if len(acc) else 0
    with session_scope(database_url) as s:
        upsert(s, ReadingBatch, [{
            "id": batch_id, "source": source, "as_of": as_of, "ingested_at": now,
            "rows_read": int(result.counts["read"]), "rows_accepted": int(len(acc)),
            "rows_quarantined": int(result.counts["quarantined"]), "rows_new": int(new_rows),
            "first_ts": acc["ts"].min().to_pydatetime() if len(acc) else None,
            "last_ts": acc["ts"].max().to_pydatetime() if len(acc) else None,
        }], key=["id"], update=())
        record_validation(s, stage="ingest_readings", suite="readings", source=source,
                          read=int(result.counts["read"]), accepted=int(len(acc)), quarantined=q,
                          failures=[f"{k}: {v}" for k, v in result.counts.items()
                                    if k not in ("read", "accepted", "quarantined") and v],
                          success=len(q) == 0, now=now)
    if len(q):
        run_logger().warning("%s: %d reading(s) quarantined", source, result.counts["quarantined"])
    return {"source": source, "read": int(result.counts["read"]), "accepted": int(len(acc)),
            "quarantined": int(result.counts["quarantined"]), "new": int(new_rows)}


@task(name="ingest_reading_file", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_bad_data)
def ingest_file_task(path: str, batch_id: str, database_url: str | None = None, as_of: datetime | None = None) -> dict:
    from sibifang.ingest_readings import read_readings_file

    p = Path(path)
    result = ingest_frame(read_readings_file(p), source=p.name, batch_id=batch_id, database_url=database_url,
                          as_of=as_of)
    move_to_done(p)  # in the ledger now: a later run need not read it again
    return result


def retry_pull(task, task_run, state) -> bool:  # noqa: ANN001
    """Retry connection trouble and 5xx; not a 4xx or a malformed answer, nor bad data."""
    from sibifang.meter_api import MeterApiError

    try:
        state.result()
    except MeterApiError as e:
        return bool(e.retryable)
    except Exception:  # noqa: BLE001
        return retry_unless_bad_data(task, task_run, state)
    return False


@task(name="pull_meter_api", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 120],
      retry_condition_fn=retry_pull)
def pull_api_task(database_url: str | None = None, as_of: datetime | None = None) -> dict | None:
    """Pull new readings from the meter platform's paged API, resuming from the last stored one."""
    from sibifang.meter_api import fetch_readings
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import get_settings

    settings = get_settings()
    if not settings.meter_api_url:
        return None
    from sibifang.meter_api import resume_since

    store = ReadingStore(Path(settings.data_dir) / "readings")
    # The earliest last reading, capped a week back: one dead meter must not re-fetch a month.
    since = resume_since(store.last_ts())
    token = settings.meter_api_token.get_secret_value() if settings.meter_api_token else None
    raw = fetch_readings(settings.meter_api_url, token, since)
    digest = hashlib.sha1(pd.util.hash_pandas_object(raw, index=False).values.tobytes()).hexdigest()
    return ingest_frame(raw, source="meter-api", batch_id=f"api-{digest[:24]}", database_url=database_url, as_of=as_of)
