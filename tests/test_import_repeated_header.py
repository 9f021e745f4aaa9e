"""Exports joined into one file (``copy /b 十月.csv+十一月.csv``, each with its header and its UTF-8
BOM): the second header sits among the rows. It is one row set aside as what it is, not a
family whose ID number, phone and categories are all wrong."""

from __future__ import annotations

import datetime as dt

from sibifang.importing import read_table, render_import_errors, validate_import

HEADER = "家庭编号,户主姓名,身份证号,联系电话,住址,网格编号,必访类别\n"
ROW = "{id},王秀英,33020319431206966X,1380000000{n},城关村{n}号,G001,空巢老人\n"


def test_a_header_repeated_among_the_rows_is_set_aside_as_one(tmp_path):
    path = tmp_path / "households.csv"
    second = "\ufeff" + HEADER.replace("家庭编号", "*家庭编号") + ROW.format(id="H002", n=2)
    path.write_bytes(("\ufeff" + HEADER + ROW.format(id="H001", n=1)).encode("utf-8") + second.encode("utf-8"))
    result = validate_import("households", read_table(path), source=path.name, now=dt.datetime(2026, 12, 1))
    assert result.read == 3 == len(result.accepted) + result.quarantined_lines
    assert result.accepted["household_id"].tolist() == ["H001", "H002"]
    assert result.quarantined[["line", "field", "code"]].values.tolist() == [[3, "_row", "repeated_header"]]
    assert "重复的表头" in render_import_errors(result, "txt")


def test_a_row_naming_one_column_is_still_a_row(tmp_path):
    path = tmp_path / "households.csv"
    path.write_text(HEADER + ROW.format(id="H001", n=1) + "H002,户主姓名,33020319431206966X,,,G001,空巢老人\n",
                    encoding="utf-8")
    result = validate_import("households", read_table(path), source=path.name, now=dt.datetime(2026, 12, 1))
    assert "repeated_header" not in set(result.quarantined["code"])
