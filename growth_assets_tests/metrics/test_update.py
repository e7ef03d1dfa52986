"""Path "update": P from the run's population draws and every score of the student since
the window's start, exact for any horizon (issue: P that moves with this week's scores).

One native fit of a 1,000-student cohort (module fixture); 50 students then get two more
weeks of scores, and the whole cohort is refitted with them: the update must agree with
the refit up to the O(1/N) move of the hyperparameters."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb

from growth_assets.db import connect
from growth_assets.db.writers import merge_weekly_kpi
from growth_assets.defs.growth.panel import Window, build_panel, load_panel
from growth_assets.demo.cohort import seed_cohort
from growth_assets.metrics import (
    compute_goal_attainment_probabilities as batch,
    explain_goal_attainment_probability as explain,
)
from growth_assets.model.contract import ContractError
from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets.model.result import fit_panel
from growth_assets_tests.support.per_draw import per_draw_phi, per_draw_reference

from .helpers import add_theta, store_fit

AS_OF = date(2026, 11, 9)  # the window: 12 weeks before; two later weeks have passed since
H = 15
TARGET = 0.1
RUN = "native-20261109-043000"


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")


@pytest.fixture(scope="module")
def fitted(db_url_module):
    """The cohort, its panel and fit, stored with its weekly_kpi P as the graph writes it."""
    window = Window(as_of=AS_OF, lookback_weeks=12)
    with connect(db_url_module) as conn:
        seed_cohort(conn, n_students=1000, n_weeks=12, seed=5, as_of=AS_OF)
        info = build_panel(conn, window, "theta", now=datetime(2026, 11, 9, 4, 30, tzinfo=timezone.utc))
        panel = load_panel(conn, info.panel_id)
        res = fit_panel(NativeEngine(), panel, FitSettings(seed=7, horizon_week=H, target=TARGET, run_id=RUN))
        store_fit(conn, res, window_start=window.start, week_start=window.week_start,
                  window_sums=panel.window_sums())
        st = res.students
        merge_weekly_kpi(conn, list(zip(st.student_id.tolist(), st.P.tolist(), st.sigma.tolist())),
                         week_start=window.week_start, target=TARGET, p_week=window.start + timedelta(weeks=H),
                         run_id=RUN, source="native", window_end=window.end)
        conn.commit()
    return {"url": db_url_module, "window": window, "res": res, "panel": panel}


@pytest.fixture
def conn(fitted):
    with connect(fitted["url"]) as c:
        yield c
        c.rollback()


def test_the_run_keeps_1000_population_draws(fitted, conn):
    n, = conn.execute("SELECT n_draws FROM growth_population_draws WHERE run_id = %s", (RUN,)).fetchone()
    assert n == 1000 and len(fitted["res"].population_draws["sigma"]) == 1000


def test_no_new_scores_is_exactly_the_stored_answer(fitted, conn):
    st = fitted["res"].students
    users = st.student_id[:200].tolist()
    out = batch(conn, users, target=TARGET)
    for i, u in enumerate(users):
        assert out[u].path == "stored", (u, out[u].reasons)
        assert out[u].P == float(st.P[i])  # the very number stored, not a recomputation


def test_at_the_run_horizon_the_update_equals_the_stored_p_within_the_thinning_error(fitted, conn):
    """Another path to the same number: at another target the stored P does not count, so
    the update recomputes it from the 1000 thinned draws; against the engine's P from all
    8000 draws at that target the difference is Monte Carlo error: within 4 standard
    errors sd_d(Phi(z_d)) / sqrt(1000) (draws about independent after thinning), plus the
    engine's own 1e-3 bound on its cheap P."""
    res, engine = fitted["res"], NativeEngine()
    other = TARGET + 0.15
    users = res.students.student_id[:300].tolist()
    out = batch(conn, users, target=other)
    full = fit_panel(engine, fitted["panel"], FitSettings(seed=7, horizon_week=H, target=other, run_id=RUN))
    d = res.population_draws
    worst = 0.0
    for i, u in enumerate(users):
        a = out[u]
        assert a.path == "update" and a.n_new == 0, (u, a.reasons)
        per = per_draw_phi(d, _sums(fitted["panel"], u), H, other)
        se = per.std() / math.sqrt(per.size)
        assert abs(a.P - full.students.P[i]) <= 4 * se + 1e-3, (u, a.P, full.students.P[i], se)
        worst = max(worst, per.std() / math.sqrt(per.size))
    assert worst < 0.005  # the draws' count is enough (contract.POPULATION_DRAWS)
    print(f"largest sd_d(Phi(z_d)) over 300 students: {worst * math.sqrt(1000):.4f}; "
          f"its standard error with 1000 draws {worst:.4f}")


def test_any_horizon_agrees_with_a_per_draw_computation(fitted, conn):
    d = fitted["res"].population_draws
    std = {"beta0": d["b_Intercept"], "beta1": d["b_week"], "tau0": d["sd_student_id__Intercept"],
           "tau1": d["sd_student_id__week"], "rho": d["cor_student_id__Intercept__week"], "sigma": d["sigma"]}
    users = sorted(fitted["res"].students.student_id[:40].tolist())
    for weeks in (12, 20, 30):
        horizon = fitted["window"].start + timedelta(weeks=weeks)
        out = batch(conn, users, target=TARGET, horizon=horizon)
        ref = per_draw_reference(fitted["panel"], std, 0.0, 1.0, float(weeks), TARGET, students=users)
        for (sid, p_ref, mu_ref, var_ref) in ref:
            a = out[sid]
            assert a.path == "update" and a.p_week == horizon, (sid, a.reasons)
            assert a.P == pytest.approx(p_ref, abs=1e-3 + 1e-9), sid  # the engine's proven bound
            assert a.mu == pytest.approx(mu_ref, abs=1e-9) and a.sigma**2 == pytest.approx(var_ref, rel=1e-9)


def test_fifty_students_with_new_weeks_agree_with_a_refit(fitted):
    """Two more weeks for 50 students (one of them two residual sds above her line); the
    whole cohort refitted with those rows: each updated P within 0.02 of the refit's."""
    res, window = fitted["res"], fitted["window"]
    st = res.students
    sigma = res.summary["sigma"].mean
    rng = np.random.default_rng(3)
    chosen = sorted(rng.choice(st.student_id.astype(str), 50, replace=False).tolist())
    mid = next(u for u in chosen if 0.2 < st.P[np.flatnonzero(st.student_id == u)[0]] < 0.8)
    with connect(fitted["url"]) as conn:
        for u in chosen:
            i = int(np.flatnonzero(st.student_id == u)[0])
            for k, week in enumerate((12, 13)):
                line = st.mean_a[i] + st.mean_b[i] * week
                y = line + (2 * sigma if u == mid else rng.normal(0, sigma))
                add_theta(conn, u, float(y), 0.2,
                          datetime.combine(window.start + timedelta(weeks=week, days=1 + k),
                                           datetime.min.time(), timezone.utc))
        out = batch(conn, chosen, target=TARGET)
        # the refit sees the window and the two weeks: 14 weeks from the same Monday
        longer = Window(as_of=AS_OF + timedelta(weeks=2), lookback_weeks=14)
        assert longer.start == window.start
        info = build_panel(conn, longer, "theta", now=datetime.now(timezone.utc))
        refit = fit_panel(NativeEngine(), load_panel(conn, info.panel_id),
                          FitSettings(seed=8, horizon_week=H, target=TARGET, lookback_weeks=14,
                                      run_id="native-20261123-043000"))
        conn.execute("DELETE FROM mirt_ability WHERE fitted_at >= %s",
                     (datetime.combine(window.end, datetime.min.time(), timezone.utc),))
        conn.commit()
    rp = dict(zip(refit.students.student_id.tolist(), refit.students.P.tolist()))
    diffs = []
    for u in chosen:
        a = out[u]
        assert a.path == "update" and a.n_new == 2, (u, a.reasons)
        assert any("2 score(s) since the window" in r for r in a.reasons)
        diffs.append(abs(a.P - rp[u]))
    i = int(np.flatnonzero(st.student_id == mid)[0])
    assert out[mid].P > st.P[i] + 0.05, (out[mid].P, st.P[i])  # two high weeks raise P
    assert max(diffs) <= 0.02, max(diffs)
    print(f"update vs refit over 50 students: max |dP| {max(diffs):.4f}; {mid}: {st.P[i]:.3f} -> {out[mid].P:.3f}")


def test_the_fit_keeps_each_students_window_sums(fitted, conn):
    """Beside each student's line: the five sums of the panel rows the fit conditioned on."""
    users = fitted["res"].students.student_id[:50].tolist()
    rows = conn.execute("SELECT user_id, n_obs, sum_w, sum_ww, sum_y, sum_wy FROM growth_student_posterior"
                        " WHERE run_id = %s AND user_id = ANY(%s)", (RUN, users)).fetchall()
    assert len(rows) == 50
    for u, *got in rows:
        assert got == pytest.approx(list(_sums(fitted["panel"], u)), rel=1e-12, abs=1e-12), u


def test_the_update_is_the_window_as_the_fit_saw_it_plus_the_weeks_since(fitted, conn):
    """A student of the run: the update conditions on her window's rows as the run's fit saw
    them, plus every week since. A score dated inside the window that arrived after the fit
    is not read into the window again (the stored P ignores it too, so the two paths answer
    from the same data); a week after the window is."""
    d = fitted["res"].population_draws
    u = fitted["res"].students.student_id[7]
    n, sw, sww, sy, swy = _sums(fitted["panel"], u)
    start = fitted["window"].start
    at = lambda week: datetime.combine(start + timedelta(weeks=week, days=2), datetime.min.time(), timezone.utc)  # noqa: E731
    conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                 " VALUES (%s, 3.0, 0.2, 'm', 'v', %s), (%s, 1.5, 0.2, 'm', 'v', %s)", (u, at(4), u, at(12)))
    a = batch(conn, [u], target=TARGET)[u]
    assert a.path == "update" and a.n_new == 1 and a.n_obs == n + 1, (a.path, a.n_obs, a.reasons)
    want = per_draw_phi(d, (n + 1, sw + 12, sww + 144, sy + 1.5, swy + 12 * 1.5), H, TARGET).mean()
    assert a.P == pytest.approx(want, abs=1e-3 + 1e-9)  # the engine's proven bound


@pytest.mark.parametrize("chunk", [10_000, 16])
def test_a_batch_answers_each_user_as_a_call_for_that_user_alone(fitted, conn, chunk, monkeypatch):
    """A batch (over PREFETCH_THETA_MAX_USERS users: planned for its size, read in chunks)
    and one call per user give the same answers on every path: students of the run with and
    without weeks since the window, a user the run did not fit with scores, one with only an
    old theta, one with nothing; in one chunk, and in ten (the last one short)."""
    from growth_assets import metrics
    from growth_assets.metrics import PREFETCH_THETA_MAX_USERS

    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", chunk)

    ids = fitted["res"].students.student_id.tolist()
    start = fitted["window"].start
    rows = [(u, 0.3 + 0.01 * k, start + timedelta(weeks=12 + k % 2, days=1)) for k, u in enumerate(ids[:20])]
    rows += [("newcomer", 0.2, start + timedelta(weeks=11, days=3)), ("newcomer", 0.4, start + timedelta(weeks=12, days=3)),
             ("only-old-theta", 0.1, start - timedelta(weeks=3))]
    for u, y, d in rows:
        conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                     " VALUES (%s, %s, 0.2, 'm', 'v', %s)", (u, y, datetime.combine(d, datetime.min.time(), timezone.utc)))
    users = ids[:150] + ["newcomer", "only-old-theta", "nobody-at-all"]
    assert len(users) > PREFETCH_THETA_MAX_USERS
    out = batch(conn, users, target=TARGET)
    assert {a.path for a in out.values()} == {"stored", "update", "normal", "none"}
    assert out["newcomer"].path == "update" and out["newcomer"].n_obs == 2 and out["newcomer"].n_new == 1
    for u in ids[:25] + ids[140:150] + ["newcomer", "only-old-theta", "nobody-at-all"]:
        one, b = explain(conn, u, target=TARGET), out[u]
        assert (one.path, one.n_obs, one.n_new, one.reasons) == (b.path, b.n_obs, b.n_new, b.reasons), u
        # the same numbers, by the grouped arithmetic of a batch or draw by draw for one user
        for x, y in ((one.P, b.P), (one.mu, b.mu), (one.sigma, b.sigma)):
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-12, abs=1e-15), u


@pytest.mark.parametrize("in_callers_transaction", [True, False])
def test_a_batch_sends_each_chunk_before_it_answers_the_one_before(fitted, conn, monkeypatch, in_callers_transaction):
    """The server reads ahead while the process answers: when the chain of chunk k starts,
    the reads (stored P; sums and theta) of the chunks up to k + 1 have been sent on one
    connection (inside a caller's transaction), and no later one (a fetch in psycopg's
    pipeline waits for every statement sent before it); on a session with nothing open, the
    chunks go in turn to the session and a second connection, each one chunk ahead: up to
    k + 2. The cyclic garbage collector is paused for the batch, and on again after it,
    also after an error."""
    import gc

    from growth_assets import metrics

    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", 100)
    sent, seen = [], []
    real_execute, real_chain = metrics._execute, metrics._chain

    def execute(session, sql, params):
        ids = params.get("users")
        sent.append((session.pgconn.backend_pid, ids.n if ids is not None else None, sql))
        return real_execute(session, sql, params)

    def chain(users, *a):
        seen.append((users[0], len(sent), gc.isenabled()))
        return real_chain(users, *a)

    monkeypatch.setattr(metrics, "_execute", execute)
    monkeypatch.setattr(metrics, "_chain", chain)
    if in_callers_transaction:
        conn.execute("SELECT 1")
    users = fitted["res"].students.student_id[:450].tolist()
    assert gc.isenabled()
    out = batch(conn, users, target=TARGET)
    assert list(out) == users and gc.isenabled()
    reads = [(pid, n) for pid, n, _ in sent if n is not None]  # two per chunk: 100, 100, 100, 100, 50 users
    assert [n for _, n in reads] == [100] * 8 + [50] * 2
    before = len(sent) - len(reads)  # the latest run (with the snapshot and the second connection's settings)
    ahead = 1 if in_callers_transaction else 2
    assert [n for _, n, _ in seen] == [before + 2 * min(k + 1 + ahead, 5) for k in range(5)]
    pids = [pid for pid, _ in reads[::2]]
    if in_callers_transaction:
        assert set(pids) == {conn.pgconn.backend_pid}
    else:  # chunk k on connection k % 2: the session's and another one's
        assert pids[0::2] == [conn.pgconn.backend_pid] * 3 and len(set(pids[1::2])) == 1
        assert pids[1] != conn.pgconn.backend_pid
    assert [u for u, _, _ in seen] == users[::100] and not any(on for _, _, on in seen)
    monkeypatch.setattr(metrics, "_chain", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        batch(conn, users, target=TARGET)
    assert gc.isenabled()
    conn.rollback()


def test_a_batch_on_two_connections_reads_one_snapshot_and_gives_the_answers_of_one(fitted, conn, monkeypatch):
    """A batch on an idle session reads its chunks on two connections that share the
    session's snapshot: a P committed by someone else while the batch runs is not seen by
    its later chunks (each statement of a batch saw the latest commit before: one user's
    answer then depended on which chunk she fell in). Its answers are those of the same batch
    on one connection (inside a caller's transaction), and of it where no second connection
    can be had."""
    from growth_assets import metrics

    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", 100)
    users = fitted["res"].students.student_id[:450].tolist()
    last = users[-1]  # in the last chunk, read after the first chunk is answered
    before = conn.execute("SELECT kpis FROM weekly_kpi WHERE user_id = %s", (last,)).fetchone()[0]
    conn.rollback()
    real_chain, committed = metrics._chain, []

    def chain(chunk, *a):
        if not committed:  # someone else stores another P for ``last``, while chunk 0 is answered
            with connect(fitted["url"]) as other:
                other.execute("UPDATE weekly_kpi SET kpis = kpis || '{\"P\": 0.123}' WHERE user_id = %s", (last,))
            committed.append(True)
        return real_chain(chunk, *a)

    monkeypatch.setattr(metrics, "_chain", chain)
    try:
        two = batch(conn, users, target=TARGET)
        assert committed and two[last].path == "stored" and two[last].P == before["P"]
        assert batch(conn, [last], target=TARGET)[last].P == 0.123  # committed, and seen by a later call
    finally:
        with connect(fitted["url"]) as other:
            other.execute("UPDATE weekly_kpi SET kpis = %s WHERE user_id = %s", (Jsonb(before), last))
    monkeypatch.setattr(metrics, "_chain", real_chain)
    conn.execute("SELECT 1")  # a caller's transaction: one connection
    one = batch(conn, users, target=TARGET)
    conn.rollback()

    def refused(*a, **k):
        raise psycopg.OperationalError("sorry, too many clients already")

    monkeypatch.setattr(psycopg, "connect", refused)
    alone = batch(conn, users, target=TARGET)
    for u in users:
        assert (two[u].path, two[u].P, two[u].sigma, two[u].reasons) == (one[u].path, one[u].P, one[u].sigma,
                                                                         one[u].reasons), u
        assert (alone[u].path, alone[u].P, alone[u].sigma, alone[u].reasons) == (one[u].path, one[u].P, one[u].sigma,
                                                                                 one[u].reasons), u


def test_a_new_run_between_two_calls_is_answered_from_at_once(db_url, monkeypatch):
    """A call sends its reads in one round trip, the score sums shaped by the run the process
    saw last: when another run has passed since, the answer is still the new run's, the same
    as a fresh process gives."""
    from dataclasses import replace

    import growth_assets.metrics as metrics
    from growth_assets_tests.support.results import make_result

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    with connect(db_url) as c:
        for week in (0, 5, 11, 12):  # three in the first run's window, one after it
            add_theta(c, "s00000", 0.1 * week, 0.2, datetime(2026, 8, 31, 9, tzinfo=timezone.utc) + timedelta(weeks=week))
        store_fit(c, replace(make_result(3), population_draws=_draws(-1.0)))
        first = explain(c, "s00000", target=0.0)
        later = replace(make_result(3, run_id="native-20261130-043000"), population_draws=_draws(1.0))
        store_fit(c, later, window_start=date(2026, 9, 7), week_start=date(2026, 11, 30))
        second = explain(c, "s00000", target=0.0)
        metrics._RUN_GUESS.clear()
        fresh = explain(c, "s00000", target=0.0)
        c.commit()
    assert (first.run_id, first.path, first.n_obs, first.n_new) == ("native-20261123-043000", "update", 4, 1)
    assert (second.run_id, second.path, second.n_obs, second.n_new) == ("native-20261130-043000", "update", 3, 0)
    assert (second.P, second.mu, second.sigma) == (fresh.P, fresh.mu, fresh.sigma)


def test_a_horizon_must_be_a_monday_not_before_the_window(fitted, conn):
    with pytest.raises(ContractError, match="horizon"):
        explain(conn, "s00001", target=TARGET, horizon=date(2026, 12, 2))
    with pytest.raises(ContractError, match="horizon"):
        explain(conn, "s00001", target=TARGET, horizon=fitted["window"].start - timedelta(weeks=1))
    with pytest.raises(ContractError, match="horizon"):
        explain(conn, "s00001", target=TARGET, horizon="next week")


def _sums(panel, sid):
    f = panel.to_frame()
    d = f[f.student_id == sid]
    w, y = d.week.to_numpy(float), d.score.to_numpy(float)
    return len(w), w.sum(), (w * w).sum(), y.sum(), (w * y).sum()



def _draws(intercept: float, n: int = 50) -> dict:
    rng = np.random.default_rng(1)
    return {"b_Intercept": intercept + 0.01 * rng.standard_normal(n), "b_week": np.full(n, 0.05),
            "sd_student_id__Intercept": np.full(n, 0.5), "sd_student_id__week": np.full(n, 0.03),
            "cor_student_id__Intercept__week": np.zeros(n), "sigma": np.full(n, 0.3)}


def test_rewritten_draws_of_the_same_run_are_read_again(db_url, monkeypatch):
    """The process keeps a run's draws by (database, run_id, row version): a retried step
    that rewrites the run's draws is seen at once, a new database is not confused with
    another that has the same run_id."""
    from dataclasses import replace

    from growth_assets_tests.support.results import make_result

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    res = make_result(3)
    with connect(db_url) as c:
        store_fit(c, replace(res, population_draws=_draws(-1.0)))
        add_theta(c, "s00000", 0.0, 0.2, datetime(2026, 11, 25, 9, tzinfo=timezone.utc))  # after the window
        low = explain(c, "s00000", target=0.0)
        store_fit(c, replace(res, population_draws=_draws(1.0)))  # the same run_id, rewritten
        high = explain(c, "s00000", target=0.0)
        c.commit()
    assert low.path == high.path == "update" and low.n_new == high.n_new == 1
    assert high.P > low.P + 0.05, (low.P, high.P)


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_session_of_another_service_on_public_gets_the_same_answers(fitted, autocommit):
    """Other services call with their own session, whose search_path is public: the project's
    tables (in schema growth) are found all the same, every path answers as on the project's
    own session, and the caller's search_path is its own again after the call."""
    import psycopg

    users = fitted["res"].students.student_id[:40].tolist() + ["no-such-student"]
    with connect(fitted["url"]) as own:
        want = {u: (a.path, a.P) for u, a in batch(own, users, TARGET).items()}
    with psycopg.connect(fitted["url"], autocommit=autocommit) as theirs:
        before = theirs.execute("SHOW search_path").fetchone()[0]
        assert "growth" not in before
        got = {u: (a.path, a.P) for u, a in batch(theirs, users, TARGET).items()}
        one = explain(theirs, users[0], TARGET)
        if not autocommit:
            theirs.commit()  # the caller's transaction ends: its own settings again
        assert theirs.execute("SHOW search_path").fetchone()[0] == before
    assert got == want and (one.path, one.P) == want[users[0]]
    assert {p for p, _ in want.values()} >= {"stored", "none"}


def test_draws_of_one_run_id_and_row_version_in_two_schemas_are_not_confused(db_url, monkeypatch):
    """The process kept a run's draws by (server, database, run_id, row version), not by the
    schema they were read from: two schemas of one database (two teams' projects) with the
    same run_id, their draws written by one transaction (one xmin), got the first one's draws."""
    from dataclasses import replace

    from growth_assets.db.migrate import migrate
    from growth_assets.db.writers import DRAW_COLUMNS
    from growth_assets.model.contract import POPULATION_PARAMS
    from growth_assets_tests.support.results import make_result

    migrate(db_url, schema="other")
    res = replace(make_result(3), population_draws=_draws(0.0))
    for schema in ("growth", "other"):
        with connect(db_url, schema=schema) as c:
            store_fit(c, res)
            c.commit()
    with connect(db_url) as c:  # both schemas' draws rewritten in one transaction: one xmin
        for schema, intercept in (("growth", -1.0), ("other", 1.0)):
            d = _draws(intercept)
            c.execute(f"UPDATE {schema}.growth_population_draws SET ({DRAW_COLUMNS}) = (%s, %s, %s, %s, %s, %s)"
                      " WHERE run_id = %s", [d[p].tolist() for p in POPULATION_PARAMS] + [res.run_id])
        xmins = c.execute("SELECT (SELECT xmin::text FROM growth.growth_population_draws),"
                          " (SELECT xmin::text FROM other.growth_population_draws)").fetchone()
        c.commit()
        add_theta(c, "s00000", 0.0, 0.2, datetime(2026, 11, 25, 9, tzinfo=timezone.utc))  # the platform's: one
        c.commit()
    assert xmins[0] == xmins[1]
    answers = {}
    for schema in ("growth", "other"):
        monkeypatch.setenv("GROWTH_DB_SCHEMA", schema)
        with connect(db_url, schema=schema) as c:
            answers[schema] = explain(c, "s00000", target=0.0)
    assert answers["growth"].path == answers["other"].path == "update"
    assert answers["other"].P > answers["growth"].P + 0.05, answers


def test_an_update_for_a_week_that_is_over_folds_in_only_that_weeks_scores(db_url, monkeypatch):
    """The update path read every score since the run's window up to now: a P for a week that
    is over (a refresh of it re-run later, a batch with its kpi_week) moved with a score of a
    later week (found by review). Now it folds in the scores up to the week's end."""
    from dataclasses import replace

    from growth_assets.metrics import compute_goal_attainment_probabilities as batch
    from growth_assets_tests.support.results import make_result

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    week = date(2026, 11, 23)
    with connect(db_url) as c:
        for w in (0, 5, 11):  # in the run's window
            add_theta(c, "s00000", 0.1 * w, 0.2, datetime(2026, 8, 31, 9, tzinfo=timezone.utc) + timedelta(weeks=w))
        store_fit(c, replace(make_result(3), population_draws=_draws(-1.0)))
        add_theta(c, "s00000", 0.3, 0.2, datetime(2026, 11, 24, 9, tzinfo=timezone.utc))  # in the week
        in_week = batch(c, ["s00000"], target=1.0, kpi_week=week)["s00000"]
        add_theta(c, "s00000", 2.5, 0.2, datetime(2026, 12, 2, 9, tzinfo=timezone.utc))  # the week after
        again = batch(c, ["s00000"], target=1.0, kpi_week=week)["s00000"]
        today = batch(c, ["s00000"], target=1.0)["s00000"]
        c.commit()
    assert (in_week.path, in_week.n_new, again.path, again.n_new, today.path, today.n_new) == (
        "update", 1, "update", 1, "update", 2)
    assert (again.P, again.mu) == (in_week.P, in_week.mu) and today.mu > in_week.mu + 0.3
    assert 0.05 < in_week.P < 0.95 and today.P > in_week.P + 0.3


# --- a call of a few users on an idle session: one simple query per round trip (``_Trips``) ---

@pytest.fixture
def more_scores(fitted):
    """Scores since the window for 20 of the run's students, a newcomer with one in the window
    and one since, a user with only an old theta; removed again after the test (the module's
    database is shared)."""
    ids = fitted["res"].students.student_id.tolist()
    start = fitted["window"].start
    rows = [(u, 0.3 + 0.01 * k, start + timedelta(weeks=12 + k % 2, days=1)) for k, u in enumerate(ids[:20])]
    rows += [("newcomer", 0.2, start + timedelta(weeks=11, days=3)), ("newcomer", 0.4, start + timedelta(weeks=12, days=3)),
             ("only-old-theta", 0.1, start - timedelta(weeks=3))]
    rows = [(u, y, datetime.combine(d, datetime.min.time(), timezone.utc)) for u, y, d in rows]
    with connect(fitted["url"]) as c:
        for row in rows:
            c.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                      " VALUES (%s, %s, 0.2, 'm', 'review', %s)", row)
        c.commit()
    yield ids[:40] + ["newcomer", "only-old-theta", "nobody-at-all"]
    with connect(fitted["url"]) as c:
        c.execute("DELETE FROM mirt_ability WHERE version = 'review'")
        c.commit()


def _answer_key(a):
    return (a.path, a.P, a.mu, a.sigma, a.n_obs, a.n_new, a.reasons, a.run_id, a.kpi_week)


def _keyed(answers: dict) -> dict:
    """Every field of each user's answer (``_answer_key``)."""
    return {u: _answer_key(a) for u, a in answers.items()}


def _told_unprepared(caplog) -> list[str]:
    """The log's word that a session's prepared statements do not stay (``metrics._not_kept``)."""
    return [r.getMessage() for r in caplog.records if "prepared statements do not stay" in r.getMessage()]


@pytest.mark.parametrize("kpi", [False, True])
def test_a_call_on_an_idle_session_answers_as_one_in_a_pipeline(fitted, more_scores, kpi):
    """Calls of 1, 2 and 64 users on an idle session (one simple query a round trip) and on a
    session with prepared statements off (its reads in a pipeline, bound): the same answers,
    every field, on every path, for the latest week and for a week's kpi row."""
    week = fitted["window"].week_start if kpi else None
    with psycopg.connect(fitted["url"], autocommit=True) as one, psycopg.connect(fitted["url"], autocommit=True) as piped:
        piped.prepare_threshold = None
        for n in (1, 2, 64):
            for i in range(0, len(more_scores), n):
                part = more_scores[i:i + n]
                got, want = batch(one, part, TARGET, kpi_week=week), batch(piped, part, TARGET, kpi_week=week)
                assert _keyed(got) == _keyed(want)
        assert {a.path for a in batch(one, more_scores, TARGET).values()} == {"stored", "update", "normal", "none"}


def test_the_statement_timeout_bounds_a_calls_reads(fitted, monkeypatch):
    """DATABASE_STATEMENT_TIMEOUT_MS bounds each read of a call (the settings are the round
    trip's first statement), here one waiting on a lock under a long lock timeout, whether the
    statements are prepared already or prepared in that trip; the session's own setting is
    left as it was."""
    import threading
    import time

    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT_MS", "300")
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT_MS", "60000")
    u = fitted["res"].students.student_id[0]
    with psycopg.connect(fitted["url"], autocommit=True) as one, connect(fitted["url"]) as locker:
        batch(one, [u], TARGET)  # its statements prepared
        for _ in range(2):  # then not: prepared in the trip that waits
            locker.execute("LOCK TABLE weekly_kpi IN ACCESS EXCLUSIVE MODE")
            timer = threading.Timer(8, locker.cancel)  # the test's own bound
            timer.start()
            t0 = time.monotonic()
            try:
                with pytest.raises(psycopg.errors.QueryCanceled):
                    batch(one, [u], TARGET)
            finally:
                timer.cancel()
            assert time.monotonic() - t0 < 4
            locker.rollback()
            one.execute("DEALLOCATE ALL")
        assert one.execute("SHOW statement_timeout").fetchone()[0] == "0"


@pytest.mark.parametrize("as_of", [None, "week_end", "in_window"])
def test_a_few_users_sums_read_in_one_pass_are_a_batchs(fitted, more_scores, as_of):
    """``_run_reads_sql``'s one pass (a call of a few users) and a batch's reads give the same
    rows: every user's sums and the thetas of those with no score, as of now, of a week's end,
    and of an instant inside the window (the run's kept sums then not used)."""
    from growth_assets import metrics

    w = fitted["window"]
    at = {None: None, "week_end": metrics._week_end(w.week_start),
          "in_window": datetime.combine(w.start + timedelta(weeks=8), datetime.min.time(), timezone.utc)}[as_of]
    with connect(fitted["url"]) as c:
        c.adapters.register_dumper(metrics._Ids, metrics._IdsDumper)
        run, _ = metrics._read_latest_runs(metrics._send_latest_runs(c, "growth", {
            "statement_timeout": "0", "lock_timeout": "0", "schema": '"growth"', "plan_mode": "auto"}))
        params = metrics._sums_params(c, run, more_scores, (-10.0, 10.0), at)
        rows = {few: metrics._run_reads_rows(metrics._execute(c, metrics._run_reads_sql("theta", few), params).fetchall(),
                                             True) for few in (True, False)}
        c.rollback()
    (a, theta_a), (b, theta_b) = rows[True], rows[False]
    assert a.keys() == b.keys() and len(a) >= 40 and theta_a == theta_b and theta_a
    for u in a:
        assert a[u] == pytest.approx(b[u], rel=1e-12), u


@pytest.mark.parametrize("prepare_threshold", [5, None])
def test_a_session_through_a_pooler_in_transaction_mode_gets_the_direct_answers(fitted, more_scores, monkeypatch,
                                                                                caplog, prepare_threshold):
    """A service's session through PgBouncer in transaction mode, whose every transaction may run
    on another server connection (here two, in turn). With psycopg's prepared statements on (its
    default), a call's PREPAREd statements were on the other server at its next round trip, and
    again after it read what its server held: every call failed ("prepared statement ... does
    not exist"). Such a session now gets its reads in a pipeline with nothing prepared, told once
    in the log; with them off (``prepare_threshold = None``) it always did. Calls of 1, 2 and 64
    users and a batch on two connections answer as on a direct connection, every field."""
    import logging

    from growth_assets import metrics
    from growth_assets_tests.support.pooler import pgbouncer

    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", 100)
    many = fitted["res"].students.student_id[:300].tolist() + more_scores
    with psycopg.connect(fitted["url"], autocommit=True) as direct:
        want = {n: [batch(direct, more_scores[i:i + n], TARGET) for i in range(0, len(more_scores), n)]
                for n in (1, 2, 64)}
        want_batch = batch(direct, many, TARGET)
    with pgbouncer(fitted["url"]) as url, psycopg.connect(url, autocommit=True) as pooled, \
            caplog.at_level(logging.WARNING, logger="growth_assets.metrics"):
        pooled.prepare_threshold = prepare_threshold
        for n in (1, 2, 64):
            for i, part in zip(range(0, len(more_scores), n), want[n]):
                got = batch(pooled, more_scores[i:i + n], TARGET)
                assert _keyed(got) == _keyed(part)
        got = batch(pooled, many, TARGET)
        assert _keyed(got) == _keyed(want_batch)
    told = _told_unprepared(caplog)
    assert len(told) == (1 if prepare_threshold is not None else 0), told


def test_batches_through_a_pooler_in_transaction_mode_get_the_direct_answers(fitted, monkeypatch, caplog):
    """Batches on a session through PgBouncer in transaction mode with psycopg's prepared
    statements on: after a few batches psycopg prepared their statements (``_pg3_0``) on one
    server connection and executed them on another, and every other batch failed ("prepared
    statement "_pg3_0" does not exist"). That batch is now read again with nothing prepared, and
    so is everything later on that session, told once in the log."""
    import logging

    from growth_assets import metrics
    from growth_assets_tests.support.pooler import pgbouncer

    monkeypatch.setattr(metrics, "BATCH_CHUNK_USERS", 100)
    users = fitted["res"].students.student_id[:400].tolist()
    with psycopg.connect(fitted["url"], autocommit=True) as direct:
        want = _keyed(batch(direct, users, TARGET))
    with pgbouncer(fitted["url"]) as url, psycopg.connect(url, autocommit=True) as pooled, \
            caplog.at_level(logging.WARNING, logger="growth_assets.metrics"):
        for _ in range(8):
            assert _keyed(batch(pooled, users, TARGET)) == want
    told = _told_unprepared(caplog)
    assert len(told) == 1, told
