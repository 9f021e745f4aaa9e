"""Readings rows set aside for what they are: the header of a second export joined into the file
(``copy /b a.csv+b.csv``), a comma that is no thousands separator; and a Big5 file named as an
encoding problem rather than as missing columns."""

from __future__ import annotations

from datetime import datetime

import pytest

from sibifang.importing import ImportFileError
from sibifang.ingest_readings import INFORMATIONAL_CODES, QUARANTINE_CODES, clean_readings
from sibifang.readings_files import read_readings_file

NOW = datetime(2026, 11, 21, 12, 0)


def _clean(path, **kwargs):
    result = clean_readings(read_readings_file(path), source=path.name, now=NOW, **kwargs)
    assert result.counts["read"] == len(result.accepted) + len(result.quarantined)
    assert sum(result.counts[c] for c in QUARANTINE_CODES) == len(result.quarantined)
    return result


def _joined(tmp_path, second_header: str = "\ufeffmeter_id,ts,kwh\n"):
    path = tmp_path / "joined.csv"
    first = "\ufeffmeter_id,ts,kwh\nM1,2026-11-20 08:15,0.25\nM1,2026-11-20 08:30,0.5\n"
    second = second_header + "M1,2026-11-20 08:45,0.75\n"
    path.write_bytes(first.encode("utf-8") + second.encode("utf-8"))
    return path


@pytest.mark.parametrize("second_header", ["\ufeffmeter_id,ts,kwh\n", "电表编号,读数时间,用电量（kWh）\n",
                                           "Meter ID,Timestamp,kWh\n"])
def test_the_header_of_a_joined_export_is_one_row_set_aside_as_that(tmp_path, second_header):
    r = _clean(_joined(tmp_path, second_header), known_meters={"M1"})
    assert r.counts["read"] == 4 and len(r.accepted) == 3
    assert r.quarantined[["line", "field", "code"]].values.tolist() == [[4, "_row", "repeated_header"]]
    assert r.quarantined["reason"].iloc[0].startswith("重复的表头行") and "无需处理" in r.quarantined["reason"].iloc[0]
    assert "repeated_header" in INFORMATIONAL_CODES


def test_a_register_file_joined_repeats_its_header_too(tmp_path):
    path = tmp_path / "reg.csv"
    path.write_text("meter_id,ts,register_kwh\nM1,2026-11-20 08:00,100.0\nM1,2026-11-20 08:15,100.1\n"
                    "meter_id,ts,register_kwh\nM1,2026-11-20 08:30,100.2\n", encoding="utf-8")
    r = _clean(path)
    assert dict(zip(r.quarantined["line"], r.quarantined["code"])) == {2: "register_baseline", 4: "repeated_header"}
    assert r.accepted["kwh"].round(3).tolist() == [0.1, 0.1]


def test_a_row_naming_one_column_is_still_a_reading_judged_as_one(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,kwh\nM1,2026-11-20 08:15,0.25\nM1,读数时间,0.5\nmeter_id,2026-11-20 08:45,kwh\n",
                    encoding="utf-8")
    r = _clean(path)
    assert dict(zip(r.quarantined["line"], r.quarantined["code"])) == {3: "bad_ts", 4: "bad_kwh"}


def test_a_joined_file_is_ingested_with_its_repeated_header_recorded(tmp_path, database_url, app_env):
    from tasks.ingest_readings import ingest_frame
    from tests.test_inbox_rejects import quarantined, seed

    seed(database_url)
    path = _joined(tmp_path)
    result = ingest_frame(read_readings_file(path), source=path.name, batch_id="joined", database_url=database_url,
                          now=NOW)
    assert (result["read"], result["accepted"], result["quarantined"]) == (4, 3, 1)
    assert [(q.line, q.code) for q in quarantined(database_url, "ingest_readings")] == [(4, "repeated_header")]


@pytest.mark.parametrize("bad", ["1,5", "12,34", "1,2345", "1,23,456"])
def test_a_malformed_thousands_separator_says_how_a_comma_is_written(tmp_path, bad):
    path = tmp_path / "r.csv"
    path.write_text(f'meter_id,ts,kwh\nM1,2026-11-20 08:15,"1,234.5"\nM1,2026-11-20 08:30,0.25\n'
                    f'M1,2026-11-20 08:45,"{bad}"\nM1,2026-11-20 08:45,abc\nM1,2026-11-20 09:00,0.5\n',
                    encoding="utf-8")
    q = _clean(path).quarantined.set_index("line")
    assert q.loc[4, ["field", "code", "value"]].tolist() == ["kwh", "bad_kwh", bad]
    assert "千位分隔" in q.loc[4, "reason"] and "1,234" in q.loc[4, "reason"] and "1.5" in q.loc[4, "reason"]
    assert q.loc[5, "reason"] == "用电量不是有效数字"  # no comma: the general reason


def test_a_malformed_separator_in_a_register_names_the_register(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('meter_id,ts,register_kwh\nM1,2026-11-20 08:00,100.0\nM1,2026-11-20 08:15,"100,1"\n'
                    'M1,2026-11-20 08:30,100.2\n', encoding="utf-8")
    q = _clean(path).quarantined.set_index("line")
    assert q.loc[3, "field"] == "register_kwh" and q.loc[3, "reason"].startswith("累计读数中的逗号不是千位分隔符")


def test_a_big5_file_is_refused_as_an_encoding_problem(tmp_path):
    """Traditional Chinese Excel writes Big5: read as GBK its header was mojibake, and the clerk
    was told the columns were missing."""
    path = tmp_path / "big5.csv"
    path.write_bytes("電表編號,讀數時間,用電量\nM1,2026-11-20 08:15,0.25\n".encode("big5"))
    with pytest.raises(ImportFileError) as e:
        read_readings_file(path)
    zh = e.value.message_zh
    assert "Big5" in zh and "编码" in zh and "UTF-8" in zh and "GBK" in zh and "缺少必需的列" not in zh
    assert e.value.line == 1


def test_traditional_chinese_headers_in_utf8_are_read(tmp_path):
    """What the Big5 message asks for: the same file saved as UTF-8 is read."""
    path = tmp_path / "trad.csv"
    path.write_text("電表編號,讀數時間,用電量（kWh）\nM1,2026-11-20 08:15,0.25\n", encoding="utf-8")
    assert read_readings_file(path)[["meter_id", "kwh"]].values.tolist() == [["M1", "0.25"]]


def test_a_gbk_file_with_wrong_headers_still_reports_missing_columns(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("编号,时刻,电量\nM1,2026-11-20 08:15,0.25\n".encode("gbk"))
    with pytest.raises(ImportFileError) as e:
        read_readings_file(path)
    assert "缺少必需的列" in e.value.message_zh
