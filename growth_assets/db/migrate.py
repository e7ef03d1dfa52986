"""Versioned, idempotent migrations of the project's own tables: ``migrations/NNNN_name.sql``
applied in order, once. The platform's tables are not migrated here: ``source_tables.plan``
says what the pipeline needs of them, and they change only when asked
(``apply_source_changes``; ``growth-assets db migrate --apply-source-changes``).

The tables live in the project's schema (``GROWTH_DB_SCHEMA``, default ``growth``), created
when missing. A database migrated before there was a schema (the tables in ``public``) has
them moved there, rows, keys and indexes with them (``ALTER TABLE ... SET SCHEMA``), before
anything else runs.

The pending files run in one transaction (each in a savepoint of its own) under an advisory
lock: two processes migrating at once do not race, and a file that fails leaves nothing of the
run behind (MigrationError names it). A file that changed after it was applied is an error (write a new one).
Version 0001 (which re-keyed and cleaned the platform's tables) is gone: a database that
applied it keeps its record; a new one gets the same tables from ``source_tables``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import psycopg
from psycopg import sql

from ..settings import Settings, check_schema
from .connection import SCHEMA_FIRST

LOCK_ID = 0x67726F77  # "grow"


# every table the migrations create (a move to the project's schema takes these, and only these)
PROJECT_TABLES = ("growth_schema_migrations", "growth_brms_meta", "growth_student_posterior", "growth_panel",
                  "growth_panel_meta", "growth_fit", "growth_population_draws", "growth_forecast_backtest")
# the views over them (0008): they move with the tables too (a view left behind is found only
# through a search_path that still holds the old schema)
PROJECT_VIEWS = ("growth_panel_rows",)
# the functions of their triggers (0010): they move with the tables
PROJECT_FUNCTIONS = ("growth_student_rows_need_their_fit", "growth_fit_takes_its_student_rows",
                     "growth_fit_truncates_its_student_rows", "growth_fit_keeps_run_ids_in_use")


class MigrationError(RuntimeError):
    pass


def _schema(schema: str | None) -> str:
    return check_schema(schema or Settings.from_env().db_schema)


def schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (schema,)).fetchone()[0]


def tables_to_move(conn: psycopg.Connection, schema: str | None = None) -> tuple[str | None, list[str]]:
    """(old schema, tables) of a database migrated before the project had its own schema: its
    migrations record is in a schema of the connection's search_path (where that layout put
    the tables: public, unless the URL said otherwise) and none is in ``schema``. (None, [])
    otherwise: another deployment's schema in the same database (staging beside production)
    is not on the path, and its tables stay where they are."""
    schema = _schema(schema)
    rows = conn.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND c.relname = ANY (%s)
             AND (n.nspname = ANY (current_schemas(false)) OR n.nspname = %s) ORDER BY 1, 2""",
        (list(PROJECT_TABLES), schema)).fetchall()
    holders = {n for n, t in rows if t == "growth_schema_migrations"}
    if schema in holders or not holders:
        return None, []
    if len(holders) > 1:
        raise MigrationError(f"the project's migration records are in several schemas ({', '.join(sorted(holders))}) "
                             f"and none is in {schema}: say which is the project's with GROWTH_DB_SCHEMA")
    old = holders.pop()
    return old, [t for n, t in rows if n == old]


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


def pending(conn: psycopg.Connection, schema: str | None = None) -> list[tuple[str, str]]:
    """[(version, sql)] of the migrations not applied yet (nothing is changed). The record is
    read where ``migrate`` would find it: in ``schema``, or where a move would bring it from."""
    schema = _schema(schema)
    old, _ = tables_to_move(conn, schema)
    table = sql.Identifier(old or schema, "growth_schema_migrations")
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),)).fetchone()[0]
    done = ({r[0] for r in conn.execute(sql.SQL("SELECT version FROM {}").format(table)).fetchall()}
            if exists else set())
    return [(v, s) for v, s in available() if v not in done]


def migrate(url_or_conn: str | psycopg.Connection, through: str | None = None, *,
            apply_source_changes: bool = False, schema: str | None = None,
            notes: list[str] | None = None) -> list[str]:
    """Apply the migrations not applied yet, in the project's schema (``schema``, default
    GROWTH_DB_SCHEMA); return the versions applied by this call. Tables moved from an older
    layout are said in ``notes``. With ``apply_source_changes`` (a URL only), also make every
    change ``source_tables.plan`` finds (the demo's and the tests' own databases)."""
    schema = _schema(schema)
    if isinstance(url_or_conn, str):
        from .connection import connect

        with connect(url_or_conn, schema=schema) as conn:
            out = migrate(conn, through, schema=schema, notes=notes)
        if apply_source_changes:
            from . import source_tables

            source_tables.plan_and_apply(url_or_conn, schema=schema)
        return out
    if apply_source_changes:
        raise MigrationError("apply_source_changes needs the database URL (indexes are built CONCURRENTLY)")
    conn = url_or_conn
    if through is not None:  # a version's name or its number ("0005"): the version itself is applied
        named = [v for v, _ in available() if through in (v, v.split("_", 1)[0])]
        if not named:
            raise MigrationError(f"through={through!r}: no such migration")
        through = named[0]
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        if not schema_exists(conn, schema):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        # this transaction's statements see the project's schema first, whatever the caller's path
        conn.execute(f"SELECT {SCHEMA_FIRST}", {"schema": sql.Identifier(schema).as_string(conn)})
        old, tables = tables_to_move(conn, schema)
        for t in tables:
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(old, t), sql.Identifier(schema)))
        moving = conn.execute("SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                              " WHERE n.nspname = %s AND p.proname = ANY (%s)",
                              (old, list(PROJECT_FUNCTIONS))).fetchall() if tables else []
        for (f,) in moving:
            conn.execute(sql.SQL("ALTER FUNCTION {}() SET SCHEMA {}").format(sql.Identifier(old, f), sql.Identifier(schema)))
        views = conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                             " WHERE n.nspname = %s AND c.relkind = 'v' AND c.relname = ANY (%s) ORDER BY 1",
                             (old, list(PROJECT_VIEWS))).fetchall() if tables else []
        for (v,) in views:
            conn.execute(sql.SQL("ALTER VIEW {} SET SCHEMA {}").format(sql.Identifier(old, v), sql.Identifier(schema)))
        if tables and notes is not None:
            notes.append(f"moved the project's tables from schema {old} to {schema}: {', '.join(tables + [v for (v,) in views])}")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS growth_schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = dict(conn.execute("SELECT version, checksum FROM growth_schema_migrations").fetchall())
        for version, text in available():
            if through is not None and version > through:
                break
            checksum = hashlib.sha256(text.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise MigrationError(
                        f"migration {version} changed after it was applied; add a new migration instead"
                    )
                continue
            try:
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO growth_schema_migrations (version, checksum) VALUES (%s, %s)",
                        (version, checksum),
                    )
            except psycopg.Error as e:  # the whole run is rolled back: say which file stopped it
                raise MigrationError(f"migration {version} failed ({type(e).__name__}: {' '.join(str(e).split())});"
                                     " nothing of this run was applied") from e
            applied_now.append(version)
    return applied_now
