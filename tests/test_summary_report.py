"""Unit tests of sibifang.summary_report: aggregates, masking, the risk-map SVG and the rendered HTML.

The report goes to the party committee and government: aggregates only, no name, ID number,
phone or address, even when the frames handed in carry such columns.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date

import pandas as pd
import pytest

from sibifang.summary_report import (CATEGORY_LABELS, LEVEL_COLORS, aggregates_frame, render_report, risk_map_svg,
                                     summarise)

T = pd.Timestamp
START, END = date(2026, 7, 1), date(2026, 7, 31)
SVG = "{http://www.w3.org/2000/svg}"

# Personal data that must never reach the report.
PII = ["李桂兰", "王秀英", "张伟", "330203195001011238", "330203198203154421", "13912345678", "0574-87654321",
       "海曙区望春街道丽园北路88号", "江北区庄桥街道3幢"]


def _households() -> pd.DataFrame:
    return pd.DataFrame({
        "household_id": ["H1", "H2", "H3", "H4", "H5"],
        "categories": [["dispute"], ["hardship", "empty_nest"], [], ["empty_nest"], []],
        "head_name": ["李桂兰", "王秀英", "张伟", "李桂兰", "王秀英"],
        "id_number": ["330203195001011238", "330203198203154421", "", "", ""],
        "phone": ["13912345678", "0574-87654321", "", "", ""],
        "address": ["海曙区望春街道丽园北路88号", "江北区庄桥街道3幢", "", "", ""],
        "grid_id": ["G1", "G1", "G2", "G3", "G3"],
    })


def _areas() -> pd.DataFrame:
    return pd.DataFrame({"grid_id": ["G1", "G2", "G3"], "village_id": ["V1", "V1", "V2"],
                         "village_name": ["万地村", "万地村", "丽园社区"], "township_id": ["T1"] * 3})


def _risk_map() -> pd.DataFrame:
    old = pd.DataFrame({"as_of": [date(2026, 7, 30)], "grid_id": ["G1"], "level": ["红"], "households": [9],
                        "change": [0]})
    latest = pd.DataFrame({
        "as_of": [END] * 6,
        "grid_id": ["G1", "G1", "G2", "G3", "G3", "G3"],
        "level": ["红", "绿", "绿", "橙", "黄", "绿"],
        "households": [1, 4, 5, 2, 3, 6],
        "change": [0] * 6,
    })
    return pd.concat([old, latest], ignore_index=True)


def _frames() -> dict:
    plans = pd.DataFrame({
        "id": ["P1", "P2", "P3", "P4", "P5"],
        "due_date": [date(2026, 7, 3), date(2026, 7, 10), date(2026, 7, 31), date(2026, 6, 30), date(2026, 8, 1)],
        "status": ["done", "done", "planned", "done", "planned"],
        "urgent": [False, True, False, False, False],
        "household_id": ["H1", "H2", "H3", "H4", "H5"],
    })
    visits = pd.DataFrame({
        "id": ["V1", "V2", "V3", "V4"],
        "visited_at": [T("2026-07-02 10:00"), T("2026-07-09 15:00"), T("2026-07-31 23:30"), T("2026-08-01 00:00")],
        "notes": ["李桂兰说丈夫打骂", "王秀英电话13912345678", "", ""],
        "cadre_name": ["张伟"] * 4,
    })
    flags = pd.DataFrame({
        "id": ["F1", "F2", "F3", "F4"],
        "kind": ["dispute", "inactivity", "inactivity", "overdue_visit"],
        "detected_at": [T("2026-07-02 10:00"), T("2026-07-12 08:00"), T("2026-07-20 08:00"), T("2026-06-20")],
        "evidence": ["走访记录中出现“打骂”", "李桂兰家长时间无用电", "", ""],
    })
    alerts = pd.DataFrame({
        "id": ["A1", "A2", "A3", "A4"],
        "status": ["sent", "sent", "dead", "sent"],
        "created_at": [T("2026-07-02 10:05"), T("2026-07-12 08:05"), T("2026-07-20 08:05"), T("2026-06-20 08:00")],
        "first_sent_at": [T("2026-07-02 10:06"), T("2026-07-12 08:06"), pd.NaT, T("2026-06-20 08:01")],
        "acked_at": [T("2026-07-02 10:16"), T("2026-07-12 08:36"), pd.NaT, T("2026-06-20 09:00")],
        "alert_address": ["13912345678"] * 4,
    })
    cases = pd.DataFrame({"id": ["C1", "C2"], "opened_at": [T("2026-07-03"), T("2026-06-01")],
                          "status": ["open", "closed"], "household_id": ["H1", "H2"]})
    needs = pd.DataFrame({
        "id": ["N1", "N2", "N3", "N4"],
        "category": ["family_education", "family_education", "elderly_care", "skills"],
        "status": ["matched", "open", "matched", "matched"],
        "created_at": [T("2026-07-02"), T("2026-07-09"), T("2026-07-15"), T("2026-05-01")],
        "household_id": ["H1", "H2", "H3", "H4"],
    })
    return dict(plans=plans, visits=visits, flags=flags, alerts=alerts, cases=cases, needs=needs)


@pytest.fixture(scope="module")
def agg() -> dict:
    return summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map(),
                     areas=_areas(), **_frames())


@pytest.fixture(scope="module")
def svg() -> str:
    return risk_map_svg(_risk_map(), _areas())


@pytest.fixture(scope="module")
def report(agg, svg) -> str:
    return render_report(agg, risk_map_svg_text=svg)


# --- summarise -------------------------------------------------------------------------------

def test_summarise_counts(agg):
    assert agg["period_start"] == "2026-07-01" and agg["period_end"] == "2026-07-31"
    assert agg["households"] == 5
    assert agg["must_visit_households"] == 3
    assert {c["label"]: c["count"] for c in agg["by_category"]} == {
        CATEGORY_LABELS["dispute"]: 1, CATEGORY_LABELS["hardship"]: 1, CATEGORY_LABELS["empty_nest"]: 2}
    assert agg["visits_planned"] == 3          # P1, P2, P3 due in July
    assert agg["visits_done"] == 2
    assert agg["completion_rate"] == round(2 / 3, 3)
    assert agg["visits_recorded"] == 3         # 07-31 23:30 counts, 08-01 00:00 does not
    assert agg["flags"] == 3
    assert {f["label"]: f["count"] for f in agg["flags_by_kind"]} == {"长时间无用电活动": 2, "婚姻家庭矛盾": 1}
    assert agg["alerts"] == 3 and agg["alerts_sent"] == 2 and agg["alerts_dead"] == 1 and agg["alerts_acked"] == 2
    assert agg["median_minutes_to_ack"] == 20.0  # 10 and 30 minutes
    assert agg["cases_opened"] == 1 and agg["cases_closed"] == 1
    assert agg["needs"] == 3 and agg["needs_matched"] == 2
    assert agg["common_demands"][0] == {"label": "家庭教育", "count": 2}
    assert {d["label"] for d in agg["common_demands"]} == {"家庭教育", "空巢老人照料"}


def test_summarise_risk_levels_use_the_latest_snapshot(agg):
    assert agg["risk_levels"] == {"红": 1, "橙": 2, "黄": 3, "绿": 15}


def test_summarise_masks_small_counts_by_village(agg):
    by = {r["village"]: r for r in agg["risk_by_village"]}
    assert set(by) == {"万地村", "丽园社区"}
    assert by["万地村"]["红"] == "<3"          # 1 household
    assert by["万地村"]["绿"] == 9
    assert by["万地村"]["橙"] == 0             # zero is not a small count
    assert by["丽园社区"]["橙"] == "<3"        # 2 households
    assert by["丽园社区"]["黄"] == 3           # exactly SMALL_COUNT is shown
    assert by["丽园社区"]["绿"] == 6


def test_summarise_output_carries_no_personal_data(agg):
    text = repr(agg)
    for s in PII:
        assert s not in text
    frame = aggregates_frame(agg)
    assert len(frame) == 1 and frame.loc[0, "households"] == 5
    assert not any(isinstance(v, (list, dict)) for v in frame.iloc[0])


def test_summarise_empty_period():
    empty = {k: v.iloc[0:0] for k, v in _frames().items()}
    agg = summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map().iloc[0:0],
                    areas=_areas(), **empty)
    assert agg["visits_planned"] == 0 and agg["completion_rate"] is None
    assert agg["flags"] == 0 and agg["alerts"] == 0 and agg["median_minutes_to_ack"] is None
    assert agg["risk_levels"] == {lvl: 0 for lvl in LEVEL_COLORS}
    assert agg["risk_by_village"] == [] and agg["common_demands"] == []
    html = render_report(agg, risk_map_svg_text=risk_map_svg(_risk_map().iloc[0:0], _areas()))
    assert "本期未收集到普遍性诉求" in html and "暂无数据" in html


# --- risk_map_svg ----------------------------------------------------------------------------

def test_risk_map_svg_is_valid_with_one_rect_per_grid(svg):
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    rects = root.findall(f".//{SVG}rect")
    assert len(rects) == 3
    titles = [r.find(f"{SVG}title").text for r in rects]
    assert sorted(t.split(":")[0] for t in titles) == ["G1", "G2", "G3"]
    for r in rects:
        assert re.fullmatch(r"#[0-9a-f]{6}", r.get("fill"))
    texts = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "万地村" in texts and "丽园社区" in texts and "家庭风险动态预警图" in texts


def test_risk_map_svg_colours_hot_grids_redder(svg):
    root = ET.fromstring(svg)
    fill = {r.find(f"{SVG}title").text.split(":")[0]: r.get("fill") for r in root.findall(f".//{SVG}rect")}
    assert fill["G2"] == "#b3de69"          # all green
    red = lambda c: int(c[1:3], 16) - int(c[3:5], 16)  # noqa: E731
    assert red(fill["G1"]) > red(fill["G2"]) and red(fill["G3"]) > red(fill["G2"])


def test_risk_map_svg_escapes_names():
    areas = _areas().assign(village_name=["A&B<村>", "A&B<村>", "丽园社区"])
    root = ET.fromstring(risk_map_svg(_risk_map(), areas))  # parses: & and < are escaped
    assert any((t.text or "") == "A&B<村>" for t in root.iter(f"{SVG}text"))


def test_risk_map_svg_empty_is_valid():
    root = ET.fromstring(risk_map_svg(_risk_map().iloc[0:0], _areas()))
    assert root.findall(f".//{SVG}rect") == []


def test_risk_map_svg_grid_without_area_still_drawn():
    rm = _risk_map()
    rm = pd.concat([rm, pd.DataFrame({"as_of": [END], "grid_id": ["G-new"], "level": ["绿"], "households": [4],
                                      "change": [0]})], ignore_index=True)
    root = ET.fromstring(risk_map_svg(rm, _areas()))
    assert len(root.findall(f".//{SVG}rect")) == 4


def test_risk_map_svg_does_not_leak_small_counts(svg):
    root = ET.fromstring(svg)
    for title in root.iter(f"{SVG}title"):
        counts = [int(n) for n in re.findall(r"[红橙黄绿](\d+)", title.text)]
        assert not any(0 < n < 3 for n in counts), title.text


# --- render_report ---------------------------------------------------------------------------

def test_report_is_chinese_html_with_the_counts(report):
    assert report.lstrip().startswith("<!DOCTYPE html>")
    assert 'lang="zh-CN"' in report
    assert "四必访工作情况报告" in report
    assert "2026-07-01 至 2026-07-31" in report
    assert "在册家庭 5 户" in report and "重点家庭 3 户" in report
    assert "本期产生风险预警 3 条" in report
    assert "推送预警消息 3 条" in report and "已送达 2 条" in report and "投递失败转人工 1 条" in report
    assert "确认用时中位数 20.0 分钟" in report
    assert "转介调解室 1 件" in report and "已与服务资源池对接 2 项" in report
    assert "66.7%" in report
    assert "红色 1 户" in report and "绿色 15 户" in report
    assert "家庭教育" in report and "长时间无用电活动" in report
    assert "<svg" in report
    # mostly Chinese text, not an English template
    body = re.sub(r"<[^>]+>", "", report.split("<body>", 1)[1])
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in body)
    latin_words = re.findall(r"[A-Za-z]{4,}", body)
    assert han > 200 and han > 5 * len(latin_words)


def test_report_masks_small_village_counts(report):
    assert "&lt;3" in report
    rows = re.findall(r"<tr><td>(万地村|丽园社区)</td>(.*?)</tr>", report)
    assert len(rows) == 2
    cells = {v: re.findall(r"<td>(.*?)</td>", rest) for v, rest in rows}
    assert cells["万地村"] == ["&lt;3", "0", "0", "9"]
    assert cells["丽园社区"] == ["0", "&lt;3", "3", "6"]


def test_report_contains_no_personal_data(report, svg):
    for s in PII:
        assert s not in report
        assert s not in svg
    # nothing that looks like a resident ID or a mainland mobile number
    assert not re.search(r"\d{17}[\dXx]", report)
    assert not re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", report)


def test_report_escapes_labels():
    agg = summarise(period_start=START, period_end=END, households=_households(), risk_map=_risk_map(),
                    areas=_areas().assign(village_name=["<script>x</script>"] * 2 + ["丽园社区"]), **_frames())
    html = render_report(agg, risk_map_svg_text="<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;" in html
