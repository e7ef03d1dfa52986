"""The production dagster.yaml loads: PostgreSQL storage and the Kubernetes run launcher."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster._serdes import serialize_value
import pytest
import yaml

from growth_assets.db import connect

from .k8s_support import container, find, overlay

REPO = Path(__file__).resolve().parents[2]

DUMMY_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: dummy}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: seedtest}}]
current-context: x
"""


@pytest.mark.parametrize("name", ["seedtest", "example"])
def test_production_instance_loads_with_the_k8s_launcher_and_postgres(db_url, tmp_path, monkeypatch, name):
    """The one dagster.yaml, in each overlay's environment: the launcher starts run Jobs in the
    pod's namespace and mounts the overlay's database Secret into them."""
    docs = overlay(name)
    namespace = {d["metadata"]["namespace"] for d in docs if d["kind"] == "Deployment"}.pop()
    secret = find(docs, "ConfigMap", "growth-assets-config")["data"]["GROWTH_DB_SECRET"]
    monkeypatch.setenv("DAGSTER_JOB_NAMESPACE", namespace)  # the downward API's metadata.namespace
    monkeypatch.setenv("GROWTH_DB_SECRET", secret)
    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    launcher = cfg["run_launcher"]["config"]
    assert cfg["run_launcher"]["class"] == "K8sRunLauncher"
    # off-cluster: the same config, but the client reads a dummy kubeconfig instead of the pod's
    (tmp_path / "kubeconfig").write_text(DUMMY_KUBECONFIG)
    launcher.update(load_incluster_config=False, kubeconfig_file=str(tmp_path / "kubeconfig"))
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("DAGSTER_PG_URL", db_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        from dagster_k8s import K8sRunLauncher
        from dagster_postgres import PostgresRunStorage

        assert isinstance(instance.run_launcher, K8sRunLauncher)
        assert instance.run_launcher.job_namespace == namespace
        assert instance.run_launcher.env_secrets == [secret]
        assert instance.run_launcher.instance_config_map == "dagster-instance"
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_runs() == []  # storage reachable, tables created

    with connect(db_url) as c:
        assert c.execute("SELECT to_regclass('public.runs') IS NOT NULL").fetchone()[0]


def test_one_fit_at_a_time_whatever_launched_the_run(db_url, tmp_path, monkeypatch):
    """The one-fit limit keyed on the run tag growth/fit, which only weekly_growth_job and its
    schedule set: an asset backfill (or a Materialize in the UI) runs as __ASSET_JOB without
    it, and the queue launched 4 of its runs, 4 fits at once. The fit step is now in the pool
    growth_fit, limited to one slot across all runs by the instance."""
    from growth_assets.defs import build_definitions
    from growth_assets.settings import Settings

    defs = build_definitions(Settings.from_env({}))
    fit = defs.resolve_assets_def("brms_posterior")
    assert fit.op.pool == "growth_fit"
    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    cfg.pop("run_launcher")  # the pool's limit is the instance's, whatever launches the runs
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("DAGSTER_PG_URL", db_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


CHILD = r"""
import sys
import dagster as dg
from dagster._serdes import deserialize_value
from dagster._core.instance.ref import InstanceRef
ref = deserialize_value(open(sys.argv[1]).read(), InstanceRef)
# what failure_alerts does with context.instance in the code server
with dg.DagsterInstance.from_ref(ref) as instance:
    instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1)
print("ok")
"""


def test_code_server_env_resolves_the_instance_the_failure_sensor_reads(db_url, tmp_path, monkeypatch):
    """Sensors run in the code server, where context.instance is rebuilt from the daemon's
    InstanceRef: the production dagster.yaml, its {env: NAME} read in the code server's own
    environment. The server had no DAGSTER_PG_URL, so every tick of failure_alerts failed once
    ALERT_WEBHOOK_URL was set, and no alert was sent (found by review)."""
    docs = overlay("seedtest")
    cm = find(docs, "ConfigMap", "growth-assets-config")["data"]
    server = container(find(docs, "Deployment", "growth-user-code"), "user-code")
    # the code server's environment, as the kubelet would build it (values: this test's)
    names = {e["name"] for e in server.get("env", [])}
    for src in server.get("envFrom", []):
        if "configMapRef" in src:
            names |= set(cm)
    values = {**cm, "DATABASE_URL": db_url, "DAGSTER_JOB_NAMESPACE": "seedtest",
              "DAGSTER_PG_URL": db_url, "DAGSTER_HOME": str(tmp_path / "server_home")}
    child_env = {k: values.get(k, "x") for k in names}
    child_env.update(PATH=os.environ["PATH"], HOME=str(tmp_path))
    (tmp_path / "server_home").mkdir()

    # the daemon's instance (production dagster.yaml, off-cluster kubeconfig) and its ref
    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (tmp_path / "kubeconfig").write_text(DUMMY_KUBECONFIG)
    cfg["run_launcher"]["config"].update(load_incluster_config=False,
                                         kubeconfig_file=str(tmp_path / "kubeconfig"))
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("DAGSTER_PG_URL", db_url)
    monkeypatch.setenv("DAGSTER_JOB_NAMESPACE", "seedtest")
    monkeypatch.setenv("GROWTH_DB_SECRET", cm["GROWTH_DB_SECRET"])
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        (tmp_path / "ref.json").write_text(serialize_value(instance.get_ref()))

    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "ref.json")], env=child_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (
        f"code server env {sorted(child_env)} cannot load the instance:\n{out.stderr[-1500:]}")
