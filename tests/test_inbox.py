"""Drop folders read safely: a file still being copied in waits; one run at a time per folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from sibifang.inbox import claim, ready_files
from tests.test_inbox_rejects import VISIT_HEADER, inbox, seed, use_database


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_only_settled_deliveries_are_ready(tmp_path):
    for name in ("old.csv", "fresh.csv", ".hidden.csv", "~$名单.xlsx", "notes.txt", "OLD2.CSV"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    (tmp_path / "done").mkdir()
    for name in ("old.csv", ".hidden.csv", "~$名单.xlsx", "notes.txt", "OLD2.CSV"):
        _age(tmp_path / name, 120)
    ready = ready_files(tmp_path, (".csv", ".xlsx"), settle_seconds=30)
    assert [p.name for p in ready] == ["OLD2.CSV", "old.csv"]
    # Once it has settled, the fresh one is ready too.
    later = ready_files(tmp_path, (".csv",), settle_seconds=30, now=time.time() + 31)
    assert [p.name for p in later] == ["OLD2.CSV", "fresh.csv", "old.csv"]
    assert ready_files(tmp_path / "missing", (".csv",), settle_seconds=0) == []


def test_a_folder_is_claimed_by_one_run_at_a_time(tmp_path):
    with claim(tmp_path) as first:
        with claim(tmp_path) as second:
            assert (first, second) == (True, False)
    with claim(tmp_path) as again:
        assert again  # released on exit


def test_a_claim_held_by_another_process_is_seen_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from sibifang.inbox import claim\n"
         "with claim(Path(sys.argv[1])) as mine:\n    print(mine, flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "True"
        with claim(tmp_path) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    with claim(tmp_path) as mine:
        assert mine  # a killed holder does not keep the folder


def test_visit_sheets_wait_until_copied_in_and_for_the_folder(database_url, app_env, monkeypatch):
    from tasks.record_visits import import_visit_files

    seed(database_url)
    monkeypatch.setenv("SIBIFANG_INBOX_SETTLE_SECONDS", "60")
    use_database(monkeypatch, database_url)
    visits = inbox(app_env, "visits")
    sheet = visits / "v.csv"
    sheet.write_text(f"{VISIT_HEADER}\nV1,,H1,K1,2026-11-20 10:00,入户,亮明身份\n", encoding="utf-8")

    def run() -> dict:
        return import_visit_files.fn(str(visits.parent), database_url, str(app_env / "out"), date(2026, 11, 20))

    fresh = run()
    assert (fresh["files"], fresh["read"], fresh["busy"]) == (0, 0, False) and sheet.exists()
    _age(sheet, 120)
    with claim(visits):
        busy = run()
    assert (busy["files"], busy["busy"]) == (0, True) and sheet.exists()
    done = run()
    assert (done["files"], done["read"], done["accepted"] + done["quarantined"]) == (1, 1, 1) and not sheet.exists()
    assert [p.name.split(".")[0] for p in (visits / "done").iterdir()] == ["v"]


def test_the_ingest_flow_leaves_a_claimed_folder_to_its_holder(prefect_harness, database_url, app_env,
                                                                monkeypatch):
    from flows.ingest_readings import ingest_readings

    monkeypatch.delenv("SIBIFANG_METER_API_URL", raising=False)
    use_database(monkeypatch, database_url)
    seed(database_url)
    readings = inbox(app_env, "readings")
    (readings / "a.csv").write_text("meter_id,ts,kwh\nM1,2026-11-20 00:15,0.1\n", encoding="utf-8")
    with claim(readings):
        busy = ingest_readings(date(2026, 11, 20), inbox=str(readings.parent))
    assert (busy["busy"], busy["files"], busy["read"]) == (True, 0, 0) and (readings / "a.csv").exists()
    result = ingest_readings(date(2026, 11, 20), inbox=str(readings.parent))
    assert (result["busy"], result["files"], result["accepted"]) == (False, 1, 1)
    assert not (readings / "a.csv").exists()
