"""Alert channels (告警通道): one small adapter per way of reaching a person.

Every adapter has the same interface, ``send(msg, *, session=None) -> DeliveryResult``,
never raises for delivery problems, and reads the provider's answer: the group robots
(企业微信 / 钉钉 / 飞书) answer HTTP 200 with an error code when they reject a message, so
"sent" means the body said success.

Generic JSON webhook contract (what a receiving system implements)::

    POST <url>
    Content-Type: application/json; charset=utf-8
    X-Sibifang-Timestamp: <unix seconds, equals sent_at>
    X-Sibifang-Signature: sha256=<hex HMAC-SHA256(secret, raw request body)>   (only if a secret is set)

    {"alert_id": "...", "dedup_key": "...", "severity": "critical|high|medium|low",
     "title": "...", "text": "...", "markdown": "..."|null, "sent_at": "<ISO-8601 UTC>",
     "sent_at_epoch": <unix seconds>}

The body carries ``sent_at_epoch`` so the signature also covers the timestamp: a receiver
rejects a body whose timestamp is too old (replay) and de-duplicates on ``dedup_key``
(the same alert may arrive twice when an answer was lost). Any 2xx means accepted.

Secrets (webhook keys in URLs, signing secrets, SMTP passwords) never appear in logs or
in ``DeliveryResult.error``: errors are built from our own words plus redacted provider text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import smtplib
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Callable, Iterable, Protocol, runtime_checkable
from urllib.parse import quote, quote_plus, urlsplit

import requests

log = logging.getLogger(__name__)

# Group robots: messages land in a group chat, so sensitive details must not (see dispatch_alerts).
GROUP_ROBOT_KINDS = frozenset({"wecom", "dingtalk", "feishu"})
CHANNEL_KINDS = frozenset({"webhook", "wecom", "dingtalk", "feishu", "sms", "email"})

WECOM_MARKDOWN_MAX_BYTES = 4096
# DingTalk and Feishu document ~20 KB per request; leave room for the JSON envelope.
DINGTALK_TEXT_MAX_BYTES = 18000
FEISHU_TEXT_MAX_BYTES = 18000
# Long SMS (concatenated segments): the alert line plus an ack link of ~160 characters.
SMS_MAX_CHARS = 300
ELLIPSIS = "…"
# Our own refusal of a message too long for its channel (``fit_text``): nothing left the process.
TOO_LONG = "too_long"


@dataclass(frozen=True)
class OutgoingMessage:
    alert_id: str
    dedup_key: str
    severity: str
    title: str
    # repr=False: the text holds the signed ack link (a bearer token) and a household's name and
    # address; a message in a log line or a traceback shows its id only
    text: str = field(repr=False)
    markdown: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None
    provider_code: str | None
    error: str | None
    retryable: bool
    latency_ms: float
    # Seconds to wait before the next attempt when we know it (local rate limit, provider block).
    retry_after: float | None = None


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, msg: OutgoingMessage, *, session: requests.Session | None = None) -> DeliveryResult: ...


# --------------------------------------------------------------------------- helpers


def truncate_utf8(text: str, max_bytes: int, ellipsis: str = ELLIPSIS) -> str:
    """Cut ``text`` so its UTF-8 encoding fits ``max_bytes``, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    budget = max_bytes - len(ellipsis.encode("utf-8"))
    if budget <= 0:
        return ellipsis.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    # errors="ignore" drops the partial trailing character the byte cut may have produced.
    return raw[:budget].decode("utf-8", "ignore") + ellipsis


# --------------------------------------------------------------------------- message size
#
# How long a message each channel takes is known here and only here. The render step
# (``dispatch_alerts``) words a message to fit (``fits``); a channel never cuts a message that
# holds a link (``fit_text``): the end of an alert is its facts and its ack link.

SIZE_LIMITS = {"wecom": WECOM_MARKDOWN_MAX_BYTES, "dingtalk": DINGTALK_TEXT_MAX_BYTES,
               "feishu": FEISHU_TEXT_MAX_BYTES, "sms": SMS_MAX_CHARS}
_SIZE_UNITS = {"sms": "字"}
_CHANNEL_NAMES = {"wecom": "企业微信机器人", "dingtalk": "钉钉机器人", "feishu": "飞书机器人", "sms": "短信"}
_LINK = re.compile(r"https?://[^\s()<>\[\]]+")


def sms_line(text: str) -> str:
    """An SMS as it is sent: one line, runs of whitespace as one space."""
    return " ".join(text.split())


def message_size(kind: str, text: str) -> int:
    """``text``'s size as channel ``kind`` counts it: characters of the one-line SMS, else UTF-8 bytes."""
    return len(sms_line(text)) if kind == "sms" else len(text.encode("utf-8"))


def fits(kind: str, text: str, limit: int | None = None) -> bool:
    """Whether channel ``kind`` takes ``text`` whole (``limit``: an adapter's own, else ``SIZE_LIMITS``)."""
    limit = limit if limit is not None else SIZE_LIMITS.get(kind)
    return limit is None or message_size(kind, text or "") <= limit


def channel_text(kind: str, msg: OutgoingMessage) -> str:
    """What of ``msg`` channel ``kind`` sends as its text (Feishu and SMS: the plain text)."""
    return (msg.text if kind in ("feishu", "sms") else (msg.markdown or msg.text)) or ""


def sent_whole(kind: str, msg: OutgoingMessage) -> bool:
    """Whether a channel of ``kind`` takes ``msg`` as it is: a digest that does not is split."""
    return fits(kind, channel_text(kind, msg))


class MessageTooLong(ValueError):
    """A message with a link in it that its channel cannot take whole. The message is in Chinese,
    for the operator who reads the dead letter, and names no recipient and no part of the link."""


def fit_text(kind: str, text: str, limit: int | None = None) -> str:
    """``text`` as channel ``kind`` may send it: whole when it fits; cut with a visible "…" when it
    holds no link (a work notice's list: the reader sees it goes on); never cut when it holds one
    (an alert: the cut would take its facts and its ack link): ``MessageTooLong``, sent nowhere."""
    limit = limit if limit is not None else SIZE_LIMITS.get(kind)
    text = text or ""
    if fits(kind, text, limit):
        return text
    links = _LINK.findall(text)
    if not links:
        return truncate_chars(sms_line(text), limit) if kind == "sms" else truncate_utf8(text, limit)
    unit = _SIZE_UNITS.get(kind, "字节")
    raise MessageTooLong(
        f"{_CHANNEL_NAMES.get(kind, kind)}消息长 {message_size(kind, text)} {unit}，超过上限 {limit} {unit}，"
        f"其中确认链接 {sum(len(u) for u in links)} {unit}；截断会丢掉确认链接，未发送。"
        f"请检查 SIBIFANG_ACK_BASE_URL 是否过长")


def truncate_chars(text: str, max_chars: int, ellipsis: str = ELLIPSIS) -> str:
    return text if len(text) <= max_chars else text[: max(0, max_chars - len(ellipsis))] + ellipsis


def redact_url(url: str) -> str:
    """Scheme and host only: robot keys live in the query (WeCom, DingTalk) or the path (Feishu)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/…"
    except ValueError:
        return "<地址无法解析>"


def _redact(text: str, secrets: Iterable[str | None]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def _url_secrets(url: str) -> list[str]:
    """Pieces of a URL that may be credentials: query values and long path segments."""
    out: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    for pair in parts.query.split("&"):
        if "=" in pair:
            out.append(pair.split("=", 1)[1])
    out.extend(seg for seg in parts.path.split("/") if len(seg) >= 16)
    if parts.password:
        out.append(parts.password)
    return out


def _describe_exception(exc: BaseException) -> str:
    # Never str(exc): requests puts the full URL (with the robot key) in its messages.
    if isinstance(exc, requests.Timeout):
        return f"请求超时 ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        return f"连接失败 ({type(exc).__name__})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"连接超时 ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return f"网络错误 ({type(exc).__name__}, errno={getattr(exc, 'errno', None)})"
    return f"发送出错 ({type(exc).__name__})"


def _elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _http_status_retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _secret_value(secret) -> str | None:
    if secret is None:
        return None
    if hasattr(secret, "get_secret_value"):
        return secret.get_secret_value()
    return str(secret)


class RedactUrlSecretsFilter(logging.Filter):
    """Strip query strings and robot hook tokens from urllib3's debug lines.

    urllib3 logs every request line at DEBUG, and robot keys travel in the query (WeCom
    ``key=``, DingTalk ``access_token=``/``sign=``) or the path (Feishu ``/hook/<token>``).
    """

    _query = re.compile(r"\?[^\s\"']*")
    _hook = re.compile(r"(/hook/)[^\s\"'/?]+")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        extra = _LOG_SECRETS
        if "?" in text or "/hook/" in text or any(s in text for s in extra):
            text = self._hook.sub(r"\1***", self._query.sub("?***", text))
            for s in extra:  # longest first (see register_log_secrets)
                text = text.replace(s, "***")
            record.msg = text
            record.args = ()
        return True


# Pieces of configured URLs (a key in a path) that urllib3's request lines must not show;
# longest first, so a piece inside a longer one never leaves the rest of it behind.
_LOG_SECRETS: tuple[str, ...] = ()
_LOG_SECRETS_LOCK = threading.Lock()


def register_log_secrets(pieces: Iterable[str | None]) -> None:
    """Have urllib3's request lines redact ``pieces`` too (idempotent; shorter than 4
    characters is ignored). For keys the query filter cannot see: one in a URL's path."""
    global _LOG_SECRETS
    with _LOG_SECRETS_LOCK:
        merged = set(_LOG_SECRETS) | {p for p in pieces if p and len(p) >= 4}
        _LOG_SECRETS = tuple(sorted(merged, key=len, reverse=True))


def install_log_redaction() -> None:
    """Idempotent; runs at import so no caller can forget it."""
    for name in ("urllib3.connectionpool", "urllib3.connection"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactUrlSecretsFilter) for f in lg.filters):
            lg.addFilter(RedactUrlSecretsFilter())


install_log_redaction()


# --------------------------------------------------------------------------- rate limiting


@dataclass(frozen=True)
class RateLimit:
    max_requests: int
    per_seconds: float


DEFAULT_LIMITS: dict[str, tuple[RateLimit, ...]] = {
    "wecom": (RateLimit(20, 60.0),),
    "dingtalk": (RateLimit(20, 60.0),),
    "feishu": (RateLimit(5, 1.0), RateLimit(100, 60.0)),
    "webhook": (),
    "sms": (),
    "email": (),
}
DINGTALK_BLOCK_SECONDS = 600.0


class RateLimiter:
    """Sliding-window limiter per key (one key per channel address).

    ``try_acquire`` either records a send and returns 0.0, or records nothing and returns the
    seconds until a slot frees. ``block(key, seconds)`` holds a key after a provider said
    "too fast" (DingTalk blocks a robot for 10 minutes). Thread-safe; the clock is injectable
    so tests need no sleeping.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, enabled: bool = True):
        self.clock = clock
        self.enabled = enabled
        self._sent: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str, limits: Iterable[RateLimit]) -> float:
        limits = tuple(limits)
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self.clock()
            wait = max(0.0, self._blocked_until.get(key, 0.0) - now)
            if not limits:
                return wait  # nothing to count for unlimited channels (webhook, SMS, e-mail)
            sent = self._sent.setdefault(key, deque())
            longest = max((lim.per_seconds for lim in limits), default=0.0)
            while sent and sent[0] <= now - longest:
                sent.popleft()
            for lim in limits:
                in_window = [t for t in sent if t > now - lim.per_seconds]
                if len(in_window) >= lim.max_requests:
                    # The slot frees when the oldest send that still counts leaves the window.
                    oldest_counting = in_window[-lim.max_requests]
                    wait = max(wait, oldest_counting + lim.per_seconds - now)
            if wait > 0:
                return wait
            sent.append(now)
            return 0.0

    def block(self, key: str, seconds: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            until = self.clock() + seconds
            self._blocked_until[key] = max(self._blocked_until.get(key, 0.0), until)

    def reset(self) -> None:
        with self._lock:
            self._sent.clear()
            self._blocked_until.clear()


# One limiter for the process: channel objects are cheap and rebuilt per send, the limits
# belong to the robot address, so the counts must outlive them.
DEFAULT_RATE_LIMITER = RateLimiter()


# --------------------------------------------------------------------------- base


@dataclass
class _HttpChannel:
    address: str
    secret: str | None = None
    timeout: float = 5.0
    rate_limiter: RateLimiter | None = None
    limits: tuple[RateLimit, ...] | None = None
    # When the local limit is reached: wait (sleep) or answer "deferred" at once.
    wait_for_rate_limit: bool = False
    clock: Callable[[], float] = time.time  # wall clock for signatures
    sleep: Callable[[float], None] = time.sleep
    name: str = "base"
    kind: str = "base"

    rate_limited: bool = True  # False: no local limiting at all (settings.rate_limits)

    def __post_init__(self) -> None:
        self.secret = _secret_value(self.secret)
        if not self.rate_limited:
            self.rate_limiter = RateLimiter(enabled=False)
        elif self.rate_limiter is None:
            self.rate_limiter = DEFAULT_RATE_LIMITER
        if self.limits is None:
            self.limits = DEFAULT_LIMITS.get(self.kind, ())

    def __repr__(self) -> str:  # the address may hold the robot key
        return f"{type(self).__name__}(address={redact_url(self.address)!r})"

    def _log_target(self) -> str:
        return redact_url(self.address)

    @property
    def _rate_key(self) -> str:
        return f"{self.kind}:{self.address}"

    def _secrets(self) -> list[str]:
        return [s for s in [self.secret, *_url_secrets(self.address)] if s]

    def _throttle(self) -> DeliveryResult | None:
        wait = self.rate_limiter.try_acquire(self._rate_key, self.limits)
        if wait > 0 and self.wait_for_rate_limit:
            while wait > 0:
                self.sleep(wait)
                wait = self.rate_limiter.try_acquire(self._rate_key, self.limits)
        if wait > 0:
            return DeliveryResult(False, None, "local_rate_limit",
                                  f"已达到发送频率上限,{wait:.0f}秒后再发", True, 0.0, retry_after=wait)
        return None

    def _post(self, session: requests.Session | None, url: str, body: bytes,
              headers: dict[str, str], method: str = "POST") -> tuple[requests.Response | None, str | None, float]:
        t0 = time.perf_counter()
        try:
            http = session if session is not None else requests
            resp = http.request(method, url, data=body if method != "GET" else None,
                                headers=headers, timeout=self.timeout)
            return resp, None, _elapsed_ms(t0)
        except requests.RequestException as exc:
            return None, _describe_exception(exc), _elapsed_ms(t0)

    def _log_result(self, msg: OutgoingMessage, result: DeliveryResult) -> DeliveryResult:
        # Log the alert id and the host only: never the URL, the text or any secret.
        log.info("channel=%s host=%s alert_id=%s ok=%s status=%s code=%s retryable=%s %.0fms%s",
                 self.kind, self._log_target(), msg.alert_id, result.ok, result.status_code,
                 result.provider_code, result.retryable, result.latency_ms,
                 "" if result.ok else f" error={result.error}")
        return result

    def _size_limit(self) -> int | None:
        return SIZE_LIMITS.get(self.kind)

    def _refuse_too_long(self, msg: OutgoingMessage) -> DeliveryResult | None:
        """Checked before the rate limiter counts a send: a message refused takes no robot quota."""
        try:
            fit_text(self.kind, channel_text(self.kind, msg), self._size_limit())
        except MessageTooLong as exc:
            # nothing left the process, and a retry would send the same text: dead-lettered at once
            return DeliveryResult(False, None, TOO_LONG, str(exc), False, 0.0)
        return None

    def send(self, msg: OutgoingMessage, *, session: requests.Session | None = None) -> DeliveryResult:
        refused = self._refuse_too_long(msg)
        if refused is not None:
            return self._log_result(msg, refused)
        throttled = self._throttle()
        if throttled is not None:
            return self._log_result(msg, throttled)
        try:
            result = self._deliver(msg, session)
        except Exception as exc:  # an adapter bug must not kill the dispatch loop
            result = DeliveryResult(False, None, None, _describe_exception(exc), False, 0.0)
        return self._log_result(msg, result)

    def _deliver(self, msg: OutgoingMessage, session: requests.Session | None) -> DeliveryResult:
        raise NotImplementedError


class _JsonCodeChannel(_HttpChannel):
    """Robots that answer HTTP 200 with a numeric code in the body."""

    code_fields: tuple[str, ...] = ("errcode",)
    message_fields: tuple[str, ...] = ("errmsg",)
    retryable_codes: frozenset[int] = frozenset()
    rate_limit_codes: frozenset[int] = frozenset()

    def _interpret(self, resp: requests.Response | None, err: str | None, latency: float) -> DeliveryResult:
        if resp is None:
            return DeliveryResult(False, None, None, err, True, latency)
        status = resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = None
        code = None
        if isinstance(body, dict):
            for f in self.code_fields:
                if f in body and body[f] is not None:
                    code = body[f]
                    break
        provider_msg = ""
        if isinstance(body, dict):
            for f in self.message_fields:
                if isinstance(body.get(f), str):
                    provider_msg = _redact(body[f], self._secrets())[:200]
                    break
        retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
        if not 200 <= status < 300:
            retryable = _http_status_retryable(status) or (code is not None and self._code_retryable(code))
            return DeliveryResult(False, status, None if code is None else str(code),
                                  f"HTTP {status}" + (f": {provider_msg}" if provider_msg else ""),
                                  retryable, latency, retry_after)
        if code is None:
            # 200 without a readable code: we cannot know it was sent; a retry may duplicate,
            # which the dedup_key and the ack link tolerate better than a silent loss.
            return DeliveryResult(False, status, None, "应答中没有结果代码,无法确认已送达", True, latency)
        try:
            code_int = int(code)
        except (TypeError, ValueError):
            code_int = None
        if code_int == 0:
            return DeliveryResult(True, status, "0", None, False, latency)
        if code_int in self.rate_limit_codes:
            retry_after = self._on_rate_limited()
        return DeliveryResult(False, status, str(code), f"平台拒收 (代码 {code}): {provider_msg}".rstrip(": "),
                              self._code_retryable(code_int), latency, retry_after)

    def _code_retryable(self, code) -> bool:
        return code in self.retryable_codes or code in self.rate_limit_codes

    def _on_rate_limited(self) -> float | None:
        return 60.0

    def _json_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json; charset=utf-8"}


# --------------------------------------------------------------------------- generic webhook


class WebhookChannel(_HttpChannel):
    """Generic JSON webhook (see the module docstring for the payload contract)."""

    def __init__(self, address: str, secret: str | None = None, **opts):
        super().__init__(address=address, secret=secret, name="webhook", kind="webhook", **opts)

    def build_request(self, msg: OutgoingMessage) -> tuple[bytes, dict[str, str]]:
        now = self.clock()
        ts = int(now)
        payload = {
            "alert_id": msg.alert_id, "dedup_key": msg.dedup_key, "severity": msg.severity,
            "title": msg.title, "text": msg.text, "markdown": msg.markdown,
            "sent_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            "sent_at_epoch": ts,
        }
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Sibifang-Timestamp": str(ts),
                   "X-Sibifang-Alert-Id": msg.alert_id}
        if self.secret:
            digest = hmac.new(self.secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
            headers["X-Sibifang-Signature"] = f"sha256={digest}"
        return body, headers

    def _deliver(self, msg, session):
        body, headers = self.build_request(msg)
        resp, err, latency = self._post(session, self.address, body, headers)
        if resp is None:
            return DeliveryResult(False, None, None, err, True, latency)
        if 200 <= resp.status_code < 300:
            return DeliveryResult(True, resp.status_code, None, None, False, latency)
        return DeliveryResult(False, resp.status_code, None, f"HTTP {resp.status_code}",
                              _http_status_retryable(resp.status_code), latency,
                              _parse_retry_after(resp.headers.get("Retry-After")))


# --------------------------------------------------------------------------- WeCom


class WeComChannel(_JsonCodeChannel):
    """企业微信群机器人: ``address`` is the full webhook URL (``...send?key=...``)."""

    # -1 system busy; 45009 API frequency limit; 45033 concurrency limit.
    retryable_codes = frozenset({-1, 45033})
    rate_limit_codes = frozenset({45009})

    def __init__(self, address: str, secret: str | None = None, **opts):
        super().__init__(address=address, secret=secret, name="wecom", kind="wecom", **opts)

    def build_request(self, msg: OutgoingMessage) -> tuple[bytes, dict[str, str]]:
        content = fit_text("wecom", channel_text("wecom", msg))
        body = {"msgtype": "markdown", "markdown": {"content": content}}
        return json.dumps(body, ensure_ascii=False).encode("utf-8"), self._json_headers()

    def _deliver(self, msg, session):
        body, headers = self.build_request(msg)
        return self._interpret(*self._post(session, self.address, body, headers))


# --------------------------------------------------------------------------- DingTalk


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """base64(HMAC-SHA256(key=secret, msg=f"{timestamp_ms}\\n{secret}")), not yet URL-encoded."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class DingTalkChannel(_JsonCodeChannel):
    """钉钉自定义机器人: ``address`` is ``...robot/send?access_token=...``; ``secret`` the 加签 key."""

    retryable_codes = frozenset({-1})
    # 130101 / 410100: sent too fast, the robot is blocked for 10 minutes.
    rate_limit_codes = frozenset({130101, 410100})

    def __init__(self, address: str, secret: str | None = None, **opts):
        super().__init__(address=address, secret=secret, name="dingtalk", kind="dingtalk", **opts)

    def signed_url(self) -> str:
        if not self.secret:
            return self.address
        # A fresh timestamp per attempt: DingTalk rejects signatures older than one hour.
        ts = int(self.clock() * 1000)
        sep = "&" if "?" in self.address else "?"
        return f"{self.address}{sep}timestamp={ts}&sign={quote_plus(dingtalk_sign(self.secret, ts))}"

    def build_request(self, msg: OutgoingMessage) -> tuple[str, bytes, dict[str, str]]:
        text = fit_text("dingtalk", channel_text("dingtalk", msg))
        body = {"msgtype": "markdown", "markdown": {"title": msg.title or "告警", "text": text}}
        return self.signed_url(), json.dumps(body, ensure_ascii=False).encode("utf-8"), self._json_headers()

    def _on_rate_limited(self) -> float:
        self.rate_limiter.block(self._rate_key, DINGTALK_BLOCK_SECONDS)
        return DINGTALK_BLOCK_SECONDS

    def _deliver(self, msg, session):
        url, body, headers = self.build_request(msg)
        return self._interpret(*self._post(session, url, body, headers))


# --------------------------------------------------------------------------- Feishu / Lark


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")) as Feishu documents it."""
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode("utf-8"), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class FeishuChannel(_JsonCodeChannel):
    """飞书/Lark 自定义机器人: ``address`` is ``.../open-apis/bot/v2/hook/<token>``."""

    code_fields = ("code", "StatusCode")
    message_fields = ("msg", "StatusMessage")
    retryable_codes = frozenset({-1})
    # 11232: frequency limited.
    rate_limit_codes = frozenset({11232})

    def __init__(self, address: str, secret: str | None = None, **opts):
        super().__init__(address=address, secret=secret, name="feishu", kind="feishu", **opts)

    def build_request(self, msg: OutgoingMessage) -> tuple[bytes, dict[str, str]]:
        text = fit_text("feishu", channel_text("feishu", msg))
        body: dict[str, Any] = {"msg_type": "text", "content": {"text": text}}
        if self.secret:
            ts = int(self.clock())
            body["timestamp"] = str(ts)
            body["sign"] = feishu_sign(self.secret, ts)
        return json.dumps(body, ensure_ascii=False).encode("utf-8"), self._json_headers()

    def _on_rate_limited(self) -> float:
        self.rate_limiter.block(self._rate_key, 1.0)
        return 1.0

    def _deliver(self, msg, session):
        body, headers = self.build_request(msg)
        return self._interpret(*self._post(session, self.address, body, headers))


# --------------------------------------------------------------------------- SMS gateway


def _json_path(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if isinstance(obj, list):
            try:
                obj = obj[int(part)]
            except (ValueError, IndexError):
                return None
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
    return obj


def _fill_template(template: Any, values: dict[str, str]) -> Any:
    """Replace ``{name}`` placeholders inside the strings of a JSON-like structure.

    Substitution happens on decoded values, never on JSON text, so a quote in the message
    cannot break or inject into the request body.
    """
    if isinstance(template, str):
        out = template
        for k, v in values.items():
            out = out.replace("{" + k + "}", v)
        return out
    if isinstance(template, dict):
        return {k: _fill_template(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill_template(v, values) for v in template]
    return template


class SmsChannel(_HttpChannel):
    """SMS through an HTTP gateway described by a template.

    opts: ``url`` (may contain ``{phone}`` ``{text}``, URL-encoded), ``method`` (POST),
    ``body_template`` (JSON-like dict with ``{phone}`` ``{text}`` ``{secret}``),
    ``headers`` (may contain ``{secret}``), ``success_path`` (dotted JSON path, e.g. ``"code"``),
    ``success_values`` (accepted values, default ``[0, "0", "OK", "ok", true]``),
    ``retryable_values`` (provider codes worth retrying), ``max_chars`` (default ``SMS_MAX_CHARS``).
    ``address`` is the phone number.
    """

    def __init__(self, address: str, secret: str | None = None, *, url: str, method: str = "POST",
                 body_template: Any = None, headers: dict[str, str] | None = None,
                 success_path: str | None = None, success_values: Iterable[Any] = (0, "0", "OK", "ok", True),
                 retryable_values: Iterable[Any] = (), max_chars: int = SMS_MAX_CHARS, **opts):
        super().__init__(address=address, secret=secret, name="sms", kind="sms", **opts)
        self.url = url
        self.method = method.upper()
        self.body_template = body_template if body_template is not None else {"phone": "{phone}", "text": "{text}"}
        self.header_template = headers or {}
        self.success_path = success_path
        self.success_values = list(success_values)
        self.retryable_values = list(retryable_values)
        self.max_chars = max_chars

    def __repr__(self) -> str:
        return f"SmsChannel(gateway={redact_url(self.url)!r})"

    def _log_target(self) -> str:
        # The address is a person's phone number: log the gateway host only.
        return redact_url(self.url)

    def _secrets(self) -> list[str]:
        return [s for s in [self.secret, *_url_secrets(self.url)] if s]

    def _size_limit(self) -> int | None:
        return self.max_chars

    def sms_text(self, msg: OutgoingMessage) -> str:
        # Plain and short, one line; the link in the text carries the details and is never cut
        # (``fit_text``): the wording before it is fitted when the alert is rendered.
        return sms_line(fit_text("sms", msg.text, self.max_chars))

    def build_request(self, msg: OutgoingMessage) -> tuple[str, bytes | None, dict[str, str]]:
        text = self.sms_text(msg)
        values = {"phone": self.address, "text": text, "secret": self.secret or "",
                  "alert_id": msg.alert_id, "dedup_key": msg.dedup_key}
        url = _fill_template(self.url, {k: quote(v, safe="") for k, v in values.items()})
        headers = {k: _fill_template(v, values) for k, v in self.header_template.items()}
        body = None
        if self.method != "GET":
            body = json.dumps(_fill_template(self.body_template, values), ensure_ascii=False).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return url, body, headers

    def _deliver(self, msg, session):
        url, body, headers = self.build_request(msg)
        resp, err, latency = self._post(session, url, body or b"", headers, method=self.method)
        if resp is None:
            return DeliveryResult(False, None, None, err, True, latency)
        if not 200 <= resp.status_code < 300:
            return DeliveryResult(False, resp.status_code, None, f"HTTP {resp.status_code}",
                                  _http_status_retryable(resp.status_code), latency,
                                  _parse_retry_after(resp.headers.get("Retry-After")))
        if not self.success_path:
            return DeliveryResult(True, resp.status_code, None, None, False, latency)
        try:
            value = _json_path(resp.json(), self.success_path)
        except ValueError:
            return DeliveryResult(False, resp.status_code, None, "短信网关应答无法解析", True, latency)
        # Type-aware match: 1 == True in Python, but a gateway's code 1 is not success "true".
        if any(type(v) is type(value) and v == value for v in self.success_values):
            return DeliveryResult(True, resp.status_code, str(value), None, False, latency)
        return DeliveryResult(False, resp.status_code, None if value is None else str(value),
                              _redact(f"短信网关拒收 (代码 {value})", self._secrets()),
                              value in self.retryable_values, latency)


# --------------------------------------------------------------------------- e-mail


class EmailChannel:
    """E-mail over SMTP for supervisors and reports. ``address``: one or more recipients (``;``/``,``).

    opts: ``host``, ``port`` (25), ``from_addr``, ``starttls`` (False), ``use_ssl`` (False),
    ``username`` (the password is ``secret``), ``timeout`` (5 s).
    """

    name = "email"
    kind = "email"

    def __init__(self, address: str, secret: str | None = None, *, host: str = "127.0.0.1", port: int = 25,
                 from_addr: str = "sibifang@localhost", starttls: bool = False, use_ssl: bool = False,
                 username: str | None = None, timeout: float = 5.0, rate_limiter: RateLimiter | None = None,
                 limits: tuple[RateLimit, ...] | None = None, sender: str | None = None,
                 rate_limited: bool = True, **_ignored):
        self.address = address
        self.recipients = [a.strip() for a in address.replace(";", ",").split(",") if a.strip()]
        self.secret = _secret_value(secret)
        self.host, self.port, self.from_addr = host, int(port), sender or from_addr
        self.starttls, self.use_ssl, self.username, self.timeout = starttls, use_ssl, username, timeout
        self.rate_limiter = (rate_limiter or DEFAULT_RATE_LIMITER) if rate_limited else RateLimiter(enabled=False)
        self.limits = limits or ()

    def __repr__(self) -> str:
        return f"EmailChannel(host={self.host!r}, port={self.port})"

    def build_message(self, msg: OutgoingMessage) -> EmailMessage:
        em = EmailMessage()
        em["Subject"] = msg.title or "四必访告警"
        em["From"] = self.from_addr
        em["To"] = ", ".join(self.recipients)
        em["Date"] = formatdate(localtime=False)
        em["Message-ID"] = make_msgid(domain="sibifang")
        em["X-Sibifang-Alert-Id"] = msg.alert_id
        em["X-Sibifang-Dedup-Key"] = msg.dedup_key
        em.set_content(msg.text, charset="utf-8")
        return em

    def send(self, msg: OutgoingMessage, *, session: requests.Session | None = None) -> DeliveryResult:
        t0 = time.perf_counter()
        wait = self.rate_limiter.try_acquire(f"email:{self.host}:{self.port}", self.limits)
        if wait > 0:
            return DeliveryResult(False, None, "local_rate_limit", "已达到发送频率上限", True, 0.0, wait)
        result = self._deliver(msg, t0)
        log.info("channel=email host=%s alert_id=%s ok=%s status=%s retryable=%s%s", self.host, msg.alert_id,
                 result.ok, result.status_code, result.retryable, "" if result.ok else f" error={result.error}")
        return result

    def _deliver(self, msg: OutgoingMessage, t0: float) -> DeliveryResult:
        if not self.recipients:
            return DeliveryResult(False, None, None, "没有收件地址", False, 0.0)
        cls = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
        try:
            with cls(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.secret or "")
                refused = smtp.send_message(self.build_message(msg), self.from_addr, self.recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            return DeliveryResult(False, codes[0] if codes else None, None, "收件人被拒绝",
                                  all(400 <= c < 500 for c in codes), _elapsed_ms(t0))
        except smtplib.SMTPAuthenticationError as exc:
            return DeliveryResult(False, exc.smtp_code, None, "SMTP 认证失败", False, _elapsed_ms(t0))
        except smtplib.SMTPResponseException as exc:
            return DeliveryResult(False, exc.smtp_code, None, f"SMTP 服务器拒绝 ({exc.smtp_code})",
                                  400 <= exc.smtp_code < 500, _elapsed_ms(t0))
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
            return DeliveryResult(False, None, None, _describe_exception(exc), True, _elapsed_ms(t0))
        except smtplib.SMTPException as exc:
            return DeliveryResult(False, None, None, _describe_exception(exc), False, _elapsed_ms(t0))
        if refused:
            # Accepted for some recipients only: report it, but do not resend to those who got it.
            return DeliveryResult(True, 250, None, f"部分收件人被拒绝: {len(refused)}", False, _elapsed_ms(t0))
        return DeliveryResult(True, 250, None, None, False, _elapsed_ms(t0))


# --------------------------------------------------------------------------- factory

_CLASSES = {"webhook": WebhookChannel, "wecom": WeComChannel, "dingtalk": DingTalkChannel,
            "feishu": FeishuChannel, "sms": SmsChannel, "email": EmailChannel}


def channel_for(kind: str, address: str, secret: str | None = None, **opts) -> Channel:
    """Adapter for ``kind`` (webhook|wecom|dingtalk|feishu|sms|email) and address.

    Common opts: ``timeout``, ``rate_limiter``, ``rate_limited`` (False: no local limits),
    ``limits``, ``wait_for_rate_limit``, ``clock``, ``sleep``; e-mail takes ``sender`` or ``from_addr``;
    per-kind opts are documented on each class.
    """
    kind = (kind or "").strip().lower()
    cls = _CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"未知的告警通道类型: {kind!r} (可选: {', '.join(sorted(_CLASSES))})")
    if not address:
        raise ValueError(f"通道 {kind} 缺少地址")
    return cls(address, secret, **opts)
