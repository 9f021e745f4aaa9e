"""The ``sibifang`` command, in-process: generate, import (with broken rows), stats, export, detect, ack."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sibifang.cli import app

runner = CliRunner()


@pytest.fixture
def cli_env(app_env, monkeypatch):
    url = f"sqlite:///{app_env / 'cli.db'}"
    monkeypatch.setenv("SIBIFANG_DATABASE_URL", url)
    from sibifang.settings import reset_settings

    reset_settings()
    return app_env


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_import_reports_broken_rows_by_line_and_field_and_counts_add_up(cli_env, village_dir):
    invoke("import", "areas", village_dir / "areas.csv")
    out = invoke("import", "households", village_dir / "households.csv")
    line = next(row for row in out.splitlines() if row.startswith("households"))
    nums = [int(x) for x in line.split() if x.isdigit()]
    read, accepted, quarantined = nums[0], nums[1], nums[2]
    assert read == accepted + quarantined and quarantined == 5
    assert "行号" in out and "身份证号" in out
    # Running it twice changes nothing.
    stats1 = json.loads(invoke("stats", "--json"))
    invoke("import", "households", village_dir / "households.csv")
    stats2 = json.loads(invoke("stats", "--json"))
    assert stats1["households"] == stats2["households"] == accepted


def test_import_of_an_xlsx_registry(cli_env, village_dir):
    invoke("import", "areas", village_dir / "areas.csv")
    out = invoke("import", "households", village_dir / "households.xlsx")
    line = next(row for row in out.splitlines() if row.startswith("households"))
    nums = [int(x) for x in line.split() if x.isdigit()]
    read, accepted, quarantined = nums[0], nums[1], nums[2]
    rows = len(pd.read_excel(village_dir / "households.xlsx", dtype=str))
    assert rows > 0
    assert read == accepted == rows and quarantined == 0


def test_stats_json_has_the_documented_keys(cli_env):
    s = json.loads(invoke("stats", "--json"))
    for key in ("households", "cadres", "visit_plans", "visits", "readings", "flags", "alerts", "cases", "reports"):
        assert key in s and isinstance(s[key], int)


def test_export_columns(cli_env, village_dir, tmp_path):
    invoke("import", "all", village_dir)
    invoke("export", "cadres", "--out", tmp_path / "cadres.csv")
    cadres = pd.read_csv(tmp_path / "cadres.csv", dtype=str)
    assert {"cadre_id", "role", "grid_ids", "capacity"} <= set(cadres.columns)
    assert cadres.grid_ids.dropna().str.contains(";").any()
    for what, cols in {"visits": {"visit_id", "household_id", "cadre_id", "grid_id", "due_date", "reason", "urgent",
                                  "status"},
                       "alerts": {"alert_id", "flag_id", "recipient", "channel", "status", "attempts", "first_sent_at",
                                  "acked_at"},
                       "flags": {"flag_id", "household_id", "kind", "severity", "start", "detected_at"},
                       "cases": {"case_id", "household_id", "room_id", "status"},
                       "coverage": {"level", "unit_id", "due", "visited_on_time", "late", "missed", "away"}}.items():
        invoke("export", what, "--out", tmp_path / f"{what}.csv")
        assert cols <= set(pd.read_csv(tmp_path / f"{what}.csv").columns), what


def test_detect_follows_the_contract(tmp_path):
    candidates = [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    real = next((c / "data" / "household-meters" / "readings.csv" for c in candidates
                 if (c / "data" / "household-meters" / "readings.csv").exists()), candidates[0])
    if not real.exists():
        pytest.skip("shared real data not present")
    df = pd.read_csv(real)
    df = df[df.meter_id == "uci-sceaux"]
    df = df[(df.ts >= "2008-07-01") & (df.ts < "2008-09-15")]  # includes the real August 2008 absence
    src = tmp_path / "r.csv"
    df.to_csv(src, index=False)
    invoke("detect", "--readings", src, "--out", tmp_path / "flags.csv")
    flags = pd.read_csv(tmp_path / "flags.csv")
    assert list(flags.columns[:6]) == ["meter_id", "kind", "start", "detected_at", "severity", "score"]
    assert len(flags) >= 1
    assert (pd.to_datetime(flags.detected_at) >= pd.to_datetime(flags.start)).all()
    absence = flags[(pd.to_datetime(flags.start) >= "2008-08-05") & (pd.to_datetime(flags.start) <= "2008-08-08")]
    assert len(absence) >= 1, "the real August 2008 absence should be flagged"
    # by default only what would alert a grid worker; --min-severity low adds the recorded ones
    assert set(flags.severity) <= {"medium", "high", "critical"}
    invoke("detect", "--readings", src, "--out", tmp_path / "all.csv", "--min-severity", "low")
    every = pd.read_csv(tmp_path / "all.csv")
    assert "low" in set(every.severity)
    assert len(every[every.severity != "low"]) == len(flags)
    result = runner.invoke(app, ["detect", "--readings", str(src), "--out", str(tmp_path / "x.csv"),
                                 "--min-severity", "urgent"])
    assert result.exit_code == 2


def test_detect_rejects_a_file_without_the_contract_columns(tmp_path):
    src = tmp_path / "bad.csv"
    pd.DataFrame({"meter": ["a"], "time": ["2026-01-01 00:15"], "kwh": [0.1]}).to_csv(src, index=False)
    result = runner.invoke(app, ["detect", "--readings", str(src), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2
    assert "meter_id" in result.output


def test_ack_unknown_alert_fails_clearly(cli_env):
    invoke("migrate")
    result = runner.invoke(app, ["ack", "A-nope"])
    assert result.exit_code == 1
    assert "A-nope" in result.output
