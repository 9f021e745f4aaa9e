"""Acknowledgement tokens (确认令牌) for alert links.

A grid worker confirms she has seen an alert by opening a link; the link carries a token
that says which alert, which recipient and until when, signed with HMAC-SHA256 so it
cannot be forged or extended. Token layout (URL-safe, no padding)::

    base64url(json payload) "." base64url(hmac_sha256(secret, payload_part))

payload: ``{"v": 1, "a": alert_id, "r": recipient_id, "i": issued_epoch, "e": expiry_epoch}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

TOKEN_VERSION = 1


class AckTokenError(ValueError):
    """The token cannot be accepted; the message is safe to show (no secret, no token)."""


class MalformedAckToken(AckTokenError):
    pass


class BadAckSignature(AckTokenError):
    pass


class ExpiredAckToken(AckTokenError):
    pass


@dataclass(frozen=True)
class AckClaims:
    alert_id: str
    recipient_id: str
    issued_at: datetime
    expires_at: datetime


def _secret_bytes(secret) -> bytes:
    # Accept str, bytes or pydantic SecretStr without importing pydantic here.
    if hasattr(secret, "get_secret_value"):
        secret = secret.get_secret_value()
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("签名密钥不能为空")
    return bytes(secret)


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _epoch(now: datetime) -> int:
    # A naive ``now`` is the installation's local time (``sibifang.settings.local_now``, as the
    # database stores it), not the host's: a UTC server would otherwise issue links that expire
    # 8 hours off. The token itself stores epoch seconds.
    if now.tzinfo is None:
        from sibifang.settings import LOCAL_TZ

        now = now.replace(tzinfo=LOCAL_TZ)
    return int(now.timestamp())


def _sign(payload_part: str, secret: bytes) -> str:
    return _b64e(hmac.new(secret, payload_part.encode("ascii"), hashlib.sha256).digest())


def _payload(alert_id: str, recipient_id: str, ttl: timedelta | float | int, now: datetime) -> bytes:
    if not isinstance(ttl, timedelta):
        ttl = timedelta(hours=float(ttl))
    if ttl <= timedelta(0):
        raise ValueError("ttl 必须为正")
    issued = _epoch(now)
    payload = {"v": TOKEN_VERSION, "a": str(alert_id), "r": str(recipient_id), "i": issued,
               "e": issued + int(ttl.total_seconds())}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def make_ack_token(alert_id: str, recipient_id: str, secret, ttl: timedelta | float | int, now: datetime) -> str:
    """Signed, URL-safe token; ``ttl`` is a timedelta or a number of hours."""
    payload_part = _b64e(_payload(alert_id, recipient_id, ttl, now))
    return f"{payload_part}.{_sign(payload_part, _secret_bytes(secret))}"


def _b64_length(n_bytes: int) -> int:
    """Characters of ``n_bytes`` in unpadded base64url (``_b64e``)."""
    return (4 * n_bytes + 2) // 3


def ack_url_length(base_url: str, alert_id: str, recipient_id: str, ttl: timedelta | float | int,
                   now: datetime) -> int:
    """How long the link ``ack_url`` makes of the token ``make_ack_token`` signs for these claims,
    without signing: the layout fixes it (the payload part, a dot, an HMAC-SHA256 of 32 bytes),
    whatever the key, and ``quote`` leaves a token's characters as they are."""
    token = _b64_length(len(_payload(alert_id, recipient_id, ttl, now))) + 1 + _b64_length(hashlib.sha256().digest_size)
    return len(ack_url(base_url, "")) + token


def verify_ack_token(token: str, secret, now: datetime) -> AckClaims:
    """Check signature then expiry; raises a subclass of :class:`AckTokenError`."""
    # Not ASCII (a link mangled in transit, a forged one): malformed, not an encoding error out of
    # the signature check, which escaped the callers' AckTokenError and dropped the connection
    if not isinstance(token, str) or not token.isascii() or token.count(".") != 1 or len(token) > 2048:
        raise MalformedAckToken("确认链接格式不正确")
    payload_part, signature = token.split(".")
    expected = _sign(payload_part, _secret_bytes(secret))
    # Constant-time comparison: a timing side channel would leak the signature byte by byte.
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace")):
        raise BadAckSignature("确认链接签名无效（可能被篡改）")
    try:
        payload = json.loads(_b64d(payload_part))
        alert_id, recipient_id = str(payload["a"]), str(payload["r"])
        issued, expiry = int(payload["i"]), int(payload["e"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedAckToken("确认链接内容无法解析") from exc
    if payload.get("v") != TOKEN_VERSION:
        raise MalformedAckToken("确认链接版本不受支持")
    if _epoch(now) >= expiry:
        raise ExpiredAckToken("确认链接已过期，请联系上级重新发送")
    return AckClaims(alert_id=alert_id, recipient_id=recipient_id,
                     issued_at=datetime.fromtimestamp(issued, timezone.utc),
                     expires_at=datetime.fromtimestamp(expiry, timezone.utc))


def ack_url(base_url: str, token: str) -> str:
    """Link served by ``sibifang serve`` (``sibifang.ack_server``): ``<base>/ack?t=<token>``."""
    return f"{base_url.rstrip('/')}/ack?t={quote(token, safe='')}"
