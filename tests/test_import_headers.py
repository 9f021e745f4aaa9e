"""Where the header is: title rows above it (skipped and reported) and two-row headers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sibifang.importing import read_table, render_import_errors, validate_import

KNOWN = {"grids": {"G001", "G002"}}
GOOD_ID, OTHER_ID = "33020319431206966X", "33020319530402946X"
HEADER_ZH = ["家庭编号", "户主姓名", "身份证号", "联系电话", "住址", "网格编号", "必访类别"]
ROWS = [["H001", "王秀英", GOOD_ID, "13800000001", "城关村1号", "G001", "空巢老人"],
        ["H002", "李桂兰", OTHER_ID, "13800000002", "城关村2号", "G009", "困难家庭"]]  # G009: unknown grid


def _xlsx(path: Path, rows: list[list], merges: tuple[str, ...] = ()) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    for cells in merges:
        ws.merge_cells(cells)
    wb.save(path)
    return path


def _csv(path: Path, rows: list[list], encoding: str = "utf-8") -> Path:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([[("" if c is None else c) for c in r] for r in rows])
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def _import(path: Path):
    result = validate_import("households", read_table(path), source=path.name, known=KNOWN,
                             now=dt.datetime(2026, 12, 1))
    assert result.read == len(result.accepted) + result.quarantined_lines
    return result


TITLE = "城关镇四必访家庭名册（2026年11月）"
# A note row a county form has above the header: one of its cells is a column name (联系电话).
NOTE = ["填报单位：城关镇妇联", None, "联系电话", "0574-87654321", None, None, None]


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
@pytest.mark.parametrize(("above", "header_line"), [
    ([[TITLE] + [None] * 6], 2),
    ([[TITLE] + [None] * 6, [None] * 7], 3),
    ([[TITLE] + [None] * 6, NOTE], 3),
    ([NOTE], 2),
])
def test_title_rows_above_the_header_are_skipped_and_reported(tmp_path, fmt, above, header_line):
    rows = [*above, HEADER_ZH, *ROWS]
    path = _xlsx(tmp_path / "h.xlsx", rows, merges=("A1:G1",) if above[0][0] == TITLE else ()) \
        if fmt == "xlsx" else _csv(tmp_path / "h.csv", rows, encoding="gbk")
    result = _import(path)
    assert result.read == 2 and len(result.accepted) == 1 and result.quarantined_lines == 1
    assert result.accepted["_line"].tolist() == [header_line + 1]
    assert set(result.quarantined["line"]) == {header_line + 2}
    assert result.header.lines == (header_line,)
    skipped = tuple(n for n, row in enumerate(above, start=1) if any(row))
    assert result.header.skipped == skipped
    for fmt_out in ("txt", "html"):
        report = render_import_errors(result, fmt_out)
        assert f"表头在第{header_line}行" in report
        lines = "、".join(f"第{n}行" for n in skipped)
        assert f"{lines}是标题或说明" in report
        # the title and note themselves are not repeated (a note may hold a phone number)
        assert "0574-87654321" not in report


def test_a_file_with_its_header_on_line_1_reports_no_skipped_rows(tmp_path):
    result = _import(_csv(tmp_path / "h.csv", [HEADER_ZH, *ROWS]))
    assert result.header.lines == (1,) and result.header.skipped == ()
    assert "标题或说明" not in render_import_errors(result, "txt")
    assert "表头为第1行" in render_import_errors(result, "txt")


def test_a_data_row_is_never_taken_for_the_header(tmp_path):
    """The header on line 1 with few known names; no later row can outscore it."""
    rows = [["household_id", "head_name", "id_number", "phone", "address", "grid_id", "categories",
             "序号", "性别", "年龄"],
            [*ROWS[0], "1", "女", "83"]]
    result = _import(_csv(tmp_path / "h.csv", rows))
    assert result.header.lines == (1,) and result.read == 1 and len(result.accepted) == 1


# ------------------------------------------------------------------ two-row headers
GROUPED = ["家庭编号", "户主姓名", "身份证号", "联系方式", None, "住址", "网格编号", "必访类别"]
SUB = [None, None, None, "手机号", "座机", None, None, None]
DATA = [["H001", "王秀英", GOOD_ID, "13800000001", "0574-12345678", "城关村1号", "G001", "空巢老人"]]


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
@pytest.mark.parametrize("title", [False, True])
def test_a_merged_group_header_over_two_columns_is_read_as_one_header(tmp_path, fmt, title):
    """联系方式 merged over 手机号 | 座机, the other names merged down over both rows."""
    above = [[TITLE] + [None] * 7] if title else []
    rows = [*above, GROUPED, SUB, *DATA]
    first = len(above) + 1
    merges = (["A1:H1"] if title else []) + [f"{c}{first}:{c}{first + 1}" for c in "ABCFGH"] + [f"D{first}:E{first}"]
    path = _xlsx(tmp_path / "h.xlsx", rows, merges=tuple(merges)) if fmt == "xlsx" else _csv(tmp_path / "h.csv", rows)
    result = _import(path)
    assert result.header.lines == (first, first + 1)
    assert result.read == 1 and len(result.accepted) == 1, result.quarantined
    assert result.accepted["_line"].tolist() == [first + 2]
    assert result.accepted["phone"].tolist() == ["13800000001"]
    # the landline has no column of its own: reported, named by its group
    assert result.unknown_columns == ["联系方式/座机"]
    report = render_import_errors(result, "txt")
    assert f"表头在第{first}–{first + 1}行" in report


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_group_labels_above_a_full_header_row(tmp_path, fmt):
    """基本信息 | 联系方式 | 网格信息 over a complete header row: the group row is a title row."""
    rows = [["基本信息", None, None, "联系方式", None, "网格信息", None],
            HEADER_ZH[:4] + ["住址", "网格编号", "必访类别"], ROWS[0]]
    path = _xlsx(tmp_path / "h.xlsx", rows, merges=("A1:C1", "D1:E1", "F1:G1")) if fmt == "xlsx" \
        else _csv(tmp_path / "h.csv", rows)
    result = _import(path)
    assert result.read == 1 and len(result.accepted) == 1
    assert result.header.lines in ((2,), (1, 2))
    assert result.accepted["_line"].tolist() == [3]


def test_group_and_sub_name_together_name_the_column(tmp_path):
    """户主 merged over 姓名 | 身份证号: 户主姓名 is the column."""
    rows = [["家庭编号", "户主", None, "联系电话", "住址", "网格编号", "必访类别"],
            [None, "姓名", "身份证号", None, None, None, None], ROWS[0]]
    result = _import(_csv(tmp_path / "h.csv", rows))
    assert result.header.lines == (1, 2) and len(result.accepted) == 1 and not result.unknown_columns
    assert result.accepted["head_name"].tolist() == ["王秀英"]


def test_a_row_of_text_under_an_unknown_column_is_data_not_a_second_header(tmp_path):
    rows = [[*HEADER_ZH, "性别"], [None] * 7 + ["女"], [*ROWS[0], "女"]]
    result = _import(_csv(tmp_path / "h.csv", rows))
    assert result.header.lines == (1,) and result.read == 2 and result.quarantined_lines == 1


def test_a_wide_header_below_a_title_is_found_however_many_other_columns(tmp_path):
    # A county export: the 7 columns of a household plus 8 of its own (review rv1). Fewer than
    # half of the header's cells are known names, yet it names every column a household needs.
    extra = ["民族", "文化程度", "工作单位", "邮编", "备用电话", "微信号", "填表人", "填表日期"]
    rows = [[TITLE] + [None] * 14, HEADER_ZH + extra, *[r + ["汉"] + [None] * 7 for r in ROWS]]
    result = _import(_csv(tmp_path / "wide.csv", rows))
    assert result.header.lines == (2,) and result.header.skipped == (1,)
    assert result.read == 2 and len(result.accepted) == 1
