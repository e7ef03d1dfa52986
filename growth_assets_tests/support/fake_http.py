"""A fake HTTP server for fault injection (timeouts, 5xx, garbage, refusals): never a stand-in
for the real R service in a test that claims it works. ``fake`` is a fixture of every test
(conftest.py): ``fake((status, body, delay[, headers]), ...)`` answers POST /growth/fit with
the script, the last entry repeated."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Fake:
    """Answers POST /growth/fit with a scripted sequence of (status, body bytes, delay[, headers])."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(dict(self.headers))
                status, body, delay, *extra = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (extra[0] if extra else {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)) if status != 299 else "100000")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass  # keep the test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    made = []

    def make(*script):
        f = Fake(script)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()
