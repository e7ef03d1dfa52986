"""A database holding data, upgraded from an older migration version to the latest, keeps
every row with its values and today's structure, and the readers (load_panel, the real-time
path, the retention) answer as on data written by today's code; an upgrade that fails half-way
leaves the data as it was. (Session 24's review: the upgrade paths from 0004-0011 with data
had no test.)"""

from __future__ import annotations

import sys
from datetime import date, datetime, timezone

import numpy as np
import psycopg
import pytest

from growth_assets.db import connect
from growth_assets.db.migrate import MigrationError, available, migrate, migrate_through

RUN = "native-20261116-043000"
PK = "2026-11-16"
WS, WE = date(2026, 8, 24), date(2026, 11, 16)
# (panel, student, week, score, source, n): P1 built after 0006 (n kept), P0 before it (n NULL)
PANEL = [("P1", "u1", 3, 0.7, "mirt_ability", 2), ("P1", "u1", 0, 0.1, "weekly_kpi", 1),
         ("P1", "u1", 10, 1.2, "student_topic_theta", 3), ("P1", "u2", 1, -0.5, "mirt_ability", 1),
         ("P1", "u2", 2, -0.25, "mirt_ability", 4), ("P1", "B", 0, 2.0, "mirt_ability", 1),
         ("P0", "u1", 0, 0.3, "mirt_ability", None), ("P0", "u1", 5, 0.9, "mirt_ability", None),
         ("P0", "u2", 1, 0.4, "weekly_kpi", None)]
STUDENTS = [  # user, n_obs, mean_a, mean_b, var_a, var_b, cov_ab, mu, sigma, P, sums (None: before 0007)
    ("u1", 3, 0.1, 0.1, 0.04, 0.001, -0.002, 1.5, 0.4, 0.6, (13.0, 109.0, 2.0, 14.2)),
    ("u2", 2, -0.6, 0.12, 0.05, 0.002, -0.001, 1.1, 0.5, 0.3, (None, None, None, None)),
    ("B", 1, 2.0, 0.05, 0.09, 0.003, 0.0, 2.6, 0.6, 0.9, (0.0, 0.0, 2.0, 0.0)),
]
SUMMARY = {"b_Intercept": {"mean": 0.0}, "b_week": {"mean": 0.1}, "sd_student_id__Intercept": {"mean": 0.5},
           "sd_student_id__week": {"mean": 0.05}, "cor_student_id__Intercept__week": {"mean": -0.2},
           "sigma": {"mean": 0.3}}


def _write_fit_and_record(conn, with_panel_rows: str):
    """The rows of one stored, graded fit; ``with_panel_rows``: 'weeks' (a row per student-week,
    before 0008) or 'students' (today's: a row per student)."""
    import json

    conn.execute("INSERT INTO growth_fit (run_id, partition_key, dagster_run_id, panel_id, engine, result, created_at)"
                 " VALUES (%s, %s, 'dg-1', 'P1', 'native', %s, '2026-11-16T05:00:00Z')",
                 (RUN, PK, json.dumps({"posterior_summary": SUMMARY})))
    conn.execute("INSERT INTO growth_brms_meta (run_id, formula, priors, posterior_summary, diagnostics, fitted_at,"
                 " engine, engine_version, status, status_reasons, window_start, window_end, week_start, n_students,"
                 " n_obs, horizon_week, target, seed, n_chains, n_samples, score_source, panel_id, source_counts,"
                 " dagster_run_id, partition_key) VALUES (%s, 'score ~ week', '[]', %s, '{}',"
                 " '2026-11-16T05:00:00Z', 'native', '1', 'passed', '[]', %s, %s, %s, 3, 6, 14, 1.0, 7, 4, 1000,"
                 " 'theta', 'P1', '{\"mirt_ability\": 4}', 'dg-1', %s)", (RUN, json.dumps(SUMMARY), WS, WE, WE, PK))
    for u, n, ma, mb, va, vb, c, mu, s, p, sums in STUDENTS:
        conn.execute("INSERT INTO growth_student_posterior (run_id, user_id, n_obs, mean_a, mean_b, var_a, var_b,"
                     ' cov_ab, mu, sigma, "P", sum_w, sum_ww, sum_y, sum_wy)'
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                     (RUN, u, n, ma, mb, va, vb, c, mu, s, p, *sums))
    rng = np.random.default_rng(1)
    d = [rng.normal(0, 0.01, 50) + m for m in (0.0, 0.1, 0.5, 0.05, -0.2, 0.3)]
    conn.execute("INSERT INTO growth_population_draws (run_id, n_draws, b_intercept, b_week, sd_intercept, sd_week,"
                 " cor, sigma) VALUES (%s, 50, %s, %s, %s, %s, %s, %s)", (RUN, *[x.tolist() for x in d]))
    conn.execute("INSERT INTO growth_forecast_backtest (run_id, measure, partition_key, horizon_week, target, model,"
                 " baseline, n_students, detail, dagster_run_id, scored_at) VALUES (%s, 'brier', %s, '2026-11-30', 1.0,"
                 " 0.1, NULL, 3, '{\"k\": [1, 2]}', 'dg-2', '2026-12-01T00:00:00Z')", (RUN, PK))
    for pid, we, created in (("P1", WE, "2026-11-16T04:00:00Z"), ("P0", date(2026, 6, 1), "2026-06-01T04:00:00Z")):
        conn.execute("INSERT INTO growth_panel_meta (panel_id, window_start, window_end, as_of, score_source, stats,"
                     " created_at, partition_key, dagster_run_id) VALUES (%s, %s, %s, %s, 'theta', '{\"n\": 1}', %s,"
                     " %s, 'dg-1')", (pid, WS, we, we, created, str(we)))
    if with_panel_rows == "weeks":
        conn.execute("INSERT INTO growth_panel (panel_id, student_id, week, score, source, n)"
                     " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::float8[], %s::text[], %s::int[])",
                     [list(c) for c in zip(*PANEL)])
    else:
        by: dict = {}
        for pid, u, w, y, src, n in sorted(PANEL, key=lambda r: (r[0], r[1], r[2])):
            by.setdefault((pid, u), []).append((w, y, src, n))
        for (pid, u), rows in by.items():
            obs = None if any(r[3] is None for r in rows) else [r[3] for r in rows]
            conn.execute("INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources, observations)"
                         " VALUES (%s, %s, %s, %s, %s, %s)",
                         (pid, u, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], obs))


TABLES = {  # every project table but the panel, ordered by its key
    "growth_fit": "run_id", "growth_brms_meta": "run_id", "growth_student_posterior": "run_id, user_id",
    "growth_population_draws": "run_id", "growth_forecast_backtest": "run_id, measure",
    "growth_panel_meta": "panel_id",
}


def _rows(conn):
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {k}").fetchall() for t, k in TABLES.items()}


def _catalog(conn, schema="growth"):
    cons = conn.execute("SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                        " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s ORDER BY 1, 2",
                        (schema,)).fetchall()
    idx = conn.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2",
                       (schema,)).fetchall()
    trg = conn.execute("SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                       " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal"
                       " ORDER BY 1, 2", (schema,)).fetchall()
    cols = conn.execute("SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default,"
                        " collation_name FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
                        (schema,)).fetchall()
    views = conn.execute("SELECT viewname, definition FROM pg_views WHERE schemaname = %s ORDER BY 1",
                         (schema,)).fetchall()
    funcs = conn.execute("SELECT p.proname, md5(p.prosrc), p.proconfig FROM pg_proc p JOIN pg_namespace n"
                         " ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY 1", (schema,)).fetchall()
    return cons, idx, trg, cols, views, funcs


def _at(url, version):
    with connect(url) as conn:
        migrate_through(conn, version)
        conn.commit()


def _at_0007_with_a_run(url: str) -> dict:
    """A database at 0007 holding one stored, graded run and its panels (a row per student-week);
    its rows (``_rows``)."""
    _at(url, "0007_window_sums")
    with connect(url) as conn:
        _write_fit_and_record(conn, "weeks")
        conn.commit()
        return _rows(conn)


def test_a_database_at_0007_with_data_upgrades_with_every_row_and_reads_as_todays(empty_db_url, db_url):
    from growth_assets.defs.growth.panel import load_panel

    before = _at_0007_with_a_run(empty_db_url)
    applied = migrate(empty_db_url, apply_source_changes=True)
    assert applied == [v for v, _ in available() if v > "0007_window_sums"]
    assert migrate(empty_db_url) == []  # a second run is a no-op
    with connect(db_url) as conn:  # the same rows written in today's shape
        _write_fit_and_record(conn, "students")
        conn.commit()
    with connect(empty_db_url) as old, connect(db_url) as new:
        assert _rows(old) == before
        assert _rows(new) == before
        # the panel: each student-week as it was, in week order within the student, NULLs kept
        view = ("SELECT panel_id, student_id, week, score, source, n FROM growth_panel_rows"
                " ORDER BY panel_id, student_id COLLATE \"C\", nth")
        want = sorted(PANEL, key=lambda r: (r[0], r[1].encode(), r[2]))
        assert old.execute(view).fetchall() == want
        assert new.execute(view).fetchall() == want
        assert old.execute("SELECT panel_id, student_id, observations FROM growth_panel ORDER BY 1, 2").fetchall() == \
            new.execute("SELECT panel_id, student_id, observations FROM growth_panel ORDER BY 1, 2").fetchall()
        assert _catalog(old) == _catalog(new)
        for pid in ("P0", "P1"):
            a, b = load_panel(old, pid), load_panel(new, pid)
            assert a.student_ids.tolist() == b.student_ids.tolist()
            for f in ("student", "week", "score"):
                assert getattr(a, f).tolist() == getattr(b, f).tolist()


def _answers(url):
    from growth_assets import metrics

    with connect(url) as conn:
        out = {}
        for u in ("u1", "u2", "B", "nobody"):
            a = metrics.explain_goal_attainment_probability(conn, u, target=1.0)
            out[u] = (a.path, a.P, a.mu, a.sigma, a.n_obs, a.run_id, a.reasons)
        return out


def test_the_readers_answer_the_same_on_an_upgraded_database(empty_db_url, db_url, monkeypatch):
    from growth_assets.defs.growth.panel import prune_panels

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    _at(empty_db_url, "0007_window_sums")
    with connect(empty_db_url) as conn:
        _write_fit_and_record(conn, "weeks")
        conn.commit()
    migrate(empty_db_url, apply_source_changes=True)
    with connect(db_url) as conn:
        _write_fit_and_record(conn, "students")
        conn.commit()
    for url in (empty_db_url, db_url):  # scores since the window, in the platform's table
        with psycopg.connect(url) as c:
            c.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at) VALUES"
                      " ('u1', 1.3, 0.2, 'm', 'v', '2026-11-20T00:00:00Z'),"
                      " ('nobody', 0.4, 0.3, 'm', 'v', '2026-11-21T00:00:00Z')")
    assert _answers(empty_db_url) == _answers(db_url)
    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    with connect(empty_db_url) as old, connect(db_url) as new:
        a, b = prune_panels(old, 2, now=now), prune_panels(new, 2, now=now)
        assert (a.panel_ids, a.rows) == (b.panel_ids, b.rows) == (("P0",), 2)


@pytest.mark.parametrize("start", ["0002_growth_tables", "0003_one_owner_per_table", "0005_forecast_backtest",
                                   "0006_panel_observations"])
def test_an_older_database_with_a_run_and_a_panel_upgrades_whole(empty_db_url, db_url, start):
    """The rows each older version could hold come through to the latest."""
    _at(empty_db_url, start)
    with connect(empty_db_url) as conn:
        has_fit = start >= "0003"
        if has_fit:
            conn.execute("INSERT INTO growth_fit (run_id, engine, result, panel_id) VALUES (%s, 'brms', '{}', 'P1')",
                         (RUN,))
        conn.execute("INSERT INTO growth_brms_meta (run_id, formula, priors, posterior_summary, diagnostics, status,"
                     " engine, panel_id, window_start, window_end, horizon_week, target, score_source)"
                     " VALUES (%s, 'f', '[]', '{}', '{}', 'passed', 'brms', 'P1', %s, %s, 14, 1.0, 'theta')",
                     (RUN, WS, WE))
        conn.execute("INSERT INTO growth_student_posterior (run_id, user_id, n_obs, mean_a, mean_b, var_a, var_b,"
                     ' cov_ab, mu, sigma, "P") VALUES (%s, \'u1\', 3, 0.1, 0.1, 0.04, 0.001, -0.002, 1.5, 0.4, 0.6)',
                     (RUN,))
        cols = "panel_id, student_id, week, score, source" + (", n" if start >= "0006" else "")
        for r in PANEL:
            vals = r if start >= "0006" else r[:5]
            if start >= "0006" or r[0] == "P0":
                conn.execute(f"INSERT INTO growth_panel ({cols}) VALUES ({', '.join(['%s'] * len(vals))})", vals)
        conn.commit()
    migrate(empty_db_url)
    assert migrate(empty_db_url) == []
    with connect(empty_db_url) as conn, connect(db_url) as fresh:
        assert _catalog(conn) == _catalog(fresh)
    with connect(empty_db_url) as conn:
        assert conn.execute("SELECT run_id, engine, panel_id FROM growth_fit").fetchall() == [(RUN, "brms", "P1")]
        assert conn.execute("SELECT user_id, n_obs, sum_w FROM growth_student_posterior").fetchall() == [("u1", 3, None)]
        assert conn.execute("SELECT status, window_end FROM growth_brms_meta").fetchall() == [("passed", WE)]
        want = [r if start >= "0006" else r[:5] + (None,) for r in PANEL if start >= "0006" or r[0] == "P0"]
        assert conn.execute("SELECT panel_id, student_id, week, score, source, n FROM growth_panel_rows"
                            " ORDER BY panel_id, student_id COLLATE \"C\", nth").fetchall() == \
            sorted(want, key=lambda r: (r[0], r[1].encode(), r[2]))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE growth_brms_meta SET status = 'bogus'")
        conn.rollback()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO growth_student_posterior (run_id, user_id, n_obs, mean_a, mean_b, var_a, var_b,"
                         ' cov_ab, mu, sigma, "P") VALUES (\'nope\', \'u1\', 3, 0, 0, 0, 0, 0, 0, 0, 0.5)')
        conn.rollback()
        conn.execute("DELETE FROM growth_fit")
        assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 0


def test_a_migration_failing_half_way_through_an_upgrade_leaves_the_data_as_it_was(empty_db_url, monkeypatch):
    before = _at_0007_with_a_run(empty_db_url)
    with connect(empty_db_url) as conn:
        panel = conn.execute("SELECT * FROM growth_panel ORDER BY 1, 2, 3").fetchall()
    m = sys.modules["growth_assets.db.migrate"]
    real = m.available()
    broken = [(v, s + "\nSELECT 1/0;" if v.startswith("0010") else s) for v, s in real]
    monkeypatch.setattr(m, "available", lambda: broken)
    with pytest.raises(MigrationError, match="migration 0010"):
        migrate(empty_db_url)
    with connect(empty_db_url) as conn:
        assert max(r[0] for r in conn.execute("SELECT version FROM growth_schema_migrations")) == "0007_window_sums"
        assert _rows(conn) == before
        assert conn.execute("SELECT * FROM growth_panel ORDER BY 1, 2, 3").fetchall() == panel
        assert conn.execute("SELECT to_regclass('growth_panel_rows')").fetchone()[0] is None
    monkeypatch.setattr(m, "available", lambda: real)
    assert migrate(empty_db_url)[0] == "0008_panel_row_per_student"


@pytest.mark.parametrize("start", ["0002_growth_tables", "0007_window_sums", "0009_student_rows_one_index"])
def test_an_older_layout_in_public_with_data_is_moved_and_upgraded_whole(empty_db_url, db_url, start):
    """Tables in public (before the schema setting) at an older version: moved, upgraded, rows kept."""
    migrate(empty_db_url, through=start, schema="public")
    with psycopg.connect(empty_db_url) as conn:
        if start >= "0007":
            _write_fit_and_record(conn, "weeks" if start < "0008" else "students")
        else:
            conn.execute("INSERT INTO growth_brms_meta (run_id, formula, priors, posterior_summary, diagnostics,"
                         " status, engine, window_start, window_end) VALUES (%s, 'f', '[]', '{}', '{}', 'passed',"
                         " 'brms', %s, %s)", (RUN, WS, WE))
            conn.execute("INSERT INTO growth_student_posterior VALUES (%s, 'u1', 3, 0, 0, 0.1, 0.01, 0, 0, 0.3, 0.5)",
                         (RUN,))
            conn.execute("INSERT INTO growth_panel VALUES ('P0', 'u1', 0, 0.3, 'mirt_ability'),"
                         " ('P0', 'u1', 2, 0.5, 'mirt_ability')")
    notes: list[str] = []
    migrate(empty_db_url, notes=notes)
    assert notes and "from schema public to growth" in notes[0]
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace"
                         " WHERE n.nspname = 'public' AND k.relname LIKE 'growth%%'").fetchone()[0] == 0
    with connect(empty_db_url) as conn, connect(db_url) as fresh:
        assert _catalog(conn) == _catalog(fresh)
        if start >= "0007":
            assert conn.execute("SELECT panel_id, student_id, week, score, source, n FROM growth_panel_rows"
                                " ORDER BY panel_id, student_id COLLATE \"C\", nth").fetchall() == \
                sorted(PANEL, key=lambda r: (r[0], r[1].encode(), r[2]))
            assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 3
        else:
            assert conn.execute("SELECT weeks, scores FROM growth_panel").fetchall() == [([0, 2], [0.3, 0.5])]
            assert conn.execute("SELECT run_id FROM growth_fit").fetchall() == [(RUN,)]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO growth_student_posterior (run_id, user_id, n_obs, mean_a, mean_b, var_a, var_b,"
                         ' cov_ab, mu, sigma, "P") VALUES (\'nope\', \'u1\', 3, 0, 0, 0, 0, 0, 0, 0, 0.5)')
