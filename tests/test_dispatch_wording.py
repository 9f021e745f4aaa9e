"""The one-line alert phrases (what happened, what to do) come from templates/dispatch_alerts/."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sibifang import dispatch_alerts as da
from sibifang.dispatch_alerts import TEMPLATE_DIR, what_happened, what_to_do

TZ = ZoneInfo("Asia/Shanghai")
PHRASE_TEMPLATES = ("what_happened.j2", "what_to_do.j2")


def _flag(kind: str, severity: str = "high", **extra) -> dict:
    return {"kind": kind, "severity": severity, "start": datetime(2024, 11, 19, 20, 0, tzinfo=TZ),
            "detected_at": datetime(2024, 11, 20, 7, 0, tzinfo=TZ), **extra}


@pytest.mark.parametrize(("flag", "expected"), [
    (_flag("inactivity", expected_kwh_per_h=0.35),
     "李奶奶家用电从昨晚8点起接近停止，平时此时段约0.35千瓦时/小时"),
    (_flag("inactivity"), "李奶奶家用电从昨晚8点起接近停止"),
    (_flag("sustained_drop", expected_kwh_per_h=12.4, observed_kwh_per_h=0.04),
     "李奶奶家用电从昨晚8点起明显下降，现在约0.04千瓦时/小时，平时此时段约12千瓦时/小时"),
    (_flag("night_activity"), "李奶奶家从昨晚8点起夜间用电异常，明显偏高"),
    (_flag("meter_offline"), "李奶奶家电表从昨晚8点起没有上传数据（可能停电或设备故障）"),
    (_flag("overdue_visit"), "李奶奶家已超过应走访的时间，尚未走访"),
    (_flag("domestic_violence"), "李奶奶家有家庭暴力线索，需要处理"),
    (_flag("something_new"), "李奶奶家出现需要关注的情况"),
])
def test_what_happened_exact(flag, expected):
    assert what_happened(flag, "李奶奶") == expected


@pytest.mark.parametrize(("flag", "role", "expected"), [
    (_flag("inactivity", "critical"), "grid_worker",
     "请立即上门查看（1小时内），路上先打电话联系；到不了请马上告诉村妇联主席"),
    (_flag("inactivity", "critical"), "village_chair",
     "请立即上门查看（1小时内），路上先打电话联系；到不了请马上告诉网格员或上级妇联"),
    (_flag("sustained_drop", "medium"), "grid_worker", "请在1天内电话联系或上门查看，确认老人平安"),
    (_flag("overdue_visit", "low"), "grid_worker", "请在3天内安排上门走访（或电话、微信联系）并记录"),
    (_flag("dispute", "high"), "grid_worker", "请在4小时内处理，必要时转木兰调解室或报告上级"),
    (_flag("visit_cue", "unknown"), "grid_worker", "请在1天内上门查看或电话联系"),
])
def test_what_to_do_exact(flag, role, expected):
    assert what_to_do(flag, role) == expected


def test_phrases_are_one_line_and_keep_who_as_given():
    for kind in [*da.KIND_LABEL, "something_new"]:
        for severity in da.SEVERITY_RANK:
            flag = _flag(kind, severity, expected_kwh_per_h=0.5, observed_kwh_per_h=2.0)
            happened, todo = what_happened(flag, " 赵爷爷 "), what_to_do(flag, "village_chair")
            assert "\n" not in happened and "\n" not in todo
            assert happened.startswith(" 赵爷爷 家") and happened == happened.rstrip()
            assert todo == todo.strip() and todo.startswith("请")


def test_every_phrase_template_exists_and_is_used(monkeypatch):
    for name in PHRASE_TEMPLATES:
        assert (TEMPLATE_DIR / "dispatch_alerts" / name).is_file()
    real_env = da.template_env()
    loaded: list[str] = []

    class RecordingEnv:
        def get_template(self, name, *args, **kwargs):
            loaded.append(name)
            return real_env.get_template(name, *args, **kwargs)

    monkeypatch.setattr(da, "template_env", lambda: RecordingEnv())
    what_happened(_flag("inactivity"), "李奶奶")
    what_to_do(_flag("inactivity", "critical"))
    assert loaded == [f"dispatch_alerts/{name}" for name in PHRASE_TEMPLATES]


def test_an_alert_held_overnight_counts_its_deadline_from_the_morning_send():
    rcpt = da.Recipient("GW1", "陈丽", "grid_worker", "webhook", "http://127.0.0.1:9/x", "grid_worker")
    flag = {**_flag("inactivity", "high"), "flag_id": "F1", "detected_at": datetime(2024, 11, 19, 22, 55, tzinfo=TZ)}
    household = {"head_name": "李秀英", "birth_year": 1940, "sex": "F", "address": "万堤村1号"}
    at_night = da.render_alert(flag, household, rcpt, "http://ack", now=datetime(2024, 11, 19, 22, 55, tzinfo=TZ))
    morning = da.render_alert(flag, household, rcpt, "http://ack", now=datetime(2024, 11, 20, 7, 1, tzinfo=TZ))
    assert "最晚：11月20日02:55" in at_night.markdown
    assert "最晚：11月20日11:01" in morning.markdown
    # the page behind the link, opened later, keeps the deadline of the message
    page = da.alert_page_context(flag, household, "grid_worker", "A1", now=datetime(2024, 11, 20, 9, 30, tzinfo=TZ),
                                 sent=datetime(2024, 11, 20, 7, 1, tzinfo=TZ))
    assert page["deadline"] == "11月20日11:01"


@pytest.mark.parametrize("text", [
    "万堤村1号（身份证330203194001011234）", "万堤村1号（身份证３３０２０３１９４００１０１１２３４）",
    "身份证 330203 19400101 1234", "身份证330203-19400101-123X", "老证号330203400101123",
])
def test_id_numbers_are_scrubbed_however_they_were_typed(text):
    out = da.scrub_id_numbers(text)
    assert "［身份证号已隐去］" in out
    assert not any(part in out for part in ("330203", "３３０２０３", "0101", "０１０１"))


@pytest.mark.parametrize("text", ["电话138 1234 5678，万堤村12号", "2024-11-20 08:00 起", "（３号楼）",
                                  "电话138.1234.5678", "约9.83000000000001千瓦时", "0.11122944400000001",
                                  "2024.11.20 08.00"])
def test_phone_numbers_and_dates_are_left_as_written(text):
    assert da.scrub_id_numbers(text) == text


@pytest.mark.parametrize(("text", "kept"), [
    # the spaces lost when an address was copied: the ID run together with the phone beside it
    ("石溪镇万堤村6组19号 户主身份证 330203194001011234 13800138000", "13800138000"),
    ("户主身份证33020319400101123413800138000", "13800138000"),
    ("电话13800138000330203194001011234", "13800138000"),
    ("身份证11010519491231002X13800138000", "13800138000"),
    ("老证号330203400101123 电话13800138000", "13800138000"),
    ("13833123419330203400101123", "13833123419"),
    # dots as separators, half- or full-width
    ("石溪镇万堤村6组19号（身份证330203.19400101.1234）", "万堤村6组19号"),
    ("身份证３３０２０３．１９４００１０１．１２３４", "身份证"),
    ("身份证 330203 - 19400101 - 1234 号", "号"),
])
def test_id_numbers_next_to_other_digits_or_split_by_dots_are_scrubbed(text, kept):
    out = da.scrub_id_numbers(text)
    assert "［身份证号已隐去］" in out and kept in out
    digits = out.translate(da._FOLD).replace(".", "").replace(" ", "").replace("-", "")
    assert not any(i in digits for i in ("330203194001011234", "11010519491231002X", "330203400101123"))


PROVINCES = ("11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42",
             "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82")
SEPARATORS = ("", " ", "-", ".", "\u3000", "－", "—", "．")


@st.composite
def id_numbers(draw) -> str:
    """A valid-looking resident ID: a province's region code, a real birth date, any sequence and
    check character; 18 characters, or the old 15 digits (born 19YY)."""
    region = draw(st.sampled_from(PROVINCES)) + draw(st.text("0123456789", min_size=4, max_size=4))
    seq = draw(st.text("0123456789", min_size=3, max_size=3))
    if draw(st.booleans()):
        born = draw(st.dates(date(1900, 1, 1), date(2099, 12, 31)))
        return f"{region}{born:%Y%m%d}{seq}" + draw(st.sampled_from("0123456789Xx"))
    born = draw(st.dates(date(1900, 1, 1), date(1999, 12, 31)))
    return f"{region}{born:%y%m%d}{seq}"


@st.composite
def typed(draw, number: str) -> str:
    """``number`` as a cadre may type it: cut anywhere into groups, each gap a separator (or none),
    in half- or full-width digits."""
    cuts = sorted(draw(st.sets(st.integers(1, len(number) - 1), max_size=5)))
    parts = [number[a:b] for a, b in zip([0, *cuts], [*cuts, len(number)])]
    out = parts[0]
    for p in parts[1:]:
        out += draw(st.sampled_from(SEPARATORS)) + p
    if draw(st.booleans()):
        out = out.translate({ord(c): chr(0xFF10 + int(c)) for c in "0123456789"} | {ord("X"): "Ｘ", ord("x"): "ｘ"})
    return out


SURROUNDINGS = st.text(alphabet="0123456789 -.号组村户主身份证电话（）,Xx", max_size=24)


@given(data=st.data(), number=id_numbers(), before=SURROUNDINGS, after=SURROUNDINGS)
@settings(max_examples=600, deadline=None)
def test_no_id_number_survives_wherever_it_is_typed(data, number, before, after):
    """Whatever stands beside it (other digits, a phone number, separators, X) and however it is
    split, the ID number does not come out whole."""
    if data.draw(st.booleans()):
        before += data.draw(st.from_regex(r"\A1[3-9][0-9]{9}\Z")) + data.draw(st.sampled_from(SEPARATORS))
    out = da.scrub_id_numbers(before + data.draw(typed(number)) + after)
    plain = "".join(c for c in out.translate(da._FOLD) if c not in " .-").upper()
    assert number.upper() not in plain


@given(phone=st.from_regex(r"\A1[3-9][0-9]{9}\Z"), data=st.data(),
       before=st.text(alphabet="号组村户主电话（）, ", max_size=8), after=st.text(alphabet="号组村（）, ", max_size=8))
@settings(max_examples=200, deadline=None)
def test_a_phone_number_is_left_as_written(phone, data, before, after):
    text = before + data.draw(typed(phone)) + after
    assert da.scrub_id_numbers(text) == text
