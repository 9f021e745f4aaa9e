"""The acknowledgement server against hostile or broken requests, over real HTTP: every one gets
an answer (never a dropped connection or a held thread) and records nothing it should not; an
outcome posted twice at once is recorded once."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from schemas.models import Alert, Area, AuditEvent, Household, RiskFlag, ServiceNeed
from sibifang.ack_tokens import ack_url, make_ack_token
from sibifang.db import migrate, session_scope, upsert
from sibifang.settings import local_now

KEY = "a-test-signing-key-of-32-chars!!"


@pytest.fixture
def ack_site(database_url):
    """One household, one open critical flag, its alert sent to GW1; the ack server over it."""
    from sibifang.ack_server import make_ack_server

    migrate(database_url)
    now = local_now().replace(microsecond=0)
    with session_scope(database_url) as s:
        upsert(s, Area, [
            {"id": "V1", "level": "village", "name": "万堤村", "parent_id": None, "village_kind": "村"},
            {"id": "G1", "level": "grid", "name": "万堤村第1网格", "parent_id": "V1", "village_kind": None},
        ], key=["id"])
        s.add(Household(id="H1", head_name="李秀英", grid_id="G1", address="万堤村3组12号",
                        categories=["elderly_alone"], birth_year=1942, sex="F"))
        s.flush()
        s.add(RiskFlag(id="F1", dedup_key="meter|M1|inactivity|x", household_id="H1", meter_id="M1",
                       kind="inactivity", severity="critical", score=9.0, start=now - timedelta(hours=9),
                       detected_at=now, evidence="从昨晚8点起用电接近停止", details={}, status="open"))
        s.flush()
        s.add(Alert(id="A1", dedup_key="d-A1", flag_id="F1", recipient_id="GW1", recipient_role="grid_worker",
                    channel="sms", address="13800000000", severity="critical", title="t", body="b",
                    status="sent", created_at=now, first_sent_at=now))
    srv = make_ack_server(port=0, database_url=database_url, secret=KEY)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield base, database_url
    srv.shutdown()
    srv.server_close()


def _link(base: str) -> str:
    return ack_url(base, make_ack_token("A1", "GW1", KEY, 72, local_now()))


def _token(base: str) -> str:
    return make_ack_token("A1", "GW1", KEY, 72, local_now())


def _raw(base: str, data: bytes, timeout: float = 15.0, closed: list | None = None) -> bytes:
    """Bytes sent as they are (no client normalises the path or the body); the answer read to the
    close (``closed`` gets whether the server closed it before ``timeout``)."""
    host, port = base.split("//")[1].split(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                out += chunk
            shut = True
        except socket.timeout:
            shut = False
    if closed is not None:
        closed.append(shut)
    return out


def _recorded(url: str) -> tuple:
    with session_scope(url) as s:
        a = s.get(Alert, "A1")
        acks = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "acknowledge"))
        return a.acked_at is not None, a.outcome, s.get(RiskFlag, "F1").status, acks


@pytest.mark.parametrize("token", ["%C3%A9.abc", "abc.%C3%A9", "%C3%A9%C3%A9", "x" * 3000 + ".y"])
def test_a_malformed_token_is_refused_with_a_page(ack_site, token):
    """A token with characters outside ASCII made the signature check raise outside its error
    type: the handler died and the phone got a dropped connection, not a page."""
    base, url = ack_site
    r = requests.get(f"{base}/ack?t={token}", timeout=10)
    assert r.status_code == 400 and "无法打开这条预警" in r.text
    r = requests.post(f"{base}/ack", data={"t": requests.utils.unquote(token), "outcome": "escalate"}, timeout=10)
    assert r.status_code == 400
    assert _recorded(url) == (False, None, "open", 0)


def test_a_very_long_request_line_is_answered(ack_site):
    base, url = ack_site
    answer = _raw(base, b"GET /ack?t=" + b"A" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 414")
    assert _recorded(url) == (False, None, "open", 0)


def test_a_body_not_in_utf8_records_nothing(ack_site):
    base, url = ack_site
    token = _token(base).encode()
    for body in (b"t=" + token + b"&outcome=\xff\xfe", b"t=\xff" + token + b"&outcome=escalate",
                 b"\xc3\x28t=" + token):
        r = requests.post(f"{base}/ack", data=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
        assert r.status_code == 400, body
    assert _recorded(url) == (False, None, "open", 0)


def test_a_body_shorter_than_announced_does_not_hold_a_thread(ack_site, monkeypatch):
    """Content-Length 50, five bytes sent, the connection left open: the thread read forever (a few
    such requests hold every thread of a small server). It now gives up after its timeout."""
    import sibifang.ack_server as ack_server

    base, url = ack_site
    closed: list = []
    answer = _raw(base, b"POST /ack HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nt=abc",
                  timeout=ack_server.REQUEST_TIMEOUT_SECONDS + 10, closed=closed)
    assert closed == [True], "the server still waits for the rest of the body"
    assert answer.startswith(b"HTTP/1.0 400")
    assert _recorded(url) == (False, None, "open", 0)
    assert requests.get(_link(base), timeout=10).status_code == 200  # the server still answers


def test_head_and_options_answer_and_record_nothing(ack_site):
    """A link preview may HEAD the link first: it gets the GET's status and headers without a body,
    and, like opening it, records nothing. OPTIONS says which methods the page takes."""
    base, url = ack_site
    link = _link(base)
    head = requests.head(link, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Cache-Control"] == "no-store"
    assert requests.head(f"{base}/ack?t=bad", timeout=10).status_code == 400
    options = requests.options(link, timeout=10)
    assert options.status_code == 204 and set(options.headers["Allow"].replace(" ", "").split(",")) == {
        "GET", "HEAD", "POST", "OPTIONS"}
    assert requests.put(link, data={"outcome": "escalate"}, timeout=10).status_code in (405, 501)
    assert _recorded(url) == (False, None, "open", 0)


@pytest.mark.parametrize("path", [b"/../ack", b"/ack/..", b"/ack/../../etc/passwd", b"/%2e%2e/ack",
                                  b"/static/../../ack"])
def test_a_path_with_dot_dot_is_not_found(ack_site, path):
    base, url = ack_site
    token = _token(base).encode()
    answer = _raw(base, b"GET " + path + b"?t=" + token + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].endswith(b"404 Not Found")
    body = b"t=" + token + b"&outcome=escalate"
    answer = _raw(base, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.split(b"\r\n", 1)[0].endswith(b"404 Not Found")
    assert _recorded(url) == (False, None, "open", 0)


@pytest.mark.parametrize("outcomes", [("needs_help", "needs_help"), ("escalate", "visited_all_well")])
def test_an_outcome_posted_twice_at_once_is_recorded_once(ack_site, outcomes):
    """Two posts of an outcome through one link at the same moment (a double tap, two phones):
    one answer is recorded, once; the other records nothing (the same answer) or is refused."""
    base, url = ack_site
    token = _token(base)
    barrier = threading.Barrier(len(outcomes))
    codes: list = []

    def post(outcome):
        barrier.wait()
        codes.append(requests.post(f"{base}/ack", data={"t": token, "outcome": outcome}, timeout=30).status_code)

    threads = [threading.Thread(target=post, args=(o,)) for o in outcomes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked, outcome, status, acks = _recorded(url)
    assert acked and outcome in outcomes and acks == 1
    if outcomes[0] == outcomes[1]:
        assert sorted(codes) == [200, 200]
        with session_scope(url) as s:
            assert s.scalar(select(func.count()).select_from(ServiceNeed)) == 1
    else:
        assert sorted(codes) == [200, 409]
        assert status == ("closed" if outcome == "visited_all_well" else "open")
