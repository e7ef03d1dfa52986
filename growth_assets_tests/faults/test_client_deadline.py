"""The brms client: one deadline per fit over all retries; a 429 waits for its Retry-After
(issue: nothing silently wrong, item 9). A fake server injects the faults."""

from __future__ import annotations

import json
import time

import pytest

from growth_assets.model.brms_client import BrmsClient, BrmsServiceError
from growth_assets.model.result import fit_panel
from growth_assets_tests.brms.test_faults import PANEL, SETTINGS, ok, valid_body


def test_read_timeouts_with_retries_stay_within_the_one_deadline(fake):
    """Today's main: a 600 s read timeout with 3 retries waited up to 40 minutes."""
    f = fake(ok(valid_body(), delay=5.0))
    c = BrmsClient(f.url, timeout_secs=2.0, max_retries=5, backoff_secs=0.05)
    t0 = time.monotonic()
    with pytest.raises(BrmsServiceError, match="deadline of 2s"):
        c.fit(PANEL, SETTINGS)
    assert time.monotonic() - t0 < 3.0


def test_a_429_is_retried_after_its_retry_after(fake):
    """Today's main raised on the first 429."""
    f = fake((429, json.dumps({"error": "too_many_fits"}).encode(), 0, {"Retry-After": "1"}), ok(valid_body()))
    c = BrmsClient(f.url, timeout_secs=30, max_retries=3, backoff_secs=0.01)
    t0 = time.monotonic()
    res = fit_panel(c, PANEL, SETTINGS)
    assert res.engine == "brms" and len(f.requests) == 2
    assert time.monotonic() - t0 >= 1.0
    assert len({r["Idempotency-Key"] for r in f.requests}) == 1


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(fake):
    f = fake((429, b'{"error": "too_many_fits"}', 0, {"Retry-After": "120"}))
    t0 = time.monotonic()
    with pytest.raises(BrmsServiceError, match="leaves no time"):
        BrmsClient(f.url, timeout_secs=10, max_retries=3, backoff_secs=0.01).fit(PANEL, SETTINGS)
    assert time.monotonic() - t0 < 2 and len(f.requests) == 1


def test_a_retry_after_that_is_no_number_is_retried_after_the_backoff(fake):
    """Found by review: "²" is a digit to str.isdigit but not to float(): a raw ValueError
    escaped, with no retry. A Retry-After that is neither seconds nor a date is ignored."""
    f = fake((429, b'{"error": "too_many_fits"}', 0, {"Retry-After": "\u00b2"}), ok(valid_body()))
    res = fit_panel(BrmsClient(f.url, timeout_secs=30, max_retries=3, backoff_secs=0.01), PANEL, SETTINGS)
    assert res.engine == "brms" and len(f.requests) == 2


def test_an_answer_that_trickles_in_is_cut_off_at_the_deadline():
    """httpx's read timeout bounds each read, not the answer: a body sent a piece every half
    second took 5.6 s under a 2 s deadline (found by review). The whole answer must come
    within the fit's deadline."""
    import socket
    import threading

    body = json.dumps(valid_body()).encode()
    server = socket.create_server(("127.0.0.1", 0))
    hung_up: list[OSError] = []

    def serve():
        conn, _ = server.accept()
        with conn:
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(65536)
            head, _, rest = got.partition(b"\r\n\r\n")
            n = int(next(v for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                         if k.lower() == b"content-length"))
            while len(rest) < n:
                rest += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
            step = len(body) // 12 + 1
            try:
                for i in range(0, len(body), step):
                    conn.sendall(body[i:i + step])
                    time.sleep(0.5)
            except OSError as exc:  # the client hung up before the whole body was sent
                hung_up.append(exc)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    c = BrmsClient(f"http://127.0.0.1:{server.getsockname()[1]}", timeout_secs=2.0, max_retries=0,
                   backoff_secs=0.01)
    t0 = time.monotonic()
    with pytest.raises(BrmsServiceError, match="no answer"):
        c.fit(PANEL, SETTINGS)
    assert time.monotonic() - t0 < 3.0
    t.join(10)
    server.close()
    assert not t.is_alive() and len(hung_up) == 1  # the client closed the connection mid-body
