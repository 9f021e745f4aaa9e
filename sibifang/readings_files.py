"""Reading readings files, and judging them as a whole.

:func:`read_readings_file` turns a CSV (UTF-8, UTF-16, GBK/GB18030; ``,``, ``;`` or tab),
Parquet or XLSX file into a text frame ``line, meter_id, ts, kwh|register_kwh``, matching
headers by alias (``Meter ID``, ``用电量（kWh）``) and refusing a file whose header cannot be
read as readings. :func:`check_readings_text` refuses a file whose whole column was exported
the wrong way (Unix epoch times, decimal commas, ambiguous dd/mm dates) and settles the date
order when the file shows it. Both raise ImportFileError naming file and line.

Kept apart from :mod:`sibifang.ingest_readings`, which cleans the rows of a frame (quarantine
codes, intervals, registers): how a file was written is one concern, what each reading means
another, and neither module needs the other's internals. Nothing here imports
:mod:`sibifang.ingest_readings`; it takes :func:`meter_id_text` from here.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

# Keys after _normalise_column_name: lower case, runs of spaces/hyphens as "_", a unit in
# brackets appended ("用电量（kWh）" -> "用电量_kwh"), so "Meter ID", "meter-id", "Timestamp"
# and "kWh" are the contract columns. Only names that can mean nothing else are listed.
_COLUMN_ALIASES = {
    "meter_id": "meter_id", "meter": "meter_id", "meterid": "meter_id", "meter_no": "meter_id",
    "电表编号": "meter_id", "表号": "meter_id",
    "ts": "ts", "timestamp": "ts", "time": "ts", "datetime": "ts", "date_time": "ts", "time_stamp": "ts",
    "读数时间": "ts", "时间": "ts",
    "kwh": "kwh", "energy_kwh": "kwh", "consumption_kwh": "kwh", "用电量": "kwh", "用电量_kwh": "kwh",
    "register_kwh": "register_kwh", "累计读数": "register_kwh", "示数": "register_kwh",
}
# Traditional characters of those headers (電錶編號, 讀數時間, 累計讀數: what Taiwanese and Hong
# Kong exports write), folded to the simplified ones before the aliases are looked up.
_TRADITIONAL_HEADER_CHARS = str.maketrans("電錶編號讀數時間計", "电表编号读数时间计")
# A value column whose header says Wh: the numbers are 1000 times kWh (see _wh_header).
_WH_HEADER_RE = r"(?:.*_)?wh"
# The columns a readings file is read for, as the clerk knows them (for file-level errors).
_COLUMN_LABELS_ZH = {"meter_id": "电表编号（meter_id）", "ts": "读数时间（ts）", "kwh": "用电量（kwh）",
                     "register_kwh": "累计读数（register_kwh）"}


# --------------------------------------------------------------------------- reading files

def read_readings_file(path: Path) -> pd.DataFrame:
    """Read a readings file as text, keeping a ``line`` column (1-based, as the file numbers it).

    The header need not be line 1 (CSV, XLSX): title or note lines above it are skipped as the
    registry import skips them (:func:`locate_readings_header`); they are no rows read, and
    ``attrs["header_layout"]`` says where the header was and what was skipped
    (:func:`skipped_lines_zh`, for the clerk).

    CSV in UTF-8 (with or without BOM) or GBK/GB18030; Parquet; XLSX (first sheet, line is
    the Excel row number). For Parquet, ``line`` is the row position + 2, i.e. the line the
    row would have in the equivalent CSV. Columns are matched case-insensitively (Chinese
    headers 电表编号/读数时间/用电量/累计读数 accepted). A file with ``kwh`` is read as
    intervals; with only ``register_kwh`` as a cumulative register; with both, ``kwh`` wins.
    For CSV, ``line`` is the file's physical line on which the row starts, as a text editor
    numbers it and as the registry import reports it: blank lines and rows of empty cells are
    no rows (:func:`_without_blank_rows`) but count in the numbering, and a quoted field with a
    line break in it (an address typed with Alt+Enter) makes its row span lines, so the rows
    after it are numbered by the lines they are on, not by their position
    (:func:`_record_lines`). Errors pandas raises name a CSV record; they are reported by the
    record's line too.

    A row with more non-blank fields than the header keeps them in ``_extra_fields`` (joined
    by ``,``; the column only when some row has them), and is quarantined as ``extra_fields``
    by clean_readings; empty trailing fields (a comma at the end of every row) are harmless.

    A file that cannot be read as readings (format, encoding, an unclosed quote, missing
    columns; a Big5 file, whose header read as GBK is mojibake, :func:`_refuse_big5`) raises
    DataContractError — never retried —
    whose ``message_zh`` names the file and, when known, the line. So does a file written in a
    way no row can be read right (:func:`check_readings_text`: Wh, epoch times, decimal commas,
    a day/month order it cannot settle), for `sibifang detect`, `import readings` and the inbox
    alike.
    """
    from sibifang.importing import HeaderLayout, ImportFileError

    path = Path(path)
    suffix = path.suffix.lower()
    lines = None
    layout = HeaderLayout()
    if suffix in {".parquet", ".pq"}:
        try:
            raw = _read_parquet_columns(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise ImportFileError(path.name, f"not a readable Parquet file ({type(e).__name__})",
                                  message_zh=f"文件 {path.name} 不是有效的 Parquet 文件，请重新导出后提交。") from None
        first_line = 2
    elif suffix in {".xlsx", ".xlsm"}:
        layout = locate_readings_header(_xlsx_first_rows(path))
        try:
            raw = pd.read_excel(path, sheet_name=0, dtype=str, keep_default_na=False, header=layout.lines[0] - 1)
        except (zipfile.BadZipFile, ValueError, KeyError) as e:
            raise ImportFileError(
                path.name, f"not a readable XLSX workbook ({type(e).__name__})",
                message_zh=f"文件 {path.name} 不是有效的 Excel（.xlsx）文件，请在 Excel 中重新保存后提交。") from None
        first_line = layout.lines[0] + 1
    elif suffix in {".csv", ".txt", ""}:
        raw, lines, layout = _read_csv_any_encoding(path)
        first_line = layout.lines[0] + 1
    else:
        raise ImportFileError(path.name, f"unsupported readings file type {suffix!r} (CSV, Parquet, XLSX)",
                              message_zh=f"文件 {path.name} 的格式不支持，电表读数请提交 CSV、Parquet 或 XLSX 文件。")
    raw, lines = _without_blank_rows(raw, lines, first_line, path if suffix in {".parquet", ".pq"} else None)
    header_line = layout.lines[0]

    clashes = _column_clashes(raw.columns)
    if clashes:
        # Two headers for one column (kwh and 用电量, meter_id and 表号, kwh twice): which one
        # holds the readings is a guess, so the file is refused rather than read either way.
        raise ImportFileError(
            path.name, "; ".join(f"headers {', '.join(h)} all name the column {c}" for c, h in clashes.items()),
            message_zh=f"文件 {path.name} 的表头有重复的列："
                       + "；".join(_clash_zh(c, h) for c, h in clashes.items())
                       + "。无法确定该用哪一列，请只保留其中一列后重新提交。",
            line=header_line)
    wh = _wh_header(raw.columns)
    if wh is not None and not ({"kwh", "register_kwh"} & {_normalise_column_name(c) for c in raw.columns}):
        # Read as kWh, every value would be 1000 times too high (all "implausible"); converting
        # silently would hide a unit the clerk should see, so the file is refused.
        raise ImportFileError(
            path.name, f"column {wh!r} is in Wh; the contract column kwh is in kWh (Wh / 1000)",
            message_zh=f"文件 {path.name} 第{header_line}行表头的列 {wh} 单位是 Wh（瓦时），"
                       "电表读数应为 kWh（千瓦时）：请把数值除以 1000，表头改为 kwh 后重新提交。",
            line=header_line)
    raw = raw.rename(columns=lambda c: c if c == EXTRA_FIELDS else _normalise_column_name(c))
    missing = sorted({"meter_id", "ts"} - set(raw.columns))
    if not ({"kwh", "register_kwh"} & set(raw.columns)):
        missing.append("kwh")
    if missing and suffix in {".csv", ".txt", ""}:
        _refuse_big5(path)
    if missing:
        raise ImportFileError(
            path.name, f"readings file lacks column(s) {', '.join(missing)} "
                       f"(needs meter_id, ts, kwh or meter_id, ts, register_kwh); has {list(map(str, raw.columns))}",
            message_zh=f"文件 {path.name} 缺少必需的列：{'、'.join(missing)}。电表读数文件的表头应为 "
                       "meter_id、ts、kwh（累计读数为 meter_id、ts、register_kwh；"
                       "也可用中文表头：电表编号、读数时间、用电量、累计读数）。",
            line=header_line)
    value_col = "kwh" if "kwh" in raw.columns else "register_kwh"
    _refuse_second_header_row(raw, value_col, path.name, lines[0] if lines is not None and len(lines) else first_line)
    marker = [EXTRA_FIELDS] if EXTRA_FIELDS in raw.columns and raw[EXTRA_FIELDS].ne("").any() else []
    out = raw[["meter_id", "ts", value_col, *marker]]  # copy-on-write: no copy of millions of rows
    out["meter_id"] = meter_id_text(out["meter_id"])
    if lines is None:  # one line a row (Parquet, XLSX, a CSV without line breaks in its fields)
        lines = np.arange(first_line, first_line + len(out), dtype=np.int64)
    out.insert(0, "line", lines)
    out = check_readings_text(out.reset_index(drop=True), path.name)
    # Where the header was, and the title or note lines skipped above it: not rows read (as
    # in the registry import), but named to the clerk (``skipped_lines_zh``).
    out.attrs["header_layout"] = layout
    return out


# The names a readings header row is judged by, and the ones it must all hold to be the header.
_READINGS_HEADER_NAMES = frozenset(_COLUMN_LABELS_ZH)


def _names_all_readings_columns(names: set[str]) -> bool:
    return {"meter_id", "ts"} <= names and bool(names & {"kwh", "register_kwh"})


def locate_readings_header(rows: list[tuple[int, list]]):  # -> importing.HeaderLayout
    """Where the header of a readings sheet is, from its first rows ``(line, cells)``: the
    registry import's rule (``importing._locate_header``), with the readings columns' names
    (``Meter ID``, 电表编号 …). A title (merged across the columns, "XX供电所 智能电表读数导出
    2026年11月") or a note above it is skipped and listed in ``skipped``. The header stays
    one row: a second header row below it is refused by :func:`_refuse_second_header_row`.
    No row that qualifies: line 1 (its columns are then reported as missing, as before)."""
    from sibifang.importing import _locate_header

    def key(cell: object) -> str:
        return "" if cell is None or not str(cell).strip() else _normalise_column_name(cell)

    keyed = [(line, [key(c) for c in cells]) for line, cells in rows]
    return _locate_header(keyed, known=_READINGS_HEADER_NAMES, complete=_names_all_readings_columns,
                          two_row=False)[2]


def repeated_header_rows(raw: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray:
    """Positions (of ``rows``, default all) of the rows of a readings frame (contract column
    names) that are a readings header again: files joined with ``copy /b a.csv+b.csv``, the
    second's header (BOM and all, or in other words: 电表编号, Meter ID) among the rows. The
    registry import's rule (``importing.header_repeats``) with the readings' header aliases."""
    from sibifang.importing import header_repeats

    columns = [c for c in ("meter_id", "ts", "kwh", "register_kwh") if c in raw.columns]
    return header_repeats(raw, columns, _normalise_column_name, rows)


def skipped_lines_zh(raw: pd.DataFrame) -> str | None:
    """The clerk's note on the lines skipped above a readings file's header, or None."""
    layout = raw.attrs.get("header_layout")
    if layout is None or not layout.skipped:
        return None
    return (f"表头在第{layout.lines[0]}行；" + "、".join(f"第{n}行" for n in layout.skipped)
            + "是标题或说明（不是表头，也不是读数），未导入")


def _xlsx_first_rows(path: Path) -> list[tuple[int, list]]:
    """(sheet row, cells) of the first sheet's first rows, empty rows included (their numbers
    are the rows Excel shows). An unreadable workbook: no rows (pandas then says why)."""
    from openpyxl import load_workbook

    from sibifang.importing import HEADER_SEARCH_ROWS

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception:  # noqa: BLE001 - read_excel below reports the file as unreadable
        return []
    try:
        sheet = workbook.worksheets[0]
        sheet.reset_dimensions()  # a stale stored <dimension> would hide rows (see importing)
        return [(n, list(row)) for n, row in
                enumerate(sheet.iter_rows(max_row=HEADER_SEARCH_ROWS, values_only=True), start=1)]
    finally:
        workbook.close()


def _refuse_big5(path: Path) -> None:
    """A CSV whose header is found only when its bytes are read as Big5 (traditional Chinese
    Excel's "CSV"): read as GBK, which decodes nearly any bytes, the header was mojibake and the
    clerk was told the columns were missing, which they are not. Refused as an encoding problem,
    saying which encodings are read. Looked at only once the columns are missing."""
    import csv

    from sibifang.importing import HEADER_SEARCH_ROWS, ImportFileError

    with open(path, "rb") as f:
        head = [f.readline() for _ in range(HEADER_SEARCH_ROWS)]
    for line, data in enumerate(head, start=1):
        try:
            text = data.decode("big5")
        except UnicodeDecodeError:
            continue  # a title in characters Big5 lacks (HKSCS): the header may still follow
        if text.isascii():
            continue  # read the same in any encoding: not what set the header wrong
        cells = max((next(csv.reader([text], delimiter=sep), []) for sep in (",", ";", "\t")), key=len)
        if _names_all_readings_columns({_normalise_column_name(c) for c in cells}):
            raise ImportFileError(
                path.name, f"line {line}: the file is encoded in Big5, not read (UTF-8, UTF-16 with BOM, "
                           "GBK/GB18030 are)",
                message_zh=f"文件 {path.name} 是繁体中文 Big5 编码，按简体中文读出的表头（第{line}行）是乱码，"
                           "无法读取：电表读数文件请用 UTF-8（可带 BOM）、GBK/GB18030 或带 BOM 的 UTF-16 编码保存。"
                           "请在 Excel 中“另存为”“CSV UTF-8（逗号分隔）”后重新提交。",
                line=line)


def _csv_first_rows(path: Path, encoding: str) -> list[tuple[int, list[str]]]:
    """(line, cells) of the file's first lines, each split by the separator that splits it
    most (the separator is settled on the header line, once it is found)."""
    import csv

    from sibifang.importing import HEADER_SEARCH_ROWS

    with open(path, encoding=encoding, errors="replace", newline="") as f:
        lines = [f.readline() for _ in range(HEADER_SEARCH_ROWS)]
    return [(n, max((next(csv.reader([line], delimiter=sep), []) for sep in (",", ";", "\t")), key=len))
            for n, line in enumerate(lines, start=1) if line]


def _refuse_second_header_row(raw: pd.DataFrame, value_col: str, source: str, line: int) -> None:
    """A header of two rows (用电量 merged over 峰 | 谷): the first data row holds labels, no meter
    and no time. Read as one header, the value column would be only the first of the columns
    under the merged cell (the peak without the valley: the use undercounted without a word)."""
    from sibifang.importing import ImportFileError

    if not len(raw):
        return
    first = raw.iloc[0]

    def blank(v) -> bool:
        return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())

    labels = {c: v.strip() for c, v in first.items() if c != EXTRA_FIELDS and isinstance(v, str)
              and v.strip() and not re.fullmatch(r"[+-]?[\d.,]+", v.strip())}
    # The signature of a merged header cell: a column without a name of its own (pandas calls
    # it "Unnamed: 3") whose first cell is a label, in a row without a meter or a time.
    under_merged = any(re.fullmatch(r"unnamed:_?\d+", str(c)) for c in labels)
    if blank(first["meter_id"]) and blank(first["ts"]) and under_merged:
        labels = list(labels.values())
        raise ImportFileError(
            source, f"line {line} is a second header row ({', '.join(labels)}), not a reading",
            message_zh=f"文件 {source} 第{line}行是第二行表头（{'、'.join(labels)}），不是读数：表头只能有一行。"
                       f"请把表头改为一行、每列一个列名（如 meter_id、ts、{value_col}；分列的用电量请先相加为一列）"
                       "后重新提交。",
            line=line)


def _without_blank_rows(raw: pd.DataFrame, lines: np.ndarray | None, first_line: int,
                        parquet: Path | None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``raw`` and its ``lines`` without the rows whose every cell is blank.

    Such a row is not a reading, so it is not a row read at all: the lines Excel writes below
    the data of a sheet that had formatting there (``,,,``), an XLSX row left empty, a blank
    line. Quarantined, each would read "缺少电表编号" to the official, who has nothing to fix,
    and a sheet formatted down to row 1000 would bury the real problems. The registry and
    visit imports skip them the same way (:func:`sibifang.importing.read_table`), so "rows
    read" means the same everywhere, and read = accepted + quarantined still holds. Nothing
    is lost: the row held nothing, and the other rows keep their physical lines (numbering
    counts the blank ones), so the line numbers still match what the clerk sees.

    Blank means empty or only spaces in every column of the file, those not read included:
    a row with anything in it (a note, a total, a stray field beyond the header) is still
    a row, and its reasons say what is wrong with it. ``parquet``: the file, whose other
    columns were not read (:func:`_read_parquet_columns`); they are looked at only for the
    rows blank in the readings columns."""
    blank = _blank_rows(raw)
    if len(blank) and parquet is not None:
        blank = _blank_in_unread_parquet_columns(parquet, raw.columns, blank)
    if not len(blank):
        return raw, lines
    if lines is None:
        lines = np.arange(first_line, first_line + len(raw), dtype=np.int64)
    keep = np.ones(len(raw), dtype=bool)
    keep[blank] = False
    return raw.loc[keep].reset_index(drop=True), lines[keep]


def _blank_rows(frame: pd.DataFrame) -> np.ndarray:
    """Positions of the rows whose cells are all blank. Column by column, each only on the rows
    still blank: a file whose first column is always filled costs one look at that column."""
    rows = np.arange(len(frame))
    for column in frame.columns:
        if not len(rows):
            break
        values = frame[column] if len(rows) == len(frame) else frame[column].iloc[rows]
        rows = rows[_blank_cells(values)]
    return rows


def _blank_cells(values: pd.Series) -> np.ndarray:
    """Mask: cells that hold nothing (missing, empty, or only spaces)."""
    if isinstance(values.dtype, pd.CategoricalDtype):  # Parquet dictionary: judge the categories
        per_category = np.append(_blank_cells(pd.Series(values.cat.categories)), True)  # code -1: missing
        return per_category[values.cat.codes.to_numpy()]
    blank = values.isna().to_numpy(dtype=bool)
    if pd.api.types.is_string_dtype(values.dtype) and not pd.api.types.is_object_dtype(values.dtype):
        # "".isspace() is False: empty cells are the == "" test
        return blank | values.eq("").to_numpy(dtype=bool, na_value=False) \
            | values.str.isspace().to_numpy(dtype=bool, na_value=False)
    if pd.api.types.is_object_dtype(values.dtype):  # mixed Python objects: only text can be blank
        return blank | np.fromiter((isinstance(v, str) and not v.strip() for v in values), dtype=bool,
                                   count=len(values))
    return blank


def _blank_in_unread_parquet_columns(path: Path, read: pd.Index, rows: np.ndarray) -> np.ndarray:
    """Of ``rows`` (blank in the columns read), those blank in the file's other columns too,
    read one column at a time and only at those rows."""
    import pyarrow.parquet as pq

    taken = pa.array(rows)
    for name in pq.read_schema(path).names:
        if not len(rows):
            break
        if name in read:
            continue
        column = pq.read_table(path, columns=[name]).column(0).take(taken)
        rows = rows[_blank_cells(column.to_pandas())]
        taken = pa.array(rows)
    return rows


def _read_parquet_columns(path: Path) -> pd.DataFrame:
    """Only the readings columns (a wide export may carry dozens more), meter ids as a
    dictionary (a categorical: a few distinct ids, not one string per row), Arrow buffers freed
    as they are converted. A 28-million-row file then takes 1 GB to read instead of 2.5 GB."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    wanted = [n for n in names if _normalise_column_name(n) in _COLUMN_LABELS_ZH
              or re.fullmatch(_WH_HEADER_RE, _normalise_column_name(n))]
    ids = [n for n in wanted if _normalise_column_name(n) == "meter_id"]
    table = pq.read_table(path, columns=wanted or None, read_dictionary=ids or None)
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    pa.default_memory_pool().release_unused()  # else the pool keeps the decoded pages
    return frame


def _header_text(name: object) -> str:
    return str(name).strip().lstrip("\ufeff").strip()


def _normalise_column_name(name: object) -> str:
    key = _header_text(name).lower().translate(_TRADITIONAL_HEADER_CHARS)
    key = re.sub(r"\s*[（(\[]\s*([^)）\]]*?)\s*[)）\]]\s*$", r"_\1", key)  # "用电量（kWh）" -> "用电量_kwh"
    key = re.sub(r"[\s\-]+", "_", key).strip("_")  # "Meter ID", "meter-id" -> "meter_id"
    return _COLUMN_ALIASES.get(key, key)


def _wh_header(columns: pd.Index) -> str | None:
    """The header (as written) of a value column in Wh, e.g. ``Energy (Wh)``, else None."""
    for column in columns:
        if re.fullmatch(_WH_HEADER_RE, _normalise_column_name(column)):
            return _header_text(column)
    return None


def _column_clashes(columns: pd.Index) -> dict[str, list[str]]:
    """Readings column -> the headers (as written) that name it, where more than one does."""
    named: dict[str, list[str]] = {}
    for column in columns:
        header, target = _header_text(column), _normalise_column_name(column)
        if target not in _COLUMN_LABELS_ZH:
            # pandas reads a repeated header "kwh,kwh" as "kwh" and "kwh.1": one column twice.
            repeated = re.fullmatch(r"(.+)\.\d+", header)
            if not repeated or _normalise_column_name(repeated.group(1)) not in _COLUMN_LABELS_ZH:
                continue
            header, target = repeated.group(1), _normalise_column_name(repeated.group(1))
        named.setdefault(target, []).append(header)
    return {target: headers for target, headers in named.items() if len(headers) > 1}


def _clash_zh(column: str, headers: list[str]) -> str:
    if len(set(headers)) == 1:
        return f"{headers[0]} 出现了 {len(headers)} 次（{_COLUMN_LABELS_ZH[column]}）"
    return f"{'、'.join(headers)} 都表示{_COLUMN_LABELS_ZH[column]}"


def meter_id_text(values: pd.Series) -> pd.Series:
    """Meter ids as text, with ids that arrived as floating-point numbers written as integers.

    A Parquet integer column with one missing id is stored as float64 (a JSON feed with a null
    id decodes the same way), and 3302810001.0 is the meter 3302810001, not a new meter
    "3302810001.0" that the register does not know. Text columns are returned unchanged.
    """
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(numbers) & (numbers == np.trunc(numbers)) & (np.abs(numbers) < 2.0**63)
        text = values.astype("str")
        if integral.any():
            text = text.astype(object)
            text[integral] = numbers[integral].astype(np.int64).astype(str)
            text = text.astype("str")
        return text
    if pd.api.types.is_object_dtype(values.dtype) and \
            pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        # Mixed Python objects (JSON, XLSX): only the floats among them are rewritten, and the
        # column stays object (Series.map would infer float64 again and round long ids).
        return pd.Series([int(v) if isinstance(v, float) and v.is_integer() else v for v in values],
                         index=values.index, dtype=object)
    return values


CSV_BLOCK_ROWS = 1_000_000


def _read_csv_any_encoding(path: Path):  # -> (DataFrame, np.ndarray | None, HeaderLayout)
    """UTF-8 (BOM or not), UTF-16 with BOM, else GB18030 (superset of GBK: what Excel on a
    Chinese Windows writes); file-level faults become ImportFileError with their line.
    -> (the rows, the physical line each starts on, or None when each is one line: row +
    header line + 1, where the header is (title lines above it skipped: ``locate_readings_header``))."""
    from sibifang.importing import ImportFileError, detect_encoding

    encoding = "utf-8-sig" if _is_plain_utf8(path) else detect_encoding(path.read_bytes(), path.name)
    layout = locate_readings_header(_csv_first_rows(path, encoding))
    skip = layout.lines[0] - 1  # physical lines above the header
    sep = _csv_separator(path, encoding, skip)
    # pandas skips records, not lines: a title typed with Alt+Enter is one record on two lines
    records = _records_in_lines(path, encoding, sep, skip)

    def read(**widths) -> pd.DataFrame:
        # In blocks of rows: parsing a whole 28-million-row file at once needs 3.3 GB for a
        # 1.7 GB frame, in blocks 2.2 GB. Line numbers in parser errors count from the file's start.
        with warnings.catch_warnings():
            # index_col=False cuts a row wider than the columns with only this warning.
            warnings.filterwarnings("error", message="Length of header or names", category=pd.errors.ParserWarning)
            blocks = list(pd.read_csv(
                path, encoding=encoding, dtype=str, keep_default_na=False, na_filter=False,
                skip_blank_lines=False, sep=sep, chunksize=CSV_BLOCK_ROWS, index_col=False, **widths,
            ))
        return pd.concat(blocks, ignore_index=True) if len(blocks) > 1 else blocks[0]

    try:
        try:
            frame = read(header=0, skiprows=records)  # the usual file, as wide as its header: one pass
            return frame, _record_lines(path, encoding, sep, len(frame), skip, records), layout
        except (pd.errors.ParserWarning, pd.errors.ParserError) as e:
            header = _header_cells(path, encoding, sep, skip)
            wide = isinstance(e, pd.errors.ParserWarning) or "fields in line" in str(e)
            extra = max(0, _widest_line(path, encoding, sep) - len(header)) if wide and header else 0
            if not extra:
                raise
        # Rows wider than the header (a trailing comma on every row, or a stray field) get
        # columns of their own, named after the header's, so pandas never takes the first column
        # as the index -- which it does when the first data row is wider, shifting every field
        # one column left -- and never refuses the whole file for one wide row. A row wider than
        # even these columns (quoted newlines, which the line scan cannot see) is then a
        # ParserError with its line, not a silent shift. (header=None and the header line
        # skipped: with header=0, pandas expects the header's width on every line.)
        names = _unique_names(header) + [f"{EXTRA_COLUMN}{i}" for i in range(extra)]
        frame = _mark_extra_fields(read(header=None, skiprows=records + 1, names=names))
        return frame, _record_lines(path, encoding, sep, len(frame), skip, records), layout
    except pd.errors.ParserWarning:
        raise ImportFileError(path.name, "a row has more fields than the header",
                              message_zh=f"文件 {path.name} 有的行列数多于表头，且无法确定是哪一行"
                                         "（可能有跨行的引号），请检查是否多了逗号或引号。") from None
    except pd.errors.EmptyDataError:
        raise ImportFileError(path.name, "empty file: no header",
                              message_zh=f"文件 {path.name} 是空文件（没有表头和数据）。") from None
    except pd.errors.ParserError as e:
        text = str(e)
        wide = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
        quote = re.search(r"EOF inside string starting at row (\d+)", text)
        # pandas counts CSV records ("line 5": the 5th record, the header the 1st; "row 4": the
        # 5th, from 0), which a line break inside a quoted field makes differ from the lines.
        if wide:
            expected, record, seen = (int(g) for g in wide.groups())
            line = _record_start_line(path, encoding, sep, record)
            zh = (f"文件 {path.name} 第{line}行的列数多于表头（表头{expected}列，该行{seen}列），"
                  "请检查该行是否多了逗号。")
            text = f"Expected {expected} fields in line {line}, saw {seen}"
        elif quote:
            line = _record_start_line(path, encoding, sep, int(quote.group(1)) + 1)
            zh = f"文件 {path.name} 第{line}行引号未闭合，请补全或删去这个引号。"
            text = f"EOF inside string starting at line {line}"
        else:
            found = re.search(r"line (\d+)", text)
            line = _record_start_line(path, encoding, sep, int(found.group(1))) if found else None
            where = f"第{line}行" if line else ""
            zh = f"文件 {path.name} {where}无法按 CSV 格式读取，请检查文件内容。"
            if found:
                text = re.sub(r"line \d+", f"line {line}", text, count=1)
        raise ImportFileError(path.name, text.replace("Error tokenizing data. C error: ", "").strip(),
                              message_zh=zh, line=line) from None


def _has_line_breaks_in_fields(path: Path, encoding: str, rows: int, block: int = 1 << 22) -> bool:
    """Can a row span lines? Not when the file has no quote (a line break can only be inside a
    quoted field), nor when it has as many lines as the header and its rows (pandas makes a row
    of every record, blank lines too, and a record is at least a line). Counted on the bytes, a
    block at a time (a quote and a newline byte never occur inside a UTF-8 or GB18030 character)."""
    if encoding.lower().replace("-", "").startswith("utf16"):
        with open(path, encoding=encoding, newline="") as f:
            text = f.read()
        if '"' not in text:
            return False
        lines = text.count("\n") + (not text.endswith("\n"))
        return lines != rows + 1
    with open(path, "rb") as f:
        while data := f.read(block):
            if b'"' in data:
                break
        else:
            return False  # the usual meter export: no quote at all, one look at the bytes
        f.seek(0)
        newlines, last = 0, b"\n"
        while data := f.read(block):
            newlines += data.count(b"\n")
            last = data[-1:]
    return newlines + (last != b"\n") != rows + 1


def _record_lines(path: Path, encoding: str, sep: str, rows: int, skip: int = 0,
                  skip_records: int | None = None) -> np.ndarray | None:
    """The physical line on which each of the ``rows`` data records starts, or None when every
    record is one line (then row ``i`` is on line ``skip + i + 2``; ``skip``: the lines above the
    header, ``skip_records`` the records they hold). Read with the csv module, which splits
    records as pandas does and counts the lines it has consumed (``line_num``), only for a file
    with line breaks inside quoted fields."""
    skip_records = skip if skip_records is None else skip_records
    if not rows or not _has_line_breaks_in_fields(path, encoding, rows + skip):
        return None
    ends = _record_ends(path, encoding, sep)
    if ends is None or len(ends) != skip_records + rows + 1:  # pandas and csv split the file differently
        return None
    return (ends[skip_records:-1] + 1).astype(np.int64)


def _records_in_lines(path: Path, encoding: str, sep: str, lines: int) -> int:
    """How many CSV records the file's first ``lines`` physical lines hold."""
    import csv
    import itertools

    if not lines:
        return 0
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        head = list(itertools.islice(f, lines))
    try:
        return sum(1 for _ in csv.reader(head, delimiter=sep))
    except csv.Error:
        return lines


def _record_ends(path: Path, encoding: str, sep: str, records: int | None = None) -> np.ndarray | None:
    """The physical line on which each record (the header first) ends, for the first ``records``
    (all by default); None when the csv module cannot read that far."""
    import csv
    import itertools

    with open(path, encoding=encoding, errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        try:
            return np.fromiter((reader.line_num for _ in itertools.islice(reader, records)), dtype=np.int64)
        except csv.Error:
            return None


def _record_start_line(path: Path, encoding: str, sep: str, record: int) -> int:
    """The physical line on which CSV record ``record`` (1-based, the header is 1) starts."""
    if record <= 1:
        return record
    ends = _record_ends(path, encoding, sep, record - 1)
    if ends is None or len(ends) < record - 1:
        return record  # what pandas counted: the best there is
    return int(ends[-1]) + 1


# Columns read beyond the header's, and the marker column that carries what they held
# (sibifang.ingest_readings quarantines such rows as ``extra_fields``).
EXTRA_COLUMN = "_extra_field_"
EXTRA_FIELDS = "_extra_fields"


def _header_cells(path: Path, encoding: str, sep: str, skip: int = 0) -> list[str]:
    import csv

    with open(path, encoding=encoding, errors="replace", newline="") as f:
        for _ in range(skip):
            f.readline()
        return next(csv.reader([f.readline()], delimiter=sep), [])


def _unique_names(header: list[str]) -> list[str]:
    """The header as pandas names it: a repeated name gets ``.1``, ``.2`` (so the clash of two
    ``kwh`` columns is still seen), an empty one ``Unnamed: i``."""
    seen: dict[str, int] = {}
    names = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        count = seen.get(name, 0)
        seen[name] = count + 1
        names.append(name if not count else f"{name}.{count}")
    return names


def _widest_line(path: Path, encoding: str, sep: str, block: int = 1 << 22) -> int:
    """An upper bound of the fields on any line: its separators + 1 (a quoted separator only
    makes it larger, which costs an empty column). Counted on the bytes, a block at a time:
    in UTF-8 and GB18030 the bytes of ``,``, ``;``, tab and newline never occur inside a
    multi-byte character."""
    if encoding.lower().replace("-", "").startswith("utf16"):
        with open(path, encoding=encoding, newline="") as f:
            return max((line.count(sep) for line in f), default=0) + 1
    sep_byte, newline = ord(sep), ord("\n")
    widest = carry = 0
    with open(path, "rb") as f:
        while data := f.read(block):
            arr = np.frombuffer(data, dtype=np.uint8)
            seps = np.cumsum(arr == sep_byte, dtype=np.int64)
            ends = np.flatnonzero(arr == newline)
            if len(ends):
                per_line = np.diff(seps[ends], prepend=0)
                per_line[0] += carry
                widest = max(widest, int(per_line.max()))
                carry = int(seps[-1] - seps[ends[-1]])
            else:
                carry += int(seps[-1])
    return max(widest, carry) + 1


def _mark_extra_fields(frame: pd.DataFrame) -> pd.DataFrame:
    """The extra columns folded into one: the non-blank cells beyond the header, joined by
    ``,`` ("" where there are none). Empty trailing fields (a comma at the end of each row,
    what some exporters write) are harmless, as in the registry import."""
    extras = [c for c in frame.columns if str(c).startswith(EXTRA_COLUMN)]
    text = pd.Series("", index=frame.index, dtype="str")
    for column in extras:  # column by column: a file with a comma after every row may be huge
        cell = frame[column].astype("str").str.strip()
        joined = text.where(text.eq(""), text + ",") + cell
        text = text.where(cell.eq(""), joined)
    frame = frame.drop(columns=extras)
    frame[EXTRA_FIELDS] = text
    return frame


def _is_plain_utf8(path: Path, block: int = 1 << 24) -> bool:
    """True when the file decodes as UTF-8 (no UTF-16 BOM), checked block by block: the common
    case then never holds the whole file in memory (a 1 GB export would need 2 GB as bytes and
    text). Anything else goes to detect_encoding, which names the line of a bad byte."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        first = f.read(block)
        if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return False
        try:
            data = first
            while data:
                decoder.decode(data)
                data = f.read(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _csv_separator(path: Path, encoding: str, skip: int = 0) -> str:
    """The field separator, from the header line (after ``skip`` title lines): "," unless the
    header has none and has ";" (what Excel writes where the decimal mark is a comma) or a tab.
    A header is never a number, so the guess cannot be misled by decimal commas in the values."""
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        for _ in range(skip):
            f.readline()
        header = f.readline()
    if "," not in header:
        for sep in (";", "\t"):
            if sep in header:
                return sep
    return ","


# --------------------------------------------------------------------------- file-level checks

# A column is judged as a whole when at least this share of its filled cells share one defect:
# then the file was written that way (a unit, a date order, a decimal mark), and a message about
# the file helps the clerk more than thousands of quarantined rows. Below it, rows are
# quarantined one by one as usual.
FILE_LEVEL_SHARE = 0.5
_EPOCH_RE = r"^\s*(?:1\d{9}|[12]\d{12})(?:\.\d+)?\s*$"  # seconds 2001..2033, or milliseconds
# Excel serial day numbers of 1982-2091 (30000-69999), with a fraction for the time of day.
_EXCEL_SERIAL_RE = r"^\s*[3-6]\d{4}(?:\.\d+)?\s*$"
_DMY_RE = r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})(.*)$"  # 03/04/2024 10:00, 13.01.2024 ...
_DECIMAL_COMMA_RE = r"^\s*[+-]?\d+,\d+\s*$"  # 0,25
# Digits grouped by thousands: 1,234 / 1,234.5 / 1,234,567. "1,234" alone may also be 1.234
# written with a decimal comma; with a decimal point after the groups, or two groups or more,
# the commas can only be thousands separators, and the cleaning reads such a value as a number.
# A first group never starts with 0: "0,005" is a decimal comma, never five thousand(ths).
_GROUPED_RE = r"^\s*[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?\s*$"
THOUSANDS_SEPARATED_RE = r"^\s*[+-]?[1-9]\d{0,2}(?:(?:,\d{3})+\.\d+|(?:,\d{3}){2,}(?:\.\d+)?)\s*$"


def check_readings_text(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """File-level format checks on a frame from :func:`read_readings_file`: -> the frame, with
    day-first or month-first dates rewritten as ISO when the file shows which it is.

    Raises ImportFileError (file, line, field, Chinese message) for timestamps given as Unix
    epoch numbers, dd/mm/yyyy dates whose order the file cannot settle, and decimal commas.
    Each is a way a whole file was exported, so it is judged on the whole column (see
    FILE_LEVEL_SHARE); a stray bad cell stays a per-row ``bad_ts`` / ``bad_kwh``.
    """
    _check_epoch(raw, source)
    _check_excel_serial(raw, source)
    raw = _settle_slash_dates(raw, source)
    return _settle_commas(raw, source)


def _filled_text(values: pd.Series) -> pd.Series:
    text = values.astype("str").where(values.notna(), "").str.strip()
    return text[text != ""]


# The share of a pattern is estimated on this many cells spread over the file; only a file where
# it looks like a file-level defect pays for a scan of every cell.
SNIFF_SAMPLE = 20_000


def _sample(values: pd.Series, windows: int = 10) -> pd.Series:
    """About SNIFF_SAMPLE cells in a few contiguous windows spread over the column. Contiguous
    slices are views; a strided one would copy the whole (Arrow-backed) column first."""
    size = SNIFF_SAMPLE // windows
    if len(values) <= SNIFF_SAMPLE:
        return _filled_text(values)
    starts = np.linspace(0, len(values) - size, windows).astype(np.int64)
    return _filled_text(pd.concat([values.iloc[a:a + size] for a in starts]))


def _looks_like(values: pd.Series, pattern: str) -> bool:
    sample = _sample(values)
    return bool(len(sample)) and sample.str.match(pattern).mean() >= FILE_LEVEL_SHARE


def _first_match(raw: pd.DataFrame, mask: pd.Series, column: str) -> tuple[int | None, str]:
    """(file line, text of ``column``) of the first row in ``mask`` (index labels of ``raw``)."""
    first = mask[mask].index[0]
    line = int(raw.loc[first, "line"]) if "line" in raw.columns else None
    return line, str(raw.loc[first, column]).strip()


def _times_matching(ts: pd.Series, pattern: re.Pattern, as_text) -> pd.Series | None:  # noqa: ANN001
    """Which times read as ``pattern`` (numbers written with ``as_text``), when enough of them do
    to make it the file's way of writing times (``FILE_LEVEL_SHARE``); else None. Real times
    (a datetime column) never match."""
    if pd.api.types.is_numeric_dtype(ts.dtype) and not pd.api.types.is_bool_dtype(ts.dtype):
        text = _filled_text(ts.map(lambda v: as_text(v) if pd.notna(v) else v))
    elif pd.api.types.is_datetime64_any_dtype(ts.dtype) or not _looks_like(ts, pattern):
        return None
    else:
        text = _filled_text(ts)
    matching = text.str.match(pattern)
    return matching if len(text) and matching.mean() >= FILE_LEVEL_SHARE else None


def _check_epoch(raw: pd.DataFrame, source: str) -> None:
    from sibifang.importing import ImportFileError

    epoch = _times_matching(raw["ts"], _EPOCH_RE, lambda v: f"{v:.0f}")
    if epoch is not None:
        line, value = _first_match(raw, epoch, "ts")
        raise ImportFileError(
            source, f"line {line}, field ts: {value!r} is a Unix epoch number, not a local time",
            message_zh=f"文件 {source} 第{line}行 ts（读数时间）列的值 {value} 是 Unix 时间戳（自1970年起的秒数），"
                       "不是当地时间：请转换为 YYYY-MM-DD HH:MM:SS（当地时间，或带时区如 +08:00）后重新提交。",
            line=line)


def _check_excel_serial(raw: pd.DataFrame, source: str) -> None:
    """Times given as Excel serial day numbers (46346.34375 is 2026-11-20 08:15): a time column
    formatted "General" or "Number" in Excel, and so exported. Refused, not converted: the same
    number is another day in a workbook of the 1904 date system (old Mac Excel), which a CSV
    does not say, and a time read four years wrong would be judged as real readings. Row by row,
    each would be a bad_ts whose reason ("应为 YYYY-MM-DD ...") the clerk cannot act on: in
    Excel the cell shows a time."""
    from sibifang.importing import ImportFileError

    serial = _times_matching(raw["ts"], _EXCEL_SERIAL_RE, lambda v: repr(float(v)))
    if serial is not None:
        line, value = _first_match(raw, serial, "ts")
        raise ImportFileError(
            source, f"line {line}, field ts: {value!r} is an Excel serial date number, not a time",
            message_zh=f"文件 {source} 第{line}行 ts（读数时间）列的值 {value} 是 Excel 的日期序号（该列单元格格式为"
                       "“常规”或“数值”时导出的数字），不是时间：请在 Excel 中把该列设置为日期时间格式"
                       "（yyyy-mm-dd hh:mm:ss）后重新导出提交。",
            line=line)


def _settle_slash_dates(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """dd/mm/yyyy or mm/dd/yyyy: the file decides. A day above 12 in the first place (and
    never in the second) makes the whole file day-first, and the other way round; when every
    date could be either (both parts at most 12), the order is a guess and the file is refused."""
    from sibifang.importing import ImportFileError

    if not (pd.api.types.is_object_dtype(raw["ts"].dtype) or pd.api.types.is_string_dtype(raw["ts"].dtype)):
        return raw
    if not _looks_like(raw["ts"], _DMY_RE):
        return raw
    text = _filled_text(raw["ts"])
    parts = text.str.extract(_DMY_RE)
    slashed = parts[0].notna()
    if not len(text) or slashed.mean() < FILE_LEVEL_SHARE:
        return raw
    first, second = parts.loc[slashed, 0].astype(int), parts.loc[slashed, 1].astype(int)
    day_first, month_first = (first > 12).any(), (second > 12).any()
    if day_first == month_first:
        line, value = _first_match(raw, slashed, "ts")
        why = ("既有日在前、也有月在前的日期，顺序不一致" if day_first else
               "日和月都不超过12，无法判断是 日/月/年 还是 月/日/年")
        raise ImportFileError(
            source, f"line {line}, field ts: {value!r}: the order of day and month is ambiguous",
            message_zh=f"文件 {source} 第{line}行 ts（读数时间）列的值 {value}：{why}。"
                       "请把日期改为 YYYY-MM-DD（年-月-日）格式后重新提交。",
            line=line)
    day, month = (parts[0], parts[1]) if day_first else (parts[1], parts[0])
    iso = parts[2] + "-" + month.str.zfill(2) + "-" + day.str.zfill(2) + parts[3]
    raw = raw.copy()
    raw.loc[iso[slashed].index, "ts"] = iso[slashed].to_numpy()
    return raw


def _settle_commas(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Commas in the values. Thousands separators, well formed (``1,234``, ``1,234.50``,
    ``1,234,567``: Excel's number format with separators, exported as shown; ``，`` as an IME
    types it, folded as full-width digits are) are read as numbers: such values are rewritten
    without them. The decimal mark of this country's exports is the point, so ``1,234`` is
    1234 -- unless the file shows decimal commas (``0,25``) through its values: then it is
    written for another locale and refused, ``1,234`` there being 1.234. Any other comma
    (``1,5``, ``12,34`` among values written with a point) is left as it is, and the cleaning
    sets that row aside (``bad_kwh``: file, line and field named, and the reason says how a
    number with a comma is written, as the registry's ``bad_thousands`` does).

    The whole column is looked at (a stray grouped value anywhere in a big file is a number
    too): two substring tests, about 0.3 s for 10 million readings."""
    from sibifang.importing import ImportFileError

    value_col = "kwh" if "kwh" in raw.columns else "register_kwh"
    if value_col not in raw.columns or pd.api.types.is_numeric_dtype(raw[value_col].dtype):
        return raw
    values = raw[value_col]
    if not (pd.api.types.is_string_dtype(values.dtype) and not pd.api.types.is_object_dtype(values.dtype)):
        values = values.astype("str").where(values.notna())
    if not (values.str.contains(",", regex=False).any() or values.str.contains("，", regex=False).any()):
        return raw
    text = _filled_text(raw[value_col]).str.normalize("NFKC")  # １，２３４ -> 1,234
    grouped = text.str.match(_GROUPED_RE)
    ambiguous = grouped & ~text.str.match(THOUSANDS_SEPARATED_RE)  # 1,234: 1234, or 1.234 elsewhere
    comma = text.str.match(_DECIMAL_COMMA_RE) & ~ambiguous
    point = text.str.contains(".", regex=False) | (grouped & ~ambiguous)  # whole numbers say nothing of the mark
    label = f"{value_col}（{'用电量' if value_col == 'kwh' else '累计读数'}）"

    def refuse(mask: pd.Series, what: str, why_zh: str) -> None:
        line, value = _first_match(raw, mask, value_col)
        raise ImportFileError(source, f"line {line}, field {value_col}: {value!r} {what}",
                              message_zh=f"文件 {source} 第{line}行 {label}列的值 {value}{why_zh}", line=line)

    if comma.any() and comma.sum() >= FILE_LEVEL_SHARE * (comma | point).sum():
        refuse(comma, "uses a decimal comma", " 用逗号作小数点：请改用小数点（如 0.25）后重新提交。")
    if not grouped.any():
        return raw
    if value_col == "kwh" and ambiguous.any() and not point.any():
        # Nothing in the file shows its decimal mark: an interval's "1,250" is 1.25 kWh far more
        # often than 1250 (a decimal-comma export; no home uses 1250 kWh in an interval). Most of
        # a column so written refuses the file (read as thousands, it would be stored a thousand
        # times too large); a few such values are set aside row by row. A register's "1,234" is
        # a meter's total, read as thousands: this country's decimal mark is the point.
        if ambiguous.sum() >= FILE_LEVEL_SHARE * len(text):
            refuse(ambiguous, ": a thousands separator or a decimal comma",
                   "：无法判断其中的逗号是千位分隔符还是小数点。"
                   "请去掉千位分隔符（在 Excel 中把该列设置为不带千位分隔符的数值格式）后重新提交。")
        grouped = grouped & ~ambiguous
    raw = raw.copy()
    raw.loc[grouped[grouped].index, value_col] = text[grouped].str.replace(",", "", regex=False).to_numpy()
    return raw
