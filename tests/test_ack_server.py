"""The acknowledgement page over real HTTP: opening a link shows the alert and records nothing;
the buttons (POST) record; bad and expired links are refused in Chinese; the signing key."""

from __future__ import annotations

import os
import re
import stat
import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from schemas.models import Alert, Area, Cadre, Household, RiskFlag
from sibifang.ack_tokens import ack_url, make_ack_token
from sibifang.db import migrate, session_scope, upsert
from sibifang.settings import local_now

KEY = "a-test-signing-key-of-32-chars!!"
ID_NUMBER = "330203194001011234"


@pytest.fixture
def site(tmp_path):
    """A household with two open flags (a meter silence, a visit finding) and one alert each."""
    url = f"sqlite:///{tmp_path / 'ack.db'}"
    migrate(url)
    now = local_now().replace(microsecond=0)
    with session_scope(url) as s:
        upsert(s, Area, [
            {"id": "V1", "level": "village", "name": "万堤村", "parent_id": None, "village_kind": "村"},
            {"id": "G1", "level": "grid", "name": "万堤村第1网格", "parent_id": "V1", "village_kind": None},
        ], key=["id"])
        s.add(Household(id="H1", head_name="李秀英", grid_id="G1", address="万堤村3组12号",
                        categories=["elderly_alone"], birth_year=1942, sex="F", id_number=ID_NUMBER))
        s.flush()
        s.add_all([
            RiskFlag(id="F1", dedup_key="meter|M1|inactivity|x", household_id="H1", meter_id="M1", kind="inactivity",
                     severity="critical", score=9.0, start=now - timedelta(hours=9), detected_at=now,
                     evidence="从昨晚8点起用电接近停止", details={"expected_kwh_per_h": 0.3}, status="open"),
            RiskFlag(id="F2", dedup_key="visit|V9|domestic_violence", household_id="H1", kind="domestic_violence",
                     severity="high", score=1.0, start=now, detected_at=now, status="open",
                     evidence=f"走访记录提到丈夫酒后动手（身份证{ID_NUMBER}）", details={}),
        ])
        s.flush()
        for aid, fid, sev in (("A1", "F1", "critical"), ("A2", "F2", "high")):
            s.add(Alert(id=aid, dedup_key=f"d-{aid}", flag_id=fid, recipient_id="GW1", recipient_role="grid_worker",
                        channel="sms", address="13800000000", severity=sev, title="t", body="b", status="sent",
                        created_at=now))
    return url


@pytest.fixture
def server(site):
    from sibifang.ack_server import make_ack_server

    srv = make_ack_server(port=0, database_url=site, secret=KEY)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", site
    srv.shutdown()
    srv.server_close()


def _link(base, alert_id, *, issued=None, ttl=72, key=KEY):
    return ack_url(base, make_ack_token(alert_id, "GW1", key, ttl, issued or local_now()))


def _state(url, alert_id):
    with session_scope(url) as s:
        a = s.get(Alert, alert_id)
        return a.acked_at, a.outcome, s.get(RiskFlag, a.flag_id).status


def _token(link):
    return re.search(r"t=([^&]+)", link).group(1)


def test_opening_the_link_shows_the_alert_and_records_nothing(server):
    base, url = server
    page = requests.get(_link(base, "A1"), timeout=5)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    text = page.text
    assert "用电接近停止" in text and "万堤村第1网格" in text and "万堤村3组12号" in text
    assert "万堤村万堤村" not in text  # the grid's name already holds the village's
    assert "请立即上门查看" in text and 'method="post"' in text
    assert ID_NUMBER not in text
    assert _state(url, "A1") == (None, None, "open")  # a link preview must not stop the escalation


def test_a_sensitive_finding_is_shown_behind_the_link_without_the_id_number(server):
    base, url = server
    text = requests.get(_link(base, "A2"), timeout=5).text
    assert "家庭暴力" in text and "丈夫酒后动手" in text  # the SMS said only "open the link"
    assert ID_NUMBER not in text and "身份证号已隐去" in text


def test_the_buttons_record_received_then_the_outcome(server):
    base, url = server
    tok = _token(_link(base, "A1"))
    r = requests.post(f"{base}/ack", data={"t": requests.utils.unquote(tok), "outcome": ""}, timeout=5)
    assert r.status_code == 200 and "已确认收到" in r.text
    acked_at, outcome, status = _state(url, "A1")
    assert acked_at is not None and outcome is None and status == "acknowledged"
    r = requests.post(f"{base}/ack", data={"t": requests.utils.unquote(tok), "outcome": "visited_all_well"},
                      timeout=5)
    assert r.status_code == 200 and "已上门，一切正常" in r.text
    assert _state(url, "A1")[1:] == ("visited_all_well", "closed")
    # once answered, the page says so and offers no more answers: only the correction of a wrong
    # tap to the other visit outcome (test_alert_correction)
    again = requests.get(_link(base, "A1"), timeout=5).text
    assert "已记录处理结果" in again and re.findall(r'<button name="outcome" value="([^"]*)"', again) == ["needs_help"]


@pytest.mark.parametrize("make, expect", [
    (lambda base: _link(base, "A1", key="another-key-of-enough-length"), "签名无效"),
    (lambda base: _link(base, "A1", issued=local_now() - timedelta(hours=80)), "已过期"),
    (lambda base: f"{base}/ack?t=garbage", "格式不正确"),
    (lambda base: _link(base, "NO-SUCH-ALERT"), "没有编号为"),
])
def test_bad_links_are_refused_in_chinese(server, make, expect):
    base, url = server
    link = make(base)
    r = requests.get(link, timeout=5)
    assert r.status_code == 400 and expect in r.text
    assert _token(link) not in r.text and KEY not in r.text
    posted = requests.post(f"{base}/ack", data={"t": requests.utils.unquote(_token(link)), "outcome": "escalate"},
                           timeout=5)
    assert posted.status_code == 400
    assert _state(url, "A1") == (None, None, "open")


def test_an_unknown_outcome_is_refused(server):
    base, url = server
    tok = requests.utils.unquote(_token(_link(base, "A1")))
    r = requests.post(f"{base}/ack", data={"t": tok, "outcome": "all_good"}, timeout=5)
    assert r.status_code == 400 and "无法识别" in r.text
    assert _state(url, "A1") == (None, None, "open")


def test_without_a_configured_key_each_installation_makes_its_own(tmp_path, monkeypatch):
    from sibifang.settings import Settings

    monkeypatch.delenv("SIBIFANG_ACK_SECRET", raising=False)
    a = Settings(data_dir=tmp_path / "a").ack_signing_key()
    assert len(a) >= 32 and a == Settings(data_dir=tmp_path / "a").ack_signing_key()  # stable across restarts
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "ack_secret.key").st_mode) == 0o600
    assert Settings(data_dir=tmp_path / "b").ack_signing_key() != a  # no shared default key


def test_a_configured_key_wins_and_a_weak_one_is_refused_unprinted(tmp_path, monkeypatch):
    from sibifang.settings import Settings

    monkeypatch.setenv("SIBIFANG_ACK_SECRET", KEY)
    assert Settings(data_dir=tmp_path).ack_signing_key() == KEY
    assert not (tmp_path / "ack_secret.key").exists()
    monkeypatch.setenv("SIBIFANG_ACK_SECRET", "change-me")
    with pytest.raises(ValueError) as err:
        Settings(data_dir=tmp_path).ack_signing_key()
    assert "change-me" not in str(err.value)


def test_settings_repr_hides_credentials(monkeypatch):
    from sibifang.settings import Settings

    monkeypatch.setenv("SIBIFANG_DATABASE_URL", "postgresql+psycopg://sibi:S3cretPw@db:5432/x")
    monkeypatch.setenv("SIBIFANG_SMS_HEADERS", '{"Authorization": "Bearer tok-123"}')
    monkeypatch.setenv("SIBIFANG_ALERT_WEBHOOK_URL", "https://hook.example/x?key=k-456")
    text = repr(Settings()) + str(Settings())
    assert "S3cretPw" not in text and "tok-123" not in text and "k-456" not in text
    assert Settings().database_url.endswith("@db:5432/x")  # still there for the code that needs it



def test_needs_escalation_says_whether_anyone_above_was_told(server):
    base, url = server
    tok = requests.utils.unquote(_token(_link(base, "A1")))
    r = requests.post(f"{base}/ack", data={"t": tok, "outcome": "escalate"}, timeout=5)
    # this site has no chair or supervisor on record: she is told to phone one
    assert r.status_code == 200 and "需上报处理" in r.text and "请直接电话联系" in r.text
    assert _state(url, "A1")[1:] == ("escalate", "open")
    with session_scope(url) as s:
        s.add(Cadre(id="VC1", name="王秀英", role="village_chair", grid_ids=["G1"], alert_channel="sms",
                    alert_address="13900000000"))
    r = requests.post(f"{base}/ack", data={"t": requests.utils.unquote(_token(_link(base, "A2"))),
                                           "outcome": "escalate"}, timeout=5)
    assert "已转报上一级" in r.text
    with session_scope(url) as s:
        up = s.scalars(select(Alert).where(Alert.flag_id == "F2", Alert.escalation_level > 0)).all()
        assert [(a.recipient_id, a.escalation_level, a.status) for a in up] == [("VC1", 1, "pending")]


def test_a_link_posted_again_after_the_outcome_keeps_the_outcome(server):
    """Once she closed the flag, the page offers no more buttons; the same form posted again (a
    double tap, the browser re-posting it) with the same outcome is that answer again, and 需上报处理
    is refused on the page (409) while the flag stays closed (需要帮助 is the one correction a wrong
    tap may get: test_alert_correction)."""
    base, url = server
    tok = requests.utils.unquote(_token(_link(base, "A1")))
    r = requests.post(f"{base}/ack", data={"t": tok, "outcome": "visited_all_well"}, timeout=5)
    assert r.status_code == 200
    closed = _state(url, "A1")
    again = requests.post(f"{base}/ack", data={"t": tok, "outcome": "visited_all_well"}, timeout=5)
    assert again.status_code == 200 and "处理结果：已上门，一切正常" in again.text
    for outcome in ("escalate",):
        r = requests.post(f"{base}/ack", data={"t": tok, "outcome": outcome}, timeout=5)
        assert r.status_code == 409
        assert "已记录处理结果：已上门，一切正常" in r.text and "不能再改为" in r.text
        assert "<button" not in r.text and "用电接近停止" in r.text     # the alert, without buttons
        assert tok not in r.text                                         # no form: no token
    assert _state(url, "A1") == closed
    with session_scope(url) as s:
        assert s.scalars(select(Alert.id).where(Alert.flag_id == "F1")).all() == ["A1"]


def test_the_page_of_another_alert_of_a_closed_flag_offers_no_outcome(server):
    """The chair's alert of the same flag: once the grid worker closed it, her page says so and
    shows no outcome buttons, and an outcome posted anyway is refused."""
    base, url = server
    with session_scope(url) as s:
        s.add(Alert(id="A3", dedup_key="d-A3", flag_id="F1", recipient_id="VC1", recipient_role="village_chair",
                    channel="sms", address="13900000000", severity="critical", title="t", body="b", status="sent",
                    created_at=local_now()))
    before = requests.get(_link(base, "A3"), timeout=5).text
    assert "<button" in before and "已结案" not in before
    tok = requests.utils.unquote(_token(_link(base, "A1")))
    assert requests.post(f"{base}/ack", data={"t": tok, "outcome": "visited_all_well"}, timeout=5).status_code == 200
    page = requests.get(_link(base, "A3"), timeout=5)
    assert page.status_code == 200 and "已结案" in page.text and "<button" not in page.text
    chair = requests.utils.unquote(_token(_link(base, "A3")))
    r = requests.post(f"{base}/ack", data={"t": chair, "outcome": "escalate"}, timeout=5)
    assert r.status_code == 409 and "已结案" in r.text
    assert _state(url, "A3")[1:] == (None, "closed")
