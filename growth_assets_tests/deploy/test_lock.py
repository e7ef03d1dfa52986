"""The lock files: every dependency pyproject.toml names is pinned there, inside its range,
so the venv of the tests and the image run versions that were chosen, not next month's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m[1].split("[")[0]).lower()] = m[2]
    return out


@pytest.mark.parametrize("lock, with_test", [("requirements.lock", True), ("requirements-runtime.lock", False)])
def test_the_lock_pins_every_declared_dependency_within_its_range(lock, with_test):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + (project["optional-dependencies"]["test"] if with_test else [])
    pinned = pins(REPO / lock)
    assert len(pinned) > 50
    for spec in declared:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pinned, f"{lock}: {req.name} is not pinned (run scripts/lock.sh)"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{lock}: {req.name}=={pinned[name]} is outside {req.specifier} (run scripts/lock.sh)"
    if not with_test:
        assert "pytest" not in pinned  # the image carries no test tools


def test_the_venv_runs_the_locked_versions():
    from importlib.metadata import version

    pinned = pins(REPO / "requirements.lock")
    for name in ("dagster", "jax", "jaxlib", "numpyro", "psycopg", "numpy", "sqlalchemy"):
        assert version(name) == pinned[name], name
