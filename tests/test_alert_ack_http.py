"""The acknowledgement server against malformed requests, over a real socket: a bad or negative
Content-Length is answered 400 at once (it raised, or blocked the thread reading to EOF)."""

from __future__ import annotations

import socket

import pytest

from tests.test_ack_server import server, site  # noqa: F401 - fixtures


@pytest.mark.parametrize("length", ["-1", "abc", "1e3"])
def test_a_bad_content_length_is_refused_at_once(server, length):  # noqa: F811
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST /ack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {length}\r\n\r\nt=abc".encode())
        sock.settimeout(3)
        data = b""
        try:
            while chunk := sock.recv(4096):  # the server closes the connection after its answer
                data += chunk
        except socket.timeout:
            data = data or b"(no answer: the handler is blocked)"
        reply = data.decode("utf-8", "replace")
    assert reply.startswith("HTTP/1.0 400") or reply.startswith("HTTP/1.1 400"), reply[:80]
    assert "提交的内容" in reply
