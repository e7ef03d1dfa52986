"""The shape the redesign promises, checked on the source: public APIs only, no Python
objects serialised between steps, one reader of the environment, every default and range
stated once (and the R service's kept equal to it)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from growth_assets import settings
from growth_assets.defs.resources import GrowthSettings
from growth_assets.model.engine import FitSettings

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "growth_assets"
THIRD_PARTY = {"jax", "numpyro", "dagster", "dagster_postgres", "dagster_k8s", "psycopg", "httpx",
               "pandas", "numpy", "scipy", "arviz_stats"}
SERIALISERS = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}


def sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    return [(f, ast.parse(f.read_text(), str(f))) for f in files]


def _private(module: str) -> bool:
    return module != "__future__" and any(p.startswith("_") for p in module.split("."))


def test_no_private_api_and_no_object_serialisation_anywhere_in_the_package():
    bad = []
    for path, tree in sources():
        aliases: dict[str, str] = {}  # local name -> third-party module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    if top in SERIALISERS or _private(a.name):
                        bad.append(f"{path.name}: import {a.name}")
                    if top in THIRD_PARTY:
                        aliases[(a.asname or a.name).split(".")[0]] = top
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                if top in SERIALISERS or _private(node.module):
                    bad.append(f"{path.name}: from {node.module} import …")
                if top in THIRD_PARTY:
                    for a in node.names:
                        if a.name.startswith("_"):
                            bad.append(f"{path.name}: from {node.module} import {a.name}")
                        aliases[a.asname or a.name] = top
        for node in ast.walk(tree):  # a private attribute of a third-party module or object
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in aliases:
                    bad.append(f"{path.name}:{node.lineno}: {root.id}….{node.attr}")
        text = path.read_text()
        for needle in ("jax._src", "dagster._core", "_single_chain_mcmc", "serialize_executable"):
            if needle in text:
                bad.append(f"{path.name}: mentions {needle}")
    assert not bad, bad


def test_only_the_settings_module_reads_the_environment():
    readers = []
    for path, tree in sources():
        if path.name == "settings.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "getenv":
                readers.append(f"{path.name}:{node.lineno} getenv")
            if (isinstance(node, ast.Attribute) and node.attr in ("get", "setdefault", "pop")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "environ"):
                readers.append(f"{path.name}:{node.lineno} environ.{node.attr}")
            if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "environ"):
                readers.append(f"{path.name}:{node.lineno} environ[...]")
    assert not readers, readers


def test_importing_the_engine_changes_nothing_in_the_process():
    code = ("import os; import growth_assets.model.native, growth_assets.definitions; "
            "print(os.environ.get('XLA_FLAGS'))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "None"


LIMITS = {"n_chains": settings.N_CHAINS, "n_samples": settings.N_SAMPLES, "seed": settings.SEED,
          "lookback_weeks": settings.LOOKBACK_WEEKS}


def test_fit_defaults_and_ranges_are_stated_once():
    fs, gs = FitSettings(), GrowthSettings()
    for name, limit in LIMITS.items():
        assert getattr(fs, name) == limit.default == getattr(gs, name), name
        f = GrowthSettings.model_fields[name]
        bounds = {type(m).__name__: getattr(m, "ge", getattr(m, "le", None)) for m in f.metadata}
        assert (bounds.get("Ge"), bounds.get("Le")) == (limit.lo, limit.hi), name
        assert settings.Settings.from_env({}).__getattribute__(name) == limit.default
        for bad in (limit.lo - 1, limit.hi + 1):
            with pytest.raises(ValueError, match=name):
                FitSettings(**{name: bad})
            with pytest.raises(settings.SettingsError, match=limit.env):
                settings.Settings.from_env({limit.env: str(bad)})
    assert GrowthSettings().horizon_weeks == settings.HORIZON_WEEKS.default


def test_the_r_service_accepts_exactly_the_same_ranges():
    src = (REPO / "r_brms_plumber" / "R" / "validate.R").read_text()
    found = {m[0]: (int(m[1]) if m[1] != "NA_integer_" else None, int(float(m[2])), m[3])
             for m in re.findall(r'check_int\(body, "(\w+)", ([\w.]+?)L?, ([\d.e]+), ([\w.$]+)\)', src)}
    for name in ("n_chains", "n_samples", "lookback_weeks"):
        limit = LIMITS[name]
        default, lo, hi = found[name]
        assert (default, lo, int(float(hi))) == (limit.default, limit.lo, limit.hi), name
    # the seed: any integer R can hold, which is the settings' 0..2^31-1
    assert found["seed"][1:] == (0, ".Machine$integer.max") and settings.SEED.hi == 2**31 - 1
