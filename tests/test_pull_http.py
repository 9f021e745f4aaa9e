"""The pull connector against a real local HTTP server: answers that arrive too slowly as a
whole (review pull #4)."""

from __future__ import annotations

import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler

import pytest

from sibifang.meter_api import MeterApiError, fetch_readings
from tests.test_meter_api import TOKEN, _LocalServer
from tests.test_pull_locks import meter_api  # noqa: F401 - the fixture

BODY = (b'{"readings": [{"meter_id": "M1", "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1}], '
        b'"next_page_token": null}')


class TricklingApi(_LocalServer):
    """A platform (or a proxy in front of it) that sends its answer a byte at a time, each well
    within the read timeout, the whole taking far longer than any page should."""

    def __init__(self, seconds_per_byte: float):
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                try:
                    for i in range(len(BODY)):
                        self.wfile.write(BODY[i:i + 1])
                        self.wfile.flush()
                        time.sleep(seconds_per_byte)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the test wants
        self._serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"


def test_a_page_trickling_in_past_its_deadline_fails_as_a_retryable_timeout():
    """The read timeout bounds each wait for a byte, not the page: a platform sending a byte
    every quarter second (113 bytes: half a minute a page, a city's page: hours) never timed
    out, and the pull ran on for as long as it liked. A page now has a deadline as a whole
    (by default four read timeouts): past it, the attempt fails as a timeout, which is retried."""
    sleeps = []
    with TricklingApi(seconds_per_byte=0.25) as api:
        started = time.monotonic()
        with pytest.raises(MeterApiError) as failed:
            fetch_readings(api.url, TOKEN, datetime(2026, 11, 20, 8, 0), timeout=(1.0, 1.0), max_attempts=2,
                           sleep=sleeps.append)
        took = time.monotonic() - started
    assert took < 15, f"two attempts took {took:.0f} s"
    assert failed.value.retryable and api.requests == 2 and len(sleeps) == 1
    assert TOKEN not in str(failed.value)


def test_a_page_within_its_deadline_is_read_whole():
    with TricklingApi(seconds_per_byte=0.001) as api:
        frame = fetch_readings(api.url, TOKEN, None, timeout=(1.0, 1.0), max_attempts=1, sleep=lambda s: None)
    assert frame["meter_id"].tolist() == ["M1"]


def test_a_meter_replaced_between_two_pulls_starts_again_from_its_new_register(meter_api, database_url, app_env):  # noqa: F811
    """A cumulative meter exchanged for a new one under the same id between two pulls: the next
    pull's first reading (near 0, far below the state the last pull left) starts it again; the
    readings after it are intervals from the new register, never a drop of 5000 kWh nor a rise."""
    from sibifang.readings_store import ReadingStore
    from tasks.ingest_readings import pull_api_task
    from tests.test_ingest_rerun import _api_registers, _ledger

    store = ReadingStore(app_env / "data" / "readings")
    meter_api.pages = {None: {"readings": _api_registers(("M1", "08:00", 5000.0), ("M1", "08:15", 5000.1)),
                              "next_page_token": None}}
    first = pull_api_task.fn()
    assert (first["read"], first["accepted"], first["quarantined"]) == (2, 1, 1)
    # The platform sends the overlap again, then the new meter's readings.
    meter_api.pages = {None: {"readings": _api_registers(("M1", "08:15", 5000.1), ("M1", "08:30", 0.0),
                                                         ("M1", "08:45", 0.2), ("M1", "09:00", 0.4)),
                              "next_page_token": None}}
    second = pull_api_task.fn()
    assert (second["read"], second["accepted"], second["quarantined"], second["already_ingested"]) == (3, 2, 1, 1)
    stored = store.load()
    assert [round(k, 4) for k in stored["kwh"]] == [0.1, 0.2, 0.2]
    state = store.last_registers()
    assert (state["ts"].dt.strftime("%H:%M").tolist(), state["register_kwh"].tolist()) == (["09:00"], [0.4])
    ledger = _ledger(database_url)
    assert sum(r[0] for r in ledger) == sum(r[1] + r[2] for r in ledger) == 5


class IgnoringCursorApi(_LocalServer):
    """A platform that ignores ``page_token``: every page is the first one again, under a fresh
    next token each time."""

    def __init__(self):
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.requests += 1
                data = (b'{"readings": [{"meter_id": "M1", "ts": "2026-11-20T08:15:00+08:00", "kwh": 0.1}], '
                        b'"next_page_token": "t%d"}' % api.requests)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        self._serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"


def test_a_platform_sending_the_same_page_under_new_tokens_is_stopped_at_once():
    """The loop guard looked at the tokens only: a platform ignoring ``page_token`` (the same
    page again, a new token each time) was paged max_pages times (10 000 requests by default)
    before the pull failed, every 15 minutes. A page repeating an earlier one stops it at once."""
    with IgnoringCursorApi() as api:
        with pytest.raises(MeterApiError, match="重复") as failed:
            fetch_readings(api.url, TOKEN, None, timeout=(1.0, 1.0), max_pages=200, sleep=lambda s: None)
    assert api.requests == 2 and not failed.value.retryable


class BrokenBodyApi(_LocalServer):
    """The first answer breaks off mid-body (``stall``: the rest never comes; ``cut``: the
    connection closes short of its Content-Length); the next one is whole."""

    def __init__(self, how: str):
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                if api.requests > 1:
                    self.wfile.write(BODY)
                    return
                self.wfile.write(BODY[:20])
                self.wfile.flush()
                if how == "stall":
                    time.sleep(3)
                self.close_connection = True
        self._serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"


@pytest.mark.parametrize("how", ["stall", "cut"])
def test_an_answer_broken_off_mid_body_is_retried_without_the_token(how, caplog):
    """The body is read as it arrives (for the page's deadline): a read timeout or a connection
    closed mid-body must still be a passing failure, retried, and its message keep the token out."""
    sleeps = []
    with BrokenBodyApi(how) as api:
        frame = fetch_readings(api.url, TOKEN, None, timeout=(1.0, 1.0), max_attempts=3, sleep=sleeps.append)
    assert frame["meter_id"].tolist() == ["M1"] and api.requests == 2 and len(sleeps) == 1
    assert TOKEN not in caplog.text


def test_retry_after_as_an_http_date_is_honoured_and_one_past_means_no_wait():
    """Retry-After may be an HTTP date (RFC 9110): the wait until then, and none for a date
    gone by (a platform's clock behind ours), never a negative sleep nor the backoff instead."""
    import email.utils

    from tests.test_meter_api import FakeMeterApi

    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    sleeps = []
    with FakeMeterApi() as api:
        api.script = {None: [(503, {"Retry-After": soon}), (429, {"Retry-After": past})]}
        fetch_readings(api.url, TOKEN, None, timeout=5, sleep=sleeps.append, backoff_base=0.5)
    assert 17 <= sleeps[0] <= 20.5 and sleeps[1] == 0.0
