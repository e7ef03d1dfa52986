"""Shared fixtures: a real PostgreSQL the tests start themselves, a fresh database per test.

With ``DATABASE_URL`` unset (the usual case), a throwaway cluster is created in a temporary
directory (``initdb`` + ``pg_ctl`` on a free port, through the ``postgres`` user when root)
and stopped at the end of the session. With ``TEST_DATABASE_ADMIN_URL`` set, that server is
used instead. Each test that asks for ``db_url`` gets its own database, cloned from a
migrated template, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from growth_assets.db import connect, localpg
from growth_assets_tests.support.fake_http import fake  # noqa: F401 (a fixture of every test)
from growth_assets.db.migrate import migrate

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "reference"  # in the repository: a clone alone passes its tests
TEMPLATE = "growth_test_template"


def _with_db(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    admin = os.environ.get("TEST_DATABASE_ADMIN_URL")
    if admin:
        yield admin
        return
    tmp = Path(tempfile.mkdtemp(prefix="growth-pg-"))
    tmp.chmod(0o755)
    cluster = localpg.ensure_cluster(tmp / "data")
    try:
        yield cluster.url("postgres")
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    migrate(_with_db(pg_admin_url, TEMPLATE), apply_source_changes=True)
    return TEMPLATE


def _create_db(admin_url: str, template: str | None) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _drop_db(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _fresh_db(admin_url: str, template: str | None) -> Iterator[str]:
    name = _create_db(admin_url, template)
    try:
        yield _with_db(admin_url, name)
    finally:
        _drop_db(admin_url, name)


@pytest.fixture
def db_url(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with _fresh_db(pg_admin_url, pg_template) as url:
        yield url


@pytest.fixture(scope="module")
def db_url_module(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database shared by one test module (an expensive fixture's)."""
    with _fresh_db(pg_admin_url, pg_template) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no tables at all (for migration tests)."""
    with _fresh_db(pg_admin_url, None) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection as the project opens one (its schema first on the search_path)."""
    with connect(db_url) as c:
        yield c


# --- the real R brms service ----------------------------------------------------------------

class RService:
    def __init__(self, port: int, token: str, log_path: Path, extra_env: dict | None = None):
        import subprocess
        import sys

        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.log_path = log_path
        env = {**os.environ, "R_BRMS_INTERNAL_TOKEN": token, **(extra_env or {})}
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "growth_assets.cli", "r-service", "--port", str(port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 900) -> "RService":
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the R service exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass  # not listening yet: poll again
            time.sleep(1)
        raise TimeoutError(f"the R service was not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def kill(self, sig=None) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig or signal.SIGKILL)
            self.proc.wait(30)
        self._log.close()

    def client(self, **kw):
        from growth_assets.model.brms_client import BrmsClient

        return BrmsClient(self.url, token=self.token, **kw)


@pytest.fixture(scope="session")
def r_service(tmp_path_factory) -> Iterator[RService]:
    """The real R brms service (compiled model cached across sessions), with a token set."""
    from growth_assets.db.localpg import free_port

    svc = RService(free_port(), f"tok-{uuid.uuid4().hex}", tmp_path_factory.mktemp("r") / "r-service.log")
    try:
        yield svc.wait_ready()
    finally:
        svc.kill()
