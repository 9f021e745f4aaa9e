"""SQLAlchemy 2.x typed models of the domain: the application's database.

Times are stored naive, in local time (Asia/Shanghai), the way villages write them and
meters stamp them. Meter readings themselves are not rows here: they live in the
columnar store (``sibifang.readings_store``); the database keeps the ingest log.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so Alembic migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


# --------------------------------------------------------------------------- areas
class Area(Base):
    """Administrative area, city → district → township/street → village/community → grid (网格)."""

    __tablename__ = "areas"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    level: Mapped[str] = mapped_column(String(16), index=True)  # city|district|township|village|grid
    name: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("areas.id"), index=True)
    village_kind: Mapped[str | None] = mapped_column(String(8))  # 村 | 社区


# --------------------------------------------------------------------------- people
class Household(Base):
    """Family archive (家庭档案): one family, its must-visit categories and situation."""

    __tablename__ = "households"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    head_name: Mapped[str] = mapped_column(String(64))
    id_number: Mapped[str | None] = mapped_column(String(18))
    phone: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(256))
    grid_id: Mapped[str] = mapped_column(ForeignKey("areas.id"), index=True)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    members: Mapped[int | None] = mapped_column(Integer)
    elderly_living_alone: Mapped[bool] = mapped_column(Boolean, default=False)
    consent: Mapped[bool] = mapped_column(Boolean, default=True)
    birth_year: Mapped[int | None] = mapped_column(Integer)
    sex: Mapped[str | None] = mapped_column(String(1))
    basic_situation: Mapped[str | None] = mapped_column(Text)
    difficulties: Mapped[str | None] = mapped_column(Text)
    measures: Mapped[str | None] = mapped_column(Text)
    away_from: Mapped[date | None] = mapped_column(Date)
    away_until: Mapped[date | None] = mapped_column(Date)
    away_reason: Mapped[str | None] = mapped_column(String(64))
    risk_level: Mapped[str | None] = mapped_column(String(2))  # 红/橙/黄/绿
    risk_score: Mapped[float | None] = mapped_column(Float)
    risk_reasons: Mapped[list[str] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)
    # On the register from (its first import) until ``deregistered_at`` (迁出, 去世, 注销): one
    # removal is kept, no history; a family marked 在册 again has it cleared.
    registered_at: Mapped[datetime | None] = mapped_column(DateTime)
    deregistered_at: Mapped[datetime | None] = mapped_column(DateTime)
    deregistered_reason: Mapped[str | None] = mapped_column(String(16))  # moved_away|deceased|other


class Cadre(Base):
    """A federation cadre (妇联干部), executive member (执委), grid worker (网格员), chair, mediator or supervisor."""

    __tablename__ = "cadres"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    phone: Mapped[str | None] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(24), index=True)
    grid_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    capacity: Mapped[int] = mapped_column(Integer, default=10)
    alert_channel: Mapped[str | None] = mapped_column(String(16))
    alert_address: Mapped[str | None] = mapped_column(String(512))
    four_plus_one: Mapped[bool] = mapped_column(Boolean, default=False)
    grassroots_weekday: Mapped[int | None] = mapped_column(Integer)
    on_leave_from: Mapped[date | None] = mapped_column(Date)
    on_leave_until: Mapped[date | None] = mapped_column(Date)


class CadreGrid(Base):
    """Which grids a cadre covers (association, for joins; mirrors ``Cadre.grid_ids``)."""

    __tablename__ = "cadre_grids"
    cadre_id: Mapped[str] = mapped_column(ForeignKey("cadres.id"), primary_key=True)
    grid_id: Mapped[str] = mapped_column(ForeignKey("areas.id"), primary_key=True, index=True)


class Assignment(Base):
    """The cadre who keeps a family (continuity: the same cadre where possible)."""

    __tablename__ = "assignments"
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), primary_key=True)
    cadre_id: Mapped[str] = mapped_column(ForeignKey("cadres.id"), index=True)
    since: Mapped[date] = mapped_column(Date)


# --------------------------------------------------------------------------- visits
class VisitPlan(Base):
    """A planned visit (走访计划) to a household by a cadre, due in a window."""

    __tablename__ = "visit_plans"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    cadre_id: Mapped[str | None] = mapped_column(ForeignKey("cadres.id"), index=True)
    grid_id: Mapped[str] = mapped_column(ID, index=True)
    due_date: Mapped[date] = mapped_column(Date, index=True)
    window_start: Mapped[date | None] = mapped_column(Date)
    window_end: Mapped[date | None] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(64))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="planned", index=True)  # planned|done|missed|cancelled
    planned_on: Mapped[date] = mapped_column(Date)
    closed_by_visit_id: Mapped[str | None] = mapped_column(ID)
    # The family's own cadre when a colleague takes this visit (leave, 4+1 day): both are told.
    moved_from: Mapped[str | None] = mapped_column(ID)


class Visit(Base):
    """A visit record (走访记录), with the five-step method and findings."""

    __tablename__ = "visits"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    plan_id: Mapped[str | None] = mapped_column(ID, index=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    cadre_id: Mapped[str] = mapped_column(ForeignKey("cadres.id"), index=True)
    visited_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    mode: Mapped[str] = mapped_column(String(8))  # visit|phone|wechat
    steps: Mapped[list[str]] = mapped_column(JSON, default=list)
    family_situation: Mapped[str | None] = mapped_column(Text)  # 家情
    business_situation: Mapped[str | None] = mapped_column(Text)  # 企情
    women_situation: Mapped[str | None] = mapped_column(Text)  # 妇情
    difficulties: Mapped[str | None] = mapped_column(Text)
    measures: Mapped[str | None] = mapped_column(Text)
    demand_category: Mapped[str | None] = mapped_column(String(32))
    follow_up_needed: Mapped[bool] = mapped_column(Boolean, default=False)
    notes: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(256))
    # When the sheet was first stored (a re-import keeps it): a sheet typed in weeks after the
    # visit is still read for danger cues. NULL on rows from before it was kept.
    recorded_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)


# --------------------------------------------------------------------------- meters
class Meter(Base):
    """A smart electricity meter in the home of an elderly person living alone (独居老人)."""

    __tablename__ = "meters"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    interval_minutes: Mapped[int] = mapped_column(Integer, default=15)
    installed_at: Mapped[date | None] = mapped_column(Date)


class ReadingBatch(Base):
    """One ingest of meter readings into the columnar store (the readings' ledger)."""

    __tablename__ = "reading_batches"
    id: Mapped[str] = mapped_column(ID, primary_key=True)  # hash of source + content
    source: Mapped[str] = mapped_column(String(512))
    as_of: Mapped[datetime | None] = mapped_column(DateTime)
    ingested_at: Mapped[datetime] = mapped_column(DateTime)
    rows_read: Mapped[int] = mapped_column(Integer)
    rows_accepted: Mapped[int] = mapped_column(Integer)
    rows_quarantined: Mapped[int] = mapped_column(Integer)
    rows_new: Mapped[int] = mapped_column(Integer)
    first_ts: Mapped[datetime | None] = mapped_column(DateTime)
    last_ts: Mapped[datetime | None] = mapped_column(DateTime)


# --------------------------------------------------------------------------- risk
class RiskFlag(Base):
    """A risk flag (风险预警): one episode with its evidence, raised once, closed with an outcome."""

    __tablename__ = "risk_flags"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    meter_id: Mapped[str | None] = mapped_column(ID)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    start: Mapped[datetime] = mapped_column(DateTime)
    detected_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    end: Mapped[datetime | None] = mapped_column(DateTime)
    evidence: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open|acknowledged|closed
    outcome: Mapped[str | None] = mapped_column(String(32))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)


class RiskMapSnapshot(Base):
    """Households per risk level and grid for one run: the dynamic risk map (家庭风险动态预测预警图)."""

    __tablename__ = "risk_map_snapshots"
    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    grid_id: Mapped[str] = mapped_column(ID, primary_key=True)
    level: Mapped[str] = mapped_column(String(2), primary_key=True)
    households: Mapped[int] = mapped_column(Integer)


# --------------------------------------------------------------------------- alerts
class Alert(Base):
    """An alert in the outbox (预警消息): committed before any send, delivered at most once."""

    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(240), unique=True)
    flag_id: Mapped[str] = mapped_column(ForeignKey("risk_flags.id"), index=True)
    recipient_id: Mapped[str | None] = mapped_column(ID, index=True)
    recipient_role: Mapped[str | None] = mapped_column(String(24))
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(512))
    severity: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    # pending|sending|sent|dead|cancelled ; held (quiet hours) is pending with a later next_attempt_at;
    # cancelled: its flag was acknowledged or closed before it went out (never sent)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    first_sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    acked_at: Mapped[datetime | None] = mapped_column(DateTime)
    acked_by: Mapped[str | None] = mapped_column(ID)
    outcome: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The claim that is sending it (one per dispatcher batch): only that claim records the attempt.
    claim_token: Mapped[str | None] = mapped_column(String(32))


class DeliveryAttempt(Base):
    """One try to deliver an alert over its channel (投递记录)."""

    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    provider_code: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("alert_id", "attempt_no"),)


# --------------------------------------------------------------------------- escalation
class MediationRoom(Base):
    """A family-dispute mediation room (木兰调解室 / 婚姻家庭调解工作室) serving a township."""

    __tablename__ = "mediation_rooms"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    township_id: Mapped[str] = mapped_column(ForeignKey("areas.id"), index=True)
    mediator_ids: Mapped[list[str]] = mapped_column(JSON, default=list)


class MediationCase(Base):
    """A family dispute escalated to a mediation room (调解案件)."""

    __tablename__ = "mediation_cases"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    room_id: Mapped[str | None] = mapped_column(ForeignKey("mediation_rooms.id"), index=True)
    mediator_id: Mapped[str | None] = mapped_column(ID)
    source_visit_id: Mapped[str | None] = mapped_column(ID)
    source_flag_id: Mapped[str | None] = mapped_column(ID)
    cues: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The findings the case holds: those it was opened with and those that joined it while it
    # was open (NULL on cases opened before revision 0009: only source_flag_id is known).
    flag_ids: Mapped[list[str] | None] = mapped_column(JSON)
    opened_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open|closed
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    outcome: Mapped[str | None] = mapped_column(String(64))


class ServiceResource(Base):
    """An entry of the service-resource pool (服务资源池)."""

    __tablename__ = "service_resources"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    provider_type: Mapped[str] = mapped_column(String(32))
    offers: Mapped[list[str]] = mapped_column(JSON, default=list)
    village_id: Mapped[str | None] = mapped_column(ID, index=True)
    contact_name: Mapped[str | None] = mapped_column(String(64))
    phone: Mapped[str | None] = mapped_column(String(32))


class ServiceNeed(Base):
    """A need raised in a visit, to be matched with the resource pool (需求)."""

    __tablename__ = "service_needs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    village_id: Mapped[str | None] = mapped_column(ID)
    category: Mapped[str] = mapped_column(String(32), index=True)
    source_visit_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|matched|closed
    matched_resource_id: Mapped[str | None] = mapped_column(ID)
    # when it was matched (the end of the matching run's day), so a report re-made later shows
    # it open in the periods before; NULL on needs matched before revision 0008: time unknown
    matched_at: Mapped[datetime | None] = mapped_column(DateTime)


# --------------------------------------------------------------------------- reports, validation, audit
class Report(Base):
    """A periodic summary report to the party committee and government (工作报告): aggregates only."""

    __tablename__ = "reports"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    path: Mapped[str] = mapped_column(String(512))
    content_sha256: Mapped[str] = mapped_column(String(64))
    aggregates: Mapped[dict[str, Any]] = mapped_column(JSON)


class ValidationRun(Base):
    """One validation of data at a hand-over: counts and failing columns/rows, never raw values."""

    __tablename__ = "validation_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stage: Mapped[str] = mapped_column(String(48), index=True)
    suite: Mapped[str] = mapped_column(String(48))
    source: Mapped[str] = mapped_column(String(512))
    at: Mapped[datetime] = mapped_column(DateTime)
    success: Mapped[bool] = mapped_column(Boolean)
    rows_read: Mapped[int] = mapped_column(Integer)
    rows_accepted: Mapped[int] = mapped_column(Integer)
    rows_quarantined: Mapped[int] = mapped_column(Integer)
    failures: Mapped[list[str] | None] = mapped_column(JSON)
    # What was validated and how it came out (stage, suite, source, the data's digest, result):
    # validating the same data again is the same run, kept once. NULL on runs from before 0005.
    digest: Mapped[str | None] = mapped_column(String(64), unique=True)


class QuarantinedRow(Base):
    """A row that failed validation, kept with its reason so nothing is lost (隔离数据)."""

    __tablename__ = "quarantined_rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    source: Mapped[str] = mapped_column(String(512))
    # The batch the row came in: a file's content digest or a reading batch's id. Two files
    # of the same name (or two API pulls) are two batches; the same file again is the same one.
    batch: Mapped[str] = mapped_column(String(64), default="", server_default="")
    line: Mapped[int | None] = mapped_column(Integer)
    field: Mapped[str | None] = mapped_column(String(64))
    code: Mapped[str] = mapped_column(String(48))
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Meter-API pulls only (NULL for files): a digest of the reading's meter id and time as
    # sent (and which occurrence of them in the pull). Pulls overlap (they resume from the
    # meter that lags most), so the same reading arrives in several batches; with the code it
    # is quarantined once, whichever pull brings it again.
    reading_key: Mapped[str | None] = mapped_column(String(40))
    __table_args__ = (UniqueConstraint("kind", "source", "batch", "line", "field", "code"),
                      UniqueConstraint("kind", "source", "reading_key", "code"))


class AuditEvent(Base):
    """Who changed what, when (操作留痕)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(48))
    entity: Mapped[str] = mapped_column(String(48))
    entity_id: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id"),)


class Notice(Base):
    """A notification to a cadre or supervisor (工作提醒): the daily visit digest, overdue reminders,
    the supervisor's overdue list. One per recipient, kind and day: a re-run sends nothing twice."""

    __tablename__ = "notices"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    recipient_id: Mapped[str] = mapped_column(ID, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # daily_digest | overdue_reminder | supervisor_overdue
    day: Mapped[date] = mapped_column(Date, index=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(512))
    title: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|sending|sent|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
