"""Every path of the chain and every reason to fall through, on a real PostgreSQL."""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timezone

import numpy as np
import psycopg
import pytest
from scipy.stats import norm

from growth_assets.metrics import (
    compute_goal_attainment_probability as compute,
    explain_goal_attainment_probability as explain,
)
from growth_assets.model.contract import ContractError, line_prediction

from .helpers import H, P_WEEK, WEEK, add_theta, set_kpis, store_run, stored_p

RUN = "native-20261123-043000"
T0 = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    monkeypatch.delenv("METRICS_DEFAULT_TARGET", raising=False)


def run_p(i, target, h=H):
    """P of make_result's student i from its line posterior, in closed form."""
    ma, mb, va, vb, cab = -0.5 + 0.1 * i, 0.05, 0.04, 0.0004, -0.001
    mu = ma + h * mb
    sd = math.sqrt(va + 2 * h * cab + h * h * vb)
    return float(norm.sf((target - mu) / sd)), sd, mu


def test_stored_p_of_the_latest_passed_run_and_this_target_is_returned(conn, caplog):
    store_run(conn)
    set_kpis(conn, "s00000", WEEK, {"I_t": 3, **stored_p(0.42)})
    with caplog.at_level(logging.INFO, logger="growth_assets.metrics"):
        a = explain(conn, "s00000", target=0.0)
    assert (a.P, a.sigma, a.path, a.run_id, a.source, a.kpi_week, a.p_week) == (
        0.42, 0.3, "stored", RUN, "native", WEEK, P_WEEK)
    assert a.reasons == ()
    assert compute(conn, "s00000", target=0.0) == 0.42
    msgs = [r.getMessage() for r in caplog.records if r.name == "growth_assets.metrics"]
    assert any("user=s00000" in m and "path=stored" in m for m in msgs)


def test_a_stored_p_for_another_target_is_not_used(conn, caplog):
    store_run(conn)
    set_kpis(conn, "s00000", WEEK, stored_p(0.42, target=0.0))
    with caplog.at_level(logging.INFO, logger="growth_assets.metrics"):
        a = explain(conn, "s00000", target=0.5)
    p, sd, mu = run_p(0, 0.5)
    assert a.path == "run" and a.P == pytest.approx(p, abs=1e-12)
    assert a.sigma == pytest.approx(sd) and a.mu == pytest.approx(mu) and a.run_id == RUN
    assert a.reasons == ("stored: P in weekly_kpi 2026-11-23 was computed for target 0.0, not 0.5",)
    assert a.source == "posterior" and a.p_week == P_WEEK and a.n_obs == 12
    log_line = [r.getMessage() for r in caplog.records if "user=s00000" in r.getMessage()][0]
    assert "path=run" in log_line and "computed for target 0.0, not 0.5" in log_line


def test_no_stored_p_falls_to_the_run(conn):
    store_run(conn)
    a = explain(conn, "s00001", target=0.0)
    assert a.path == "run" and a.P == pytest.approx(run_p(1, 0.0)[0], abs=1e-12)
    assert a.reasons == ("stored: no weekly_kpi row (latest week)",)
    set_kpis(conn, "s00001", WEEK, {"I_t": 1.0})  # a row without P (another writer's keys)
    assert explain(conn, "s00001", target=0.0).reasons == ("stored: no P in weekly_kpi 2026-11-23",)


def test_stored_p_rules_run_id_source_legacy_and_latest_week(conn):
    store_run(conn, "native-20261116-043000", fitted_at=datetime(2026, 11, 16, tzinfo=timezone.utc))
    store_run(conn)
    expect = run_p(0, 0.0)[0]
    cases = {
        "from an older run": (stored_p(0.42, run_id="native-20261116-043000"),
                              "is from run native-20261116-043000, not the latest passed run " + RUN),
        "normal": (stored_p(0.42, run_id=None, source="normal"), "is from run None, not the latest"),
        "legacy": ({"P": 0.42, "sigma": 0.3}, "has no P_target (legacy row)"),
        "string P": ({**stored_p(), "P": "0.42"}, "is not a number within [0, 1]"),
        "wrong source": (stored_p(0.42, source="brms"), "has P_source 'brms', not 'native', 'posterior' or 'update'"),
    }
    for name, (k, why) in cases.items():
        set_kpis(conn, "s00000", WEEK, k)
        a = explain(conn, "s00000", target=0.0)
        assert a.path == "run", name
        assert a.P == pytest.approx(expect, abs=1e-12), name
        assert why in a.reasons[0], (name, a.reasons)
    # a P written by calculate_and_store from this run's posterior counts
    set_kpis(conn, "s00000", WEEK, stored_p(0.37, source="posterior"))
    assert explain(conn, "s00000", target=0.0).P == 0.37
    # only the latest week is read: a valid P of an older week is not
    set_kpis(conn, "s00000", date(2026, 11, 30), {"I_t": 2})
    a = explain(conn, "s00000", target=0.0)
    assert a.path == "run" and a.reasons == ("stored: no P in weekly_kpi 2026-11-30",)


def test_no_run_at_all_and_a_run_that_failed_its_checks(conn):
    add_theta(conn, "s00000", 0.4, 0.2, T0)
    a = explain(conn, "s00000", target=0.0)
    assert a.path == "normal" and a.P == pytest.approx(norm.sf(-2.0), abs=1e-12)
    assert (a.mu, a.sigma, a.source, a.run_id) == (0.4, 0.2, "normal", None)
    assert a.reasons == ("stored: no weekly_kpi row (latest week)", "run: no growth_brms_meta run")
    store_run(conn, status="failed_checks")
    set_kpis(conn, "s00000", WEEK, stored_p(0.42))  # written by a run that then failed
    a = explain(conn, "s00000", target=0.0)
    assert a.path == "normal" and a.P == pytest.approx(norm.sf(-2.0), abs=1e-12)
    assert a.reasons == (
        f"stored: P in weekly_kpi 2026-11-23 (run {RUN}) is not from a passed run: there is none",
        f"run: no run passed its checks (latest run {RUN} is failed_checks)")


def test_a_newer_failed_run_does_not_hide_the_latest_passed_one(conn):
    store_run(conn, "native-20261116-043000", fitted_at=datetime(2026, 11, 16, tzinfo=timezone.utc))
    store_run(conn, status="failed_checks", summary_means={"b_Intercept": 9.0})
    a = explain(conn, "s00002", target=0.0)
    assert a.path == "run" and a.run_id == "native-20261116-043000"
    assert a.P == pytest.approx(run_p(2, 0.0)[0], abs=1e-12)


def test_student_missing_from_the_fit(conn):
    means = {"b_Intercept": 0.1, "b_week": 0.05, "sd_student_id__Intercept": 0.8,
             "sd_student_id__week": 0.05, "cor_student_id__Intercept__week": 0.2, "sigma": 0.3}
    store_run(conn, summary_means=means, drop=("s00001",))
    # not in the fit, no scores since the window start: falls to Normal (and it has a theta
    # from before the window)
    add_theta(conn, "s00001", -0.2, 0.25, datetime(2026, 8, 30, 23, tzinfo=timezone.utc))
    a = explain(conn, "s00001", target=0.0)
    assert a.path == "normal" and a.P == pytest.approx(norm.sf(0.8), abs=1e-12)
    assert a.reasons[1] == f"population: student not in run {RUN} and has no scores since 2026-08-31"
    # with scores in the window: the population posterior + its own data
    add_theta(conn, "s00001", 0.3, 0.25, datetime(2026, 9, 1, tzinfo=timezone.utc))  # week 0
    add_theta(conn, "s00001", 0.5, 0.25, datetime(2026, 9, 6, 23, tzinfo=timezone.utc))  # week 0
    add_theta(conn, "s00001", 0.9, 0.25, datetime(2026, 10, 12, tzinfo=timezone.utc))  # week 6
    a = explain(conn, "s00001", target=1.2)
    assert a.path == "population" and a.run_id == RUN and a.n_obs == 2 and a.source == "posterior"
    assert a.reasons == ("stored: no weekly_kpi row (latest week)", f"run: student not in run {RUN}")
    # independent check: condition the joint Gaussian of (a, b, y) on y
    t0, t1, rho, s = 0.8, 0.05, 0.2, 0.3
    S = np.array([[t0 * t0, rho * t0 * t1], [rho * t0 * t1, t1 * t1]])
    X = np.array([[1.0, 0.0], [1.0, 6.0]])
    y = np.array([0.4, 0.9])
    beta = np.array([0.1, 0.05])
    V = X @ S @ X.T + s * s * np.eye(2)
    K = S @ X.T @ np.linalg.inv(V)
    m = beta + K @ (y - X @ beta)
    C = S - K @ X @ S
    mu, sd, p = line_prediction(m[0], m[1], C[0, 0], C[1, 1], C[0, 1], H, 1.2)
    assert a.mu == pytest.approx(float(mu), abs=1e-12)
    assert a.sigma == pytest.approx(float(sd), abs=1e-12)
    assert a.P == pytest.approx(float(p), abs=1e-12)
    assert 0.05 < a.P < 0.95  # a real probability, not a degenerate one


def test_a_student_seen_only_in_student_topic_theta_gets_the_population_path(conn):
    """The real-time path reads the panel's own query: every source, in the same priority.
    Today's main read mirt_ability only and answered None for this student."""
    means = {"b_Intercept": 0.1, "b_week": 0.05, "sd_student_id__Intercept": 0.8,
             "sd_student_id__week": 0.05, "cor_student_id__Intercept__week": 0.2, "sigma": 0.3}
    store_run(conn, summary_means=means)
    for topic, theta in (("t1", 0.2), ("t2", 0.6)):  # week 0: mean over topics = 0.4
        conn.execute("INSERT INTO student_topic_theta (user_id, topic_id, theta, se, model, version, fitted_at)"
                     " VALUES ('topic-only', %s, %s, 0.3, 'm', 'v', '2026-09-02T10:00Z')", (topic, theta))
    conn.execute("INSERT INTO student_topic_theta (user_id, topic_id, theta, se, model, version, fitted_at)"
                 " VALUES ('topic-only', 't1', 0.9, 0.3, 'm', 'v', '2026-10-13T10:00Z')")  # week 6
    conn.commit()
    p = compute(conn, "topic-only", target=1.2)
    a = explain(conn, "topic-only", target=1.2)
    assert p is not None and p == a.P
    assert a.path == "population" and a.n_obs == 2 and a.run_id == RUN
    # the same numbers as a student with those weekly scores in mirt_ability
    add_theta(conn, "mirt-twin", 0.4, 0.25, datetime(2026, 9, 2, 10, tzinfo=timezone.utc))
    add_theta(conn, "mirt-twin", 0.9, 0.25, datetime(2026, 10, 13, 10, tzinfo=timezone.utc))
    twin = explain(conn, "mirt-twin", target=1.2)
    assert (a.P, a.mu, a.sigma) == pytest.approx((twin.P, twin.mu, twin.sigma), rel=1e-12)
    assert 0.05 < a.P < 0.95


def test_no_theta_and_bad_se_give_none(conn, caplog):
    with caplog.at_level(logging.INFO, logger="growth_assets.metrics"):
        a = explain(conn, "nobody", target=0.0)
    assert a.P is None and a.path == "none"
    assert a.reasons[-1] == "normal: no theta in mirt_ability"
    assert any("user=nobody" in r.getMessage() and "path=none" in r.getMessage() for r in caplog.records)
    add_theta(conn, "u1", 0.4, 0.0, T0)
    assert explain(conn, "u1", target=0.0).reasons[-1] == "normal: latest se <= 0 (0.0)"
    add_theta(conn, "u2", 0.4, -0.1, T0)
    assert compute(conn, "u2", target=0.0) is None
    add_theta(conn, "u3", 0.4, None, T0)
    assert explain(conn, "u3", target=0.0).reasons[-1] == "normal: latest theta has no se"
    # the latest row counts, not an older good one
    add_theta(conn, "u4", 0.4, 0.2, datetime(2026, 11, 1, tzinfo=timezone.utc))
    add_theta(conn, "u4", 0.4, 0.0, T0)
    assert compute(conn, "u4", target=0.0) is None


def test_use_bayesian_false_gives_the_normal_approximation_only(conn, monkeypatch):
    store_run(conn)
    set_kpis(conn, "s00000", WEEK, stored_p(0.42))
    add_theta(conn, "s00000", 0.1, 0.5, T0)
    assert compute(conn, "s00000", target=0.0) == 0.42
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "false")  # read at call time
    a = explain(conn, "s00000", target=0.0)
    assert a.path == "normal" and a.P == pytest.approx(norm.sf(-0.2), abs=1e-12)
    assert a.reasons == ("METRICS_USE_BAYESIAN=false: Normal approximation only",)


def test_default_target_is_read_at_call_time(conn, monkeypatch):
    add_theta(conn, "u", 0.4, 0.2, T0)
    assert compute(conn, "u") == pytest.approx(norm.sf(-2.0), abs=1e-12)  # default 0.0
    monkeypatch.setenv("METRICS_DEFAULT_TARGET", "0.6")
    a = explain(conn, "u")
    assert a.target == 0.6 and a.P == pytest.approx(norm.sf(1.0), abs=1e-12)


def test_bad_arguments_and_database_errors_are_raised(conn):
    for bad in (math.nan, math.inf, "x"):
        with pytest.raises(ContractError) as e:
            compute(conn, "u", target=bad)
        assert e.value.field == "target"
    for bad in ("", "  ", None):
        with pytest.raises(ContractError) as e:
            compute(conn, bad, target=0.0)
        assert e.value.field == "user_id"
    conn.execute("DROP TABLE weekly_kpi")
    conn.commit()
    with pytest.raises(psycopg.errors.UndefinedTable):
        compute(conn, "u", target=0.0)


def test_the_normal_path_equals_the_contract_function(conn):
    from growth_assets.model.contract import normal_approximation

    rng = np.random.default_rng(4)
    for i in range(40):
        add_theta(conn, f"n{i}", float(rng.normal(0, 2)), float(rng.uniform(0.05, 1.5)), T0)
    from growth_assets.metrics import compute_goal_attainment_probabilities as batch
    for target in (-1.0, 0.0, 2.5):
        out = batch(conn, [f"n{i}" for i in range(40)], target=target)
        for u, a in out.items():
            assert a.path == "normal"
            assert a.P == normal_approximation(a.mu, a.sigma, target), u


def test_calibrations_at_the_same_instant_give_one_answer_by_any_plan(conn, monkeypatch):
    """Two calibrations of a student at the same latest instant (two models, or versions): the
    Normal approximation takes the more precise (the smaller usable se), whichever plan reads
    them. The latest row was taken in whatever order a plan met them: a batch and single calls
    disagreed for about half of 300 such students (P 0.012 against 1.0)."""
    from growth_assets.metrics import compute_goal_attainment_probabilities

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "false")
    at = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
    users = [f"t{i:04d}" for i in range(300)]
    with conn.cursor() as cur:
        for model, theta, se in (("a", 0.9, 0.2), ("b", -0.9, 0.4), ("c", 5.0, 0.0), ("d", -5.0, None)):
            cur.executemany("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                            " VALUES (%s, %s, %s, %s, 'v', %s)", [(u, theta, se, model, at) for u in users])
    conn.commit()
    batch = compute_goal_attainment_probabilities(conn, users, target=0.0)
    single = {u: compute(conn, u, target=0.0) for u in users}
    assert {u: a.P for u, a in batch.items()} == single
    assert all(p == pytest.approx(float(norm.sf(0.0, loc=0.9, scale=0.2)), rel=1e-12) for p in single.values())
