"""The database layer on SQLite and PostgreSQL: migrations, upsert idempotence, constraints."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from schemas.models import Alert, Area, Base, Household, RiskFlag
from sibifang.db import count, get_engine, migrate, session_scope, upsert


def _seed_area(s):
    upsert(s, Area, [{"id": "C1", "level": "city", "name": "甬江市", "parent_id": None, "village_kind": None},
                     {"id": "G1", "level": "grid", "name": "第1网格", "parent_id": "C1", "village_kind": None}],
           key=["id"])


def test_migrations_create_every_table_and_are_idempotent(database_url):
    migrate(database_url)
    migrate(database_url)  # a second upgrade is a no-op
    tables = set(inspect(get_engine(database_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_models_match_migrations(database_url):
    """Autogenerate against the migrated schema finds nothing to do: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate(database_url)
    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upsert_inserts_then_updates_without_duplicates(database_url):
    migrate(database_url)
    with session_scope(database_url) as s:
        _seed_area(s)
        row = {"id": "H1", "head_name": "李桂英", "grid_id": "G1", "categories": ["empty_nest"],
               "elderly_living_alone": True, "consent": True}
        upsert(s, Household, [row], key=["id"])
        upsert(s, Household, [row], key=["id"])
    with session_scope(database_url) as s:
        assert count(s, Household) == 1
        upsert(s, Household, [{**row, "head_name": "李桂芳"}], key=["id"])
    with session_scope(database_url) as s:
        assert s.get(Household, "H1").head_name == "李桂芳"
        assert s.get(Household, "H1").categories == ["empty_nest"]


def test_insert_or_ignore_keeps_the_first_flag(database_url):
    migrate(database_url)
    flag = {"id": "F1", "dedup_key": "meter|M1|inactivity|2026-11-20T20:00", "household_id": "H1", "meter_id": "M1",
            "kind": "inactivity", "severity": "critical", "score": 9.0, "start": datetime(2026, 11, 20, 20),
            "detected_at": datetime(2026, 11, 21, 2), "end": None, "evidence": "用电接近停止", "details": {},
            "status": "open"}
    with session_scope(database_url) as s:
        _seed_area(s)
        upsert(s, Household, [{"id": "H1", "head_name": "李桂英", "grid_id": "G1", "categories": []}], key=["id"])
        upsert(s, RiskFlag, [flag], key=["dedup_key"], update=())
        upsert(s, RiskFlag, [{**flag, "severity": "low"}], key=["dedup_key"], update=())
    with session_scope(database_url) as s:
        assert count(s, RiskFlag) == 1
        assert s.get(RiskFlag, "F1").severity == "critical"


def test_foreign_keys_are_enforced(database_url):
    migrate(database_url)
    with pytest.raises(IntegrityError):
        with session_scope(database_url) as s:
            s.add(Household(id="H9", head_name="王芳", grid_id="NO-SUCH-GRID", categories=[]))


def test_outbox_dedup_key_is_unique(database_url):
    migrate(database_url)
    with session_scope(database_url) as s:
        _seed_area(s)
        s.add(Household(id="H1", head_name="李桂英", grid_id="G1", categories=[]))
        s.flush()
        s.add(RiskFlag(id="F1", dedup_key="k", household_id="H1", kind="inactivity", severity="high", score=1.0,
                       start=datetime(2026, 1, 1), detected_at=datetime(2026, 1, 1), evidence="x"))
        s.flush()
    row = {"id": "A1", "dedup_key": "k|G|L0", "flag_id": "F1", "channel": "webhook", "severity": "high",
           "title": "t", "body": "b", "status": "pending", "attempts": 0, "escalation_level": 0,
           "created_at": datetime(2026, 1, 1)}
    with session_scope(database_url) as s:
        upsert(s, Alert, [row], key=["dedup_key"], update=())
        upsert(s, Alert, [{**row, "id": "A2"}], key=["dedup_key"], update=())
    with session_scope(database_url) as s:
        assert [a.id for a in s.scalars(select(Alert))] == ["A1"]


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    migrate(url)
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_dates_round_trip(database_url):
    migrate(database_url)
    with session_scope(database_url) as s:
        _seed_area(s)
        s.add(Household(id="H2", head_name="张秀兰", grid_id="G1", categories=["hardship"],
                        away_from=date(2026, 11, 1), away_until=date(2026, 11, 30)))
    with session_scope(database_url) as s:
        h = s.get(Household, "H2")
        assert (h.away_from, h.away_until) == (date(2026, 11, 1), date(2026, 11, 30))


def test_upgrade_from_the_first_schema_keeps_the_data(database_url):
    """A county that installed an earlier version upgrades in place."""
    migrate(database_url, "0001")
    with session_scope(database_url) as s:
        _seed_area(s)
        s.add(Household(id="H1", head_name="李桂英", grid_id="G1", categories=["empty_nest"]))
    migrate(database_url)
    tables = set(inspect(get_engine(database_url)).get_table_names())
    assert {"notices"} <= tables
    cols = {c["name"] for c in inspect(get_engine(database_url)).get_columns("visit_plans")}
    assert "moved_from" in cols
    with session_scope(database_url) as s:
        assert s.get(Household, "H1").head_name == "李桂英"
