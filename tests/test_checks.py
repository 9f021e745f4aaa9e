"""Row-level checks GX cannot express: resident IDs, phones, dates, references, label maps."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sibifang import checks as C

# The worked example of GB 11643-1999 itself.
STANDARD_EXAMPLE = "11010519491231002X"


def s(*values):
    return pd.Series(list(values), dtype="str")


# ------------------------------------------------------------------ resident ID
def test_standard_example_is_valid():
    assert C.resident_id_check_char(STANDARD_EXAMPLE[:17]) == "X"
    assert C.resident_id_problems(s(STANDARD_EXAMPLE)).tolist() == ["ok"]
    # Clerks type a lower-case x and spaces.
    assert C.resident_id_problems(s("110105 19491231 002x")).tolist() == ["ok"]


def test_each_kind_of_bad_id_gets_its_code():
    first17 = "33020319700228006"
    good = first17 + C.resident_id_check_char(first17)
    wrong_check = first17 + ("0" if good[-1] != "0" else "1")
    feb30 = "33020319700230006"
    future = "330203" + f"{dt.date.today().year + 1}0101" + "006"
    before_1900 = "33020318991231006"
    values = s(good, wrong_check, feb30 + C.resident_id_check_char(feb30),
               future + C.resident_id_check_char(future),
               before_1900 + C.resident_id_check_char(before_1900),
               "12345", "33020319700228006Y", None, "")
    assert C.resident_id_problems(values).tolist() == [
        "ok", C.ID_BAD_CHECK_DIGIT, C.ID_BAD_BIRTH_DATE, C.ID_BAD_BIRTH_DATE, C.ID_BAD_BIRTH_DATE,
        C.ID_BAD_FORMAT, C.ID_BAD_FORMAT, "ok", "ok"]
    # Blank is "no problem" for the field check, but not a valid ID.
    assert C.valid_resident_id(values).tolist() == [True] + [False] * 8


@st.composite
def id_bodies(draw):
    area = draw(st.integers(110000, 659999))
    birth = draw(st.dates(dt.date(1900, 1, 1), dt.date(2020, 12, 31)))
    seq = draw(st.integers(0, 999))
    return f"{area:06d}{birth:%Y%m%d}{seq:03d}"


@settings(max_examples=200, deadline=None)
@given(id_bodies(), st.sampled_from("0123456789X"))
def test_exactly_one_check_char_is_valid(body, char):
    expected = C.resident_id_check_char(body)
    problem = C.resident_id_problems(s(body + char)).iloc[0]
    assert (problem == "ok") == (char == expected)
    if char != expected:
        assert problem == C.ID_BAD_CHECK_DIGIT


@settings(max_examples=25, deadline=None)
@given(st.lists(id_bodies(), min_size=1, max_size=40))
def test_vectorised_check_agrees_with_scalar(bodies):
    ids = [b + C.resident_id_check_char(b) for b in bodies]
    # Break every other one.
    broken = [i if n % 2 == 0 else i[:17] + ("1" if i[17] != "1" else "2") for n, i in enumerate(ids)]
    got = C.resident_id_problems(s(*broken)).tolist()
    assert got == ["ok" if n % 2 == 0 else C.ID_BAD_CHECK_DIGIT for n in range(len(ids))]


# ------------------------------------------------------------------ phones
@pytest.mark.parametrize("phone, ok", [
    ("13805740001", True), ("19912345678", True), ("+86 138 0574 0001", True), ("0086-13805740001", True),
    ("0574-87654321", True), ("010-1234567", True), ("12805740001", False), ("1380574000", False),
    ("138057400011", False), ("574-87654321", False), ("0574 87654321", False), ("abc", False), ("", False),
])
def test_phone_formats(phone, ok):
    assert bool(C.valid_phone(s(phone)).iloc[0]) == ok


def test_alert_address_fits_channel():
    channels = s("sms", "sms", "email", "email", "wecom", "webhook", None)
    addresses = s("13805740001", "https://x.invalid", "a@b.cn", "13805740001",
                  "https://qyapi.invalid/k", "ftp://x", None)
    assert C.valid_alert_address(channels, addresses).tolist() == [True, False, True, False, True, False, True]


# ------------------------------------------------------------------ dates
def test_datetime_local_and_offsets():
    values = s("2026-05-01 08:30", "2026-05-01T00:30:00+00:00", "2026-05-01", "2026-13-01 00:00", None)
    parsed, invalid = C.to_datetime_local(values)
    assert invalid.tolist() == [False, False, False, True, False]
    assert parsed.iloc[0] == pd.Timestamp("2026-05-01 08:30", tz="Asia/Shanghai")
    # 00:30 UTC is 08:30 in Shanghai.
    assert parsed.iloc[1] == parsed.iloc[0]


def test_dates_and_future():
    dates, invalid = C.to_date(s("2026-01-05", "2026/1/6", "2026-02-30", "2024-05-01 00:00:00", None))
    assert invalid.tolist() == [False, False, True, False, False]
    more, invalid = C.to_datetime_local(s("2026年1月5日 9:30", "2026.01.05 09:30:15", "05-01-2026"))
    assert more.iloc[0] == pd.Timestamp("2026-01-05 09:30", tz="Asia/Shanghai")
    assert invalid.tolist() == [False, False, True]  # day-first / month-first is ambiguous: refused
    assert dates.iloc[1] == pd.Timestamp("2026-01-06")
    now = dt.datetime(2026, 1, 5, 12, 0, tzinfo=C.LOCAL_TZ)
    assert C.not_in_future(dates, now=now).tolist() == [True, False, True, True, True]
    stamps = pd.Series(pd.to_datetime(["2026-01-05 12:05", "2026-01-05 13:00"])).dt.tz_localize(C.LOCAL_TZ)
    assert C.not_in_future(stamps, now=now).tolist() == [True, False]  # 10 minutes of clock skew allowed


# ------------------------------------------------------------------ references, values, maps
def test_references():
    assert C.known_reference(s("G1", "G9", None), {"G1"}).tolist() == [True, False, True]
    lists = C.split_list(s("G1;G2", "G1；G9", None, " G1 、 "))
    assert lists.tolist() == [["G1", "G2"], ["G1", "G9"], [], ["G1"]]
    assert C.known_references(lists, {"G1", "G2"}).tolist() == [True, False, True, True]


def test_bool_int_parsing():
    bools, invalid = C.to_bool(s("1", "0", "是", "否", "TRUE", "false", None, "maybe"), default=True)
    assert bools.tolist() == [True, False, True, False, True, False, True, False]
    assert invalid.tolist() == [False] * 7 + [True]
    ints, invalid = C.to_int(s("10", "10.0", "1.5", "x", None))
    assert ints.tolist()[:2] == [10, 10] and invalid.tolist() == [False, False, True, True, False]


def test_label_maps_cover_the_contract():
    assert C.VISIT_STEP_LABELS == {"identify": "亮明身份", "commit": "作出承诺", "listen": "倾听诉求",
                                   "guide": "分类引领", "serve": "精准服务"}
    assert set(C.CATEGORY_LABELS) == {"entrepreneur", "hardship", "empty_nest", "left_behind", "dispute"}
    assert set(C.ROLE_LABELS) == {"cadre", "executive_member", "vice_chair", "grid_worker", "village_chair",
                                  "mediator", "supervisor"}
    assert len(C.DEMAND_CATEGORY_LABELS) == 8
    # Every label and code maps back to its code.
    for labels, lookup in ((C.CATEGORY_LABELS, C.CATEGORY_LOOKUP), (C.ROLE_LABELS, C.ROLE_LOOKUP),
                           (C.VISIT_STEP_LABELS, C.VISIT_STEP_LOOKUP), (C.MODE_LABELS, C.MODE_LOOKUP),
                           (C.DEMAND_CATEGORY_LABELS, C.DEMAND_CATEGORY_LOOKUP),
                           (C.PROVIDER_TYPE_LABELS, C.PROVIDER_TYPE_LOOKUP)):
        for code, label in labels.items():
            assert lookup[code] == code and lookup[label] == code


def test_code_translation():
    codes, unknown = C.to_code(s("入户", "Phone", "微信", "飞鸽", None), C.MODE_LOOKUP)
    assert codes.tolist()[:3] == ["visit", "phone", "wechat"]
    assert unknown.tolist() == [False, False, False, True, False]
    steps, unknown = C.to_code_list(s("亮明身份访;作出承诺;listen", "identify;跳舞", None), C.VISIT_STEP_LOOKUP)
    assert steps.tolist() == [["identify", "commit", "listen"], ["identify"], []]
    assert unknown.tolist() == [False, True, False]
