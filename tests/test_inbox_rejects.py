"""Inbox files and batches, end to end on both engines: a file that cannot be imported is set
aside with its report while the rest of the day goes on; quarantined rows of two batches (two
API pulls, two files of one name) never overwrite each other; a reading that contradicts a
stored one is quarantined, not counted accepted; re-running the same input changes nothing."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select, text

from schemas.models import Area, Household, Meter, QuarantinedRow, ReadingBatch, ValidationRun
from sibifang.db import get_engine, migrate, session_scope, upsert

NOW = datetime(2026, 11, 21, 12, 0)
VISIT_HEADER = "visit_id,plan_id,household_id,cadre_id,visited_at,mode,steps"


def seed(url: str) -> None:
    migrate(url)
    with session_scope(url) as s:
        upsert(s, Area, [{"id": "C1", "level": "city", "name": "甬江市", "parent_id": None, "village_kind": None},
                         {"id": "G001", "level": "grid", "name": "第1网格", "parent_id": "C1", "village_kind": None}],
               key=["id"])
        upsert(s, Household, [{"id": "H1", "head_name": "李桂英", "grid_id": "G001", "categories": ["empty_nest"]}],
               key=["id"])
        upsert(s, Meter, [{"id": "M1", "household_id": "H1", "interval_minutes": 15}], key=["id"])


def use_database(monkeypatch, url: str) -> None:
    """Flows read the database from the settings, never from a parameter."""
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_DATABASE_URL", url)
    reset_settings()


def inbox(app_env: Path, stage: str) -> Path:
    folder = app_env / "data" / "inbox" / stage
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def quarantined(url: str, kind: str) -> list[QuarantinedRow]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(QuarantinedRow).where(QuarantinedRow.kind == kind)
                              .order_by(QuarantinedRow.batch, QuarantinedRow.line)))
        s.expunge_all()
    return rows


def runs(url: str, source: str) -> list[ValidationRun]:
    with session_scope(url) as s:
        found = list(s.scalars(select(ValidationRun).where(ValidationRun.source == source)))
        s.expunge_all()
    return found


# ------------------------------------------------------------------ A: one bad file does not block the others
def test_a_bad_visit_file_is_set_aside_and_the_next_one_imported(database_url, app_env):
    from tasks.record_visits import import_visit_files

    seed(database_url)
    visits = inbox(app_env, "visits")
    (visits / "a_bad.csv").write_text("visit_id,household_id\nV1,H1\n", encoding="utf-8")
    (visits / "b_ok.csv").write_text(f"{VISIT_HEADER}\nV2,,H1,K404,2026-11-20 10:00,入户,亮明身份\n", encoding="utf-8")
    totals = import_visit_files.fn(str(visits.parent), database_url, str(app_env / "out"), date(2026, 11, 20))
    assert (totals["files"], totals["read"], totals["rejected"]) == (1, 1, 1)
    assert totals["rejected_files"][0]["file"] == "a_bad.csv"
    assert "缺少必需的列" in totals["rejected_files"][0]["reason"]
    assert not list(visits.glob("*.csv"))
    [moved] = (visits / "rejected").iterdir()
    assert moved.name.startswith("a_bad.") and moved.suffix == ".csv"
    assert [p.name.split(".")[0] for p in (visits / "done").iterdir()] == ["b_ok"]
    report = Path(totals["rejected_files"][0]["error_report"]).read_text(encoding="utf-8")
    assert "整个文件未导入" in report and "a_bad.csv" in report and "rejected" in report
    [run] = runs(database_url, "a_bad.csv")
    assert run.success is False and run.stage == "import_visits" and "缺少必需的列" in " ".join(run.failures)


def test_record_visits_flow_reports_the_rejected_file_and_closes_plans(prefect_harness, database_url, app_env,
                                                                       monkeypatch):
    from flows.record_visits import record_visits

    use_database(monkeypatch, database_url)
    seed(database_url)
    visits = inbox(app_env, "visits")
    (visits / "a_bad.csv").write_bytes(b"visit_id,household_id\n\xff\xfe\x00V1\n")
    result = record_visits(date(2026, 11, 20), inbox=str(visits.parent))
    assert result["rejected"] == 1 and "plans_closed" in result


def test_ingest_flow_rejects_a_malformed_file_and_ingests_the_others(prefect_harness, database_url, app_env,
                                                                      monkeypatch):
    from flows.ingest_readings import ingest_readings

    monkeypatch.delenv("SIBIFANG_METER_API_URL", raising=False)
    use_database(monkeypatch, database_url)
    seed(database_url)
    readings = inbox(app_env, "readings")
    (readings / "a.csv").write_text('meter_id,ts,kwh\nM1,2026-11-20 00:15,0.1\nM1,"2026-11-20 00:30,0.1\n')
    (readings / "b.csv").write_text("meter_id,ts,kwh\nM1,2026-11-20 00:45,0.2\n")
    result = ingest_readings(date(2026, 11, 20), inbox=str(readings.parent))
    assert (result["files"], result["accepted"], result["rejected"], result["failed"]) == (1, 1, 1, 0)
    assert "a.csv 第3行引号未闭合" in result["rejected_files"][0]["reason"]
    assert [p.name[:2] for p in (readings / "rejected").iterdir()] == ["a."]
    assert [p.name[:2] for p in (readings / "done").iterdir()] == ["b."]
    [run] = runs(database_url, "a.csv")  # recorded once: bad data is not retried
    assert run.stage == "ingest_readings" and not run.success
    # The next run finds nothing new: the rejected file is not read again.
    again = ingest_readings(date(2026, 11, 20), inbox=str(readings.parent))
    assert (again["files"], again["rejected"]) == (0, 0)


# ------------------------------------------------------------------ D: batches never overwrite each other
def test_quarantined_rows_of_two_api_pulls_are_kept_apart_with_their_raw_reading(database_url, app_env):
    from tasks.ingest_readings import ingest_frame

    seed(database_url)
    pulls = {"api-1": [("M1", "2026-11-20 00:15", "0.1"), ("M1", "2026-11-20 00:45", "abc")],
             "api-2": [("M1", "2026-11-20 00:30", "0.1"), ("M1", "2026-11-20 01:00", "x?")]}

    def pull(batch):
        raw = pd.DataFrame(pulls[batch], columns=["meter_id", "ts", "kwh"])
        return ingest_frame(raw, source="meter-api", batch_id=batch, database_url=database_url, now=NOW)

    assert pull("api-1")["quarantined"] == pull("api-2")["quarantined"] == 1
    rows = quarantined(database_url, "ingest_readings")
    assert [(q.batch, q.line, q.code) for q in rows] == [("api-1", 3, "bad_kwh"), ("api-2", 3, "bad_kwh")]
    assert rows[0].raw == {"meter_id": "M1", "ts": "2026-11-20 00:45", "kwh": "abc"}
    # The same pull again changes nothing.
    pull("api-1")
    assert len(quarantined(database_url, "ingest_readings")) == 2


def test_two_files_of_one_name_keep_their_reports_done_copies_and_quarantine(database_url, app_env):
    from tasks.record_visits import import_visit_files

    seed(database_url)
    visits = inbox(app_env, "visits")
    contents = [f"{VISIT_HEADER}\nV1,,H404,K1,2026-11-20 10:00,入户,亮明身份\n",
                f"{VISIT_HEADER}\nV2,,H1,K1,2026-11-20 10:00,坐谈,亮明身份\n"]
    for content in [*contents, contents[0]]:  # the first file dropped again at the end
        (visits / "v.csv").write_text(content, encoding="utf-8")
        import_visit_files.fn(str(visits.parent), database_url, str(app_env / "out"), date(2026, 11, 20))
    assert len(list((visits / "done").iterdir())) == 2
    reports = sorted((app_env / "out" / "import-errors").iterdir())
    assert len(reports) == 2 and all(p.name.startswith("v.") for p in reports)
    rows = quarantined(database_url, "import_visits")
    assert {q.source for q in rows} == {"v.csv"} and len({q.batch for q in rows}) == 2
    assert {(q.line, q.field) for q in rows} >= {(2, "household_id"), (2, "mode")}
    assert len(rows) == len({(q.batch, q.line, q.field, q.code) for q in rows})


# ------------------------------------------------------------------ I: a correction is not "accepted"
def test_a_reading_that_contradicts_a_stored_one_is_quarantined(database_url, app_env):
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import ingest_frame

    seed(database_url)

    def ingest(batch, rows):
        raw = pd.DataFrame(rows, columns=["meter_id", "ts", "kwh"])
        return ingest_frame(raw, source=f"{batch}.csv", batch_id=batch, database_url=database_url, now=NOW)

    assert ingest("b1", [("M1", "2026-11-20 00:15", "0.1")])["accepted"] == 1
    r = ingest("b2", [("M1", "2026-11-20 00:15", "0.3"), ("M1", "2026-11-20 00:30", "0.2")])
    assert (r["read"], r["accepted"], r["quarantined"], r["new"], r["conflicting"]) == (2, 1, 1, 1, 1)
    [row] = [q for q in quarantined(database_url, "ingest_readings") if q.batch == "b2"]
    assert (row.line, row.field, row.code) == (2, "kwh", "conflicting_duplicate")
    assert "已入库" in row.reason and row.raw["kwh"] == "0.3"
    with session_scope(database_url) as s:
        batch = s.get(ReadingBatch, "b2")
        assert (batch.rows_read, batch.rows_accepted, batch.rows_quarantined) == (2, 1, 1)
    stored = ReadingStore(app_env / "data" / "readings").load()
    assert stored["kwh"].round(4).tolist() == [0.1, 0.2]
    # The same value again is an idempotent re-send, not a conflict.
    r = ingest("b3", [("M1", "2026-11-20 00:15", "0.1")])
    assert (r["accepted"], r["quarantined"], r["new"]) == (1, 0, 0)


# ------------------------------------------------------------------ the migration
def test_migration_0004_keeps_existing_quarantined_rows(database_url):
    migrate(database_url, "0003")
    with get_engine(database_url).begin() as conn:
        conn.execute(text("INSERT INTO quarantined_rows (kind, source, line, field, code, reason) "
                          "VALUES ('import_households', 'h.csv', 2, 'phone', 'bad_phone', '联系电话格式不对')"))
    migrate(database_url)
    [old] = quarantined(database_url, "import_households")
    assert (old.source, old.batch, old.line) == ("h.csv", "", 2)
    with get_engine(database_url).begin() as conn:  # the same line of another batch is another row
        conn.execute(text("INSERT INTO quarantined_rows (kind, source, batch, line, field, code, reason) "
                          "VALUES ('import_households', 'h.csv', 'abc', 2, 'phone', 'bad_phone', '联系电话格式不对')"))
    assert len(quarantined(database_url, "import_households")) == 2


@pytest.mark.parametrize("kind", ["visits"])
def test_rejected_file_report_without_a_move_says_nothing_of_rejected_folder(kind, database_url, app_env):
    from schemas.validation import DataContractError
    from tasks.import_registry import record_rejected_file

    path = app_env / "v.csv"
    path.write_text("x\n1\n", encoding="utf-8")
    r = record_rejected_file(kind, path, DataContractError("v.csv", ["no"], message_zh="文件 v.csv 缺少必需的列。"),
                             database_url=database_url, out_dir=app_env / "out")
    report = Path(r["error_report"]).read_text(encoding="utf-8")
    assert "文件 v.csv 缺少必需的列。" in report and "rejected" not in report and path.exists()


# ------------------------------------------------------------------ a title above the header
def test_a_register_with_a_title_row_is_imported_and_the_title_reported(database_url, app_env):
    """A clean file whose first line is a title: imported, and a report names the skipped line
    (without one, the clerk would never learn that the line was not read)."""
    from tasks.import_registry import import_file

    seed(database_url)
    path = app_env / "h.csv"
    path.write_text("城关镇四必访家庭名册（2026年11月）,,,,,,\n"
                    "household_id,head_name,id_number,phone,address,grid_id,categories\n"
                    "H2,王秀英,33020319431206966X,13800000001,城关村1号,G001,空巢老人\n", encoding="utf-8")
    out = import_file("households", path, database_url=database_url, out_dir=app_env / "out", now=NOW)
    assert (out["read"], out["accepted"], out["quarantined"]) == (1, 1, 0)
    text_ = Path(out["error_report"]).read_text(encoding="utf-8")
    assert "表头在第2行" in text_ and "第1行是标题或说明" in text_
    again = import_file("households", path, database_url=database_url, out_dir=app_env / "out", now=NOW)
    assert again["error_report"] == out["error_report"]
    with session_scope(database_url) as s:
        assert s.scalar(select(Household.head_name).where(Household.id == "H2")) == "王秀英"


def test_a_register_with_a_repeated_column_keeps_its_quarantined_row(database_url, app_env):
    """Two 性别 columns (not imported) no longer refuse the file; the quarantined row is kept
    with its cells, the repeated column's included, on both engines."""
    from tasks.import_registry import import_file

    seed(database_url)
    path = app_env / "h2.csv"
    path.write_text("household_id,head_name,id_number,phone,address,grid_id,categories,性别,性别\n"
                    "H2,王秀英,33020319431206966X,13800000001,城关村1号,G001,空巢老人,女,女\n"
                    "H3,李桂兰,33020319530402946X,13800000002,城关村2号,G404,空巢老人,女,\n", encoding="utf-8")
    out = import_file("households", path, database_url=database_url, out_dir=app_env / "out", now=NOW)
    assert (out["read"], out["accepted"], out["quarantined"]) == (2, 1, 1)
    assert out["unknown_columns"] == ["性别", "性别"]
    [row] = [q for q in quarantined(database_url, "import_households") if q.source == "h2.csv"]
    assert row.line == 3 and row.raw["grid_id"] == "G404" and "女" in row.raw.values()
