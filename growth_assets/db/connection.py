"""Connections to the project's PostgreSQL: one place that knows how to open them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from ..settings import Settings


class DatabaseNotConfigured(RuntimeError):
    pass


def database_url(url: str | None = None) -> str:
    url = url or Settings.from_env().database_url
    if not url:
        raise DatabaseNotConfigured(
            "DATABASE_URL is not set (for a local database: `growth-assets db start` prints one)"
        )
    return url


@contextmanager
def connect(url: str | None = None, **kwargs) -> Iterator[psycopg.Connection]:
    """A connection that commits on success and rolls back on error, then closes."""
    with psycopg.connect(database_url(url), **kwargs) as conn:
        yield conn


@contextmanager
def get_session(url: str | None = None) -> Iterator[psycopg.Connection]:
    """A session on ``DATABASE_URL`` for callers of ``growth_assets.metrics``.

    The session is a psycopg 3 connection: committed when the block ends normally, rolled
    back when it raises. Connecting gives up after ``DATABASE_CONNECT_TIMEOUT_SECS``, and
    every statement after ``DATABASE_STATEMENT_TIMEOUT_MS`` (waiting for a lock: after
    ``DATABASE_LOCK_TIMEOUT_MS``): an unreachable or stuck database is an error, not a hang.
    """
    s = Settings.from_env()
    options = f"-c statement_timeout={s.db_statement_timeout_ms} -c lock_timeout={s.db_lock_timeout_ms}"
    with connect(url, connect_timeout=s.db_connect_timeout_secs, options=options) as conn:
        yield conn
