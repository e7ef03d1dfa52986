"""A real `dagster dev` (webserver + daemon) on 127.0.0.1, started and stopped by the test.

One session of it shows: the weekly job launched through GraphQL and run by the daemon in
separate step processes (the Postgres IO manager hands values between them), its metadata
read back through GraphQL, the freshness state the daemon computes, and the alert sensor
posting a failed check and a failed run to a real receiver.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from dagster._core.definitions.freshness import FreshnessState  # not exported at top level in 1.13

from growth_assets.db import connect
from growth_assets.db.localpg import free_port
from growth_assets.demo.cohort import seed_cohort
from growth_assets_tests.support.graph import AS_OF, PARTITION
from growth_assets_tests.support.receiver import Receiver

REPO = Path(__file__).resolve().parents[1]
LOCATION = "growth"
ASSETS = ["weekly_scores", "brms_posterior", "growth_brms_meta", "weekly_kpi_P"]

LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""

RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""

ASSET_METADATA = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId partition
        metadataEntries {
          label __typename
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
          ... on TableMetadataEntry { table { records schema { columns { name } } } }
          ... on MarkdownMetadataEntry { mdStr }
        }
      }
    }
  }
}"""


class DagsterDev:
    def __init__(self, env: dict, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "growth_assets.cli", "dev", "--port", str(port)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def gql(self, query: str, variables: dict | None = None) -> dict:
        r = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        r.raise_for_status()
        body = r.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "dagster dev exited early"
            try:
                data = self.gql("{ workspaceOrError { ... on Workspace { locationEntries"
                                " { name loadStatus } } } }")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            except (httpx.HTTPError, AssertionError, KeyError, TypeError):
                pass  # not up yet: poll again
            time.sleep(1)
        raise TimeoutError("dagster dev did not load the code location")

    def launch(self, run_config: dict | None = None) -> str:
        params = {"selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                               "jobName": "weekly_growth_job"},
                  "runConfigData": json.dumps(run_config or {}),
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": PARTITION}]}}
        out = self.gql(LAUNCH, {"params": params})["launchRun"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]

    def wait_run(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.gql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} did not finish")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise TimeoutError(what)


@pytest.mark.slow
def test_dagster_dev_runs_the_graph_shows_metadata_freshness_and_alerts(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_URL", db_url)  # the demo instance's storage, for reading it here
    with connect(db_url) as conn:
        seed_cohort(conn, 40, 12, seed=5, as_of=AS_OF)
    local = tmp_path / "local"
    with Receiver() as rx:
        env = {**os.environ, "DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(local),
               "GROWTH_ENGINE": "native", "BRMS_N_CHAINS": "4", "BRMS_N_SAMPLES": "1000",
               "ALERT_WEBHOOK_URL": rx.url, "DAGSTER_WEBSERVER_URL": "http://127.0.0.1:3000",
               "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5"}
        env.pop("DAGSTER_HOME", None)
        dev = DagsterDev(env, free_port(), tmp_path / "dagster-dev.log")
        try:
            dev.wait_ready()
            # 1. a good run: launched through GraphQL, executed by the daemon's run queue
            run_id = dev.launch()
            assert dev.wait_run(run_id) == "SUCCESS", (tmp_path / "dagster-dev.log").read_text()[-4000:]
            mats = dev.gql(ASSET_METADATA, {"path": ["brms_posterior"]})["assetOrError"]["assetMaterializations"]
            assert mats[0]["runId"] == run_id and mats[0]["partition"] == PARTITION
            md = {e["label"]: e for e in mats[0]["metadataEntries"]}
            assert md["max_rhat"]["__typename"] == "FloatMetadataEntry" and 1.0 <= md["max_rhat"]["floatValue"] < 1.05
            assert md["min_ess_bulk"]["floatValue"] > 100 and md["students"]["intValue"] == 40
            assert md["engine"]["text"] == "native"
            table = md["posterior_summary"]["table"]
            assert [c["name"] for c in table["schema"]["columns"]][:3] == ["parameter", "mean", "sd"]
            assert len(table["records"]) == 6
            assert md["P_distribution"]["__typename"] == "MarkdownMetadataEntry"
            assert len(md["P_distribution"]["mdStr"]) < 1000
            kpi = dev.gql(ASSET_METADATA, {"path": ["weekly_kpi_P"]})["assetOrError"]["assetMaterializations"][0]
            kmd = {e["label"]: e for e in kpi["metadataEntries"]}
            assert kmd["rows_written"]["intValue"] == 40

            # 2. freshness, as the daemon evaluates it, read from the instance
            with dg.DagsterInstance.from_config(str(local / "dagster_home")) as inst:
                def fresh():
                    recs = inst.get_freshness_state_records([dg.AssetKey(a) for a in ASSETS])
                    states = {k.to_user_string(): r.freshness_state for k, r in recs.items()}
                    return states if len(states) == 4 and all(
                        s == FreshnessState.PASS for s in states.values()) else None
                states = wait_for(fresh, 120, "freshness state did not reach PASS")
            assert set(states) == set(ASSETS)

            # 3. the sensor's first tick (starts from now), then a run whose ESS check fails
            wait_for(lambda: _sensor_ticked(dev), 90, "the alert sensor never ticked")
            bad = dev.launch({"resources": {"diagnostics_thresholds": {"config": {"ess_error": 1e9, "ess_warn": 1e9}}}})
            assert dev.wait_run(bad) == "FAILURE"
            posts = wait_for(lambda: rx.posts if {p["kind"] for p in rx.posts} >= {"asset_check_failed", "run_failed"}
                             else None, 120, "no alerts arrived")
            check = next(p for p in posts if p["kind"] == "asset_check_failed")
            assert check["check"] == "ess_above_threshold" and check["severity"] == "ERROR"
            assert check["run_id"] == bad and check["threshold"] == 1e9
            assert check["run_url"] == f"http://127.0.0.1:3000/runs/{bad}"
            assert any(p["kind"] == "run_failed" and p["run_id"] == bad for p in posts)
            assert all(p["run_id"] == bad for p in posts)  # the good run's history was not replayed
        finally:
            dev.stop()
    assert dev.proc.returncode is not None


def _sensor_ticked(dev: DagsterDev) -> bool:
    q = """{ sensorOrError(sensorSelector: {repositoryLocationName: "growth", repositoryName: "__repository__",
             sensorName: "failure_alerts"}) { ... on Sensor { sensorState { ticks(limit: 1) { status } } } } }"""
    ticks = dev.gql(q)["sensorOrError"]["sensorState"]["ticks"]
    return bool(ticks)
