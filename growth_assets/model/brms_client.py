"""The client of the R brms service (``r_brms_plumber``): the ``brms`` engine.

httpx with explicit connect and read timeouts. Retries, with backoff, only where a retry
cannot start a second copy of a fit:

- connection errors (the request never reached the service), 502/503/504, and 429 (the
  service is busy with another fit; its ``Retry-After`` is honoured);
- a read timeout or a dropped connection *after* the request was sent: the fit may still
  be running, so the retry carries the same ``Idempotency-Key`` and the service attaches it
  to the running fit (or replays its stored result) instead of starting another.

All attempts of one fit share one deadline, ``R_BRMS_TIMEOUT_SECS``: a retry reads for at
most the time left, and an answer must arrive whole by then (``_post_within``: a body that
trickles in, or is sent late, is cut off at the deadline), so a fit never takes longer than
that. (Headers sent a byte at a time are bounded only by the read timeout of each byte: httpx
reads them in one call.) Never on other 4xx/5xx answers: those are errors, raised with the service's JSON message
(``error``, ``field``, ``detail``). A 200 answer is parsed into a ``FitResult`` (spec §8): a missing key, or an array where a
number belongs, is a FitResultError naming the key; ``result.fit_panel`` then checks it
against the request (the same students, target, horizon and counts).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx
import numpy as np

from ..settings import R_BRMS_TIMEOUT_MAX_SECS
from .contract import FitResultError, parse_json
from .engine import FitSettings
from .panel import Panel
from .result import FitResult

log = logging.getLogger(__name__)

RETRY_STATUSES = (502, 503, 504)
MAX_RETRY_AFTER_SECS = 300.0


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (RFC 9110: delay-seconds or an HTTP date), bounded."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float()
        return min(float(value), MAX_RETRY_AFTER_SECS)
    from email.utils import parsedate_to_datetime

    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import datetime, timezone

    return min(max((at - datetime.now(timezone.utc)).total_seconds(), 0.0), MAX_RETRY_AFTER_SECS)


class BrmsServiceError(RuntimeError):
    """The service refused or failed a request, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None,
                 field: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.status, self.error, self.field, self.detail = status, error, field, detail


def shown_url(url: str) -> str:
    """``url`` as errors and logs show it: without a ``user:password@`` part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<the R_BRMS_BASE_URL>"
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


def _cut_off(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
    except OSError:
        pass  # closed already


def _post_within(client: httpx.Client, body: bytes, headers: dict[str, str], deadline: float,
                 timeout: httpx.Timeout) -> httpx.Response:
    """POST /growth/fit with its answer read whole by ``deadline`` (time.monotonic()): httpx's
    read timeout bounds each read, not the answer, so a body that trickled in (a chunk every
    half second) took any time at all, and one sent whole but late got the read timeout of
    the attempt's start again, after headers that came just before the deadline (a fit of
    twice its deadline). The connection is shut at the deadline (httpx's ``network_stream``
    extension gives its socket). Late: httpx's ReadTimeout, as a read that timed out."""
    req = client.build_request("POST", "/growth/fit", content=body, headers=headers, timeout=timeout)
    resp = client.send(req, stream=True)
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    timer = None
    if sock is not None:
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _cut_off, (sock,))
        timer.daemon = True
        timer.start()
    try:
        chunks = []
        for chunk in resp.iter_raw():  # as sent (gzip too): the Response below decodes it once
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the answer did not arrive whole within the fit's deadline", request=req)
    except httpx.TransportError:
        if time.monotonic() >= deadline:  # the read the deadline cut off
            raise httpx.ReadTimeout("the answer did not arrive whole within the fit's deadline",
                                    request=req) from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
        resp.close()
    try:
        return httpx.Response(resp.status_code, headers=resp.headers, content=b"".join(chunks), request=req)
    except httpx.DecodingError as e:  # a body its Content-Encoding does not decode: a malformed answer
        raise FitResultError("<body>", f"the response body could not be decoded ({e})",
                             resp.headers.get("content-encoding")) from None


class BrmsClient:
    """Fits through ``POST /growth/fit``; implements the ``Engine`` protocol (name ``brms``)."""

    name = "brms"

    def __init__(self, base_url: str, timeout_secs: float = 600.0, token: str | None = None,
                 connect_timeout_secs: float = 10.0, max_retries: int = 3, backoff_secs: float = 2.0,
                 transport: httpx.BaseTransport | None = None):
        if not base_url:
            raise ValueError("R_BRMS_BASE_URL: must be set")
        self.base_url = base_url.rstrip("/")
        self.shown_url = shown_url(self.base_url)  # for errors and logs: no credentials
        if not 0 < timeout_secs <= R_BRMS_TIMEOUT_MAX_SECS:
            raise ValueError(f"R_BRMS_TIMEOUT_SECS: must be > 0 and at most {R_BRMS_TIMEOUT_MAX_SECS:.0f}"
                             f" (a week; got {timeout_secs!r})")
        self.timeout_secs = float(timeout_secs)
        self.connect_timeout_secs = float(connect_timeout_secs)
        self.timeout = httpx.Timeout(timeout_secs, connect=connect_timeout_secs)
        # a token from a Secret file ends in a newline (the service trims it too); one that is
        # no printable ASCII cannot be a header, and h11's refusal quoted it whole
        token = token.strip() if token else None
        if token and not (token.isascii() and token.isprintable()):
            raise ValueError("R_BRMS_INTERNAL_TOKEN: must be printable ASCII (its value is not shown)")
        self.token = token
        self.max_retries = max_retries
        self.backoff_secs = backoff_secs
        self._transport = transport

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
            h["X-Internal-Token"] = self.token
        return h

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self._headers(),
                            transport=self._transport)

    def health(self) -> bool:
        with self._client() as c:
            return c.get("/healthz", timeout=5).status_code == 200

    def ready(self) -> bool:
        with self._client() as c:
            try:
                return c.get("/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

    @staticmethod
    def request_body(panel: Panel, settings: FitSettings) -> bytes:
        """The spec §8 request; scores with 17 significant digits (a float64 round-trips)."""
        ids = [json.dumps(s) for s in panel.student_ids.tolist()]
        sid = np.asarray(ids, dtype=object)[panel.student]
        rows = ",".join(f'{{"student_id":{i},"week":{w},"score":{y!r}}}'
                        for i, w, y in zip(sid.tolist(), panel.week.tolist(), panel.score.tolist()))
        head = json.dumps({"n_samples": settings.n_samples, "n_chains": settings.n_chains,
                           "seed": settings.seed, "horizon_week": settings.horizon_week,
                           "target": settings.target, "lookback_weeks": settings.lookback_weeks})
        return (head[:-1] + ', "rows": [' + rows + "]}").encode()

    def fit(self, panel: Panel, settings: FitSettings) -> FitResult:
        """One fit within one deadline (``timeout_secs``, R_BRMS_TIMEOUT_SECS) over all its
        attempts: each attempt reads for at most the time left, each wait ends before it."""
        body = self.request_body(panel, settings)
        key = str(uuid.uuid4())  # one fit, one key: every retry of it carries the same key
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        deadline = time.monotonic() + self.timeout_secs
        attempt = 0
        with self._client() as client:
            while True:
                attempt += 1
                left = deadline - time.monotonic()
                retry_after: float | None = None
                try:
                    resp = _post_within(client, body, headers, deadline, httpx.Timeout(
                        max(left, 0.001), connect=min(self.connect_timeout_secs, max(left, 0.001))))
                except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                    reason = f"could not connect to {self.shown_url} ({type(e).__name__})"
                except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                        httpx.WriteError, httpx.WriteTimeout, httpx.PoolTimeout) as e:
                    reason = f"no answer from {self.shown_url} ({type(e).__name__}); the fit may still run"
                else:
                    if resp.status_code not in RETRY_STATUSES + (429,):
                        return self._result(resp, settings)
                    reason = f"{self.shown_url} answered {resp.status_code}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    if resp.status_code == 429 and retry_after is None:
                        retry_after = self.backoff_secs
                wait = self.backoff_secs * 2 ** (attempt - 1)
                if retry_after is not None:
                    wait = max(wait, retry_after)
                left = deadline - time.monotonic()
                if attempt > self.max_retries or wait >= left:
                    why = (f"gave up after {attempt} attempts" if attempt > self.max_retries
                           else f"the fit's deadline of {self.timeout_secs:g}s (R_BRMS_TIMEOUT_SECS) "
                                f"leaves no time for attempt {attempt + 1}")
                    raise BrmsServiceError(f"brms service: {reason}; {why}")
                log.warning("brms service: %s; retrying in %.1fs with the same Idempotency-Key", reason, wait)
                time.sleep(wait)

    def _result(self, resp: httpx.Response, settings: FitSettings) -> FitResult:
        if resp.status_code != 200:
            try:
                err = resp.json()
            except ValueError:
                err = {}
            if not isinstance(err, dict):
                err = {}
            msg = (f"brms service answered {resp.status_code}: {err.get('error', 'error')}"
                   + (f" (field {err['field']})" if err.get("field") else "")
                   + (f": {err['detail']}" if err.get("detail") else f": {resp.text[:300]}" if not err else ""))
            raise BrmsServiceError(msg, resp.status_code, err.get("error"), err.get("field"), err.get("detail"))
        try:
            data = parse_json(resp.content)  # a key twice is refused, not settled by the last value
        except FitResultError:
            raise
        except ValueError:
            raise FitResultError("<body>", "the response is not valid JSON (malformed or truncated)",
                                 resp.text[:80]) from None
        if isinstance(data, dict) and "status" in data and data.get("status") != "ok" and "run_id" not in data:
            raise FitResultError("status", "an error inside a 200 answer", data.get("status"))
        result = FitResult.from_json(data)  # parsed here; checked against the request by fit_panel
        return result.with_run_id(settings.run_id) if settings.run_id else result
