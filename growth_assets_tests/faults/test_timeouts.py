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
