"""A real local webhook receiver for the demo (演示用接收端): what a grid workers' app would be.

It verifies the HMAC signature of the generic JSON webhook, keeps the first delivery of each
``dedup_key`` and counts repeats, and appends what it received to a JSON-lines file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class AlertReceiver:
    def __init__(self, log_file: Path, secret: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.log_file = Path(log_file)
        self.secret = secret
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.secret:
                    sig = self.headers.get("X-Sibifang-Signature", "")
                    ts = self.headers.get("X-Sibifang-Timestamp", "")
                    good = [
                        "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest(),
                        "sha256=" + hmac.new(receiver.secret.encode(), ts.encode() + b"." + body,
                                             hashlib.sha256).hexdigest(),
                    ]
                    if not any(hmac.compare_digest(sig, g) for g in good):
                        self.send_response(401)
                        self.end_headers()
                        return
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError:
                    self.send_response(400)
                    self.end_headers()
                    return
                key = str(payload.get("dedup_key") or payload.get("alert_id"))
                with receiver.lock:
                    n = receiver.seen.get(key, 0)
                    receiver.seen[key] = n + 1
                    if n == 0:
                        with receiver.log_file.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(payload, ensure_ascii=False) + "\n")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    @property
    def alerts(self) -> int:
        """Distinct alerts received (notices to cadres carry ``N-`` keys)."""
        return sum(1 for k in self.seen if not k.startswith("N-"))

    @property
    def notices(self) -> int:
        return sum(1 for k in self.seen if k.startswith("N-"))

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values())

    def __enter__(self) -> AlertReceiver:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
