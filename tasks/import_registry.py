"""Tasks of the registry import stage: one task per file (a file is the unit villages send)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import retry_unless_bad_data, run_logger


SENSITIVE_FIELDS = {"id_number", "phone", "alert_address"}


def _mask(value) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:3] + "*" * max(0, len(text) - 5) + text[-2:] if len(text) > 5 else "*" * len(text)


def import_file(kind: str, path: Path | str, *, database_url: str | None = None,
                out_dir: Path | None = None, now: datetime | None = None) -> dict:
    """Read, validate, upsert and quarantine one registry file; returns read/accepted/quarantined."""
    from sibifang.db import migrate, session_scope
    from sibifang.import_registry import known_references, record_validation, store_accepted
    from sibifang.importing import read_table, render_import_errors, validate_import
    from sibifang.records import frame_records
    from sibifang.settings import get_settings

    settings = get_settings()
    path = Path(path)
    migrate(database_url)
    raw = read_table(path)
    with session_scope(database_url) as s:
        known = known_references(s)
    result = validate_import(kind, raw, source=path.name, known=known, now=now)
    q = result.quarantined
    bad_lines = set(q["line"].astype(int)) if not q.empty else set()
    # The rejected row is kept so a clerk can correct it, with ID and phone numbers masked:
    # quarantine must not become a second copy of the most sensitive fields.
    raw_rows = {int(r["_line"]): {k: (_mask(v) if k in SENSITIVE_FIELDS else v) for k, v in r.items() if k != "_line"}
                for r in frame_records(raw) if int(r["_line"]) in bad_lines}
    failures = [f"{r.expectation}({r.column}): {r.unexpected_count}" for r in result.validation.results
                if not r.success]
    with session_scope(database_url) as s:
        store_accepted(s, kind, result.accepted, source=path.name, default_capacity=settings.default_capacity, now=now)
        record_validation(s, stage=f"import_{kind}", suite=kind, source=path.name, read=result.read,
                          accepted=len(result.accepted), quarantined=q, failures=failures,
                          success=not bad_lines, raw_rows=raw_rows, now=now)
    report_path = None
    if bad_lines:
        out = Path(out_dir or settings.out_dir) / "import-errors"
        out.mkdir(parents=True, exist_ok=True)
        report_path = out / f"{path.stem}.{kind}.txt"
        report_path.write_text(render_import_errors(result, "txt"), encoding="utf-8")
        run_logger().warning("%s: %d row(s) quarantined, see %s", path.name, len(bad_lines), report_path)
    return {"kind": kind, "file": str(path), "read": result.read, "accepted": len(result.accepted),
            "quarantined": len(bad_lines), "error_report": str(report_path) if report_path else None}


@task(name="import_registry_file", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_bad_data)
def import_file_task(kind: str, path: str, database_url: str | None = None) -> dict:
    return import_file(kind, path, database_url=database_url)
