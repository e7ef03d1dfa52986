"""The Dockerfiles (docker/) install with the scripts CI runs, are pinned and run non-root,
and agree with the manifests that run them."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

from .k8s_support import REPO, seedtest, container, env_of, find, r_default_port

DOCKER = REPO / "docker"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in dockerfile.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    assert not buf, f"{dockerfile}: dangling continuation"
    return out


def of(instrs, op: str) -> list[str]:
    return [a for o, a in instrs if o == op]


def script_commands(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def copied_sources(instrs) -> list[str]:
    srcs = []
    for a in of(instrs, "COPY"):
        parts = [p for p in shlex.split(a) if not p.startswith("--")]
        srcs += parts[:-1]
    return srcs


def dockerignore_keeps(dockerfile: Path, path: str) -> bool:
    """BuildKit's <Dockerfile>.dockerignore: the last matching pattern wins ('!' re-includes)."""
    ign = dockerfile.with_name(dockerfile.name + ".dockerignore")
    keep = True
    for pat in script_commands(ign):
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if pat == "**" or fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            keep = neg
    return keep


def _user(instrs) -> int:
    users = of(instrs, "USER")
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]}: a numeric non-root uid (runAsNonRoot checks it)"
    return int(uid)


def base_image(instrs) -> str:
    """The image's base: ``FROM ${BASE}`` with ``ARG BASE=<default>`` before it (the default is
    what a deployment pulls; scripts/build_images.sh passes a local Debian 12 base)."""
    (frm,) = of(instrs, "FROM")
    assert frm == "${BASE}", frm
    args = dict(a.split("=", 1) for a in of(instrs[:[o for o, _ in instrs].index("FROM")], "ARG"))
    return args["BASE"]


def test_ci_runs_the_install_scripts_the_images_use():
    cmds = script_commands(REPO / "scripts" / "test.sh")
    assert any(re.search(r"\bscripts/bootstrap\.sh\b", c) for c in cmds)
    assert any(re.search(r"\bscripts/install_r\.sh\b", c) for c in cmds)
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_user_code_image_installs_with_bootstrap_into_opt_venv_and_runs_the_grpc_server_non_root():
    df = DOCKER / "user-code.Dockerfile"
    ins = instructions(df)
    frm = base_image(ins)
    assert re.fullmatch(r"debian:12\.\d+-slim", frm), frm
    runs = of(ins, "RUN")
    # Debian's Python 3.11 (the base has none), before the bootstrap that makes the venv with it
    i_py = next(i for i, r in enumerate(runs) if re.search(r"apt-get install .*\bpython3-venv\b", r))
    i_boot = next(i for i, r in enumerate(runs) if "scripts/bootstrap.sh" in r)
    assert i_py < i_boot
    assert any(re.search(r"GROWTH_VENV=/opt/venv\s+(\w+=\S*\s+)*bash\s+scripts/bootstrap\.sh\b", r) for r in runs)
    # the image installs the runtime only: no test extras, no PostgreSQL server
    assert any(re.search(r'GROWTH_EXTRAS=""', r) and "GROWTH_SKIP_PG=1" in r for r in runs)
    for src in copied_sources(ins):
        assert (REPO / src).exists(), src
        assert dockerignore_keeps(df, src.rstrip("/")), f"{src} is excluded by the .dockerignore"
    assert "scripts/bootstrap.sh" in copied_sources(ins)
    uid = _user(ins)
    cmd = " ".join(json.loads(of(ins, "CMD")[-1]))  # exec form: a JSON list
    assert cmd.startswith("dagster api grpc -m growth_assets.definitions -a defs -h 0.0.0.0 -p 4000")
    assert re.search(r"PATH=/opt/venv/bin", " ".join(of(ins, "ENV")))
    for dname in ("growth-user-code", "dagster-webserver", "dagster-daemon"):
        assert find(seedtest(), "Deployment", dname)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_r_image_installs_with_install_r_and_bakes_the_model_where_the_pod_looks():
    df = DOCKER / "r-brms-plumber.Dockerfile"
    ins = instructions(df)
    frm = base_image(ins)
    assert re.fullmatch(r"debian:(12\.\d+|bookworm-\d{8})(-slim)?", frm), frm
    runs = of(ins, "RUN")
    assert any(re.search(r"\bbash\s+\S*scripts/install_r\.sh\b", r) for r in runs)
    srcs = copied_sources(ins)
    assert "scripts/install_r.sh" in srcs and "r_brms_plumber/" in srcs
    for src in srcs:
        assert dockerignore_keeps(df, src.rstrip("/")), f"{src} is excluded by the .dockerignore"
    assert dockerignore_keeps(df, "r_brms_plumber/warm_cache.R")
    # the warm-up runs after the install, as the runtime user, into the baked cache dir
    order = [o + " " + a for o, a in ins]
    i_install = next(i for i, s in enumerate(order) if "install_r.sh" in s and s.startswith("RUN"))
    i_warm = next(i for i, s in enumerate(order) if s.startswith("RUN") and "warm_cache.R" in s)
    i_user = next(i for i, s in enumerate(order) if s.startswith("USER"))
    assert i_install < i_user < i_warm
    env = " ".join(of(ins, "ENV"))
    baked = re.search(r"R_BRMS_MODEL_CACHE=(\S+)", env).group(1)
    uid = _user(ins)
    assert of(ins, "EXPOSE") == [str(r_default_port())]
    # serve.sh: SIGTERM becomes a graceful shutdown (R itself would die at once)
    assert json.loads(of(ins, "CMD")[-1]) == ["/opt/r_brms_plumber/serve.sh"]
    # the pod: same uid, and the init container copies exactly that baked directory
    deploy = find(seedtest(), "Deployment", "r-brms-plumber")
    spec = deploy["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == uid
    (init,) = spec["initContainers"]
    assert init["command"][:2] == ["cp", "-a"] and init["command"][2].rstrip("/.") == baked.rstrip("/")
    c = container(deploy, "r-brms-plumber")
    assert init["command"][3].rstrip("/") == env_of(c)["R_BRMS_MODEL_CACHE"]["value"]
    assert (REPO / "r_brms_plumber" / "warm_cache.R").exists()


def test_no_image_or_manifest_uses_latest():
    for p in [*DOCKER.glob("*.Dockerfile"), *(REPO / "k8s").rglob("*.yaml")]:
        code = "\n".join(ln.split("#")[0] for ln in p.read_text().splitlines())  # comments may say it
        assert not re.search(r":latest\b", code), p


def test_ci_builds_and_runs_both_images_from_the_dockerfiles_with_a_local_base():
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/build_images.sh --smoke" in ci and ci.index("scripts/test.sh") < ci.index("build_images.sh")
    build = (REPO / "scripts" / "build_images.sh").read_text()
    for df in ("docker/r-brms-plumber.Dockerfile", "docker/user-code.Dockerfile"):
        assert df in build
        assert base_image(instructions(REPO / df)).startswith("debian:12")
    assert '--build-arg "BASE=$base"' in build and "debootstrap --variant=minbase bookworm" in build
    assert "--ignorefile" in build  # the same .dockerignore files BuildKit reads
    assert "scripts/smoke_images.sh" in build
