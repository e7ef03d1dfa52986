"""goal_forecast_backtest at its edges (session 21's review: each test failed on the code before
its fix): the baseline's latest calibration judged as spec §7 reads it, no theta baseline for an
accuracy run, the published run scored, no in-sample backtest (BRMS_HORIZON_WEEKS=0)."""

import dagster as dg
import numpy as np
import pytest

from growth_assets.db import connect
from growth_assets.defs.growth import BacktestThresholds, goal_forecast_backtest, weekly_assets
from growth_assets.demo.cohort import seed_cohort
from growth_assets_tests.growth.test_backtest import MODEL_TRUE, PAST, late_calibration
from growth_assets_tests.support.graph import AS_OF, ReplayEngine, failure_text, resources

def _fit(url, students=60, **growth):
    with connect(url) as conn:
        seed_cohort(conn, students, 16, seed=5, as_of=AS_OF, params=MODEL_TRUE)
    res = resources(url, engine=ReplayEngine(), **growth)
    res["backtest_thresholds"] = BacktestThresholds()
    r = dg.materialize(weekly_assets, partition_key=PAST, resources=res)
    assert r.success, failure_text(r)
    return res


@pytest.mark.parametrize("bad_theta", [float("nan"), 5000.0, float("inf")])
def test_latest_calibration_with_unusable_theta_is_no_baseline(db_url, bad_theta):
    """Spec §7 (metrics' rule, metrics._THETA_SQL + the chain): the latest calibration with a
    non-NULL theta is read, and a NaN / out-of-BRMS_SCORE_RANGE theta gives NO P. The backtest's
    ``base`` CTE filters ``theta BETWEEN lo AND hi`` *inside* the DISTINCT ON, so it skips that
    latest row and scores an older calibration as the baseline: a P §7 never published."""
    _fit(db_url)
    before, after, sid = late_calibration(db_url, bad_theta, 0.3)
    j = after["ids"].index(sid)
    # §7 as it stood at publication: the latest calibration (theta=bad) -> no P -> no baseline
    assert not np.isfinite(after["theta"][j]), (
        f"baseline for {sid} fell back to an older calibration theta={after['theta'][j]}, se={after['se'][j]}"
        f" (was {before['theta'][before['ids'].index(sid)]}) although the latest one (theta={bad_theta}) publishes no P")


def test_accuracy_runs_have_no_normal_baseline(db_url):
    """With score source ``accuracy`` the target is a share correct and spec §7 / metrics publish no
    Normal P (metrics: "the target is a share correct ... mirt_ability's theta is on another
    scale"). The backtest still scores Normal(theta, se) - a theta-scale forecast - against realised
    shares correct, and reports a Brier skill against it."""
    res = _fit(db_url, score_source="accuracy", target=0.7)
    bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res)
    assert bt.success, failure_text(bt)
    md = bt.asset_materializations_for_node("goal_forecast_backtest")[0].metadata
    print({k: getattr(v, "value", v) for k, v in md.items() if "picture" not in k and k not in
           ("reliability", "pit_histogram", "reliability_table")})
    # and the skill check, with nothing to be skilled against, says so rather than WARN every week
    skill = next(e for e in bt.get_asset_check_evaluations() if e.check_name == "brier_skill_vs_normal")
    assert skill.passed and "no Normal baseline" in skill.description
    assert md["students_with_baseline"].value == 0, (
        f"{md['students_with_baseline'].value} students scored against a theta-scale Normal baseline"
        f" on accuracy data; brier_skill={md['brier_skill'].value}, coverage_90_baseline="
        f"{md['coverage_90_baseline'].value}")


def test_the_scored_run_is_the_one_whose_P_was_published(db_url):
    """Spec §10 scores "a published P"; README: the backtest "scores the published run of
    partition k". A refit of the partition that passed growth_brms_meta but whose P never
    reached weekly_kpi (weekly_kpi_P not run / failed / BRMS_UPDATE_KPI=false) is not what
    weekly_kpi published, yet ``_RUN`` picks it (newest passed run, no look at weekly_kpi)."""
    import time

    from growth_assets.defs.growth import brms_posterior, growth_brms_meta, weekly_scores

    res = _fit(db_url)
    with connect(db_url) as c:
        published = c.execute("SELECT DISTINCT kpis->>'P_run_id' FROM weekly_kpi WHERE kpis ? 'P_run_id'"
                              " AND kpis->>'P_week' IS NOT NULL").fetchall()
    time.sleep(1.1)  # run ids carry the second
    r = dg.materialize([weekly_scores, brms_posterior, growth_brms_meta], partition_key=PAST, resources=res)
    assert r.success, failure_text(r)
    bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res)
    assert bt.success, failure_text(bt)
    scored = bt.asset_materializations_for_node("goal_forecast_backtest")[0].metadata["run_id"].value
    assert [p[0] for p in published] == [scored], (published, scored)


def test_horizon_zero_is_not_backtested_in_sample(db_url):
    """With BRMS_HORIZON_WEEKS=0, P_week is the window's last week: its realised scores are rows
    the fit saw, so the 'predictive' was conditioned on them (coverage_90 0.979 on data from the
    model itself, a WARN on a perfect model). The backtest refuses it, saying why."""
    with connect(db_url) as conn:
        seed_cohort(conn, 60, 16, seed=21, as_of=AS_OF, params=MODEL_TRUE)
    res = resources(db_url, n_chains=2, n_samples=400, horizon_weeks=0)
    res["backtest_thresholds"] = BacktestThresholds()
    fit = dg.materialize(weekly_assets, partition_key=PAST, resources=res)
    assert fit.success, failure_text(fit)
    bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res, raise_on_error=False)
    assert not bt.success
    assert "inside its own data window" in failure_text(bt)
