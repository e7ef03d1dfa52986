"""The real-time path's numbers against an independent per-draw computation (numpy, from the
stored draws and the student's own rows), at the window's edges, any horizon and target type;
and a week that is over, answered as of its end for a run's member as for anyone (session 23's
review: a member's P used the fit's whole window)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from growth_assets.metrics import (
    compute_goal_attainment_probabilities as batch,
    explain_goal_attainment_probability as explain,
)
from growth_assets.model.lines import conditional_line
from growth_assets.model.panel import Panel
from growth_assets_tests.metrics.helpers import add_theta, store_fit
from growth_assets_tests.support.results import make_result

WS = date(2026, 8, 31)  # window start; the run's week (window_end) is 2026-11-23
WE = date(2026, 11, 23)
H = 15
D = 200


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    monkeypatch.delenv("METRICS_DEFAULT_TARGET", raising=False)


def _draws():
    rng = np.random.default_rng(11)
    return {"b_Intercept": 0.1 * rng.standard_normal(D), "b_week": 0.05 + 0.01 * rng.standard_normal(D),
            "sd_student_id__Intercept": 0.5 + 0.05 * np.abs(rng.standard_normal(D)),
            "sd_student_id__week": 0.03 + 0.005 * np.abs(rng.standard_normal(D)),
            "cor_student_id__Intercept__week": np.clip(0.2 + 0.1 * rng.standard_normal(D), -0.9, 0.9),
            "sigma": 0.3 + 0.02 * np.abs(rng.standard_normal(D))}


def _at(week: int, days: int = 2, hour: int = 9) -> datetime:
    return datetime.combine(WS + timedelta(weeks=week, days=days), datetime.min.time(), timezone.utc) + timedelta(hours=hour)


def _scores(k: int) -> list[tuple[int, float]]:
    return [(w, -0.4 + 0.1 * k + 0.05 * w + 0.1 * np.sin(w + k)) for w in range(12)]


def _per_draw_p(d, weeks, ys, h, target):
    """Independent: numpy per draw from the student's (week, score) rows."""
    w, y = np.asarray(weeks, float), np.asarray(ys, float)
    sums = (len(w), w.sum(), (w * w).sum(), y.sum(), (w * y).sum())
    ma, mb, va, vb, cab = conditional_line(
        d["b_Intercept"], d["b_week"], d["sd_student_id__Intercept"], d["sd_student_id__week"],
        d["cor_student_id__Intercept__week"], d["sigma"], *(np.full(D, float(x)) for x in sums))
    m = ma + h * mb
    s = np.sqrt(va + 2 * h * cab + h * h * vb)
    return float(np.mean(ndtr((m - target) / s)))


@pytest.fixture
def run(conn):
    """3 students of a run with draws and window sums (their window scores in mirt_ability),
    and 'clone': a user the run did not fit, with exactly s00000's scores."""
    rows = []
    for k in range(3):
        for w, y in _scores(k):
            add_theta(conn, f"s{k:05d}", y, 0.2, _at(w))
            rows.append((f"s{k:05d}", w, y))
    for w, y in _scores(0):
        add_theta(conn, "clone", y, 0.2, _at(w))
    panel = Panel.from_frame(pd.DataFrame(rows, columns=["student_id", "week", "score"]))
    res = replace(make_result(3), population_draws=_draws())
    store_fit(conn, res, window_sums=panel.window_sums())
    conn.commit()
    return res


def test_kpi_week_over_is_p_as_of_its_end_for_members_too(conn, run):
    """compute_goal_attainment_probabilities: 'kpi_week ... for a week that is over, P as of
    its end (the scores and thetas up to its last instant)'. A member of the latest run and a
    user with the very same scores get the same P for a past week; the member's P used the
    fit's whole window (weeks after kpi_week), from the sums kept with her line."""
    kpi_week = WS + timedelta(weeks=8)  # over; the run's window goes on 4 more weeks
    out = batch(conn, ["s00000", "clone"], target=0.3, kpi_week=kpi_week)
    m, c = out["s00000"], out["clone"]
    assert m.path == c.path == "update", (m.path, m.reasons, c.path, c.reasons)
    assert m.n_obs == c.n_obs == 9, (m.n_obs, c.n_obs)  # weeks 0..8: up to the week's end
    assert m.P == pytest.approx(c.P, abs=1e-9), (m.P, c.P)


def test_update_with_new_scores_matches_an_independent_per_draw_computation(conn, run):
    """Member and non-member, new scores: one at the window's end instant (Monday 00:00 UTC,
    week 12), one in a later week's partial data, two observations in one week (their mean),
    horizons before the window's end, at it, and far after; targets int/numpy."""
    d = run.population_draws
    add_theta(conn, "s00001", 0.9, 0.2, datetime.combine(WE, datetime.min.time(), timezone.utc))  # week 12, 00:00
    add_theta(conn, "s00001", 0.5, 0.2, _at(13, 0, 1))
    add_theta(conn, "s00001", 0.7, 0.2, _at(13, 1, 1))  # week 13: mean 0.6
    add_theta(conn, "clone", 1.1, 0.2, datetime.combine(WE, datetime.min.time(), timezone.utc) - timedelta(microseconds=1))
    now = datetime.now(timezone.utc)
    cur_monday = now.date() - timedelta(days=now.weekday())
    add_theta(conn, "clone", 0.8, 0.2, datetime.combine(cur_monday, datetime.min.time(), timezone.utc))
    cur_w = (cur_monday - WS).days // 7
    s1 = _scores(1) + [(12, 0.9), (13, 0.6)]
    cl = [(w, y) for w, y in _scores(0) if w != 11] + [(11, (_scores(0)[11][1] + 1.1) / 2), (cur_w, 0.8)]
    for h_weeks in (5, 11, 15, 200):
        for target in (0, np.float64(0.3), np.int64(1)):
            hz = WS + timedelta(weeks=h_weeks)
            out = batch(conn, ["s00001", "clone", "s00001"], target=target, horizon=hz)
            a, c = out["s00001"], out["clone"]
            assert (a.path, a.n_new, a.n_obs) == ("update", 2, 14), (a.path, a.n_new, a.n_obs, a.reasons)
            assert (c.path, c.n_new, c.n_obs) == ("update", 1, 13), (c.path, c.n_new, c.n_obs, c.reasons)
            assert a.P == pytest.approx(_per_draw_p(d, *zip(*s1), h_weeks, float(target)), abs=1e-3)
            assert c.P == pytest.approx(_per_draw_p(d, *zip(*cl), h_weeks, float(target)), abs=1e-3)
            one = explain(conn, "s00001", target=target, horizon=hz)
            assert (one.path, one.n_new) == ("update", 2) and one.P == pytest.approx(a.P, abs=1e-12)


def test_member_whose_window_rows_were_deleted_still_gets_the_fits_view(conn, run):
    d = run.population_draws
    conn.execute("DELETE FROM mirt_ability WHERE user_id = 's00002'")
    conn.commit()
    a = explain(conn, "s00002", target=0.25)
    assert a.path == "update" and a.n_obs == 12 and a.n_new == 0
    assert a.P == pytest.approx(_per_draw_p(d, *zip(*_scores(2)), H, 0.25), abs=1e-3)


def test_a_week_that_is_over_is_answered_without_the_runs_stored_lines(conn):
    """A run without population draws answers a member from her stored line posterior, which saw
    the whole window: for a week that is over, the member is answered as anyone else, by the
    population path from her scores up to that week's end."""
    for k in range(3):
        for w, y in _scores(k):
            add_theta(conn, f"s{k:05d}", y, 0.2, _at(w))
    for w, y in _scores(0):
        add_theta(conn, "clone", y, 0.2, _at(w))
    store_fit(conn, replace(make_result(3), population_draws=None))
    conn.commit()
    out = batch(conn, ["s00000", "clone"], target=0.3, kpi_week=WS + timedelta(weeks=8))
    m, c = out["s00000"], out["clone"]
    assert m.path == c.path == "population", (m.path, m.reasons, c.path, c.reasons)
    assert any("ends before run" in r for r in m.reasons), m.reasons
    assert m.n_obs == c.n_obs == 9 and m.P == pytest.approx(c.P, abs=1e-12)
    now = batch(conn, ["s00000"], target=0.3)["s00000"]  # the current week: the stored line, as before
    assert now.path == "run", now.reasons
