"""The real-time chain at its edges (session 21's review: each test failed on the code before
its fix): an accuracy run's scale, records with nullable columns unset, blank and NUL ids,
a latest calibration that is unusable, a session of another row factory, a datetime week."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from growth_assets import metrics
from growth_assets.db import connect
from growth_assets.metrics import (
    compute_goal_attainment_probabilities as batch,
    explain_goal_attainment_probability as explain,
)
from growth_assets.model.contract import ContractError
from growth_assets.model.panel import WindowSums
from growth_assets_tests.metrics.helpers import WINDOW_START, add_theta, store_fit
from growth_assets_tests.support.results import make_result

RUN = "native-20261123-043000"


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    monkeypatch.delenv("METRICS_DEFAULT_TARGET", raising=False)
    metrics._RUN_GUESS.clear()


def draws(n=400, seed=0, intercept=0.0, sigma=0.3):
    rng = np.random.default_rng(seed)
    return {"b_Intercept": rng.normal(intercept, 0.05, n), "b_week": rng.normal(0.03, 0.005, n),
            "sd_student_id__Intercept": np.abs(rng.normal(0.5, 0.05, n)),
            "sd_student_id__week": np.abs(rng.normal(0.03, 0.005, n)),
            "cor_student_id__Intercept__week": rng.uniform(-0.3, 0.3, n),
            "sigma": np.abs(rng.normal(sigma, 0.02, n))}


SUMS = {"s00000": (3, 0 + 5 + 11, 0 + 25 + 121, 0.1 + 0.2 + 0.4, 0 + 1.0 + 4.4),
        "s00001": (1, 7, 49, -0.3, -2.1),
        "s00002": (2, 10 + 11, 100 + 121, 0.5 + 0.6, 5.0 + 6.6)}


def store_with_draws(conn, sums=SUMS, d=None, **kw):
    """A run with population draws and each student's window sums (as the graph stores it)."""
    ids = sorted(sums)
    n = [sums[u][0] for u in ids]
    res = replace(make_result(len(ids), ids=ids, n_obs=n), population_draws=d if d is not None else draws())
    ws = WindowSums(np.array(ids, dtype=object), np.array(n),
                    *(np.array([sums[u][k] for u in ids], float) for k in range(1, 5)))
    store_fit(conn, res, window_sums=ws, **kw)
    conn.commit()
    return res


def at(week, days=1, hours=9):
    return (datetime.combine(WINDOW_START + timedelta(weeks=week, days=days), datetime.min.time(), timezone.utc)
            + timedelta(hours=hours))


# --- D1: an accuracy-scored run answers users without accuracy scores from THETA vs an ACCURACY target ---

def test_accuracy_run_does_not_compare_a_theta_with_an_accuracy_target(db_url):
    """BRMS_SCORE_SOURCE=accuracy: the target is a share correct (spec §5: "a target of 0.7
    must mean 70 % correct"). A user with no accuracy rows since the window but a mirt theta
    falls to path 3, which computes Phi((theta - 0.7) / se): a theta (about -3..3, mean 0)
    compared with a share correct. A strong student (theta 1.5) gets P ~1, an average one
    (theta 0) P ~0, whatever their accuracy: a number in the wrong units, stored by the
    daily refresh as P_source 'normal'."""
    with connect(db_url) as c:
        store_with_draws(c, score_source="accuracy")
        add_theta(c, "avg-student", 0.0, 0.2, at(13))   # after the window: the latest theta
        add_theta(c, "strong-student", 1.5, 0.2, at(13))
        out = batch(c, ["avg-student", "strong-student"], target=0.7)
    for u, a in out.items():
        # the run is an accuracy run: a theta is no estimate of a share correct
        assert a.path != "normal", (u, a.path, a.P, a.reasons)


# --- D2: a passed run with draws but no window_start crashes every call ---

def test_a_run_with_draws_and_no_window_start_does_not_crash(db_url):
    """growth_brms_meta.window_start is nullable and the chain handles a run without it
    (``_line_paths``: 'the run has no window_start'; ``_start``: 'elif run.window_start is not
    None'; ``_Run.p_week``). With population draws, ``_update_path`` formats
    ``run.window_start.isoformat()`` for the users it has no sums for: AttributeError for
    every call, even for a user with a usable theta (path 3)."""
    with connect(db_url) as c:
        store_with_draws(c)
        add_theta(c, "x", 0.2, 0.2, at(3))
        c.execute("UPDATE growth_brms_meta SET window_start = NULL")
        c.commit()
        a = explain(c, "x", target=0.0)  # AttributeError: 'NoneType' object has no attribute 'isoformat'
    assert a.path == "normal" and a.P is not None


# --- D3: an id with a NUL byte is a database error, not the ContractError for a bad user_id ---

def test_a_user_id_with_a_nul_byte_is_a_contract_error(db_url):
    """The documented rule: a bad user id raises ContractError naming the field (metrics
    docstring: 'an empty user id raises ContractError naming the field'); an id with a NUL
    byte (which no PostgreSQL text can hold, and which the R service refuses by name) goes to
    the server and fails there as psycopg's CharacterNotInRepertoire; in a batch it fails
    every other user's answer with it."""
    with connect(db_url) as c:
        add_theta(c, "ok", 0.2, 0.2, at(3))
        with pytest.raises(ContractError, match="user_id"):
            batch(c, ["ok", "bad\x00id"], target=0.0)


# --- D4: one whitespace-only user id in the platform's rows stops the whole daily refresh ---

def test_refresh_active_users_survives_a_whitespace_only_user_id(db_url):
    """``active_users`` leaves out NULL and '' ids (so that the batch's check does not refuse
    them), but not ' ': the batch then refuses it (``_check_user``: ``not u.strip()``) and
    ``refresh_active_users`` (the daily_kpi_P asset) raises ContractError: no user gets her P
    that day. The panel query keeps such an id (it filters only NULL and ''), so the same
    student can even be in the run's fit."""
    from growth_assets.metrics import active_users, refresh_active_users

    week = date(2026, 11, 23)
    with connect(db_url) as c:
        store_with_draws(c)
        add_theta(c, "s00000", 0.3, 0.2, datetime(2026, 11, 24, 9, tzinfo=timezone.utc))
        add_theta(c, " ", 0.3, 0.2, datetime(2026, 11, 24, 9, tzinfo=timezone.utc))
        assert active_users(c, week) == ["s00000"]  # the blank id left out (and logged)
        counts = refresh_active_users(c, week, target=0.0)  # ContractError: user_id: missing or empty
        c.commit()
    assert counts["written"] >= 1


# --- D5: a latest theta that is NaN is skipped for an older one; a latest se that is NaN gives no P ---

def test_path_3_uses_the_latest_calibration_or_none(db_url):
    """Module docstring, path 3: 'from the user's latest mirt_ability row with a non-NULL
    theta ... no such row, a non-finite theta or se, or se <= 0: no P' (spec §7: 'the
    student's latest ability estimate'). A latest row with theta NaN is instead skipped by
    ``_THETA_SQL`` (``theta BETWEEN lo AND hi``) and a week-old theta answers, while a latest
    row with se NaN gives no P: two unusable calibrations, two different rules, and the
    'non-finite theta' branch of ``_chain`` is unreachable."""
    with connect(db_url) as c:
        for u in ("nan-theta", "nan-se"):
            add_theta(c, u, 1.0, 0.2, datetime(2026, 11, 10, tzinfo=timezone.utc))
        add_theta(c, "nan-theta", float("nan"), 0.2, datetime(2026, 11, 20, tzinfo=timezone.utc))
        add_theta(c, "nan-se", 1.0, float("nan"), datetime(2026, 11, 20, tzinfo=timezone.utc))
        out = batch(c, ["nan-theta", "nan-se"], target=0.0)
    assert out["nan-se"].P is None
    assert (out["nan-theta"].path, out["nan-theta"].P) == (out["nan-se"].path, out["nan-se"].P), out["nan-theta"]


# --- D6: a session with another row factory (dict_row) crashes when the run's draws are read ---

def test_a_session_with_dict_rows_gets_the_same_answer(db_url):
    """README: 'The session may be any psycopg connection: one of another service'; metrics'
    own reads go through ``_execute``, which reads 'tuples whatever the session's row
    factory'. ``_run_draws`` reads the draws with ``session.execute(...).fetchone()`` and
    indexes the row (``row[0]``, ``row[1:]``): on a session made with ``row_factory=dict_row``
    every call of a process that has not cached the run's draws yet raises TypeError
    ('unhashable type: slice'), and the same call succeeds once another session has filled
    the cache: the outcome depends on the process's history."""
    import psycopg
    from psycopg.rows import dict_row

    with connect(db_url) as c:
        store_with_draws(c)
        add_theta(c, "x", 0.2, 0.2, at(13))
        want = explain(c, "x", target=0.0)
    metrics._DRAWS_CACHE.clear()  # a fresh process
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as theirs:
        got = explain(theirs, "x", target=0.0)
    assert (got.path, got.P) == (want.path, want.P)


def test_refresh_active_users_on_a_dict_row_session(db_url):
    """``active_users`` indexes its rows by position (``r[0]``): KeyError on a dict_row session."""
    import psycopg
    from psycopg.rows import dict_row

    from growth_assets.metrics import active_users

    with connect(db_url) as c:
        add_theta(c, "x", 0.2, 0.2, datetime(2026, 11, 24, 9, tzinfo=timezone.utc))
    with psycopg.connect(db_url, row_factory=dict_row) as theirs:
        assert active_users(theirs, date(2026, 11, 23)) == ["x"]


# --- D7: a passed run without horizon_week makes every call raise, whatever path would answer ---

def test_a_run_without_horizon_week_does_not_stop_other_paths(db_url):
    """growth_brms_meta.horizon_week is nullable. ``_know_run`` computes the horizon before
    any path runs, so with the default horizon every call raises ContractError
    ('growth_brms_meta.horizon_week: missing in run ...'), also for a user whose answer would
    come from path 3 (a run without window_start, the other nullable column, falls through
    with a reason instead)."""
    with connect(db_url) as c:
        store_with_draws(c)
        add_theta(c, "x", 0.2, 0.2, datetime(2026, 8, 1, tzinfo=timezone.utc))  # before the window: path 3
        c.execute("UPDATE growth_brms_meta SET horizon_week = NULL")
        c.commit()
        a = explain(c, "x", target=0.0)
    assert a.path == "normal" and a.P is not None


# --- D8: kpi_week accepts a datetime, and then silently never finds the week's row ---

def test_kpi_week_must_be_a_date_not_a_datetime(db_url):
    """``_check_horizon`` refuses a datetime ('must be a date'), ``kpi_week`` goes through
    ``check_monday`` only, which a datetime passes (it is a date subclass). A Monday 10:00
    then compares week_start = timestamp 10:00 and finds no row: the stored P of that week
    is silently ignored ('no weekly_kpi row (week 2026-11-23T10:00:00)')."""
    from growth_assets_tests.metrics.helpers import set_kpis, stored_p

    with connect(db_url) as c:
        store_with_draws(c)
        set_kpis(c, "s00000", date(2026, 11, 23), stored_p(0.42, target=0.0, source="native"))
        assert batch(c, ["s00000"], target=0.0, kpi_week=date(2026, 11, 23))["s00000"].path == "stored"
        with pytest.raises(ContractError, match="kpi_week"):
            batch(c, ["s00000"], target=0.0, kpi_week=datetime(2026, 11, 23, 10))


def test_ids_that_need_quoting_get_the_answers_of_a_callers_transaction(db_url):
    """A call on an idle session writes its parameters into one simple query as literals
    (``_Trips``, psycopg's quoting); inside a caller's transaction they go as bound
    parameters. Ids with quotes, backslashes, braces, a placeholder's percent and SQL of
    their own get the same answers both ways, alone and together, and the SQL stays a value."""
    odd = ["o'brien", "50%s off %(users)s", "back\\slash", '{brace},"q"', "x'); DROP TABLE weekly_kpi; --"]
    with connect(db_url) as c:
        store_with_draws(c, sums={u: SUMS[k] for u, k in zip(odd, ("s00000", "s00001", "s00002", "s00000", "s00001"))})
        for i, u in enumerate(odd):
            add_theta(c, u, 0.1 * i, 0.2, at(13))  # a score since the window: path update
        add_theta(c, "theta only '%", 0.3, 0.2, at(-2))  # no score in the window nor since: path normal
        users = [*odd, "theta only '%"]
        c.execute("SELECT 1")  # the caller's transaction: the reads go bound, in a pipeline
        bound = {u: explain(c, u, target=0.0) for u in users}
        bound_all = batch(c, users, target=0.0)
        c.rollback()
        alone = {u: explain(c, u, target=0.0) for u in users}  # an idle session: literals
        together = batch(c, users, target=0.0)
        assert c.execute("SELECT count(*) FROM weekly_kpi").fetchone() is not None
    assert {u: a.path for u, a in bound.items()} == {**{u: "update" for u in odd}, "theta only '%": "normal"}
    for u in users:
        assert (alone[u].path, alone[u].P, alone[u].n_new) == (bound[u].path, bound[u].P, bound[u].n_new), u
        assert (together[u].path, together[u].P) == (bound_all[u].path, bound_all[u].P)
        # one user's arithmetic and several users' (``_predict_one``, ``_predict_few``) agree to rounding
        assert together[u].path == bound[u].path and together[u].P == pytest.approx(bound[u].P, abs=1e-12)
