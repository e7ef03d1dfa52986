"""Versioned, idempotent migrations of the project's own tables: ``migrations/NNNN_name.sql``
applied in order, once. The platform's tables are not migrated here: ``source_tables.plan``
says what the pipeline needs of them, and they change only when asked
(``apply_source_changes``; ``growth-assets db migrate --apply-source-changes``).

Each file runs in its own transaction under an advisory lock, so two processes migrating at
once do not race. A file that changed after it was applied is an error (write a new one).
Version 0001 (which re-keyed and cleaned the platform's tables) is gone: a database that
applied it keeps its record; a new one gets the same tables from ``source_tables``.
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


def pending(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """[(version, sql)] of the migrations not applied yet (nothing is changed)."""
    exists = conn.execute("SELECT to_regclass('growth_schema_migrations') IS NOT NULL").fetchone()[0]
    done = {r[0] for r in conn.execute("SELECT version FROM growth_schema_migrations").fetchall()} if exists else set()
    return [(v, s) for v, s in available() if v not in done]


def migrate(url_or_conn: str | psycopg.Connection, through: str | None = None, *,
            apply_source_changes: bool = False) -> list[str]:
    """Apply the migrations not applied yet; return the versions applied by this call. With
    ``apply_source_changes`` (a URL only), also make every change ``source_tables.plan``
    finds (the demo's and the tests' own databases)."""
    if isinstance(url_or_conn, str):
        with psycopg.connect(url_or_conn) as conn:
            out = migrate(conn, through)
        if apply_source_changes:
            from . import source_tables

            with psycopg.connect(url_or_conn) as conn:
                changes = source_tables.plan(conn)
            source_tables.apply(url_or_conn, changes)
        return out
    if apply_source_changes:
        raise MigrationError("apply_source_changes needs the database URL (indexes are built CONCURRENTLY)")
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
