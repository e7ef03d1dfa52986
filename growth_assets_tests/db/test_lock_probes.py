"""Locks and merges pinned by mutation probes (session 24): each test passes on the code and
failed on a plausible mutant that no other test caught (named in its docstring)."""

import contextlib
import threading
import time

import psycopg

from growth_assets.db import connect
from growth_assets_tests.db.test_writers import WEEK, kpis, merge


def test_a_row_whose_kpis_is_json_null_gets_p_as_an_object(conn):
    """_MERGE_TAIL: `CASE WHEN jsonb_typeof(w.kpis) = 'object' THEN w.kpis ELSE '{}' END || EXCLUDED.kpis`
    (the comment: "JSON null: ... null || x an array"). Mutant `coalesce(w.kpis, '{}') || EXCLUDED.kpis`
    (it handles SQL NULL, which test_a_row_whose_kpis_is_null_gets_p covers) turns a JSON-null kpis
    into the array [null, {...}]: kpis->>'P' is then NULL and the P is lost, the row counted as merged."""
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('u1', %s, 'null'::jsonb)", (WEEK,))
    conn.commit()
    assert merge(conn, [("u1", 0.7, 0.2), ("u2", 0.1, 0.1)], window_end=WEEK) == 2
    conn.commit()
    k = kpis(conn, "u1")
    assert isinstance(k, dict) and k.get("P") == 0.7, k
    assert conn.execute("SELECT kpis->>'P' FROM weekly_kpi WHERE user_id = 'u1'").fetchone()[0] == "0.7"


def test_a_merge_locks_rows_in_user_id_order_against_a_writer_that_is_not_a_p_writer(db_url):
    """_merge_rows' docstring: rows are inserted "in user_id order, the order every writer locks
    rows in". The per-week advisory lock serialises the project's P writers only; a platform
    writer (I_t, E_t, ... upserted in user_id order, no advisory lock) still relies on the
    ORDER BY. Mutant: `ORDER BY user_id` dropped from _merge_rows' row source: the merge of
    [u2, u1] locks u2 first, the writer holding u1 then wants u2: a deadlock, one aborted."""
    with connect(db_url) as setup:
        for u in ("u1", "u2"):
            setup.execute("INSERT INTO weekly_kpi (user_id, week_start) VALUES (%s, %s)", (u, WEEK))
    errors: list[BaseException] = []
    stack = contextlib.ExitStack()
    w, m = psycopg.connect(db_url, autocommit=True), stack.enter_context(connect(db_url))
    try:
        w.execute("SET deadlock_timeout = '100ms'")
        m.execute("SET deadlock_timeout = '100ms'")
        m.commit()
        upsert = ("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES (%s, %s, '{\"I_t\": 1}')"
                  " ON CONFLICT (user_id, week_start) DO UPDATE SET kpis = weekly_kpi.kpis || EXCLUDED.kpis")

        def run_merge():
            try:
                merge(m, [("u2", 0.2, 0.1), ("u1", 0.3, 0.1)], window_end=WEEK)  # rows not given sorted
                m.commit()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=run_merge)
        try:
            with w.transaction():
                w.execute(upsert, ("u1", WEEK))  # the platform writer holds u1 ...
                t.start()
                time.sleep(0.5)  # ... the merge waits for u1 (sorted) or holds u2 (unsorted)
                w.execute(upsert, ("u2", WEEK))  # ... then wants u2
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        t.join(10)
    finally:
        w.close()
        stack.close()
    assert not errors, errors
    with connect(db_url) as c:
        assert [(kpis(c, u)["P"], kpis(c, u)["I_t"]) for u in ("u1", "u2")] == [(0.3, 1), (0.2, 1)]


def test_migrate_on_a_callers_connection_creates_the_tables_in_the_projects_schema(empty_db_url):
    """migrate(): "this transaction's statements see the project's schema first, whatever the
    caller's path" (migrate/migrate_through take a psycopg.Connection). Mutant: the SCHEMA_FIRST
    set_config dropped: every caller in the package passes a URL (connect() sets the path), so
    no test sees that a caller's plain connection gets the project's tables in public."""
    from growth_assets.db.migrate import migrate

    with psycopg.connect(empty_db_url) as c:
        migrate(c, schema="growth")
        c.commit()
        where = dict(c.execute("SELECT tablename, schemaname FROM pg_tables WHERE tablename IN"
                               " ('growth_schema_migrations', 'growth_fit')").fetchall())
    assert where == {"growth_schema_migrations": "growth", "growth_fit": "growth"}, where
