"""Rules of the alert sensor, the brms client and FitResult no other test pinned (session 23's
mutation probes: each test fails on a mutant of the code, a plausible bug, that the suite let
through): the drop count carried, the tick budget, the queue's order; Retry-After's cap and a
503's Retry-After, one deadline for every attempt, the request's ids and scores exact, an error
answer's text and field; and refusals of impossible answers that no other test reached."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import SimpleNamespace

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest

from growth_assets.defs.alerts import AlertWebhook, failure_alerts
from growth_assets.defs.alerts import sensors
from growth_assets.defs.alerts.sensors import MAX_PENDING
from growth_assets.model import brms_client
from growth_assets.model.brms_client import MAX_RETRY_AFTER_SECS, BrmsClient, BrmsServiceError
from growth_assets.model.contract import FitResultError
from growth_assets.model.engine import FitSettings
from growth_assets.model.panel import Panel
from growth_assets.model.result import fit_panel
from growth_assets_tests.brms.test_faults import PANEL, SETTINGS, ok, valid_body
from growth_assets_tests.model.test_result import SETTINGS as R_SETTINGS, Answers, _summary, honest, panel


# --- helpers -----------------------------------------------------------------------------------

class FakeClock:
    """time for a module under test: monotonic() is the real clock plus what sleep() skipped."""

    def __init__(self):
        self.offset = 0.0
        self.sleeps: list[float] = []

    def monotonic(self):
        return time.monotonic() + self.offset

    def sleep(self, s):
        self.sleeps.append(s)
        self.offset += s


@pytest.fixture
def client_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(brms_client, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    return clock


# --- the brms client ----------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["100000", "date"])
def test_a_huge_retry_after_is_capped_not_a_give_up(fake, client_clock, header):
    """MAX_RETRY_AFTER_SECS: a Retry-After of a day (seconds or an HTTP date) waits 300 s, and the
    fit, whose deadline leaves 400 s, is retried. Mutants: the cap dropped (either form)."""
    value = header if header != "date" else format_datetime(datetime.now(timezone.utc) + timedelta(days=1),
                                                           usegmt=True)
    f = fake((429, b'{"error": "too_many_fits"}', 0, {"Retry-After": value}), ok(valid_body()))
    res = fit_panel(BrmsClient(f.url, timeout_secs=400, max_retries=3, backoff_secs=0.01), PANEL, SETTINGS)
    assert res.engine == "brms" and len(f.requests) == 2
    assert client_clock.sleeps == [MAX_RETRY_AFTER_SECS]


def test_a_503s_retry_after_is_honoured(fake, client_clock):
    """The service's 503 (model_not_ready) carries Retry-After (R_BRMS_RETRY_AFTER_SECS): the
    client waits for it, not its 0.01 s backoff. Mutant: Retry-After read for 429 only."""
    f = fake((503, b'{"error": "model_not_ready"}', 0, {"Retry-After": "7"}), ok(valid_body()))
    fit_panel(BrmsClient(f.url, timeout_secs=30, max_retries=3, backoff_secs=0.01), PANEL, SETTINGS)
    assert client_clock.sleeps == [7.0] and len(f.requests) == 2


def test_an_error_answer_that_is_no_json_shows_its_text_and_a_json_one_names_its_field(fake):
    """_result: a 500 from a proxy (text, not JSON) is shown; a JSON error names its field."""
    f = fake((500, b"upstream exploded", 0))
    with pytest.raises(BrmsServiceError, match="brms service answered 500: error: upstream exploded"):
        BrmsClient(f.url, max_retries=0).fit(PANEL, SETTINGS)
    f = fake((400, json.dumps({"error": "invalid_request", "field": "rows.week", "detail": "week 3"}).encode(), 0))
    with pytest.raises(BrmsServiceError) as e:
        BrmsClient(f.url, max_retries=0).fit(PANEL, SETTINGS)
    assert str(e.value) == "brms service answered 400: invalid_request (field rows.week): week 3"


def test_the_request_body_carries_every_id_and_score_exactly():
    """request_body: ids JSON-escaped, scores with 17 significant digits (a float64 round-trips).
    Mutants: an id written between quotes unescaped; scores with 15 digits."""
    ids = ['q"uote', "back\\slash", "caf\u00e9", "plain"]
    scores = [0.1 + 0.2, 1 / 3, 2 / 3 + 1e-16, 123.45678901234567, -0.000123456789012345678, 7.0, 1e-300, 5.5]
    pn = Panel.from_frame(pd.DataFrame({"student_id": np.repeat(ids, 2), "week": [0, 1] * 4, "score": scores}))
    body = json.loads(BrmsClient.request_body(pn, FitSettings(n_chains=2, n_samples=400, seed=3,
                                                              horizon_week=15, lookback_weeks=12)))
    assert [(r["student_id"], r["week"]) for r in body["rows"]] == [
        (str(pn.student_ids[s]), int(w)) for s, w in zip(pn.student, pn.week)]
    got = np.array([r["score"] for r in body["rows"]])
    assert got.tobytes() == np.asarray(pn.score, dtype=np.float64).tobytes()  # bit for bit
    assert (body["n_chains"], body["n_samples"], body["seed"], body["horizon_week"]) == (2, 400, 3, 15)


# --- the alert sensor ---------------------------------------------------------------------------

def _first_cursor(instance, wh):
    ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"alert_webhook": wh})
    failure_alerts(ctx)
    return json.loads(ctx.cursor)


def _tick(instance, wh, state):
    ctx = dg.build_sensor_context(instance=instance, cursor=json.dumps(state), resources={"alert_webhook": wh})
    failure_alerts(ctx)
    return json.loads(ctx.cursor)


def test_an_earlier_drop_count_is_carried_into_the_next_one():
    """MAX_PENDING: when an "alerts_dropped" alert is itself dropped, the new count adds its
    number (50 + 1 here), not 1 for it. Mutant: n = len(gone)."""
    wh = AlertWebhook(url="http://127.0.0.1:9/hook")  # nothing listens: every POST fails
    with dg.instance_for_test() as instance:
        state = _first_cursor(instance, wh)
        state["pending"] = ([{"kind": "alerts_dropped", "severity": "ERROR", "dropped": 50, "text": "50 dropped"}]
                            + [{"text": f"queued {i}", "kind": "run_failed"} for i in range(MAX_PENDING)])
        kept = _tick(instance, wh, state)["pending"]
    assert len(kept) == MAX_PENDING
    assert kept[0]["kind"] == "alerts_dropped" and kept[0]["dropped"] == 51, kept[0]  # 50 + queued 0
    assert kept[1]["text"] == "queued 1"


def _timed_posts(monkeypatch, fails: bool, each: float):
    """AlertWebhook.post replaced by one that takes ``each`` s of a fake clock (and fails if
    ``fails``); returns the list of the fake times each POST started at."""
    clock = FakeClock()
    monkeypatch.setattr(sensors, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    starts: list[float] = []
    t0 = clock.monotonic()

    def post(self, payload):
        starts.append(clock.monotonic() - t0)
        clock.offset += each
        if fails:
            raise httpx.ConnectError("down")

    monkeypatch.setattr(AlertWebhook, "post", post)
    return starts


def test_a_post_starts_only_while_its_timeout_fits_in_the_tick_budget(monkeypatch):
    """AlertWebhook: "A POST starts only while its own timeout is left of this budget" (the
    daemon keeps the old cursor of a tick cut off). Budget 2 s, timeout 1 s, POSTs of 0.6 s:
    none may start after 1 s. Mutant: deadline = now + budget (a POST started at 1.8 s)."""
    wh = AlertWebhook(url="http://hook.test/x", timeout_secs=1.0, tick_budget_secs=2.0)
    with dg.instance_for_test() as instance:
        state = _first_cursor(instance, wh)
        state["pending"] = [{"text": f"queued {i}", "kind": "run_failed"} for i in range(6)]
        starts = _timed_posts(monkeypatch, fails=False, each=0.6)
        left = _tick(instance, wh, state)["pending"]
    assert starts and max(starts) + wh.timeout_secs <= wh.tick_budget_secs + 0.05, starts
    assert [p["text"] for p in left] == [f"queued {i}" for i in range(len(starts), 6)]


def test_when_the_queue_overflows_the_failed_alerts_go_first_as_the_oldest(monkeypatch):
    """"the failed ones first: they are the older": with the queue full, those that failed this
    tick (queued 0, 1) are the ones dropped, and the queue keeps its order. Mutant: waiting =
    deferred + failed (queued 2, 3 dropped; 0 and 1 moved to the end)."""
    wh = AlertWebhook(url="http://hook.test/x", timeout_secs=1.0, tick_budget_secs=2.0)
    with dg.instance_for_test() as instance:
        state = _first_cursor(instance, wh)
        state["pending"] = [{"text": f"queued {i}", "kind": "run_failed"} for i in range(MAX_PENDING + 1)]
        starts = _timed_posts(monkeypatch, fails=True, each=0.6)  # two fail, the rest wait
        kept = _tick(instance, wh, state)["pending"]
    assert len(starts) == 2
    assert kept[0]["kind"] == "alerts_dropped" and kept[0]["dropped"] == 2
    assert [p["text"] for p in kept[1:]] == [f"queued {i}" for i in range(2, MAX_PENDING + 1)]


# --- FitResult: refusals no other test reached ---------------------------------------------------



def _student(r, **cols):
    """``r`` with the first student's columns replaced."""
    s = r.students
    new = {}
    for k, v in cols.items():
        a = getattr(s, k).copy()
        a[0] = v
        new[k] = a
    return replace(r, students=replace(s, **new))


def _p_above_one(r, pn):
    s = r.students
    i = int(np.flatnonzero(s.mu > r.target)[0])
    P = s.P.copy()
    P[i] = 1.2
    return replace(r, students=replace(s, P=P)), f"predictions[{i}].P"


@pytest.mark.parametrize("tamper", [
    (lambda r, pn: (_summary(r, "b_week", sd=-0.01), "posterior_summary.b_week.sd")),
    (lambda r, pn: (replace(r, diagnostics=replace(r.diagnostics, elapsed_s=-5.0)), "diagnostics.elapsed_s")),
    (lambda r, pn: (replace(r, diagnostics=replace(r.diagnostics, elapsed_s=float("inf"))), "diagnostics.elapsed_s")),
    (lambda r, pn: (replace(r, diagnostics=replace(r.diagnostics, n_divergent=r.kept_draws + 1)),
                    "diagnostics.n_divergent")),
    (lambda r, pn: (replace(r, diagnostics=replace(r.diagnostics, n_max_treedepth=r.kept_draws + 1)),
                    "diagnostics.n_max_treedepth")),
    (lambda r, pn: (replace(r, formula="score ~ week"), "formula")),
    (lambda r, pn: (_summary(r, "sigma", mean=0.0, q5=0.0), "posterior_summary.sigma.mean")),
    (lambda r, pn: (_summary(r, "b_week", ess_bulk=-1.0), "posterior_summary.b_week.ess_bulk")),
    (lambda r, pn: (replace(r, diagnostics=replace(r.diagnostics, min_ess_tail=-1.0)), "diagnostics.min_ess_tail")),
    (lambda r, pn: (_summary(r, "b_week", rhat=float("inf")), "posterior_summary.b_week.rhat")),
    _p_above_one,
    (lambda r, pn: (_student(r, var_b=0.0, cov_ab=0.0), "predictions[0].var_b")),
    (lambda r, pn: (_student(r, cov_ab=10 * float(np.sqrt(r.students.var_a[0] * r.students.var_b[0]))),
                    "predictions[0].cov_ab")),
], ids=["sd-negative", "elapsed-negative", "elapsed-inf", "divergent-over-kept", "treedepth-over-kept",
        "formula", "sigma-mean-0", "ess-negative", "diag-ess-negative", "rhat-inf", "P-above-1", "var_b-0",
        "cov-not-psd"])
def test_an_impossible_answer_is_refused_naming_the_field(tamper):
    pn = panel()
    r = honest(pn)
    fit_panel(Answers(r), pn, R_SETTINGS)  # the honest answer passes
    bad, want = tamper(r, pn)
    with pytest.raises(FitResultError) as e:
        fit_panel(Answers(bad), pn, R_SETTINGS)
    assert e.value.field == want, str(e.value)


@pytest.mark.parametrize("key", ["run_id", "engine_version"])
def test_an_empty_identity_string_is_refused_by_from_json(key):
    from growth_assets_tests.support.results import make_result
    from growth_assets.model.result import FitResult

    obj = {**make_result(2).to_json(), key: ""}
    with pytest.raises(FitResultError) as e:
        FitResult.from_json(obj)
    assert e.value.field == key


def test_a_retry_does_not_get_a_fresh_deadline(fake):
    """One deadline for all attempts: two slow 503s and a slow answer, 1.5 s each, under a 2 s
    deadline, give up at 2 s; a retry must not read for another full R_BRMS_TIMEOUT_SECS.
    Mutant: deadline = now + timeout_secs at each attempt (the fit took 4.5 s and succeeded)."""
    f = fake((503, b'{"error": "model_not_ready"}', 1.5), (503, b'{"error": "model_not_ready"}', 1.5),
             ok(valid_body(), delay=1.5))
    t0 = time.monotonic()
    with pytest.raises(BrmsServiceError, match="deadline of 2s"):
        BrmsClient(f.url, timeout_secs=2.0, max_retries=5, backoff_secs=0.01).fit(PANEL, SETTINGS)
    assert time.monotonic() - t0 < 2.8
