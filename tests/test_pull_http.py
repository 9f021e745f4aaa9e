"""The pull connector against a real local HTTP server: answers that arrive too slowly as a
whole (review pull #4)."""

from __future__ import annotations

import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler

import pytest

from sibifang.meter_api import MeterApiError, fetch_readings
from tests.test_meter_api import TOKEN, _LocalServer

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
