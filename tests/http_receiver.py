"""Real local receivers for channel tests: an HTTP server and a minimal SMTP server.

``HttpReceiver`` runs ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a thread and can
behave like a generic webhook, a WeCom/DingTalk/Feishu robot (HTTP 200 with ``errcode``/``code``
in the body) or an SMS gateway. It records every request, can fail a seeded fraction of
requests, be down for the first N seconds (connection refused: the port is bound but not
listening) or the first N requests (503 or a dropped connection), enforce a sliding-window
rate limit, and check signatures with independently written verifiers (below) — these
re-implement the providers' documented algorithms without importing sibifang.

Use as a context manager (``with HttpReceiver(flavor="wecom") as rx: rx.url``) or call
``start()``/``stop()`` from a pytest fixture.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import socket
import socketserver
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_at: float
    answered_status: int | None = None
    answered_code: int | None = None

    @property
    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None


# A verifier returns None to accept, or (code, message) to reject like the provider would.
Verifier = Callable[[RecordedRequest], "tuple[int, str] | None"]

FLAVOR_CODES = {
    # flavor: (code field, message field, ok code, rate-limit code, busy code, bad-sign code)
    "wecom": ("errcode", "errmsg", 0, 45009, -1, 93000),
    "dingtalk": ("errcode", "errmsg", 0, 130101, -1, 310000),
    "feishu": ("code", "msg", 0, 11232, -1, 19021),
    "sms": ("code", "message", 0, 429, 500, 401),
}


class HttpReceiver:
    def __init__(self, flavor: str = "generic", *, fail_fraction: float = 0.0, seed: int = 0,
                 fail_status: int = 503, fail_in_body: bool = False,
                 down_first_requests: int = 0, down_mode: str = "503", down_first_seconds: float = 0.0,
                 down_seconds_mode: str = "refuse",
                 rate_limit: tuple[int, float] | None = None, verifier: Verifier | None = None,
                 response_delay: float = 0.0, fixed_response: tuple[int, dict | str] | None = None):
        if flavor not in ("generic", *FLAVOR_CODES):
            raise ValueError(flavor)
        self.flavor = flavor
        self.fail_fraction = fail_fraction
        self.rng = random.Random(seed)
        self.fail_status = fail_status
        self.fail_in_body = fail_in_body
        self.down_first_requests = down_first_requests
        self.down_mode = down_mode  # "503" or "drop" (close without answering)
        self.down_first_seconds = down_first_seconds
        self.down_seconds_mode = down_seconds_mode  # "refuse" (not listening) or "503"
        self._started = time.monotonic()
        self.rate_limit = rate_limit
        self.verifier = verifier
        self.response_delay = response_delay
        self.fixed_response = fixed_response
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._window: deque[float] = deque()
        self._seen = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._activator: threading.Timer | None = None

    # ---- lifecycle
    def start(self) -> "HttpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                super().setup()
                # Headers and body leave in two writes; without NODELAY, Nagle plus delayed ACK
                # adds ~40 ms to every keep-alive request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self):
                receiver._handle(self)

            do_POST = do_GET = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        # A dropped connection ("drop" mode) makes the handler fail on flush; that is intended.
        self._server.handle_error = lambda request, client_address: None
        self._server.allow_reuse_address = True
        self._server.server_bind()  # port assigned now; not listening yet -> connection refused
        self.port = self._server.server_address[1]
        self._started = time.monotonic()
        if self.down_first_seconds > 0 and self.down_seconds_mode == "refuse":
            self._activator = threading.Timer(self.down_first_seconds, self._activate)
            self._activator.daemon = True
            self._activator.start()
        else:
            self._activate()
        return self

    def _activate(self):
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self):
        if self._activator:
            self._activator.cancel()
        if self._thread:
            self._server.shutdown()
            self._thread.join(timeout=5)
        if self._server:
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- request handling
    def _answer(self, handler, status: int, payload, headers: dict[str, str] | None = None):
        body = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def _coded(self, code: int, message: str) -> dict:
        code_field, msg_field = FLAVOR_CODES[self.flavor][:2]
        return {code_field: code, msg_field: message}

    def _handle(self, handler: BaseHTTPRequestHandler):
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        rec = RecordedRequest(handler.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                              {k: v for k, v in handler.headers.items()}, body, time.time())
        with self._lock:
            self.requests.append(rec)
            self._seen += 1
            seen = self._seen
            now = time.monotonic()
            limited = False
            if self.rate_limit:
                count, window = self.rate_limit
                while self._window and self._window[0] <= now - window:
                    self._window.popleft()
                limited = len(self._window) >= count
                if not limited:
                    self._window.append(now)
            fail = self.fail_fraction > 0 and self.rng.random() < self.fail_fraction
        if self.response_delay:
            time.sleep(self.response_delay)
        if self.down_seconds_mode == "503" and time.monotonic() - self._started < self.down_first_seconds:
            rec.answered_status = 503
            return self._answer(handler, 503, {"error": "starting up"}, {"Retry-After": "1"})
        if seen <= self.down_first_requests:
            if self.down_mode == "drop":
                rec.answered_status = None
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            rec.answered_status = 503
            return self._answer(handler, 503, {"error": "down"})
        if self.fixed_response is not None:
            rec.answered_status = self.fixed_response[0]
            return self._answer(handler, *self.fixed_response)
        if limited:
            rec.answered_status = 429 if self.flavor in ("generic", "sms") else 200
            if self.flavor in ("generic", "sms"):
                return self._answer(handler, 429, {"error": "too many requests"}, {"Retry-After": "1"})
            rec.answered_code = FLAVOR_CODES[self.flavor][3]
            return self._answer(handler, 200, self._coded(rec.answered_code, "send too fast"))
        if fail:
            if self.fail_in_body and self.flavor in FLAVOR_CODES:
                rec.answered_status, rec.answered_code = 200, FLAVOR_CODES[self.flavor][4]
                return self._answer(handler, 200, self._coded(rec.answered_code, "system busy"))
            rec.answered_status = self.fail_status
            return self._answer(handler, self.fail_status, {"error": "injected failure"})
        if self.verifier is not None:
            rejection = self.verifier(rec)
            if rejection is not None:
                code, message = rejection
                if self.flavor == "generic":
                    rec.answered_status = code
                    return self._answer(handler, code, {"error": message})
                rec.answered_status, rec.answered_code = 200, code
                return self._answer(handler, 200, self._coded(code, message))
        rec.answered_status = 200
        if self.flavor == "generic":
            return self._answer(handler, 200, {"received": True})
        rec.answered_code = 0
        ok = self._coded(0, "ok" if self.flavor != "feishu" else "success")
        if self.flavor == "feishu":
            ok["data"] = {}
        return self._answer(handler, 200, ok)

    # ---- convenience
    def reset(self) -> None:
        """Forget recorded requests and counters (reuse one receiver across test phases)."""
        with self._lock:
            self.requests.clear()
            self._window.clear()
            self._seen = 0

    def accepted(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.answered_status == 200 and r.answered_code in (None, 0)]


# --------------------------------------------------------------------------- verifiers
# Written from the providers' documentation, deliberately not importing sibifang.


def verify_generic(secret: str, max_age_s: float = 300.0) -> Verifier:
    def check(rec: RecordedRequest):
        sig = rec.headers.get("X-Sibifang-Signature", "")
        ts = rec.headers.get("X-Sibifang-Timestamp", "")
        want = "sha256=" + hmac.new(secret.encode(), rec.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, want):
            return (401, "bad signature")
        body = rec.json or {}
        if str(body.get("sent_at_epoch")) != ts or abs(time.time() - int(ts)) > max_age_s:
            return (401, "stale timestamp")
        return None
    return check


def verify_wecom(key: str) -> Verifier:
    def check(rec: RecordedRequest):
        if rec.query.get("key") != [key]:
            return (93000, "invalid webhook url")
        body = rec.json
        if not body or body.get("msgtype") != "markdown" or not body.get("markdown", {}).get("content"):
            return (40008, "invalid message type")
        if len(body["markdown"]["content"].encode("utf-8")) > 4096:
            return (40058, "markdown.content exceed max length 4096")
        return None
    return check


def verify_dingtalk(access_token: str, secret: str, now_ms: Callable[[], float] = lambda: time.time() * 1000,
                    max_skew_ms: float = 3_600_000) -> Verifier:
    def check(rec: RecordedRequest):
        if rec.query.get("access_token") != [access_token]:
            return (300001, "token is not exist")
        ts = (rec.query.get("timestamp") or [""])[0]
        sign = (rec.query.get("sign") or [""])[0]  # parse_qs already URL-decoded it
        if not ts.isdigit() or abs(now_ms() - int(ts)) > max_skew_ms:
            return (310000, "sign not match, timestamp expired")
        string_to_sign = f"{ts}\n{secret}".encode()
        want = base64.b64encode(hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()).decode()
        if sign != want:
            return (310000, "sign not match")
        return None
    return check


def verify_feishu(secret: str, now_s: Callable[[], float] = time.time, max_skew_s: float = 3600) -> Verifier:
    def check(rec: RecordedRequest):
        body = rec.json or {}
        ts = str(body.get("timestamp", ""))
        if not ts.isdigit() or abs(now_s() - int(ts)) > max_skew_s:
            return (19021, "sign match fail or timestamp is not within one hour from current time")
        key = f"{ts}\n{secret}".encode()
        want = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        if body.get("sign") != want:
            return (19021, "sign match fail or timestamp is not within one hour from current time")
        return None
    return check


# --------------------------------------------------------------------------- SMTP


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_to: list[str]
    data: bytes


class SmtpReceiver:
    """Minimal SMTP server (HELO/EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for tests.

    ``reject_rcpt`` maps an address to a reply such as ``"550 no such user"``;
    ``fail_data_with`` answers DATA's end with that reply instead of 250.
    """

    def __init__(self, reject_rcpt: dict[str, str] | None = None, fail_data_with: str | None = None):
        self.messages: list[ReceivedMail] = []
        self.reject_rcpt = reject_rcpt or {}
        self.fail_data_with = fail_data_with
        self._server = None
        self._thread = None

    def start(self) -> "SmtpReceiver":
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str):
                self.wfile.write((line + "\r\n").encode())
                self.wfile.flush()

            def handle(self):
                self.reply("220 localhost test SMTP")
                mail_from, rcpts = "", []
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    verb = line[:4].upper()
                    if verb in ("HELO", "EHLO"):
                        self.reply("250 localhost" if verb == "HELO" else "250-localhost\r\n250 8BITMIME")
                    elif verb == "MAIL":
                        mail_from, rcpts = line.split(":", 1)[1].strip().strip("<>").split(">")[0], []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        addr = line.split(":", 1)[1].strip().strip("<>").split(">")[0]
                        if addr in receiver.reject_rcpt:
                            self.reply(receiver.reject_rcpt[addr])
                        else:
                            rcpts.append(addr)
                            self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        chunks = []
                        while True:
                            data_line = self.rfile.readline()
                            if not data_line or data_line in (b".\r\n", b".\n"):
                                break
                            if data_line.startswith(b".."):
                                data_line = data_line[1:]  # undo dot-stuffing
                            chunks.append(data_line)
                        if receiver.fail_data_with:
                            self.reply(receiver.fail_data_with)
                        else:
                            receiver.messages.append(ReceivedMail(mail_from, list(rcpts), b"".join(chunks)))
                            self.reply("250 OK queued")
                    elif verb == "RSET":
                        mail_from, rcpts = "", []
                        self.reply("250 OK")
                    elif verb == "NOOP":
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 command not implemented")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
