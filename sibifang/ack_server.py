"""The acknowledgement endpoint (确认链接): a grid worker opens the signed link from her alert.

``GET /ack?t=TOKEN`` shows the alert's reference and three outcome buttons;
``GET /ack?t=TOKEN&outcome=visited_all_well|needs_help|escalate`` records it. The token is
signed and expires (``sibifang.ack_tokens``); nothing personal is in the link.
"""

from __future__ import annotations

import html
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlparse

from sibifang.acknowledge import OUTCOMES, AckError, acknowledge_token

PAGE = """<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>预警确认</title></head>
<body style="font-family:sans-serif;max-width:480px;margin:2em auto">{body}</body></html>"""


def make_ack_server(host: str = "127.0.0.1", port: int = 8765, *, database_url: str | None = None,
                    secret: str | None = None) -> ThreadingHTTPServer:
    from sibifang.settings import get_settings

    key = secret or get_settings().ack_secret.get_secret_value()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/ack":
                return self._send(404, "<p>未找到</p>")
            q = parse_qs(url.query)
            token = (q.get("t") or q.get("token") or [""])[0]
            outcome = (q.get("outcome") or [None])[0]
            try:
                res = acknowledge_token(token, secret=key, outcome=outcome, database_url=database_url)
            except (AckError, ValueError) as e:
                # The message names the problem (expired, bad signature), never the token.
                return self._send(400, f"<p>无法确认：{html.escape(type(e).__name__)}</p>")
            if outcome:
                return self._send(200, f"<h2>已记录</h2><p>结果：{html.escape(OUTCOMES[outcome])}</p>")
            links = "".join(f'<p><a href="/ack?t={quote(token)}&outcome={k}">{html.escape(v)}</a></p>'
                            for k, v in OUTCOMES.items())
            return self._send(200, f"<h2>已确认收到预警</h2><p>编号：{html.escape(res['alert_id'])}</p>"
                                   f"<p>上门后请选择处理结果：</p>{links}")

        def _send(self, status: int, body: str):
            data = PAGE.format(body=body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # the query holds the token: never log it
            pass

    return ThreadingHTTPServer((host, port), Handler)
