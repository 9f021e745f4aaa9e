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
    from sqlalchemy import text

    migrate(database_url, "0001")
    with session_scope(database_url) as s:
        _seed_area(s)
        s.flush()
        # Written as that schema's rows (the model has columns added since). The first import
        # set updated_at, and only then: it becomes the family's registered_at (0010).
        s.execute(text("INSERT INTO households (id, head_name, grid_id, categories, elderly_living_alone, consent, "
                       "updated_at) VALUES ('H1', '李桂英', 'G1', '[\"empty_nest\"]', false, true, :at), "
                       "('H2', '张秀兰', 'G1', '[]', false, true, NULL)"), {"at": datetime(2026, 11, 2, 9, 0)})
    migrate(database_url)
    tables = set(inspect(get_engine(database_url)).get_table_names())
    assert {"notices"} <= tables
    cols = {c["name"] for c in inspect(get_engine(database_url)).get_columns("visit_plans")}
    assert "moved_from" in cols
    with session_scope(database_url) as s:
        assert s.get(Household, "H1").head_name == "李桂英"
        assert s.get(Household, "H1").categories == ["empty_nest"]
        assert s.get(Household, "H1").registered_at == datetime(2026, 11, 2, 9, 0)
        assert s.get(Household, "H2").registered_at is None
        assert s.get(Household, "H1").deregistered_at is None


def test_downgrade_below_0004_keeps_the_newest_row_of_a_key_two_batches_share(database_url):
    """Two batches quarantined the same line, field and code: the old key holds one of them."""
    from alembic import command
    from sqlalchemy import text

    from sibifang.db import alembic_config

    migrate(database_url, "0004")
    insert = text("INSERT INTO quarantined_rows (kind, source, batch, line, field, code, reason) "
                  "VALUES ('import_visits', 'v.csv', :batch, :line, :field, 'unknown', :reason)")
    with get_engine(database_url).begin() as conn:
        for batch, line, field, reason in [("b1", 2, "household_id", "first"), ("b2", 2, "household_id", "second"),
                                           ("b1", 3, "mode", "only"),
                                           ("b1", None, None, "whole file"), ("b2", None, None, "whole file")]:
            conn.execute(insert, {"batch": batch, "line": line, "field": field, "reason": reason})
    command.downgrade(alembic_config(database_url), "0003")
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(text("SELECT line, field, reason FROM quarantined_rows ORDER BY id")).all()
    # The newest of the shared key stays; NULL lines never collided and are all kept.
    assert [tuple(r) for r in rows] == [(2, "household_id", "second"), (3, "mode", "only"),
                                        (None, None, "whole file"), (None, None, "whole file")]
    migrate(database_url)  # and up again
    cols = {c["name"] for c in inspect(get_engine(database_url)).get_columns("quarantined_rows")}
    assert "batch" in cols


def test_validation_runs_are_kept_once_per_content_and_result(database_url):
    """Runs from before 0005 keep a NULL digest; the same validation again adds no row."""
    from sqlalchemy import text

    from schemas.models import ValidationRun
    from sibifang.import_registry import record_validation

    migrate(database_url, "0004")
    with get_engine(database_url).begin() as conn:
        for _ in range(2):
            conn.execute(text("INSERT INTO validation_runs (stage, suite, source, at, success, rows_read, "
                              "rows_accepted, rows_quarantined) VALUES ('flag_risks', 'risk_flags', 'old', "
                              ":at, true, 1, 1, 0)"), {"at": datetime(2026, 11, 20)})
    migrate(database_url)

    def validate(content: str, success: bool = True) -> None:
        with session_scope(database_url) as s:
            record_validation(s, stage="flag_risks", suite="risk_flags", source="flag_risks candidates", read=3,
                              accepted=3, quarantined=None, failures=[] if success else ["x(kind): 1"],
                              success=success, content=content, now=datetime(2026, 11, 21))

    validate("d1")
    validate("d1")  # a re-run: the same data, the same result
    with session_scope(database_url) as s:
        assert count(s, ValidationRun) == 3
        assert count(s, ValidationRun, ValidationRun.digest.is_(None)) == 2
    validate("d2")  # other data
    validate("d1", success=False)  # the same data, another result (the suite changed)
    with session_scope(database_url) as s:
        assert count(s, ValidationRun) == 5
    from alembic import command

    from sibifang.db import alembic_config

    command.downgrade(alembic_config(database_url), "0004")
    assert "digest" not in {c["name"] for c in inspect(get_engine(database_url)).get_columns("validation_runs")}
    migrate(database_url)


def test_a_handover_validated_again_is_recorded_once(database_url):
    import pandas as pd

    from schemas.models import ValidationRun
    from tasks.common import validate_handover

    migrate(database_url)
    plans = pd.DataFrame({"visit_id": ["P1", "P2"], "household_id": ["H1", "H2"], "cadre_id": ["K1", "K1"],
                          "due_date": pd.to_datetime(["2026-01-10"] * 2), "urgent": [False, False],
                          "status": ["planned", "planned"]})
    for df in (plans, plans.iloc[::-1], plans.copy()):  # row order is not content
        validate_handover.fn(df, "visit_plans", stage="schedule_visits", source="plans", database_url=database_url)
    with session_scope(database_url) as s:
        assert count(s, ValidationRun) == 1
    validate_handover.fn(plans.assign(urgent=[True, False]), "visit_plans", stage="schedule_visits",
                         source="plans", database_url=database_url)
    with session_scope(database_url) as s:
        assert count(s, ValidationRun) == 2
