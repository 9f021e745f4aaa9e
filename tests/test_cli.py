"""The ``sibifang`` command, in-process: generate, import (with broken rows), stats, export, detect, ack."""

from __future__ import annotations

import json
import logging
import re
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


COUNTS = re.compile(r"：读取 (\d+) 行，导入 (\d+) 行，隔离 (\d+) 行")


def counts(out: str, prefix: str) -> tuple[int, int, int]:
    """(read, accepted, quarantined) from the clerk's line ``家庭档案 households.csv：读取 …``."""
    line = next(row for row in out.splitlines() if row.startswith(prefix))
    found = COUNTS.search(line)
    assert found, line
    return tuple(int(n) for n in found.groups())


def test_import_reports_broken_rows_by_line_and_field_and_counts_add_up(cli_env, village_dir):
    invoke("import", "areas", village_dir / "areas.csv")
    out = invoke("import", "households", village_dir / "households.csv")
    read, accepted, quarantined = counts(out, "家庭档案 households.csv")
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
    read, accepted, quarantined = counts(out, "家庭档案 households.xlsx")
    rows = len(pd.read_excel(village_dir / "households.xlsx", dtype=str))
    assert rows > 0
    assert read == accepted == rows and quarantined == 0


def test_import_speaks_chinese_to_the_clerk(cli_env, village_dir):
    invoke("import", "areas", village_dir / "areas.csv")
    out = invoke("import", "households", village_dir / "households.csv")
    line = next(row for row in out.splitlines() if row.startswith("家庭档案 households.csv："))
    assert "→ 报告" in line
    for english in ("read", "accepted", "quarantined"):
        assert english not in line


def test_a_file_that_cannot_be_imported_prints_its_reason_and_exits_1(cli_env, village_dir, tmp_path, monkeypatch):
    # Prefect's console handler (on the root logger) holds the stderr of the CliRunner call that
    # set it up, closed by now: keep the stage's warnings off it (one process has one stderr).
    monkeypatch.setattr(logging.getLogger("sibifang"), "propagate", False)
    bad = tmp_path / "households.csv"
    bad.write_text("household_id,head_name\nH1,李桂英\n", encoding="utf-8")
    result = runner.invoke(app, ["import", "households", str(bad)])
    assert result.exit_code == 1
    assert "家庭档案 households.csv：未导入。文件 households.csv 缺少必需的列" in result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # a clean exit
    readings = tmp_path / "readings.csv"
    readings.write_text("meter_id,ts,kwh\nM1,2026-11-20 00:15,0.1\nM1,2026-11-20 00:30,0.1,9\n", encoding="utf-8")
    result = runner.invoke(app, ["import", "readings", str(readings)])
    assert result.exit_code == 1 and "readings.csv 第3行的列数多于表头" in result.output
    # A hand-over directory: the bad file is reported, the others are imported all the same.
    handover = tmp_path / "handover"
    handover.mkdir()
    (handover / "areas.csv").write_bytes((village_dir / "areas.csv").read_bytes())
    (handover / "households.csv").write_bytes(bad.read_bytes())
    (handover / "cadres.csv").write_bytes((village_dir / "cadres.csv").read_bytes())
    result = runner.invoke(app, ["import", "all", str(handover)])
    assert result.exit_code == 1
    assert "households.csv：未导入" in result.output
    assert counts(result.output, "行政区划与网格 areas.csv")[0] > 0
    assert counts(result.output, "干部与网格员 cadres.csv")[0] > 0


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
