"""The real-time path's caches and week bounds, pinned by mutation probes (session 24): each
test passes on the code and failed on a plausible mutant no other test caught (its docstring
names it): the run guessed for a call's sums (``_RUN_GUESS`` / ``_reads_key``), the draws kept
per run (``_run_draws``), and the instant a week's P is computed as of (``_week_end``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest

from growth_assets import metrics
from growth_assets.db import connect
from growth_assets.metrics import explain_goal_attainment_probability as explain
from growth_assets.model.panel import WindowSums
from growth_assets_tests.metrics.helpers import store_fit
from growth_assets_tests.support.results import make_result

RUN_A = "native-20261123-043000"
RUN_B = "native-20261123-050000"  # the same window, fitted later: the latest passed run


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    monkeypatch.delenv("METRICS_DEFAULT_TARGET", raising=False)
    metrics._RUN_GUESS.clear()
    metrics._DRAWS_CACHE.clear()
    yield
    metrics._RUN_GUESS.clear()
    metrics._DRAWS_CACHE.clear()


def _draws(intercept: float, n: int = 50, sigma: float = 0.3) -> dict:
    rng = np.random.default_rng(1)
    return {"b_Intercept": intercept + 0.01 * rng.standard_normal(n), "b_week": np.full(n, 0.05),
            "sd_student_id__Intercept": np.full(n, 0.5), "sd_student_id__week": np.full(n, 0.03),
            "cor_student_id__Intercept__week": np.zeros(n), "sigma": np.full(n, sigma)}


def _run(run_id: str, sums: dict, draws: dict):
    ids = sorted(sums)
    n = [sums[u][0] for u in ids]
    res = replace(make_result(len(ids), run_id=run_id, ids=ids, n_obs=n), population_draws=draws)
    ws = WindowSums(np.array(ids, dtype=object), np.array(n),
                    *(np.array([sums[u][k] for u in ids], float) for k in range(1, 5)))
    return res, ws


def _fresh(c, user, target):
    metrics._RUN_GUESS.clear()
    metrics._DRAWS_CACHE.clear()
    return explain(c, user, target=target)


def test_a_later_run_of_the_same_window_answers_from_its_own_kept_sums(db_url):
    """Mutant: ``_reads_key`` compares the runs' windows only. A run re-fitted for the same
    window (a new run_id: a re-run of the partition after a late score inside the window) kept
    other window sums for the student; the call after it must fold in the new run's sums, not
    those read for the guessed (previous) run."""
    a, ws_a = _run(RUN_A, {"s00000": (3, 16.0, 146.0, 0.7, 5.4), "s00001": (2, 21.0, 221.0, 1.1, 11.6)},
                   _draws(0.0))
    # the late score of week 11 folded into s00000's window by the re-fit
    b, ws_b = _run(RUN_B, {"s00000": (4, 27.0, 267.0, 1.7, 16.4), "s00001": (2, 21.0, 221.0, 1.1, 11.6)},
                   _draws(0.0))
    with connect(db_url) as c:
        store_fit(c, a, window_sums=ws_a)
        c.execute("UPDATE growth_brms_meta SET fitted_at = %s WHERE run_id = %s",
                  (datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc), RUN_A))
        c.commit()
        first = explain(c, "s00000", target=0.5)  # the process now guesses run A
        store_fit(c, b, window_sums=ws_b)
        c.execute("UPDATE growth_brms_meta SET fitted_at = %s WHERE run_id = %s",
                  (datetime(2026, 11, 23, 5, 0, tzinfo=timezone.utc), RUN_B))
        c.commit()
        second = explain(c, "s00000", target=0.5)
        fresh = _fresh(c, "s00000", 0.5)
    assert (first.run_id, first.path, first.n_obs) == (RUN_A, "update", 3), first
    assert (fresh.run_id, fresh.path, fresh.n_obs) == (RUN_B, "update", 4), fresh
    assert (second.run_id, second.path, second.n_obs) == (RUN_B, "update", 4), (second.n_obs, second.reasons)
    assert (second.P, second.mu, second.sigma) == (fresh.P, fresh.mu, fresh.sigma)


def test_two_runs_whose_draws_one_transaction_wrote_are_not_confused(db_url):
    """Mutant: ``_run_draws`` keys its cache by the row's xmin without the run_id. Two runs'
    draws rows rewritten by one transaction (a maintenance UPDATE or a migration that touches
    every row of growth_population_draws) share an xmin: the call after the second run passed
    must read its own draws, not the first run's kept by the process."""
    a, ws_a = _run(RUN_A, {"s00000": (3, 16.0, 146.0, 0.7, 5.4)}, _draws(-1.0))
    b, ws_b = _run(RUN_B, {"s00000": (3, 16.0, 146.0, 0.7, 5.4)}, _draws(1.0, sigma=3.0))
    with connect(db_url) as c:
        store_fit(c, a, window_sums=ws_a)
        store_fit(c, b, window_sums=ws_b, status="failed_checks")
        c.commit()
        # every row rewritten in one transaction (write_fit's own savepoint gave each its own xid)
        c.execute("UPDATE growth_population_draws SET n_draws = n_draws")
        c.execute("UPDATE growth_brms_meta SET fitted_at = %s WHERE run_id = %s",
                  (datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc), RUN_A))
        c.commit()
        xmins = c.execute("SELECT count(DISTINCT xmin::text) FROM growth_population_draws").fetchone()[0]
        low = explain(c, "s00000", target=1.0)  # run A: its draws now kept by the process
        c.execute("UPDATE growth_brms_meta SET status = 'passed', fitted_at = %s WHERE run_id = %s",
                  (datetime(2026, 11, 23, 5, 0, tzinfo=timezone.utc), RUN_B))  # B passes (a regrade)
        c.commit()
        high = explain(c, "s00000", target=1.0)
        fresh = _fresh(c, "s00000", 1.0)
    assert xmins == 1
    assert (low.run_id, high.run_id) == (RUN_A, RUN_B) and low.path == high.path == "update"
    assert (high.P, high.mu) == (fresh.P, fresh.mu), (high.P, fresh.P)
    assert abs(high.P - low.P) > 0.05, (low.P, high.P)


def test_the_current_weeks_p_does_not_see_a_future_dated_theta(db_url, monkeypatch):
    """Mutant: ``_week_end`` returns the week's last instant even for the week that is not
    over. The daily refresh (``refresh_active_users``) reads the current week with its
    kpi_week: a theta dated later this week (a future-dated row) must not be its latest, as
    it is not for a call without kpi_week ('a future-dated row is not latest')."""
    from datetime import timedelta

    from growth_assets.metrics import compute_goal_attainment_probabilities as batch
    from growth_assets_tests.metrics.helpers import add_theta

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "false")
    import time

    def week_of(now):
        monday = (now - timedelta(days=now.weekday())).date()
        return monday, datetime.combine(monday + timedelta(days=7), datetime.min.time(), timezone.utc)

    now = datetime.now(timezone.utc)
    monday, week_end = week_of(now)
    if week_end - now < timedelta(seconds=10):  # the week's last seconds: the next week is the current one
        time.sleep((week_end - now).total_seconds() + 0.1)
        now = datetime.now(timezone.utc)
        monday, week_end = week_of(now)
    later = min(now + timedelta(minutes=10), week_end - timedelta(seconds=1))  # at least 9 s ahead
    with connect(db_url) as c:
        add_theta(c, "u", 0.0, 0.5, now - timedelta(days=30))
        add_theta(c, "u", 2.0, 0.5, later)  # future-dated, inside the current week
        week = batch(c, ["u"], target=1.0, kpi_week=monday)["u"]
        plain = batch(c, ["u"], target=1.0)["u"]
    assert plain.path == week.path == "normal" and plain.mu == 0.0
    assert (week.P, week.mu) == (plain.P, plain.mu), (week.mu, plain.mu)


def test_a_past_weeks_p_sees_a_theta_of_its_sunday(db_url, monkeypatch):
    """Mutant: ``_week_end`` ends the week on its Sunday 00:00 (``kpi_week + 6 days``). A week
    that is over has its P as of its last instant: a theta of its Sunday afternoon is the
    latest it may know."""
    from datetime import date, timedelta

    from growth_assets.metrics import compute_goal_attainment_probabilities as batch
    from growth_assets_tests.metrics.helpers import add_theta

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "false")
    week = date(2026, 11, 23)
    with connect(db_url) as c:
        add_theta(c, "u", 0.0, 0.5, datetime(2026, 11, 24, 9, tzinfo=timezone.utc))
        add_theta(c, "u", 2.0, 0.5, datetime(2026, 11, 29, 15, tzinfo=timezone.utc))  # its Sunday
        add_theta(c, "u", 4.0, 0.5, datetime(2026, 11, 30, 9, tzinfo=timezone.utc))  # the next week
        a = batch(c, ["u"], target=1.0, kpi_week=week)["u"]
    assert week + timedelta(days=6) == date(2026, 11, 29)
    assert (a.path, a.mu) == ("normal", 2.0), (a.path, a.mu, a.reasons)
