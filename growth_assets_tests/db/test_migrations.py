import psycopg
import pytest

from growth_assets.db import connect, source_tables
from growth_assets.db.migrate import PROJECT_FUNCTIONS, MigrationError, available, migrate
from growth_assets_tests.test_cli import run

SOURCES = {"mirt_ability", "student_topic_theta", "features_topic_daily", "weekly_kpi"}
OWN = {"growth_brms_meta", "growth_student_posterior", "growth_panel", "growth_panel_meta", "growth_fit",
       "growth_population_draws", "growth_forecast_backtest"}


def tables(conn, schema="growth"):
    """The tables of one schema (the project's own: ``growth`` unless GROWTH_DB_SCHEMA says)."""
    return {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()}


def test_migrations_apply_once_then_are_a_no_op_and_touch_only_the_projects_tables(empty_db_url):
    first = migrate(empty_db_url)
    assert first == [v for v, _ in available()] and len(first) >= 2
    assert migrate(empty_db_url) == []
    with connect(empty_db_url) as conn:
        assert OWN <= tables(conn) and not (SOURCES & tables(conn))  # the platform's: not ours to create
        assert not (OWN & tables(conn, "public"))  # the project's tables in their own schema only
        assert "dagster_asset_value" not in tables(conn)  # no serialised values between steps
        versions = [r[0] for r in conn.execute("SELECT version FROM growth_schema_migrations ORDER BY 1")]
        assert versions == first
        assert {c.table for c in source_tables.plan(conn)} == SOURCES
    migrate(empty_db_url, apply_source_changes=True)  # the demo's and the tests' own databases
    with connect(empty_db_url) as conn:
        # missing platform tables are made where the platform's live: public, not the project's schema
        assert SOURCES <= tables(conn, "public") and not (SOURCES & tables(conn))
        assert source_tables.plan(conn) == []


def test_changed_migration_is_refused(empty_db_url):
    migrate(empty_db_url)
    with connect(empty_db_url) as conn:
        conn.execute("UPDATE growth_schema_migrations SET checksum = 'x' WHERE version = %s",
                     (available()[0][0],))
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_db_url)


UPSERT = ("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at) VALUES (%s, %s, 0.2, 'm', 'v', %s)"
          " ON CONFLICT (user_id) DO UPDATE SET theta = EXCLUDED.theta, fitted_at = EXCLUDED.fitted_at")


def _platform_db(url):
    """The seed's platform: mirt_ability keyed on user_id, written by an upsert on that key
    (its own connection: tables in public)."""
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE mirt_ability (user_id text PRIMARY KEY, theta float, se float,"
                     " model text, version text, fitted_at timestamptz)")
        conn.execute("CREATE TABLE student_topic_theta (user_id text, topic_id text, theta float,"
                     " se float, model text, version text, fitted_at timestamptz, PRIMARY KEY (user_id, topic_id))")
        conn.execute("CREATE TABLE features_topic_daily (user_id text, topic_id text, date date, attempts int,"
                     " correct int, avg_time_ms int, theta_estimate numeric, theta_sd numeric,"
                     " PRIMARY KEY (user_id, topic_id, date))")
        conn.execute("CREATE TABLE weekly_kpi (user_id text, week_start date, kpis jsonb NOT NULL"
                     " DEFAULT '{}', created_at timestamptz, updated_at timestamptz, PRIMARY KEY (user_id, week_start))")
        conn.execute(UPSERT, ("u1", 0.5, "2026-11-02T10:00Z"))
        conn.execute(UPSERT, ("u2", 0.1, "2026-11-02T10:00Z"))
        conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('u1', '2026-11-02', '{\"I_t\": 1}')")


def _key_and_rows(url):
    with connect(url) as conn:
        key = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'mirt_ability'::regclass"
                           " AND contype = 'p'").fetchall()
        return key, conn.execute("SELECT user_id, theta FROM mirt_ability ORDER BY 1").fetchall()


def test_migrate_leaves_the_platforms_key_and_rows_and_says_what_it_would_change(empty_db_url):
    """Before: migration 0001 dropped mirt_ability's key on user_id (printing only "applied 2
    migration(s)"), and the platform's upsert then failed: there is no unique or exclusion
    constraint matching the ON CONFLICT specification."""
    _platform_db(empty_db_url)
    before = _key_and_rows(empty_db_url)
    env = {"DATABASE_URL": empty_db_url}
    dry = run(["db", "migrate", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert "would apply migration 0002_growth_tables" in dry.stdout and "CREATE TABLE" in dry.stdout
    with connect(empty_db_url) as conn:
        assert "growth_fit" not in tables(conn) | tables(conn, "public")  # a dry run changes nothing
    out = run(["db", "migrate"], env)
    assert out.returncode == 0, out.stderr
    assert "mirt_ability: is keyed on (user_id) (constraint mirt_ability_pkey)" in out.stdout
    assert 'ALTER TABLE "mirt_ability" DROP CONSTRAINT "mirt_ability_pkey";' in out.stdout
    assert "(nothing changed)" in out.stdout and "--apply-source-changes" in out.stdout
    assert _key_and_rows(empty_db_url) == before
    with connect(empty_db_url) as conn:
        conn.execute(UPSERT, ("u1", 0.7, "2026-11-09T10:00Z"))  # the platform's upsert still works
        assert conn.execute("SELECT count(*), max(theta) FROM mirt_ability WHERE user_id='u1'").fetchone() == (1, 0.7)
        assert conn.execute("SELECT kpis FROM weekly_kpi").fetchone()[0] == {"I_t": 1}
    # told to, the change is made and said: history accumulates, a re-delivery is not a duplicate
    out = run(["db", "migrate", "--apply-source-changes"], env)
    assert out.returncode == 0, out.stderr
    assert 'changed mirt_ability: ALTER TABLE "mirt_ability" DROP CONSTRAINT "mirt_ability_pkey"' in out.stdout
    assert "changed mirt_ability: CREATE INDEX CONCURRENTLY" in out.stdout
    with connect(empty_db_url) as conn:
        conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                     " VALUES ('u1', 0.9, 0.2, 'm', 'v', '2026-11-16T10:00Z')")
        assert conn.execute("SELECT count(*) FROM mirt_ability WHERE user_id='u1'").fetchone()[0] == 2
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                         " VALUES ('u1', 0.9, 0.2, 'm', 'v', '2026-11-16T10:00Z')")
    again = run(["db", "migrate"], env)
    assert "the platform's tables have what the pipeline needs" in again.stdout


def test_duplicate_calibrations_in_an_unkeyed_table_are_collapsed_only_when_told(empty_db_url):
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE mirt_ability (user_id text, theta float, se float, model text,"
                     " version text, fitted_at timestamptz)")
        conn.execute("INSERT INTO mirt_ability VALUES"
                     " ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z'), ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z'),"
                     " ('u1', 0.6, 0.2, 'm', 'v', '2026-11-09T10:00Z'), ('u2', 0.1, 0.2, NULL, NULL, '2026-11-02T10:00Z'),"
                     " ('u2', 0.1, 0.2, NULL, NULL, '2026-11-02T10:00Z')")
    migrate(empty_db_url)
    with connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM mirt_ability").fetchone()[0] == 5
    out = run(["db", "migrate", "--apply-source-changes"], {"DATABASE_URL": empty_db_url})
    assert "(2 duplicate row(s) deleted)" in out.stdout, out.stdout
    with connect(empty_db_url) as conn:
        rows = conn.execute("SELECT user_id, count(*) FROM mirt_ability GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("u1", 2), ("u2", 1)]


def test_the_demo_refuses_a_database_whose_platform_tables_it_would_rekey(empty_db_url, tmp_path):
    _platform_db(empty_db_url)
    before = _key_and_rows(empty_db_url)
    out = run(["seed-demo", "--students", "20", "--as-of", "2026-11-23", "--truth-out", str(tmp_path / "t.csv")],
              {"DATABASE_URL": empty_db_url})
    assert out.returncode != 0 and "not a demo's" in out.stderr and "mirt_ability_pkey" in out.stderr
    assert _key_and_rows(empty_db_url) == before


def test_0003_keeps_stored_runs_and_their_students_and_drops_the_value_store(empty_db_url):
    """A database at 0002 with a stored run: after 0003 the run is a fit with its students,
    the per-partition lookups have their columns, and the value table is gone."""
    from growth_assets.db.migrate import migrate_through

    with connect(empty_db_url) as conn:
        migrate_through(conn, "0002_growth_tables")
        conn.execute("INSERT INTO growth_brms_meta (run_id, formula, priors, posterior_summary, diagnostics, engine,"
                     " status) VALUES ('brms-20261116-043000', 'f', '[]', '{}', '{}', 'brms', 'passed')")
        conn.execute("INSERT INTO growth_student_posterior VALUES ('brms-20261116-043000', 'u1', 3, 0, 0, 0.1,"
                     " 0.01, 0, 0, 0.3, 0.5)")
        conn.execute("INSERT INTO dagster_asset_value (asset_key, value) VALUES ('x', '\\x00')")
        conn.commit()
    assert "0003_one_owner_per_table" in migrate(empty_db_url)
    with connect(empty_db_url) as conn:
        assert conn.execute("SELECT engine FROM growth_fit").fetchall() == [("brms",)]
        assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 1
        assert "dagster_asset_value" not in tables(conn)
        # a student row needs its fit now
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO growth_student_posterior VALUES ('nope', 'u1', 3, 0, 0, 0.1,"
                         " 0.01, 0, 0, 0.3, 0.5)")


# --- the project's own schema ---------------------------------------------------------------------


def test_the_schema_is_a_setting_and_the_platforms_tables_stay_where_they_are(empty_db_url):
    """GROWTH_DB_SCHEMA puts the project's tables where the team says; the platform's stay in
    public, and the pipeline's connections find both."""
    _platform_db(empty_db_url)
    env = {"DATABASE_URL": empty_db_url, "GROWTH_DB_SCHEMA": "analytics_growth"}
    out = run(["db", "migrate"], env)
    assert out.returncode == 0, out.stderr
    assert "in schema analytics_growth" in out.stdout
    with psycopg.connect(empty_db_url) as conn:
        assert OWN <= tables(conn, "analytics_growth")
        assert not (OWN & (tables(conn) | tables(conn, "public")))
        assert SOURCES <= tables(conn, "public")
    with connect(empty_db_url, schema="analytics_growth") as conn:  # both found on the search_path
        assert conn.execute("SELECT count(*) FROM growth_fit").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM mirt_ability").fetchone()[0] == 2


@pytest.mark.parametrize("bad", ["Growth", "growth-assets", "pg_growth", "a;drop", "x" * 64])
def test_a_schema_name_that_is_not_a_plain_identifier_is_refused_naming_it(empty_db_url, bad):
    out = run(["db", "migrate"], {"DATABASE_URL": empty_db_url, "GROWTH_DB_SCHEMA": bad})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"GROWTH_DB_SCHEMA={bad!r}" in out.stderr and "identifier" in out.stderr
    with psycopg.connect(empty_db_url) as conn:  # nothing made
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg_%%'"
                            " AND nspname NOT IN ('public', 'information_schema')").fetchone()[0] == 0


def test_an_older_database_has_the_projects_tables_moved_with_their_rows(empty_db_url):
    """Before the schema setting the project's tables were in public: `db migrate` moves them
    (rows, keys and indexes with them), says so, and leaves the platform's tables alone."""
    _platform_db(empty_db_url)
    migrate(empty_db_url, schema="public")  # the layout of a database migrated by 0.1.0
    with psycopg.connect(empty_db_url) as conn:
        assert OWN <= tables(conn, "public")
        conn.execute("INSERT INTO growth_fit (run_id, engine, partition_key, result)"
                     " VALUES ('native-20261116-043000', 'native', '2026-11-16', '{}')")
    env = {"DATABASE_URL": empty_db_url}
    dry = run(["db", "migrate", "--dry-run"], env)
    assert "would move the project's tables from schema public to growth" in dry.stdout, dry.stdout
    assert "would apply migration" not in dry.stdout  # every migration is on record already
    with psycopg.connect(empty_db_url) as conn:
        assert OWN <= tables(conn, "public")  # a dry run moves nothing
    out = run(["db", "migrate"], env)
    assert out.returncode == 0, out.stderr
    assert "moved the project's tables from schema public to growth" in out.stdout
    assert "applied 0 migration(s)" in out.stdout
    with psycopg.connect(empty_db_url) as conn:
        assert OWN | {"growth_schema_migrations"} <= tables(conn)
        assert not (OWN & tables(conn, "public")) and SOURCES <= tables(conn, "public")
        assert conn.execute("SELECT run_id FROM growth.growth_fit").fetchall() == [("native-20261116-043000",)]
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'growth'"
                            " AND indexname = 'growth_fit_partition'").fetchone()[0] == 1
        # the functions of the tables' triggers went with them, and the triggers still serve
        assert dict(conn.execute("SELECT p.proname, n.nspname FROM pg_proc p JOIN pg_namespace n"
                                 " ON n.oid = p.pronamespace WHERE p.proname = ANY (%s)",
                                 (list(PROJECT_FUNCTIONS),)).fetchall()) == dict.fromkeys(PROJECT_FUNCTIONS, "growth")
        conn.execute("INSERT INTO growth.growth_student_posterior VALUES ('native-20261116-043000', 'u1', 3, 0, 0,"
                     " 0.1, 0.01, 0, 0, 0.3, 0.5)")
        conn.commit()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO growth.growth_student_posterior VALUES ('nope', 'u1', 3, 0, 0, 0.1,"
                         " 0.01, 0, 0, 0.3, 0.5)")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM growth.growth_student_posterior").fetchone()[0] == 1
        conn.execute("DELETE FROM growth.growth_fit")
        assert conn.execute("SELECT count(*) FROM growth.growth_student_posterior").fetchone()[0] == 0
    assert "moved" not in run(["db", "migrate"], env).stdout  # once


def test_two_deployments_with_their_own_schemas_in_one_database_keep_their_own_tables(empty_db_url):
    """Staging in schema growth_staging, production in growth in the same database: migrating
    one does not take the other's tables. Only the layout from before the schema setting (the
    tables on the connection's search_path, public by default) is moved."""
    migrate(empty_db_url, schema="growth_staging")
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("INSERT INTO growth_staging.growth_fit (run_id, engine, result) VALUES ('staging-run', 'native', '{}')")
    notes: list[str] = []
    migrate(empty_db_url, schema="growth", notes=notes)
    assert notes == []
    with psycopg.connect(empty_db_url) as conn:
        assert OWN | {"growth_schema_migrations"} <= tables(conn, "growth_staging")
        assert OWN | {"growth_schema_migrations"} <= tables(conn, "growth")
        assert conn.execute("SELECT run_id FROM growth_staging.growth_fit").fetchall() == [("staging-run",)]
        assert conn.execute("SELECT count(*) FROM growth.growth_fit").fetchone()[0] == 0
    env = {"DATABASE_URL": empty_db_url, "GROWTH_DB_SCHEMA": "growth"}
    assert "moved" not in run(["db", "migrate"], env).stdout


@pytest.mark.parametrize("options, expected", [
    ("", "-c search_path=growth,public"),
    ("-c statement_timeout=5", "-c statement_timeout=5 -c search_path=growth,public"),
    ("-csearch_path=platform", "-c search_path=growth,platform"),
    ("-c search_path=growth,platform", "-c search_path=growth,platform"),
])
def test_the_projects_schema_goes_first_on_any_search_path(options, expected):
    from growth_assets.db.connection import with_schema_options

    assert with_schema_options(options, "growth") == expected


def test_a_url_with_its_own_search_path_keeps_it_after_the_projects_schema(empty_db_url):
    """The platform's tables in a schema of their own (the URL says where): missing ones are
    created there, the project's in its schema."""
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("CREATE SCHEMA platform")
    url = f"{empty_db_url}?options=-csearch_path%3Dplatform"
    migrate(url, apply_source_changes=True)
    with psycopg.connect(empty_db_url) as conn:
        assert SOURCES <= tables(conn, "platform") and OWN <= tables(conn)
        assert not (SOURCES | OWN) & tables(conn, "public")


def test_check_says_what_is_pending_and_changes_nothing(empty_db_url):
    """`db migrate --check`: the code server's init container waits on it (exit 3 while pending)."""
    env = {"DATABASE_URL": empty_db_url}
    out = run(["db", "migrate", "--check"], env)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert f"pending in schema growth: {len(available())} migration(s)" in out.stdout
    with psycopg.connect(empty_db_url) as conn:  # nothing made, not even the schema
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'growth'").fetchone()[0] == 0
    migrate(empty_db_url)
    out = run(["db", "migrate", "--check"], env)
    assert out.returncode == 0 and "up to date" in out.stdout
    migrate(empty_db_url, schema="public")  # an older layout: the move is pending too
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("DROP SCHEMA growth CASCADE")
    out = run(["db", "migrate", "--check"], env)
    assert out.returncode == 3 and "in schema public, to be moved to growth" in out.stdout


def test_migrate_through_a_version_number_applies_that_version(empty_db_url):
    """'0005_forecast_backtest' > '0005' as strings: through='0005' stopped before 0005, not
    after it as the docstring says; a version that does not exist is an error naming it."""
    from growth_assets.db.migrate import MigrationError, migrate_through

    with connect(empty_db_url) as conn:
        applied = migrate_through(conn, "0005")
        assert applied[-1].startswith("0005_") and len(applied) == 4, applied  # 0002 .. 0005
        with pytest.raises(MigrationError, match="'0099'"):
            migrate_through(conn, "0099")


def test_a_second_schema_gets_the_status_check_too(db_url):
    """0002 looked the check up by name in the whole database: a schema migrated beside one
    that had it got none, and stored any status ('bogus' passed)."""
    from growth_assets.db.migrate import migrate

    migrate(db_url, schema="staging")
    with connect(db_url, schema="staging") as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO staging.growth_brms_meta (run_id, formula, priors, posterior_summary,"
                         " diagnostics, engine, status) VALUES ('r', 'f', '[]', '{}', '{}', 'native', 'bogus')")


# --- found by review (each failed before its fix) ---------------------------------------------

def test_an_index_left_invalid_by_a_failed_concurrent_build_is_rebuilt(empty_db_url):
    """CREATE INDEX CONCURRENTLY that fails (here: lock_timeout while the platform has a write
    open) leaves an INVALID index of that name; plan() took it for present, so it was never
    used and never rebuilt, and `db migrate` said the tables had what the pipeline needs."""
    migrate(empty_db_url, apply_source_changes=True)
    with psycopg.connect(empty_db_url) as c:
        c.execute("DROP INDEX mirt_ability_user_latest")
    with connect(empty_db_url) as c:
        changes = source_tables.plan(c)
    writer = psycopg.connect(empty_db_url)
    try:  # the platform writing: a transaction open on mirt_ability
        writer.execute("INSERT INTO mirt_ability (user_id, theta, fitted_at) VALUES ('u1', 0.1, now())")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            source_tables.apply(f"{empty_db_url}?options=-c%20lock_timeout%3D300", changes)
    finally:
        writer.rollback()
        writer.close()
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('mirt_ability_user_latest')"
    with connect(empty_db_url) as c:
        assert c.execute(valid).fetchall() == [(False,)]  # the failed build left it behind
        again = source_tables.plan(c)
    assert [ch.statements for ch in again] == [(
        'DROP INDEX CONCURRENTLY IF EXISTS "mirt_ability_user_latest"',
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "mirt_ability_user_latest" ON "mirt_ability" (user_id, fitted_at DESC)')]
    assert "INVALID" in again[0].what
    out = run(["db", "migrate", "--apply-source-changes"], {"DATABASE_URL": empty_db_url})
    assert out.returncode == 0 and "DROP INDEX CONCURRENTLY" in out.stdout, out.stdout + out.stderr
    with connect(empty_db_url) as c:
        assert c.execute(valid).fetchall() == [(True,)] and source_tables.plan(c) == []


def test_only_exact_duplicate_calibrations_are_removed_and_differing_ones_stop_the_key(empty_db_url):
    """The plan says 'remove exact duplicates'; its DELETE compared the key columns only, so of
    two calibrations with one key and a different theta one was deleted, chosen by ctid."""
    with psycopg.connect(empty_db_url) as c:
        c.execute("CREATE TABLE mirt_ability (user_id text, theta float, se float, model text,"
                  " version text, fitted_at timestamptz)")
        c.execute("INSERT INTO mirt_ability VALUES ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z'),"
                  " ('u1', 0.9, 0.3, 'm', 'v', '2026-11-02T10:00Z'), ('u2', 0.1, NULL, 'm', 'v', '2026-11-02T10:00Z'),"
                  " ('u2', 0.1, NULL, 'm', 'v', '2026-11-02T10:00Z')")
    migrate(empty_db_url)
    with connect(empty_db_url) as c:
        key = [x for x in source_tables.plan(c) if x.table == "mirt_ability" and x.destructive]
    with pytest.raises(MigrationError, match=r"mirt_ability: two calibrations share the key but differ"
                                             r" \(Key \(user_id, model, version, fitted_at\)=\(u1, m, v"):
        source_tables.apply(empty_db_url, key)
    with psycopg.connect(empty_db_url) as c:  # nothing of the change was made
        assert c.execute("SELECT count(*) FROM mirt_ability").fetchone()[0] == 4
        c.execute("DELETE FROM mirt_ability WHERE theta = 0.9")  # the platform settles u1
    assert source_tables.apply(empty_db_url, key)[0].endswith("(1 duplicate row(s) deleted)")
    with psycopg.connect(empty_db_url) as c:  # u2's exact twin (NULLs equal) went, one of each left
        assert c.execute("SELECT user_id, theta FROM mirt_ability ORDER BY 1").fetchall() == [("u1", 0.5), ("u2", 0.1)]


def test_moving_an_older_layout_takes_the_view_over_the_panel_too(empty_db_url):
    """The move took tables and functions only: the view growth_panel_rows stayed in public,
    and a connection whose path does not hold public (the backtest reads it) found no view."""
    migrate(empty_db_url, schema="public")
    notes: list[str] = []
    migrate(empty_db_url, notes=notes)
    assert "growth_panel_rows" in notes[0]
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT schemaname FROM pg_views WHERE viewname = 'growth_panel_rows'").fetchall() == [("growth",)]
        c.execute("CREATE SCHEMA platform")
    with connect(f"{empty_db_url}?options=-csearch_path%3Dplatform") as c:
        assert c.execute("SELECT count(*) FROM growth_panel_rows").fetchone()[0] == 0


def test_migrations_with_source_changes_at_once_take_turns(empty_db_url):
    """Four `migrate --apply-source-changes` at once each planned the missing platform tables:
    all but one failed (relation "mirt_ability" already exists)."""
    import threading

    errors: list[str] = []

    def go():
        try:
            migrate(empty_db_url, apply_source_changes=True)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with connect(empty_db_url) as c:
        assert source_tables.plan(c) == []


def test_a_migration_that_fails_is_named_and_leaves_nothing_behind(empty_db_url, monkeypatch):
    """A failing file's error was the database's alone: which of the pending files failed was
    not said (found by review). Nothing of the run is applied, as before."""
    import sys

    m = sys.modules["growth_assets.db.migrate"]  # the package exports a function of that name
    real = m.available()
    broken = real[:3] + [(real[3][0], real[3][1] + "\nSELECT 1/0;")] + real[4:]
    monkeypatch.setattr(m, "available", lambda: broken)
    with pytest.raises(MigrationError, match=rf"migration {real[3][0]} failed \(DivisionByZero: division by zero\);"
                                             " nothing of this run was applied"):
        migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'growth'").fetchone()[0] == 0
