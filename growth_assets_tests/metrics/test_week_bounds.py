"""Boundaries of the real-time P path no test pinned (session 23's mutation probes: each test
fails on a mutant of the code, a plausible bug, that the suite let through): a theta exactly at
BRMS_SCORE_RANGE's bounds, a week that is over up to its last microsecond, and the week of an
active user from Monday 00:00 UTC inclusive to the next Monday exclusive."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from scipy.stats import norm

from growth_assets.metrics import (
    active_users,
    compute_goal_attainment_probabilities as batch,
    explain_goal_attainment_probability as explain,
    refresh_active_users,
)
from growth_assets_tests.metrics.helpers import add_theta, kpis

WEEK = date(2026, 11, 23)
NEXT = WEEK + timedelta(weeks=1)


def _utc(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), timezone.utc)


@pytest.fixture
def normal_only(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "false")
    monkeypatch.delenv("METRICS_DEFAULT_TARGET", raising=False)


def test_a_theta_exactly_at_the_score_range_bounds_is_inside_it(conn, normal_only, monkeypatch):
    """Path 3: 'a theta outside BRMS_SCORE_RANGE ... no P': the range is closed, a theta equal
    to a bound is inside it (the same closed range as the panel's score_lo/score_hi)."""
    monkeypatch.setenv("BRMS_SCORE_RANGE", "-3,3")
    add_theta(conn, "lo", -3.0, 0.5, _utc(WEEK))
    add_theta(conn, "hi", 3.0, 0.5, _utc(WEEK))
    add_theta(conn, "out", 3.000001, 0.5, _utc(WEEK))
    lo, hi, out = (explain(conn, u, target=0.0) for u in ("lo", "hi", "out"))
    assert (lo.path, hi.path, out.path) == ("normal", "normal", "none"), (lo.reasons, hi.reasons)
    assert lo.P == pytest.approx(norm.sf(6.0), rel=1e-9) and hi.P == pytest.approx(norm.sf(-6.0), rel=1e-12)


def test_a_weeks_p_does_not_see_a_theta_of_the_next_mondays_first_instant(conn, normal_only):
    """_week_end: a week that is over gets its P 'as of its end', its last instant; a theta
    fitted at the next Monday 00:00:00 UTC is of the next week (active_users counts it there)."""
    add_theta(conn, "u", 0.0, 0.5, _utc(WEEK) + timedelta(days=3))
    add_theta(conn, "u", 1.0, 0.5, _utc(NEXT))  # the next week's first instant
    a = batch(conn, ["u"], target=0.0, kpi_week=WEEK)["u"]
    assert a.mu == 0.0 and a.P == pytest.approx(0.5), (a.mu, a.P)
    assert active_users(conn, WEEK) == ["u"] and active_users(conn, NEXT) == ["u"]
    refresh_active_users(conn, WEEK, target=0.0)
    conn.commit()
    assert kpis(conn, "u", WEEK)["P"] == pytest.approx(0.5)


def test_active_users_week_bounds_of_a_theta_are_monday_00_utc_inclusive_to_next_monday_exclusive(conn):
    """active_users: 'fitted_at in the week, UTC': [Monday 00:00, next Monday 00:00)."""
    add_theta(conn, "first", 0.0, 0.5, _utc(WEEK))  # the week's first instant: in it
    add_theta(conn, "before", 0.0, 0.5, _utc(WEEK) - timedelta(microseconds=1))  # the Sunday before
    add_theta(conn, "next", 0.0, 0.5, _utc(NEXT))  # the next week's first instant: not in it
    add_theta(conn, "last", 0.0, 0.5, _utc(NEXT) - timedelta(microseconds=1))  # the week's last instant
    assert active_users(conn, WEEK) == ["first", "last"]
