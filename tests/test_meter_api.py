"""Meter pull connector against a real local HTTP server (127.0.0.1, ephemeral port)."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
import requests
from sqlalchemy import select
from pydantic import SecretStr

from sibifang.ingest_readings import clean_readings
from sibifang.meter_api import MeterApiError, fetch_readings, resume_since

TOKEN = "s3cr3t-token-DO-NOT-LOG"

PAGES = {
    None: {"readings": [{"meter_id": "M1", "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1},
                        {"meter_id": "M2", "ts": "2026-11-20T00:15:00Z", "kwh": 0.2}],
           "next_page_token": "p2"},
    "p2": {"readings": [{"meter_id": "M1", "ts": "2026-11-20 08:30", "kwh": 0.3}], "next_page_token": "p3"},
    "p3": {"readings": [{"meter_id": 3, "ts": "2026-11-20 08:30", "kwh": None}], "next_page_token": None},
}


class _LocalServer:
    """A real HTTP server on 127.0.0.1 (a free port), serving in a thread inside ``with``."""

    def _serve(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class FakeMeterApi(_LocalServer):
    """Pages PAGES; ``script`` maps page token -> list of statuses to answer before succeeding."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: dict[str | None, list[tuple[int, dict]]] = {}
        self.pages = PAGES
        handler = self._handler()
        self._serve(handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/"

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                api.requests.append({"path": parsed.path, "query": query,
                                     "auth": self.headers.get("Authorization")})
                if parsed.path != "/api/v1/readings":
                    return self._send(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"error": "bad token " + str(self.headers.get("Authorization"))})
                token = query.get("page_token")
                pending = api.script.get(token)
                if pending:
                    status, headers = pending.pop(0)
                    return self._send(status, {"error": f"echo {self.headers.get('Authorization')}"}, headers)
                return self._send(200, api.pages[token])

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def api():
    with FakeMeterApi() as server:
        yield server


def fetch(api, token=TOKEN, **kwargs):
    sleeps: list[float] = []
    kwargs.setdefault("sleep", sleeps.append)
    kwargs.setdefault("timeout", 5)
    df = fetch_readings(api.url, token, kwargs.pop("since", datetime(2026, 11, 20, 8, 0)), **kwargs)
    return df, sleeps


def test_pages_are_followed_with_bearer_token_and_since(api):
    df, sleeps = fetch(api, token=SecretStr(TOKEN))
    assert len(api.requests) == 3 and sleeps == []
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in api.requests)
    assert [r["query"].get("page_token") for r in api.requests] == [None, "p2", "p3"]
    assert {r["query"]["since"] for r in api.requests} == {"2026-11-20T08:00:00+08:00"}
    assert list(df.columns) == ["line", "meter_id", "ts", "kwh"]
    assert df["line"].tolist() == [1, 2, 3, 4]
    result = clean_readings(df, source="meter-api", now=datetime(2026, 11, 21))
    assert result.counts["read"] == 4 and result.counts["accepted"] == 3
    assert result.quarantined["code"].tolist() == ["missing_kwh"]
    assert set(result.accepted["ts"]) == {pd.Timestamp("2026-11-20 08:15"), pd.Timestamp("2026-11-20 08:30")}


def test_503_and_429_are_retried_respecting_retry_after(api, caplog):
    api.script = {None: [(503, {}), (429, {"Retry-After": "7"})], "p2": [(502, {}), (500, {})]}
    caplog.set_level(logging.DEBUG)
    df, sleeps = fetch(api, backoff_base=0.5)
    assert len(df) == 4
    assert len(api.requests) == 3 + 4
    assert sleeps[1] == 7.0  # Retry-After honoured
    assert 0.25 <= sleeps[0] <= 0.5 and 0.25 <= sleeps[2] <= 0.5 and 0.5 <= sleeps[3] <= 1.0  # backoff
    assert TOKEN not in caplog.text


def test_retries_run_out_with_clear_error(api, caplog):
    api.script = {None: [(503, {})] * 10}
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MeterApiError) as info:
        fetch(api, max_attempts=3)
    assert info.value.retryable and "3" in str(info.value)
    assert len(api.requests) == 3
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text


def test_too_long_retry_after_fails_fast(api):
    api.script = {None: [(429, {"Retry-After": "3600"})]}
    with pytest.raises(MeterApiError, match="3600"):
        fetch(api, max_retry_after=60)
    assert len(api.requests) == 1


def test_4xx_is_not_retried_and_echoed_token_is_redacted(api, caplog):
    api.script = {None: [(400, {})]}
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MeterApiError) as info:
        fetch(api)
    assert info.value.status == 400 and not info.value.retryable
    assert len(api.requests) == 1
    message = str(info.value)
    assert "***" in message and TOKEN not in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert TOKEN not in caplog.text


def test_wrong_token_is_401_without_leaking_either_token(api, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MeterApiError) as info:
        fetch(api, token="wrong-" + TOKEN)
    assert info.value.status == 401 and len(api.requests) == 1
    assert "SIBIFANG_METER_API_TOKEN" in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text


def test_connection_refused_is_retried_then_reported_without_token(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeMeterApi() as dead:
        url = dead.url
    sleeps: list[float] = []
    with pytest.raises(MeterApiError) as info:
        fetch_readings(url, TOKEN, None, sleep=sleeps.append, max_attempts=3, timeout=1)
    assert len(sleeps) == 2 and "ConnectionError" in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    assert info.value.__cause__ is None


def test_malformed_page_and_page_loop_are_errors(api):
    api.pages = {None: {"items": []}}
    with pytest.raises(MeterApiError, match="readings"):
        fetch(api)
    api.pages = {None: {"readings": [], "next_page_token": "a"}, "a": {"readings": [], "next_page_token": "a"}}
    with pytest.raises(MeterApiError, match="next_page_token"):
        fetch(api)
    api.pages = {None: {"readings": [], "next_page_token": "b"}, "b": {"readings": [], "next_page_token": "c"}}
    with pytest.raises(MeterApiError, match="max_pages"):
        fetch(api, max_pages=2)


def test_uses_given_session(api):
    with requests.Session() as session:
        df, _ = fetch(api, session=session)
    assert len(df) == 4


def test_resume_since_is_earliest_last_reading_bounded_by_lookback():
    assert resume_since({}) is None
    last = {"M1": pd.Timestamp("2026-11-20 08:00"), "M2": pd.Timestamp("2026-11-20 07:45")}
    assert resume_since(last) == pd.Timestamp("2026-11-20 07:45")
    last["dead"] = pd.Timestamp("2026-09-01")
    assert resume_since(last) == pd.Timestamp("2026-11-13 08:00")


def test_resume_since_goes_no_earlier_than_the_feed_cursor_less_the_late_window():
    last = {"M1": pd.Timestamp("2026-11-20 08:00"), "dead": pd.Timestamp("2026-09-01")}
    assert resume_since(last, fetched_up_to=pd.Timestamp("2026-11-20 08:00")) == pd.Timestamp("2026-11-18 08:00")
    # A meter less than the late window behind the feed (a concentrator uploading yesterday's
    # readings after midnight) is asked from its own last reading.
    late = {"M1": pd.Timestamp("2026-11-20 08:00"), "late": pd.Timestamp("2026-11-19 00:00")}
    assert resume_since(late, fetched_up_to=pd.Timestamp("2026-11-20 08:00")) == pd.Timestamp("2026-11-19 00:00")
    assert resume_since({}, fetched_up_to=pd.Timestamp("2026-11-20 08:00")) == pd.Timestamp("2026-11-18 08:00")


def test_fetch_new_readings_uses_settings_and_resumes_from_store(api, tmp_path, monkeypatch, caplog):
    from sibifang.meter_api import fetch_new_readings
    from sibifang.readings_store import ReadingStore
    from sibifang.settings import reset_settings

    monkeypatch.setenv("SIBIFANG_METER_API_URL", api.url)
    monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN)
    reset_settings()
    caplog.set_level(logging.DEBUG)
    try:
        store = ReadingStore(tmp_path)
        store.append(pd.DataFrame({"meter_id": ["M1", "M2"],
                                   "ts": pd.to_datetime(["2026-11-20 08:00", "2026-11-20 07:45"]),
                                   "kwh": [0.1, 0.1]}))
        df = fetch_new_readings(store, sleep=lambda s: None)
        assert len(df) == 4
        assert api.requests[0]["query"]["since"] == "2026-11-20T07:45:00+08:00"
        # The whole loop: pull -> clean -> store; re-running it adds nothing.
        result = clean_readings(df, source="meter-api", now=datetime(2026, 11, 21))
        assert store.append(result.accepted) == 3
        assert store.append(clean_readings(fetch_new_readings(store), source="meter-api",
                                           now=datetime(2026, 11, 21)).accepted) == 0
        assert TOKEN not in caplog.text
    finally:
        reset_settings()


def test_numeric_meter_ids_arrive_as_sent_even_with_a_null_among_them(api):
    # JSON numbers: an integer column with a null used to become float64 — 3302810001.0, and a
    # 19-digit id another number altogether.
    api.pages = {None: {"readings": [
        {"meter_id": 3302810001234567891, "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1},
        {"meter_id": None, "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.2},
        {"meter_id": 3302810002.0, "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.3},
    ], "next_page_token": None}}
    df, _ = fetch(api)
    result = clean_readings(df, source="meter-api", now=datetime(2026, 11, 21))
    assert result.accepted["meter_id"].tolist() == ["3302810001234567891", "3302810002"]
    assert result.quarantined["code"].tolist() == ["missing_meter_id"]


# ------------------------------------------------------------- a token with whitespace (review, HIGH)

def test_a_token_pasted_with_a_trailing_newline_is_stripped_and_works(api, monkeypatch, caplog):
    """An env file or secret block often ends the token with a newline. requests refused the
    header and quoted it, token and all, in its exception (logged on each of Prefect's retries)."""
    from sibifang.settings import get_settings, reset_settings

    monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", f" {TOKEN}\n")
    reset_settings()
    caplog.set_level(logging.DEBUG)
    try:
        assert get_settings().meter_api_token.get_secret_value() == TOKEN
        df, _ = fetch(api, token=get_settings().meter_api_token)
        assert len(df) == 4 and api.requests[0]["auth"] == f"Bearer {TOKEN}"
        df, _ = fetch(api, token=TOKEN + "\r\n")  # passed directly: stripped the same way
        assert len(df) == 4
    finally:
        reset_settings()
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("bad", [f"{TOKEN}\nX-Evil: 1", f"{TOKEN} extra", f"{TOKEN}\x00", f"{TOKEN}令牌"])
def test_a_token_with_whitespace_or_control_characters_inside_is_refused_without_quoting_it(api, bad, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MeterApiError) as info:
        fetch(api, token=bad)
    assert "SIBIFANG_METER_API_TOKEN" in str(info.value) and not info.value.retryable
    assert api.requests == []  # refused before any request
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text


class _RefusingSession(requests.Session):
    """A request requests will not send, with the header in its message (as InvalidHeader has)."""

    def __init__(self, error: type[requests.RequestException]):
        super().__init__()
        self.error, self.calls = error, 0

    def get(self, url, **kwargs):
        self.calls += 1
        raise self.error(f"Invalid header value: {kwargs['headers'].get('Authorization')!r} for {url}")


@pytest.mark.parametrize("error", [requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                                   requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema])
def test_a_request_that_cannot_be_sent_is_not_retried_and_only_its_class_is_kept(error, caplog):
    caplog.set_level(logging.DEBUG)
    session = _RefusingSession(error)
    sleeps: list[float] = []
    with pytest.raises(MeterApiError) as info:
        fetch_readings("http://meters.example/api", TOKEN, None, session=session, sleep=sleeps.append)
    assert session.calls == 1 and sleeps == []
    assert not info.value.retryable and error.__name__ in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_the_pull_task_never_logs_the_token_nor_retries_a_request_that_cannot_be_sent(
        prefect_harness, app_env, monkeypatch, caplog, capfd):
    """The whole path a scheduled run takes: the task fails once, and neither its logs nor its
    state's message hold the token."""

    from sibifang.settings import reset_settings

    session = _RefusingSession(requests.exceptions.InvalidHeader)
    monkeypatch.setattr(requests, "Session", lambda: session)
    monkeypatch.setenv("SIBIFANG_METER_API_URL", "http://meters.example/api")
    monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN + "\n")
    monkeypatch.setenv("SIBIFANG_DATABASE_URL", f"sqlite:///{app_env / 'app.db'}")
    reset_settings()
    caplog.set_level(logging.INFO)

    failed, error, message = _pull_once()
    assert failed and session.calls == 1  # no retry: it would fail the same way
    assert "InvalidHeader" in error
    out, err = capfd.readouterr()
    assert "InvalidHeader" in caplog.text + out + err  # the failure is logged ...
    for text in (error, message, caplog.text, out, err):
        assert TOKEN not in text  # ... without the token


# ------------------------------------------------------------- a re-pull changes nothing (review #5)

REPULL_PAGES = {
    None: {"readings": [{"meter_id": "M1", "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1},
                        {"meter_id": "M1", "ts": "2026-11-20T08:30:00+08:00", "kwh": 0.2},
                        {"meter_id": "M2", "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1}],
           "next_page_token": "p2"},
    "p2": {"readings": [{"meter_id": "M2", "ts": "2026-11-20T08:30:00+08:00", "kwh": -0.3},
                        {"meter_id": "X9", "ts": "2026-11-20T08:30:00+08:00", "kwh": 0.1},
                        {"meter_id": "X9", "ts": "2026-11-20T08:30:00+08:00", "kwh": 0.1},
                        {"meter_id": "M1", "ts": "2026-11-20T08:45:00+08:00", "kwh": 0.3}],
           "next_page_token": None},
}


def test_pulling_the_same_window_again_stores_counts_and_quarantines_nothing_new(
        api, database_url, app_env, monkeypatch):
    """M2 lags (its last reading is 08:15), so every pull resumes from 08:15 and the API sends
    M1's stored readings, M2's negative reading and the unknown meter X9 again, with whatever
    is new. Three pulls used to give three copies of each quarantined row under three batches,
    and count the stored readings as read and accepted again."""
    import sibifang.settings as settings_module
    from schemas.models import Meter, QuarantinedRow, ReadingBatch
    from sibifang.db import session_scope, upsert
    from sibifang.stats import collect_stats
    from tasks.ingest_readings import pull_api_task
    from tests.test_inbox_rejects import seed, use_database

    monkeypatch.setenv("SIBIFANG_METER_API_URL", api.url)
    monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN)
    use_database(monkeypatch, database_url)
    monkeypatch.setattr(settings_module, "local_now", lambda: datetime(2026, 11, 20, 12, 0))
    seed(database_url)
    with session_scope(database_url) as s:
        upsert(s, Meter, [{"id": "M2", "household_id": "H1", "interval_minutes": 15}], key=["id"])
    window = [*REPULL_PAGES[None]["readings"], *REPULL_PAGES["p2"]["readings"]]
    api.pages = REPULL_PAGES

    def quarantine_rows():
        with session_scope(database_url) as s:
            return sorted((q.code, q.raw["meter_id"], q.raw["ts"]) for q in s.scalars(select(QuarantinedRow)))

    def batches():
        with session_scope(database_url) as s:
            return sorted((b.rows_read, b.rows_accepted, b.rows_quarantined, b.rows_new)
                          for b in s.scalars(select(ReadingBatch)))

    first = pull_api_task.fn()
    # 7 read: 4 accepted (M1 three, M2 one), 3 quarantined (M2 negative, X9 unknown twice).
    assert (first["read"], first["accepted"], first["quarantined"], first["new"]) == (7, 4, 3, 4)
    stored = quarantine_rows()
    assert [c for c, _, _ in stored] == ["negative_kwh", "unknown_meter", "unknown_meter"]
    # The same answer again: nothing is read, stored, counted or quarantined.
    again = pull_api_task.fn()
    assert (again["read"], again["accepted"], again["quarantined"], again["new"]) == (0, 0, 0, 0)
    assert again["already_ingested"] == 7
    assert batches() == [(7, 4, 3, 4)] and quarantine_rows() == stored
    # Two more pulls, each with one new M1 reading after the window M2 keeps open: only that
    # reading is read (a batch of its own), the window is neither counted nor quarantined again.
    for minute in (0, 15):
        new = {"meter_id": "M1", "ts": f"2026-11-20T09:{minute:02d}:00+08:00", "kwh": 0.1}
        window.append(new)
        api.pages = {None: {"readings": list(window), "next_page_token": None}}
        more = pull_api_task.fn()
        assert (more["read"], more["accepted"], more["quarantined"], more["new"]) == (1, 1, 0, 1)
        assert more["already_ingested"] == len(window) - 1
    assert batches() == [(1, 1, 0, 1), (1, 1, 0, 1), (7, 4, 3, 4)]
    assert quarantine_rows() == stored
    stats = collect_stats(database_url)
    assert (stats["readings"], stats["readings_quarantined"], stats["quarantined_rows"]) == (6, 3, 3)


def _pull_twice(api, database_url, monkeypatch, first, second):
    import sibifang.settings as settings_module
    from tasks.ingest_readings import pull_api_task
    from tests.test_inbox_rejects import seed, use_database

    monkeypatch.setenv("SIBIFANG_METER_API_URL", api.url)
    monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN)
    use_database(monkeypatch, database_url)
    monkeypatch.setattr(settings_module, "local_now", lambda: datetime(2026, 11, 20, 12, 0))
    seed(database_url)
    r = lambda hm, k: {"meter_id": "M1", "ts": f"2026-11-20T{hm}:00+08:00", "kwh": k}  # noqa: E731
    api.pages = {None: {"readings": [r(*x) for x in first], "next_page_token": None}}
    pull_api_task.fn()
    api.pages = {None: {"readings": [r(*x) for x in second], "next_page_token": None}}
    return pull_api_task.fn()


def test_a_late_reading_in_a_later_pull_is_stored(api, database_url, app_env, monkeypatch):
    # 08:30 reached the API after 08:45: the next pull sends it with the two already stored
    out = _pull_twice(api, database_url, monkeypatch, [("08:15", .1), ("08:45", .3)],
                      [("08:15", .1), ("08:30", .2), ("08:45", .3)])
    assert (out["read"], out["accepted"], out["new"], out["already_ingested"]) == (1, 1, 1, 2)


def test_a_stored_reading_sent_again_with_another_value_is_quarantined_not_dropped(api, database_url, app_env,
                                                                                   monkeypatch):
    out = _pull_twice(api, database_url, monkeypatch, [("08:15", .1), ("08:30", .3)],
                      [("08:15", .9), ("08:30", .3), ("08:45", .3)])
    assert (out["read"], out["accepted"], out["conflicting"], out["already_ingested"]) == (2, 1, 1, 1)


def test_a_pull_reads_each_reading_s_time_once(api, database_url, app_env, monkeypatch):
    """The pull finds the readings the store holds and cleans the others with one reading of
    their times (they were read twice: once to find the stored ones, again to clean the rest)."""
    import sibifang.ingest_readings as ingest_readings

    parsed = []
    parse = ingest_readings._parse_ts

    def counted(values, *args, **kwargs):
        parsed.append(len(values))
        return parse(values, *args, **kwargs)

    monkeypatch.setattr(ingest_readings, "_parse_ts", counted)
    second = [("08:15", .1), ("08:30", .2), ("08:45", .3), ("09:00", "x")]
    out = _pull_twice(api, database_url, monkeypatch, [("08:15", .1), ("08:45", .3)], second)
    assert (out["read"], out["accepted"], out["new"], out["already_ingested"]) == (2, 1, 1, 2)
    assert parsed == [2, len(second)]  # the first pull's two readings, then the second's four


# ------------------------------------- a key in the API's URL is a secret too (review ingest3 #1)

PATH_KEY = "PATHKEYzq9XXabcdef0123"
QUERY_KEY = "QKEYzq9XX/+=q"  # sent percent-encoded; a server may echo it either way


class EchoingGateway(_LocalServer):
    """Answers every GET like many gateways do: 404 with the request path (and query) in the
    body, raw or decoded; a request to ``<base path>/readings`` with the base query kept is
    answered 200 with one page, so a test can tell a well-joined URL from a mangled one."""

    def __init__(self, base_path: str, *, decoded: bool = False):
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.requests.append(self.path)
                parsed = urlparse(self.path)
                if parsed.path == api.ok_path and api.ok_query and api.ok_query in parsed.query:
                    return self._send(200, {"readings": [{"meter_id": "M1", "ts": "2026-11-20 08:15", "kwh": 0.1}]})
                from urllib.parse import unquote
                shown = unquote(self.path) if decoded else self.path
                return self._send(404, {"error": f"no route for GET {shown}"})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.ok_path, self.ok_query = None, None
        self._serve(Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}{base_path}"


@pytest.mark.parametrize("decoded", [False, True])
@pytest.mark.parametrize("base_path, key", [
    (f"/v1/{PATH_KEY}", PATH_KEY),
    (f"/v1/{PATH_KEY}/", PATH_KEY),
    ("/v1/k9short", "k9short"),  # a short key in the path is still a key
    (f"/v1?key={QUERY_KEY.replace('/', '%2F').replace('+', '%2B').replace('=', '%3D')}", QUERY_KEY),
    ("/v1?access_token=abcd1234&sign=SIGNzq9XX", "SIGNzq9XX"),
])
def test_an_error_answer_echoing_the_url_never_quotes_a_key_from_the_url(base_path, key, decoded, caplog):
    """A 404 that echoes the request path (as many gateways do) used to carry a key in the
    base URL's path or query into the exception, and so into logs and Prefect's database."""
    caplog.set_level(logging.DEBUG)
    with EchoingGateway(base_path, decoded=decoded) as gw:
        with pytest.raises(MeterApiError) as info:
            fetch_readings(gw.base, TOKEN, datetime(2026, 11, 20), sleep=lambda s: None, timeout=5)
    message = str(info.value)
    assert info.value.status == 404 and len(gw.requests) == 1
    assert "HTTP 404" in message and "***" in message
    from urllib.parse import quote
    for form in {key, quote(key, safe=""), key[:8]}:
        assert form not in message, (form, message)
        assert form not in caplog.text, form
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize("base_path", ["/v1?key=QKEYzq9XXq", "/v1/?key=QKEYzq9XXq", "/v1?key=QKEYzq9XXq&x=1"])
def test_a_base_url_with_a_query_gets_readings_appended_to_its_path_and_keeps_its_query(base_path):
    """``base_url + "/readings"`` turned ``/v1?key=K`` into ``/v1?key=K/readings``."""
    with EchoingGateway(base_path) as gw:
        gw.ok_path, gw.ok_query = "/v1/readings", "key=QKEYzq9XXq"
        df = fetch_readings(gw.base, TOKEN, datetime(2026, 11, 20), sleep=lambda s: None, timeout=5)
    assert len(df) == 1
    parsed = urlparse(gw.requests[0])
    query = parse_qs(parsed.query)
    assert parsed.path == "/v1/readings" and query["key"] == ["QKEYzq9XXq"]
    assert query["since"] == ["2026-11-20T00:00:00+08:00"]


def test_the_pull_task_keeps_a_url_key_out_of_its_state_logs_and_output(prefect_harness, app_env, monkeypatch,
                                                                         caplog, capfd):
    """The path a scheduled pull takes: the 404's message is the task's state message and
    result (what Prefect stores) and goes to the run's log and stderr."""

    from sibifang.settings import reset_settings

    with EchoingGateway(f"/v1/{PATH_KEY}") as gw:
        monkeypatch.setenv("SIBIFANG_METER_API_URL", gw.base)
        monkeypatch.setenv("SIBIFANG_METER_API_TOKEN", TOKEN)
        monkeypatch.setenv("SIBIFANG_DATABASE_URL", f"sqlite:///{app_env / 'app.db'}")
        reset_settings()
        caplog.set_level(logging.DEBUG)

        failed, error, message = _pull_once()
    assert failed and len(gw.requests) == 1  # a 404 is not retried
    assert "HTTP 404" in error
    out, err = capfd.readouterr()
    for text in (error, message, caplog.text, out, err):
        assert PATH_KEY not in text and TOKEN not in text


def _pull_once() -> tuple[bool, str, str]:
    """One scheduled pull as Prefect runs it, without retry delays: (failed, result, state message);
    the settings are reset afterwards."""
    from prefect import flow

    from sibifang.settings import reset_settings
    from tasks.ingest_readings import pull_api_task

    @flow
    def pull_once():
        state = pull_api_task.with_options(retry_delay_seconds=0)(return_state=True)
        return state.is_failed(), str(state.result(raise_on_failure=False)), state.message or ""

    try:
        return pull_once()
    finally:
        reset_settings()
