"""Database access: one engine per URL, migrations, and the upsert every stage uses.

SQLite (the county office's embedded default) and PostgreSQL (a city's cluster) are
driven through the same code; the only dialect-specific part is the upsert statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from schemas.models import AuditEvent, Base
from sibifang.records import chunks
from sibifang.settings import local_now

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def database_url(url: str | None = None) -> str:
    if url:
        return url
    from sibifang.settings import get_settings

    return get_settings().database_url


def get_engine(url: str | None = None) -> Engine:
    """The engine of ``url``, or of the configured database (``SIBIFANG_DATABASE_URL``)."""
    # Resolved before the cache: keyed by None, a changed setting would keep the old engine.
    return _engine(database_url(url))


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    # hide_parameters: a failed statement's text reaches Prefect's task-run logs, and its bound
    # values are cadres' robot webhook keys, phone numbers and ID numbers.
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        db_file = make_url(url).database
        if db_file and db_file != ":memory:":
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            # WAL lets the report read while a flow writes; busy_timeout waits instead of failing.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    maker = sessionmaker(get_engine(url), expire_on_commit=False)
    with maker() as session:
        with session.begin():
            yield session


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def upsert(
    session: Session,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Iterable[str] | None = None,
) -> int:
    """Insert rows, or update ``update`` columns where ``key`` exists; returns rows sent.

    With ``update=()`` existing rows are left alone (insert-or-ignore): used where a
    re-run must not change what is already there (flags, alerts, cases).
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    cols = list(rows[0].keys())
    update_cols = [c for c in (cols if update is None else update) if c not in key]
    table = model.__table__
    stmt = insert(table)
    if update_cols:
        stmt = stmt.on_conflict_do_update(index_elements=list(key),
                                          set_={c: stmt.excluded[c] for c in update_cols})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    # One compiled statement, executed for many parameter sets (Core executemany): compiling a
    # multi-row VALUES clause per batch costs more than the database work itself.
    conn = session.connection()
    for batch in chunks(rows, 5000):
        conn.execute(stmt, [dict(r) for r in batch])
    return len(rows)


def audit(session: Session, actor: str, action: str, entity: str, entity_id: str | None = None,
          detail: dict[str, Any] | None = None, at: datetime | None = None) -> None:
    """Record who changed what (never personal data in ``detail``)."""
    session.add(AuditEvent(at=at or local_now(), actor=actor, action=action, entity=entity,
                           entity_id=entity_id, detail=detail))


def read_frame(stmt, database_url: str | None = None):
    """A SELECT as a DataFrame: how every stage reads its inputs in one batch."""
    import pandas as pd

    with get_engine(database_url).connect() as conn:
        return pd.read_sql(stmt, conn)


def grid_hierarchy(database_url: str | None = None):
    """grid → village → township → district, one row per grid."""
    from schemas.models import Area

    a = read_frame(select(Area.id, Area.level, Area.parent_id), database_url)
    parent = dict(zip(a.id, a.parent_id))
    grids = a[a.level == "grid"][["id"]].rename(columns={"id": "grid_id"})
    # object, not the float64 pandas gives an empty map: a new installation's empty frame must
    # still join on these ids (the first scheduled report runs before anything is imported)
    grids["village_id"] = grids.grid_id.map(parent).astype(object)
    grids["township_id"] = grids.village_id.map(parent).astype(object)
    grids["district_id"] = grids.township_id.map(parent).astype(object)
    return grids.reset_index(drop=True)


def count(session: Session, model: type[Base], *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0
