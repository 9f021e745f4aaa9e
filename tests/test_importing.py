"""Registry import: malformed files → every broken row reported by line and field; counts add up."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import suites as S
from schemas.validation import DataContractError
from sibifang import checks as C
from sibifang.importing import (
    FIELD_LABELS_ZH,
    FIELDS,
    KINDS,
    ImportResult,
    read_table,
    render_import_errors,
    validate_import,
)

DATA = Path(__file__).parent / "data"
KNOWN = {"grids": {"G001", "G002"}, "villages": {"V01"}, "townships": {"T01"},
         "households": {"H001", "H002"}, "cadres": {"K001", "K002"}, "meters": {"M001"}}


def problems(result: ImportResult) -> set[tuple[int, str, str]]:
    return {(int(r.line), r.field, r.code) for r in result.quarantined.itertuples()}


def assert_counts_add_up(result: ImportResult) -> None:
    assert result.read == len(result.accepted) + result.quarantined_lines
    assert not set(result.accepted["_line"]) & set(result.quarantined["line"])


def personal_values(raw: pd.DataFrame) -> list[str]:
    values = []
    for column in ("id_number", "phone", "head_name", "name", "address"):
        if column in raw:
            values += [v for v in raw[column].dropna().tolist() if len(v) >= 5]
    return values


def assert_no_personal_values(result: ImportResult, raw: pd.DataFrame) -> None:
    texts = [result.quarantined.to_csv(), result.warnings.to_csv(), repr(result.validation),
             render_import_errors(result, "txt"), render_import_errors(result, "html")]
    for value in personal_values(raw):
        for text in texts:
            assert value not in text


# ------------------------------------------------------------------ malformed files
def test_broken_utf8_csv_reports_each_row_by_line_and_field():
    raw = read_table(DATA / "households_broken.csv")
    result = validate_import("households", raw, source="households_broken.csv", known=KNOWN)
    assert problems(result) == {
        (3, "id_number", "id_number_check_digit"),
        (4, "grid_id", "unknown_grid"),
        (5, "phone", "bad_phone"),
        (6, "head_name", "required"),
        (7, "household_id", "duplicate_key"),
        (8, "id_number", "id_number_birth_date"),
        (8, "away_from", "bad_date"),
        (9, "away_until", "date_order"),  # a quoted cell spans lines 9-10
        (11, "categories", "unknown_list_item"),
        (11, "elderly_living_alone", "bad_bool"),
    }
    assert result.read == 10 and len(result.accepted) == 2 and result.quarantined_lines == 8
    # The first H001 is kept, the later one quarantined; line 13 follows a blank line.
    assert result.accepted["_line"].tolist() == [2, 13]
    assert_counts_add_up(result)
    assert_no_personal_values(result, raw)
    assert list(result.quarantined.columns) == ["line", "field", "code", "reason"]
    assert all(r for r in result.quarantined["reason"])


def test_gbk_csv_with_chinese_labels():
    raw = read_table(DATA / "households_gbk.csv")
    assert raw.loc[0, "head_name"] == "王秀英"
    result = validate_import("households", raw, source="households_gbk.csv", known=KNOWN)
    assert problems(result) == {(3, "id_number", "id_number_check_digit"), (4, "grid_id", "required")}
    accepted = result.accepted.iloc[0]
    assert accepted["categories"] == ["empty_nest"]
    assert accepted["elderly_living_alone"] is True or bool(accepted["elderly_living_alone"])
    assert_counts_add_up(result)
    assert_no_personal_values(result, raw)


def test_xlsx_first_sheet_with_numbers_and_labels():
    raw = read_table(DATA / "cadres_broken.xlsx")
    assert raw["_line"].tolist() == [2, 3, 4, 5, 6, 7, 8]  # the empty row 9 is not data
    assert raw.loc[0, "phone"] == "13805741001"  # typed as a number in Excel
    result = validate_import("cadres", raw, source="cadres_broken.xlsx", known=KNOWN)
    assert problems(result) == {
        (4, "phone", "bad_phone"),
        (5, "role", "unknown_code"),
        (6, "alert_address", "bad_alert_address"),
        (7, "alert_address", "alert_address_missing"),
        (7, "grassroots_weekday", "weekday_missing"),
        (8, "capacity", "out_of_range"),
        (8, "grid_ids", "unknown_grid"),
    }
    accepted = result.accepted.set_index("cadre_id")
    assert accepted.loc["K001", "role"] == "grid_worker" and accepted.loc["K002", "role"] == "executive_member"
    assert accepted.loc["K002", "grid_ids"] == ["G001", "G002"]
    assert accepted.loc["K002", "on_leave_from"] == pd.Timestamp("2026-01-05")
    assert bool(accepted.loc["K002", "four_plus_one"]) and accepted.loc["K002", "grassroots_weekday"] == 2
    # A reminder is only for rows that were accepted (line 8 is quarantined anyway).
    assert result.warnings.empty
    assert_counts_add_up(result)
    assert_no_personal_values(result, raw)


def test_clean_file_has_nothing_quarantined_and_is_typed():
    raw = read_table(DATA / "households_clean.csv")  # UTF-8 with BOM
    assert raw.columns[0] == "household_id"
    # An ID number whose check character is a lower-case x (the checksum is valid): stored as X.
    raw.loc[raw["household_id"] == "H103", "id_number"] = "33028119800101102x"
    result = validate_import("households", raw, source="households_clean.csv", known=KNOWN)
    assert result.quarantined.empty and result.quarantined_lines == 0
    assert len(result.accepted) == result.read == 3
    acc = result.accepted.set_index("household_id")
    assert acc.loc["H102", "categories"] == ["left_behind", "hardship"]
    assert acc["elderly_living_alone"].dtype == bool and acc["consent"].dtype == bool
    assert acc.loc["H102", "away_from"] == pd.Timestamp("2026-01-10")
    assert pd.api.types.is_datetime64_any_dtype(acc["away_until"])
    assert acc.loc["H103", "id_number"] == "33028119800101102X"
    assert acc["members"].dtype == "Int64"


def test_missing_columns_name_the_file_and_columns_in_both_languages():
    raw = read_table(DATA / "areas_missing_columns.csv")
    with pytest.raises(DataContractError) as err:
        validate_import("areas", raw, source="areas_missing_columns.csv")
    message = str(err.value)
    assert "areas_missing_columns.csv" in message and "township_id" in message and "village_kind" in message
    assert "缺少必需的列" in err.value.message_zh and "乡镇街道编号" in err.value.message_zh


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "meters.csv"
    path.write_text("meter_id,household_id,interval_minutes,installed_at\n\n", encoding="utf-8")
    with pytest.raises(DataContractError, match="no data rows"):
        validate_import("meters", read_table(path), source="meters.csv", known=KNOWN)


def test_broken_suite_surfaces_the_cause_in_import(monkeypatch):
    def broken_meters_suite():
        spec = S.meters_suite()
        return S.SuiteSpec(spec.name, spec.expectations + (S.not_null("meter_idd"),))

    monkeypatch.setitem(S.SUITES, "meters", broken_meters_suite)
    raw = pd.DataFrame({"meter_id": ["M1"], "household_id": ["H001"], "interval_minutes": ["15"]}, dtype="str")
    with pytest.raises(DataContractError, match="meter_idd.*does not exist"):
        validate_import("meters", raw, source="meters.csv", known=KNOWN)


def test_visits_labels_future_dates_and_references(tmp_path):
    future = (dt.datetime.now(C.LOCAL_TZ) + dt.timedelta(days=2)).strftime("%Y-%m-%d %H:%M")
    path = tmp_path / "visits.csv"
    path.write_text(
        "visit_id,plan_id,household_id,cadre_id,visited_at,mode,steps,demand_category,follow_up_needed\n"
        "V1,,H001,K001,2026-01-05 09:30,入户,亮明身份访;作出承诺;倾听诉求,家庭教育,是\n"  # 2 clean
        f"V2,P9,H001,K001,{future},电话,identify,,0\n"  # 3 future
        "V3,,H404,K001,2026-01-05 10:00,wechat,listen,,0\n"  # 4 unknown household
        "V4,,H002,K999,2026-01-05 10:00,飞鸽,listen,跳舞,0\n"  # 5 unknown cadre, mode, demand
        "V5,,H002,K002,yesterday,phone,listen;唱歌,,1\n",  # 6 bad datetime, unknown step
        encoding="utf-8")
    result = validate_import("visits", read_table(path), source="visits.csv", known=KNOWN)
    assert problems(result) == {
        (3, "visited_at", "future_date"),
        (4, "household_id", "unknown_household"),
        (5, "cadre_id", "unknown_cadre"), (5, "mode", "unknown_code"), (5, "demand_category", "unknown_code"),
        (6, "visited_at", "bad_datetime"), (6, "steps", "unknown_list_item"),
    }
    v1 = result.accepted.iloc[0]
    assert v1["mode"] == "visit" and v1["steps"] == ["identify", "commit", "listen"]
    assert v1["demand_category"] == "family_education" and bool(v1["follow_up_needed"])
    assert v1["visited_at"] == pd.Timestamp("2026-01-05 09:30")  # naive local time, as stored
    assert_counts_add_up(result)


def test_without_known_ids_references_are_not_checked():
    raw = read_table(DATA / "households_broken.csv")
    result = validate_import("households", raw, source="households_broken.csv", known=None)
    assert (4, "grid_id", "unknown_grid") not in problems(result)
    assert_counts_add_up(result)


def test_row_wider_than_header_is_quarantined(tmp_path):
    path = tmp_path / "rooms.csv"
    path.write_text("room_id,name,township_id,mediator_ids\nR1,木兰调解室,T01,K001\nR2,婚姻家庭调解工作室,T01,K001,K002\n",
                    encoding="utf-8")
    result = validate_import("mediation_rooms", read_table(path), source="rooms.csv", known=KNOWN)
    assert problems(result) == {(3, "_row", "extra_fields")}


def test_areas_hierarchy_must_be_consistent(tmp_path):
    path = tmp_path / "areas.csv"
    header = ("grid_id,grid_name,village_id,village_name,village_kind,township_id,township_name,"
              "district_id,district_name,city_id,city_name")
    path.write_text(header + "\n"
                    "G1,一网格,V1,示例村,村,T1,示例镇,D1,海曙区,C1,宁波市\n"
                    "G2,二网格,V1,示例村,社区,T2,另一镇,D1,海曙区,C1,宁波市\n"  # V1 under another township
                    "G3,三网格,V2,示例社区,居委,T1,示例镇,D1,海曙区,C1,宁波市\n",  # unknown village kind
                    encoding="utf-8")
    result = validate_import("areas", read_table(path), source="areas.csv")
    assert problems(result) == {(3, "township_id", "conflicting_parent"), (4, "village_kind", "unknown_code")}
    assert result.accepted["village_kind"].tolist() == ["村"]


def test_readings_small_file(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text("meter_id,ts,kwh\nM001,2026-01-01 00:15,0.12\nM001,2026-01-01 00:30,-1\nM404,2026-01-01 00:30,0.1\n"
                    "M001,2026-01-01 00:45,\n", encoding="utf-8")
    result = validate_import("readings", read_table(path), source="readings.csv", known=KNOWN)
    assert problems(result) == {(3, "kwh", "out_of_range"), (4, "meter_id", "unknown_meter"), (5, "kwh", "required")}
    duplicated = path.read_text(encoding="utf-8") + "M001,2026-01-01 00:15,0.2\n"
    path.write_text(duplicated, encoding="utf-8")
    result = validate_import("readings", read_table(path), source="readings.csv", known=KNOWN)
    assert (6, "ts", "duplicate_key") in problems(result)


# ------------------------------------------------------------------ the clerk's report
def test_chinese_report_lists_line_field_reason_and_counts():
    raw = read_table(DATA / "households_broken.csv")
    result = validate_import("households", raw, source="households_broken.csv", known=KNOWN)
    fixed = lambda: dt.datetime(2026, 1, 5, 9, 0)  # noqa: E731
    text = render_import_errors(result, "txt", now=fixed)
    assert "households_broken.csv" in text and "家庭档案" in text
    assert "行号" in text and "字段" in text and "原因" in text
    assert "读取 10 行，接受 2 行，隔离 8 行" in text
    assert "3\t身份证号（id_number）\t身份证号校验位错误" in text
    assert "6\t户主姓名（head_name）\t户主姓名不能为空" in text
    html = render_import_errors(result, "html", now=fixed)
    assert "<th>行号</th><th>字段</th><th>原因</th>" in html and "<td>7</td>" in html
    clean = validate_import("households", read_table(DATA / "households_clean.csv"), source="c.csv", known=KNOWN)
    assert "没有发现错误" in render_import_errors(clean, "txt")


def test_html_report_escapes_the_file_name():
    raw = read_table(DATA / "households_gbk.csv")
    result = validate_import("households", raw, source="<script>.csv", known=KNOWN)
    assert "<script>.csv" not in render_import_errors(result, "html")


def test_every_kind_has_fields_and_a_suite():
    assert set(FIELDS) == set(KINDS)
    for kind in KINDS:
        suite = S.build_suite_spec(kind)
        # Optional expectations may check a column a stage adds (the ingest's per-reading bound
        # kwh_max): skipped where a frame lacks it. Every other column is a field of the kind.
        columns = {c for e in suite.expectations if not e.if_present for c in e.columns}
        assert columns <= {f.name for f in FIELDS[kind]}, kind


# ------------------------------------------------------------------ property: nothing is silently dropped
cells = st.one_of(st.none(), st.sampled_from(["", "M001", "M 1", "H001", "H404", "15", "x", "0", "2026-01-05",
                                              "2099-01-01", "2026-02-30", "H001;H002"]))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(cells, cells, cells, cells), min_size=1, max_size=12))
def test_every_row_is_accepted_or_quarantined(rows):
    raw = pd.DataFrame(rows, columns=["meter_id", "household_id", "interval_minutes", "installed_at"], dtype="str")
    result = validate_import("meters", raw, source="meters.csv", known=KNOWN)
    assert_counts_add_up(result)
    assert result.accepted["meter_id"].is_unique
    assert result.accepted["household_id"].isin(KNOWN["households"]).all()


def test_a_mobile_form_json_drop_is_read_like_a_sheet(tmp_path):
    """The mobile form posts visit records as JSON; steps may be a list."""
    import json

    from sibifang.importing import read_table, validate_import

    p = tmp_path / "form.json"
    p.write_text(json.dumps({"records": [
        {"visit_id": "M1", "household_id": "H1", "cadre_id": "C1", "visited_at": "2026-11-20 10:00",
         "mode": "visit", "steps": ["亮明身份", "作出承诺", "倾听诉求", "分类引领", "精准服务"],
         "family_situation": "家庭和睦", "demand_category": "家庭教育", "follow_up_needed": True},
        {"visit_id": "M2", "household_id": "H9", "cadre_id": "C1", "visited_at": "2026-11-20 11:00",
         "mode": "visit", "steps": ["identify"]},
    ]}, ensure_ascii=False), encoding="utf-8")
    raw = read_table(p)
    assert list(raw["_line"]) == [2, 3]
    result = validate_import("visits", raw, source="form.json", known={"households": {"H1"}, "cadres": {"C1"}})
    assert result.read == 2 and len(result.accepted) == 1 and result.quarantined_lines == 1
    assert result.accepted.iloc[0]["steps"] == ["identify", "commit", "listen", "guide", "serve"]
    assert result.accepted.iloc[0]["demand_category"] == "family_education"
    assert set(result.quarantined["field"]) == {"household_id"}


def test_visit_rules_across_records(tmp_path):
    """A visit's cadre must cover the family's grid; a visit cannot precede its plan."""
    import datetime as dt

    from sibifang.importing import read_table, validate_import

    p = tmp_path / "visits.csv"
    p.write_text(
        "visit_id,plan_id,household_id,cadre_id,visited_at,mode,steps\n"
        "V1,P1,H1,C1,2026-11-20 10:00,visit,identify\n"   # fine
        "V2,,H2,C1,2026-11-20 11:00,visit,identify\n"     # C1 does not cover H2's grid
        "V3,P1,H1,C1,2026-11-10 10:00,visit,identify\n"   # before the plan was made
        "V4,P9,H1,C1,2026-11-20 12:00,visit,identify\n",  # no such plan
        encoding="utf-8")
    known = {"households": {"H1", "H2"}, "cadres": {"C1"}, "cadre_grids": {"C1": {"G1"}},
             "household_grid": {"H1": "G1", "H2": "G2"}, "plans": {"P1": dt.date(2026, 11, 15)}}
    result = validate_import("visits", read_table(p), source="visits.csv", known=known,
                             now=dt.datetime(2026, 11, 21))
    assert list(result.accepted.visit_id) == ["V1"]
    got = {(int(r.line), r.field, r.code) for r in result.quarantined.itertuples()}
    assert got == {(3, "cadre_id", "cadre_not_covering"), (4, "visited_at", "before_plan"),
                   (5, "plan_id", "unknown_plan")}
    assert result.read == len(result.accepted) + result.quarantined_lines


# ------------------------------------------------------------------ review fixes: malformed input
HOUSEHOLD_HEADER = "household_id,head_name,id_number,phone,address,grid_id,categories"
GOOD_ID, OTHER_ID = "33020319431206966X", "33020319530402946X"


def household_file(tmp_path, *rows: str, header: str = HOUSEHOLD_HEADER, name: str = "h.csv",
                   encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


def test_fixture_ids_are_valid():
    assert C.valid_resident_id(pd.Series([GOOD_ID, OTHER_ID])).all()


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "0" <= c <= "9" or c == "X" else c for c in text)


def test_full_width_digits_in_id_number_and_phone_are_folded_not_a_crash(tmp_path):
    bad_check = GOOD_ID[:-1] + "1"
    path = household_file(
        tmp_path,
        f"H1,陈福,{_full_width(GOOD_ID)},158{_full_width('22736369')},万堤村,G001,空巢老人",
        f"H2,唐翠,{_full_width(bad_check)},15822736369,万堤村,G001,空巢老人",
        f"H3,王芳,{OTHER_ID},{'١٥٨٢٢٧٣٦٣٦٩'},万堤村,G001,空巢老人")  # Arabic-Indic digits: no NFKC form
    result = validate_import("households", read_table(path), source="h.csv", known=KNOWN)
    assert problems(result) == {(3, "id_number", "id_number_check_digit"), (4, "phone", "bad_phone")}
    row = result.accepted.iloc[0]
    assert row["id_number"] == GOOD_ID and row["phone"] == "15822736369"  # stored as ASCII digits
    # The checks themselves: [0-9], not \d (which matches any Unicode digit).
    assert C.resident_id_problems(pd.Series(["١" * 18])).tolist() == ["id_number_format"]
    assert not C.valid_phone(pd.Series(["١٥٨٢٢٧٣٦٣٦٩"])).any()
    assert C.valid_phone(pd.Series([f"158{_full_width('22736369')}"])).all()


def test_full_width_digits_in_numbers_and_codes(tmp_path):
    path = household_file(tmp_path, f"Ｈ1,陈福,{GOOD_ID},15822736369,万堤村,Ｇ００１,空巢老人,{_full_width('2')}",
                          header=HOUSEHOLD_HEADER + ",members")
    result = validate_import("households", read_table(path), source="h.csv", known=KNOWN)
    assert result.quarantined.empty
    row = result.accepted.iloc[0]
    assert (row["household_id"], row["grid_id"], int(row["members"])) == ("H1", "G001", 2)


def test_xlsx_with_a_stale_dimension_loses_no_row(tmp_path):
    import re
    import zipfile

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(HOUSEHOLD_HEADER.split(","))
    for i in range(1, 6):
        ws.append([f"H{i}", "陈福", GOOD_ID, "15822736369", "万堤村", "G001", "空巢老人"])
    good = tmp_path / "good.xlsx"
    wb.save(good)
    stale = tmp_path / "stale.xlsx"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(stale, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data, n = re.subn(rb'<dimension ref="[^"]+"\s*/>', b'<dimension ref="A1:G3"/>', data)
                assert n == 1
            zout.writestr(item, data)
    raw = read_table(stale)
    assert raw["_line"].tolist() == [2, 3, 4, 5, 6]
    result = validate_import("households", raw, source="stale.xlsx", known=KNOWN)
    assert result.read == 5 and result.quarantined_lines == 5 - len(result.accepted)  # duplicates of one ID


def test_chinese_headers_are_read_and_unknown_columns_are_reported(tmp_path):
    header = HOUSEHOLD_HEADER + ",独居老人,知情同意（consent）,备用列"
    path = household_file(tmp_path, f"H1,陈福,{GOOD_ID},15822736369,万堤村,G001,空巢老人,是,否,x", header=header)
    result = validate_import("households", read_table(path), source="h.csv", known=KNOWN)
    row = result.accepted.iloc[0]
    assert bool(row["elderly_living_alone"]) is True and bool(row["consent"]) is False
    assert result.unknown_columns == ["备用列"]
    text = render_import_errors(result, "txt")
    assert "备用列" in text and "未导入" in text
    assert "备用列" in render_import_errors(result, "html")
    # A whole header in Chinese, as the report prints the columns.
    zh = ",".join(FIELD_LABELS_ZH[c] for c in HOUSEHOLD_HEADER.split(","))
    path = household_file(tmp_path, f"H1,陈福,{GOOD_ID},15822736369,万堤村,G001,空巢老人", header=zh, name="zh.csv")
    result = validate_import("households", read_table(path), source="zh.csv", known=KNOWN)
    assert len(result.accepted) == 1 and result.unknown_columns == []
    # The label of a column that is also present under its own name is not silently merged.
    header = HOUSEHOLD_HEADER + ",elderly_living_alone,独居老人"
    path = household_file(tmp_path, f"H1,陈福,{GOOD_ID},15822736369,万堤村,G001,空巢老人,1,0", header=header,
                          name="both.csv")
    result = validate_import("households", read_table(path), source="both.csv", known=KNOWN)
    assert result.unknown_columns == ["独居老人"] and bool(result.accepted.iloc[0]["elderly_living_alone"])


def test_an_unclosed_quote_quarantines_its_line_and_keeps_the_following_rows(tmp_path):
    path = household_file(
        tmp_path,
        f'H1,陈福,{GOOD_ID},15822736369,"万堤村,G001,空巢老人',
        f"H2,唐翠,{OTHER_ID},15822736369,万堤村,G001,空巢老人",
        f"H3,王芳,{GOOD_ID},15822736369,万堤村,G001,空巢老人")
    result = validate_import("households", read_table(path), source="h.csv", known=KNOWN)
    assert result.read == 3 == len(path.read_text(encoding="utf-8").splitlines()) - 1
    assert problems(result) == {(2, "_row", "unclosed_quote")}
    assert result.quarantined.iloc[0]["reason"].startswith("第2行引号未闭合")
    assert result.accepted["household_id"].tolist() == ["H2", "H3"]
    assert_counts_add_up(result)
    # A stray quote further down closes it: the records in between are not swallowed either.
    path = household_file(
        tmp_path,
        f'H1,陈福,{GOOD_ID},15822736369,"万堤村,G001,空巢老人',
        f"H2,唐翠,{OTHER_ID},15822736369,万堤村,G001,空巢老人",
        f'H3,王芳,{GOOD_ID},15822736369,万堤村",G001,空巢老人',
        f"H4,李梅,{OTHER_ID},15822736369,万堤村,G001,空巢老人", name="stray.csv")
    result = validate_import("households", read_table(path), source="stray.csv", known=KNOWN)
    assert result.read == 4 and (2, "_row", "unclosed_quote") in problems(result)
    assert {"H2", "H4"} <= set(result.accepted["household_id"])
    assert_counts_add_up(result)


def test_a_quoted_cell_over_two_lines_is_still_one_row(tmp_path):
    path = household_file(tmp_path, f'H1,陈福,{GOOD_ID},15822736369,"万堤村\n4组5号",G001,空巢老人',
                          f"H2,唐翠,{OTHER_ID},15822736369,万堤村,G001,空巢老人")
    result = validate_import("households", read_table(path), source="h.csv", known=KNOWN)
    assert result.quarantined.empty and result.accepted["_line"].tolist() == [2, 4]
    assert result.accepted.iloc[0]["address"] == "万堤村\n4组5号"


@pytest.mark.parametrize("content, line", [
    ((HOUSEHOLD_HEADER + "\nH1,陈福\n").encode("utf-8") + b"H2,Caf\xe9\n", 3),  # UTF-8 with one latin-1 byte
    ((HOUSEHOLD_HEADER + "\nH1,x\n").encode("ascii") + "H2,陈福\n".encode("gbk") + b"H3,\x80\xff\n", 4),
])
def test_undecodable_bytes_name_the_file_and_line_in_chinese(tmp_path, content, line):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataContractError) as err:
        read_table(path)
    assert f"bad.csv 第{line}行" in err.value.message_zh and "UTF-8" in err.value.message_zh
    assert not isinstance(err.value, UnicodeError)


def test_utf16_with_bom_is_read_and_nul_bytes_are_refused(tmp_path):
    path = household_file(tmp_path, f"H1,陈福,{GOOD_ID},15822736369,万堤村,G001,空巢老人", encoding="utf-16")
    raw = read_table(path)
    assert raw.loc[0, "head_name"] == "陈福"
    path.write_bytes((HOUSEHOLD_HEADER + "\nH1,陈\x00福\n").encode("utf-8"))
    with pytest.raises(DataContractError) as err:
        read_table(path)
    assert "第2行" in err.value.message_zh


def test_unsupported_file_type_is_a_data_contract_error(tmp_path):
    path = tmp_path / "h.docx"
    path.write_bytes(b"PK")
    with pytest.raises(DataContractError) as err:
        read_table(path)
    assert "h.docx" in err.value.message_zh
    broken = tmp_path / "h.xlsx"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataContractError) as err:
        read_table(broken)
    assert "h.xlsx" in err.value.message_zh and "Excel" in err.value.message_zh


def test_duplicate_keys_keep_the_first_good_copy_and_say_which(tmp_path):
    path = household_file(
        tmp_path,
        f"H1,陈福,{GOOD_ID},123,万堤村,G001,空巢老人",           # bad phone: not imported
        f"H1,陈福,{GOOD_ID},15822736369,万堤村,G001,空巢老人",   # the good copy: imported
        f"H1,陈福,{GOOD_ID},15822736369,万堤村,G001,空巢老人",   # a later copy
        f"H2,唐翠,{OTHER_ID},1,万堤村,G001,空巢老人",
        f"H2,唐翠,{OTHER_ID},2,万堤村,G001,空巢老人")           # every copy bad
    result = validate_import("households", read_table(path), source="h.csv", known=KNOWN)
    assert result.accepted["_line"].tolist() == [3]
    reasons = {(int(r.line), r.code): r.reason for r in result.quarantined.itertuples()}
    assert reasons[(2, "duplicate_key")] == "家庭编号与第3行重复（已导入第3行，本行未导入）"
    assert reasons[(4, "duplicate_key")] == "家庭编号与第3行重复（已导入第3行，本行未导入）"
    assert (5, "duplicate_key") not in reasons and "都有错误" in reasons[(6, "duplicate_key")]
    assert not any("保留第一次出现的行" in r for r in reasons.values())
    assert_counts_add_up(result)


def test_file_errors_survive_pickling():
    """Prefect may persist a failed task's exception: it must come back whole."""
    import pickle

    from sibifang.importing import ImportFileError

    error = pickle.loads(pickle.dumps(ImportFileError("h.csv", "bad", message_zh="文件 h.csv 第3行……", line=3)))
    assert (error.source, error.line, error.message_zh) == ("h.csv", 3, "文件 h.csv 第3行……")
    assert isinstance(error, DataContractError)


def test_data_contract_errors_survive_pickling_with_their_failures():
    """A stage's contract failure crosses processes (a process or Dask task runner) whole."""
    import pickle

    from schemas.validation import ExpectationOutcome

    outcome = ExpectationOutcome("expect_column_values_to_not_be_null", "due_date", "critical", False,
                                 unexpected_count=2, unexpected_rows=[3, 7])
    error = DataContractError("plans.csv", [outcome, "missing column: status"], message_zh="文件 plans.csv 有错误",
                              row_offset=2, row_label="lines")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is DataContractError
    assert str(back) == str(error) and "lines: 5, 9" in str(back)
    assert (back.source, back.failures, back.message_zh, back.columns) == (
        "plans.csv", error.failures, "文件 plans.csv 有错误", ["due_date"])


def test_a_gbk_file_whose_first_chinese_bytes_are_also_utf8_is_read_as_gbk(tmp_path):
    """(Review) 岑宝华 in GBK starts E1 AF B1: a valid UTF-8 character, so the file was taken for
    damaged UTF-8 and refused as "neither UTF-8 nor GBK"."""
    from sibifang.importing import detect_encoding

    path = household_file(tmp_path, f"H1,岑宝华,{GOOD_ID},15822736369,万堤村,G001,空巢老人", encoding="gbk")
    assert detect_encoding(path.read_bytes(), path.name) == "gb18030"
    raw = read_table(path)
    assert raw.loc[0, "head_name"] == "岑宝华" and raw.loc[0, "address"] == "万堤村"


# --------------------------------------------------------------------------- what county offices' Excel exports hold

def _no_rows_within(cell: str) -> bool:
    """A quoted cell whose later line holds as many commas as a row of three columns is, to the
    registry reader, a stray quote that swallowed rows (``importing._unclosed_quote``: it cuts
    the record back to its line); the readings reader keeps it one cell. Both are deliberate
    readings of a damaged file, not of blank rows: left out here."""
    return not any(inner.count(",") >= 2 for inner in cell.splitlines()[1:])


_import_cells = (st.lists(st.sampled_from(["a", "1", " ", ",", '"', "\n", "电", "\t"]), max_size=4).map("".join)
                 .filter(_no_rows_within))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(st.none(), st.tuples(_import_cells, _import_cells, _import_cells)), max_size=10),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_property_blank_rows_are_no_rows_alike_in_the_registry_and_the_readings(tmp_path, rows, newline):
    """Blank lines and rows of blank cells (",,,", spaces): no row in either reader, and both
    number the other rows alike, so "rows read" means one thing in every import."""
    import csv
    import io

    from sibifang.importing import ImportFileError
    from sibifang.readings_files import read_readings_file

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(["meter_id", "ts", "kwh"])
    for row in rows:
        if row is None:
            out.write(newline)
        else:
            writer.writerow(row)
    src = tmp_path / "r.csv"
    src.write_bytes(out.getvalue().encode("utf-8"))
    registry = read_table(src)
    try:
        readings = read_readings_file(src)
    except ImportFileError:
        return  # a whole column written a way only the readings' file checks refuse
    assert readings["line"].tolist() == registry["_line"].tolist()


def test_xlsx_and_csv_blank_rows_in_a_visits_import_are_no_rows(tmp_path):
    from openpyxl import Workbook
    from openpyxl.styles import PatternFill

    header = ["visit_id", "household_id", "cadre_id", "visited_at", "mode", "steps"]
    row = ["V1", "H001", "K001", "2026-11-20 10:00", "入户", "亮明身份"]
    (tmp_path / "v.csv").write_text(",".join(header) + "\n" + ",".join(row) + "\n,,,,,\n , ,,,,\n", encoding="utf-8")
    wb = Workbook()
    ws = wb.active
    ws.append(header)
    ws.append([None] * 6)
    ws.append(row)
    for r in range(4, 30):
        ws.cell(row=r, column=1).fill = PatternFill("solid", fgColor="FFFF00")
    wb.save(tmp_path / "v.xlsx")
    for name, line in (("v.csv", 2), ("v.xlsx", 3)):
        result = validate_import("visits", read_table(tmp_path / name), source=name,
                                 now=dt.datetime(2026, 12, 1))
        assert result.read == 1 and len(result.accepted) == 1 and result.quarantined.empty, name
        assert result.accepted["_line"].tolist() == [line], name


def test_a_totals_row_is_quarantined_as_that_alone(tmp_path):
    """合计 at the foot of a sheet: one reason a clerk can read, not a dozen missing fields."""
    src = tmp_path / "v.csv"
    src.write_text("visit_id,household_id,cadre_id,visited_at,mode,steps\n"
                   "V1,H001,K001,2026-11-20 10:00,入户,亮明身份\n合计,,,,,\n,总 计：,,,,\n", encoding="utf-8")
    result = validate_import("visits", read_table(src), source=src.name, now=dt.datetime(2026, 12, 1))
    assert problems(result) == {(3, "_row", "total_row"), (4, "_row", "total_row")}
    assert result.read == 3 and len(result.accepted) == 1
    assert_counts_add_up(result)
    assert "合计行" in render_import_errors(result, "txt")


def test_a_title_above_the_header_is_skipped_and_named_in_the_report(tmp_path):
    """It used to be refused (see tests/test_import_headers.py): now the header is found."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["城关镇2026年11月走访记录表"])
    ws.merge_cells("A1:F1")
    ws.append(["走访编号", "家庭编号", "人员编号", "走访时间", "走访方式", "五步工作法步骤"])
    ws.append(["V1", "H001", "K001", "2026-11-20 10:00", "入户", "亮明身份"])
    wb.save(tmp_path / "v.xlsx")
    (tmp_path / "v.csv").write_bytes("走访记录,,,,,\n制表：城关镇妇联,,,,,\n"
                                     "visit_id,household_id,cadre_id,visited_at,mode,steps\n"
                                     "V1,H001,K001,2026-11-20 10:00,入户,亮明身份\n".encode("gbk"))
    for name, line in (("v.xlsx", 2), ("v.csv", 3)):
        result = validate_import("visits", read_table(tmp_path / name), source=name, now=dt.datetime(2026, 12, 1))
        assert result.read == 1 and len(result.accepted) == 1 and result.accepted["_line"].tolist() == [line + 1]
        assert result.header.lines == (line,) and result.header.skipped == tuple(range(1, line))
        assert f"表头在第{line}行" in render_import_errors(result, "txt")
