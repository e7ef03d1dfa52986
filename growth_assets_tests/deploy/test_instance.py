"""The production dagster.yaml loads: PostgreSQL storage and the Kubernetes run launcher."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from growth_assets.db import connect

from .k8s_support import find, overlay

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
