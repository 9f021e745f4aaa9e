"""Channel adapters against real local receivers (no mocks of requests)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import logging
import time

import pytest
import requests

from sibifang.channels import (
    DINGTALK_BLOCK_SECONDS,
    WECOM_MARKDOWN_MAX_BYTES,
    Channel,
    DeliveryResult,
    OutgoingMessage,
    RateLimit,
    RateLimiter,
    channel_for,
    truncate_utf8,
)
from tests.http_receiver import (
    HttpReceiver,
    SmtpReceiver,
    verify_dingtalk,
    verify_feishu,
    verify_generic,
    verify_wecom,
)

WEBHOOK_SECRET = "whsec-Th1s-Is-Secret-42"
WECOM_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
DING_TOKEN = "dingaccesstoken0123456789abcdef"
DING_SECRET = "SEC0123456789abcdefdingtalksecret"
FEISHU_SECRET = "feishuSignSecret-9f8e7d"
ALL_SECRETS = [WEBHOOK_SECRET, WECOM_KEY, DING_TOKEN, DING_SECRET, FEISHU_SECRET]


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def msg(i: int = 1, text: str = "李奶奶家用电从昨晚8点起接近停止", severity: str = "high", markdown=None):
    return OutgoingMessage(alert_id=f"AL-{i}", dedup_key=f"F-{i}:C-1", severity=severity,
                           title="【较急】用电异常", text=text, markdown=markdown)


@pytest.fixture
def limiter():
    # A private limiter per test: the process-wide one would couple tests together.
    return RateLimiter(clock=FakeClock(0.0))


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


# --------------------------------------------------------------------------- generic webhook


def test_webhook_success_payload_and_signature(limiter, session):
    with HttpReceiver("generic", verifier=verify_generic(WEBHOOK_SECRET)) as rx:
        ch = channel_for("webhook", rx.url + "/hook", WEBHOOK_SECRET, rate_limiter=limiter)
        assert isinstance(ch, Channel)
        res = ch.send(msg(), session=session)
    assert res.ok and res.status_code == 200 and not res.retryable and res.latency_ms > 0
    body = rx.requests[0].json
    assert {"alert_id", "dedup_key", "severity", "text", "title", "sent_at"} <= set(body)
    assert body["alert_id"] == "AL-1" and body["severity"] == "high"
    assert rx.requests[0].headers["X-Sibifang-Signature"].startswith("sha256=")


def test_webhook_wrong_secret_is_permanent_failure(limiter):
    with HttpReceiver("generic", verifier=verify_generic(WEBHOOK_SECRET)) as rx:
        res = channel_for("webhook", rx.url, "another-secret", rate_limiter=limiter).send(msg())
    assert not res.ok and res.status_code == 401 and not res.retryable


def test_webhook_5xx_retryable_then_succeeds_with_fresh_signature(limiter, session):
    clock = FakeClock()
    with HttpReceiver("generic", down_first_requests=2,
                      verifier=verify_generic(WEBHOOK_SECRET, max_age_s=10**10)) as rx:
        ch = channel_for("webhook", rx.url, WEBHOOK_SECRET, rate_limiter=limiter, clock=clock)
        results = []
        for _ in range(3):
            results.append(ch.send(msg(), session=session))
            clock.advance(30)
    assert [r.ok for r in results] == [False, False, True]
    assert results[0].status_code == 503 and results[0].retryable
    sigs = {r.headers["X-Sibifang-Signature"] for r in rx.requests}
    stamps = [r.headers["X-Sibifang-Timestamp"] for r in rx.requests]
    assert len(sigs) == 3 and len(set(stamps)) == 3  # signed afresh on every attempt


def test_connection_refused_is_retryable_and_hides_url(limiter, caplog):
    rx = HttpReceiver("generic", down_first_seconds=30).start()  # bound, not listening
    try:
        url = f"{rx.url}/hook?token={WEBHOOK_SECRET}"
        with caplog.at_level(logging.DEBUG):
            res = channel_for("webhook", url, WEBHOOK_SECRET, rate_limiter=limiter, timeout=2).send(msg())
    finally:
        rx.stop()
    assert not res.ok and res.retryable and res.status_code is None
    assert "连接失败" in res.error
    assert WEBHOOK_SECRET not in res.error and "token=" not in res.error
    assert WEBHOOK_SECRET not in caplog.text and "token=" not in caplog.text


def test_timeout_is_retryable(limiter):
    with HttpReceiver("generic", response_delay=0.5) as rx:
        res = channel_for("webhook", rx.url, rate_limiter=limiter, timeout=0.1).send(msg())
    assert not res.ok and res.retryable and "超时" in res.error


def test_receiver_down_for_first_seconds_then_up(limiter):
    with HttpReceiver("generic", down_first_seconds=0.3) as rx:
        ch = channel_for("webhook", rx.url, rate_limiter=limiter, timeout=1)
        first = ch.send(msg())
        time.sleep(0.4)
        second = ch.send(msg())
    assert not first.ok and first.retryable
    assert second.ok and len(rx.requests) == 1


def test_dropped_connection_is_retryable(limiter):
    with HttpReceiver("generic", down_first_requests=1, down_mode="drop") as rx:
        ch = channel_for("webhook", rx.url, rate_limiter=limiter, timeout=2)
        first, second = ch.send(msg()), ch.send(msg())
    assert not first.ok and first.retryable
    assert second.ok


def test_4xx_permanent_429_retryable(limiter):
    with HttpReceiver("generic", fixed_response=(400, {"error": "bad"})) as rx:
        bad = channel_for("webhook", rx.url, rate_limiter=limiter).send(msg())
    with HttpReceiver("generic", rate_limit=(1, 60)) as rx:
        ch = channel_for("webhook", rx.url, rate_limiter=limiter)
        ok, limited = ch.send(msg(1)), ch.send(msg(2))
    assert not bad.ok and not bad.retryable and bad.status_code == 400
    assert ok.ok and not limited.ok and limited.retryable and limited.status_code == 429
    assert limited.retry_after == 1.0


def test_seeded_failure_fraction_is_reproducible(limiter, session):
    def run():
        with HttpReceiver("generic", fail_fraction=0.3, seed=7) as rx:
            ch = channel_for("webhook", rx.url, rate_limiter=limiter)
            return [ch.send(msg(i), session=session).ok for i in range(40)]
    a, b = run(), run()
    assert a == b and 0 < a.count(False) < 40


# --------------------------------------------------------------------------- WeCom


def wecom_url(rx):
    return f"{rx.url}/cgi-bin/webhook/send?key={WECOM_KEY}"


def test_wecom_success_markdown(limiter):
    with HttpReceiver("wecom", verifier=verify_wecom(WECOM_KEY)) as rx:
        res = channel_for("wecom", wecom_url(rx), rate_limiter=limiter).send(msg(markdown="**用电异常**"))
    assert res.ok and res.provider_code == "0"
    assert rx.requests[0].json == {"msgtype": "markdown", "markdown": {"content": "**用电异常**"}}


def test_wecom_body_rejection_is_failure(limiter, caplog):
    with HttpReceiver("wecom", verifier=verify_wecom("the-right-key")) as rx, caplog.at_level(logging.INFO):
        res = channel_for("wecom", wecom_url(rx), rate_limiter=limiter).send(msg())
    assert not res.ok and res.status_code == 200 and res.provider_code == "93000" and not res.retryable
    assert WECOM_KEY not in caplog.text and WECOM_KEY not in (res.error or "")


def test_wecom_truncates_at_4096_bytes_on_char_boundary(limiter):
    long_md = "用电异常提醒" * 1000  # 18,000 bytes of 3-byte characters
    with HttpReceiver("wecom", verifier=verify_wecom(WECOM_KEY)) as rx:
        res = channel_for("wecom", wecom_url(rx), rate_limiter=limiter).send(msg(markdown=long_md))
    assert res.ok
    content = rx.requests[0].json["markdown"]["content"]
    assert len(content.encode("utf-8")) <= WECOM_MARKDOWN_MAX_BYTES
    assert content.endswith("…") and long_md.startswith(content[:-1])


def _robot_url(kind, rx):
    return {"wecom": wecom_url, "dingtalk": ding_url, "feishu": feishu_url}[kind](rx)


@pytest.mark.parametrize("kind,limit", [("wecom", 4096), ("dingtalk", 18000), ("feishu", 18000)])
def test_a_robot_never_cuts_a_message_holding_a_link(limiter, caplog, kind, limit):
    """Cutting an alert at the robot's limit took its facts and its ack link and the alert still
    counted as sent. A message holding a link that does not fit is refused: no request, no robot
    quota spent, not retried (the same text would be refused again), a reason for the operator."""
    link = "http://127.0.0.1:8765/ack?t=" + "T" * 150
    text = "用电异常提醒" * (limit // 18 + 10) + f"\n[收到请点此确认]({link})"
    with HttpReceiver(kind) as rx, caplog.at_level(logging.INFO):
        res = channel_for(kind, _robot_url(kind, rx), rate_limiter=limiter).send(msg(text=text, markdown=text))
        assert rx.requests == []
    assert not res.ok and not res.retryable and res.provider_code == "too_long"
    assert f"超过上限 {limit} 字节" in res.error and "确认链接" in res.error and link not in res.error
    assert limiter.try_acquire(f"{kind}:{_robot_url(kind, rx)}", [RateLimit(1, 60.0)]) == 0.0  # quota untouched
    assert "too_long" in caplog.text and text[:30] not in caplog.text


def test_sms_never_cuts_its_link(limiter):
    """The SMS body was cut to its limit after the link was in it: the link lost its end. A text
    whose link would be cut is refused; one without a link is still shortened with "…"."""
    link = "https://sibifang.fulian.example-county.gov.cn/grassroots-service/ack?t=" + "T" * 150
    with HttpReceiver("sms", fixed_response=(200, {"result": {"code": 0}})) as rx:
        ch = channel_for("sms", "13800001234", rate_limiter=limiter, **sms_opts(rx))
        refused = ch.send(msg(text="李奶奶家用电从昨晚8点起接近停止，" * 8 + "确认：" + link))
        assert rx.requests == []
        fits = ch.send(msg(text="李奶奶家用电从昨晚8点起接近停止。确认：" + link))
        plain = ch.send(msg(text="李奶奶家用电从昨晚8点起接近停止，" * 30))
        sent = [r.json["content"] for r in rx.requests]
    assert not refused.ok and not refused.retryable and refused.provider_code == "too_long"
    assert "短信" in refused.error and "超过上限 300 字" in refused.error and "SIBIFANG_ACK_BASE_URL" in refused.error
    assert fits.ok and plain.ok and sent[0].endswith(link)
    assert len(sent[1]) == 300 and sent[1].endswith("…")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4095, 4096, 4097, 5000])
def test_truncate_utf8_bounds(n):
    text = ("a€😀用" * 2000)[:n]
    out = truncate_utf8(text, 4096)
    assert len(out.encode("utf-8")) <= 4096
    assert out == text or (out.endswith("…") and text.startswith(out[:-1]))


def test_wecom_busy_in_body_is_retryable(limiter):
    with HttpReceiver("wecom", fail_fraction=1.0, fail_in_body=True) as rx:
        res = channel_for("wecom", wecom_url(rx), rate_limiter=limiter).send(msg())
    assert not res.ok and res.status_code == 200 and res.provider_code == "-1" and res.retryable


def test_non_json_200_is_not_counted_as_sent(limiter):
    with HttpReceiver("wecom", fixed_response=(200, "<html>proxy</html>")) as rx:
        res = channel_for("wecom", wecom_url(rx), rate_limiter=limiter).send(msg())
    assert not res.ok and res.retryable


# --------------------------------------------------------------------------- DingTalk


def ding_url(rx):
    return f"{rx.url}/robot/send?access_token={DING_TOKEN}"


def test_dingtalk_signature_verified_and_fresh_per_attempt(limiter):
    clock = FakeClock(time.time())
    with HttpReceiver("dingtalk", down_first_requests=1,
                      verifier=verify_dingtalk(DING_TOKEN, DING_SECRET)) as rx:
        ch = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limiter=limiter, clock=clock)
        first = ch.send(msg())
        clock.advance(1.5)
        second = ch.send(msg())
    assert not first.ok and first.retryable and first.status_code == 503
    assert second.ok
    ts = [r.query["timestamp"][0] for r in rx.requests]
    signs = [r.query["sign"][0] for r in rx.requests]
    assert ts[0] != ts[1] and signs[0] != signs[1]
    assert rx.requests[1].json["msgtype"] == "markdown"


def test_dingtalk_wrong_secret_rejected_in_body(limiter, caplog):
    with HttpReceiver("dingtalk", verifier=verify_dingtalk(DING_TOKEN, DING_SECRET)) as rx, \
            caplog.at_level(logging.DEBUG):
        res = channel_for("dingtalk", ding_url(rx), "SECwrong", rate_limiter=limiter).send(msg())
    assert not res.ok and res.status_code == 200 and res.provider_code == "310000" and not res.retryable
    for s in (DING_TOKEN, "SECwrong"):
        assert s not in caplog.text and s not in res.error


def test_dingtalk_expired_signature_rejected(limiter):
    stale = FakeClock(time.time() - 2 * 3600)  # a signature older than an hour
    with HttpReceiver("dingtalk", verifier=verify_dingtalk(DING_TOKEN, DING_SECRET)) as rx:
        res = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limiter=limiter, clock=stale).send(msg())
    assert not res.ok and res.provider_code == "310000"


def test_dingtalk_burst_of_25_exactly_20_in_window(session):
    mono = FakeClock(0.0)
    limiter = RateLimiter(clock=mono)
    with HttpReceiver("dingtalk", rate_limit=(20, 60), verifier=verify_dingtalk(DING_TOKEN, DING_SECRET)) as rx:
        ch = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limiter=limiter)
        results = [ch.send(msg(i), session=session) for i in range(25)]
        sent = [r for r in results if r.ok]
        deferred = [r for r in results if not r.ok]
        assert len(sent) == 20 and len(rx.requests) == 20  # the 5 deferred never left
        assert all(r.retryable and r.provider_code == "local_rate_limit" for r in deferred)
        assert all(59 < r.retry_after <= 60 for r in deferred)
        assert all(r.provider_code == "0" for r in sent)  # the robot never said "too fast"
        # After the window slides, the rest go through. (The receiver counts real time, in which
        # no minute has passed, so its own limit is lifted for this part.)
        rx.rate_limit = None
        mono.advance(60.01)
        later = [ch.send(msg(100 + i), session=session) for i in range(5)]
    assert all(r.ok for r in later)


def test_dingtalk_wait_mode_sleeps_with_injected_clock(session):
    mono = FakeClock(0.0)
    limiter = RateLimiter(clock=mono)
    slept = []

    def fake_sleep(s):
        slept.append(s)
        mono.advance(s)

    with HttpReceiver("dingtalk") as rx:
        ch = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limiter=limiter,
                         wait_for_rate_limit=True, sleep=fake_sleep)
        results = [ch.send(msg(i), session=session) for i in range(25)]
    # 20 go at t=0; the 21st waits until the first ones leave the window, then 5 go.
    assert all(r.ok for r in results) and slept == [60.0]
    times = sorted(limiter._sent[f"dingtalk:{ding_url(rx)}"])
    for i in range(len(times) - 20):  # no 60-second window ever holds more than 20
        assert times[i + 20] - times[i] >= 60


def test_rate_limiter_can_be_switched_off(session):
    limiter = RateLimiter(clock=FakeClock(0.0), enabled=False)
    with HttpReceiver("dingtalk") as rx:
        ch = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limiter=limiter)
        results = [ch.send(msg(i), session=session) for i in range(25)]
    assert all(r.ok for r in results) and len(rx.requests) == 25


def test_dingtalk_too_fast_blocks_for_ten_minutes(session):
    mono = FakeClock(0.0)
    limiter = RateLimiter(clock=mono)
    with HttpReceiver("dingtalk", rate_limit=(2, 60)) as rx:  # the robot is stricter than we think
        ch = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limiter=limiter)
        r = [ch.send(msg(i), session=session) for i in range(3)]
        assert [x.ok for x in r] == [True, True, False]
        assert r[2].provider_code == "130101" and r[2].retryable and r[2].retry_after == DINGTALK_BLOCK_SECONDS
        mono.advance(300)
        held = ch.send(msg(9), session=session)
        assert not held.ok and held.provider_code == "local_rate_limit" and 299 < held.retry_after <= 300
        assert len(rx.requests) == 3


# --------------------------------------------------------------------------- Feishu


def feishu_url(rx):
    return f"{rx.url}/open-apis/bot/v2/hook/0a1b2c3d-feishu-hook-token-5678"


def test_feishu_signed_success_and_rejection(limiter, caplog):
    with HttpReceiver("feishu", verifier=verify_feishu(FEISHU_SECRET)) as rx, caplog.at_level(logging.DEBUG):
        good = channel_for("feishu", feishu_url(rx), FEISHU_SECRET, rate_limiter=limiter).send(msg())
        bad = channel_for("feishu", feishu_url(rx), "wrong-secret", rate_limiter=limiter).send(msg())
    assert good.ok and good.provider_code == "0"
    body = rx.requests[0].json
    assert body["msg_type"] == "text" and body["content"]["text"].startswith("李奶奶")
    assert not bad.ok and bad.status_code == 200 and bad.provider_code == "19021" and not bad.retryable
    assert "0a1b2c3d-feishu-hook-token-5678" not in caplog.text and FEISHU_SECRET not in caplog.text


def test_feishu_statuscode_zero_accepted(limiter):
    with HttpReceiver("feishu", fixed_response=(200, {"StatusCode": 0, "StatusMessage": "success"})) as rx:
        res = channel_for("feishu", feishu_url(rx), FEISHU_SECRET, rate_limiter=limiter).send(msg())
    assert res.ok


def test_feishu_five_per_second_and_hundred_per_minute(session):
    mono = FakeClock(0.0)
    limiter = RateLimiter(clock=mono)
    with HttpReceiver("feishu") as rx:
        ch = channel_for("feishu", feishu_url(rx), FEISHU_SECRET, rate_limiter=limiter)
        burst = [ch.send(msg(i), session=session).ok for i in range(7)]
        assert burst.count(True) == 5
        sent = 5
        for _ in range(1, 60):
            mono.advance(1.0)
            sent += sum(ch.send(msg(i), session=session).ok for i in range(6))
        assert sent == 100  # the per-minute cap binds before the per-second one
        assert len(rx.requests) == 100


def test_feishu_rate_limit_code_retryable(limiter):
    with HttpReceiver("feishu", rate_limit=(1, 60)) as rx:
        ch = channel_for("feishu", feishu_url(rx), FEISHU_SECRET, rate_limiter=limiter)
        first, second = ch.send(msg(1)), ch.send(msg(2))
    assert first.ok and not second.ok and second.provider_code == "11232" and second.retryable


# --------------------------------------------------------------------------- SMS


def sms_opts(rx, **kw):
    return dict(url=rx.url + "/sms/send", body_template={"to": "{phone}", "content": "{text}", "sign": "四必访",
                                                         "apikey": "{secret}"},
                success_path="result.code", success_values=[0], retryable_values=[1001], **kw)


def test_sms_template_and_success_predicate(limiter, caplog):
    reply = {"result": {"code": 0, "msgid": "x1"}}
    with HttpReceiver("sms", fixed_response=(200, reply)) as rx, caplog.at_level(logging.DEBUG):
        text = '李奶奶家用电异常 "请上门" ' + "详情" * 400
        res = channel_for("sms", "13800001234", "sms-api-key-000", rate_limiter=limiter,
                          **sms_opts(rx)).send(msg(text=text))
    assert res.ok and res.provider_code == "0"
    body = rx.requests[0].json
    assert body["to"] == "13800001234" and body["apikey"] == "sms-api-key-000"
    assert body["content"].startswith('李奶奶家用电异常 "请上门"') and len(body["content"]) <= 300
    assert "sms-api-key-000" not in caplog.text and "13800001234" not in caplog.text


def test_sms_predicate_false_is_failure(limiter):
    with HttpReceiver("sms", fixed_response=(200, {"result": {"code": 2001}})) as rx:
        res = channel_for("sms", "13800001234", rate_limiter=limiter, **sms_opts(rx)).send(msg())
    assert not res.ok and res.provider_code == "2001" and not res.retryable
    with HttpReceiver("sms", fixed_response=(200, {"result": {"code": 1001}})) as rx:
        res = channel_for("sms", "13800001234", rate_limiter=limiter, **sms_opts(rx)).send(msg())
    assert not res.ok and res.retryable


def test_sms_get_method_url_template(limiter):
    with HttpReceiver("sms", fixed_response=(200, {"status": "OK"})) as rx:
        ch = channel_for("sms", "13800001234", rate_limiter=limiter, method="GET",
                         url=rx.url + "/send?to={phone}&msg={text}", success_path="status", success_values=["OK"])
        res = ch.send(msg(text="请上门 & 电话联系"))
    assert res.ok and rx.requests[0].query["msg"] == ["请上门 & 电话联系"]


# --------------------------------------------------------------------------- e-mail


def test_email_delivered_to_real_smtp_server(limiter):
    with SmtpReceiver() as smtp:
        ch = channel_for("email", "zhuxi@example.org; ban@example.org", host="127.0.0.1", port=smtp.port,
                         from_addr="alerts@sibifang.local", rate_limiter=limiter)
        res = ch.send(msg(text="区妇联:本周有3条高风险告警待处理"))
    assert res.ok and res.status_code == 250
    mail = smtp.messages[0]
    assert mail.rcpt_to == ["zhuxi@example.org", "ban@example.org"]
    parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert parsed["Subject"] == "【较急】用电异常" and parsed["X-Sibifang-Alert-Id"] == "AL-1"
    assert "本周有3条高风险告警" in parsed.get_content()


def test_email_rejections_classified(limiter):
    with SmtpReceiver(reject_rcpt={"nobody@example.org": "550 no such user"}) as smtp:
        perm = channel_for("email", "nobody@example.org", port=smtp.port, rate_limiter=limiter).send(msg())
    with SmtpReceiver(fail_data_with="451 try again later") as smtp:
        temp = channel_for("email", "a@example.org", port=smtp.port, rate_limiter=limiter).send(msg())
    assert not perm.ok and not perm.retryable and perm.status_code == 550
    assert not temp.ok and temp.retryable and temp.status_code == 451


def test_email_server_down_retryable(limiter):
    rx = HttpReceiver("generic", down_first_seconds=30).start()  # a bound, non-listening port
    try:
        res = channel_for("email", "a@example.org", port=rx.port, timeout=2, rate_limiter=limiter).send(msg())
    finally:
        rx.stop()
    assert not res.ok and res.retryable


# --------------------------------------------------------------------------- factory


def test_channel_for_unknown_kind_and_repr_hides_key():
    with pytest.raises(ValueError, match="未知的告警通道类型"):
        channel_for("pager", "x")
    ch = channel_for("wecom", f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={WECOM_KEY}")
    assert WECOM_KEY not in repr(ch)


def test_results_are_frozen_dataclasses():
    r = DeliveryResult(True, 200, "0", None, False, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.ok = False  # type: ignore[misc]


def test_rate_limiter_multiple_windows_direct():
    clock = FakeClock(0.0)
    rl = RateLimiter(clock=clock)
    limits = (RateLimit(2, 1.0), RateLimit(3, 10.0))
    assert [rl.try_acquire("k", limits) for _ in range(3)][:2] == [0.0, 0.0]
    clock.advance(1.0)
    assert rl.try_acquire("k", limits) == 0.0
    assert rl.try_acquire("k", limits) == pytest.approx(9.0)
    assert rl.try_acquire("other", limits) == 0.0  # keys are independent


def test_feishu_fresh_signature_per_attempt(limiter):
    clock = FakeClock(time.time())
    with HttpReceiver("feishu", down_first_requests=1, verifier=verify_feishu(FEISHU_SECRET)) as rx:
        ch = channel_for("feishu", feishu_url(rx), FEISHU_SECRET, rate_limiter=limiter, clock=clock)
        first = ch.send(msg())
        clock.advance(2)
        second = ch.send(msg())
    assert not first.ok and first.retryable and second.ok
    a, b = (r.json for r in rx.requests)
    assert a["timestamp"] != b["timestamp"] and a["sign"] != b["sign"]


def test_sms_log_names_gateway_not_phone(limiter, caplog):
    with HttpReceiver("sms", fixed_response=(200, {"result": {"code": 0}})) as rx, caplog.at_level(logging.INFO):
        channel_for("sms", "13800001234", rate_limiter=limiter, **sms_opts(rx)).send(msg())
    assert "127.0.0.1" in caplog.text and "13800001234" not in caplog.text and "None" not in caplog.text


def test_receiver_503_for_first_seconds(limiter):
    with HttpReceiver("wecom", down_first_seconds=0.3, down_seconds_mode="503") as rx:
        ch = channel_for("wecom", wecom_url(rx), rate_limiter=limiter)
        first = ch.send(msg())
        time.sleep(0.35)
        second = ch.send(msg())
    assert not first.ok and first.status_code == 503 and first.retryable and first.retry_after == 1.0
    assert second.ok


def test_rate_limited_false_switches_limits_off(session):
    with HttpReceiver("dingtalk") as rx:
        ch = channel_for("dingtalk", ding_url(rx), DING_SECRET, rate_limited=False)
        assert all(ch.send(msg(i), session=session).ok for i in range(25))


def test_email_sender_alias():
    with SmtpReceiver() as smtp:
        res = channel_for("email", "a@example.org", port=smtp.port, sender="fulian@example.org",
                          rate_limited=False).send(msg())
    assert res.ok and smtp.messages[0].mail_from == "fulian@example.org"
