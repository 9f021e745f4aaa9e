"""Readings file drops with a title or note above the header, as the registry import takes them:
the header is found, the lines above it are skipped and named, rows keep their file lines."""

from __future__ import annotations

from datetime import datetime

import pytest

from sibifang.importing import ImportFileError
from sibifang.ingest_readings import clean_readings
from sibifang.readings_files import read_readings_file, skipped_lines_zh
from tests.test_import_headers import _xlsx

NOW = datetime(2026, 11, 21, 12, 0)
TITLE = "XX供电所 智能电表读数导出 2026年11月"


def _balanced(result, n: int) -> None:
    assert result.counts["read"] == n == len(result.accepted) + len(result.quarantined)


def test_an_xlsx_with_a_merged_title_row_is_read_from_its_header(tmp_path):
    path = _xlsx(tmp_path / "export.xlsx", [
        [TITLE, None, None],
        ["电表编号", "读数时间", "用电量（kWh）"],
        ["M1", "2026-11-20 08:15", 0.25],
        ["M1", "2026-11-20 08:30", "abc"],  # a bad value: quarantined on its sheet row
        ["M1", "2026-11-20 08:45", 0.5],
    ], merges=("A1:C1",))
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [3, 4, 5]
    assert raw.attrs["header_layout"].lines == (2,) and raw.attrs["header_layout"].skipped == (1,)
    assert skipped_lines_zh(raw) == "表头在第2行；第1行是标题或说明（不是表头，也不是读数），未导入"
    result = clean_readings(raw, source=path.name, now=NOW)
    _balanced(result, 3)  # the title is no row read: read = accepted + quarantined
    assert result.accepted["kwh"].tolist() == [0.25, 0.5]
    assert result.quarantined[["line", "code"]].values.tolist() == [[4, "bad_kwh"]]


def test_a_csv_with_a_title_a_blank_line_and_a_note_above_the_header(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes((f"{TITLE},,\n,,\n制表：城关供电所,,\nmeter_id,ts,kwh\n"
                      "M1,2026-11-20 08:15,0.1\nM1,2026-11-20 08:30,\nM1,2026-11-20 08:45,0.3\n").encode("gbk"))
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [5, 6, 7]
    assert raw.attrs["header_layout"].skipped == (1, 3)  # the blank line is nothing to name
    assert "第1行、第3行是标题或说明" in skipped_lines_zh(raw)
    result = clean_readings(raw, source=path.name, now=NOW)
    _balanced(result, 3)
    assert result.quarantined[["line", "code"]].values.tolist() == [[6, "missing_kwh"]]


def test_lines_stay_physical_below_a_title_with_a_line_break_in_a_field(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text(f"{TITLE}\nmeter_id,ts,kwh,note\nM1,2026-11-20 08:15,0.1,\"a\nb\"\nM1,2026-11-20 08:30,x,\n",
                    encoding="utf-8")
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [3, 5]


def test_a_title_typed_on_two_lines_is_one_record_skipped(tmp_path):
    """A title cell with Alt+Enter: one quoted record over two lines (pandas skips records)."""
    path = tmp_path / "qt.csv"
    path.write_text('"XX供电所\n智能电表读数导出",,\nmeter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\n'
                    'M1,2026-11-20 08:30,"0.2"\nM1,2026-11-20 08:45,0.3\n', encoding="utf-8")
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [4, 5, 6] and raw["kwh"].tolist() == ["0.1", "0.2", "0.3"]
    assert raw.attrs["header_layout"].skipped == (1, 2)
    path.write_text('"XX供电所\n智能电表读数导出",,,\nmeter_id,ts,kwh,note\nM1,2026-11-20 08:15,0.1,"a\nb"\n'
                    'M1,2026-11-20 08:30,0.2,\n', encoding="utf-8")
    assert read_readings_file(path)["line"].tolist() == [4, 6]


def test_errors_below_a_title_name_the_file_lines(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(f"{TITLE}\nmeter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\nM1,2026-11-20 08:30,0.2,9\n",
                    encoding="utf-8")
    raw = read_readings_file(path)  # a stray field: that row is set aside, on its own line
    assert raw["line"].tolist() == [3, 4] and raw["_extra_fields"].tolist() == ["", "9"]
    path.write_text(f"{TITLE}\nmeter_id,ts,kwh\nM1,\"2026-11-20 08:15,0.1\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(path)
    assert e.value.line == 3
    path.write_text(f"{TITLE}\nmeter_id,ts\nM1,2026-11-20 08:15\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        read_readings_file(path)
    assert "缺少必需的列：kwh" in e.value.message_zh


def test_a_wide_export_header_below_a_title_is_found(tmp_path):
    """A meter export carries more columns than the three read (户名, 地址 …): the header is the
    row naming all the readings columns, however many others it has."""
    path = _xlsx(tmp_path / "wide.xlsx", [
        [TITLE], [],
        ["户名", "地址", "台区", "倍率", "表号", "读数时间", "累计读数", "备注"],
        ["张三", "城关1号", "T1", "1", "M1", "2026-11-20 08:00", "100", ""],
        ["张三", "城关1号", "T1", "1", "M1", "2026-11-20 09:00", "100.5", ""],
    ])
    raw = read_readings_file(path)
    assert list(raw.columns) == ["line", "meter_id", "ts", "register_kwh"] and raw["line"].tolist() == [4, 5]
    assert raw.attrs["header_layout"].skipped == (1,)


def test_a_header_on_line_1_is_read_as_before(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.1\n", encoding="utf-8")
    raw = read_readings_file(path)
    assert raw["line"].tolist() == [2] and skipped_lines_zh(raw) is None


def test_the_clerk_is_told_which_lines_were_skipped(app_env, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from sibifang.cli import app
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_DATABASE_URL", f"sqlite:///{app_env / 'cli.db'}")
    reset_settings()
    path = tmp_path / "readings.csv"
    path.write_text(f"{TITLE}\nmeter_id,ts,kwh\nM1,2026-11-20 00:15,0.1\nM1,2026-11-20 00:30,x\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["import", "readings", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "读取 2 行，导入 0 行，隔离 2 行" in result.output  # no meter registered: both set aside
    assert "表头在第2行；第1行是标题或说明（不是表头，也不是读数），未导入" in result.output
