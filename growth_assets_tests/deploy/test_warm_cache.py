"""r_brms_plumber/warm_cache.R, the r-brms-plumber image's build-time warm-up, for real: it
compiles the model into a cache directory, a second process finds it as a cache hit, and the
service started on a copy of that directory (what the pod's init container makes) is ready
without compiling."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid

import pytest

from ..conftest import RService
from .k8s_support import REPO

pytestmark = [pytest.mark.r_service, pytest.mark.slow]

WARM = REPO / "r_brms_plumber" / "warm_cache.R"


def _warm(cache_dir) -> str:
    out = subprocess.run(["Rscript", str(WARM), "--cache-dir", str(cache_dir)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed (scripts/install_r.sh)")
def test_warm_cache_bakes_a_model_the_service_loads_without_compiling(tmp_path):
    from growth_assets.db.localpg import free_port

    baked = tmp_path / "baked"
    first = _warm(baked)
    assert re.search(r"warm_cache: (compiled and stored|already cached) ", first), first
    assert "cache hit verified" in first
    (model,) = baked.glob("growth_model_*.rds")
    assert model.stat().st_size > 1_000_000  # a compiled brmsfit with its shared library

    second = _warm(baked)  # a new R process: the cache key is stable across processes
    assert "already cached" in second and "compiling the growth model" not in second, second
    assert [p.name for p in baked.glob("growth_model_*.rds")] == [model.name]

    pod_cache = tmp_path / "pod-cache"  # what the init container does: cp -a baked/. pod-cache/
    shutil.copytree(baked, pod_cache)
    svc = RService(free_port(), f"tok-{uuid.uuid4().hex}", tmp_path / "r-service.log",
                   extra_env={"R_BRMS_MODEL_CACHE": str(pod_cache)})
    try:
        svc.wait_ready(timeout=120)
    finally:
        svc.kill()
    log = (tmp_path / "r-service.log").read_text()
    assert re.search(r"model: ready in [\d.]+s \(cache hit, key \w+, " + re.escape(str(pod_cache)), log), log
