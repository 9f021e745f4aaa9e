"""Shared fixtures: databases (SQLite and PostgreSQL), Prefect's test harness, a synthetic village."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# CI's verdict must not depend on the draw: there, Hypothesis replays the same examples every
# run (derandomized); a developer's runs draw new ones, and a failure found is kept for replay.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

PG_URL = os.environ.get("SIBIFANG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh schema in the local PostgreSQL for this test session, dropped afterwards.

    In CI (``CI`` set) a missing PostgreSQL fails the run instead of skipping: the database
    layer must be tested on both engines."""
    if not _postgres_available():
        if os.environ.get("CI") or os.environ.get("SIBIFANG_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL not reachable at {PG_URL}")
        pytest.skip("PostgreSQL not reachable")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:10]}"
    raw = PG_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The same test on both engines."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url = request.getfixturevalue("postgres_url")
    _clean_postgres(url)
    return url


def _clean_postgres(url: str) -> None:
    from sqlalchemy import text

    from schemas.models import Base
    from sibifang.db import get_engine

    with get_engine(url).begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test harness for the session, heartbeats off (they add ≈1 s per flow run)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings({PREFECT_HOME: str(home), PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        # its first start creates and migrates a new database: about 30 s on a two-core machine
        with prefect_test_harness(server_startup_timeout=180):
            yield


@pytest.fixture(scope="session")
def village_dir(tmp_path_factory) -> Path:
    """A small synthetic village (generated once per session)."""
    from sibifang.generate import generate_area

    out = tmp_path_factory.mktemp("village")
    generate_area("village", 11, out, days=30, broken_rows=5)
    return out


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """Settings pointing into a temporary directory; returns that directory."""
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SIBIFANG_INBOX_DIR", str(tmp_path / "data" / "inbox"))
    monkeypatch.setenv("SIBIFANG_OUT_DIR", str(tmp_path / "out"))
    # Tests write a drop file and read it at once (tests/test_inbox.py tests the settling).
    monkeypatch.setenv("SIBIFANG_INBOX_SETTLE_SECONDS", "0")
    monkeypatch.delenv("SIBIFANG_ALERT_WEBHOOK_URL", raising=False)
    reset_settings()
    yield tmp_path
    reset_settings()


@pytest.fixture
def own_channels(monkeypatch):
    """Alerts and notices go to each cadre's own address: no default webhook, no rate limits,
    no channel cached from another test."""
    from sibifang.settings import reset_settings
    import tasks.dispatch_alerts as td

    for k in ("SIBIFANG_ALERT_WEBHOOK_URL", "SIBIFANG_ALERT_WEBHOOK_SECRET"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SIBIFANG_RATE_LIMITS", "false")
    reset_settings()
    td._CHANNELS.clear()
    yield
    td._CHANNELS.clear()
    reset_settings()
