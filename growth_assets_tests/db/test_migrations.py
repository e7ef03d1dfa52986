import psycopg
import pytest

from growth_assets.db.migrate import MigrationError, available, migrate

TABLES = {"mirt_ability", "student_topic_theta", "features_topic_daily", "weekly_kpi",
          "growth_brms_meta", "growth_student_posterior", "growth_panel", "growth_panel_meta",
          "growth_fit"}


def tables(conn):
    return {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}


def test_migrations_apply_once_then_are_a_no_op(empty_db_url):
    first = migrate(empty_db_url)
    assert first == [v for v, _ in available()] and len(first) >= 2
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        assert TABLES <= tables(conn)
        assert "dagster_asset_value" not in tables(conn)  # no serialised values between steps
        versions = [r[0] for r in conn.execute("SELECT version FROM growth_schema_migrations ORDER BY 1")]
        assert versions == first


def test_changed_migration_is_refused(empty_db_url):
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("UPDATE growth_schema_migrations SET checksum = 'x' WHERE version = %s",
                     (available()[0][0],))
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_db_url)


def test_migrate_keeps_and_rekeys_the_seed_systems_tables(empty_db_url):
    """The seed kept only the latest value per user; its rows stay and history becomes possible."""
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE mirt_ability (user_id text PRIMARY KEY, theta float, se float,"
                     " model text, version text, fitted_at timestamptz)")
        conn.execute("CREATE TABLE student_topic_theta (user_id text, topic_id text, theta float,"
                     " se float, model text, version text, fitted_at timestamptz,"
                     " PRIMARY KEY (user_id, topic_id))")
        conn.execute("CREATE TABLE weekly_kpi (user_id text, week_start date, kpis jsonb NOT NULL"
                     " DEFAULT '{}', created_at timestamptz, updated_at timestamptz,"
                     " PRIMARY KEY (user_id, week_start))")
        conn.execute("INSERT INTO mirt_ability VALUES ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z')")
        conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('u1', '2026-11-02', '{\"I_t\": 1}')")
    migrate(empty_db_url)
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT theta FROM mirt_ability WHERE user_id='u1'").fetchone()[0] == 0.5
        # history: a second calibration of the same user is a second row
        conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                     " VALUES ('u1', 0.7, 0.2, 'm', 'v', '2026-11-09T10:00Z')")
        assert conn.execute("SELECT count(*) FROM mirt_ability WHERE user_id='u1'").fetchone()[0] == 2
        # a re-run of the same calibration is not a duplicate
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                         " VALUES ('u1', 0.7, 0.2, 'm', 'v', '2026-11-09T10:00Z')")
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("INSERT INTO student_topic_theta VALUES ('u1','t1',0.1,0.2,'m','v','2026-11-02T10:00Z')")
        conn.execute("INSERT INTO student_topic_theta VALUES ('u1','t1',0.2,0.2,'m','v','2026-11-09T10:00Z')")
        assert conn.execute("SELECT count(*) FROM student_topic_theta").fetchone()[0] == 2
        assert conn.execute("SELECT kpis FROM weekly_kpi").fetchone()[0] == {"I_t": 1}
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO weekly_kpi (user_id, week_start) VALUES ('u2', '2026-11-03')")


def test_duplicate_calibrations_in_an_unkeyed_table_are_collapsed(empty_db_url):
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE mirt_ability (user_id text, theta float, se float, model text,"
                     " version text, fitted_at timestamptz)")
        conn.execute("INSERT INTO mirt_ability VALUES"
                     " ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z'), ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z'),"
                     " ('u1', 0.6, 0.2, 'm', 'v', '2026-11-09T10:00Z'), ('u2', 0.1, 0.2, NULL, NULL, '2026-11-02T10:00Z'),"
                     " ('u2', 0.1, 0.2, NULL, NULL, '2026-11-02T10:00Z')")
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute("SELECT user_id, count(*) FROM mirt_ability GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("u1", 2), ("u2", 1)]


def test_0003_keeps_stored_runs_and_their_students_and_drops_the_value_store(empty_db_url):
    """A database at 0002 with a stored run: after 0003 the run is a fit with its students,
    the per-partition lookups have their columns, and the value table is gone."""
    from growth_assets.db.migrate import migrate_through

    with psycopg.connect(empty_db_url) as conn:
        migrate_through(conn, "0002_growth_tables")
        conn.execute("INSERT INTO growth_brms_meta (run_id, formula, priors, posterior_summary, diagnostics, engine,"
                     " status) VALUES ('brms-20261116-043000', 'f', '[]', '{}', '{}', 'brms', 'passed')")
        conn.execute("INSERT INTO growth_student_posterior VALUES ('brms-20261116-043000', 'u1', 3, 0, 0, 0.1,"
                     " 0.01, 0, 0, 0.3, 0.5)")
        conn.execute("INSERT INTO dagster_asset_value (asset_key, value) VALUES ('x', '\\x00')")
        conn.commit()
    assert "0003_one_owner_per_table" in migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT engine FROM growth_fit").fetchall() == [("brms",)]
        assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 1
        assert "dagster_asset_value" not in tables(conn)
        # a student row needs its fit now
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO growth_student_posterior VALUES ('nope', 'u1', 3, 0, 0, 0.1,"
                         " 0.01, 0, 0, 0.3, 0.5)")
