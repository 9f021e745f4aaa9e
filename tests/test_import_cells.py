"""Cells and headers as Excel leaves them: dates stored as serial numbers, columns left
unnamed, a column name used twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sibifang.importing import ImportFileError, read_table, render_import_errors, validate_import

NOW = dt.datetime(2026, 12, 1)
VISIT_HEADER = ["visit_id", "household_id", "cadre_id", "visited_at", "mode", "steps"]


def _xlsx(path: Path, rows: list[list]) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def _visits(path: Path):
    result = validate_import("visits", read_table(path), source=path.name, now=NOW)
    assert result.read == len(result.accepted) + result.quarantined_lines
    return result


# 2026-11-20 10:00 is Excel serial 46346.41666…; 2026-11-20 is 46346.
@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_date_stored_as_an_excel_serial_number_is_read_as_that_date(tmp_path, fmt):
    """A date column formatted as 常规 (General) holds the serial number: read as a date, not
    quarantined as "不是有效时间" (the clerk sees a date in Excel and cannot tell what is wrong)."""
    rows = [VISIT_HEADER, ["V1", "H001", "K001", 46346 + 10 / 24, "入户", "亮明身份"],
            ["V2", "H001", "K001", 46346, "入户", "亮明身份"]]
    if fmt == "xlsx":
        path = _xlsx(tmp_path / "v.xlsx", rows)
    else:
        path = tmp_path / "v.csv"
        path.write_text("\n".join(",".join(str(c) for c in r) for r in
                                  [rows[0], rows[1][:3] + ["46346.4166666667"] + rows[1][4:],
                                   rows[2][:3] + ["46346"] + rows[2][4:]]) + "\n", encoding="utf-8")
    result = _visits(path)
    assert result.quarantined.empty, result.quarantined
    assert [str(t) for t in result.accepted["visited_at"]] == ["2026-11-20 10:00:00", "2026-11-20 00:00:00"]


def test_a_serial_date_in_a_date_column_and_numbers_that_are_not_dates(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("household_id,head_name,id_number,phone,address,grid_id,categories,away_from,away_until\n"
                    "H1,王秀英,33020319431206966X,13800000001,城关村1号,G001,空巢老人,46327,46357\n"
                    "H2,李桂兰,33020319530402946X,13800000002,城关村2号,G001,空巢老人,12,\n",
                    encoding="utf-8")
    result = validate_import("households", read_table(path), source=path.name, now=NOW)
    assert [str(d.date()) for d in result.accepted["away_from"]] == ["2026-11-01"]
    assert [str(d.date()) for d in result.accepted["away_until"]] == ["2026-12-01"]
    # 12 is no date anyone typed as a serial: still a bad date
    assert {(r.line, r.field, r.code) for r in result.quarantined.itertuples()} == {(3, "away_from", "bad_date")}


# ------------------------------------------------------------------ header names
def test_two_unnamed_columns_do_not_refuse_the_file(tmp_path):
    """Excel's columns left unnamed (a spacer column, a column of remarks without a title):
    the file was refused as "表头有重复的列：。" naming nothing."""
    path = tmp_path / "v.csv"
    path.write_text("visit_id,household_id,,cadre_id,,visited_at,mode,steps\n"
                    "V1,H001,,K001,已回访,2026-11-20 10:00,入户,亮明身份\n", encoding="utf-8")
    result = _visits(path)
    assert result.read == 1 and len(result.accepted) == 1
    assert result.unknown_columns == ["（无列名）"]   # the one with something in it


def test_a_repeated_column_that_is_not_imported_does_not_refuse_the_file(tmp_path):
    """Two 性别 columns in a visits sheet: neither is imported, the file is, and both are told."""
    path = tmp_path / "v.csv"
    path.write_text(",".join([*VISIT_HEADER, "性别", "性别"]) + "\n"
                    "V1,H001,K001,2026-11-20 10:00,入户,亮明身份,女,女\n", encoding="utf-8")
    result = _visits(path)
    assert result.read == 1 and len(result.accepted) == 1
    assert result.unknown_columns == ["性别", "性别"]
    assert "性别、性别" in render_import_errors(result, "txt")


def test_a_repeated_column_of_the_kind_still_refuses_the_file(tmp_path):
    """Two 走访时间 columns: which one holds the visit is not for the importer to guess."""
    path = tmp_path / "v.csv"
    path.write_text(",".join([*VISIT_HEADER[:3], "走访时间", *VISIT_HEADER[4:], "走访时间"]) + "\n"
                    "V1,H001,K001,2026-11-20 10:00,入户,亮明身份,2026-11-21 10:00\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        _visits(path)
    assert "表头有重复的列：走访时间" in e.value.message_zh


@pytest.mark.parametrize("mark", ["*{}", "{}*", "＊{}", "{}（必填）", "★{}"])
def test_a_required_mark_on_a_header_still_names_its_column(tmp_path, mark):
    """Templates mark the columns that must be filled (*家庭编号, 家庭编号（必填）): the file was
    refused as "缺少必需的列" naming the very columns it has."""
    names = ["家庭编号", "户主姓名", "身份证号", "联系电话", "住址", "网格编号", "必访类别"]
    path = tmp_path / "h.csv"
    path.write_text(",".join(mark.format(n) for n in names) + ",备注\n"
                    "H1,王秀英,33020319431206966X,13800000001,城关村1号,G001,空巢老人,无\n", encoding="utf-8")
    result = validate_import("households", read_table(path), source=path.name, now=NOW)
    assert result.read == 1 and len(result.accepted) == 1 and result.quarantined.empty
    assert result.unknown_columns == ["备注"]


@pytest.mark.parametrize("typed", ["2026", "2026-11", "2026/11", "2026年11月", "2026.11"])
def test_a_year_or_a_month_alone_is_not_a_date(tmp_path, typed):
    """"2026-11" in 走访时间 was read as 2026-11-01 00:00 (and "2026" as New Year's Day): a visit
    recorded on a day nobody typed. Quarantined as a bad date instead."""
    path = tmp_path / "v.csv"
    path.write_text(",".join(VISIT_HEADER) + "\n" + f"V1,H001,K001,{typed},入户,亮明身份\n"
                    "V2,H001,K001,2026-11-20,入户,亮明身份\n", encoding="utf-8")
    result = _visits(path)
    assert {(r.line, r.field, r.code) for r in result.quarantined.itertuples()} == {(2, "visited_at", "bad_datetime")}
    assert result.accepted["visit_id"].tolist() == ["V2"]
    hh = tmp_path / "h.csv"
    hh.write_text("household_id,head_name,id_number,phone,address,grid_id,categories,away_from\n"
                  f"H1,王秀英,33020319431206966X,13800000001,城关村1号,G001,空巢老人,{typed}\n", encoding="utf-8")
    result = validate_import("households", read_table(hh), source=hh.name, now=NOW)
    assert {(r.line, r.field, r.code) for r in result.quarantined.itertuples()} == {(2, "away_from", "bad_date")}
