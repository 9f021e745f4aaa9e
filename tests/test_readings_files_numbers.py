"""Numbers written with thousands separators, in readings files and in the registry's numeric
fields: well-formed grouping is a number; any other comma is a row set aside with its reason."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from sibifang.importing import ImportFileError, read_table, render_import_errors, validate_import
from sibifang.ingest_readings import clean_readings
from sibifang.readings_files import read_readings_file

NOW = datetime(2026, 11, 21, 12, 0)


def _clean(path):
    result = clean_readings(read_readings_file(path), source=path.name, now=NOW)
    assert result.counts["read"] == len(result.accepted) + len(result.quarantined)
    return result


def test_grouped_register_readings_without_a_decimal_point_are_numbers(tmp_path):
    """A county office's export of whole kWh with separators: every value "1,234"-like. It was
    refused as "comma or decimal mark?"; this country's decimal mark is the point."""
    path = tmp_path / "reg.csv"
    path.write_text('meter_id,ts,register_kwh\nM1,2026-11-20 08:00,"1,234"\nM1,2026-11-20 08:15,"1,235"\n'
                    'M1,2026-11-20 08:30,"１，２３６"\nM1,2026-11-20 08:45,"1,237"\n', encoding="utf-8")
    result = _clean(path)
    assert result.accepted["kwh"].tolist() == [1.0, 1.0, 1.0]
    assert result.quarantined["code"].tolist() == ["register_baseline"]  # the first: a baseline


def test_text_numbers_in_an_xlsx_with_separators_are_read(tmp_path):
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["电表编号", "读数时间", "用电量"])
    ws.append(["M1", "2026-11-20 08:15", "1,234"])  # too much for 15 minutes: a number all the same
    ws.append(["M1", "2026-11-20 08:30", "0.25"])
    ws.append(["M1", "2026-11-20 08:45", "1,5"])  # a stray comma among values with a point: that row
    ws.append(["M1", "2026-11-20 09:00", "0.5"])
    wb.save(tmp_path / "r.xlsx")
    result = _clean(tmp_path / "r.xlsx")
    assert dict(zip(result.quarantined["line"], result.quarantined["code"])) == {2: "implausible_kwh", 4: "bad_kwh"}
    assert result.accepted["kwh"].tolist() == [0.25, 0.5]


@pytest.mark.parametrize("bad", ["1,5", "12,34", "1,2345", "1,23,456"])
def test_a_malformed_comma_is_a_row_set_aside_naming_file_line_and_field(tmp_path, bad):
    path = tmp_path / "r.csv"
    path.write_text(f'meter_id,ts,kwh\nM1,2026-11-20 08:15,"1,234.5"\nM1,2026-11-20 08:30,0.25\n'
                    f'M1,2026-11-20 08:45,"{bad}"\nM1,2026-11-20 09:00,0.5\n', encoding="utf-8")
    q = _clean(path).quarantined
    row = q[q["code"] == "bad_kwh"]
    assert row[["source_file", "line", "field"]].values.tolist() == [["r.csv", 4, "kwh"]]
    assert row["reason"].iloc[0].startswith("用电量中的逗号不是千位分隔符")  # what a comma may mean here


def test_a_file_of_decimal_commas_is_still_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('meter_id,ts,kwh\nM1,2026-11-20 08:00,"0,25"\nM1,2026-11-20 09:00,"1,250"\n', encoding="utf-8")
    with pytest.raises(ImportFileError, match="decimal comma"):
        read_readings_file(path)


def test_registry_numbers_with_thousands_separators(tmp_path):
    path = tmp_path / "meters.csv"
    path.write_text('meter_id,household_id,interval_minutes\nM1,H1,"1,440"\nM2,H1,"１，４４０"\nM3,H1,"1,5"\n'
                    'M4,H1,"12,34"\nM5,H1,15\n', encoding="utf-8")
    result = validate_import("meters", read_table(path), source=path.name, now=datetime(2026, 12, 1))
    assert result.read == len(result.accepted) + result.quarantined_lines == 5
    assert dict(zip(result.accepted["meter_id"], result.accepted["interval_minutes"])) == \
        {"M1": 1440, "M2": 1440, "M5": 15}
    q = result.quarantined
    assert q[["line", "field", "code"]].values.tolist() == [[4, "interval_minutes", "bad_thousands"],
                                                            [5, "interval_minutes", "bad_thousands"]]
    report = render_import_errors(result, "txt")
    assert "meters.csv" in report and "采集间隔(分钟)中的逗号不是千位分隔符" in report


def test_registry_float_with_separators(tmp_path):
    frame = pd.DataFrame({"meter_id": ["M1", "M2", "M3"], "ts": ["2026-11-20 08:00"] * 3,
                          "kwh": ["1,234.5", "1,2", "0.5"]}, dtype="str")
    frame.to_csv(tmp_path / "readings.csv", index=False)
    result = validate_import("readings", read_table(tmp_path / "readings.csv"), source="readings.csv",
                             now=datetime(2026, 12, 1))
    # 1,234.5 is read as 1234.5 (too much for one reading: out of range, not "not a number")
    assert result.quarantined[["line", "field", "code"]].values.tolist() == [
        [2, "kwh", "out_of_range"], [3, "kwh", "bad_thousands"]]
    assert result.accepted["kwh"].tolist() == [0.5]


@pytest.mark.parametrize("values", [["0,005", "0,008", "0,012", "0,004"], ["1,250", "2,375", "1,125", "3,500"]])
def test_interval_kwh_written_with_decimal_commas_refuses_the_file(tmp_path, values):
    """Read as thousands, "0,005" (or "1,250" with nothing in the file showing the decimal mark)
    stored readings a thousand times too large, some of them accepted (review rv1); the file is
    refused, naming the line, as before thousands separators were read."""
    from sibifang.importing import ImportFileError

    rows = "".join(f'M1,2026-11-20 0{8 + i // 4}:{15 * (i % 4):02d},"{v}"\n' for i, v in enumerate(values))
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,kwh\n" + rows, encoding="utf-8")
    with pytest.raises(ImportFileError) as refused:
        _clean(path)
    assert "第2行" in refused.value.message_zh and "逗号" in refused.value.message_zh
