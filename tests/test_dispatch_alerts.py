"""Routing, message rendering, masking, quiet hours, digests and acknowledgement tokens."""

from __future__ import annotations

import re
import string
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from pydantic import SecretStr

from sibifang.ack_tokens import (
    AckTokenError,
    BadAckSignature,
    ExpiredAckToken,
    ack_url,
    make_ack_token,
    verify_ack_token,
)
from sibifang.channels import RateLimiter, channel_for
from sibifang.dispatch_alerts import (
    NoRecipientError,
    PendingAlert,
    Recipient,
    build_digest,
    honorific,
    in_quiet_hours,
    reference_code,
    release_time,
    render_alert,
    route_flag,
    should_hold,
    when_phrase,
)
from sibifang.settings import Settings, reset_settings
from tests.http_receiver import HttpReceiver, verify_generic

SH = ZoneInfo("Asia/Shanghai")
ID_NUMBER = "330282194507121236"
HEAD_PHONE = "13905741234"
RELATIVE_PHONE = "13600001111"
WECOM_KEY = "wecom-key-5f0c7e1a-robot"


def make_flag(**kw):
    flag = dict(flag_id="F-20261122-001", household_id="H-0001", kind="inactivity", severity="high",
                start="2026-11-21 20:00", detected_at="2026-11-22 06:40",
                evidence="21:00 起连续10小时用电低于0.02千瓦时", expected_kwh_per_h=0.3, observed_kwh_per_h=0.01)
    flag.update(kw)
    return flag


def make_household(**kw):
    hh = dict(household_id="H-0001", head_name="李桂英", address="万地村三组18号(村口小卖部往东第二家)",
              grid_id="G-WD-03", grid_name="第三网格", village_name="万地村", phone=HEAD_PHONE,
              id_number=ID_NUMBER, birth_year=1945, sex="女",
              relatives=[{"name": "李建国", "relation": "儿子", "phone": RELATIVE_PHONE,
                          "id_number": "330282197003041234"}],
              members="李桂英(本人); 李建国(儿子,杭州,13600001111)",
              basic_situation="独居,患高血压", difficulties="行动不便")
    hh.update(kw)
    return hh


def make_cadres(rows=None):
    base = [
        dict(cadre_id="C-GW-1", name="王芳", phone="13700000001", role="grid_worker", grid_ids="G-WD-03",
             alert_channel="wecom", alert_address=f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={WECOM_KEY}",
             on_leave_from=None, on_leave_until=None),
        dict(cadre_id="C-GW-2", name="赵丽", phone="13700000002", role="grid_worker", grid_ids="G-WD-01;G-WD-02",
             alert_channel="sms", alert_address="13700000002", on_leave_from=None, on_leave_until=None),
        dict(cadre_id="C-VC-1", name="陈秀兰", phone="13700000003", role="village_chair",
             grid_ids="G-WD-01;G-WD-02;G-WD-03", alert_channel="dingtalk",
             alert_address="https://oapi.dingtalk.com/robot/send?access_token=abc", on_leave_from=None,
             on_leave_until=None),
        dict(cadre_id="C-SUP-1", name="区妇联值班", phone="", role="supervisor", grid_ids="",
             alert_channel="email", alert_address="duty@fulian.example.org", on_leave_from=None, on_leave_until=None),
    ]
    return pd.DataFrame(rows if rows is not None else base)


PLAIN = Settings(alert_webhook_url=None)


def rec(kind="wecom", role="grid_worker", rid="C-GW-1"):
    return Recipient(rid, "王芳", role, kind, "https://example.invalid/hook?key=k", "grid_worker")


# --------------------------------------------------------------------------- routing


def test_non_critical_goes_to_grid_worker_only():
    r = route_flag(make_flag(severity="high"), make_household(), make_cadres(), settings=PLAIN)
    assert [(x.recipient_id, x.reason) for x in r] == [("C-GW-1", "grid_worker")]
    assert r[0].channel_kind == "wecom"


def test_critical_also_goes_to_village_chair_at_once():
    r = route_flag(make_flag(severity="critical"), make_household(), make_cadres(), settings=PLAIN)
    assert [(x.recipient_id, x.reason) for x in r] == [("C-GW-1", "grid_worker"), ("C-VC-1", "critical")]


def test_no_grid_worker_goes_to_village_chair():
    cad = make_cadres()
    cad = cad[cad.cadre_id != "C-GW-1"]
    r = route_flag(make_flag(severity="low"), make_household(), cad, settings=PLAIN)
    assert [(x.recipient_id, x.reason) for x in r] == [("C-VC-1", "no_grid_worker")]


def test_grid_worker_on_leave_or_without_channel_counts_as_none():
    cad = make_cadres()
    cad.loc[cad.cadre_id == "C-GW-1", ["on_leave_from", "on_leave_until"]] = ["2026-11-20", "2026-11-30"]
    r = route_flag(make_flag(), make_household(), cad, settings=PLAIN)
    assert [x.recipient_id for x in r] == ["C-VC-1"]
    back = route_flag(make_flag(detected_at="2026-12-01 09:00"), make_household(), cad, settings=PLAIN)
    assert [x.recipient_id for x in back] == ["C-GW-1"]
    cad2 = make_cadres()
    cad2.loc[cad2.cadre_id == "C-GW-1", "alert_address"] = ""
    assert [x.recipient_id for x in route_flag(make_flag(), make_household(), cad2, settings=PLAIN)] == ["C-VC-1"]


def test_nobody_in_village_falls_back_to_supervisor_then_raises():
    hh = make_household(grid_id="G-ELSEWHERE")
    r = route_flag(make_flag(), hh, make_cadres(), settings=PLAIN)
    assert [(x.recipient_id, x.reason) for x in r] == [("C-SUP-1", "fallback_supervisor")]
    cad = make_cadres()
    with pytest.raises(NoRecipientError, match="没有可接收告警"):
        route_flag(make_flag(), hh, cad[cad.role != "supervisor"], settings=PLAIN)


def test_duplicate_rows_give_one_recipient():
    cad = make_cadres()
    cad = pd.concat([cad, cad[cad.cadre_id == "C-GW-1"]])
    assert [x.recipient_id for x in route_flag(make_flag(), make_household(), cad, settings=PLAIN)] == ["C-GW-1"]


def test_override_webhook_from_environment_replaces_every_channel(monkeypatch):
    monkeypatch.setenv("SIBIFANG_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/trial-hook")
    reset_settings()
    try:
        r = route_flag(make_flag(severity="critical"), make_household(), make_cadres())
    finally:
        monkeypatch.delenv("SIBIFANG_ALERT_WEBHOOK_URL")
        reset_settings()
    assert [x.recipient_id for x in r] == ["C-GW-1", "C-VC-1"]
    assert all(x.channel_kind == "webhook" and x.address == "http://127.0.0.1:9/trial-hook" and x.overridden
               for x in r)


def test_recipient_repr_hides_address():
    r = route_flag(make_flag(), make_household(), make_cadres(), settings=PLAIN)[0]
    assert WECOM_KEY not in repr(r) and WECOM_KEY not in str(r)


# --------------------------------------------------------------------------- rendering


def test_grandma_li_message_says_what_where_todo_and_ack():
    msg = render_alert(make_flag(), make_household(), rec("wecom"), "http://127.0.0.1:8765/ack/TOK")
    text = msg.text
    assert "李奶奶家用电从昨晚8点起接近停止，平时此时段约0.3千瓦时/小时" in text
    assert "万地村第三网格" in text and "万地村三组18号" in text
    assert "电话联系或上门查看" in text and "4小时内" in text and "最晚11月22日10:40" in text
    assert "http://127.0.0.1:8765/ack/TOK" in text and reference_code("F-20261122-001") in text
    assert msg.markdown and "[收到请点此确认](http://127.0.0.1:8765/ack/TOK)" in msg.markdown
    assert msg.alert_id == "F-20261122-001:C-GW-1" and msg.dedup_key == msg.alert_id
    assert msg.severity == "high" and msg.title.startswith("【较急】")


def test_time_phrase_follows_send_time_after_quiet_hours():
    flag = make_flag(start="2026-11-21 20:00", detected_at="2026-11-21 23:30")
    held = render_alert(flag, make_household(), rec(), "u", now=datetime(2026, 11, 22, 7, 0, tzinfo=SH))
    assert "昨晚8点" in held.text
    at_once = render_alert(flag, make_household(), rec(), "u")
    assert "今晚8点" in at_once.text


@pytest.mark.parametrize("kind", ["inactivity", "sustained_drop", "missing_morning_routine", "night_activity",
                                  "high_use", "meter_offline", "visit_cue", "overdue_visit", "dispute",
                                  "domestic_violence", "self_harm"])
@pytest.mark.parametrize("channel", ["webhook", "wecom", "dingtalk", "feishu", "sms", "email"])
@pytest.mark.parametrize("severity", ["critical", "low"])
def test_no_id_number_nor_phones_in_any_message(kind, channel, severity):
    msg = render_alert(make_flag(kind=kind, severity=severity), make_household(), rec(channel), "http://a/ack/t")
    digest = build_digest([PendingAlert("x", make_flag(kind=kind, severity="low"), make_household(), rec(channel),
                                        "http://a/ack/t")], rec(channel))
    for out in (msg.title, msg.text, msg.markdown or "", digest.text, digest.markdown or ""):
        compact = re.sub(r"\D", "", out)
        assert ID_NUMBER not in compact and ID_NUMBER[-6:] not in out
        assert HEAD_PHONE not in compact and RELATIVE_PHONE not in compact
        assert "330282" not in out and "李建国" not in out and "高血压" not in out


@pytest.mark.parametrize("kind", ["dispute", "domestic_violence", "self_harm"])
@pytest.mark.parametrize("channel", ["wecom", "dingtalk", "feishu", "sms"])
def test_sensitive_kinds_to_group_robots_only_code_and_urgency(kind, channel):
    flag = make_flag(kind=kind, severity="critical", evidence="丈夫酒后动手,邻居报告")
    msg = render_alert(flag, make_household(), rec(channel), "http://a/ack/t")
    code = reference_code(flag["flag_id"])
    assert f"有一条紧急事项需要您处理，编号 {code}" in msg.text
    assert "http://a/ack/t" in msg.text
    for out in (msg.title, msg.text, msg.markdown or ""):
        for leaked in ("李", "万地村", "第三网格", "三组18号", "家暴", "家庭暴力",
                       "轻生", "矛盾", "纠纷", "丈夫", "动手"):
            assert leaked not in out, (leaked, out)


def test_sensitive_kind_by_email_has_details_for_the_supervisor():
    msg = render_alert(make_flag(kind="domestic_violence", severity="critical"), make_household(),
                       rec("email", role="supervisor"), "http://a/ack/t")
    assert "家庭暴力" in msg.text and "万地村第三网格" in msg.text


def test_visit_findings_evidence_stays_behind_the_link():
    msg = render_alert(make_flag(kind="visit_cue", evidence="儿子常年不回家,老人说想不开"), make_household(),
                       rec("webhook"), "u")
    assert "想不开" not in msg.text and "走访中发现需要跟进" in msg.text


def test_chair_is_not_told_to_tell_herself():
    msg = render_alert(make_flag(severity="critical"), make_household(), rec("dingtalk", role="village_chair"), "u")
    assert "告诉网格员或上级妇联" in msg.text and "告诉村妇联主席" not in msg.text


def test_sms_text_short_and_keeps_the_link():
    long_link = "http://127.0.0.1:8765/ack/" + "x" * 160
    msg = render_alert(make_flag(), make_household(), rec("sms"), long_link)
    assert "\n" not in msg.text and msg.text.endswith(long_link) and len(msg.text) <= 300


# --------------------------------------------------------------------------- fitted to the channel, never cut

SIZE = {"wecom": lambda t: len(t.encode("utf-8")), "dingtalk": lambda t: len(t.encode("utf-8")),
        "feishu": lambda t: len(t.encode("utf-8")), "sms": lambda t: len(" ".join(t.split()))}
LIMIT = {"wecom": 4096, "dingtalk": 18000, "feishu": 18000, "sms": 300}
LINK = "http://127.0.0.1:8765/ack?t=" + "T" * 150
LONG_EVIDENCE = ("21:00 起连续10小时用电低于0.02千瓦时，身份证330282194507121236；"
                 + "按该户作息这样长的安静很少见，" * 700)


def _sent(kind, msg):
    return msg.text if kind in ("feishu", "sms") else (msg.markdown or msg.text)


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "feishu", "sms"])
def test_a_long_alert_is_fitted_to_its_channel_and_keeps_its_link_and_facts(kind):
    """Evidence far longer than the channel takes gives way (cut with "…"); the header, the place,
    the address, what to do, the deadline, the code and the link stay whole."""
    msg = render_alert(make_flag(evidence=LONG_EVIDENCE), make_household(), rec(kind), LINK)
    out = _sent(kind, msg)
    assert SIZE[kind](out) <= LIMIT[kind] and LINK in out
    assert "最晚11月22日10:40" in out.replace("：", "") and "4小时内" in out and ID_NUMBER not in out
    if kind != "sms":  # the SMS line never had the evidence, the place or the code
        assert "依据：21:00 起连续10小时用电低于0.02千瓦时" in out and "…" in out
        assert "万地村第三网格，万地村三组18号(村口小卖部往东第二家)" in out
        assert reference_code("F-20261122-001") in out
        assert out.splitlines()[0].lstrip("# ") == "【较急】长时间无用电活动"
    short = render_alert(make_flag(), make_household(), rec(kind), LINK)
    assert "…" not in _sent(kind, short)  # what fits is left as it is


def test_a_stored_body_is_fitted_for_the_link_that_fills_its_slot():
    """The outbox stores the link's slot and fills it at each send: the body leaves room for the
    link's length, so the body as sent fits, and uses that room (no more is cut than needed)."""
    slot = "{{ack_url}}"
    msg = render_alert(make_flag(evidence=LONG_EVIDENCE), make_household(), rec("wecom"), slot,
                       link_length=len(LINK))
    sent = msg.markdown.replace(slot, LINK)
    assert len(sent.encode("utf-8")) <= 4096 and LINK in sent
    assert len(sent.encode("utf-8")) > 4096 - 3 * 3  # cut a character or two short of the limit, no more
    without = render_alert(make_flag(evidence=LONG_EVIDENCE), make_household(), rec("wecom"), slot)
    assert len(without.markdown.replace(slot, LINK).encode("utf-8")) > 4096  # the link's length matters


def test_an_sms_whose_link_is_long_shortens_its_wording_never_the_link():
    long_link = "https://sibifang.fulian.example-county.gov.cn/grassroots-service/ack?t=" + "T" * 150
    msg = render_alert(make_flag(severity="critical"), make_household(), rec("sms"), long_link)
    assert len(msg.text) <= 300 and msg.text.endswith("确认：" + long_link)
    assert msg.text.startswith("【四必访】李奶奶家用电从昨晚8点起") and "…" in msg.text
    assert "最晚11月22日07:40" in msg.text  # the deadline is never shortened


def test_a_link_too_long_for_any_sms_is_left_for_the_channel_to_refuse():
    """Nothing to shorten would make it fit: the message is rendered whole (the SMS channel then
    refuses it rather than cut the link), not cut down to nothing."""
    huge = "https://example.org/" + "a" * 400
    for flag in (make_flag(), make_flag(kind="dispute")):
        msg = render_alert(flag, make_household(), rec("sms"), huge)
        assert msg.text.endswith(huge) and "…" not in msg.text


def test_a_digest_item_longer_than_the_robot_takes_goes_alone_fitted():
    """A digest is split, most urgent first, until each part fits; an item that alone is longer
    than the robot takes (a long address) was sent cut, its link lost. It is fitted: its address
    gives way, its link and deadline stay."""
    from tasks.dispatch_alerts import _digest_parts

    me = rec("wecom")
    now = datetime(2026, 11, 22, 7, 0, tzinfo=SH)
    alerts = [PendingAlert(f"a{i}", make_flag(flag_id=f"F{i}"), make_household(address=address), me,
                           f"http://127.0.0.1:8765/ack?t=TOKEN{i}" + "T" * 140)
              for i, address in enumerate(["万地村三组18号", "万地村五组" + "村口小卖部往东第二家，" * 200])]
    parts = _digest_parts(alerts, me, "wecom", now)
    assert [[a.alert_id for a in items] for items, _ in parts] == [["a0"], ["a1"]]
    for (_, msg), alert in zip(parts, alerts):
        assert len(msg.markdown.encode("utf-8")) <= 4096 and len(msg.text.encode("utf-8")) <= 4096
        assert f"[确认]({alert.ack_url})" in msg.markdown and alert.ack_url in msg.text
        assert "最晚11月22日11:00" in msg.markdown
    assert "（万地村第三网格，万地村五组村口小卖部往东第二家，" in parts[1][1].markdown and "…" in parts[1][1].markdown


@pytest.mark.parametrize("name,birth,sex,expected", [
    ("李桂英", 1945, "女", "李奶奶"), ("李德明", 1950, "男", "李爷爷"), ("欧阳娜娜", 1980, "F", "欧阳阿姨"),
    ("王强", 1975, "M", "王叔叔"), ("张敏", 1995, "female", "张女士"), ("李桂英", None, "女", "户主李某"),
    ("李桂英", 1945, None, "户主李某"), ("", 1945, "女", "该户"),
])
def test_honorific(name, birth, sex, expected):
    assert honorific(name, birth, sex, year=2026) == expected


@pytest.mark.parametrize("t,ref,expected", [
    ("2026-11-21 20:00", "2026-11-22 06:40", "昨晚8点"),
    ("2026-11-22 15:30", "2026-11-22 16:00", "今天下午3点半"),
    ("2026-11-22 06:05", "2026-11-22 09:00", "今天早上6点5分"),
    ("2026-11-22 02:00", "2026-11-22 09:00", "今天凌晨2点"),
    ("2026-11-19 10:00", "2026-11-22 09:00", "11月19日上午10点"),
    ("2026-11-21T12:00:00+00:00", "2026-11-22 09:00", "昨晚8点"),  # UTC input shown in local time
])
def test_when_phrase(t, ref, expected):
    assert when_phrase(t, ref) == expected


# --------------------------------------------------------------------------- digest


def test_digest_groups_non_critical_for_one_recipient_by_priority():
    me, other = rec("wecom"), rec("wecom", rid="C-OTHER")
    hh = make_household()
    alerts = [
        PendingAlert("a-low", make_flag(flag_id="F1", kind="overdue_visit", severity="low"), hh, me, "http://a/1"),
        PendingAlert("a-crit", make_flag(flag_id="F2", severity="critical"), hh, me, "http://a/2"),
        PendingAlert("a-high", make_flag(flag_id="F3", kind="sustained_drop", severity="high"), hh, me, "http://a/3"),
        PendingAlert("a-med", make_flag(flag_id="F4", kind="dispute", severity="medium"), hh, me, "http://a/4"),
        PendingAlert("a-other", make_flag(flag_id="F5", severity="high"), hh, other, "http://a/5"),
    ]
    d = build_digest(alerts, me, now=datetime(2026, 11, 22, 7, 0, tzinfo=SH))
    assert d.title == "待处理提醒汇总（3条）" and d.severity == "high"
    lines = [ln for ln in d.text.splitlines() if re.match(r"\d+\. ", ln)]
    assert [ln[:7] for ln in lines] == ["1. [较急]", "2. [一般]", "3. [提示]"]
    assert "http://a/2" not in d.text and "http://a/5" not in d.text
    assert "有一条事项需要处理，编号 " + reference_code("F4") in d.text and "矛盾" not in d.text  # masked
    again = build_digest(list(reversed(alerts)), me, now=datetime(2026, 11, 22, 7, 0, tzinfo=SH))
    assert again.alert_id == d.alert_id and again.text == d.text  # stable, order-independent
    assert build_digest(alerts[1:2], me) is None


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize("hour,minute,quiet", [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True),
                                               (6, 59, True), (7, 0, False), (12, 0, False)])
def test_in_quiet_hours(hour, minute, quiet):
    assert in_quiet_hours(datetime(2026, 11, 22, hour, minute, tzinfo=SH), settings=PLAIN) is quiet


def test_quiet_hours_use_local_time_for_utc_input():
    assert in_quiet_hours(datetime(2026, 11, 22, 15, 0, tzinfo=timezone.utc), settings=PLAIN)  # 23:00 Shanghai
    assert not in_quiet_hours(datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc), settings=PLAIN)  # 09:00


def test_release_time_and_hold():
    late = datetime(2026, 11, 22, 23, 30, tzinfo=SH)
    early = datetime(2026, 11, 23, 3, 0, tzinfo=SH)
    noon = datetime(2026, 11, 23, 12, 0, tzinfo=SH)
    assert release_time(late, settings=PLAIN) == datetime(2026, 11, 23, 7, 0, tzinfo=SH)
    assert release_time(early, settings=PLAIN) == datetime(2026, 11, 23, 7, 0, tzinfo=SH)
    assert release_time(noon, settings=PLAIN) == noon
    assert should_hold(make_flag(severity="high"), late, settings=PLAIN)
    assert not should_hold(make_flag(severity="critical"), late, settings=PLAIN)
    assert not should_hold(make_flag(severity="low"), noon, settings=PLAIN)
    assert in_quiet_hours(datetime(2026, 11, 22, 13, 0, tzinfo=SH), start=12, end=14)  # non-wrapping window


@hsettings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)),
       st.integers(0, 23), st.integers(0, 23))
def test_release_time_properties(naive, start, end):
    now = naive.replace(tzinfo=SH)
    out = release_time(now, start=start, end=end)
    assert out >= now and out - now <= timedelta(hours=24)
    assert not in_quiet_hours(out, start=start, end=end)


# --------------------------------------------------------------------------- ack tokens

SECRET = "ack-signing-secret-7f3e"
T0 = datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc)


def test_token_round_trip_and_url():
    tok = make_ack_token("F-1:C-GW-1", "C-GW-1", SECRET, timedelta(hours=72), T0)
    assert set(tok) <= set(string.ascii_letters + string.digits + "-_.")
    claims = verify_ack_token(tok, SECRET, T0 + timedelta(hours=71))
    assert claims.alert_id == "F-1:C-GW-1" and claims.recipient_id == "C-GW-1"
    assert claims.expires_at == T0 + timedelta(hours=72) and claims.issued_at == T0
    assert ack_url("http://127.0.0.1:8765/", tok) == f"http://127.0.0.1:8765/ack?t={tok}"
    assert verify_ack_token(tok, SecretStr(SECRET), T0).alert_id == "F-1:C-GW-1"


def test_token_expired():
    tok = make_ack_token("A", "C", SECRET, 72, T0)  # hours as a number
    with pytest.raises(ExpiredAckToken, match="已过期"):
        verify_ack_token(tok, SECRET, T0 + timedelta(hours=72))


def test_token_tampered_or_wrong_secret():
    tok = make_ack_token("A-1", "C-1", SECRET, timedelta(hours=1), T0)
    payload, sig = tok.split(".")
    other_payload = make_ack_token("A-2", "C-1", SECRET, timedelta(hours=1), T0).split(".")[0]
    with pytest.raises(BadAckSignature):
        verify_ack_token(f"{other_payload}.{sig}", SECRET, T0)
    longer = make_ack_token("A-1", "C-1", SECRET, timedelta(days=365), T0).split(".")[0]
    with pytest.raises(BadAckSignature):  # extending the expiry breaks the signature
        verify_ack_token(f"{longer}.{sig}", SECRET, T0)
    with pytest.raises(BadAckSignature):
        verify_ack_token(tok, "another-secret", T0)
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    with pytest.raises(BadAckSignature):
        verify_ack_token(f"{payload}.{flipped}", SECRET, T0)


@pytest.mark.parametrize("bad", ["", "abc", "a.b.c", "!!!.???", "x" * 5000])
def test_token_malformed(bad):
    with pytest.raises(AckTokenError) as err:
        verify_ack_token(bad, SECRET, T0)
    assert SECRET not in str(err.value)


def test_token_errors_never_show_secret_or_token():
    tok = make_ack_token("A", "C", SECRET, 1, T0)
    for now, secret in ((T0 + timedelta(hours=2), SECRET), (T0, "wrong-secret-xyz")):
        with pytest.raises(AckTokenError) as err:
            verify_ack_token(tok, secret, now)
        assert SECRET not in str(err.value) and "wrong-secret-xyz" not in str(err.value) and tok not in str(err.value)


def test_token_naive_clock_is_the_installations_local_time():
    # naive times are Asia/Shanghai as stored in the database, even on a host whose clock is UTC
    from sibifang.settings import local_now

    tok = make_ack_token("A", "C", SECRET, 1, local_now())
    assert verify_ack_token(tok, SECRET, datetime.now(timezone.utc)).alert_id == "A"
    with pytest.raises(ExpiredAckToken):
        verify_ack_token(tok, SECRET, local_now() + timedelta(hours=1, seconds=1))
    with pytest.raises(ExpiredAckToken):
        verify_ack_token(tok, SECRET, datetime.now(timezone.utc) + timedelta(hours=1, seconds=1))


@hsettings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=30))
def test_token_round_trip_any_ids(alert_id, recipient_id):
    tok = make_ack_token(alert_id, recipient_id, SECRET, 1, T0)
    claims = verify_ack_token(tok, SECRET, T0)
    assert (claims.alert_id, claims.recipient_id) == (alert_id, recipient_id)


# --------------------------------------------------------------------------- end to end


ACK_KEY = "a-signing-key-for-this-test-only"


def test_route_render_send_through_override_webhook(caplog):
    secret = "trial-webhook-secret-123"
    with HttpReceiver("generic", verifier=verify_generic(secret)) as rx:
        cfg = Settings(alert_webhook_url=rx.url + "/trial", alert_webhook_secret=SecretStr(secret))
        flag, hh = make_flag(kind="domestic_violence", severity="critical"), make_household()
        recipients = route_flag(flag, hh, make_cadres(), settings=cfg)
        limiter = RateLimiter()
        results = []
        for r in recipients:
            tok = make_ack_token(f"{flag['flag_id']}:{r.recipient_id}", r.recipient_id, ACK_KEY,
                                 cfg.ack_token_ttl_hours, T0)
            msg = render_alert(flag, hh, r, ack_url(cfg.ack_base_url, tok))
            ch = channel_for(r.channel_kind, r.address, cfg.alert_webhook_secret, rate_limiter=limiter)
            results.append(ch.send(msg))
    assert all(x.ok for x in results) and len(rx.requests) == 2
    for req in rx.requests:
        body = req.body.decode("utf-8")
        assert ID_NUMBER not in body and RELATIVE_PHONE not in body and HEAD_PHONE not in body
        link = re.search(r"/ack\?t=([\w.\-]+)", req.json["text"]).group(1)
        assert verify_ack_token(link, ACK_KEY, T0).recipient_id in ("C-GW-1", "C-VC-1")
    assert secret not in caplog.text


def test_csv_blanks_as_nan_are_no_channel(tmp_path):
    path = tmp_path / "cadres.csv"
    make_cadres().assign(alert_channel=lambda d: d.alert_channel.where(d.cadre_id != "C-GW-1", None)).to_csv(
        path, index=False)
    cad = pd.read_csv(path, dtype={"on_leave_from": "object"})
    assert cad.alert_channel.isna().any()  # blanks really are NaN here
    r = route_flag(make_flag(), make_household(), cad, settings=PLAIN)
    assert [x.recipient_id for x in r] == ["C-VC-1"] and r[0].channel_kind == "dingtalk"


def test_render_accepts_outbox_style_recipient_objects():
    class EscalationTarget:  # what the escalation step passes: cadre_id/channel, not recipient_id/channel_kind
        def __init__(self):
            self.cadre_id, self.role, self.name, self.channel, self.address = (
                "C-SUP-1", "supervisor", "值班", "wecom", "x")

    msg = render_alert(make_flag(kind="dispute", severity="critical"), make_household(), EscalationTarget(), "u")
    assert msg.alert_id == "F-20261122-001:C-SUP-1" and "有一条紧急事项需要您处理" in msg.text
    r = route_flag(make_flag(), make_household(), make_cadres(), settings=PLAIN)[0]
    assert (r.cadre_id, r.channel, r.address) == ("C-GW-1", "wecom", r.address)


def test_grid_ids_as_lists_like_the_database_returns():
    cad = make_cadres()
    cad["grid_ids"] = cad["grid_ids"].map(lambda s: [g for g in s.split(";") if g])
    cad = cad[["cadre_id", "name", "role", "grid_ids", "alert_channel", "alert_address"]]  # no leave columns
    r = route_flag(make_flag(severity="critical"), make_household(), cad, settings=PLAIN)
    assert [x.recipient_id for x in r] == ["C-GW-1", "C-VC-1"]
