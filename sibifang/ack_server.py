"""The acknowledgement endpoint (确认链接): a grid worker opens the signed link from her alert.

``GET /ack?t=TOKEN`` shows the whole alert (what, where, what to do, its reference code; the
masked group-chat and SMS messages leave these out) and answers as buttons. Opening the link
records nothing: a chat app's link preview opens it too, and must not stop an escalation.
``POST /ack`` with ``t`` and ``outcome`` (empty: "received"; or ``visited_all_well``,
``needs_help``, ``escalate``) records the answer; an outcome the page no longer offers (the
alert has another, or the flag is closed: a replayed or forwarded form) is refused with 409 and
the alert as it stands, and records nothing. The token is signed and expires
(``sibifang.ack_tokens``); nothing personal is in the link. Wording:
``templates/dispatch_alerts/ack_page.html.j2``.
"""

from __future__ import annotations

from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jinja2

from sibifang.ack_tokens import AckTokenError
from sibifang.acknowledge import OUTCOMES, AckError, AckRefused, acknowledge_token, alert_for_link
from sibifang.dispatch_alerts import TEMPLATE_DIR

MAX_FORM_BYTES = 4096
# A request that stops sending (a body shorter than its Content-Length, a stalled client) gives up
# after this long: it held its thread forever, and a few such held every one.
REQUEST_TIMEOUT_SECONDS = 10.0
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"


@lru_cache(maxsize=1)
def _page() -> jinja2.Template:
    # HTML, unlike the messages: autoescape, so a name or an address cannot inject markup.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR / "dispatch_alerts"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("ack_page.html.j2")


def render_page(view: str, **ctx) -> str:
    return _page().render(view=view, outcomes=OUTCOMES, **{"a": {}, "token": "", "message": "", **ctx})


def make_ack_server(host: str = "127.0.0.1", port: int = 8765, *, database_url: str | None = None,
                    secret: str | None = None) -> ThreadingHTTPServer:
    from sibifang.settings import get_settings

    key = secret or get_settings().ack_signing_key()

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_SECONDS  # the socket's: reads past it raise instead of waiting
        head_only = False

        def do_HEAD(self):  # noqa: N802
            # a link preview may ask HEAD first: the GET's answer without its body, recording nothing
            self.head_only = True
            return self.do_GET()

        def do_OPTIONS(self):  # noqa: N802
            self.send_response(204)
            self.send_header("Allow", ALLOWED_METHODS)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/ack":
                return self._send(404, render_page("error", message="页面不存在。"))
            q = parse_qs(url.query)
            token = (q.get("t") or q.get("token") or [""])[0]
            try:
                alert = alert_for_link(token, secret=key, database_url=database_url)
            except (AckError, AckTokenError) as e:
                return self._error(e)
            return self._send(200, render_page("details", a=alert, token=token))

        def do_POST(self):  # noqa: N802
            if urlparse(self.path).path != "/ack":
                return self._send(404, render_page("error", message="页面不存在。"))
            raw_length = (self.headers.get("Content-Length") or "0").strip()
            # Not a count of bytes (negative, a word): int() raised (no answer at all), and a
            # negative one read to the end of the stream, holding the thread while the client waits
            if not raw_length.isdigit():
                self.close_connection = True
                return self._send(400, render_page("error", message="提交的内容格式不正确，请返回预警页面重新选择。"))
            length = int(raw_length)
            if length > MAX_FORM_BYTES:
                return self._send(413, render_page("error", message="提交的内容过长。"))
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                return self._send(400, render_page("error", message="提交的内容不完整，请返回预警页面重新选择。"))
            if len(raw) < length:  # the client closed before sending what it announced
                self.close_connection = True
                return self._send(400, render_page("error", message="提交的内容不完整，请返回预警页面重新选择。"))
            form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            token = (form.get("t") or [""])[0]
            outcome = (form.get("outcome") or [""])[0] or None
            try:
                try:
                    acknowledge_token(token, secret=key, outcome=outcome, database_url=database_url)
                except AckRefused as refused:
                    # 409: the answer on record stands; she sees it, and why hers was not taken
                    alert = alert_for_link(token, secret=key, database_url=database_url)
                    return self._send(409, render_page("refused", a=alert, message=str(refused)))
                alert = alert_for_link(token, secret=key, database_url=database_url)
            except (AckError, AckTokenError) as e:
                return self._error(e)
            return self._send(200, render_page("done", a=alert, token=token))

        def _error(self, e: Exception):
            # Both error types carry a Chinese message that names the problem (expired, bad
            # signature, unknown alert), never the token or the key.
            return self._send(400, render_page("error", message=str(e)))

        def _send(self, status: int, page: str):
            data = page.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            if not self.head_only:
                self.wfile.write(data)

        def log_message(self, *args):  # the query holds the token: never log it
            pass

    return ThreadingHTTPServer((host, port), Handler)
