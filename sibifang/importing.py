"""Registry import, pure logic: read a file → normalise → validate → accepted / quarantined.

No database here: ``sibifang.import_registry`` stores what this module accepts. The rule of the
loop is that nothing a village sends is silently dropped: every row read is either accepted
or quarantined with its line number, the field and a reason a village clerk can act on
(``read == len(accepted) + quarantined_lines`` is asserted). Reasons and reports never
repeat the failing value: it may be an ID number or a phone number.

Validation has three layers, applied to every row:

1. parsing (dates, numbers, booleans, Chinese labels → codes) while normalising;
2. the kind's Great Expectations suite (``schemas.suites``) on the normalised frame;
3. the checks GX cannot express (``sibifang.checks``): ID check digits, phones, references
   to known grids/households/cadres, dates in the future, cross-field rules.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import functools
import hashlib
import io
import re
import unicodedata
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from schemas.validation import DataContractError
from sibifang import checks as C

if TYPE_CHECKING:  # the GX wrapper is imported where validation runs
    from schemas.validation import ValidationReport

KINDS = ("areas", "households", "cadres", "meters", "readings", "visits", "resources", "mediation_rooms")

KIND_LABELS_ZH = {
    "areas": "行政区划与网格",
    "households": "家庭档案",
    "cadres": "干部与网格员",
    "meters": "智能电表",
    "readings": "电表读数",
    "visits": "走访记录",
    "resources": "服务资源池",
    "mediation_rooms": "调解室",
}

# Chinese names of the columns, for the clerk's report.
FIELD_LABELS_ZH = {
    "grid_id": "网格编号", "grid_name": "网格名称", "village_id": "村社编号", "village_name": "村社名称",
    "village_kind": "村/社区类型", "township_id": "乡镇街道编号", "township_name": "乡镇街道名称",
    "district_id": "区县编号", "district_name": "区县名称", "city_id": "市编号", "city_name": "市名称",
    "household_id": "家庭编号", "head_name": "户主姓名", "id_number": "身份证号", "phone": "联系电话",
    "address": "住址", "categories": "必访类别", "members": "家庭人数", "elderly_living_alone": "独居老人",
    "consent": "知情同意", "basic_situation": "家庭基本情况", "difficulties": "存在困难",
    "measures": "解决措施", "away_from": "外出开始日期", "away_until": "外出结束日期", "away_reason": "外出原因",
    "register_status": "状态", "deregistered_on": "注销日期",
    "cadre_id": "人员编号", "name": "名称", "role": "角色", "grid_ids": "负责网格", "capacity": "联系户数",
    "alert_channel": "预警渠道", "alert_address": "预警地址", "four_plus_one": "4+1干部",
    "grassroots_weekday": "下基层日", "on_leave_from": "请假开始日期", "on_leave_until": "请假结束日期",
    "meter_id": "电表编号", "interval_minutes": "采集间隔(分钟)", "installed_at": "安装日期",
    "ts": "读数时间", "kwh": "用电量(千瓦时)",
    "visit_id": "走访编号", "plan_id": "走访计划编号", "visited_at": "走访时间", "mode": "走访方式",
    "steps": "五步工作法步骤", "family_situation": "家情", "business_situation": "企情",
    "women_situation": "妇情", "demand_category": "诉求类别", "follow_up_needed": "需要跟进", "notes": "备注",
    "resource_id": "资源编号", "provider_type": "提供方类型", "offers": "可提供服务", "contact_name": "联系人",
    "room_id": "调解室编号", "mediator_ids": "调解员",
    "_row": "整行",
}

# Quarantine codes → the reason a clerk reads. ``{field}`` is the column's Chinese name.
REASONS_ZH = {
    "required": "{field}不能为空",
    # ``{first}``: the line of the copy that was imported (or, when every copy is bad, the first).
    "duplicate_key": "{field}与第{first}行重复（已导入第{first}行，本行未导入）",
    "duplicate_key_all_bad": "{field}与第{first}行重复，且各行都有错误：请改正后只保留一行",
    "bad_id": "{field}格式不对（编号中不能有空格或分隔符，最长64个字符）",
    "bad_date": "{field}不是有效日期，请按 YYYY-MM-DD 填写",
    "bad_datetime": "{field}不是有效时间，请按 YYYY-MM-DD HH:MM 填写",
    "future_date": "{field}晚于当前时间",
    "bad_int": "{field}应为整数",
    "bad_number": "{field}应为数字",
    "bad_thousands": "{field}中的逗号不是千位分隔符（千位分隔应每三位一个逗号，如 1,234 或 1,234.5；"
                     "小数点请用“.”，如 1.5），请改正后重新提交",
    "bad_bool": "{field}应填 1/0 或 是/否",
    "unknown_code": "{field}不在可选范围内",
    "unknown_list_item": "{field}中有不在可选范围内的项目",
    "not_in_set": "{field}不在可选范围内",
    "out_of_range": "{field}超出合理范围",
    "bad_format": "{field}格式不对",
    "date_order": "{field}：结束日期早于开始日期",
    "id_number_format": "{field}应为18位（最后一位可为X）",
    "id_number_birth_date": "{field}中的出生日期无效",
    "id_number_check_digit": "{field}校验位错误，请核对",
    "bad_phone": "{field}格式不对（手机号11位，座机如 0574-12345678）",
    "unknown_grid": "{field}不在已登记的网格中",
    "unknown_village": "{field}不在已登记的村/社区中",
    "unknown_township": "{field}不在已登记的乡镇/街道中",
    "unknown_household": "{field}不在已登记的家庭档案中",
    "unknown_cadre": "{field}不在已登记的人员中",
    "unknown_meter": "{field}不在已登记的电表中",
    "alert_address_missing": "已填写预警渠道，但{field}为空",
    "bad_alert_address": "{field}与预警渠道不符（短信填手机号，邮件填邮箱，其他填网址）",
    "weekday_missing": "4+1干部须填写{field}（0=周一 … 4=周五）",
    "cadre_not_covering": "{field}：该人员不负责这户家庭所在的网格",
    "unknown_plan": "{field}不在已制定的走访计划中",
    "before_plan": "{field}早于对应走访计划的制定日期",
    "conflicting_parent": "{field}与前面的行不一致（同一编号的上级区划应相同）",
    "extra_fields": "{field}的列数多于表头",
    "unclosed_quote": "第{line}行引号未闭合（某个单元格以双引号开头，却没有结束的双引号），本行未导入；"
                      "请补全或删去这个引号",
    "total_row": "合计行（上方各行的汇总，不是一条记录），未导入，无需处理",
    "repeated_header": "重复的表头行（几个文件拼接成一个时常见），不是一条记录，未导入，无需处理",
    "too_long": "{field}太长（最多{limit}个字），请精简后重新提交",
    "deregistered_on_without_status": "填写了{field}，但状态不是迁出、去世或注销",
    "unusual": "{field}数值不常见，请核实",
    "invalid": "{field}未通过校验",
}

_REFERENCE_CODES = {
    "grids": "unknown_grid", "villages": "unknown_village", "townships": "unknown_township",
    "households": "unknown_household", "cadres": "unknown_cadre", "meters": "unknown_meter",
}


@dataclass(frozen=True)
class Field:
    """One column of an import file and how it is normalised.

    Whether a value is required is the suite's business (``not_null`` in schemas.suites), so
    the contract is stated once.
    """

    name: str
    type: str = "text"  # text|id|int|float|bool|date|datetime|code|code_list|id_list|id_number|phone
    in_header: bool = False  # the column must be in the file's header
    lookup: Mapping[str, str] | None = None  # for code / code_list
    ref: str | None = None  # key of ``known`` the value(s) must be in
    default: Any = None  # for bool / int blanks
    not_future: bool = False


def _f(name: str, type_: str = "text", header: bool = False, **kw: Any) -> Field:
    return Field(name, type_, header, **kw)


_VILLAGE_KIND_LOOKUP = {"村": "村", "社区": "社区", "village": "村", "community": "社区", "居委会": "社区"}


def _default_capacity() -> int:
    try:
        from sibifang.settings import get_settings

        return int(get_settings().default_capacity)
    except Exception:  # noqa: BLE001 - settings unreadable: the domain's figure
        return 10


FIELDS: dict[str, tuple[Field, ...]] = {
    "areas": (
        _f("grid_id", "id", True), _f("grid_name", "text", True),
        _f("village_id", "id", True), _f("village_name", "text", True),
        _f("village_kind", "code", True, lookup=_VILLAGE_KIND_LOOKUP),
        _f("township_id", "id", True), _f("township_name", "text", True),
        _f("district_id", "id", True), _f("district_name", "text", True),
        _f("city_id", "id", True), _f("city_name", "text", True),
    ),
    "households": (
        _f("household_id", "id", True), _f("head_name", "text", True),
        _f("id_number", "id_number", True), _f("phone", "phone", True), _f("address", "text", True),
        _f("grid_id", "id", True, ref="grids"),
        _f("categories", "code_list", True, lookup=C.CATEGORY_LOOKUP),
        _f("members", "int"),
        _f("elderly_living_alone", "bool", default=False),
        # The archive model's default: a family in the archive consented when it was opened.
        _f("consent", "bool", default=True),
        _f("basic_situation"), _f("difficulties"), _f("measures"),
        _f("away_from", "date"), _f("away_until", "date"), _f("away_reason"),
        # 在册 / 迁出 / 去世 / 注销, and from when (blank: the import's time). A blank status changes
        # nothing: a family absent from a file, or listed without a status, keeps its place.
        _f("register_status", "code", lookup=C.REGISTER_STATUS_LOOKUP),
        _f("deregistered_on", "date", not_future=True),
    ),
    "cadres": (
        _f("cadre_id", "id", True), _f("name", "text", True), _f("phone", "phone", True),
        _f("role", "code", True, lookup=C.ROLE_LOOKUP),
        _f("grid_ids", "id_list", True, ref="grids"),
        _f("capacity", "int", default="settings"),
        _f("alert_channel", "code", lookup=C.ALERT_CHANNEL_LOOKUP), _f("alert_address"),
        _f("four_plus_one", "bool", default=False), _f("grassroots_weekday", "int"),
        _f("on_leave_from", "date"), _f("on_leave_until", "date"),
    ),
    "meters": (
        _f("meter_id", "id", True), _f("household_id", "id", True, ref="households"),
        _f("interval_minutes", "int", default=15), _f("installed_at", "date", not_future=True),
    ),
    "readings": (
        _f("meter_id", "id", True, ref="meters"), _f("ts", "datetime", True, not_future=True),
        _f("kwh", "float", True),
    ),
    "visits": (
        _f("visit_id", "id", True), _f("plan_id", "id"),
        _f("household_id", "id", True, ref="households"), _f("cadre_id", "id", True, ref="cadres"),
        _f("visited_at", "datetime", True, not_future=True),
        _f("mode", "code", True, lookup=C.MODE_LOOKUP),
        _f("steps", "code_list", True, lookup=C.VISIT_STEP_LOOKUP),
        _f("family_situation"), _f("business_situation"), _f("women_situation"),
        _f("difficulties"), _f("measures"),
        _f("demand_category", "code", lookup=C.DEMAND_CATEGORY_LOOKUP),
        _f("follow_up_needed", "bool", default=False), _f("notes"),
    ),
    "resources": (
        _f("resource_id", "id", True), _f("name", "text", True),
        _f("provider_type", "code", True, lookup=C.PROVIDER_TYPE_LOOKUP),
        _f("offers", "code_list", True, lookup=C.DEMAND_CATEGORY_LOOKUP),
        _f("village_id", "id", ref="villages"), _f("contact_name"), _f("phone", "phone"),
    ),
    "mediation_rooms": (
        _f("room_id", "id", True), _f("name", "text", True),
        _f("township_id", "id", True, ref="townships"),
        _f("mediator_ids", "id_list", ref="cadres"),
    ),
}


class ImportFileError(DataContractError):
    """The file cannot be read as a table at all (format, encoding, structure).

    The whole file is set aside: ``message_zh`` names the file and, when known, the line
    (``line``) for the clerk. A DataContractError, so Prefect does not retry it."""

    def __init__(self, source: str, message: str, *, message_zh: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(source, [message], message_zh=message_zh)

    def __reduce__(self):  # picklable (Prefect may persist a failed task's exception)
        return _import_file_error, (self.source, str(self.failures[0]), self.message_zh, self.line)


def _import_file_error(source: str, message: str, message_zh: str, line: int | None) -> ImportFileError:
    return ImportFileError(source, message, message_zh=message_zh, line=line)


def content_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (hex): names a batch by its content, not its file name."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ reading
# The marks a template puts on the columns that must (or may) be filled: *家庭编号, 家庭编号（必填）.
_FILL_MARK = re.compile(r"^[*★☆]+|[*★☆]+$|\((必填|选填|必填项|选填项)\)$")


def header_key(name: Any) -> str:
    """A column name as matched: NFKC (full-width letters and brackets folded), no BOM or
    spaces, no required mark (``_FILL_MARK``), lower case."""
    text = unicodedata.normalize("NFKC", str(name if name is not None else "")).replace("\ufeff", "")
    text = "".join(text.split())
    return _FILL_MARK.sub("", text).lower()


def _clean_header(names: list[Any]) -> list[str]:
    return [header_key(n) for n in names]


# Other headers county sheets use for a column (a two-row header's 联系方式 over 手机号 | 座机).
EXTRA_HEADER_LABELS = {"phone": ("手机号", "手机号码"), "id_number": ("身份证号码",)}


def header_aliases(kind: str) -> dict[str, str]:
    """Header spellings of ``kind``'s columns → column name: the name itself, its Chinese label
    (the one the error report prints, FIELD_LABELS_ZH), the report's "label（name）" form and
    the common variants of EXTRA_HEADER_LABELS."""
    aliases: dict[str, str] = {}
    for f in FIELDS[kind]:
        label = FIELD_LABELS_ZH.get(f.name)
        aliases[header_key(f.name)] = f.name
        if label:
            aliases.setdefault(header_key(label), f.name)
            aliases.setdefault(header_key(f"{label}（{f.name}）"), f.name)
        for extra in EXTRA_HEADER_LABELS.get(f.name, ()):
            aliases.setdefault(header_key(extra), f.name)
    return aliases


def _cell_text(value: Any) -> str | None:
    """Excel cells → the text a CSV would hold (numbers without '.0', dates as ISO)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d") if value.time() == dt.time(0) else value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _undecodable(name: str, data: bytes, at: int) -> ImportFileError:
    line = data[:at].count(b"\n") + 1
    return ImportFileError(
        name, f"cannot decode the byte at offset {at} (line {line}): the file is neither UTF-8 nor GBK",
        message_zh=f"文件 {name} 第{line}行有无法识别的字符：文件编码不是 UTF-8 或 GBK。"
                   "请在 Excel 中“另存为”“CSV UTF-8（逗号分隔）”后重新提交。", line=line)


def detect_encoding(data: bytes, name: str) -> str:
    """The codec a file is read with: UTF-8 (with or without BOM), UTF-16 with a BOM (Excel's
    "Unicode text"), else GBK — read as GB18030, its superset. Undecodable bytes raise
    ImportFileError naming their line.

    A file that does not decode as UTF-8 as a whole but does as GB18030 is GBK, even when it
    starts like UTF-8: some GBK pairs are valid UTF-8 too (岑宝 is E1 AF B1 A6, and E1 AF B1 is
    a UTF-8 character), so the first bad byte's position says nothing. A file that decodes as
    neither is damaged: its line is the UTF-8 one when the text before it was UTF-8 with
    non-ASCII characters, else the later of the two.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            data.decode("utf-16")
        except UnicodeDecodeError as e:
            prefix = data[:e.start].decode("utf-16", errors="replace").encode("utf-8")
            raise _undecodable(name, prefix, len(prefix)) from None
        return "utf-16"
    try:
        data.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError as utf8_error:
        try:
            data.decode("gb18030")
        except UnicodeDecodeError as gb_error:
            at = utf8_error.start if not data[:utf8_error.start].isascii() else max(utf8_error.start, gb_error.start)
            raise _undecodable(name, data, at) from None
        return "gb18030"


def decode_text(data: bytes, name: str) -> str:
    """The file's text (``detect_encoding``)."""
    return data.decode(detect_encoding(data, name))


def _unclosed_quote(lines: list[str], cells: list[str], width: int, at_end: bool) -> bool:
    """Does a record that spans ``lines`` come from a quote that was opened and never closed?

    A real multi-line cell (an address typed with Alt+Enter) closes its quote. An opening
    quote that is never closed takes every following line into its cell up to the end of the
    file (odd number of quotes); one closed by a stray quote further down takes whole records
    into its cell — lines with as many separators as a row has.
    """
    if len(lines) < 2:
        return False
    if at_end and sum(line.count('"') for line in lines) % 2:
        return True
    separators = max(width - 1, 2)
    return any(inner.count(",") >= separators
               for cell in cells if "\n" in cell or "\r" in cell
               for inner in cell.splitlines()[1:])


def _records_csv(path: Path) -> tuple[list[tuple[int, list[str | None]]], set[int]]:
    """(line, cells) per record, the header and any title rows above it included, and the
    lines whose quote is not closed.

    A record with an unclosed quote is cut back to its own line (its cells read literally)
    and reading goes on with the next line, so the rows after it are not swallowed."""
    text = decode_text(path.read_bytes(), path.name)
    lines = list(io.StringIO(text, newline=""))  # physical lines, as csv counts them
    if "\x00" in text:
        line = next(number for number, physical in enumerate(lines, start=1) if "\x00" in physical)
        raise ImportFileError(
            path.name, f"line {line}: NUL character (damaged file or wrong encoding)",
            message_zh=f"文件 {path.name} 第{line}行含有空字符，文件可能已损坏或编码不对，请重新导出后提交。",
            line=line)
    records: list[tuple[int, list[str | None]]] = []
    unclosed: set[int] = set()
    width = 0  # the widest record so far: a row's width (the header, or a title row's commas)
    pos = 0  # index of the next physical line to read
    while pos < len(lines):
        reader = csv.reader(lines[pos:])
        last_line = pos
        resume = None
        try:
            for cells in reader:
                start = last_line + 1  # a quoted cell may span lines: the record starts here
                last_line = pos + reader.line_num
                if last_line > start and _unclosed_quote(lines[start - 1:last_line], cells, width or len(cells),
                                                         last_line == len(lines)):
                    if not any(any(c.strip() for c in r) for _, r in records):
                        raise ImportFileError(
                            path.name, f"unclosed quote in the header (line {start})",
                            message_zh=f"文件 {path.name} 第{start}行（表头）引号未闭合，请补全或删去这个引号。",
                            line=start)
                    literal = next(csv.reader([lines[start - 1].rstrip("\r\n")], quoting=csv.QUOTE_NONE), [])
                    records.append((start, literal))
                    unclosed.add(start)
                    resume = start
                    break
                width = max(width, len(cells))
                records.append((start, list(cells)))
        except csv.Error as e:
            line = pos + reader.line_num
            raise ImportFileError(path.name, f"line {line}: {e}",
                                  message_zh=f"文件 {path.name} 第{line}行无法按 CSV 格式读取，请检查该行。",
                                  line=line) from None
        if resume is None:
            break
        pos = resume
    return records, unclosed


def _records_xlsx(path: Path) -> list[tuple[int, list[str | None]]]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError) as e:
        raise ImportFileError(
            path.name, f"not a readable XLSX workbook ({type(e).__name__})",
            message_zh=f"文件 {path.name} 不是有效的 Excel（.xlsx）文件，请在 Excel 中重新保存后提交。") from None
    try:
        sheet = workbook.worksheets[0]
        # Read-only mode trusts the sheet's stored <dimension>; exporters that write a stale one
        # would have rows past it dropped without a word.
        sheet.reset_dimensions()
        records = [(number, [_cell_text(v) for v in row])
                   for number, row in enumerate(sheet.iter_rows(values_only=True), start=1)]
    finally:
        workbook.close()
    return records


def _records_json(path: Path) -> tuple[list[str], list[tuple[int, list]]]:
    """A mobile form's submission: a JSON list of records, or ``{"records": [...]}``.

    ``_line`` is the record's number (1 = first record + 1, so that numbering matches a CSV
    whose header is line 1). Lists (the five steps) are joined with ``;``."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise _undecodable(path.name, path.read_bytes(), e.start) from None
    except json.JSONDecodeError as e:
        raise ImportFileError(path.name, f"not valid JSON: line {e.lineno}: {e.msg}",
                              message_zh=f"文件 {path.name} 第{e.lineno}行不是有效的 JSON，请检查表单导出的文件。",
                              line=e.lineno) from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ImportFileError(path.name, "expected a list of records",
                              message_zh=f"文件 {path.name} 的内容应为记录列表（JSON 数组），请检查表单导出的文件。")
    header: list[str] = []
    for r in data:
        header += [header_key(k) for k in r if header_key(k) not in header]
    records = []
    for i, r in enumerate(data):
        norm = {header_key(k): v for k, v in r.items()}
        cells = []
        for h in header:
            v = norm.get(h)
            if isinstance(v, list):
                v = ";".join(str(x) for x in v)
            elif isinstance(v, bool):
                v = "1" if v else "0"
            cells.append(None if v is None else str(v))
        records.append((i + 2, cells))
    return header, records


# How far down the header is looked for (a title, a blank row, a note above it).
HEADER_SEARCH_ROWS = 10


@dataclass(frozen=True)
class HeaderLayout:
    """Where a sheet's header was found: its line(s) (two for a merged group header such as
    联系方式 over 手机号 | 座机) and the non-blank lines above it that are neither header nor
    data (a title merged across the columns, a 填报单位 note). Both are told to the clerk."""

    lines: tuple[int, ...] = (1,)
    skipped: tuple[int, ...] = ()


@functools.lru_cache(maxsize=1)
def _known_header_keys() -> frozenset[str]:
    """Every header spelling of every kind: the file's kind is not known while it is read."""
    return frozenset(key for kind in FIELDS for key in header_aliases(kind))


@functools.lru_cache(maxsize=1)
def _header_columns_by_kind() -> tuple[tuple[dict[str, str], frozenset[str]], ...]:
    """(header spellings → column, the header columns) of every kind."""
    return tuple((header_aliases(kind), frozenset(f.name for f in fields if f.in_header))
                 for kind, fields in FIELDS.items())


def _names_a_whole_kind(row_keys: set[str]) -> bool:
    """A row naming every header column of some kind: a header however many other columns a
    county's wide export puts beside them (more than half of its cells need not be known)."""
    return any(needed and needed <= {aliases[k] for k in row_keys if k in aliases}
               for aliases, needed in _header_columns_by_kind())


def _header_score(keys: list[str], known: frozenset[str] | None = None) -> tuple[int, int]:
    """(distinct known column names, non-blank cells) of a row of header keys."""
    known = _known_header_keys() if known is None else known
    filled = [k for k in keys if k]
    return len(set(filled) & known), len(filled)


_VALUE = re.compile(r"[\d\s.,:/+\-年月日时分]+|[\dx]{15,18}")


def _merge_header_rows(upper: list[str], lower: list[str], *, lower_is_header: bool) -> list[str] | None:
    """The one header of a two-row header, or None when the two rows are not one.

    ``upper`` holds group labels merged over the columns below (联系方式 over 手机号 | 座机)
    and the names merged down over both rows; ``lower`` the names under the groups. A column
    is named by group + name when that is a known name (户主 over 姓名: 户主姓名), else by its
    own name when known, else "group/name" (reported as not imported). Not one header: a cell
    of ``lower`` that looks like a value, or that sits under a known name of one column (a
    data row's value); a group label that has no name right under its first column (the
    extra cells of a data row). ``lower_is_header``: ``lower`` was found as the header, and
    ``upper`` is taken in only when it names more columns (else it is a title row)."""
    width = max(len(upper), len(lower))
    up = upper + [""] * (width - len(upper))
    low = lower + [""] * (width - len(lower))
    if not any(low) or sum(1 for c in up if c) < 2 or any(_VALUE.fullmatch(c) for c in low if c):
        return None
    known = _known_header_keys()
    group, anchor = [""] * width, [-1] * width
    for j in range(width):
        if up[j]:
            group[j], anchor[j] = up[j], j
        elif j:
            group[j], anchor[j] = group[j - 1], anchor[j - 1]
    names, spans = [], {}
    for j in range(width):
        if not low[j]:
            names.append(up[j])
            continue
        if group[j]:
            single = j + 1 >= width or bool(up[j + 1]) or not low[j + 1]
            if up[j] in known and single:
                return None  # a value under a column of its own: a data row
            if not low[anchor[j]]:
                return None  # nothing under the group's first column: not a group
            spans[anchor[j]] = spans.get(anchor[j], 0) + 1
        joined = group[j] + low[j]
        names.append(joined if group[j] and joined in known else low[j] if low[j] in known or not group[j]
                     else f"{group[j]}/{low[j]}")
    gain = _header_score(names)[0] > _header_score(low if lower_is_header else up)[0]
    if lower_is_header:
        return names if gain else None
    inside_span = any(low[j] and not up[j] for j in range(width))
    return names if gain or inside_span or any(n >= 2 for n in spans.values()) else None


def _locate_header(rows: list[tuple[int, list[str | None]]], *, known: frozenset[str] | None = None,
                   complete: Callable[[set[str]], bool] | None = None, two_row: bool = True,
                   ) -> tuple[list[str], list[tuple[int, list[str | None]]], HeaderLayout]:
    """Header, data rows and layout of a sheet read row by row.

    The header is, among the first HEADER_SEARCH_ROWS rows, the one that names the most known
    columns (of any kind) — at least two, and more than half of its filled cells, so a title
    row or a note that happens to hold a column name (联系电话 beside the office's number)
    is not taken for it; the first such row on a tie; line 1 when no row qualifies (its
    names are then reported as missing or unknown, as before). The row just below (or just
    above) may be its second row (``_merge_header_rows``). Non-blank rows above the header
    are no data: they are skipped and listed in ``HeaderLayout.skipped``.

    For a file of one kind whose names are known (meter readings, read by
    ``sibifang.readings_files``): ``known`` replaces the names of every kind, ``complete`` says
    which rows name all the columns the kind needs (such a row is the header however many
    other columns it has: a meter export carries 户名, 地址 ...), and ``two_row=False`` keeps
    the header to one row (the caller judges the row below it)."""
    if not rows:
        return [], [], HeaderLayout()
    # only the rows the header can be on (and the one below): a city's sheet has 100,000 more
    keys = [_clean_header(cells) for _, cells in rows[:HEADER_SEARCH_ROWS + 1]]
    best, best_known = 0, 0
    for i, row_keys in enumerate(keys[:HEADER_SEARCH_ROWS]):
        named, filled = _header_score(row_keys, known)
        enough = 2 * named > filled or (complete is not None and complete(set(row_keys)))
        if named >= 2 and enough and named > best_known:
            best, best_known = i, named
    first, last, header = best, best, keys[best]
    below = best + 1
    merged = (_merge_header_rows(keys[best], keys[below], lower_is_header=False)
              if two_row and below < len(keys) else None)
    if merged is not None:
        header, last = merged, below
    elif two_row and best > 0 and any(keys[best - 1]):
        merged = _merge_header_rows(keys[best - 1], keys[best], lower_is_header=True)
        if merged is not None:
            header, first = merged, best - 1
    skipped = tuple(line for (line, _), row_keys in zip(rows[:first], keys[:first]) if any(row_keys))
    layout = HeaderLayout(lines=tuple(line for line, _ in rows[first:last + 1]), skipped=skipped)
    return header, rows[last + 1:], layout


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (UTF-8, UTF-8 with BOM, UTF-16 with BOM or GBK), XLSX (first sheet) or JSON
    file, every column as text.

    Column names are NFKC-folded, stripped of spaces and lower-cased (``header_key``); cells
    are stripped, blank cells are NA (full-width digits in coded columns are folded when the
    kind is known: ``validate_import``). Adds ``_line``: the record's line in the file
    (for XLSX the sheet row). The header need not be line 1: title rows above it are skipped
    and a two-row header is read as one (``_locate_header``; ``df.attrs["header_layout"]``
    says where, for the clerk's report). Blank lines are skipped. A row with more
    non-blank cells than the header has gets ``_extra_fields`` > 0, a CSV row whose quote is
    not closed ``_unclosed_quote`` = 1 (the importer quarantines both rather than guess).
    A file that cannot be read as a table raises ImportFileError (a DataContractError).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    unclosed: set[int] = set()
    layout = HeaderLayout()
    if suffix in (".xlsx", ".xlsm"):
        header, records, layout = _locate_header(_records_xlsx(path), complete=_names_a_whole_kind)
    elif suffix in (".csv", ".txt", ""):
        rows, unclosed = _records_csv(path)
        header, records, layout = _locate_header(rows, complete=_names_a_whole_kind)
    elif suffix == ".json":
        header, records = _records_json(path)
    else:
        raise ImportFileError(path.name, f"unsupported file type {suffix!r} (CSV, XLSX or JSON)",
                              message_zh=f"文件 {path.name} 的格式不支持，请提交 CSV、XLSX 或 JSON 文件。")
    # Trailing unnamed header cells (Excel's formatted-but-empty columns) are not columns.
    while header and header[-1] == "":
        header.pop()
    width = len(header)
    lines: list[int] = []
    rows: list[list[str | None]] = []
    extras: list[int] = []
    for line, cells in records:
        stripped = [(c.strip() if isinstance(c, str) else c) or None for c in cells]
        if not any(stripped):
            continue  # blank line or a row of empty cells
        extras.append(sum(1 for c in stripped[width:] if c))
        row = stripped[:width] + [None] * (width - len(stripped))
        rows.append(row)
        lines.append(line)
    # A name used twice is refused only when it names a column of the kind (validate_import):
    # two 性别 columns or two columns left unnamed are no reason to set a whole file aside.
    header, repeated = _unique_names(header)
    df = pd.DataFrame(rows, columns=header, dtype="str") if rows else \
        pd.DataFrame({c: pd.Series([], dtype="str") for c in header})
    df["_line"] = pd.Series(lines, dtype="int64")
    if any(extras):
        df["_extra_fields"] = pd.Series(extras, dtype="int64")
    if unclosed:
        df["_unclosed_quote"] = pd.Series([int(line in unclosed) for line in lines], dtype="int64")
    df.attrs["header_layout"] = layout  # validate_import tells the clerk where the header was found
    df.attrs["repeated_columns"] = repeated
    return df


# A repeated header name's later copies are named "<name><mark><n>": a private-use character
# no header holds (and no NUL: PostgreSQL's JSON refuses it in a quarantined row's keys).
_REPEAT_MARK = "\ue000"


def _unique_names(header: list[str]) -> tuple[list[str], list[str]]:
    """The header with the later copies of a repeated name renamed, and the names repeated
    (blank names aside: a column left unnamed is not a name used twice)."""
    seen: dict[str, int] = {}
    names, repeated = [], []
    for name in header:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            names.append(name)
            continue
        names.append(f"{name}{_REPEAT_MARK}{seen[name]}")
        if name and name not in repeated:
            repeated.append(name)
    return names, repeated


def _header_name(column: Any) -> str:
    """A column's name as the file spells it (without the mark of a repeated name)."""
    return str(column).split(_REPEAT_MARK)[0].strip()


# ------------------------------------------------------------------ result
QUARANTINE_COLUMNS = ["line", "field", "code", "reason"]


@dataclass
class ImportResult:
    kind: str
    source: str
    read: int
    accepted: pd.DataFrame
    quarantined: pd.DataFrame  # line, field, code, reason — one row per problem
    validation: ValidationReport
    warnings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUARANTINE_COLUMNS))
    # Header names that are no column of the kind (nor a Chinese label of one): not imported.
    unknown_columns: list[str] = field(default_factory=list)
    # The kind's columns the file has (None: all of them). A field whose column the file lacks is
    # not the file's to change: ``store_accepted`` keeps what is on record.
    columns: list[str] | None = None
    # Where the header was found and the title rows skipped above it (told in the report).
    header: HeaderLayout = field(default_factory=lambda: HeaderLayout())

    def __post_init__(self) -> None:
        if self.read != len(self.accepted) + self.quarantined_lines:
            raise RuntimeError(f"{self.source}: rows lost in validation: read {self.read} != "
                               f"{len(self.accepted)} accepted + {self.quarantined_lines} quarantined")

    @property
    def quarantined_lines(self) -> int:
        return int(self.quarantined["line"].nunique()) if len(self.quarantined) else 0


# ------------------------------------------------------------------ normalising
class _Problems:
    """Row problems as (position, field, code), first one per (position, field) wins.

    ``context`` fills a reason's placeholders other than ``{field}`` and ``{line}`` (e.g. the
    line a duplicate repeats); ``variant`` picks another wording of the same code."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, str], str] = {}
        self._context: dict[tuple[int, str], dict[str, Any]] = {}

    def add(self, mask: pd.Series | np.ndarray, field_name: str, code: str) -> None:
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        for pos in positions.tolist():
            self._items.setdefault((pos, field_name), code)

    def add_positions(self, positions: list[int], field_name: str, code: str,
                      context: Mapping[int, dict[str, Any]] | None = None) -> None:
        for pos in positions:
            item = (int(pos), field_name)
            if item not in self._items:
                self._items[item] = code
                if context and int(pos) in context:
                    self._context[item] = context[int(pos)]

    def only(self, positions: np.ndarray, field_name: str, code: str) -> None:
        """``positions`` have this one problem, whatever else was found in them."""
        drop = set(positions.tolist())
        if not drop:
            return
        for item in [item for item in self._items if item[0] in drop]:
            del self._items[item]
            self._context.pop(item, None)
        self.add_positions(sorted(drop), field_name, code)

    @property
    def positions(self) -> set[int]:
        return {pos for pos, _ in self._items}

    def frame(self, lines: np.ndarray) -> pd.DataFrame:
        if not self._items:
            return pd.DataFrame({"line": pd.Series([], dtype="int64"), "field": pd.Series([], dtype="str"),
                                 "code": pd.Series([], dtype="str"), "reason": pd.Series([], dtype="str")})
        rows = [(int(lines[pos]), name, code,
                 reason_zh(code, name, line=int(lines[pos]), **self._context.get((pos, name), {})))
                for (pos, name), code in self._items.items()]
        out = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
        out = out.astype({"line": "int64", "field": "str", "code": "str", "reason": "str"})
        return out.sort_values(["line", "field"], kind="stable").reset_index(drop=True)


def reason_zh(code: str, field_name: str, *, line: int | None = None, variant: str | None = None,
              **context: Any) -> str:
    label = FIELD_LABELS_ZH.get(field_name, field_name)
    template = REASONS_ZH.get(variant or code) or REASONS_ZH.get(code, REASONS_ZH["invalid"])
    return template.format_map(_Placeholders(field=label, line=line if line is not None else "?", **context))


class _Placeholders(dict):
    """A reason whose context is not known says "?" rather than failing the import."""

    def __missing__(self, key: str) -> str:
        return "?"


def _normalise(kind: str, raw: pd.DataFrame, problems: _Problems, now=None) -> pd.DataFrame:
    """Typed frame in contract column order; parse failures become problems (value → NA)."""
    typed: dict[str, pd.Series] = {}
    for f in FIELDS[kind]:
        values = raw[f.name] if f.name in raw.columns else pd.Series(pd.NA, index=raw.index, dtype="str")
        values = values.astype("str").where(values.notna())
        if f.type != "text":
            # Full-width digits and letters (１５８…, Ｈ００１) are what an IME types; fold them
            # (NFKC) in ids, numbers, dates and codes. Free text keeps its full-width punctuation.
            values = C.fold_width(values)
        if f.type in ("date", "datetime"):
            values = _excel_serial_dates(values, with_time=f.type == "datetime")
        if f.type in ("int", "float"):
            values, misplaced = _without_thousands_separators(values)
            problems.add(misplaced, f.name, "bad_thousands")  # before bad_int / bad_number: the cause
        blank = values.isna() | values.str.strip().eq("")
        if f.type in ("text", "id"):
            typed[f.name] = values.str.strip().where(~blank).astype("str")
        elif f.type == "id_number":
            typed[f.name] = C.normalise_id_number(values).where(~blank).astype("str")
        elif f.type == "phone":
            typed[f.name] = C.normalise_phone(values).astype("str")
        elif f.type == "int":
            parsed, invalid = C.to_int(values)
            if f.default is not None:
                default = _default_capacity() if f.default == "settings" else f.default
                parsed = parsed.where(~blank, default)
            typed[f.name] = parsed
            problems.add(invalid, f.name, "bad_int")
        elif f.type == "float":
            parsed, invalid = C.to_float(values)
            typed[f.name] = parsed
            problems.add(invalid, f.name, "bad_number")
        elif f.type == "bool":
            parsed, invalid = C.to_bool(values, default=bool(f.default))
            typed[f.name] = parsed
            problems.add(invalid, f.name, "bad_bool")
        elif f.type == "date":
            parsed, invalid = C.to_date(values)
            invalid, parsed = invalid | _partial_date(values), parsed.where(~_partial_date(values))
            typed[f.name] = parsed
            problems.add(invalid, f.name, "bad_date")
        elif f.type == "datetime":
            parsed, invalid = C.to_datetime_local(values)
            invalid, parsed = invalid | _partial_date(values), parsed.where(~_partial_date(values))
            # Stored naive in local time (schemas.models); the instant is already Asia/Shanghai.
            typed[f.name] = parsed.dt.tz_localize(None)
            problems.add(invalid, f.name, "bad_datetime")
            if f.not_future:
                problems.add(~C.not_in_future(parsed, now=now), f.name, "future_date")
        elif f.type == "code":
            codes, unknown = C.to_code(values, f.lookup or {})
            typed[f.name] = codes
            problems.add(unknown, f.name, "unknown_code")
        elif f.type == "code_list":
            codes, unknown = C.to_code_list(values, f.lookup or {})
            typed[f.name] = codes
            problems.add(unknown, f.name, "unknown_list_item")
        elif f.type == "id_list":
            typed[f.name] = C.split_list(values)
        else:  # pragma: no cover - a Field with a type this function does not know
            raise ValueError(f"field {f.name}: unknown type {f.type}")
        if f.type == "date" and f.not_future:
            problems.add(~C.not_in_future(typed[f.name], now=now), f.name, "future_date")
    return pd.DataFrame(typed, index=raw.index)


# Thousands separators as Excel's number format shows them ("1,234", "1,234.5"; a full-width
# "，" is folded before): each group of three digits. The decimal mark here is the point, so
# "1,234" is 1234. [0-9], not \d (see checks.fold_width).
_GROUPED_NUMBER = re.compile(r"[+-]?[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]+)?")  # never 0,500


def _without_thousands_separators(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values with well-formed thousands separators removed, mask: a comma anywhere else).
    "1,5" or "12,34" may be a decimal comma or a slip: guessing would import a number ten or a
    thousand times off, so the row is quarantined (``bad_thousands``) with what a comma means here."""
    text = values.str.strip()
    comma = text.str.contains(",", regex=False).fillna(False).astype(bool)
    if not comma.any():
        return values, comma
    grouped = comma & text.str.fullmatch(_GROUPED_NUMBER).fillna(False).astype(bool)
    return values.where(~grouped, text.str.replace(",", "", regex=False)), comma & ~grouped


# Excel's day 0 (serial numbers count days from it) and the serials taken as dates: 1950-01-01
# to 2099-12-31. A number outside (12, 2026) is no date anyone meant, and stays a bad date.
_EXCEL_EPOCH = dt.datetime(1899, 12, 30)
_SERIAL = re.compile(r"\d{5}(\.\d+)?")
_SERIAL_RANGE = (18264, 73050)


def _excel_serial_dates(values: pd.Series, *, with_time: bool) -> pd.Series:
    """Dates Excel stored as its serial number (a date column formatted 常规, or a CSV saved from
    it: 46346 is 2026-11-20, 46346.4166… 10:00 that day) → ISO text, for the date parsers. The
    clerk sees a date in Excel and could not tell why "不是有效日期"."""
    text = values.str.strip()
    serial = text.str.fullmatch(_SERIAL).fillna(False).astype(bool)
    if not serial.any():
        return values
    days = pd.to_numeric(text.where(serial), errors="coerce")
    serial &= days.between(*_SERIAL_RANGE)
    when = (pd.Timestamp(_EXCEL_EPOCH) + pd.to_timedelta(days[serial], unit="D")).dt.round("s")
    iso = when.dt.strftime("%Y-%m-%d %H:%M:%S" if with_time else "%Y-%m-%d")
    return values.where(~serial, iso)


_PARTIAL_DATE = re.compile(r"\d{4}(\s*[-/.年]\s*\d{1,2}\s*月?)?")


def _partial_date(values: pd.Series) -> pd.Series:
    """A year or a month alone (2026, 2026-11): ISO 8601 reads them as the first day, a day
    nobody typed; for a date column they are no date."""
    return values.str.strip().str.fullmatch(_PARTIAL_DATE).fillna(False).astype(bool)


def _text_limits(kind: str) -> dict[str, int]:
    """The most characters each free-text column of ``kind`` can hold in the database (its
    ``String(n)`` in schemas.models; an area's names are ``Area.name``)."""
    from schemas import models as M

    model = {"areas": M.Area, "households": M.Household, "cadres": M.Cadre, "meters": M.Meter,
             "visits": M.Visit, "resources": M.ServiceResource, "mediation_rooms": M.MediationRoom}.get(kind)
    if model is None:
        return {}
    columns = model.__table__.columns
    limits = {}
    for f in FIELDS[kind]:
        column = columns.get(f.name) if f.name in columns else columns.get("name") if f.name.endswith("_name") else None
        length = getattr(column.type, "length", None) if column is not None else None
        if f.type == "text" and length:
            limits[f.name] = int(length)
    return limits


def _check_rows(kind: str, typed: pd.DataFrame, problems: _Problems,
                known: Mapping[str, set[str]] | None) -> None:
    """The checks GX cannot express (sibifang.checks)."""
    # A value longer than its column is that row's problem: PostgreSQL would refuse the whole
    # file's insert (and its error repeats every row's values, ID and phone numbers included).
    for name, limit in _text_limits(kind).items():
        too_long = np.flatnonzero(typed[name].str.len().gt(limit).fillna(False).to_numpy(dtype=bool))
        problems.add_positions(too_long.tolist(), name, "too_long", {int(p): {"limit": limit} for p in too_long})
    for f in FIELDS[kind]:
        col = typed[f.name]
        if f.type == "id_number":
            codes = C.resident_id_problems(col)
            for code in (C.ID_BAD_FORMAT, C.ID_BAD_BIRTH_DATE, C.ID_BAD_CHECK_DIGIT):
                problems.add(codes.eq(code), f.name, code)
        elif f.type == "phone":
            problems.add(col.notna() & ~C.valid_phone(col), f.name, "bad_phone")
        if f.ref and known is not None and f.ref in known:
            ok = C.known_references(col, known[f.ref]) if f.type == "id_list" else C.known_reference(col, known[f.ref])
            problems.add(~ok, f.name, _REFERENCE_CODES[f.ref])
    if kind == "cadres":
        channel = typed["alert_channel"]
        has_channel = channel.notna()
        problems.add(has_channel & typed["alert_address"].isna(), "alert_address", "alert_address_missing")
        problems.add(has_channel & typed["alert_address"].notna()
                     & ~C.valid_alert_address(channel, typed["alert_address"]),
                     "alert_address", "bad_alert_address")
        problems.add(typed["four_plus_one"] & typed["grassroots_weekday"].isna(),
                     "grassroots_weekday", "weekday_missing")
    if kind == "households":
        # A removal date needs a removal: on a row marked 在册 (or not marked) it is a mistake.
        problems.add(typed["deregistered_on"].notna()
                     & ~typed["register_status"].isin(set(C.DEREGISTERED_REASON_LABELS)).to_numpy(dtype=bool),
                     "deregistered_on", "deregistered_on_without_status")
    if kind == "visits" and known is not None:
        # Cross-record rules of a visit: her cadre covers the family's grid; a visit that names
        # its plan cannot precede the plan. (Optional ``known`` maps: skipped when absent.)
        cadre_grids, household_grid = known.get("cadre_grids"), known.get("household_grid")
        if cadre_grids is not None and household_grid is not None:
            grid = typed["household_id"].map(household_grid)
            covered = [c not in cadre_grids or not isinstance(g, str) or g in cadre_grids[c]
                       for c, g in zip(typed["cadre_id"], grid)]
            problems.add(~np.asarray(covered, dtype=bool), "cadre_id", "cadre_not_covering")
        plans = known.get("plans")
        if plans is not None and "plan_id" in typed:
            pid = typed["plan_id"]
            named = pid.notna() & pid.astype(str).str.strip().ne("")
            problems.add(named & ~pid.isin(set(plans)), "plan_id", "unknown_plan")
            created = pd.to_datetime(pid.map(plans))
            problems.add(named & created.notna() & (pd.to_datetime(typed["visited_at"]) < created),
                         "visited_at", "before_plan")
    if kind == "areas":
        # One parent per area: a village under two townships would split the hierarchy.
        for child, parent in (("grid_id", "village_id"), ("village_id", "township_id"),
                              ("township_id", "district_id"), ("district_id", "city_id")):
            first_parent = typed.groupby(child, sort=False)[parent].transform("first")
            problems.add(typed[child].notna() & typed[parent].notna() & first_parent.notna()
                         & typed[parent].ne(first_parent) & typed[child].duplicated(keep="first"),
                         parent, "conflicting_parent")


# The columns that identify a row of each kind (a later row with the same key is a duplicate).
KEYS: dict[str, tuple[str, ...]] = {kind: (FIELDS[kind][0].name,) for kind in FIELDS}
KEYS["readings"] = ("meter_id", "ts")


def validate_import(kind: str, raw: pd.DataFrame, *, source: str,
                    known: dict[str, set[str]] | None = None, now=None) -> ImportResult:
    """Normalise and validate one registry file read by ``read_table``.

    ``known`` holds the ids references must point to: ``{"grids", "villages", "townships",
    "households", "cadres", "meters"}``; a missing key skips that reference check (on a fresh
    database the referenced file may be imported in the same run). Raises DataContractError
    when required columns are missing, the file has no rows, or the suite itself is broken.
    """
    from schemas.validation import DataContractError, validate_frame

    if kind not in FIELDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    layout = raw.attrs.get("header_layout") or HeaderLayout()
    repeated = list(raw.attrs.get("repeated_columns", ()))
    raw = raw.reset_index(drop=True)
    if "_line" not in raw.columns:
        raw = raw.assign(_line=np.arange(2, len(raw) + 2, dtype="int64"))
    aliases = header_aliases(kind)
    twice = [name for name in repeated if header_key(name) in aliases]
    if twice:
        raise ImportFileError(source, f"duplicate column names: {', '.join(twice)}",
                              message_zh=f"文件 {source} 的表头有重复的列：{'、'.join(twice)}。",
                              line=layout.lines[-1])
    raw, unknown_columns = _canonical_columns(kind, raw)
    required = [f.name for f in FIELDS[kind] if f.in_header]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        labels = "、".join(f"{c}（{FIELD_LABELS_ZH.get(c, c)}）" for c in missing)
        raise DataContractError(
            source, [f"missing required columns for {kind}: {', '.join(missing)}"],
            message_zh=f"文件 {source} 缺少必需的列：{labels}。请使用导入模板的表头。")
    if raw.empty:
        raise DataContractError(source, [f"no data rows for {kind}"],
                                message_zh=f"文件 {source} 没有数据行。")

    problems = _Problems()
    if "_unclosed_quote" in raw.columns:
        problems.add(raw["_unclosed_quote"].fillna(0).astype("int64").gt(0), "_row", "unclosed_quote")
    if "_extra_fields" in raw.columns:
        problems.add(raw["_extra_fields"].fillna(0).astype("int64").gt(0), "_row", "extra_fields")
    # ``now``: the moment the import acts for (a replayed day); "in the future" is judged against it.
    typed = _normalise(kind, raw, problems, now)

    report = validate_frame(typed, kind, source=source)
    broken = [r for r in report.results if r.exception]
    table_level = [r for r in report.critical_failures if not r.column and not r.exception]
    if broken or table_level:
        # A broken suite or a table-level failure is not a row's fault: do not dress it as bad data.
        raise DataContractError(source, broken + table_level,
                                message_zh=f"文件 {source} 的校验规则执行出错，请联系系统管理员。")
    for outcome in report.critical_failures:
        if outcome.code == "duplicate_key":
            continue  # GX marks every copy; which copy is kept is decided below, on the good rows
        # For a date pair the first column is the later date: the one a clerk corrects.
        problems.add_positions(outcome.unexpected_rows, outcome.columns[0], outcome.code)

    _check_rows(kind, typed, problems, known)
    lines = raw["_line"].to_numpy()
    _mark_duplicates(kind, typed, problems, lines)
    # A totals row (合计 in its first filled cell) is quarantined as that alone: its empty key
    # and names would otherwise read as a dozen errors the clerk has nothing to fix for.
    problems.only(_total_rows(raw), "_row", "total_row")
    # Files joined into one (copy /b a.csv+b.csv): the second header is no record either.
    problems.only(_repeated_header_rows(kind, raw), "_row", "repeated_header")

    quarantined = problems.frame(lines)
    bad = np.zeros(len(typed), dtype=bool)
    bad[list(problems.positions)] = True
    accepted = typed.loc[~bad].assign(_line=raw["_line"].loc[~bad]).reset_index(drop=True)

    warning_rows = []
    for outcome in report.warnings:
        for pos in outcome.unexpected_rows:
            if bad[pos]:
                continue  # quarantined anyway: the clerk fixes the row, a reminder adds nothing
            name = outcome.columns[0] if outcome.columns else "_row"
            warning_rows.append((int(lines[pos]), name, outcome.code, reason_zh(outcome.code, name)))
    warnings = pd.DataFrame(warning_rows, columns=QUARANTINE_COLUMNS)
    return ImportResult(kind=kind, source=source, read=len(raw), accepted=accepted,
                        quarantined=quarantined, validation=report, warnings=warnings,
                        unknown_columns=unknown_columns,
                        columns=[f.name for f in FIELDS[kind] if f.name in raw.columns], header=layout)


_MARKER_COLUMNS = frozenset({"_line", "_extra_fields", "_unclosed_quote"})


def _total_rows(raw: pd.DataFrame) -> np.ndarray:
    """Positions of the rows whose first filled cell (in the file's column order) labels a
    totals row (``C.is_total_label``)."""
    cells = raw[[c for c in raw.columns if c not in _MARKER_COLUMNS]]
    if cells.empty or not len(cells.columns):
        return np.zeros(0, dtype=np.int64)
    first = cells.bfill(axis=1).iloc[:, 0]
    return np.flatnonzero(first.notna().to_numpy() & C.is_total_label(first.astype("str")))


def _repeated_header_rows(kind: str, raw: pd.DataFrame) -> np.ndarray:
    """Positions of the rows that are the header again (``header_repeats``), by the kind's
    header aliases (any spelling: 家庭编号, *家庭编号, a BOM before it)."""
    aliases = header_aliases(kind)
    columns = [f.name for f in FIELDS[kind] if f.name in raw.columns]
    return header_repeats(raw, columns, lambda value: aliases.get(header_key(value)))


def header_repeats(raw: pd.DataFrame, columns: list[str], column_named: Callable[[str], str | None],
                   rows: np.ndarray | None = None) -> np.ndarray:
    """Positions (of ``rows``, default all) of the rows that are the header again: by the
    header rule (``_locate_header``), at least two of ``columns`` hold their own name
    (``column_named(cell)`` is the column a cell names, or None), and more than half of the
    row's filled cells in those columns do. Shared by the registry and the readings imports."""
    if len(columns) < 2 or raw.empty:
        return np.zeros(0, dtype=np.int64)

    def own_name(column: str, rows: np.ndarray) -> np.ndarray:
        values = raw[column].iloc[rows]
        text = values.astype("str").where(values.notna(), "")
        # column_named on the distinct values without an ASCII digit only (ids hold digits)
        wordy = ~text.str.contains(r"[0-9]").to_numpy(dtype=bool)
        names = {v: column_named(v) == column for v in pd.unique(text.to_numpy()[wordy])}
        return wordy & text.map(names).fillna(False).to_numpy(dtype=bool)

    rows = np.arange(len(raw)) if rows is None else np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return rows
    # a cheap first pass: a repeated header names its first (or second) column
    first = own_name(columns[0], rows) | own_name(columns[1], rows)
    rows = rows[first]
    if not len(rows):
        return rows
    named = np.zeros(len(rows), dtype=np.int64)
    filled = np.zeros(len(rows), dtype=np.int64)
    for column in columns:
        named += own_name(column, rows)
        filled += raw[column].iloc[rows].notna().to_numpy(dtype=bool)
    return rows[(named >= 2) & (2 * named > filled)]


def _canonical_columns(kind: str, raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rename Chinese headers (独居老人, 独居老人（elderly_living_alone）) to column names;
    return the frame and the header names that are no column of ``kind`` (not imported).

    A label whose column is also in the file under its own name is not renamed (two columns
    for one field): it is reported as unknown instead."""
    aliases = header_aliases(kind)
    present = set(raw.columns)
    rename: dict[str, str] = {}
    unknown: list[str] = []
    for column in raw.columns:
        if column in _MARKER_COLUMNS:
            continue
        target = aliases.get(header_key(column)) if _REPEAT_MARK not in str(column) else None
        if target is None:
            name = _header_name(column)
            if name or raw[column].notna().any():
                unknown.append(name or "（无列名）")
        elif target != column:
            if target in present or target in rename.values():
                unknown.append(str(column))
            else:
                rename[column] = target
    return (raw.rename(columns=rename) if rename else raw), unknown


def _mark_duplicates(kind: str, typed: pd.DataFrame, problems: _Problems, lines: np.ndarray) -> None:
    """One row per key is imported: the first copy without any other problem.

    Every other copy is quarantined as ``duplicate_key`` and its reason names the line that
    was imported; when every copy has a problem, the later ones name the first copy.
    """
    key = list(KEYS[kind])
    keyed = typed[key].notna().all(axis=1).to_numpy()
    groups = typed[key].astype("str").agg("\x1f".join, axis=1) if len(key) > 1 else typed[key[0]].astype("str")
    in_dup_group = keyed & groups.duplicated(keep=False).to_numpy()
    if not in_dup_group.any():
        return
    bad = np.zeros(len(typed), dtype=bool)
    bad[list(problems.positions)] = True
    positions = np.flatnonzero(in_dup_group)
    copies = pd.DataFrame({"group": pd.factorize(groups.to_numpy()[positions])[0], "pos": positions,
                           "good": ~bad[positions]})
    kept = copies["group"].map(copies[copies["good"]].groupby("group")["pos"].first())
    first = copies["group"].map(copies.groupby("group")["pos"].first())
    context: dict[int, dict[str, Any]] = {}
    for pos, kept_pos, first_pos in zip(copies["pos"].tolist(), kept.tolist(), first.tolist()):
        if pd.notna(kept_pos):  # a good copy was imported: every other copy names it
            if pos != kept_pos:
                context[pos] = {"first": int(lines[int(kept_pos)])}
        elif pos != first_pos:  # every copy is bad: the later ones name the first
            context[pos] = {"first": int(lines[first_pos]), "variant": "duplicate_key_all_bad"}
    problems.add_positions(sorted(context), key[-1], "duplicate_key", context)


# ------------------------------------------------------------------ the clerk's report
def _template_env() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    folder = Path(str(files("templates")))
    return Environment(loader=FileSystemLoader(str(folder)), autoescape=select_autoescape(["html", "html.j2"]),
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_import_errors(result: ImportResult, fmt: str = "txt", *,
                         now: Callable[[], dt.datetime] | None = None) -> str:
    """The import error report a village clerk reads (simplified Chinese): 文件、行号、字段、原因.

    ``fmt`` is ``"txt"`` or ``"html"``. Holds counts, line numbers, column names and reasons —
    never the failing values.
    """

    def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return [{"line": int(r.line), "field": r.field, "field_zh": FIELD_LABELS_ZH.get(r.field, r.field),
                 "code": r.code, "reason": r.reason} for r in frame.itertuples(index=False)]

    return _render(fmt, now, source=result.source, kind=result.kind, read=result.read,
                   accepted=len(result.accepted), quarantined_lines=result.quarantined_lines,
                   problems=rows(result.quarantined), warnings=rows(result.warnings),
                   unknown_columns=list(result.unknown_columns), rejected=None, moved=False,
                   header_lines=_line_span(result.header.lines),
                   skipped_lines=[f"第{n}行" for n in result.header.skipped])


def _line_span(lines: tuple[int, ...]) -> str:
    """The header's line(s) as the report prints them: "1", "3–4"."""
    return f"{lines[0]}–{lines[-1]}" if len(lines) > 1 else str(lines[0] if lines else 1)


def render_file_rejection(source: str, kind: str, message_zh: str, fmt: str = "txt", *, moved: bool = False,
                          now: Callable[[], dt.datetime] | None = None) -> str:
    """The report of a file set aside as a whole (unreadable, no header, missing columns):
    the same report as ``render_import_errors``, with the reason instead of row problems.
    ``moved``: the file was moved to the inbox's ``rejected/`` folder."""
    return _render(fmt, now, source=source, kind=kind, read=0, accepted=0, quarantined_lines=0,
                   problems=[], warnings=[], unknown_columns=[], rejected=message_zh, moved=moved,
                   header_lines="1", skipped_lines=[])


def _render(fmt: str, now: Callable[[], dt.datetime] | None, **context: Any) -> str:
    if fmt not in ("txt", "html"):
        raise ValueError("fmt must be 'txt' or 'html'")
    generated = (now or (lambda: dt.datetime.now(C.LOCAL_TZ)))()
    context["kind_zh"] = KIND_LABELS_ZH.get(context["kind"], context["kind"])
    context["generated_at"] = generated.strftime("%Y-%m-%d %H:%M")
    return _template_env().get_template(f"import_errors.{fmt}.j2").render(**context)
