"""Registry import (档案导入): validated frames become database rows.

Reading, normalising and validating a file is ``sibifang.importing``; this module maps the
accepted rows onto the models and stores them idempotently (upsert on the file's own ids),
and records the validation run and every quarantined row with its reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from schemas.models import (
    Area,
    AuditEvent,
    Cadre,
    CadreGrid,
    Household,
    MediationRoom,
    Meter,
    QuarantinedRow,
    ServiceResource,
    ValidationRun,
    Visit,
)
from sibifang.db import audit, upsert
from sibifang.records import as_list, chunks, clean_value, frame_records, to_date, to_datetime
from sibifang.settings import local_now

ORDER = ("areas", "households", "cadres", "meters", "visits", "resources", "mediation_rooms")
"""Import order on a fresh database: references must exist before the rows that name them."""


def area_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Flatten the hierarchy file into one row per area, parents first."""
    levels = [
        ("city", "city_id", "city_name", None),
        ("district", "district_id", "district_name", "city_id"),
        ("township", "township_id", "township_name", "district_id"),
        ("village", "village_id", "village_name", "township_id"),
        ("grid", "grid_id", "grid_name", "village_id"),
    ]
    rows: dict[str, dict[str, Any]] = {}
    for level, id_col, name_col, parent_col in levels:
        sub = df.drop_duplicates(id_col)
        for rec in frame_records(sub):
            rows.setdefault(rec[id_col], {
                "id": rec[id_col], "level": level, "name": rec[name_col],
                "parent_id": rec[parent_col] if parent_col else None,
                "village_kind": rec.get("village_kind") if level == "village" else None,
            })
    return list(rows.values())


def _birth(id_number: Any) -> tuple[int | None, str | None]:
    s = clean_value(id_number)
    if not s or len(str(s)) != 18:
        return None, None
    s = str(s)
    try:
        year = int(s[6:10])
    except ValueError:
        return None, None
    sex = "M" if s[16].isdigit() and int(s[16]) % 2 == 1 else "F"
    return year, sex


def household_rows(df: pd.DataFrame, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for rec in frame_records(df):
        year, sex = _birth(rec.get("id_number"))
        rows.append({
            "id": rec["household_id"], "head_name": rec["head_name"], "id_number": rec.get("id_number"),
            "phone": rec.get("phone"), "address": rec.get("address"), "grid_id": rec["grid_id"],
            "categories": as_list(rec.get("categories")),
            "members": int(rec["members"]) if rec.get("members") is not None else None,
            "elderly_living_alone": bool(rec.get("elderly_living_alone") or False),
            "consent": bool(rec.get("consent") if rec.get("consent") is not None else True),
            "birth_year": year, "sex": sex,
            "basic_situation": rec.get("basic_situation"), "difficulties": rec.get("difficulties"),
            "measures": rec.get("measures"),
            "away_from": to_date(rec.get("away_from")), "away_until": to_date(rec.get("away_until")),
            "away_reason": rec.get("away_reason"), "updated_at": now, "registered_at": now,
            "register_status": rec.get("register_status"), "deregistered_on": to_date(rec.get("deregistered_on")),
        })
    return rows


def resolve_registration(rows: list[dict[str, Any]], current: dict[str, tuple[datetime | None, str | None]],
                         now: datetime, stale: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Turn each household row's 状态 / 注销日期 into ``deregistered_at`` / ``deregistered_reason``
    (in place), given the ``current`` (deregistered_at, reason) of the families already stored.

    A blank status changes nothing (a village sends partial files: a family not in the file, or
    listed without a status, keeps its place). 在册 puts it back on the register. 迁出 / 去世 / 注销
    take it off from the date given, else from the moment it was first marked so (``now`` the
    first time only): the same file imported again changes nothing.

    ``stale``: families whose place on the register has newer news than this file
    (``register_news``): the file does not change their place. Returns those it would have
    changed: ``id, status`` (the file's) and ``at, reason`` (kept), for the clerk's report."""
    kept = []
    for r in rows:
        status, on = r.pop("register_status", None), r.pop("deregistered_on", None)
        at, reason = was = current.get(r["id"], (None, None))
        if status == "registered":
            at, reason = None, None
        elif status is not None:
            at = datetime.combine(on, datetime.min.time()) if on is not None else (at or now)
            reason = status
        if r["id"] in stale and (at, reason) != was:
            kept.append({"id": r["id"], "status": status, "at": was[0], "reason": was[1]})
            at, reason = was
        r["deregistered_at"], r["deregistered_reason"] = at, reason
    return kept


REGISTER_NEWS = "register_status"
"""Audit action of a change of a family's place on the register, with the file's ``as_of``."""


def register_news(session: Session, ids: list[str]) -> dict[str, datetime]:
    """The ``as_of`` of the newest file that changed each family's place on the register."""
    news: dict[str, datetime] = {}
    for part in chunks(ids, 500):
        for hid, detail in session.execute(select(AuditEvent.entity_id, AuditEvent.detail).where(
                AuditEvent.entity == "household", AuditEvent.action == REGISTER_NEWS,
                AuditEvent.entity_id.in_(part))):
            if (detail or {}).get("as_of"):
                at = datetime.fromisoformat(detail["as_of"])
                news[hid] = max(news.get(hid, at), at)
    return news


def register_file_as_of(session: Session, digest: str, now: datetime) -> tuple[datetime, bool]:
    """How recent a households file is, as far as the importer knows, and whether its rows were
    imported before: the moment the same rows were first imported (under any file name: a clerk
    re-sending October's register, or saving it again, sends October's news), else the import's
    own moment (``now``: a hand-over imported for an earlier day)."""
    first = [at for at, detail in session.execute(select(AuditEvent.at, AuditEvent.detail).where(
        AuditEvent.entity == "households", AuditEvent.action == "import_households"))
        if (detail or {}).get("digest") == digest]
    return (min(min(first), now) if first else now), bool(first)


def render_status_kept(kept: list[dict[str, Any]]) -> str:
    """The clerk's paragraph on the families whose 状态 the file did not change (empty: none)."""
    from sibifang.checks import REGISTER_STATUS_LABELS

    if not kept:
        return ""
    lines = ["", f"以下 {len(kept)} 户的在册状态未按本文件更改：名册中已有较新的状态（本文件早于已导入的名册，"
             "或为此前导入过的同一批数据），以较新的为准。如确需更改，请在新的名册文件中填写状态。"]
    for k in sorted(kept, key=lambda k: k["id"]):
        now = "在册" if k["reason"] is None else \
            f"{REGISTER_STATUS_LABELS.get(k['reason'], k['reason'])}（{k['at']:%Y-%m-%d}）"
        lines.append(f"  {k['id']}：本文件为{REGISTER_STATUS_LABELS.get(k['status'], k['status'])}，现为{now}")
    return "\n".join(lines) + "\n"


def cadre_rows(df: pd.DataFrame, default_capacity: int) -> list[dict[str, Any]]:
    rows = []
    for rec in frame_records(df):
        cap = rec.get("capacity")
        wd = rec.get("grassroots_weekday")
        rows.append({
            "id": rec["cadre_id"], "name": rec["name"], "phone": rec.get("phone"), "role": rec["role"],
            "grid_ids": as_list(rec.get("grid_ids")),
            "capacity": int(cap) if cap is not None else default_capacity,
            "alert_channel": rec.get("alert_channel"), "alert_address": rec.get("alert_address"),
            "four_plus_one": bool(rec.get("four_plus_one") or False),
            "grassroots_weekday": int(wd) if wd is not None and wd != "" else None,
            "on_leave_from": to_date(rec.get("on_leave_from")),
            "on_leave_until": to_date(rec.get("on_leave_until")),
        })
    return rows


def meter_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"id": r["meter_id"], "household_id": r["household_id"],
             "interval_minutes": int(r.get("interval_minutes") or 15),
             "installed_at": to_date(r.get("installed_at"))} for r in frame_records(df)]


def visit_rows(df: pd.DataFrame, source: str, recorded_at: datetime | None) -> list[dict[str, Any]]:
    """``recorded_at``: when these sheets came in (news for the risk stage on that day), or None
    for a hand-over's visit history, read by its visit dates (``store_accepted(history=True)``)."""
    rows = []
    for r in frame_records(df):
        rows.append({
            "id": r["visit_id"], "plan_id": r.get("plan_id") or None, "household_id": r["household_id"],
            "cadre_id": r["cadre_id"], "visited_at": to_datetime(r["visited_at"]), "mode": r.get("mode") or "visit",
            "steps": as_list(r.get("steps")), "family_situation": r.get("family_situation"),
            "business_situation": r.get("business_situation"), "women_situation": r.get("women_situation"),
            "difficulties": r.get("difficulties"), "measures": r.get("measures"),
            "demand_category": r.get("demand_category") or None,
            "follow_up_needed": bool(r.get("follow_up_needed") or False), "notes": r.get("notes"),
            "source": source, "recorded_at": recorded_at,
        })
    return rows


def resource_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"id": r["resource_id"], "name": r["name"], "provider_type": r.get("provider_type") or "expert",
             "offers": as_list(r.get("offers")), "village_id": r.get("village_id"),
             "contact_name": r.get("contact_name"), "phone": r.get("phone")} for r in frame_records(df)]


def room_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"id": r["room_id"], "name": r["name"], "township_id": r["township_id"],
             "mediator_ids": as_list(r.get("mediator_ids"))} for r in frame_records(df)]


def known_references(session: Session) -> dict[str, set[str]]:
    """Ids the import checks references against (grids, households, cadres, meters, ...)."""
    areas = session.execute(select(Area.id, Area.level)).all()
    from schemas.models import VisitPlan

    return {
        # cross-record rules of visit records (the cadre covers the grid, the plan exists)
        "cadre_grids": {c: set(g or []) for c, g in session.execute(select(Cadre.id, Cadre.grid_ids))},
        "household_grid": dict(session.execute(select(Household.id, Household.grid_id)).all()),
        "plans": dict(session.execute(select(VisitPlan.id, VisitPlan.planned_on)).all()),
        "grids": {a for a, lvl in areas if lvl == "grid"},
        "villages": {a for a, lvl in areas if lvl == "village"},
        "townships": {a for a, lvl in areas if lvl == "township"},
        "households": set(session.scalars(select(Household.id))),
        "cadres": set(session.scalars(select(Cadre.id))),
        "meters": set(session.scalars(select(Meter.id))),
    }


def store_accepted(session: Session, kind: str, accepted: pd.DataFrame, *, source: str,
                   default_capacity: int = 10, now: datetime | None = None,
                   columns: list[str] | None = None, history: bool = False,
                   kept_back: list[dict[str, Any]] | None = None) -> int:
    """Upsert the accepted rows of one file; running it twice changes nothing.

    ``columns``: the kind's columns the file has (``ImportResult.columns``; None: all). A row on
    record keeps the fields whose column the file lacks: a sheet of new phone numbers does not
    end a recorded hospital stay, nor take a grid worker's alert channel away.

    ``history``: the file is part of a register hand-over (a directory: the archive at go-live,
    or a re-sync), whose visits were recorded when they were made: they keep no ``recorded_at``
    and the risk stage reads them by their visit dates. Visit sheets that come in one file at a
    time (the inbox, ``sibifang import visits FILE``) are recorded now: a finding in a sheet
    typed in weeks late is news today, while an archive's years of visits are not.

    ``kept_back``: (households) receives the families whose place on the register (状态) the
    file would have changed but newer news stands (an older register after a newer one)."""
    now = now or local_now()
    if accepted.empty:
        return 0
    builders: dict[str, tuple[type, Callable[[], list[dict[str, Any]]]]] = {
        "areas": (Area, lambda: area_rows(accepted)),
        "households": (Household, lambda: household_rows(accepted, now)),
        "cadres": (Cadre, lambda: cadre_rows(accepted, default_capacity)),
        "meters": (Meter, lambda: meter_rows(accepted)),
        "visits": (Visit, lambda: visit_rows(accepted, source, None if history else now)),
        "resources": (ServiceResource, lambda: resource_rows(accepted)),
        "mediation_rooms": (MediationRoom, lambda: room_rows(accepted)),
    }
    model, build = builders[kind]
    rows = build()
    if kind == "households":
        current: dict[str, tuple[datetime | None, str | None]] = {}
        ids = [r["id"] for r in rows]
        for part in chunks(ids, 500):
            current.update((h, (at, why)) for h, at, why in session.execute(
                select(Household.id, Household.deregistered_at, Household.deregistered_reason)
                .where(Household.id.in_(part))))
        # The register never goes back: a family's place changes only by a file at least as
        # recent as the one that last changed it; rows imported before (the same file again, an
        # old file re-sent) bring no news, whatever changed since.
        as_of, seen = register_file_as_of(session, frame_digest(accepted)[:16], now)
        news = register_news(session, ids)
        stale = {h for h in ids if seen or news.get(h, as_of) > as_of}
        kept = resolve_registration(rows, current, now, stale)
        if kept_back is not None:
            kept_back.extend(kept)
        for r in rows:
            if (r["deregistered_at"], r["deregistered_reason"]) != current.get(r["id"], (None, None)):
                audit(session, "import", REGISTER_NEWS, "household", r["id"],
                      {"reason": r["deregistered_reason"], "source": source, "as_of": as_of.isoformat()}, at=now)
    # ``updated_at`` would change on every run and ``registered_at``/``recorded_at`` are the first
    # import's: only real content changes should touch a row.
    update = [c for c in rows[0] if c not in ("id", "updated_at", "registered_at", "recorded_at")] if rows else None
    if update is not None and columns is not None:
        from sibifang.importing import FIELDS

        absent = {f.name for f in FIELDS[kind]} - set(columns)
        update = [c for c in update if c not in absent]
    upsert(session, model, rows, key=["id"], update=update)
    if kind == "cadres":
        ids = [r["id"] for r in rows]
        for i in range(0, len(ids), 500):
            session.execute(delete(CadreGrid).where(CadreGrid.cadre_id.in_(ids[i:i + 500])))
        links = [{"cadre_id": r["id"], "grid_id": g} for r in rows for g in r["grid_ids"]]
        upsert(session, CadreGrid, links, key=["cadre_id", "grid_id"], update=())
    # The same file imported again (a re-run of the hand-over, a sheet dropped twice) changes
    # nothing and is not recorded again; the same rows after other content of this file are.
    digest = frame_digest(accepted)[:16]
    last = session.scalars(select(AuditEvent.detail).where(
        AuditEvent.entity == kind, AuditEvent.entity_id == source, AuditEvent.action == f"import_{kind}")
        .order_by(AuditEvent.id.desc()).limit(1)).first()
    if (last or {}).get("digest") != digest:
        audit(session, "import", f"import_{kind}", kind, source, {"rows": len(rows), "digest": digest}, at=now)
    return len(rows)


def frame_digest(df: pd.DataFrame) -> str:
    """A stable hash of a frame's columns and rows, whatever the row order: the same data, the
    same digest. Lists and dicts (flag details, grid ids) are hashed by their text."""
    cells = df.apply(lambda c: c.map(repr) if c.dtype == object else c)
    h = hashlib.sha256(json.dumps([str(c) for c in df.columns]).encode())
    h.update(np.sort(pd.util.hash_pandas_object(cells, index=False).to_numpy()).tobytes())
    return h.hexdigest()


def record_validation(session: Session, *, stage: str, suite: str, source: str, read: int, accepted: int,
                      quarantined: pd.DataFrame | None, failures: list[str], success: bool,
                      raw_rows: dict[int, dict[str, Any]] | None = None, now: datetime | None = None,
                      batch: str = "", content: str = "") -> None:
    """Keep the validation run and every quarantined row (line, field, reason) in the database.

    ``batch`` (a file's content digest, a reading batch's id) keeps the quarantined rows of two
    files with the same name, or of two API pulls, apart; the same batch again changes nothing.
    ``content`` names what was validated where there is no batch (``frame_digest`` of a hand-over).
    The same data validated again with the same result is the same run: stored once, with the time
    it was first seen. A different result for the same data (a file checked again after the
    households it names were imported) is a new run.
    """
    now = now or local_now()
    q = quarantined if quarantined is not None else pd.DataFrame()
    lines = int(q["line"].nunique()) if "line" in q and not q.empty else 0
    read, accepted, success, failures = int(read), int(accepted), bool(success), failures[:50]
    key = [stage, suite, source, content or batch, read, accepted, lines, success, failures]
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False, default=str).encode()).hexdigest()
    upsert(session, ValidationRun, [{"stage": stage, "suite": suite, "source": source, "at": now,
                                     "success": success, "rows_read": read, "rows_accepted": accepted,
                                     "rows_quarantined": lines, "failures": failures, "digest": digest}],
           key=["digest"], update=())
    if not q.empty:
        rows = []
        for r in frame_records(q):
            line = r.get("line")
            rows.append({"kind": stage, "source": source, "batch": batch,
                         "line": int(line) if line is not None else None,
                         "field": r.get("field"), "code": str(r.get("code") or "invalid"),
                         "reason": str(r.get("reason") or ""),
                         "raw": (raw_rows or {}).get(int(line)) if line is not None else None})
        upsert(session, QuarantinedRow, rows, key=["kind", "source", "batch", "line", "field", "code"],
               update=("reason",))
