import threading
import time
from datetime import date

import psycopg
import pytest

from growth_assets.db import connect
from growth_assets.db.writers import jsonable, merge_weekly_kpi, write_fit, write_run_record
from growth_assets.model.contract import ContractError
from growth_assets_tests.support.results import make_result

WEEK = date(2026, 11, 23)
P_WEEK = date(2026, 12, 14)
NEXT_WEEK = date(2026, 11, 30)


def kpis(conn, user, week=WEEK):
    row = conn.execute("SELECT kpis FROM weekly_kpi WHERE user_id=%s AND week_start=%s", (user, week)).fetchone()
    return None if row is None else row[0]


def merge(conn, rows, **kw):
    args = dict(week_start=WEEK, target=0.0, p_week=P_WEEK, run_id="native-20261123-043000", source="native")
    args.update(kw)
    return merge_weekly_kpi(conn, rows, **args)


def store(conn, res, status="passed", dagster_run_id=None, **kw):
    n = write_fit(conn, res, dagster_run_id=dagster_run_id)
    write_run_record(conn, jsonable(res.header_json()), status=status, dagster_run_id=dagster_run_id, **kw)
    return n


def test_fit_run_and_students_are_stored_together(conn):
    res = make_result(5)
    assert store(conn, res, window_start=date(2026, 8, 31), window_end=WEEK, week_start=WEEK,
                 score_source="theta", source_counts={"mirt_ability": 60}) == 5
    meta = conn.execute("SELECT engine, status, n_students, n_obs, horizon_week, target, priors,"
                        " posterior_summary->'b_week'->>'rhat', window_start FROM growth_brms_meta").fetchall()
    assert len(meta) == 1
    engine, status, n_students, n_obs, h, target, pri, rhat, ws = meta[0]
    assert (engine, status, n_students, n_obs, h, target) == ("native", "passed", 5, 60, 15, 0.0)
    assert pri[0] == {"class": "Intercept", "dist": "normal", "args": [0.0, 2.5]}
    assert float(rhat) == res.summary["b_week"].rhat and ws == date(2026, 8, 31)
    stored = conn.execute('SELECT user_id, mean_a, "P" FROM growth_student_posterior ORDER BY user_id').fetchall()
    s = res.students
    assert [(u, round(a, 6), round(p, 9)) for u, a, p in stored] == [
        (u, round(a, 6), round(p, 9)) for u, a, p in zip(s.student_id, s.mean_a, s.P)]
    # a retried write of the same run replaces it, it does not duplicate
    store(conn, res, status="failed_checks", status_reasons=["rhat"])
    assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 5
    assert conn.execute("SELECT status, status_reasons FROM growth_brms_meta").fetchone() == ("failed_checks", ["rhat"])


def test_nan_diagnostics_are_stored_as_null_not_refused_by_postgresql(conn):
    res = make_result(2, max_rhat=float("nan"))
    store(conn, res)
    assert conn.execute("SELECT diagnostics->'max_rhat' FROM growth_brms_meta").fetchone()[0] is None
    assert conn.execute("SELECT result->'diagnostics'->'max_rhat' FROM growth_fit").fetchone()[0] is None


def test_a_fit_run_that_fails_half_way_leaves_nothing(conn):
    res = make_result(4, ids=["s0", "s1", "s2", "bad\x00id"])  # text cannot hold NUL: COPY fails late
    with pytest.raises(psycopg.Error):
        write_fit(conn, res)
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM growth_fit").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 0


def test_merge_keeps_keys_other_writers_own(conn):
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES"
                 " ('u1', %s, '{\"I_t\": 0.4, \"E_t\": 2, \"sigma\": 9}')", (WEEK,))
    conn.commit()
    assert merge(conn, [("u1", 0.7, 0.2), ("u2", 0.1, None)]) == 2
    assert kpis(conn, "u1") == {"I_t": 0.4, "E_t": 2, "P": 0.7, "sigma": 0.2, "P_target": 0.0,
                                "P_week": "2026-12-14", "P_run_id": "native-20261123-043000",
                                "P_source": "native"}
    # a missing sigma is written as null, so an older sigma cannot outlive its P
    assert kpis(conn, "u2")["sigma"] is None and kpis(conn, "u2")["P"] == 0.1
    merge(conn, [("u1", 0.9, 0.1)], target=1.5, run_id=None, source="posterior")
    k = kpis(conn, "u1")
    assert (k["P"], k["P_target"], k["P_source"], k["I_t"], k["P_run_id"]) == (0.9, 1.5, "posterior", 0.4, None)


def test_a_merge_stores_the_same_json_text_as_sqls_own_float8_to_jsonb(conn):
    """What every row of a merge shares (P_target, P_week, ...) is built once per statement,
    in SQL, so the stored text is what a per-row jsonb_build_object stored before: a target of
    0 is the JSON number 0 (Python's json would write 0.0; a SQL reader of kpis ->> 'P_target'
    sees the difference), and one of 1e-05 is 0.00001."""
    merge(conn, [("u1", 0.7, 0.2)], target=0.0)
    merge(conn, [("u2", 0.5, 0.1)], target=1e-05, run_id=None, source="posterior")
    rows = conn.execute("SELECT user_id, kpis ->> 'P_target', kpis ->> 'P_week', kpis -> 'P_run_id', kpis::text"
                        " FROM weekly_kpi ORDER BY user_id").fetchall()
    assert [r[:4] for r in rows] == [("u1", "0", "2026-12-14", "native-20261123-043000"),
                                     ("u2", "0.00001", "2026-12-14", None)]
    assert rows[0][4] == conn.execute(
        "SELECT jsonb_build_object('P', 0.7::float8, 'sigma', 0.2::float8, 'P_target', 0::float8,"
        " 'P_week', '2026-12-14', 'P_run_id', 'native-20261123-043000', 'P_source', 'native')::text").fetchone()[0]


def _other_writer_update(url, user, key, value, hold, done):
    with connect(url) as c:
        c.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES (%s, %s, jsonb_build_object(%s::text, %s::int))"
                  " ON CONFLICT (user_id, week_start) DO UPDATE SET kpis = weekly_kpi.kpis || EXCLUDED.kpis",
                  (user, WEEK, key, value))
        hold.wait(10)
        c.commit()
    done.set()


def _merge_while_another_writer_holds(db_url, user, key, value, rows) -> int:
    """The other writer upserts ``user``'s row (uncommitted) and holds it; the merge of ``rows``
    starts, must wait for it, and ends once the writer commits. The merge's row count."""
    hold, done = threading.Event(), threading.Event()
    t = threading.Thread(target=_other_writer_update, args=(db_url, user, key, value, hold, done))
    t.start()
    time.sleep(0.3)  # the other writer now holds the row
    result: dict = {}

    def run_merge():
        with connect(db_url) as c:
            result["n"] = merge(c, rows)

    m = threading.Thread(target=run_merge)
    m.start()
    time.sleep(0.3)
    assert m.is_alive(), "the merge should be waiting on the other writer's row"
    hold.set()
    t.join(10), m.join(10)
    assert done.is_set() and "n" in result, result
    return result["n"]


def test_merge_waits_for_a_concurrent_writer_and_keeps_its_keys(db_url):
    """Other writer holds the row (uncommitted) while the P merge runs; both keys survive."""
    with connect(db_url) as c:
        c.execute("INSERT INTO weekly_kpi (user_id, week_start) VALUES ('u1', %s)", (WEEK,))
    assert _merge_while_another_writer_holds(db_url, "u1", "I_t", 7, [("u1", 0.6, 0.3), ("u3", 0.2, 0.3)]) == 2
    with connect(db_url) as c:
        assert kpis(c, "u1") == {**kpis(c, "u1"), "I_t": 7, "P": 0.6}


def test_a_row_another_writer_adds_to_a_new_week_during_the_merge_keeps_both_keys(db_url):
    """The week has none of the merge's rows when it looks, so it inserts them without the
    upsert; another writer's insert of one of them (uncommitted, so unseen) commits while the
    merge waits on it. The merge then upserts every row: nothing fails, both keys survive."""
    rows = [("u1", 0.6, 0.3), ("u2", 0.2, 0.3), ("u3", 0.4, 0.3)]
    assert _merge_while_another_writer_holds(db_url, "u2", "I_t", 5, rows) == 3
    with connect(db_url) as c:
        assert kpis(c, "u2") == {**kpis(c, "u2"), "I_t": 5, "P": 0.2, "sigma": 0.3}
        assert [kpis(c, u)["P"] for u in ("u1", "u3")] == [0.6, 0.4]


def test_a_new_week_and_a_week_with_rows_get_the_same_kpis(conn):
    """A new week's rows are inserted, an existing week's merged: the same kpis either way."""
    rows = [("u1", 0.6, 0.3), ("u2", 0.25, 0.125)]
    assert merge(conn, rows, week_start=WEEK) == 2
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start) VALUES ('u1', %s), ('u2', %s)",
                 (NEXT_WEEK, NEXT_WEEK))
    assert merge(conn, rows, week_start=NEXT_WEEK) == 2
    got = conn.execute("SELECT week_start, user_id, kpis::text FROM weekly_kpi ORDER BY 1, 2").fetchall()
    assert [r[2] for r in got[:2]] == [r[2] for r in got[2:]] and len(got) == 4


def test_other_writer_waits_for_an_open_merge_and_keeps_p(db_url):
    """The P merge holds the row (uncommitted); the other writer's upsert on a row that did not
    exist yet waits, then merges into it instead of failing or replacing it."""
    hold, done = threading.Event(), threading.Event()
    with connect(db_url) as c:
        with c.transaction():
            merge(c, [("u9", 0.5, 0.1)])  # nested: a savepoint, the outer transaction stays open
            t = threading.Thread(target=_other_writer_update, args=(db_url, "u9", "A_t", 3, hold, done))
            t.start()
            time.sleep(0.4)
            assert not done.is_set()
        hold.set()
        t.join(10)
        assert done.is_set()
        k = kpis(c, "u9")
        assert k["P"] == 0.5 and k["A_t"] == 3 and k["P_source"] == "native"


def test_a_merge_that_fails_half_way_leaves_nothing_behind(conn):
    merge(conn, [("u1", 0.3, 0.1)])
    with pytest.raises(psycopg.Error):
        merge(conn, [("u1", 0.8, 0.1), ("u2", 0.8, 0.1), ("bad\x00", 0.8, 0.1)])
    conn.rollback()
    assert kpis(conn, "u1")["P"] == 0.3
    assert kpis(conn, "u2") is None


@pytest.mark.parametrize("rows,kw,field", [
    ([("u1", float("nan"), 0.1)], {}, "P"),
    ([("u1", 1.2, 0.1)], {}, "P"),
    ([("u1", 0.5, float("inf"))], {}, "sigma"),
    ([(None, 0.5, 0.1)], {}, "user_id"),
    ([("u1", 0.5, 0.1)], {"week_start": date(2026, 11, 24)}, "week_start"),
    ([("u1", 0.5, 0.1)], {"source": "guess"}, "P_source"),
    ([("u1", 0.5, 0.1)], {"target": float("nan")}, "P_target"),
    # one user twice: PostgreSQL's CardinalityViolation named neither the field nor the user
    ([("u1", 0.5, 0.1), ("u2", 0.4, 0.1), ("u1", 0.6, 0.1)], {}, "user_id"),
])
def test_bad_kpi_input_names_the_field_and_writes_nothing(conn, rows, kw, field):
    with pytest.raises(ContractError) as e:
        merge(conn, rows, **kw)
    assert e.value.field == field
    assert conn.execute("SELECT count(*) FROM weekly_kpi").fetchone()[0] == 0


@pytest.mark.parametrize("target", [float("nan"), float("inf")])
def test_a_runs_merge_refuses_a_target_that_is_not_finite(conn, target):
    """merge_weekly_kpi refused it; the run's merge stored P_target "NaN" (a JSON string)."""
    from growth_assets.db.writers import merge_run_into_weekly_kpi

    res = make_result(2)
    write_fit(conn, res)
    conn.commit()
    with pytest.raises(ContractError) as e:
        merge_run_into_weekly_kpi(conn, res.run_id, week_start=date(2026, 11, 23), target=target,
                                  p_week=date(2026, 12, 14), source="native", window_end=date(2026, 11, 23))
    assert e.value.field == "P_target"
    assert conn.execute("SELECT count(*) FROM weekly_kpi").fetchone()[0] == 0


def test_two_merges_in_one_open_transaction(conn):
    with conn.transaction():
        merge(conn, [("u1", 0.3, 0.1)])
        merge(conn, [("u2", 0.4, 0.1)], target=1.0)
    assert kpis(conn, "u1")["P"] == 0.3 and kpis(conn, "u2")["P_target"] == 1.0


def test_a_colliding_run_id_from_another_run_is_refused_not_overwritten(conn):
    first = make_result(2)
    write_fit(conn, first, dagster_run_id="dagster-run-A")
    write_fit(conn, first, dagster_run_id="dagster-run-A")  # a retry of that step: fine
    other = make_result(3)  # same run_id (same second), another Dagster run
    with pytest.raises(ContractError, match="run_id: already stored by another run"):
        write_fit(conn, other, dagster_run_id="dagster-run-B")
    conn.rollback()
    assert conn.execute("SELECT dagster_run_id FROM growth_fit").fetchone() == ("dagster-run-A",)
    assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 2


def test_a_run_id_taken_in_the_same_second_moves_to_the_next_free_second(conn):
    from datetime import datetime, timezone

    from growth_assets.db.writers import free_run_id

    at = datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc)
    assert free_run_id(conn, "native", at) == "native-20261123-043000"
    write_fit(conn, make_result(2, run_id="native-20261123-043000"), dagster_run_id="A")
    write_fit(conn, make_result(2, run_id="native-20261123-043001"), dagster_run_id="B")
    assert free_run_id(conn, "native", at) == "native-20261123-043002"


def test_each_students_window_sums_are_kept_beside_her_line(conn):
    """``write_fit(window_sums=panel.window_sums())``: the five sums of each student's panel
    rows, by id whatever the result's order; a student the sums do not cover gets NULLs."""
    import numpy as np
    import pandas as pd

    from growth_assets.model.panel import Panel

    res = make_result(3)  # s00000, s00001, s00002
    panel = Panel.from_frame(pd.DataFrame({"student_id": ["s00002", "s00002", "s00000", "s00000", "s00000"],
                                           "week": [1, 4, 0, 2, 3], "score": [0.5, 1.5, -1.0, 0.25, 2.0]}))
    flipped = res.students.take(np.array([2, 1, 0]))
    from dataclasses import replace
    write_fit(conn, replace(res, students=flipped), window_sums=panel.window_sums())
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT user_id, sum_w, sum_ww, sum_y, sum_wy FROM growth_student_posterior").fetchall()}
    assert rows["s00000"] == (5.0, 13.0, 1.25, 6.5)  # weeks 0, 2, 3
    assert rows["s00002"] == (5.0, 17.0, 2.0, 6.5)  # weeks 1, 4
    assert rows["s00001"] == (None, None, None, None)


def test_student_rows_keep_only_the_key_that_every_reader_uses(conn):
    """Every reader of growth_student_posterior asks for one run's rows, so its primary key
    (run_id, user_id) serves them all, the real-time path's lookup of a few users among them.
    An index on (user_id, run_id), written with every row of every fit and read by nothing,
    is gone (0009)."""
    indexes = {r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'growth_student_posterior'")}
    assert indexes == {"growth_student_posterior_pkey"}
    conn.execute("SET LOCAL enable_seqscan = off")  # an empty table: ask whether an index can serve it
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT user_id, n_obs, mean_a FROM growth_student_posterior"
        " WHERE run_id = 'native-20261123-043000' AND user_id = ANY('{u1,u2}'::text[])"))
    assert "growth_student_posterior_pkey" in plan


_STUDENT = ("INSERT INTO growth.growth_student_posterior (run_id, user_id, n_obs, mean_a, mean_b, var_a, var_b,"
            ' cov_ab, mu, sigma, "P") VALUES (%s, %s, 3, 0, 0, 0.1, 0.01, 0, 0, 0.3, 0.5)')


def test_a_student_row_needs_its_fit_and_goes_with_it(db_url):
    """What the foreign key of 0003 guaranteed, checked once per statement since 0010 (a COPY
    of a million rows no longer looks growth_fit up a million times): a row for a run with no
    growth_fit row is refused, naming the run_id (insert, COPY, update); a run_id that rows
    hold cannot change; deleting a fit deletes its rows and no other's, truncating the fits
    truncates the rows. The same from a session whose search_path does not hold the
    project's schema."""
    with connect(db_url) as c:
        write_fit(c, make_result(3, run_id="native-20261116-043000"))
        write_fit(c, make_result(2, run_id="native-20261123-043000"))
    with psycopg.connect(db_url, autocommit=True) as c:  # search_path: public only
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="run_id 'nope' has no growth_fit row"):
            c.execute(_STUDENT, ("nope", "u1"))
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="'nope'"):
            with c.cursor().copy("COPY growth.growth_student_posterior (run_id, user_id, n_obs, mean_a, mean_b, var_a,"
                                 ' var_b, cov_ab, mu, sigma, "P") FROM STDIN') as cp:
                for run in ("native-20261116-043000", "nope"):
                    cp.write_row((run, "u7", 3, 0, 0, 0.1, 0.01, 0, 0, 0.3, 0.5))
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="'elsewhere'"):
            c.execute("UPDATE growth.growth_student_posterior SET run_id = 'elsewhere' WHERE user_id = 's00000'"
                      " AND run_id = 'native-20261116-043000'")
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="'native-20261116-043000' is held by student rows"):
            c.execute("UPDATE growth.growth_fit SET run_id = 'moved' WHERE run_id = 'native-20261116-043000'")
        c.execute("UPDATE growth.growth_fit SET engine = 'native' WHERE run_id = 'native-20261116-043000'")  # not the key
        c.execute(_STUDENT, ("native-20261116-043000", "u8"))  # a row of a stored fit is taken
        c.execute("DELETE FROM growth.growth_fit WHERE run_id = 'native-20261116-043000'")
        assert c.execute("SELECT run_id, count(*) FROM growth.growth_student_posterior GROUP BY 1").fetchall() == [
            ("native-20261123-043000", 2)]
        c.execute("TRUNCATE growth.growth_fit CASCADE")  # the records and draws that reference it too
        assert c.execute("SELECT count(*) FROM growth.growth_student_posterior").fetchone()[0] == 0


def test_truncating_the_fits_with_their_student_rows_in_one_statement_empties_both(db_url):
    """``TRUNCATE growth_fit, growth_student_posterior`` (a clean-up naming every project table,
    as bench_weekly's does): growth_fit's TRUNCATE trigger must not fail on the student table
    that the same statement already holds open ("cannot TRUNCATE ... because it is being used
    by active queries in this session"); both end empty, and so does a fit truncated alone."""
    with connect(db_url) as c:
        write_fit(c, make_result(3, run_id="native-20261116-043000"))
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("TRUNCATE growth.growth_fit, growth.growth_student_posterior CASCADE")
        assert c.execute("SELECT (SELECT count(*) FROM growth.growth_fit),"
                         " (SELECT count(*) FROM growth.growth_student_posterior)").fetchone() == (0, 0)
    with connect(db_url) as c:
        write_fit(c, make_result(2, run_id="native-20261123-043000"))
    with psycopg.connect(db_url, autocommit=True) as c:
        with c.transaction():
            cur = c.cursor(name="open")  # this session holds the student table open
            cur.execute("SELECT user_id FROM growth.growth_student_posterior")
            cur.fetchone()
            c.execute("TRUNCATE growth.growth_fit CASCADE")
            cur.close()
        assert c.execute("SELECT count(*) FROM growth.growth_student_posterior").fetchone()[0] == 0


def test_deleting_a_fit_waits_for_an_open_write_of_its_rows_and_takes_them(db_url):
    """A fit deleted while another transaction writes rows for it: the delete waits for that
    transaction (its rows locked the fit, as a foreign key's check does) and then deletes them
    too; no row outlives its fit."""
    run_id = "native-20261116-043000"
    with connect(db_url) as c:
        store(c, make_result(1, run_id=run_id))
    done = threading.Event()

    def delete_fit():
        with connect(db_url) as d:
            d.execute("DELETE FROM growth_fit WHERE run_id = %s", (run_id,))
        done.set()

    with connect(db_url) as w:
        w.execute(_STUDENT, (run_id, "late"))  # open: not committed yet
        t = threading.Thread(target=delete_fit)
        t.start()
        time.sleep(0.5)
        assert not done.is_set(), "the delete should wait for the open write of the fit's rows"
        w.commit()
    t.join(10)
    assert done.is_set()
    with connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 0


def test_a_fits_student_rows_look_its_growth_fit_row_up_once_not_once_per_row(conn):
    """write_fit's COPY of N student rows checks their fit once per statement: a handful of
    index scans of growth_fit whatever N (the foreign key of 0003 made one per row; write_fit
    of ten million students took 84 s with it, 50 s without: benchmarks/results/fit.md).
    Counted by PostgreSQL itself, in the transaction (pg_stat_xact_user_tables)."""
    scans = "SELECT idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'growth_fit'"
    with conn.transaction():
        before = conn.execute(scans).fetchone()[0]
        assert write_fit(conn, make_result(3000)) == 3000
        looked_up = conn.execute(scans).fetchone()[0] - before
    assert 0 < looked_up <= 10, looked_up
    assert conn.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 3000


def test_a_row_whose_kpis_is_null_gets_p(db_url):
    """The platform's weekly_kpi is never re-keyed or re-defined; a missing kpis column is added
    nullable by `db migrate --apply-source-changes` (source_tables.plan: ADD COLUMN ... jsonb), so
    its existing rows have kpis NULL. The merge's `kpis = w.kpis || EXCLUDED.kpis` was then NULL:
    the P silently lost while the merge counted the row as written."""
    with connect(db_url) as c:
        c.execute("ALTER TABLE weekly_kpi ALTER COLUMN kpis DROP NOT NULL, ALTER COLUMN kpis DROP DEFAULT")
        c.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('u1', %s, NULL)", (WEEK,))
    with connect(db_url) as c:
        n = merge_weekly_kpi(c, [("u1", 0.7, 0.2)], week_start=WEEK, target=0.0, p_week=P_WEEK,
                             run_id="r1", source="native", window_end=WEEK)
    with connect(db_url) as c:
        k = kpis(c, "u1")
    assert n == 1
    assert k is not None and k.get("P") == 0.7, k


def test_a_non_object_kpis_another_writer_adds_during_a_new_weeks_insert_is_refused(db_url):
    """The new week's INSERT falls back to the upsert when another writer's row appears
    meanwhile; that fallback skipped the check of kpis that are not objects, and replaced such
    a row's value."""
    hold = threading.Event()

    def writer():
        with connect(db_url) as c:
            c.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('u2', %s, '[7]')", (WEEK,))
            hold.wait(10)
            c.commit()

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.3)  # u2's row exists now, uncommitted: the merge sees a new week
    errors: list = []

    def run_merge():
        try:
            with connect(db_url) as c:
                merge(c, [("u1", 0.6, 0.3), ("u2", 0.2, 0.3)])
        except ContractError as e:
            errors.append(e)

    m = threading.Thread(target=run_merge)
    m.start()
    time.sleep(0.3)
    hold.set()
    t.join(10), m.join(10)
    assert errors and errors[0].field == "weekly_kpi.kpis" and "user u2" in str(errors[0]), errors
    with connect(db_url) as c:
        assert kpis(c, "u2") == [7] and kpis(c, "u1") is None
