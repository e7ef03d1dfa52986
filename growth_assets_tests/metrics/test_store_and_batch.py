"""calculate_and_store_weekly_kpi, the batch form and refresh_active_users."""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta, timezone

import pytest
from scipy.stats import norm

from growth_assets.db import connect
from growth_assets.db.writers import merge_weekly_kpi
from growth_assets.metrics import (
    calculate_and_store_weekly_kpi as store,
    compute_goal_attainment_probabilities as batch,
    explain_goal_attainment_probability as explain,
    refresh_active_users,
)
from growth_assets.model.contract import ContractError

from .helpers import P_WEEK, WEEK, add_theta, kpis, set_kpis, store_run, stored_p

RUN = "native-20261123-043000"
T0 = datetime(2026, 11, 24, 1, tzinfo=timezone.utc)  # in WEEK
MEANS = {"b_Intercept": 0.1, "b_week": 0.05, "sd_student_id__Intercept": 0.8,
         "sd_student_id__week": 0.05, "cor_student_id__Intercept__week": 0.2, "sigma": 0.3}


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    monkeypatch.delenv("METRICS_DEFAULT_TARGET", raising=False)


def test_week_start_must_be_a_monday(conn):
    with pytest.raises(ContractError) as e:
        store(conn, "s00000", date(2026, 11, 24))
    assert e.value.field == "week_start"
    with pytest.raises(ContractError) as e:
        store(conn, "s00000", WEEK, target=math.nan)
    assert e.value.field == "target"


def test_store_writes_the_chain_answer_with_its_meaning(conn):
    store_run(conn, summary_means=MEANS, drop=("s00001",))
    add_theta(conn, "s00001", 0.3, 0.2, datetime(2026, 9, 2, tzinfo=timezone.utc))
    add_theta(conn, "u-normal", 0.4, 0.2, datetime(2026, 8, 1, tzinfo=timezone.utc))  # before the window
    a = store(conn, "s00000", WEEK, target=0.5)
    assert a.path == "run"
    assert kpis(conn, "s00000") == {"P": a.P, "sigma": a.sigma, "P_target": 0.5,
                                    "P_week": P_WEEK.isoformat(), "P_run_id": RUN,
                                    "P_source": "posterior", "P_window_end": WEEK.isoformat()}
    b = store(conn, "s00001", WEEK, target=0.5)
    assert b.path == "population" and kpis(conn, "s00001")["P_source"] == "posterior"
    assert kpis(conn, "s00001")["P"] == b.P
    c = store(conn, "u-normal", WEEK, target=0.5)
    assert c.path == "normal" and c.P == pytest.approx(norm.sf(0.5), abs=1e-12)
    assert kpis(conn, "u-normal") == {"P": c.P, "sigma": 0.2, "P_target": 0.5,
                                      "P_week": WEEK.isoformat(), "P_run_id": None,
                                      "P_source": "normal"}
    d = store(conn, "nobody", WEEK, target=0.5)
    assert d.P is None and kpis(conn, "nobody") is None
    # what was stored is now read back through path 1 (the 'posterior' P of this run)
    assert explain(conn, "s00000", target=0.5).path == "stored"
    assert explain(conn, "s00001", target=0.5).P == b.P
    # ... but a stored Normal P is not (recomputed from the latest theta)
    add_theta(conn, "u-normal", 0.6, 0.2, datetime(2026, 8, 2, tzinfo=timezone.utc))
    assert explain(conn, "u-normal", target=0.5).P == pytest.approx(norm.sf(-0.5), abs=1e-12)


def test_a_p_stored_for_that_target_and_week_is_reused(conn):
    store_run(conn)
    set_kpis(conn, "s00000", WEEK, {"E_t": 7, **stored_p(0.42)})
    before = conn.execute("SELECT updated_at FROM weekly_kpi").fetchone()[0]
    a = store(conn, "s00000", WEEK, target=0.0)
    assert (a.path, a.P, a.kpi_week) == ("stored", 0.42, WEEK)
    assert kpis(conn, "s00000") == {"E_t": 7, **stored_p(0.42)}
    assert conn.execute("SELECT updated_at FROM weekly_kpi").fetchone()[0] == before
    # another target: computed and merged, the other keys (E_t) kept
    b = store(conn, "s00000", WEEK, target=0.3)
    assert b.path == "run" and b.P != 0.42
    assert kpis(conn, "s00000") == {"E_t": 7, "P": b.P, "sigma": b.sigma, "P_target": 0.3,
                                    "P_week": P_WEEK.isoformat(), "P_run_id": RUN,
                                    "P_source": "posterior", "P_window_end": WEEK.isoformat()}
    # path 1 reads the row of that week only: a P in the next week is not reused here
    nxt = WEEK + timedelta(weeks=1)
    set_kpis(conn, "s00002", nxt, stored_p(0.11))
    c = store(conn, "s00002", WEEK, target=0.0)
    assert c.path == "run" and c.reasons == ("stored: no weekly_kpi row (week 2026-11-23)",)


def test_a_target_with_many_digits_still_matches_its_stored_p(conn):
    # merge_weekly_kpi turns the double into jsonb with 15 significant digits
    store_run(conn)
    t = 1 / 3
    a = store(conn, "s00000", WEEK, target=t)
    stored_target = kpis(conn, "s00000")["P_target"]
    b = explain(conn, "s00000", target=t)
    assert (a.path, b.path, b.P) == ("run", "stored", a.P)
    assert abs(stored_target - t) < 1e-14
    assert explain(conn, "s00000", target=t + 1e-9).path == "run"


def test_two_writers_on_the_same_row_keep_each_others_keys(conn, db_url):
    store_run(conn)
    # the weekly graph merges its P with other writers' keys present
    set_kpis(conn, "s00000", WEEK, {"I_t": 0.5, "R_t": 2})
    merge_weekly_kpi(conn, [("s00000", 0.77, 0.2)], week_start=WEEK, target=0.0, p_week=P_WEEK,
                     run_id=RUN, source="native", window_end=WEEK)
    conn.commit()
    # a daily writer adds a key
    with connect(db_url) as other:
        other.execute("UPDATE weekly_kpi SET kpis = kpis || '{\"A_t\": 9}' WHERE user_id = 's00000'")
    # calculate_and_store for another target merges; the graph's writer then merges again
    a = store(conn, "s00000", WEEK, target=0.25)
    conn.commit()
    k = kpis(conn, "s00000")
    assert (k["I_t"], k["R_t"], k["A_t"], k["P"], k["P_target"], k["P_source"]) == (
        0.5, 2, 9, a.P, 0.25, "posterior")
    with connect(db_url) as other:
        merge_weekly_kpi(other, [("s00000", 0.66, 0.1)], week_start=WEEK, target=0.0,
                         p_week=P_WEEK, run_id=RUN, source="native", window_end=WEEK)
        other.execute("UPDATE weekly_kpi SET kpis = kpis || '{\"S\": 1}' WHERE user_id = 's00000'")
    k = kpis(conn, "s00000")
    assert (k["I_t"], k["R_t"], k["A_t"], k["S"], k["P"], k["P_target"], k["P_source"]) == (
        0.5, 2, 9, 1, 0.66, 0.0, "native")


class Counting:
    """A session that records the statements it is asked to execute, and the reads of
    ``metrics`` (which go through ``metrics._execute``, a raw cursor): to show one query per
    path, not per user."""

    def __init__(self, conn, monkeypatch):
        from growth_assets import metrics

        self.conn, self.statements, self.reads = conn, [], []
        real = metrics._execute

        def counted(session, sql, params):
            self.reads.append(sql)
            return real(session.conn if isinstance(session, Counting) else session, sql, params)

        monkeypatch.setattr(metrics, "_execute", counted)

    def execute(self, query, *a, **k):
        self.statements.append(query)
        return self.conn.execute(query, *a, **k)

    def __getattr__(self, name):  # transaction(), pipeline(), info: the connection's
        return getattr(self.conn, name)

    @property
    def autocommit(self):  # the connection's, read and set (the call switches it for its block)
        return self.conn.autocommit

    @autocommit.setter
    def autocommit(self, value):
        self.conn.autocommit = value


def mixed_population(conn):
    """Users on every path: stored, run, population, normal, none (each reason)."""
    store_run(conn, "native-20261116-043000", fitted_at=datetime(2026, 11, 16, tzinfo=timezone.utc))
    store_run(conn, n_students=30, summary_means=MEANS, drop=tuple(f"s{i:05d}" for i in range(20, 30)))
    for i in range(0, 5):
        set_kpis(conn, f"s{i:05d}", WEEK, stored_p(0.1 + 0.1 * i))  # stored
    set_kpis(conn, "s00005", WEEK, stored_p(0.9, target=1.0))  # other target -> run
    set_kpis(conn, "s00006", WEEK, stored_p(0.9, run_id="native-20261116-043000"))  # old run
    for i in range(20, 26):  # not in the fit, with scores -> population
        for w in range(0, 12, 1 + i % 3):
            add_theta(conn, f"s{i:05d}", -0.5 + 0.05 * w + 0.01 * i, 0.2,
                      datetime(2026, 8, 31, 8, tzinfo=timezone.utc) + timedelta(weeks=w))
    for i in range(26, 30):  # not in the fit, no scores in the window -> normal / none
        add_theta(conn, f"s{i:05d}", 0.1 * i - 2.7, 0.3 if i < 29 else 0.0,
                  datetime(2026, 8, 1, tzinfo=timezone.utc))
    return [f"s{i:05d}" for i in range(30)] + ["nobody", "s00003"]


def test_batch_equals_the_single_user_form_for_every_user(conn, caplog, monkeypatch):
    users = mixed_population(conn)
    with caplog.at_level(logging.INFO, logger="growth_assets.metrics"):
        batch(conn, users, target=0.0)
    summary = [r.getMessage() for r in caplog.records if "goal probabilities for 31 users" in r.getMessage()]
    assert len(summary) == 1 and "'population': 6" in summary[0] and "stored:target" in summary[0]
    for target in (0.0, 0.35):
        counting = Counting(conn, monkeypatch)
        out = batch(counting, users, target=target)
        # the runs (with whether they kept population draws: none here) in the statement that
        # sets the call's timeouts, stored P, run posterior, data sums, latest theta
        assert len(counting.reads) == 5, counting.reads
        # and nothing else: no BEGIN or ROLLBACK either (the reads are the pipeline's own
        # implicit transaction, which its sync ends)
        assert counting.statements == [], counting.statements
        monkeypatch.undo()
        assert list(out) == list(dict.fromkeys(users))
        for u in out:
            assert out[u] == explain(conn, u, target=target), u
    paths = {u: a.path for u, a in batch(conn, users, target=0.0).items()}
    from collections import Counter
    assert Counter(paths.values()) == {"stored": 5, "run": 15, "population": 6, "normal": 3, "none": 2}


def test_refresh_active_users_merges_in_one_transaction_and_counts(conn):
    users = mixed_population(conn)
    # activity in WEEK: a theta for a few users, practice for others
    for u in ("s00000", "s00007", "s00021"):
        add_theta(conn, u, 0.0, 0.2, T0)
    conn.execute("INSERT INTO features_topic_daily (user_id, topic_id, date, attempts, correct)"
                 " VALUES ('s00027', 't', '2026-11-25', 5, 3), ('s00029', 't', '2026-11-29', 5, 3),"
                 " ('s00010', 't', '2026-11-30', 5, 3)")  # 11-30 is the next week
    set_kpis(conn, "s00007", WEEK, {"I_t": 1})
    conn.commit()
    counts = refresh_active_users(conn, WEEK, target=0.0)
    conn.commit()
    assert counts == {"users": 5, "stored": 1, "update": 0, "run": 1, "population": 1, "normal": 1,
                      "none": 1, "written": 3}
    written = dict(conn.execute("SELECT user_id, kpis->>'P_source' FROM weekly_kpi"
                                " WHERE week_start = %s AND kpis ? 'P'", (WEEK,)).fetchall())
    assert {u: written.get(u) for u in ("s00000", "s00007", "s00021", "s00027", "s00029")} == {
        "s00000": "native", "s00007": "posterior", "s00021": "posterior", "s00027": "normal",
        "s00029": None}
    assert kpis(conn, "s00007")["I_t"] == 1
    single = explain(conn, "s00021", target=0.0)
    assert kpis(conn, "s00021")["P"] == single.P and single.path == "stored"
    assert users  # the population was built


@pytest.mark.parametrize("role", [False, True])
def test_a_batch_on_two_connections_reads_as_the_callers_session_does(conn, db_url, monkeypatch, role):
    """A caller that SET its search_path (and role) after connecting: the batch's second
    connection, opened from the session's connection string, read with the login's defaults,
    so every other chunk read another schema's weekly_kpi (0.2 instead of 0.7) and the answers
    depended on the chunk. It now acts as the session does: every chunk reads the caller's."""
    import psycopg
    from psycopg.types.json import Jsonb

    from growth_assets import metrics

    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", 100)
    store_run(conn)
    users = [f"u{i:04d}" for i in range(250)]
    conn.execute("CREATE SCHEMA platform")
    conn.execute("CREATE TABLE platform.weekly_kpi (LIKE public.weekly_kpi INCLUDING ALL)")
    for schema, p in (("platform", 0.7), ("public", 0.2)):
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {schema}.weekly_kpi (user_id, week_start, kpis) VALUES (%s, %s, %s)",
                            [(u, WEEK, Jsonb(stored_p(p))) for u in users])
    who = f"growth_reader_{conn.info.backend_pid}"
    if role:  # the platform's copy readable by that role only
        conn.execute(f"CREATE ROLE {who} NOLOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA platform, public, growth TO {who}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA platform, public, growth TO {who}")
        conn.execute("REVOKE ALL ON platform.weekly_kpi FROM PUBLIC")
    conn.commit()
    try:
        with psycopg.connect(db_url) as theirs:
            theirs.execute("SET search_path = platform, public")
            if role:
                theirs.execute(f"SET ROLE {who}")
            theirs.commit()
            calls = []
            real = metrics._second_reader
            monkeypatch.setattr(metrics, "_second_reader", lambda *a: calls.append(1) or real(*a))
            two = batch(theirs, users, target=0.0)  # an idle session: two connections
            assert calls == [1]
            theirs.execute("SELECT 1")  # inside the caller's transaction: the session alone
            one = batch(theirs, users, target=0.0)
            theirs.rollback()
    finally:
        if role:
            conn.rollback()
            conn.execute(f"DROP OWNED BY {who}")
            conn.execute(f"DROP ROLE {who}")
            conn.commit()
    assert {u: (a.path, a.P) for u, a in two.items()} == {u: ("stored", 0.7) for u in users}
    assert {u: (a.path, a.P) for u, a in one.items()} == {u: ("stored", 0.7) for u in users}


# --- found by review (each failed before its fix) ---------------------------------------------

def test_a_row_whose_kpis_is_json_null_is_merged_into_as_an_object(conn):
    """A platform row whose kpis is the JSON value null (not SQL NULL) was merged into as
    ``null || {...}``, which PostgreSQL makes an array: the P 'written' was never read back."""
    store_run(conn)
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('s00000', %s, 'null'::jsonb)", (WEEK,))
    conn.commit()
    a = store(conn, "s00000", WEEK, target=0.0)
    conn.commit()
    assert a.P is not None and a.path != "stored"
    k = kpis(conn, "s00000")
    assert isinstance(k, dict) and k["P"] == a.P, k
    assert explain(conn, "s00000", target=0.0).path == "stored"


def test_a_row_whose_kpis_is_not_an_object_is_refused_by_name_and_nothing_is_written(conn):
    """Another non-object (an array, a number) is another writer's value, not to be replaced:
    the merge names the user and the JSON type, and writes nothing."""
    store_run(conn)
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('s00001', %s, '[1, 2]'::jsonb)", (WEEK,))
    conn.commit()
    with pytest.raises(ContractError, match=r"weekly_kpi.kpis: must be a JSON object to merge P into \(user s00001,"
                                            r" week 2026-11-23\), not a JSON array"):
        merge_weekly_kpi(conn, [("s00000", 0.5, 0.1), ("s00001", 0.4, 0.1)], week_start=WEEK, target=0.0,
                         p_week=P_WEEK, run_id=RUN, source="update", window_end=WEEK)
    conn.rollback()
    assert kpis(conn, "s00000") is None and kpis(conn, "s00001") == [1, 2]


def test_p_writers_of_one_week_take_turns_whatever_the_sessions_datestyle(conn, db_url):
    """The per-week lock's key was built from the date's text, which follows the session's
    DateStyle: a writer on 'SQL, DMY' (a role's, a database's or PGOPTIONS' setting) took
    another lock than one on ISO, and the two did not take turns."""
    import psycopg

    store_run(conn)
    for style in ("ISO, MDY", "SQL, DMY"):
        with psycopg.connect(db_url, autocommit=True) as a, \
                psycopg.connect(db_url, autocommit=True, options=f"-c DateStyle={style.replace(' ', '')}") as b:
            b.execute("SET lock_timeout = '300ms'")
            with a.transaction():  # e.g. weekly_kpi_P's merge of the week, not committed yet
                merge_weekly_kpi(a, [("s00001", 0.5, 0.1)], week_start=WEEK, target=0.0, p_week=P_WEEK,
                                 run_id=RUN, source="native", window_end=WEEK)
                with pytest.raises(psycopg.errors.LockNotAvailable):  # the other waits its turn
                    with b.transaction():
                        merge_weekly_kpi(b, [("s00000", 0.4, 0.1)], week_start=WEEK, target=0.0, p_week=P_WEEK,
                                         run_id=RUN, source="update", window_end=WEEK)


def test_a_target_beyond_a_floats_range_and_a_batch_of_none_name_their_field(conn):
    """target=10**400 raised OverflowError, and a batch of None a TypeError."""
    store_run(conn)
    with pytest.raises(ContractError) as e:
        explain(conn, "s00000", target=10**400)
    assert e.value.field == "target"
    with pytest.raises(ContractError) as e:
        batch(conn, None, target=0.0)
    assert e.value.field == "user_ids"


def test_a_refresh_of_a_week_that_is_over_writes_that_weeks_normal_p(conn, monkeypatch):
    """A re-executed tick of week W, run two weeks later, on the Normal path: the latest theta
    up to now (one of the week after) was written into W's row, without a word (found by
    review). A P for a week that is over is now that week's: scores up to its end."""
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "false")
    add_theta(conn, "u1", 0.0, 0.5, datetime(2026, 11, 24, 9, tzinfo=timezone.utc))  # in WEEK
    add_theta(conn, "u1", 1.0, 0.5, datetime(2026, 12, 1, 9, tzinfo=timezone.utc))  # the week after
    refresh_active_users(conn, WEEK, target=0.0)
    conn.commit()
    assert kpis(conn, "u1", WEEK)["P"] == pytest.approx(norm.sf(0.0), abs=1e-9)  # WEEK's theta, not 1.0's
    assert batch(conn, ["u1"], target=0.0)["u1"].P == pytest.approx(norm.sf(-2.0), abs=1e-9)  # today's: the later one


def test_a_week_that_has_not_begun_is_refused_and_nothing_is_written(conn):
    # a mistyped year (2062 for 2026) or next week's Monday: P computed now is no P of that
    # week, and its row would show teachers a week to come. The current week is written.
    store_run(conn)
    this_monday = datetime.now(timezone.utc).date() - timedelta(days=datetime.now(timezone.utc).weekday())
    for week in (this_monday + timedelta(weeks=1), date(2062, 11, 27)):
        with pytest.raises(ContractError) as e:
            store(conn, "s00000", week, target=0.0)
        assert e.value.field == "week_start" and e.value.value == week.isoformat()
        assert "has not begun" in str(e.value)
        with pytest.raises(ContractError) as e:
            refresh_active_users(conn, week, target=0.0)
        assert e.value.field == "week_start"
    assert conn.execute("SELECT count(*) FROM weekly_kpi").fetchone()[0] == 0
    a = store(conn, "s00000", this_monday, target=0.0)
    assert a.P is not None and kpis(conn, "s00000", this_monday)["P"] == a.P
