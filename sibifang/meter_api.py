"""Pull connector for a utility's meter-reading API (paged JSON over HTTP).

Expected API (what a utility or the village platform must expose)::

    GET {base_url}/readings?since=2026-11-20T08:15:00+08:00[&page_token=...]
    Authorization: Bearer <token>

    200 {"readings": [{"meter_id": "3302810001", "ts": "2026-11-20T08:30:00+08:00", "kwh": 0.12}, ...],
         "next_page_token": "opaque" | null}

``since`` is exclusive (readings with ``ts > since``); ``ts`` may carry an offset or be naive
local time; ``kwh`` is the energy of the interval ending at ``ts`` (a feed may send
``register_kwh`` instead: then every reading must). The last page has no
``next_page_token`` (null, empty or absent). A token seen before, or a page of readings that
repeats an earlier page's exactly (a platform ignoring ``page_token``), stops the pull.

Behaviour:

* Timeouts on connect and read, and a deadline for a page as a whole (``page_deadline``, by
  default four read timeouts): the read timeout bounds each wait for a byte, so a platform (or
  a proxy) sending a byte now and then would otherwise hold a pull for as long as it liked.
  Retries with exponential backoff and jitter on connection
  errors, timeouts, 5xx and 429; ``Retry-After`` (seconds or HTTP date) is respected, up to
  ``max_retry_after`` seconds; a longer one ends the pull at once (not retryable, the message
  names the feed's host, the page, the wait asked and the cap). Other 4xx (bad request, bad
  token) are never retried: they fail the same way again, nor is a request that cannot be
  sent (an invalid header, URL or scheme). Redirects are not followed (a token must not travel elsewhere).
* The token goes only into the Authorization header. It never appears in a log line or an
  exception message: messages carry the status, the page number and, for errors, a short
  excerpt of the body with the token redacted, and exceptions from ``requests`` are not
  chained (their text could include a URL with credentials, or the header itself: only their
  class name is kept). The token is stripped of surrounding whitespace; one with whitespace
  or control characters inside is refused before any request.
* The base URL may carry a key of its own (a gateway key in its path or query: the settings
  treat it as a secret). ``/readings`` is joined onto its path, its query kept; its path,
  query values and user info are redacted like the token from an error's excerpt (raw and
  percent-encoded, since a gateway answering 404 often echoes the request path) and from
  urllib3's DEBUG request lines.
* Resuming: :func:`resume_since` gives the ``since`` for the next pull from the store —
  the earliest of the meters' last readings, so no meter misses data, bounded by
  ``max_lookback`` so one long-dead meter does not make every pull re-fetch a month, and by
  the feed's cursor (how far its last booked pull fetched, less ``LATE_WINDOW``), so that a
  dead meter's window is asked for once, not by every pull.
  The overlap is not read twice: the pull task (``tasks.ingest_readings.pull_api_task``)
  skips the readings the store already holds (same meter, time and kWh; a late or corrected
  one is read), and a reading an earlier pull quarantined (same meter id, time as sent and
  reason) is not quarantined nor counted again. The readings' times are read once, for both
  the look-up in the store and the cleaning (:func:`sibifang.ingest_readings.parse_reading_times`);
  this connector hands them on as sent.
* The result is a raw frame (``line, meter_id, ts, kwh|register_kwh`` as sent) for
  :func:`sibifang.ingest_readings.clean_readings`; ``line`` is the reading's 1-based
  position in the pull.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

import pandas as pd
import requests
import urllib3
from pydantic import SecretStr

from sibifang.channels import register_log_secrets
from sibifang.settings import LOCAL_TZ_NAME

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# How far each feed was fetched (``load_cursor``), beside the store's partitions.
CURSOR_NAME = "_pull_cursor.json"
# Resuming from the feed's cursor, this much earlier: readings of one meter that reach the
# platform after later ones of other meters are still fetched. Concentrators that upload once a
# day (after midnight, for the day before) put a meter up to ~26 h behind the feed, so two days;
# the cost is that a feed with a dead meter re-fetches two days of every meter, not seven.
LATE_WINDOW = timedelta(hours=48)
# Failures another attempt may cure (the network, the server mid-answer). Every other
# requests error (InvalidHeader, InvalidURL, MissingSchema, ...) is the request's own fault.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class MeterApiError(RuntimeError):
    """The meter API failed in a way retrying will not fix (or retries ran out)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def fetch_readings(
    base_url: str,
    token: str | SecretStr | None,
    since: datetime | str | None,
    *,
    session: requests.Session | None = None,
    max_pages: int = 10_000,
    timeout: float | tuple[float, float] = (5.0, 30.0),
    page_deadline: float | None = None,
    max_attempts: int = 6,
    backoff_base: float = 0.5,
    backoff_max: float = 30.0,
    max_retry_after: float = 300.0,
    sleep: Callable[[float], None] | None = None,
    timezone: str = LOCAL_TZ_NAME,
) -> pd.DataFrame:
    """Fetch every reading after ``since`` from ``{base_url}/readings``, following pages.

    ``since``: naive datetimes are local time (Asia/Shanghai); None fetches everything the
    API holds. Raises :class:`MeterApiError` on a non-retryable error, after ``max_attempts``
    failed attempts of one page, on a malformed answer, or when ``max_pages`` is exceeded
    (the data would be incomplete; raise the limit or pull more often).
    """
    if max_pages < 1 or max_attempts < 1:
        raise ValueError("max_pages and max_attempts must be at least 1")
    sleep = sleep or time.sleep  # looked up now: a test's patched clock reaches the pull task's call
    if page_deadline is None:
        page_deadline = 4 * (timeout[1] if isinstance(timeout, tuple) else timeout)
    secret = _bearer_token(token)
    url = _readings_url(base_url)
    # The token and whatever in the base URL may be a key (its path, its query, a password):
    # none of them may be quoted back from an error answer.
    url_secrets = _base_url_secrets(base_url)
    secrets = [secret, *url_secrets]
    register_log_secrets(url_secrets)  # urllib3's DEBUG request lines show the path
    own_session = session is None
    session = session or requests.Session()
    headers = {"Accept": "application/json"}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    since_text = _format_since(since, timezone)

    readings: list[dict[str, Any]] = []
    page_token: str | None = None
    seen_tokens: set[str] = set()
    seen_pages: dict[str, int] = {}
    try:
        for page in range(1, max_pages + 1):
            params = {"since": since_text} if since_text else {}
            if page_token:
                params["page_token"] = page_token
            body = _get_page(session, url, params, headers, page=page, timeout=timeout,
                             page_deadline=page_deadline, max_attempts=max_attempts, backoff_base=backoff_base,
                             backoff_max=backoff_max, max_retry_after=max_retry_after,
                             sleep=sleep, secrets=secrets)
            batch = body.get("readings")
            if not isinstance(batch, list) or not all(isinstance(r, dict) for r in batch):
                raise MeterApiError(f"电表接口第 {page} 页格式不对：缺少 readings 列表")
            if batch:
                # A platform ignoring page_token sends the same page under a new token each time:
                # the tokens alone would page on to max_pages (10 000 requests). Two pages with
                # the very same readings are that, never data.
                fingerprint = hashlib.sha1(json.dumps(batch, sort_keys=True, default=str).encode()).hexdigest()
                if fingerprint in seen_pages:
                    raise MeterApiError(f"电表接口第 {page} 页与第 {seen_pages[fingerprint]} 页的读数完全重复"
                                        "（平台似乎忽略了 page_token），停止翻页；数据不完整，请联系平台")
                seen_pages[fingerprint] = page
            readings.extend(batch)
            page_token = body.get("next_page_token") or None
            log.debug("meter API page %d: %d readings", page, len(batch))
            if page_token is None:
                break
            if not isinstance(page_token, str) or page_token in seen_tokens:
                raise MeterApiError(f"电表接口第 {page} 页返回了重复或无效的 next_page_token，停止翻页以免死循环")
            seen_tokens.add(page_token)
        else:
            raise MeterApiError(f"电表接口超过 {max_pages} 页仍未结束；数据不完整，请调大 max_pages 或缩短拉取间隔")
    finally:
        if own_session:
            session.close()

    log.info("meter API: %d readings in %d page(s) since %s", len(readings), page, since_text or "the beginning")
    return _readings_frame(readings)


def _bearer_token(token: str | SecretStr | None) -> str | None:
    """The token as it may go into the header: surrounding whitespace stripped (a token pasted
    into an env file or a secret block often ends with a newline), and nothing but visible
    ASCII inside. requests refuses a header value with a newline and quotes the whole value
    in its exception, which Prefect would log on every retry: checked here, before any
    request, with a message that names the variable, never its value."""
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token
    if secret is None:
        return None
    secret = secret.strip()
    if any(not ("\x21" <= ch <= "\x7e") for ch in secret):
        raise MeterApiError("SIBIFANG_METER_API_TOKEN 含有空格、换行或其他不可见字符（或非 ASCII 字符），"
                            "令牌无法放入请求头；请重新复制令牌后再设置")
    return secret or None


def resume_since(last_ts: dict[str, pd.Timestamp], *, max_lookback: timedelta = timedelta(days=7),
                 fetched_up_to: pd.Timestamp | None = None, late_window: timedelta = LATE_WINDOW
                 ) -> pd.Timestamp | None:
    """``since`` for the next pull, from ``ReadingStore.last_ts()``; None on an empty store
    that no pull of this feed has booked anything for.

    The earliest per-meter last reading, but no earlier than ``max_lookback`` before the
    latest one: a meter silent for longer is offline, and re-fetching every other meter's
    month would not bring it back. Nor earlier than ``late_window`` before ``fetched_up_to``
    (:func:`load_cursor`: how far the feed's last booked pull fetched): a dead meter's window
    was asked for once, and asking again on every pull brings nothing but the other meters'
    readings again. Readings that reach the platform up to ``late_window`` after later ones of
    other meters are still fetched; a meter lagging further behind the feed than that is read
    as silent.
    """
    cursor = None if fetched_up_to is None else pd.Timestamp(fetched_up_to) - pd.Timedelta(late_window)
    if not last_ts:
        return cursor
    values = pd.Series(list(last_ts.values()), dtype="datetime64[ns]")
    since = max(values.min(), values.max() - pd.Timedelta(max_lookback))
    return since if cursor is None else max(since, cursor)


def load_cursor(root: Path, base_url: str) -> pd.Timestamp | None:
    """How far the feed at ``base_url`` was fetched by its last booked pull (naive local time),
    kept in ``<root>/_pull_cursor.json``; None before the first. Keyed by a digest of the URL:
    another platform (or the same one under another key) starts from the store alone."""
    try:
        kept = json.loads((Path(root) / CURSOR_NAME).read_text(encoding="utf-8"))
        value = kept.get(_cursor_key(base_url))
    except (OSError, ValueError, AttributeError):
        return None
    return pd.Timestamp(value) if value else None


def save_cursor(root: Path, base_url: str, fetched_up_to: pd.Timestamp | None) -> pd.Timestamp | None:
    """After a pull is booked: move the feed's cursor to ``fetched_up_to``, the pull's latest
    reading not ahead of the clock (a meter clock ahead sends readings of tomorrow, set aside as
    ``future_ts``: a cursor there would skip every reading until then; the pull task gives it,
    ``tasks.ingest_readings._ingest_frame``), never back. Called only once the pull's readings
    are in the ledger: a pull that fails before leaves the cursor where it was, and the next one
    fetches from the store's last readings."""
    if fetched_up_to is None or pd.isna(fetched_up_to):
        return load_cursor(root, base_url)
    latest = pd.Timestamp(fetched_up_to)
    path = Path(root) / CURSOR_NAME
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        kept = kept if isinstance(kept, dict) else {}
    except (OSError, ValueError):
        kept = {}
    key = _cursor_key(base_url)
    if kept.get(key) and pd.Timestamp(kept[key]) >= latest:
        return pd.Timestamp(kept[key])
    kept[key] = latest.isoformat()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(kept, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return latest


def _cursor_key(base_url: str) -> str:
    return hashlib.sha1(base_url.strip().encode("utf-8")).hexdigest()


def fetch_new_readings(store, *, session: requests.Session | None = None, **kwargs: Any) -> pd.DataFrame:
    """Pull from ``settings.meter_api_url`` with ``settings.meter_api_token``, resuming from ``store``."""
    from sibifang.settings import get_settings

    settings = get_settings()
    if not settings.meter_api_url:
        raise MeterApiError("未配置电表接口地址 SIBIFANG_METER_API_URL")
    since = resume_since(store.last_ts(), fetched_up_to=load_cursor(store.root, settings.meter_api_url))
    return fetch_readings(settings.meter_api_url, settings.meter_api_token, since,
                          session=session, timezone=LOCAL_TZ_NAME, **kwargs)


# ---------------------------------------------------------------------- internals

class PageDeadlineExceeded(requests.Timeout):
    """A page's answer did not arrive whole within its deadline (each byte within the read timeout)."""


def _read_within(response: requests.Response, deadline: float) -> bytes:
    """The body of a streamed response, read by chunks until ``deadline`` seconds have passed
    (the last wait for a chunk can still take one read timeout)."""
    end = time.monotonic() + deadline
    chunks = []
    while True:
        # read1: what has arrived, up to 64 KiB (iter_content waits to fill its whole chunk, and
        # a trickle fills none within any deadline). urllib3's own errors, which iter_content
        # would have turned into requests' (a read timeout, a connection broken mid-body: both
        # passing, retried), are turned into them here, unchained as everywhere in this module.
        try:
            chunk = response.raw.read1(65536, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            failure: type[requests.RequestException] = requests.exceptions.ReadTimeout
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError):
            failure = requests.exceptions.ChunkedEncodingError
        except urllib3.exceptions.DecodeError:
            failure = requests.exceptions.ContentDecodingError
        else:
            failure = None
        if failure is not None:
            raise failure() from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if time.monotonic() > end:
            raise PageDeadlineExceeded()


def _get_page(session: requests.Session, url: str, params: dict, headers: dict, *, page: int,
              timeout, page_deadline: float, max_attempts: int, backoff_base: float, backoff_max: float,
              max_retry_after: float, sleep: Callable[[float], None], secrets: list[str | None]) -> dict:
    feed = _feed_name(url)
    for attempt in range(1, max_attempts + 1):
        wait: float | None = None
        problem: str
        failure = None
        try:
            response = session.get(url, params=params, headers=headers, timeout=timeout,
                                   allow_redirects=False, stream=True)
            try:
                data = _read_within(response, page_deadline)
            finally:
                response.close()
        except PageDeadlineExceeded:
            problem = f"{page_deadline:.0f} 秒内未传完"
        except TRANSIENT_ERRORS as exc:
            # Only the class name: requests' message can embed the URL, proxy details or a header.
            problem = f"连接失败 ({type(exc).__name__})"
        except (requests.RequestException, ValueError, UnicodeError) as exc:
            # Anything else requests (or http.client under it) refuses -- an invalid header,
            # URL or scheme -- fails the same way on every attempt. Its message may quote the
            # Authorization header (InvalidHeader does), so only the class name is kept, and
            # the error is raised outside this block so that it carries no __context__.
            failure = type(exc).__name__
        else:
            status = response.status_code
            if status == 200:
                try:
                    body = json.loads(data)
                except ValueError:
                    raise MeterApiError(f"电表接口第 {page} 页不是有效的 JSON", status=status) from None
                if not isinstance(body, dict):
                    raise MeterApiError(f"电表接口第 {page} 页不是 JSON 对象", status=status)
                return body
            if status not in RETRY_STATUS:
                raise MeterApiError(_status_message(status, page, data, response.encoding, secrets),
                                    status=status) from None
            problem = f"HTTP {status}"
            wait = _retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and wait > max_retry_after:
                # Ended, not waited out: a worker held for an hour, or a wait cut to the cap and the
                # platform asked again before it said, is worse than the next scheduled pull (which
                # resumes where the store stands). Not retryable: Prefect's retries (5 s, 30 s,
                # 2 min) would knock again long before the platform allows.
                raise MeterApiError(f"电表接口 {feed} 第 {page} 页返回 HTTP {status}，要求 {wait:.0f} 秒后再试，"
                                    f"超过等待上限 {max_retry_after:.0f} 秒：本次拉取结束，不再重试；"
                                    "下一次定时拉取从已入库的位置继续，读数不会遗漏",
                                    status=status, retryable=False)
        if failure is not None:
            raise MeterApiError(f"电表接口第 {page} 页请求无法发出（{failure}：请求头或地址无效），不会重试；"
                                "请检查 SIBIFANG_METER_API_URL 和 SIBIFANG_METER_API_TOKEN")
        if attempt == max_attempts:
            raise MeterApiError(f"电表接口第 {page} 页重试 {max_attempts} 次仍失败：{problem}", retryable=True)
        if wait is None:
            wait = min(backoff_max, backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        log.warning("meter API page %d attempt %d/%d failed (%s); retrying in %.1f s",
                    page, attempt, max_attempts, problem, wait)
        sleep(wait)
    raise AssertionError("unreachable")


def _feed_name(url: str) -> str:
    """The platform's host (and port) to name the feed in a message: never its path, query or
    user info, which may carry a key (``_base_url_secrets``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


def _readings_url(base_url: str) -> str:
    """``{base_url}/readings``: the path joined as a path, the base URL's query (a key some
    gateways take there) kept as the query; requests adds ``since``/``page_token`` to it."""
    parts = urlsplit(base_url.strip())
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/readings", fragment=""))


def _base_url_secrets(base_url: str) -> list[str]:
    """Pieces of the base URL an error answer may echo and that may be credentials: the URL
    helper's own (query values, long path segments, the password), plus the user name, the
    whole path and the whole query (a short key in the path is still a key), each also as
    percent-encoded or decoded, since a server may echo either form."""
    from sibifang.channels import _url_secrets

    found = list(_url_secrets(base_url))
    try:
        parts = urlsplit(base_url.strip())
    except ValueError:
        return found
    path = parts.path.rstrip("/")
    found += [path, parts.query, parts.username]
    found += [pair.split("=", 1)[1] for pair in parts.query.split("&") if "=" in pair]
    variants: set[str] = set()
    for piece in found:
        if not piece:
            continue
        for form in (piece, unquote(piece), unquote_plus(piece), quote(unquote(piece), safe="/"),
                     quote(unquote(piece), safe=""), quote_plus(unquote_plus(piece), safe="")):
            if len(form) >= 4:
                variants.add(form)
    return sorted(variants, key=len, reverse=True)  # a longer piece first: no half-redacted key


def _redact_secrets(text: str, secrets: list[str | None]) -> str:
    for s in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def _status_message(status: int, page: int, data: bytes, encoding: str | None, secrets: list[str | None]) -> str:
    if status in (401, 403):
        return f"电表接口拒绝访问（HTTP {status}），请检查 SIBIFANG_METER_API_TOKEN 是否正确、是否过期"
    if 300 <= status < 400:
        return f"电表接口返回重定向（HTTP {status}），为保护令牌不跟随重定向；请把地址改成最终地址"
    # Redacted before it is cut: a key cut in two would no longer match, and half a key is
    # still too much.
    excerpt = _redact_secrets(data.decode(encoding or "utf-8", errors="replace"), secrets)[:200]
    return f"电表接口第 {page} 页请求被拒绝（HTTP {status}），不会重试：{excerpt}"


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _format_since(since: datetime | str | None, timezone: str) -> str | None:
    if since is None:
        return None
    stamp = pd.Timestamp(since)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(timezone)
    return stamp.isoformat()


def _readings_frame(readings: list[dict[str, Any]]) -> pd.DataFrame:
    # As sent (object columns): inferring would turn an integer meter_id column with one null
    # into float64, and a 19-digit id into another number.
    frame = pd.DataFrame(readings, dtype=object) if readings else pd.DataFrame(columns=["meter_id", "ts", "kwh"])
    value_col = "kwh" if "kwh" in frame.columns or "register_kwh" not in frame.columns else "register_kwh"
    for col in ("meter_id", "ts", value_col):
        if col not in frame.columns:
            frame[col] = None
    frame = frame[["meter_id", "ts", value_col]].astype(object)
    frame.insert(0, "line", range(1, len(frame) + 1))
    return frame
