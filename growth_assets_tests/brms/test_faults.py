"""Fault injection: a fake HTTP server that misbehaves (never a stand-in for the real service).

And the real service killed in the middle of a fit of the real graph.
"""

import gzip
import json
import logging
import threading
import time

import dagster as dg
import pytest

from growth_assets.db import connect
from growth_assets.defs.growth import weekly_assets
from growth_assets.defs.resources import GrowthEngineResource
from growth_assets.demo.cohort import seed_cohort
from growth_assets.model.brms_client import BrmsClient, BrmsServiceError
from growth_assets.model.contract import FitResultError
from growth_assets.model.engine import FitSettings
from growth_assets.model.panel import Panel
from growth_assets.model.result import fit_panel
from growth_assets_tests.conftest import RService
from growth_assets_tests.support.graph import AS_OF, PARTITION, failure_text, resources
from growth_assets_tests.support.results import make_result
from growth_assets_tests.support.slow_http import SlowAnswer

import pandas as pd

PANEL = Panel.from_frame(pd.DataFrame({"student_id": ["s00000", "s00000", "s00001", "s00001"],
                                       "week": [0, 1, 0, 1], "score": [0.1, 0.3, -0.2, 0.0]}))
# what make_result answers: the request must ask for it, or the answer is refused (tested below)
SETTINGS = FitSettings(n_chains=4, n_samples=2000, seed=1, horizon_week=15, lookback_weeks=12)


def valid_body() -> dict:
    return make_result(2, run_id="brms-20261123-043000", n_obs=[2, 2], scales=PANEL.scales()).to_json()


def client(url, **kw):
    return BrmsClient(url, token="t0k", backoff_secs=0.01, **kw)


def ok(body: dict, delay: float = 0.0):
    return (200, json.dumps(body).encode(), delay)


def test_a_valid_answer_passes_and_carries_the_token_and_key(fake):
    f = fake(ok(valid_body()))
    res = fit_panel(client(f.url), PANEL, FitSettings(**{**SETTINGS.__dict__, "run_id": "brms-20261124-000000"}))
    assert res.run_id == "brms-20261124-000000" and res.engine == "brms"
    h = f.requests[0]
    assert h["Authorization"] == "Bearer t0k" and h["X-Internal-Token"] == "t0k" and h["Idempotency-Key"]


@pytest.mark.parametrize("body,match", [
    (b"<html>oops</html>", "not valid JSON"),
    (json.dumps(valid_body()).encode()[:500], "not valid JSON"),
    (json.dumps({"status": "error", "message": "model failed"}).encode(), "status: an error inside a 200 answer"),
    (json.dumps({**valid_body(), "n_obs": [4]}).encode(), "n_obs: must be a plain JSON number"),
    (json.dumps({k: v for k, v in valid_body().items() if k != "diagnostics"}).encode(), "diagnostics: missing"),
    (json.dumps({**valid_body(), "engine": "native"}).encode(), "engine"),
    (json.dumps({**valid_body(), "target": 1.5}).encode(), "target: the engine answered 1.5"),
    (json.dumps({**valid_body(), "horizon_week": 3}).encode(), "horizon_week: the engine answered 3"),
    (json.dumps({**valid_body(), "predictions": valid_body()["predictions"][:1], "n_students": 1}).encode(),
     "1 missing"),
    # found by review: the json module kept the second "P" without a word
    (json.dumps(valid_body()).replace('"P": ', '"P": 0.999, "P": ', 1).encode(), "P: the key appears twice"),
], ids=["garbage", "truncated", "200-with-error", "array-for-number", "missing-key", "wrong-engine",
        "other-target", "other-horizon", "dropped-student", "key-twice"])
def test_a_malformed_answer_is_an_error_naming_the_key(fake, body, match):
    f = fake((200, body, 0))
    with pytest.raises(FitResultError, match=match):
        fit_panel(client(f.url), PANEL, SETTINGS)
    assert len(f.requests) == 1  # a bad answer is not retried


def test_502_503_504_are_retried_with_the_same_key(fake):
    f = fake((503, b'{"error":"model_not_ready"}', 0), (502, b"bad gateway", 0), (504, b"", 0), ok(valid_body()))
    fit_panel(client(f.url), PANEL, SETTINGS)
    keys = {r["Idempotency-Key"] for r in f.requests}
    assert len(f.requests) == 4 and len(keys) == 1


@pytest.mark.parametrize("status,error", [(400, "invalid_request"), (401, "unauthorized"),
                                          (500, "fit_failed"), (413, "payload_too_large")])
def test_other_errors_are_raised_once_with_the_services_message(fake, status, error):
    f = fake((status, json.dumps({"error": error, "field": "rows", "detail": "why"}).encode(), 0))
    with pytest.raises(BrmsServiceError) as e:
        fit_panel(client(f.url), PANEL, SETTINGS)
    assert (e.value.status, e.value.error, e.value.field) == (status, error, "rows")
    assert str(status) in str(e.value) and "why" in str(e.value)
    assert len(f.requests) == 1


def test_a_lost_answer_is_retried_with_the_same_key(fake):
    """The connection dropped mid-answer (the service restarted, a proxy cut it): the retry
    carries the same Idempotency-Key, so the service attaches it to the fit (never a second)."""
    f = fake((299, b'{"run_id"', 0), (299, b'{"run_id"', 0), ok(valid_body()))
    res = fit_panel(BrmsClient(f.url, timeout_secs=30, max_retries=3, backoff_secs=0.01), PANEL, SETTINGS)
    assert res.engine == "brms"
    assert len(f.requests) == 3 and len({r["Idempotency-Key"] for r in f.requests}) == 1


def test_lost_answers_give_up_after_the_retries(fake):
    f = fake((299, b'{"run_id"', 0))
    with pytest.raises(BrmsServiceError, match="gave up after 3 attempts"):
        BrmsClient(f.url, timeout_secs=30, max_retries=2, backoff_secs=0.01).fit(PANEL, SETTINGS)
    assert len(f.requests) == 3


def test_nothing_listening_is_a_clear_error():
    from growth_assets.db.localpg import free_port

    with pytest.raises(BrmsServiceError, match="could not connect"):
        BrmsClient(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_secs=0.01).fit(PANEL, SETTINGS)


@pytest.fixture
def seeded(db_url):
    with connect(db_url) as conn:
        seed_cohort(conn, 40, 12, seed=8, as_of=AS_OF)
    return db_url


def brms_engine(url, token=None, **kw):
    return GrowthEngineResource(engine="brms", r_brms_base_url=url, r_brms_internal_token=token,
                                r_brms_backoff_secs=0.05, **kw)


def nothing_written(url):
    with connect(url) as c:
        return (c.execute("SELECT count(*) FROM growth_brms_meta").fetchone()[0] == 0
                and c.execute("SELECT count(*) FROM growth_fit").fetchone()[0] == 0
                and c.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 0
                and c.execute("SELECT count(*) FROM weekly_kpi WHERE kpis ? 'P'").fetchone()[0] == 0)


def test_a_truncated_answer_fails_the_asset_and_stores_nothing(fake, seeded):
    f = fake((200, json.dumps(valid_body()).encode()[:300], 0))
    res = dg.materialize(weekly_assets, partition_key=PARTITION, raise_on_error=False,
                         resources=resources(seeded, brms_engine(f.url)))
    assert not res.success and res.get_failed_step_keys() == {"brms_posterior"}
    assert "not valid JSON" in failure_text(res)
    assert nothing_written(seeded)


@pytest.mark.r_service
def test_the_service_killed_mid_fit_fails_the_asset_and_stores_nothing(seeded, tmp_path):
    from growth_assets.db.localpg import free_port

    svc = RService(free_port(), "kill-test-token", tmp_path / "r.log").wait_ready()
    out = {}
    try:
        engine = brms_engine(svc.url, svc.token, r_brms_max_retries=2)
        t = threading.Thread(target=lambda: out.update(res=dg.materialize(
            weekly_assets, partition_key=PARTITION, raise_on_error=False,
            resources=resources(seeded, engine, n_chains=4, n_samples=4000))))
        t.start()
        deadline = time.monotonic() + 120
        import httpx
        while time.monotonic() < deadline:  # wait until the fit is running
            if httpx.get(f"{svc.url}/readyz", timeout=5,
                         headers={"Authorization": f"Bearer {svc.token}"}).json().get("running_fits", 0) >= 1:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the fit never started")
        svc.kill()
        t.join(180)
    finally:
        svc.kill()
    res = out["res"]
    assert not res.success and res.get_failed_step_keys() == {"brms_posterior"}
    text = failure_text(res)
    assert "brms service" in text and "gave up after 3 attempts" in text
    assert nothing_written(seeded)


# --- session 23's review: secrets, a malformed encoding, the deadline ----------------------------

SECRET = "s3cr3t-TOKEN-value"


# --- secrets --------------------------------------------------------------------------------------

def test_a_token_with_a_trailing_newline_is_sent_without_it(fake):
    """A token read from a Secret file often ends in a newline. The CLI's Settings strip it, the
    R service trims it, but the client put it in the header as is: h11 refused the header, and
    its message, the run's failure, quoted the whole header value, the token."""
    f = fake((200, json.dumps(valid_body()).encode(), 0))
    assert BrmsClient(f.url, token=SECRET + "\n", max_retries=0).fit(PANEL, SETTINGS).engine == "brms"
    assert f.requests[0]["X-Internal-Token"] == SECRET
    assert f.requests[0]["Authorization"] == f"Bearer {SECRET}"


def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it():
    with pytest.raises(ValueError, match="R_BRMS_INTERNAL_TOKEN") as e:
        BrmsClient("http://127.0.0.1:9", token=SECRET + "\u00e9")
    assert SECRET not in str(e.value)


def test_the_deployed_resource_hands_the_raw_token_to_the_client(fake, monkeypatch):
    """resources_from_settings passes dg.EnvVar("R_BRMS_INTERNAL_TOKEN") (unstripped), not the
    Settings' stripped value: the same environment worked with `growth-assets fit` and failed
    under Dagster, with the token in the run's failure (event log, UI)."""
    from growth_assets.defs.resources import resources_from_settings
    from growth_assets.settings import Settings

    f = fake((200, json.dumps(valid_body()).encode(), 0))
    monkeypatch.setenv("R_BRMS_BASE_URL", f.url)
    monkeypatch.setenv("R_BRMS_INTERNAL_TOKEN", SECRET + "\n")
    monkeypatch.setenv("GROWTH_ENGINE", "brms")
    s = Settings.from_env()
    assert s.r_brms_internal_token == SECRET  # the settings strip it
    res = resources_from_settings(s)["engine"]
    with dg.build_resources({"engine": res}) as r:
        engine = r.engine.get_engine()
    try:
        engine.fit(PANEL, SETTINGS)
    except Exception as e:  # noqa: BLE001
        assert SECRET not in str(e), f"{type(e).__name__}: {e}"
        raise
    assert f.requests[0]["X-Internal-Token"] == SECRET


def test_url_credentials_are_not_shown_in_errors_or_logs(caplog):
    from growth_assets.db.localpg import free_port

    url = f"http://svc:{SECRET}@127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING), pytest.raises(BrmsServiceError) as e:
        BrmsClient(url, max_retries=1, backoff_secs=0.01).fit(PANEL, SETTINGS)
    assert SECRET not in str(e.value), str(e.value)
    assert SECRET not in caplog.text, caplog.text


# --- malformed answers ------------------------------------------------------------------------------

def test_a_corrupt_gzip_answer_is_a_fit_result_error(fake):
    """A 200 whose gzip body is corrupt is a malformed answer like a truncated one
    ("not valid JSON", FitResultError); it escaped as httpx.DecodingError."""
    f = fake((200, b"this is not gzip at all", 0, {"Content-Encoding": "gzip"}))
    with pytest.raises(FitResultError, match="could not be decoded"):
        BrmsClient(f.url, max_retries=0).fit(PANEL, SETTINGS)


def test_a_gzip_answer_is_accepted(fake):  # control: the encoded path itself works
    f = fake((200, gzip.compress(json.dumps(valid_body()).encode()), 0, {"Content-Encoding": "gzip"}))
    assert BrmsClient(f.url, max_retries=0).fit(PANEL, SETTINGS).engine == "brms"


# --- the deadline ------------------------------------------------------------------------------------

def test_a_fit_never_takes_longer_than_its_deadline():
    """Docstring: "All attempts of one fit share one deadline, R_BRMS_TIMEOUT_SECS: ... an answer
    must arrive whole by then ..., so a fit never takes longer than that." Headers just before
    the deadline, then a body read got the whole read timeout again (`left` at the attempt's
    start): the fit took up to twice its deadline."""
    body = json.dumps(valid_body()).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with SlowAnswer([(1.5, head), (4.0, body)]) as srv:  # the headers in time, the body late
        t0 = time.monotonic()
        with pytest.raises(BrmsServiceError):
            BrmsClient(srv.url, timeout_secs=2.0, max_retries=0).fit(PANEL, SETTINGS)
        took = time.monotonic() - t0
    assert took <= 2.5, f"the fit took {took:.2f}s against a deadline of 2s"
