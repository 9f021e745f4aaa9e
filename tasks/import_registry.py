"""Tasks of the registry import stage: one task per file (a file is the unit villages send)."""

from __future__ import annotations

import shutil
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


def batch_file_name(path: Path, digest: str) -> str:
    """``<stem>.<digest8><suffix>``: files of one name but different content never overwrite
    each other in ``done/``, ``rejected/`` or the reports; the same file again gets the same name."""
    return f"{path.stem}.{digest[:8]}{path.suffix}" if digest else path.name


def move_aside(path: Path, folder: str, digest: str | None = None) -> Path:
    """Move an inbox file into ``done/`` or ``rejected/`` beside it (see ``batch_file_name``)."""
    from sibifang.importing import content_digest

    digest = content_digest(path) if digest is None else digest
    target = path.parent / folder / batch_file_name(path, digest)
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(path), target)  # an earlier copy of the same content is replaced by itself
    return target


def _report_path(out_dir: Path | None, path: Path, kind: str, digest: str) -> Path:
    from sibifang.settings import get_settings

    folder = Path(out_dir or get_settings().out_dir) / "import-errors"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{Path(batch_file_name(path, digest)).stem}.{kind}.txt"


def import_file(kind: str, path: Path | str, *, database_url: str | None = None,
                out_dir: Path | None = None, now: datetime | None = None, digest: str | None = None,
                history: bool = False) -> dict:
    """Read, validate, upsert and quarantine one registry file; returns read/accepted/quarantined.
    ``digest``: the file's content digest when the caller has it already; ``history``: the file
    is part of a register hand-over (``store_accepted``).

    A file that cannot be imported at all (unreadable, missing columns, no rows) raises
    DataContractError: the caller records it with ``record_rejected_file``."""
    from sibifang.db import migrate, session_scope
    from sibifang.import_registry import known_references, record_validation, store_accepted
    from sibifang.importing import content_digest, read_table, render_import_errors, validate_import
    from sibifang.records import frame_records
    from sibifang.settings import LOCAL_TZ, get_settings

    settings = get_settings()
    if now is not None and now.tzinfo is not None:
        # (a flow parameter given with its zone) stored moments are naive local time, on both engines
        now = now.astimezone(LOCAL_TZ).replace(tzinfo=None)
    path = Path(path)
    migrate(database_url)
    digest = digest or content_digest(path)
    raw = read_table(path)
    with session_scope(database_url) as s:
        known = known_references(s)
    result = validate_import(kind, raw, source=path.name, known=known, now=now)
    q = result.quarantined
    bad_lines = set(q["line"].astype(int)) if not q.empty else set()
    # The rejected row is kept so a clerk can correct it, with ID and phone numbers masked:
    # quarantine must not become a second copy of the most sensitive fields.
    raw_rows = {int(r["_line"]): {k: (_mask(v) if k in SENSITIVE_FIELDS else v) for k, v in r.items()
                                  if k not in ("_line", "_extra_fields", "_unclosed_quote")}
                for r in frame_records(raw) if int(r["_line"]) in bad_lines}
    failures = [f"{r.expectation}({r.column}): {r.unexpected_count}" for r in result.validation.results
                if not r.success]
    if result.unknown_columns:
        failures.append(f"unknown columns (not imported): {', '.join(result.unknown_columns)}")
    kept: list[dict] = []
    with session_scope(database_url) as s:
        store_accepted(s, kind, result.accepted, source=path.name, default_capacity=settings.default_capacity, now=now,
                       columns=result.columns, history=history, kept_back=kept)
        record_validation(s, stage=f"import_{kind}", suite=kind, source=path.name, read=result.read,
                          accepted=len(result.accepted), quarantined=q, failures=failures,
                          success=not bad_lines, raw_rows=raw_rows, now=now, batch=digest[:16])
    report_path = None
    # Title rows skipped above the header are told too: the clerk checks nothing was in them.
    if bad_lines or result.unknown_columns or result.header.skipped or kept:
        from sibifang.import_registry import render_status_kept

        report_path = _report_path(out_dir, path, kind, digest)
        report_path.write_text(render_import_errors(result, "txt") + render_status_kept(kept), encoding="utf-8")
    if kept:
        run_logger().warning("%s: register status of %d household(s) not changed: newer status on record",
                             path.name, len(kept))
    if bad_lines:
        run_logger().warning("%s: %d row(s) quarantined, see %s", path.name, len(bad_lines), report_path)
    if result.unknown_columns:
        run_logger().warning("%s: column(s) not imported (not a %s column): %s", path.name, kind,
                             ", ".join(result.unknown_columns))
    return {"kind": kind, "file": str(path), "read": result.read, "accepted": len(result.accepted),
            "quarantined": len(bad_lines), "unknown_columns": list(result.unknown_columns), "status_kept": len(kept),
            "error_report": str(report_path) if report_path else None}


def rejection_message(path: Path, error: Exception) -> str:
    """The clerk's sentence for a file that could not be imported at all."""
    message = getattr(error, "message_zh", None)
    if message:
        return message
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"文件 {path.name} 未通过数据校验（{detail}），请联系系统管理员。"


def record_rejected_file(kind: str, path: Path | str, error: Exception, *, database_url: str | None = None,
                         out_dir: Path | None = None, now: datetime | None = None, stage: str | None = None,
                         move: bool = False, digest: str | None = None) -> dict:
    """Account for a file set aside as a whole: a failed validation run, the clerk's report in
    ``out/import-errors/`` and (``move``: an inbox file) the file moved to ``rejected/``.

    Returns the same keys as ``import_file`` plus ``rejected`` and ``reason``."""
    from sibifang.db import migrate, session_scope
    from sibifang.import_registry import record_validation
    from sibifang.importing import content_digest, render_file_rejection

    path = Path(path)
    message = rejection_message(path, error)
    digest = digest or (content_digest(path) if path.exists() else "")
    migrate(database_url)
    with session_scope(database_url) as s:
        record_validation(s, stage=stage or f"import_{kind}", suite=kind, source=path.name, read=0, accepted=0,
                          quarantined=None, failures=[str(error)[:500], message], success=False, now=now,
                          batch=digest[:16])
    moved_to = move_aside(path, "rejected", digest) if move and path.exists() else None
    report_path = _report_path(out_dir, path, kind, digest)
    report_path.write_text(render_file_rejection(path.name, kind, message, "txt", moved=moved_to is not None),
                           encoding="utf-8")
    run_logger().warning("%s: file not imported (%s); see %s", path.name, message, report_path)
    return {"kind": kind, "file": str(path), "read": 0, "accepted": 0, "quarantined": 0, "rejected": True,
            "reason": message, "moved_to": str(moved_to) if moved_to else None, "error_report": str(report_path)}


@task(name="import_registry_file", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_bad_data)
def import_file_task(kind: str, path: str, database_url: str | None = None, now: datetime | None = None,
                     history: bool = False) -> dict:
    return import_file(kind, path, database_url=database_url, now=now, history=history)
