"""The closed loop under Prefect's test harness: end to end, idempotent, the same on both engines."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def isolated_env():
    """The demo writes settings into os.environ; put everything back afterwards."""
    from sibifang.settings import reset_settings

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    reset_settings()


def _run_demo(out: Path, database_url: str, days: int = 2) -> dict:
    from sibifang.demo import run_demo

    os.environ["SIBIFANG_DATABASE_URL"] = database_url
    return run_demo(scale="village", seed=5, days=days, out=out, reset=True, echo=lambda m: None)


def _row_counts(database_url: str) -> dict[str, int]:
    """Rows of every table of the models, so a table added later is counted too."""
    from sqlalchemy import func, select

    from schemas.models import Base
    from sibifang.db import session_scope

    with session_scope(database_url) as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def test_closed_loop_end_to_end_and_rerun_changes_nothing(prefect_harness, isolated_env, tmp_path):
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    summary = _run_demo(tmp_path / "out", url)
    from sibifang.stats import collect_stats

    stats = collect_stats(url)
    for key in ("households", "cadres", "visit_plans", "readings", "flags", "alerts", "reports"):
        assert stats[key] > 0, key
    assert summary["alerts_received_twice"] == 0
    assert stats["quarantined_rows"] >= 5  # the generator's broken household rows, each with its reason
    report = Path(summary["report"])
    html = report.read_text(encoding="utf-8")
    assert "四必访工作情况报告" in html and "<svg" in html
    # No personal data in the report: no household head names, ID numbers or phones of the registry.
    hh = pd.read_csv(tmp_path / "out" / "area" / "households.csv", dtype=str).head(300)
    assert not any(n in html for n in hh.id_number.dropna())
    assert not any(p in html for p in hh.phone.dropna())

    # Re-running the last day, with the same inputs, changes nothing and sends nothing.
    from flows.closed_loop import closed_loop

    received = (tmp_path / "out" / "alerts-received.jsonl").read_text(encoding="utf-8").count("\n")
    last_day = date.fromisoformat(json.loads((tmp_path / "out" / "area" / "manifest.json").read_text())["end"])
    from datetime import timedelta

    os.environ["SIBIFANG_ALERT_WEBHOOK_URL"] = "http://127.0.0.1:9/never-called"
    from sibifang.settings import reset_settings

    reset_settings()
    from sqlalchemy import select

    from schemas.models import Alert, Household, RiskMapSnapshot
    from sibifang.db import session_scope

    def sent_attempts():
        with session_scope(url) as s:
            return dict(s.execute(select(Alert.id, Alert.attempts).where(Alert.status == "sent")).all())

    sent_before = sent_attempts()
    def risk_state():
        with session_scope(url) as s:
            return (sorted(s.execute(select(Household.id, Household.risk_level, Household.risk_score)).all()),
                    sorted(s.execute(select(RiskMapSnapshot.as_of, RiskMapSnapshot.grid_id, RiskMapSnapshot.level,
                                            RiskMapSnapshot.households)).all()))

    rows_before = _row_counts(url)
    risk_before = risk_state()
    result = closed_loop(as_of=last_day - timedelta(days=1), report=True, report_period_days=2)
    # Nothing delivered is tried again (alerts still pending may be, to a receiver that is down).
    after_sent = sent_attempts()
    assert {k: after_sent.get(k) for k in sent_before} == sent_before
    assert result["dispatch_alerts"]["sent"] == 0
    assert result["flag_risks"]["new_flags"] == 0
    assert result["schedule_visits"]["new_plans"] == 0
    after = collect_stats(url)
    for key in ("visit_plans", "visits", "readings", "flags", "alerts", "cases", "reports", "needs"):
        assert after[key] == stats[key], key
    # Every table, not only the ones named above: a log table that grows on a re-run is caught too
    # (validation runs included: the replayed day is scored as of its end, so every stage hands
    # over the same data as the first time).
    rows_after = _row_counts(url)
    assert {t: (rows_before[t], n) for t, n in rows_after.items() if n != rows_before[t]} == {}
    # The replay of an earlier day leaves the households' current levels and the risk map's days alone.
    assert risk_state() == risk_before
    # Once more, nothing having happened since: not a row more anywhere, validation runs included.
    closed_loop(as_of=last_day - timedelta(days=1), report=True, report_period_days=2)
    assert _row_counts(url) == rows_after
    # Alerts still pending would be tried again (never delivered, so not a re-send): none here.
    assert stats["alerts_pending"] == 0
    assert stats["alerts"] == sum(stats[f"alerts_{k}"] for k in ("sent", "dead", "cancelled", "pending"))
    assert (tmp_path / "out" / "alerts-received.jsonl").read_text(encoding="utf-8").count("\n") == received

    # A supervisor re-plans one grid by hand, with parameters, through the command.
    from typer.testing import CliRunner

    from sibifang.cli import app

    grid = pd.read_csv(tmp_path / "out" / "area" / "areas.csv", dtype=str).grid_id.iloc[0]
    day = last_day - timedelta(days=1)
    res = CliRunner().invoke(app, ["run", "schedule_visits", "--param", f"grid={grid}", "--param",
                                   f"as_of={day}"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out, _ = json.JSONDecoder().raw_decode(res.output[res.output.index("{\n"):])  # logs may follow
    assert out["new_plans"] == 0 and out["planned"] > 0  # same inputs: the same plan, nothing new


def test_importing_the_same_registry_again_changes_nothing(prefect_harness, isolated_env, tmp_path, village_dir):
    """No new rows anywhere, validation runs and audit events included (the broken rows too)."""
    from flows.import_registry import import_registry
    from sibifang.db import migrate

    url = f"sqlite:///{tmp_path / 'import.db'}"
    os.environ["SIBIFANG_DATABASE_URL"] = url
    from sibifang.settings import reset_settings

    reset_settings()
    migrate(url)
    import_registry(str(village_dir))
    first = _row_counts(url)
    assert first["households"] > 0 and first["quarantined_rows"] >= 5 and first["audit_events"] > 0
    import_registry(str(village_dir))
    assert _row_counts(url) == first


def test_same_counts_on_postgresql(prefect_harness, isolated_env, tmp_path, postgres_url):
    from tests.conftest import _clean_postgres

    _clean_postgres(postgres_url)
    pg = _run_demo(tmp_path / "pg", postgres_url)
    lite = _run_demo(tmp_path / "lite", f"sqlite:///{tmp_path / 'lite.db'}")
    keys = ("households", "cadres", "visits_planned", "visits_done", "visit_records", "readings", "flags",
            "alerts_delivered", "alerts_pending", "cases_opened", "quarantined_rows")
    assert {k: pg[k] for k in keys} == {k: lite[k] for k in keys}


def test_a_broken_handover_stops_the_stages_after_it(prefect_harness, isolated_env, tmp_path, monkeypatch):
    """A failed critical expectation stops the flow and names the source, column and rows."""
    from schemas.validation import DataContractError
    from sibifang.db import migrate
    from tasks.common import validate_handover

    url = f"sqlite:///{tmp_path / 'v.db'}"
    migrate(url)
    bad = pd.DataFrame({"visit_id": ["V1", "V1"], "household_id": ["H1", "H2"], "cadre_id": ["C1", "C1"],
                        "grid_id": ["G1", "G1"], "due_date": pd.to_datetime(["2026-11-20", None]),
                        "window_start": pd.to_datetime(["2026-11-18", "2026-11-18"]),
                        "window_end": pd.to_datetime(["2026-11-22", "2026-11-22"]), "reason": ["hardship"] * 2,
                        "urgent": [False, False], "status": ["planned", "planned"]})
    from prefect import flow

    @flow
    def handover():
        validate_handover(bad, "visit_plans", stage="schedule_visits", source="plans.csv", database_url=url)
        return "later stage ran"

    with pytest.raises(DataContractError) as err:
        handover()
    text = str(err.value)
    assert "plans.csv" in text and ("visit_id" in text or "due_date" in text)


def test_a_new_installation_runs_every_scheduled_flow_before_anything_is_imported(prefect_harness, app_env,
                                                                                  database_url, monkeypatch):
    """The schedules start with the server: the first morning's planning, the hourly flagging and
    the Monday report come before the clerk's first import, and must not fail on an empty database."""
    from flows import get_flow
    from sibifang.db import migrate
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_DATABASE_URL", database_url)
    reset_settings()
    migrate(database_url)
    day = date(2026, 12, 1)
    for name, params in (("schedule_visits", {"as_of": day}), ("flag_risks", {"as_of": day}),
                         ("summary_report", {"period": "week", "as_of": day}),
                         ("closed_loop", {"as_of": day, "report": True})):
        result = get_flow(name)(**params)
        assert isinstance(result, dict), name
    assert not _row_counts(database_url)["visit_plans"] and not _row_counts(database_url)["risk_flags"]
