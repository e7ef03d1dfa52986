"""The real-time path never hangs: a server that accepts and never answers, a table locked by
a migration, each is a clear error within the settings' timeouts; a read leaves no session
idle in a transaction (issue: nothing silently wrong, item 8)."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest

from growth_assets.db import connect
from growth_assets.db import get_session
from growth_assets.metrics import compute_goal_attainment_probability as compute


def test_a_silent_listener_as_the_database_fails_within_the_connect_timeout(monkeypatch):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts connections (the kernel does), never says a word
    port = srv.getsockname()[1]
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT_SECS", "2")
    t0 = time.monotonic()
    try:
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            with get_session(f"postgresql://nobody@127.0.0.1:{port}/none") as s:
                s.execute("SELECT 1")  # never reached: connecting fails
    finally:
        srv.close()
    assert time.monotonic() - t0 < 10  # libpq may try twice (IPv4 and SSL off): 2 x 2 s


def test_a_locked_table_is_an_error_within_the_lock_timeout(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT_MS", "500")
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    locker = psycopg.connect(db_url)
    locker.execute("LOCK TABLE weekly_kpi IN ACCESS EXCLUSIVE MODE")  # a migration, say
    try:
        with connect(db_url) as session:  # any session: the timeouts are the call's own
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable, match="lock timeout"):
                compute(session, "u1", target=0.0)
            assert time.monotonic() - t0 < 5
    finally:
        locker.rollback()
        locker.close()


def test_a_stuck_statement_is_an_error_within_the_statement_timeout(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT_MS", "300")
    with get_session(db_url) as s:
        with pytest.raises(psycopg.errors.QueryCanceled):
            s.execute("SELECT pg_sleep(5)")


def test_a_read_leaves_the_session_idle_not_in_a_transaction(db_url):
    with connect(db_url) as session:
        compute(session, "nobody", target=0.0)
        assert session.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # a caller's own open transaction is kept (the call ran in a savepoint)
        session.execute("SELECT 1")
        compute(session, "nobody", target=0.0)
        assert session.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def test_a_batch_on_two_connections_that_hits_a_lock_fails_in_time_and_leaves_nothing_open(db_url, monkeypatch):
    """A batch of several chunks reads on the session and on a second connection in its
    snapshot: a lock that stops both is the lock-timeout error, the session is idle after it
    (usable again), and the second connection is closed, not left behind."""
    from growth_assets import metrics

    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT_MS", "500")
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", 70)
    users = [f"u{i}" for i in range(300)]
    others = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
              " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    locker = psycopg.connect(db_url)
    locker.execute("LOCK TABLE weekly_kpi IN ACCESS EXCLUSIVE MODE")
    try:
        with connect(db_url) as session:
            opened = []
            real = metrics._second_reader
            monkeypatch.setattr(metrics, "_second_reader", lambda *a: opened.append(real(*a)) or opened[-1])
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable, match="lock timeout"):
                metrics.compute_goal_attainment_probabilities(session, users, target=0.0)
            assert time.monotonic() - t0 < 5
            assert opened and opened[0] is not None and opened[0].closed  # there was a second one, now closed
            assert session.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            locker.rollback()
            out = metrics.compute_goal_attainment_probabilities(session, users, target=0.0)
            assert len(out) == 300 and {a.path for a in out.values()} == {"none"}
            deadline = time.monotonic() + 5
            while (n := session.execute(others).fetchone()[0]) > 1 and time.monotonic() < deadline:
                session.rollback()
                time.sleep(0.05)
            assert n == 1  # the locker: no second connection of the batches left
    finally:
        locker.rollback()
        locker.close()
