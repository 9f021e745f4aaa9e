"""Unit tests of sibifang.flag_risks (pure logic: frames in, frames out; no Prefect, no database)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from sibifang.flag_risks import (FLAG_COLUMNS, LEVELS, MERGE_GAP, SEVERITY_POINTS, Cue, Lexicon,
                                 episodes_to_flags, merge_with_open_flags, overdue_visit_flags, risk_map,
                                 score_households, unresolved_difficulty_flags, visit_cue_flags)
from sibifang.records import stable_id

T = pd.Timestamp


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


def kinds(cues: list[Cue]) -> set[str]:
    return {c.kind for c in cues}


# --- Lexicon ---------------------------------------------------------------------------------

def test_lexicon_load_default_file(lexicon):
    by_term = {c.term: c for c in lexicon.cues}
    assert by_term["家暴"].kind == "domestic_violence" and by_term["家暴"].severity == "critical"
    assert by_term["轻生"].kind == "self_harm" and by_term["轻生"].severity == "critical"
    assert by_term["离婚"].kind == "dispute" and by_term["离婚"].severity == "high"
    assert by_term["赌博"].kind == "gambling"
    assert {"无", "没有"} <= set(lexicon.negations)
    assert all(c.severity in SEVERITY_POINTS for c in lexicon.cues)


def test_lexicon_load_custom_path(tmp_path):
    p = tmp_path / "lex.toml"
    p.write_text('negations = ["不"]\n[cues.gambling]\nseverity = "low"\nterms = ["打牌", "麻将"]\n', encoding="utf-8")
    lex = Lexicon.load(p)
    assert lex.negations == ["不"]
    assert [(c.term, c.kind, c.severity) for c in lex.cues] == [
        ("打牌", "gambling", "low"), ("麻将", "gambling", "low")]
    assert kinds(lex.find("丈夫整天打麻将")) == {"gambling"}
    assert lex.find("他不打牌") == []


@pytest.mark.parametrize("text, expected", [
    ("丈夫酒后殴打妻子", {"domestic_violence"}),
    ("夫妻经常吵架，女方提出离婚", {"dispute"}),
    ("她说最近不想活了", {"self_harm"}),
    ("丈夫欠下赌债", {"gambling"}),
    ("家庭和睦，子女孝顺", set()),
])
def test_lexicon_find_cues(lexicon, text, expected):
    assert kinds(lexicon.find(text)) == expected


@pytest.mark.parametrize("text", ["无家暴", "没有矛盾", "家庭和睦，无家暴，没有矛盾", "否认家暴", "未发现家庭暴力"])
def test_lexicon_find_skips_negated_mentions(lexicon, text):
    assert lexicon.find(text) == []


def test_lexicon_find_negated_then_real_mention_is_found(lexicon):
    cues = lexicon.find("以前无家暴，本月又遭家暴")
    assert kinds(cues) == {"domestic_violence"}
    assert [c.term for c in cues] == ["家暴"]  # one cue per term, not per occurrence


def test_lexicon_find_several_kinds_in_one_note(lexicon):
    cues = lexicon.find("夫妻争吵不断，丈夫有赌债，妻子扬言不想活，无家暴")
    assert kinds(cues) == {"dispute", "gambling", "self_harm"}
    assert {c.term for c in cues} >= {"争吵", "赌债", "不想活"}


@pytest.mark.parametrize("text", [None, ""])
def test_lexicon_find_empty(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text", ["丈夫长期无业，家暴", "丈夫酗酒无度殴打妻子"])
def test_lexicon_negation_only_negates_adjacent_word(lexicon, text):
    assert kinds(lexicon.find(text)) == {"domestic_violence"}


def test_lexicon_negation_with_verb_between(lexicon):
    assert lexicon.find("走访中没有发现家暴") == []


@pytest.mark.parametrize("text", [
    "无婆媳矛盾", "否认婆媳矛盾", "没有闹离婚",             # a term inside a longer, negated one
    "无　家暴", "无 家暴", "无明显家暴", "没有任何家暴", "无任何矛盾",   # spaces and fillers
    "无殴打、打骂", "没有吵架和打骂",                        # a negated list
    "有无家暴：无", "是否有赌博：否", "是否有家暴情况：否",     # a form's question answered no
])
def test_lexicon_reads_negations_as_clerks_write_them(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text, kind", [
    ("有无家暴：有", "domestic_violence"), ("有无家庭暴力：有，丈夫酒后", "domestic_violence"),
    ("是否有赌博：是", "gambling"), ("夫妻鬧離婚", "dispute"), ("丈夫毆打妻子", "domestic_violence"),
    ("无家暴，但夫妻经常吵架", "dispute"),
    # a question answered yes, a word or two later, or not at all: a danger missed costs more
    ("是否有家暴情况：有", "domestic_violence"), ("是否有轻生念头：有", "self_harm"),
    ("是否存在打骂现象：存在", "domestic_violence"), ("是否殴打过妻子：是", "domestic_violence"),
    ("有无家暴", "domestic_violence"),
    # "无" answering the entry before, or ending the line before, negates nothing here
    ("低保：无 家暴：有", "domestic_violence"), ("低保：无\n家暴后带孩子回娘家", "domestic_violence"),
])
def test_lexicon_finds_answered_questions_traditional_characters_and_cues_after_a_negated_one(lexicon, text, kind):
    assert kinds(lexicon.find(text)) == {kind}


@pytest.mark.parametrize("text", [
    "家暴：无", "家暴情况：无。", "家暴:否", "赌博：没有", "家暴：未发现", "矛盾纠纷：无；困难：低保",
    "家暴、赌博：无", "是否离婚：否", "家暴：无 赌博：无", "家暴情况：无\n赌博：否",
])
def test_lexicon_an_entry_answered_no_on_a_form_is_no_cue(lexicon, text):
    # a visit form's checklist (家暴：无 赌博：无) is the commonest way to write "none"
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text, kind", [
    ("家暴：有", "domestic_violence"), ("家暴：无，吵架：有", "dispute"), ("离婚：无法协商", "dispute"),
    ("家暴：未处理", "domestic_violence"), ("赌博：无业后常去", "gambling"), ("家暴：无 吵架：有", "dispute"),
])
def test_lexicon_an_entry_answered_otherwise_is_still_a_cue(lexicon, text, kind):
    assert kinds(lexicon.find(text)) == {kind}


@pytest.mark.parametrize("text", ["家暴：未 处理", "家暴：无 人管", "家暴：无 明显外伤", "家暴情况：未 解决"])
def test_lexicon_an_entry_whose_answer_goes_on_after_a_space_is_still_a_cue(lexicon, text):
    # read as without the space ("家暴：未处理"): a space typed inside the answer ends nothing
    assert kinds(lexicon.find(text)) == {"domestic_violence"}


@pytest.mark.parametrize("text", ["是否家暴：无法确认", "有无家暴：未处理", "是否有家暴情况：无法判断"])
def test_lexicon_a_question_whose_answer_goes_on_is_still_a_cue(lexicon, text):
    # as an entry's answer ("家暴情况：无法确认"): "无法确认" is no "无"
    assert kinds(lexicon.find(text)) == {"domestic_violence"}


@pytest.mark.parametrize("text, kind", [
    ("家暴：未处理 备注：邻居反映", "domestic_violence"), ("家暴：无人管 备注：常被打", "domestic_violence"),
    ("离婚：无法协商 低保：有", "dispute"),
])
def test_lexicon_an_answer_that_goes_on_before_the_next_entry_is_still_a_cue(lexicon, text, kind):
    # "未处理" then the next entry: not "未" then an entry "处理备注"
    assert kind in kinds(lexicon.find(text))


@pytest.mark.parametrize("text", ["家暴：未发现 赌博：无", "家暴：否 赌博：无", "家暴：没有 赌博：没有",
                                  "家暴：无赌博：无", "是否有 家暴情况：否"])
def test_lexicon_entries_answered_no_one_after_another_are_no_cue(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text", ["家暴：无 ", "家暴：无 。", "家暴：无 \n赌博：无"])
def test_lexicon_an_entry_answered_no_then_a_space_is_no_cue(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text", [
    "备注：无家暴", "家庭情况：无家暴，无赌博", "家庭情况：无矛盾", "走访发现：没有吵架", "情况:无家暴现象",
])
def test_lexicon_a_negation_opening_a_labelled_answer_negates_its_cue(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text, kind", [
    ("低保：无家暴：有", "domestic_violence"), ("低保：无 家暴后带孩子回娘家", "domestic_violence"),
    ("低保：无　赌博：有", "gambling"), ("备注：无家暴，但经常吵架", "dispute"),
])
def test_lexicon_a_negation_answering_the_entry_before_still_negates_nothing(lexicon, text, kind):
    assert kinds(lexicon.find(text)) == {kind}


@pytest.mark.parametrize("text", ["无矛盾纠纷", "家庭和睦，没有矛盾纠纷", "家庭情况：无矛盾纠纷", "无打骂殴打"])
def test_lexicon_a_negation_carries_over_cues_written_together(lexicon, text):
    # "矛盾纠纷" is one phrase: the negation of its first term is the negation of both
    assert lexicon.find(text) == []


@pytest.mark.parametrize("text, kind", [
    ("丈夫酗酒未离婚家暴多年", "domestic_violence"), ("没有吵架殴打妻子", "domestic_violence"),
    ("无赌博打骂孩子", "domestic_violence"), ("没有打骂赌博", "gambling"),
])
def test_lexicon_a_negation_does_not_carry_over_to_a_cue_of_another_kind_written_after(lexicon, text, kind):
    # "矛盾纠纷" is one phrase; "未离婚" then "家暴" are two facts, the second a danger
    assert kind in kinds(lexicon.find(text))


@pytest.mark.parametrize("text", ["矛盾纠纷", "无矛盾，纠纷不断"])
def test_lexicon_cues_written_together_without_a_negation_are_cues(lexicon, text):
    assert kinds(lexicon.find(text)) == {"dispute"}


def test_visit_cue_flags_read_each_field_as_its_own_sentence(lexicon):
    v = pd.DataFrame([{"visit_id": "V1", "household_id": "H1", "visited_at": "2026-07-01 10:00",
                       "women_situation": "无", "difficulties": "家暴后带孩子回娘家"}])
    assert list(visit_cue_flags(v, lexicon).kind) == ["domestic_violence"]


def test_lexicon_harmonious_in_laws_is_not_a_dispute(lexicon):
    assert lexicon.find("婆媳关系和睦，家庭和谐") == []


# --- visit_cue_flags -------------------------------------------------------------------------

def _visits() -> pd.DataFrame:
    return pd.DataFrame([
        {"visit_id": "V1", "household_id": "H1", "visited_at": "2026-07-01 10:00", "notes": "夫妻吵架",
         "family_situation": "女方称曾被丈夫殴打", "women_situation": None, "difficulties": "经常争吵", "measures": ""},
        {"visit_id": "V2", "household_id": "H2", "visited_at": "2026-07-02 09:30", "notes": "无家暴，没有矛盾",
         "family_situation": "家庭和睦", "women_situation": "", "difficulties": None, "measures": None},
        {"visit_id": "V3", "household_id": "H3", "visited_at": "2026-07-03 15:00", "notes": float("nan"),
         "family_situation": None, "women_situation": None, "difficulties": None, "measures": None},
        {"visit_id": "V4", "household_id": "H3", "visited_at": "2026-07-04 15:00", "notes": None,
         "family_situation": None, "women_situation": "丈夫赌博", "difficulties": None, "measures": None},
    ])


def test_visit_cue_flags_one_flag_per_visit_and_kind(lexicon):
    flags = visit_cue_flags(_visits(), lexicon)
    assert list(flags.columns) == FLAG_COLUMNS
    got = sorted(zip(flags.household_id, flags.details.map(lambda d: d["visit_id"]), flags.kind))
    assert got == [("H1", "V1", "dispute"), ("H1", "V1", "domestic_violence"), ("H3", "V4", "gambling")]
    v1d = flags[(flags.kind == "dispute")].iloc[0]
    # "吵架" in notes and "争吵" in difficulties: one flag naming both terms
    assert v1d.details["terms"] == ["争吵", "吵架"]
    assert "争吵" in v1d.evidence and "吵架" in v1d.evidence
    assert v1d.start == T("2026-07-01 10:00") and v1d.detected_at == T("2026-07-01 10:00")
    assert pd.isna(v1d.end) and v1d.meter_id is None


def test_visit_cue_flags_ids_are_deterministic(lexicon):
    a = visit_cue_flags(_visits(), lexicon)
    b = visit_cue_flags(_visits().iloc[::-1].reset_index(drop=True), lexicon)
    assert set(a.flag_id) == set(b.flag_id)
    row = a[a.kind == "domestic_violence"].iloc[0]
    assert row.dedup_key == "visit|V1|domestic_violence"
    assert row.flag_id == stable_id("F", "visit|V1|domestic_violence")
    assert a.flag_id.is_unique and a.dedup_key.is_unique


def test_visit_cue_flags_severity_is_the_max_of_the_cues():
    lex = Lexicon(cues=[Cue("吵架", "dispute", "low"), Cue("离婚", "dispute", "high"),
                        Cue("分居", "dispute", "medium")], negations=["无"])
    v = pd.DataFrame([{"visit_id": "V9", "household_id": "H9", "visited_at": "2026-07-05",
                       "notes": "吵架后分居，闹离婚"},
                      {"visit_id": "V8", "household_id": "H8", "visited_at": "2026-07-05", "notes": "偶尔吵架"}])
    flags = visit_cue_flags(v, lex).set_index("household_id")
    assert flags.loc["H9", "severity"] == "high"
    assert flags.loc["H9", "score"] == float(SEVERITY_POINTS["high"])
    assert flags.loc["H8", "severity"] == "low"
    assert flags.loc["H8", "score"] == float(SEVERITY_POINTS["low"])


def test_visit_cue_flags_without_cues_is_empty_with_columns(lexicon):
    v = _visits()
    flags = visit_cue_flags(v[v.visit_id.isin(["V2", "V3"])], lexicon)
    assert flags.empty and list(flags.columns) == FLAG_COLUMNS


def test_visit_cue_flags_reads_only_available_columns(lexicon):
    v = pd.DataFrame([{"visit_id": "V1", "household_id": "H1", "visited_at": "2026-07-01", "notes": "家暴"}])
    flags = visit_cue_flags(v, lexicon)
    assert list(flags.kind) == ["domestic_violence"] and list(flags.severity) == ["critical"]


# --- unresolved_difficulty_flags -------------------------------------------------------------

def _dv(vid, hid, when, diff, measure=None):
    return {"visit_id": vid, "household_id": hid, "visited_at": when, "difficulties": diff, "measures": measure}


def test_unresolved_difficulty_flags_two_visits_without_measure():
    v = pd.DataFrame([
        _dv("A1", "HA", "2026-05-10 10:00", "孩子上学费用困难"),
        _dv("A2", "HA", "2026-06-20 10:00", "学费仍未解决", ""),
        # measures present on one of the two → only one unresolved visit → no flag
        _dv("B1", "HB", "2026-05-10 09:00", "就业困难"),
        _dv("B2", "HB", "2026-06-10 09:00", "就业困难", "已推荐到巾帼家政培训"),
        # one visit inside the window, one older than 90 days → no flag
        _dv("C1", "HC", "2026-03-01 09:00", "看病难"),
        _dv("C2", "HC", "2026-06-15 09:00", "看病难"),
        # blank difficulties do not count
        _dv("D1", "HD", "2026-06-01 09:00", "  "),
        _dv("D2", "HD", "2026-06-02 09:00", None),
        _dv("D3", "HD", "2026-06-03 09:00", "缺少照料"),
    ])
    flags = unresolved_difficulty_flags(v, date(2026, 6, 30))
    assert list(flags.columns) == FLAG_COLUMNS
    assert list(flags.household_id) == ["HA"]
    f = flags.iloc[0]
    assert f.kind == "unresolved_difficulty" and f.severity == "medium"
    assert f.details == {"times": 2}
    assert f.score == 30.0
    assert f.start == T("2026-05-10 10:00") and f.detected_at == T("2026-06-20 10:00")
    assert f.dedup_key == "difficulty|HA|2026-05-10"
    assert f.flag_id == stable_id("F", "difficulty|HA|2026-05-10")
    assert "2次" in f.evidence


def test_unresolved_difficulty_flags_read_nothing_as_nothing_and_start_again_after_a_measure():
    v = pd.DataFrame([
        # "无", "暂无" typed as the difficulty: no difficulty
        _dv("A1", "HA", "2026-06-01", "无"), _dv("A2", "HA", "2026-06-05", "暂无"), _dv("A3", "HA", "2026-06-09", "无"),
        # "无" typed as the measure: no measure
        _dv("B1", "HB", "2026-06-01", "看病难", "无"), _dv("B2", "HB", "2026-06-05", "看病难", "暂无"),
        # a measure on the latest visit answers the two before it
        _dv("C1", "HC", "2026-06-01", "就业困难"), _dv("C2", "HC", "2026-06-05", "就业困难"),
        _dv("C3", "HC", "2026-06-09", "就业困难", "已推荐到巾帼家政培训"),
        # ... and two after a measure are counted again
        _dv("D1", "HD", "2026-05-20", "缺少照料", "已联系志愿者"), _dv("D2", "HD", "2026-06-01", "缺少照料"),
        _dv("D3", "HD", "2026-06-05", "缺少照料"),
    ])
    flags = unresolved_difficulty_flags(v, date(2026, 6, 10))
    assert sorted(flags.household_id) == ["HB", "HD"]
    assert flags.set_index("household_id").loc["HD", "details"] == {"times": 2}


def test_unresolved_difficulty_flags_window_and_min_times():
    v = pd.DataFrame([_dv("A1", "HA", "2026-06-01", "困难"), _dv("A2", "HA", "2026-06-05", "困难"),
                      _dv("A3", "HA", "2026-06-09", "困难")])
    assert unresolved_difficulty_flags(v, date(2026, 6, 10), min_times=4).empty
    assert unresolved_difficulty_flags(v, date(2026, 6, 10), min_times=3).iloc[0].details == {"times": 3}
    # a 5-day window keeps only A2 and A3
    f = unresolved_difficulty_flags(v, date(2026, 6, 10), window_days=5)
    assert f.iloc[0].details == {"times": 2} and f.iloc[0].start == T("2026-06-05")
    # visits after as_of are not seen yet
    assert unresolved_difficulty_flags(v, date(2026, 6, 3)).empty
    assert unresolved_difficulty_flags(v, date(2026, 6, 7)).iloc[0].details == {"times": 2}


def test_unresolved_difficulty_flags_ignore_visits_of_the_next_day():
    v = pd.DataFrame([_dv("A1", "HA", "2026-06-01", "困难"), _dv("A2", "HA", "2026-06-05", "困难")])
    assert unresolved_difficulty_flags(v, date(2026, 6, 4)).empty


def test_unresolved_difficulty_flags_empty():
    assert unresolved_difficulty_flags(pd.DataFrame(), date(2026, 6, 10)).empty


# --- overdue_visit_flags ---------------------------------------------------------------------

def _plan(pid, hid, due, we, status="planned", urgent=False, ws=None):
    return {"id": pid, "household_id": hid, "due_date": pd.Timestamp(due).date(),
            "window_start": pd.Timestamp(ws).date() if ws else None,
            "window_end": pd.Timestamp(we).date() if we else None, "status": status, "urgent": urgent}


def test_overdue_visit_flags_grace_period_and_status():
    as_of = date(2026, 7, 20)
    plans = pd.DataFrame([
        _plan("P1", "H1", "2026-07-10", "2026-07-16"),            # 4 days past the window: overdue
        _plan("P2", "H2", "2026-07-10", "2026-07-17"),            # exactly 3 days: still in grace
        _plan("P3", "H3", "2026-06-01", "2026-06-05", status="done"),
        _plan("P4", "H4", "2026-07-10", None),                    # no window: due date + grace
        _plan("P5", "H5", "2026-07-01", "2026-07-05", urgent=True),
        _plan("P6", "H6", "2026-07-25", "2026-07-30"),            # not due yet
    ])
    flags = overdue_visit_flags(plans, as_of)
    assert list(flags.columns) == FLAG_COLUMNS
    assert sorted(flags.household_id) == ["H1", "H4", "H5"]
    by = flags.set_index("household_id")
    assert by.loc["H1", "kind"] == "overdue_visit"
    assert by.loc["H1", "severity"] == "low" and by.loc["H5", "severity"] == "high"
    assert by.loc["H1", "dedup_key"] == "overdue|P1"
    assert by.loc["H1", "flag_id"] == stable_id("F", "overdue|P1")
    assert by.loc["H1", "details"] == {"plan_id": "P1"}
    assert by.loc["H1", "start"] == T("2026-07-10")
    assert by.loc["H1", "detected_at"] == T(as_of)
    assert "10天" in by.loc["H1", "evidence"]
    assert by.loc["H5", "score"] > by.loc["H1", "score"]  # longer overdue scores higher


def test_overdue_visit_flags_grace_days_parameter():
    plans = pd.DataFrame([_plan("P2", "H2", "2026-07-10", "2026-07-17")])
    assert overdue_visit_flags(plans, date(2026, 7, 20)).empty
    assert list(overdue_visit_flags(plans, date(2026, 7, 20), grace_days=0).household_id) == ["H2"]
    assert list(overdue_visit_flags(plans, date(2026, 7, 21)).household_id) == ["H2"]


def test_overdue_visit_flags_only_done_plans_gives_none():
    plans = pd.DataFrame([_plan("P3", "H3", "2026-06-01", "2026-06-05", status="done")])
    assert overdue_visit_flags(plans, date(2026, 7, 20)).empty


# --- episodes_to_flags -----------------------------------------------------------------------

METERS = pd.DataFrame({"meter_id": ["M1", "M2", "M3"], "household_id": ["H1", "H2", "H2"],
                       "interval_minutes": [15, 15, 30]})


def _episode(meter, kind, start, end, detected=None, sev="high", score=0.8, exp=0.4567, obs=0.01234):
    return {"meter_id": meter, "kind": kind, "start": start, "end": end, "detected_at": detected or end,
            "severity": sev, "score": score, "expected_kwh_per_h": exp, "observed_kwh_per_h": obs,
            "evidence": f"{kind} evidence"}


def test_episodes_to_flags_maps_meter_to_household():
    eps = pd.DataFrame([
        _episode("M1", "inactivity", "2026-07-12 03:00", "2026-07-12 15:00"),
        _episode("M3", "sustained_drop", "2026-07-10 00:00", "2026-07-12 00:00", sev="medium", exp=float("nan")),
        _episode("M9", "inactivity", "2026-07-12 03:00", "2026-07-12 09:00"),  # unknown meter
    ])
    flags = episodes_to_flags(eps, METERS)
    assert list(flags.columns) == FLAG_COLUMNS
    assert list(zip(flags.meter_id, flags.household_id)) == [("M1", "H1"), ("M3", "H2")]
    f = flags.iloc[0]
    assert f.dedup_key == "meter|M1|inactivity|2026-07-12T03:00"
    assert f.flag_id == stable_id("F", f.dedup_key)
    assert f.start == T("2026-07-12 03:00") and f.end == T("2026-07-12 15:00")
    assert f.details == {"expected_kwh_per_h": 0.457, "observed_kwh_per_h": 0.012}
    assert flags.iloc[1].details == {"expected_kwh_per_h": None, "observed_kwh_per_h": 0.012}
    assert flags.score.dtype == float


def test_episodes_to_flags_dedup_key_stable_across_runs():
    # The same episode seen by a later run (longer, detected later) keeps its key and id.
    first = episodes_to_flags(pd.DataFrame([_episode("M1", "inactivity", "2026-07-12 03:00", "2026-07-12 09:00")]),
                              METERS)
    later = episodes_to_flags(pd.DataFrame([_episode("M1", "inactivity", "2026-07-12 03:00:00", "2026-07-12 21:00",
                                                     detected="2026-07-13 00:00", score=0.95)]), METERS)
    assert first.dedup_key.tolist() == later.dedup_key.tolist()
    assert first.flag_id.tolist() == later.flag_id.tolist()
    other = episodes_to_flags(pd.DataFrame([_episode("M1", "night_activity", "2026-07-12 03:00", "2026-07-12 04:00")]),
                              METERS)
    assert other.flag_id.iloc[0] != first.flag_id.iloc[0]


def test_episodes_to_flags_without_kwh_columns_and_empty():
    eps = pd.DataFrame([_episode("M2", "meter_offline", "2026-07-12 03:00", "2026-07-12 09:00")]).drop(
        columns=["expected_kwh_per_h", "observed_kwh_per_h"])
    flags = episodes_to_flags(eps, METERS)
    assert flags.details.iloc[0] == {"expected_kwh_per_h": None, "observed_kwh_per_h": None}
    empty = episodes_to_flags(pd.DataFrame(), METERS)
    assert empty.empty and list(empty.columns) == FLAG_COLUMNS


# --- merge_with_open_flags -------------------------------------------------------------------

def _open_flag(fid, hid, kind, start, end, key=None):
    return {"flag_id": fid, "dedup_key": key or f"k-{fid}", "household_id": hid, "kind": kind, "severity": "high",
            "evidence": "e", "start": T(start), "end": T(end) if end else pd.NaT}


def _new_flag(key, hid, kind, start, end):
    return {"flag_id": stable_id("F", key), "dedup_key": key, "household_id": hid, "meter_id": "M1", "kind": kind,
            "severity": "high", "score": 0.9, "start": T(start), "detected_at": T(end), "end": T(end),
            "evidence": "e", "details": {}}


def test_merge_with_open_flags_extend_insert_and_dedup():
    open_flags = pd.DataFrame([
        _open_flag("F-open1", "H1", "inactivity", "2026-07-12 03:00", "2026-07-12 09:00",
                   key="meter|M1|inactivity|2026-07-12T03:00"),
    ])
    new = pd.DataFrame([
        # starts 11 h after the open flag ended: the same situation → extends it
        _new_flag("meter|M1|inactivity|2026-07-12T20:00", "H1", "inactivity", "2026-07-12 20:00", "2026-07-13 02:00"),
        # the very same episode seen again → nothing
        _new_flag("meter|M1|inactivity|2026-07-12T03:00", "H1", "inactivity", "2026-07-12 03:00", "2026-07-12 10:00"),
        # three days later → a new flag
        _new_flag("meter|M1|inactivity|2026-07-15T03:00", "H1", "inactivity", "2026-07-15 03:00", "2026-07-15 09:00"),
        # other kind, other household → new flags
        _new_flag("meter|M1|night_activity|2026-07-12T10:00", "H1", "night_activity", "2026-07-12 10:00",
                  "2026-07-12 11:00"),
        _new_flag("meter|M2|inactivity|2026-07-12T10:00", "H2", "inactivity", "2026-07-12 10:00", "2026-07-12 12:00"),
    ])
    inserts, extends = merge_with_open_flags(new, open_flags)
    assert sorted(inserts.dedup_key) == sorted(["meter|M1|inactivity|2026-07-15T03:00",
                                                "meter|M1|night_activity|2026-07-12T10:00",
                                                "meter|M2|inactivity|2026-07-12T10:00"])
    assert list(inserts.columns) == list(new.columns)
    assert {"flag_id": "F-open1", "end": T("2026-07-13 02:00")} in extends.to_dict("records")
    assert set(extends.flag_id) == {"F-open1"}


def test_same_episode_seen_longer_extends_the_open_flag():
    key = "meter|M1|inactivity|2026-07-12T03:00"
    open_flags = pd.DataFrame([_open_flag("F-o", "H1", "inactivity", "2026-07-12 03:00", "2026-07-12 09:00", key=key)])
    new = pd.DataFrame([_new_flag(key, "H1", "inactivity", "2026-07-12 03:00", "2026-07-12 21:00")])
    inserts, extends = merge_with_open_flags(new, open_flags)
    assert inserts.empty
    assert extends.to_dict("records") == [{"flag_id": "F-o", "end": T("2026-07-12 21:00")}]


def test_extension_never_shortens_an_open_flag():
    open_flags = pd.DataFrame([_open_flag("F-o", "H1", "inactivity", "2026-07-12 00:00", "2026-07-13 00:00")])
    new = pd.DataFrame([_new_flag("inner", "H1", "inactivity", "2026-07-12 10:00", "2026-07-12 11:00")])
    inserts, extends = merge_with_open_flags(new, open_flags)
    assert inserts.empty
    assert all(e >= T("2026-07-13 00:00") for e in extends.end)


def test_merge_gap_boundary():
    assert MERGE_GAP == pd.Timedelta(hours=12)
    open_flags = pd.DataFrame([_open_flag("F-o", "H1", "inactivity", "2026-07-12 00:00", "2026-07-12 06:00")])
    at_gap = pd.DataFrame([_new_flag("a", "H1", "inactivity", "2026-07-12 18:00", "2026-07-12 20:00")])
    past_gap = pd.DataFrame([_new_flag("b", "H1", "inactivity", "2026-07-12 18:01", "2026-07-12 20:00")])
    assert merge_with_open_flags(at_gap, open_flags)[0].empty
    assert list(merge_with_open_flags(past_gap, open_flags)[0].dedup_key) == ["b"]


def test_merge_with_open_flag_without_end_extends():
    # A still-running open flag (no end yet) absorbs the next episode of the same kind.
    open_flags = pd.DataFrame([_open_flag("F-o", "H1", "sustained_drop", "2026-07-10 00:00", None)])
    new = pd.DataFrame([_new_flag("x", "H1", "sustained_drop", "2026-07-12 00:00", "2026-07-13 00:00")])
    inserts, extends = merge_with_open_flags(new, open_flags)
    assert inserts.empty
    assert extends.to_dict("records") == [{"flag_id": "F-o", "end": T("2026-07-13 00:00")}]


def test_merge_with_no_open_flags_inserts_all():
    new = pd.DataFrame([_new_flag("a", "H1", "inactivity", "2026-07-12 00:00", "2026-07-12 06:00"),
                        _new_flag("b", "H2", "inactivity", "2026-07-12 00:00", "2026-07-12 06:00")])
    inserts, extends = merge_with_open_flags(new, pd.DataFrame(columns=["flag_id", "dedup_key", "household_id",
                                                                        "kind", "start", "end"]))
    assert list(inserts.dedup_key) == ["a", "b"]
    assert extends.empty and list(extends.columns) == ["flag_id", "end"]


def test_merge_within_one_batch_gives_one_flag():
    new = pd.DataFrame([_new_flag("a", "H1", "inactivity", "2026-07-12 00:00", "2026-07-12 06:00"),
                        _new_flag("b", "H1", "inactivity", "2026-07-12 09:00", "2026-07-12 15:00")])
    inserts, _ = merge_with_open_flags(new, pd.DataFrame())
    assert len(inserts) == 1


# --- score_households / LEVELS ---------------------------------------------------------------

def test_levels_thresholds():
    assert LEVELS == (("红", 60), ("橙", 35), ("黄", 15), ("绿", 0))


def test_score_households_levels_and_reasons():
    hh = pd.DataFrame({
        "household_id": ["H0", "H1", "H2", "H3", "H4", "H5", "H6", "H7"],
        "grid_id": ["G1", "G1", "G1", "G2", "G2", "G2", "G3", "G3"],
        "categories": [[], ["dispute"], ["hardship"], [], [], ["dispute", "hardship"], [], None],
        "head_name": ["张三"] * 8,  # extra columns are not carried into the output
    })
    flags = pd.DataFrame([
        {"household_id": "H3", "severity": "critical", "evidence": "长时间无用电活动"},
        {"household_id": "H4", "severity": "high", "evidence": "走访记录中出现“离婚”等情况"},
        {"household_id": "H5", "severity": "medium", "evidence": "近90天内2次走访反映困难"},
        {"household_id": "H6", "severity": "low", "evidence": "e1"},
        {"household_id": "H6", "severity": "medium", "evidence": "e2"},
        {"household_id": "H6", "severity": "critical", "evidence": "e3"},
        {"household_id": "H6", "severity": "critical", "evidence": "e4"},
        {"household_id": "H6", "severity": "high", "evidence": "e5"},
        {"household_id": "H6", "severity": "high", "evidence": "e6"},
        {"household_id": "H7", "severity": "unknown", "evidence": "x"},
        {"household_id": "H-nobody", "severity": "critical", "evidence": "ignored"},
    ])
    s = score_households(hh, flags).set_index("household_id")
    assert list(s.columns) == ["grid_id", "risk_score", "risk_level", "risk_reasons"]
    assert s.risk_score.to_dict() == {"H0": 0.0, "H1": 15.0, "H2": 5.0, "H3": 60.0, "H4": 35.0, "H5": 40.0,
                                      "H6": 100.0, "H7": 10.0}
    assert s.risk_level.to_dict() == {"H0": "绿", "H1": "黄", "H2": "绿", "H3": "红", "H4": "橙", "H5": "橙",
                                      "H6": "红", "H7": "绿"}
    assert s.loc["H1", "risk_reasons"] == ["存在婚姻家庭矛盾"]
    assert s.loc["H5", "risk_reasons"] == ["近90天内2次走访反映困难", "存在婚姻家庭矛盾", "困难家庭"]  # gravest first
    assert s.loc["H3", "risk_reasons"] == ["长时间无用电活动"]
    assert s.loc["H6", "risk_reasons"] == ["e3", "e4", "e5", "e6", "e2"]  # at most five, gravest first
    assert s.loc["H0", "risk_reasons"] == []


def test_score_households_boundaries():
    hh = pd.DataFrame({"household_id": ["A", "B", "C"], "grid_id": ["G", "G", "G"],
                       "categories": [["dispute"], [], ["hardship"]]})
    # A: 15 + 20 = 35 → 橙 exactly; B: 20 + 10 + 20 + 10 = 60 → 红 exactly; C: 5 + 10 = 15 → 黄 exactly
    flags = pd.DataFrame({"household_id": ["A", "B", "B", "B", "B", "C"],
                          "severity": ["medium", "medium", "low", "medium", "low", "low"], "evidence": ["e"] * 6})
    s = score_households(hh, flags).set_index("household_id")
    assert s.risk_level.to_dict() == {"A": "橙", "B": "红", "C": "黄"}
    none = score_households(hh, pd.DataFrame()).set_index("household_id")
    assert none.risk_level.to_dict() == {"A": "黄", "B": "绿", "C": "绿"}


# --- risk_map --------------------------------------------------------------------------------

def _scored():
    return pd.DataFrame({"household_id": ["a", "b", "c", "d", "e"], "grid_id": ["G1", "G1", "G1", "G2", "G2"],
                         "risk_level": ["红", "绿", "绿", "橙", "橙"]})


def test_risk_map_counts_per_grid_and_level():
    m = risk_map(_scored(), date(2026, 7, 20))
    assert list(m.columns) == ["as_of", "grid_id", "level", "households", "change"]
    got = {(r.grid_id, r.level): r.households for r in m.itertuples()}
    assert got == {("G1", "红"): 1, ("G1", "绿"): 2, ("G2", "橙"): 2}
    assert (m.as_of == date(2026, 7, 20)).all()
    assert (m.change == 0).all()
    assert m.households.sum() == len(_scored())


def test_risk_map_change_against_previous():
    prev = pd.DataFrame({"as_of": [date(2026, 7, 19)] * 3, "grid_id": ["G1", "G1", "G2"],
                         "level": ["红", "绿", "黄"], "households": [3, 2, 1]})
    m = risk_map(_scored(), date(2026, 7, 20), prev)
    ch = {(r.grid_id, r.level): r.change for r in m.itertuples()}
    assert ch[("G1", "红")] == -2
    assert ch[("G1", "绿")] == 0
    assert ch[("G2", "橙")] == 2  # level new in this grid
    assert set(m.columns) == {"as_of", "grid_id", "level", "households", "change"}


def test_risk_map_reports_levels_that_dropped_to_zero():
    prev = pd.DataFrame({"as_of": [date(2026, 7, 19)], "grid_id": ["G2"], "level": ["黄"], "households": [1]})
    m = risk_map(_scored(), date(2026, 7, 20), prev)
    row = m[(m.grid_id == "G2") & (m.level == "黄")]
    assert len(row) == 1
    assert row.households.iloc[0] == 0 and row.change.iloc[0] == -1


def test_the_flow_judges_with_the_installations_silence_budget(monkeypatch):
    from sibifang.detectors import DetectorConfig
    from sibifang.settings import Settings, get_settings, reset_settings

    # what the flow's detect_meter_episodes task judges with
    assert get_settings().detector_config() == DetectorConfig()
    monkeypatch.setenv("SIBIFANG_SILENCE_ALARMS_PER_MONTH", "1.2")
    reset_settings()
    try:
        assert get_settings().detector_config() == DetectorConfig(false_alarms_per_month=1.2)
        # `sibifang detect --silence-budget` overrides it for one run
        assert get_settings().detector_config(2.0) == DetectorConfig(false_alarms_per_month=2.0)
    finally:
        monkeypatch.delenv("SIBIFANG_SILENCE_ALARMS_PER_MONTH")
        reset_settings()
    for bad in ("0", "-1", "nan", "inf", "abc"):
        monkeypatch.setenv("SIBIFANG_SILENCE_ALARMS_PER_MONTH", bad)
        with pytest.raises(ValueError, match="silence_alarms_per_month"):
            Settings()


# --- drop_answered_difficulties ----------------------------------------------------------------

def test_a_difficulty_closed_without_an_answer_answers_nothing():
    """A flag closed as corrected or because the family left the register (and came back) was
    not answered by anyone: the candidate it would silence is raised; one closed by a grid worker
    is not."""
    from sibifang.flag_risks import DEREGISTERED, RECORD_CORRECTED, drop_answered_difficulties

    new = pd.DataFrame([{"household_id": h, "kind": "unresolved_difficulty", "detected_at": T("2026-09-10 10:00")}
                        for h in ("HA", "HB", "HC")])
    closed = pd.DataFrame({"household_id": ["HA", "HB", "HC"], "closed_at": [T("2026-09-15 23:59:59")] * 3,
                           "outcome": ["visited_all_well", DEREGISTERED, RECORD_CORRECTED]})
    assert list(drop_answered_difficulties(new, closed).household_id) == ["HB", "HC"]
    # while the family is still off the register, its removal's closing stands
    assert list(drop_answered_difficulties(new, closed, still_off={"HB"}).household_id) == ["HC"]


@pytest.mark.parametrize("nothing", ["无。", "暂无。", "没有困难。", "无；", "无！", "无,", "無。", "无明显困难",
                                     "暂无特殊困难。", "无其他困难"])
def test_unresolved_difficulty_flags_read_nothing_ended_with_a_stop_as_nothing(nothing):
    """Clerks end "无" with a full stop as often as not: "无。" is no difficulty, and no measure."""
    none = pd.DataFrame([_dv("A1", "HA", "2026-06-01", nothing), _dv("A2", "HA", "2026-06-05", nothing)])
    assert unresolved_difficulty_flags(none, date(2026, 6, 10)).empty
    unanswered = pd.DataFrame([_dv("B1", "HB", "2026-06-01", "看病难", nothing),
                               _dv("B2", "HB", "2026-06-05", "看病难", nothing)])
    assert list(unresolved_difficulty_flags(unanswered, date(2026, 6, 10)).household_id) == ["HB"]


def test_score_households_reasons_name_the_gravest_findings_first_once_each():
    """Only five reasons are kept: a 红 level must not lose its critical finding behind five
    overdue visits read first, and one finding repeated is one reason."""
    hh = pd.DataFrame({"household_id": ["H"], "grid_id": ["G"], "categories": [["hardship"]]})
    flags = pd.DataFrame([*({"household_id": "H", "severity": "low", "evidence": f"逾期{i}"} for i in range(5)),
                          {"household_id": "H", "severity": "medium", "evidence": "困难"},
                          {"household_id": "H", "severity": "medium", "evidence": "困难"},
                          {"household_id": "H", "severity": "critical", "evidence": "长时间无用电活动"}])
    s = score_households(hh, flags).set_index("household_id")
    assert s.loc["H", "risk_level"] == "红"
    assert s.loc["H", "risk_reasons"] == ["长时间无用电活动", "困难", "逾期0", "逾期1", "逾期2"]


def test_visit_cue_flags_read_the_business_finding_too(lexicon):
    """企情 is one of the three findings of a visit: a husband gambling away the shop's money is
    written there, not in 家情."""
    v = pd.DataFrame([{"visit_id": "V1", "household_id": "H1", "visited_at": "2026-07-01 10:00", "notes": None,
                       "business_situation": "丈夫赌博输光店里资金", "family_situation": "无家暴"}])
    assert list(visit_cue_flags(v, lexicon).kind) == ["gambling"]
