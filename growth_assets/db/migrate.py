"""Versioned, idempotent migrations: ``migrations/NNNN_name.sql`` applied in order, once.

Each file runs in its own transaction under an advisory lock, so two processes migrating at
once do not race. A file that changed after it was applied is an error (write a new one).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import psycopg

LOCK_ID = 0x67726F77  # "grow"


class MigrationError(RuntimeError):
    pass


def available() -> list[tuple[str, str]]:
    """[(version, sql)] of the packaged migration files, in order."""
    files = resources.files("growth_assets.db") / "migrations"
    out = []
    for f in sorted(files.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".sql"):
            out.append((f.name.removesuffix(".sql"), f.read_text()))
    return out


def migrate_through(conn: psycopg.Connection, last: str) -> list[str]:
    """Apply the migrations up to and including version ``last`` (upgrade tests)."""
    return migrate(conn, through=last)


def migrate(url_or_conn: str | psycopg.Connection, through: str | None = None) -> list[str]:
    """Apply the migrations not applied yet; return the versions applied by this call."""
    if isinstance(url_or_conn, str):
        with psycopg.connect(url_or_conn) as conn:
            return migrate(conn, through)
    conn = url_or_conn
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS growth_schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = dict(conn.execute("SELECT version, checksum FROM growth_schema_migrations").fetchall())
        for version, sql in available():
            if through is not None and version > through:
                break
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise MigrationError(
                        f"migration {version} changed after it was applied; add a new migration instead"
                    )
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO growth_schema_migrations (version, checksum) VALUES (%s, %s)",
                    (version, checksum),
                )
            applied_now.append(version)
    return applied_now
