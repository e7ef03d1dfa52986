"""One call of one user: its transaction leaves the caller's session as it was, and its
generic plans look the user up by id (not by a date index), whatever the table's size."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from growth_assets import metrics
from growth_assets.db import connect
from growth_assets.model.contract import ContractError

from .helpers import WINDOW_START, store_run

compute = metrics.compute_goal_attainment_probability


def settings_of(session, *, end: bool = False) -> tuple:
    """The settings a call sets for itself, as the session has them; ``end``: and end the
    transaction this read began (a session without autocommit)."""
    row = session.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                          " current_setting('plan_cache_mode'), current_setting('search_path'),"
                          " current_setting('max_parallel_workers_per_gather')").fetchone()
    if end and not session.autocommit:
        session.rollback()
    return row


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_call_leaves_the_session_its_transaction_and_its_settings(db_url, autocommit):
    with connect(db_url) as session:
        store_run(session)
        session.autocommit = autocommit
        before = settings_of(session, end=True)
        assert compute(session, "s00000", target=0.0) is not None
        assert session.info.transaction_status == TransactionStatus.IDLE
        assert session.autocommit is autocommit
        assert settings_of(session, end=True) == before
        # inside the caller's own transaction, with settings of its own: both are kept (the
        # call's timeouts, plan mode, search_path and parallel workers are the call's, and
        # end with it)
        session.execute("BEGIN" if autocommit else "SELECT 1")
        session.execute("SELECT set_config('statement_timeout', '77s', true), set_config('search_path', 'public', true)")
        session.execute("CREATE TEMP TABLE callers_work (x int)")
        mine = settings_of(session)
        assert compute(session, "s00000", target=0.0) is not None
        assert session.info.transaction_status == TransactionStatus.INTRANS
        assert settings_of(session) == mine
        assert session.execute("SELECT count(*) FROM callers_work").fetchone() == (0,)
        session.rollback()


@pytest.mark.parametrize("autocommit", [False, True])
def test_the_calls_settings_hold_for_all_its_reads_and_end_with_them(db_url, autocommit):
    """A call on an idle session sends no BEGIN: its settings (here its search_path, which
    alone finds the project's tables for a session whose path is only ``public``) are set by
    its first statement and must hold for every read after it, also for a read sent after
    rows were fetched (a first call of the process: no run guessed yet, its draws not cached),
    and must end with the call."""
    with connect(db_url) as setup:
        store_run(setup)
    with psycopg.connect(db_url, autocommit=autocommit) as session:
        session.execute("SET search_path = public")
        if not autocommit:
            session.commit()
        before = settings_of(session, end=True)
        metrics._RUN_GUESS.clear()
        metrics._DRAWS_CACHE.clear()
        first = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        again = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        assert first.run_id == again.run_id == "native-20261123-043000" and first.path == "run", first
        assert (first.path, first.P) == (again.path, again.P)
        assert session.info.transaction_status == TransactionStatus.IDLE
        assert settings_of(session, end=True) == before


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_call_that_fails_leaves_the_session_usable(db_url, autocommit):
    with connect(db_url) as session:
        store_run(session)
        session.autocommit = autocommit
        before_window = WINDOW_START - timedelta(weeks=1)
        with pytest.raises(ContractError) as e:  # raised after the call's reads, inside its block
            compute(session, "s00000", target=0.0, horizon=before_window)
        assert e.value.field == "horizon"
        assert session.info.transaction_status == TransactionStatus.IDLE
        assert session.autocommit is autocommit
        assert compute(session, "s00000", target=0.0) is not None
        # in the caller's transaction: an error of the call leaves it usable, its work and
        # settings kept (the call's savepoint ended whether the error was Python's or the database's)
        session.execute("BEGIN" if autocommit else "SELECT 1")
        session.execute("CREATE TEMP TABLE callers_work AS SELECT 1 AS x")
        session.execute("SELECT set_config('statement_timeout', '77s', true)")
        mine = settings_of(session)
        with pytest.raises(ContractError):
            compute(session, "s00000", target=0.0, horizon=before_window)
        assert session.info.transaction_status == TransactionStatus.INTRANS
        assert settings_of(session) == mine
        with pytest.raises(psycopg.errors.InvalidSavepointSpecification):  # released, not left open
            session.execute(f"RELEASE SAVEPOINT {metrics._SAVEPOINT}")
        session.rollback()
        session.execute("BEGIN" if autocommit else "SELECT 1")
        session.execute("CREATE TEMP TABLE callers_work AS SELECT 1 AS x")
        other = psycopg.connect(db_url, autocommit=True)
        other.execute("DROP TABLE growth.growth_population_draws CASCADE")
        other.close()
        with pytest.raises(psycopg.errors.UndefinedTable):
            compute(session, "s00000", target=0.0)
        assert session.info.transaction_status == TransactionStatus.INTRANS
        assert session.execute("SELECT x FROM callers_work").fetchone() == (1,)
        session.rollback()


def our_statements(session) -> set[str]:
    rows = session.execute("SELECT name FROM pg_prepared_statements WHERE starts_with(name, %s)",
                           (metrics.PREPARED_PREFIX,)).fetchall()
    if not session.autocommit:
        session.rollback()
    return {r[0] for r in rows}


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_session_that_lost_the_calls_statements_is_answered_again(db_url, autocommit):
    """A call on an idle session runs its reads as statements it prepared in the session
    (``_Trips``). A caller (or a pooler's reset) that deallocates them does not break the
    next call: its round trip is sent again with the statements prepared anew."""
    with connect(db_url) as setup:
        store_run(setup)
    with psycopg.connect(db_url, autocommit=autocommit) as session:
        first = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        held = our_statements(session)
        assert held, "the call prepared no statement of its own"
        session.execute("DEALLOCATE ALL")
        if not autocommit:
            session.commit()
        again = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        assert (again.path, again.P, again.run_id) == (first.path, first.P, first.run_id)
        assert our_statements(session) == held
        assert session.info.transaction_status == TransactionStatus.IDLE


def test_a_session_holding_statements_the_process_did_not_know_of_is_answered(db_url):
    """Another thread's call on the same session can prepare a statement between this
    call's look at what the session holds and its round trip; PostgreSQL then refuses the
    second PREPARE of the name. The call reads what the session holds and sends the trip again."""
    with connect(db_url) as setup:
        store_run(setup)
    with psycopg.connect(db_url, autocommit=True) as session:
        first = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        held = our_statements(session)
        metrics._PREPARED_IN[session] = set()  # what the other thread's call prepared, unknown here
        again = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        assert (again.path, again.P) == (first.path, first.P)
        assert our_statements(session) == held == metrics._PREPARED_IN[session]


def test_a_session_without_prepared_statements_gets_none_of_the_calls(db_url):
    """A caller behind a pooler in transaction mode turns psycopg's prepared statements off
    (``prepare_threshold = None``): its server connection may change between transactions.
    The call then prepares nothing in the session either, and answers the same."""
    with connect(db_url) as setup:
        store_run(setup)
    with psycopg.connect(db_url, autocommit=True) as prepared, psycopg.connect(db_url, autocommit=True) as plain:
        plain.prepare_threshold = None
        want = metrics.explain_goal_attainment_probability(prepared, "s00000", target=0.0)
        got = metrics.explain_goal_attainment_probability(plain, "s00000", target=0.0)
        assert (got.path, got.P) == (want.path, want.P)
        assert our_statements(prepared) and not our_statements(plain)
        assert plain.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_a_session_of_other_factories_and_encoding_is_answered_alike(db_url, monkeypatch):
    """The call's look at what a session holds, its literals and its round trip are its own
    (found by review): on a dict_row session its look failed (KeyError: 0) at every call after
    one error; on a RawCursor session it failed at once (its %s is not $1); on a LATIN1
    session a non-ASCII id failed to decode (the literal is in the session's encoding)."""
    from psycopg.rows import dict_row

    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT_MS", "200")
    with connect(db_url) as setup:
        store_run(setup)
        want = metrics.explain_goal_attainment_probability(setup, "s00000", target=0.0)
        setup.rollback()
    kinds = {"dict_row": {"row_factory": dict_row}, "raw": {"cursor_factory": psycopg.RawCursor},
             "client": {"cursor_factory": psycopg.ClientCursor}}
    for kind, kw in kinds.items():
        with psycopg.connect(db_url, autocommit=True, **kw) as session, connect(db_url) as locker:
            got = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
            assert (got.path, got.P) == (want.path, want.P), kind
            locker.execute("LOCK TABLE weekly_kpi IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(psycopg.errors.LockNotAvailable):  # forgets what the session holds
                metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
            locker.rollback()
            got = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
            assert (got.path, got.P) == (want.path, want.P), kind
    with psycopg.connect(db_url, autocommit=True) as session:
        session.execute("SET client_encoding = 'LATIN1'")
        got = metrics.explain_goal_attainment_probability(session, "jos\u00e9", target=0.0)
        assert (got.path, got.P) == ("none", None)
        assert session.info.transaction_status == TransactionStatus.IDLE


def test_a_call_inside_the_callers_own_pipeline_is_answered(db_url):
    """A caller with its own psycopg pipeline open is idle, yet no simple query can be sent
    in it (found by review: 'cannot insert multiple commands into a prepared statement'). The
    call's reads then go in that pipeline, as they did before."""
    with connect(db_url) as setup:
        store_run(setup)
        want = metrics.explain_goal_attainment_probability(setup, "s00000", target=0.0)
        setup.rollback()
    with psycopg.connect(db_url, autocommit=True) as session:
        with session.pipeline():
            got = metrics.explain_goal_attainment_probability(session, "s00000", target=0.0)
        assert (got.path, got.P) == (want.path, want.P)
        assert session.info.transaction_status == TransactionStatus.IDLE


def test_a_round_trip_that_failed_forgets_what_it_prepared(db_url, monkeypatch):
    """A PREPARE outlives the round trip whose read then failed (here on a lock): the session
    holds the statement although the trip did not succeed, so the next call must not prepare it
    again blindly (PostgreSQL refuses a second PREPARE of a name), nor assume it is there."""
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT_MS", "200")
    with connect(db_url) as setup:
        store_run(setup)
    with psycopg.connect(db_url, autocommit=True) as session, connect(db_url) as locker:
        locker.execute("LOCK TABLE weekly_kpi IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            compute(session, "s00000", target=0.0)
        locker.rollback()
        assert our_statements(session), "the failed trip prepared nothing: the test shows nothing"
        assert compute(session, "s00000", target=0.0) is not None
        assert session.info.transaction_status == TransactionStatus.IDLE


def generic_plan(session, sql: str) -> str:
    """The plan PostgreSQL makes of ``sql`` as a prepared statement with its parameters unknown."""
    text, names = metrics._numbered(sql)
    session.execute(f"PREPARE q ({', '.join(metrics._PARAM_TYPES[n] for n in names)}) AS {text}")
    try:
        session.execute("SET plan_cache_mode = force_generic_plan")
        return "\n".join(r[0] for r in session.execute(f"EXPLAIN EXECUTE q ({', '.join(['NULL'] * len(names))})"))
    finally:
        session.execute("RESET plan_cache_mode")
        session.execute("DEALLOCATE q")


def test_one_users_generic_plan_looks_her_up_by_id_not_by_date(conn):
    """With 20,000 users' rows in one week of weekly_kpi (and a calibration each in mirt_ability),
    the generic plan of ``= ANY($users)`` (ten ids of unknown length, to the planner) reads
    weekly_kpi through its date index: every row of the week, for one user. The one-user form
    (``= $users[1]``) reads each source by the user's id."""
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) SELECT 'u' || i, date '2026-11-23',"
                 " '{\"ability_estimate\": 0.1}' FROM generate_series(1, 20000) i")
    conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at) SELECT 'u' || i, 0.1,"
                 " 0.2, 'm', 'v', timestamptz '2026-09-07 09:00Z' + (i % 12) * interval '1 week'"
                 " FROM generate_series(1, 20000) i")
    conn.commit()
    conn.autocommit = True
    conn.execute("ANALYZE weekly_kpi")
    conn.execute("ANALYZE mirt_ability")
    for few in (True, False):  # the single call's own statement (sums and theta), and a batch's
        many = metrics._run_reads_sql("theta", few)
        one = metrics._one_user_sql(many)
        assert "ANY" not in one and "[1]" in one
        assert "weekly_kpi_week_start" in generic_plan(conn, many)  # the trap, present in this database
        plan = generic_plan(conn, one)
        assert "weekly_kpi_week_start" not in plan and "mirt_ability_fitted_at" not in plan, plan
        assert "weekly_kpi_pkey" in plan and "mirt_ability_user_latest" in plan, plan
