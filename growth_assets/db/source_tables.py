"""The platform's tables (mirt_ability, student_topic_theta, features_topic_daily, weekly_kpi):
read by the project (and weekly_kpi's ``kpis`` keys written), never owned by it.

``plan(conn)`` checks what the pipeline needs of them and returns the changes that would
provide it, each with the reason and its SQL; nothing is changed unless ``apply`` is called
(``growth-assets db migrate --apply-source-changes``). A table that does not exist is
created (a new database, the demo, the tests); an existing table is never dropped, re-keyed
or cleaned silently:

- missing columns the queries read (``ADD COLUMN``, nullable);
- mirt_ability / student_topic_theta keyed without ``fitted_at`` (the seed's "latest value
  per user"): such a table keeps one calibration per key, so the panel sees only each
  student's latest week; history needs that key dropped — which breaks the platform's upserts
  on it (``ON CONFLICT (user_id)``), so the platform must change them first;
- a key per calibration (exact duplicate rows removed first): a re-delivered calibration
  does not count twice, and ``seed-demo`` can be re-run;
- the indexes of the window and latest-value queries (``CREATE INDEX CONCURRENTLY``: no lock
  that blocks the platform's writes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from ..settings import Settings

COLUMNS: dict[str, dict[str, str]] = {
    "mirt_ability": {"user_id": "text", "theta": "double precision", "se": "double precision",
                     "model": "text", "version": "text", "fitted_at": "timestamptz"},
    "student_topic_theta": {"user_id": "text", "topic_id": "text", "theta": "double precision",
                            "se": "double precision", "model": "text", "version": "text",
                            "fitted_at": "timestamptz"},
    "features_topic_daily": {"user_id": "text", "topic_id": "text", "date": "date", "attempts": "integer",
                             "correct": "integer", "avg_time_ms": "integer", "theta_estimate": "numeric",
                             "theta_sd": "numeric"},
    "weekly_kpi": {"user_id": "text", "week_start": "date", "kpis": "jsonb", "created_at": "timestamptz",
                   "updated_at": "timestamptz"},
}

# what a new table gets (beyond the columns): keys as the platform's own schema has them
CREATE_EXTRA = {
    "features_topic_daily": ["PRIMARY KEY (user_id, topic_id, date)"],
    "weekly_kpi": ["PRIMARY KEY (user_id, week_start)"],
}
CREATE_OPTIONS = {
    "weekly_kpi": {"user_id": "NOT NULL", "week_start": "NOT NULL", "kpis": "NOT NULL DEFAULT '{}'::jsonb",
                   "created_at": "NOT NULL DEFAULT now()", "updated_at": "NOT NULL DEFAULT now()"},
    "features_topic_daily": {"user_id": "NOT NULL", "topic_id": "NOT NULL", "date": "NOT NULL"},
}

# one row per calibration: the key that keeps history
CALIBRATION_KEYS = {
    "mirt_ability": ("mirt_ability_calibration_key", ("user_id", "model", "version", "fitted_at")),
    "student_topic_theta": ("student_topic_theta_calibration_key",
                            ("user_id", "topic_id", "model", "version", "fitted_at")),
}

# (name, table, columns): the window and latest-value queries' indexes
INDEXES = [
    ("mirt_ability_user_latest", "mirt_ability", "(user_id, fitted_at DESC)"),
    ("mirt_ability_fitted_at", "mirt_ability", "(fitted_at)"),
    ("student_topic_theta_fitted_at", "student_topic_theta", "(fitted_at)"),
    ("features_topic_daily_date", "features_topic_daily", "(date)"),
    ("weekly_kpi_week_start", "weekly_kpi", "(week_start)"),
]


@dataclass(frozen=True)
class Change:
    """One change to a platform table: why, and the statements that make it."""

    table: str
    what: str
    statements: tuple[str, ...]
    concurrently: bool = False  # CREATE INDEX CONCURRENTLY: each statement outside a transaction
    destructive: bool = False  # drops a key or deletes rows of the platform's

    def describe(self) -> str:
        return f"{self.table}: {self.what}\n" + "\n".join(f"    {s};" for s in self.statements)


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    """The table's columns, in their order."""
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (table,)).fetchall()]


def _q(name: str) -> str:
    """A quoted identifier (the platform's own constraint and index names may need it)."""
    return '"' + name.replace('"', '""') + '"'


def platform_schema(conn: psycopg.Connection, project_schema: str | None = None) -> str:
    """Where a missing platform table is created: the first schema of the connection's
    search_path that is not the project's own (public, unless the URL says otherwise)."""
    project_schema = project_schema or Settings.from_env().db_schema
    row = conn.execute("SELECT s FROM unnest(current_schemas(false)) s WHERE s <> %s LIMIT 1",
                       (project_schema,)).fetchone()
    return row[0] if row else "public"


def _create(table: str, schema: str) -> str:
    opts = CREATE_OPTIONS.get(table, {})
    cols = [f"{_q(c)} {t}{(' ' + opts[c]) if c in opts else ''}" for c, t in COLUMNS[table].items()]
    return f"CREATE TABLE {_q(schema)}.{_q(table)} ({', '.join(cols + CREATE_EXTRA.get(table, []))})"


def _keys_without_fitted_at(conn: psycopg.Connection, table: str) -> list[tuple[str, str, str]]:
    """(kind, name, columns) of the primary/unique keys that do not include fitted_at."""
    rows = conn.execute(
        """
        SELECT CASE WHEN con.conname IS NOT NULL THEN 'constraint' ELSE 'index' END,
               coalesce(con.conname, ic.relname),
               (SELECT string_agg(a.attname, ', ' ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(att, ord)
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att)
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u')
        WHERE i.indrelid = to_regclass(%s) AND i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid
                          AND a.attname = 'fitted_at' AND a.attnum = ANY (i.indkey))
        ORDER BY 2
        """, (table,)).fetchall()
    return [(k, n, c) for k, n, c in rows]


def _index_state(conn: psycopg.Connection, name: str) -> bool | None:
    """None: no such index; False: one that a failed ``CREATE INDEX CONCURRENTLY`` left INVALID
    (kept by the server, never used, and never rebuilt by ``IF NOT EXISTS``); True: usable."""
    row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    return None if row is None else bool(row[0])


def _dedupe(conn: psycopg.Connection, table: str) -> str:
    """The DELETE of a table's exact duplicate rows (every column the same, NULLs equal), the
    first of each kept: a hashable grouping, not a self-join (n^2 on a platform's table)."""
    cols = ", ".join(_q(c) for c in _columns(conn, table))
    return (f"DELETE FROM {_q(table)} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER"
            f" (PARTITION BY {cols} ORDER BY ctid) AS k FROM {_q(table)}) d WHERE k > 1)")


def plan(conn: psycopg.Connection, project_schema: str | None = None) -> list[Change]:
    """What the pipeline needs of the platform's tables and does not find, as changes (a
    missing table: created in ``platform_schema``)."""
    changes: list[Change] = []
    present = {t: _exists(conn, t) for t in COLUMNS}
    schema = platform_schema(conn, project_schema)
    for table, cols in COLUMNS.items():
        if not present[table]:
            changes.append(Change(table, f"does not exist: create it (empty, in schema {schema})",
                                  (_create(table, schema),)))
            continue
        have = set(_columns(conn, table))
        missing = [c for c in cols if c not in have]
        if missing:
            changes.append(Change(
                table, f"lacks the column(s) {', '.join(missing)} the pipeline reads: add them (nullable)",
                tuple(f"ALTER TABLE {_q(table)} ADD COLUMN IF NOT EXISTS {_q(c)} {cols[c]}" for c in missing)))
    for table, (key_name, key_cols) in CALIBRATION_KEYS.items():
        if present[table]:
            for kind, name, cols in _keys_without_fitted_at(conn, table):
                stmt = (f"ALTER TABLE {_q(table)} DROP CONSTRAINT {_q(name)}" if kind == "constraint"
                        else f"DROP INDEX {_q(name)}")
                changes.append(Change(
                    table, f"is keyed on ({cols}) ({kind} {name}): it keeps one calibration per key, so the panel "
                           "sees only each student's latest week. History needs that key dropped; the platform's "
                           f"upserts on it (ON CONFLICT ({cols})) then stop working: change them first",
                    (stmt,), destructive=True))
        state = _index_state(conn, key_name)
        if not state:
            changes.append(Change(
                table, ("has an INVALID key per calibration (a failed build): rebuild it" if state is False
                        else "has no key per calibration") + ": remove exact duplicate rows (every column the"
                       f" same) and add the key ({', '.join(key_cols)}), so a re-delivered calibration does not"
                       " count twice; calibrations that share the key but differ stop it, named, for the"
                       " platform to settle",
                ((f"DROP INDEX IF EXISTS {_q(key_name)}",) if state is False else ())
                + ((_dedupe(conn, table),) if present[table] else ())  # a table created now is empty
                + (f"CREATE UNIQUE INDEX IF NOT EXISTS {_q(key_name)} ON {_q(table)}"
                   f" ({', '.join(_q(c) for c in key_cols)}) NULLS NOT DISTINCT",), destructive=True))
    for name, table, cols in INDEXES:
        state = _index_state(conn, name)
        if not state:
            changes.append(Change(
                table, (f"has an INVALID index {cols} (a failed concurrent build): rebuild it" if state is False
                        else f"has no index {cols} for the window query: add it") + " without blocking writes",
                ((f"DROP INDEX CONCURRENTLY IF EXISTS {_q(name)}",) if state is False else ())
                + (f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_q(name)} ON {_q(table)} {cols}",),
                concurrently=True))
    return changes


SOURCE_LOCK_ID = 0x67726F78  # one planner of the platform's tables at a time (migrate's LOCK_ID + 1)
LOCK_POLL_SECS = 0.2


def plan_and_apply(url: str, schema: str | None = None) -> list[str]:
    """``plan`` then ``apply`` as one planner at a time (a session's advisory lock, held on a
    connection of its own, which takes no table lock). Two at once each planned a missing
    table and the second failed on it. The lock is polled, not waited for: a statement
    waiting for it holds a snapshot, and the holder's ``CREATE INDEX CONCURRENTLY`` waits for
    every such snapshot to go (an undetected deadlock)."""
    from .connection import connect

    with connect(url, schema=schema, autocommit=True) as lock:
        while not lock.execute("SELECT pg_try_advisory_lock(%s)", (SOURCE_LOCK_ID,)).fetchone()[0]:
            time.sleep(LOCK_POLL_SECS)
        try:
            with connect(url, schema=schema) as conn:
                changes = plan(conn, schema)
            return apply(url, changes, schema=schema)
        finally:
            lock.execute("SELECT pg_advisory_unlock(%s)", (SOURCE_LOCK_ID,))


def apply(url: str, changes: list[Change], schema: str | None = None) -> list[str]:
    """Make the changes, each in its own transaction (an index CONCURRENTLY, outside one);
    returns one line per change made, with the rows it deleted."""
    from .connection import connect

    done = []
    with connect(url, schema=schema, autocommit=True) as conn:
        for ch in changes:
            if ch.concurrently:
                for s in ch.statements:
                    conn.execute(s)
                done.append(f"{ch.table}: " + "; ".join(ch.statements))
                continue
            try:
                with conn.transaction():
                    notes = []
                    for s in ch.statements:
                        cur = conn.execute(s)
                        if s.startswith("DELETE"):
                            notes.append(f"{cur.rowcount} duplicate row(s) deleted")
            except psycopg.errors.UniqueViolation as e:  # the key over calibrations that differ
                from .migrate import MigrationError

                raise MigrationError(
                    f"{ch.table}: two calibrations share the key but differ ({e.diag.message_detail}); the"
                    " platform must settle which is right: nothing of this change was made") from None
            done.append(f"{ch.table}: " + "; ".join(ch.statements) + (f" ({', '.join(notes)})" if notes else ""))
    return done
