"""The brms engine against the real R service (started by the test session)."""

import json
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from growth_assets.db import connect
from growth_assets.model.panel import Panel

from growth_assets_tests.support.results import accepted_json, checked_json  # noqa: F401

from growth_assets.model.brms_client import BrmsServiceError
from growth_assets.model.contract import POPULATION_PARAMS
from growth_assets.model.engine import FitSettings
from growth_assets_tests.conftest import REFERENCE_DIR
from growth_assets_tests.support.panels import cohort_panel

pytestmark = pytest.mark.r_service

SMALL = dict(n_chains=2, n_samples=400, seed=3)


@pytest.fixture(scope="module")
def sleepstudy():
    return pd.read_csv(REFERENCE_DIR / "sleepstudy.csv", dtype={"student_id": str})


@pytest.mark.slow
def test_sleepstudy_at_the_contract_defaults_matches_brms_long_run(r_service, sleepstudy):
    ref = json.loads((REFERENCE_DIR / "sleepstudy.brms.json").read_text())
    pop = {r["variable"]: r for r in ref["population"]}
    res = accepted_json(r_service.client(), sleepstudy, FitSettings(lookback_weeks=10, horizon_week=15))
    assert (res["n_chains"], res["n_samples"], res["n_warmup"], res["seed"]) == (4, 2000, 1000, 1234)
    for p in POPULATION_PARAMS:
        got, want = res["posterior_summary"][p], pop[p]
        # a 4 x 1000-draw run matches within Monte Carlo error (reference/README.md)
        assert abs(got["mean"] - want["mean"]) < 0.15 * want["sd"], p
        assert abs(got["sd"] / want["sd"] - 1) < 0.10, p
    assert res["diagnostics"]["max_rhat"] < 1.01 and res["diagnostics"]["n_divergent"] == 0
    assert res["priors"][0]["args"] == pytest.approx([ref["ybar"], 2.5 * ref["s"]])
    students = {s["student_id"]: s for s in ref["students"]}
    for pr in res["predictions"]:
        want = students[pr["student_id"]]
        assert abs(pr["mean_a"] - want["mean_a"]) < 0.15 * np.sqrt(want["var_a"])
        assert abs(pr["mean_b"] - want["mean_b"]) < 0.15 * np.sqrt(want["var_b"])


def test_a_formula_in_the_request_is_refused(r_service, sleepstudy):
    rows = sleepstudy.head(30).to_dict(orient="records")
    for extra in ({"formula": "score ~ 1 + system('id')"}, {"priors": [{"class": "b", "prior": "normal(0,1)"}]}):
        r = httpx.post(f"{r_service.url}/growth/fit", json={"rows": rows, **SMALL, **extra},
                       headers={"Authorization": f"Bearer {r_service.token}"}, timeout=30)
        assert r.status_code == 400
        body = r.json()
        assert body["error"] == "model_is_fixed" and body["field"] in extra


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-Internal-Token": "wrong"}],
                         ids=["none", "wrong-bearer", "wrong-header"])
def test_the_token_is_enforced(r_service, sleepstudy, headers):
    r = httpx.post(f"{r_service.url}/growth/fit", json={"rows": sleepstudy.head(30).to_dict(orient="records"), **SMALL},
                   headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    # health and readiness stay open for the probes
    assert httpx.get(f"{r_service.url}/healthz", timeout=5).status_code == 200


def test_bad_input_is_a_400_naming_the_field_and_the_client_does_not_retry(r_service):
    panel = pd.DataFrame({"student_id": ["a", "a", "b"], "week": [0, 1, 0], "score": [1.0, 1.0, 1.0]})
    client = r_service.client(max_retries=3, backoff_secs=5)
    t0 = time.monotonic()
    with pytest.raises(BrmsServiceError) as e:
        # the Panel constructor checks nothing (from_frame would refuse it here): the service
        # must refuse it on its own
        client.fit(Panel(np.array(["a", "b"], dtype=object), np.array([0, 0, 1]), np.array([0, 1, 0]),
                         panel["score"].to_numpy()), FitSettings(**SMALL))
    assert e.value.status == 400 and e.value.field == "rows.score"
    assert time.monotonic() - t0 < 5  # no retry on a 4xx


@pytest.mark.slow
def test_healthz_answers_within_a_second_all_through_a_fit_of_200_students(r_service):
    panel = cohort_panel(220)
    panel = panel[panel["student_id"].isin(panel["student_id"].unique()[:200])]
    assert panel["student_id"].nunique() == 200
    out: dict = {}

    def run():
        out["result"] = accepted_json(r_service.client(), panel, FitSettings(n_chains=4, n_samples=400, seed=5))

    t = threading.Thread(target=run)
    t.start()
    latencies = []
    while t.is_alive():
        t0 = time.monotonic()
        r = httpx.get(f"{r_service.url}/healthz", timeout=5)
        latencies.append(time.monotonic() - t0)
        assert r.status_code == 200
        time.sleep(0.2)
    t.join()
    res = checked_json(out["result"])
    assert res["n_students"] == 200
    assert len(latencies) > 20, "the fit was too short to show anything"
    assert max(latencies) < 1.0, f"slowest /healthz {max(latencies):.2f}s"


def test_a_second_concurrent_fit_gets_429_not_an_interleaved_mess(r_service):
    panel = cohort_panel(60, seed=2)
    body = r_service.client().request_body(Panel.from_frame(panel), FitSettings(n_chains=2, n_samples=1000, seed=1))
    h = {"Authorization": f"Bearer {r_service.token}", "Content-Type": "application/json"}
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(r=httpx.post(f"{r_service.url}/growth/fit", content=body,
                                                                  headers=h, timeout=300)))
    t.start()
    time.sleep(1.5)
    second = httpx.post(f"{r_service.url}/growth/fit", content=body, headers=h, timeout=60)
    t.join()
    assert second.status_code == 429 and second.json()["error"] == "too_many_fits"
    assert second.headers.get("Retry-After")
    assert first["r"].status_code == 200 and checked_json(first["r"].json())["n_students"] == 60


def test_a_retry_with_the_same_key_attaches_to_the_running_fit(r_service):
    panel = cohort_panel(40, seed=3)
    body = r_service.client().request_body(Panel.from_frame(panel), FitSettings(n_chains=2, n_samples=800, seed=2))
    h = {"Authorization": f"Bearer {r_service.token}", "Content-Type": "application/json",
         "Idempotency-Key": "test-key-attach"}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up reading; the fit goes on
        httpx.post(f"{r_service.url}/growth/fit", content=body, headers=h, timeout=httpx.Timeout(60, read=1.0))
    r = httpx.post(f"{r_service.url}/growth/fit", content=body, headers=h, timeout=300)
    assert r.status_code == 200  # not 429: the retry joined the fit that was running
    replay = httpx.post(f"{r_service.url}/growth/fit", content=body, headers=h, timeout=60)
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["run_id"] == r.json()["run_id"]


@pytest.mark.slow
def test_the_graph_end_to_end_on_the_brms_engine(r_service, db_url, monkeypatch):
    import dagster as dg

    from growth_assets.defs.growth import weekly_assets
    from growth_assets.defs.resources import GrowthEngineResource
    from growth_assets.demo.cohort import seed_cohort
    from growth_assets_tests.support.graph import AS_OF, PARTITION, resources

    with connect(db_url) as conn:
        seed_cohort(conn, 50, 12, seed=11, as_of=AS_OF)
    engine = GrowthEngineResource(engine="brms", r_brms_base_url=r_service.url,
                                  r_brms_internal_token=r_service.token)
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(db_url, engine, n_chains=4, n_samples=1000))
    assert res.success
    run_id = res.asset_materializations_for_node("growth_brms_meta")[0].metadata["run_id"].value
    assert run_id.startswith("brms-")
    with connect(db_url) as c:
        meta = c.execute("SELECT status, engine, engine_version, n_students, formula, diagnostics->>'max_rhat'"
                         " FROM growth_brms_meta WHERE run_id = %s", (run_id,)).fetchone()
        assert meta[0] == "passed" and meta[1] == "brms" and meta[2].startswith("brms 2.18")
        assert meta[3] == 50 and meta[4] == "score ~ week + (week | student_id)" and float(meta[5]) < 1.05
        rows = c.execute('SELECT count(*), min("P"), max("P"), min(sigma) FROM growth_student_posterior'
                         " WHERE run_id = %s", (run_id,)).fetchone()
        assert rows[0] == 50 and 0 <= rows[1] <= rows[2] <= 1 and rows[3] > 0
        kpi = c.execute("SELECT count(*), count(*) FILTER (WHERE kpis->>'P_source' = 'brms' AND kpis->>'P_run_id' = %s)"
                        " FROM weekly_kpi WHERE week_start = %s AND kpis ? 'P'", (run_id, AS_OF)).fetchone()
        assert kpi == (50, 50)
        # what is stored is what the service computed: P of the kpi row equals the posterior row's
        diff = c.execute('SELECT max(abs((k.kpis->>\'P\')::float8 - p."P")) FROM weekly_kpi k JOIN growth_student_posterior p'
                         " ON p.user_id = k.user_id AND p.run_id = %s WHERE k.week_start = %s", (run_id, AS_OF)).fetchone()[0]
        assert diff < 1e-12
        # the service kept 1000 population draws; the real-time path "update" uses them: with
        # the stored P taken away, it recomputes each P from the draws and the student's
        # scores. brms's own P is the share of 2000 draws with a + b h >= target, whose Monte
        # Carlo sd is <= sqrt(P (1 - P) / ESS) <= 0.5 / sqrt(400) = 0.025 at the checks' ESS
        # floor: allow 3 of those, plus the update's thinning error (< 0.005).
        n_draws = c.execute("SELECT n_draws FROM growth_population_draws WHERE run_id = %s",
                            (run_id,)).fetchone()[0]
        assert n_draws == 1000
        want = dict(c.execute('SELECT user_id, "P" FROM growth_student_posterior WHERE run_id = %s',
                              (run_id,)).fetchall())
        target = float(c.execute("SELECT target FROM growth_brms_meta WHERE run_id = %s", (run_id,)).fetchone()[0])
        c.execute("UPDATE weekly_kpi SET kpis = kpis - 'P'")
        from growth_assets.metrics import compute_goal_attainment_probabilities
        monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
        out = compute_goal_attainment_probabilities(c, list(want), target=target)
        assert {a.path for a in out.values()} == {"update"}
        assert max(abs(out[u].P - want[u]) for u in want) < 0.08
        c.rollback()


def test_cli_fit_through_the_service(r_service, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "fit.json"
    env = {**os.environ, "R_BRMS_BASE_URL": r_service.url, "R_BRMS_INTERNAL_TOKEN": r_service.token}
    p = subprocess.run([sys.executable, "-m", "growth_assets.cli", "fit", "--engine", "brms", "--panel",
                        str(REFERENCE_DIR / "sleepstudy.csv"), "--out", str(out), "--chains", "2",
                        "--samples", "400", "--seed", "9", "--target", "300", "--horizon-weeks", "2"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = checked_json(json.loads(out.read_text()))
    assert (res["engine"], res["seed"], res["target"], res["horizon_week"], res["n_chains"]) == ("brms", 9, 300.0, 11, 2)
    assert r_service.token not in p.stdout + p.stderr  # the token is never printed
