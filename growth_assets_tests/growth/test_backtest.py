"""goal_forecast_backtest against a real PostgreSQL and real native fits: a published P
scored when its horizon week has arrived (spec §10)."""

import base64
import io
import re
from datetime import date

import dagster as dg
import pytest
from PIL import Image

from growth_assets.db import connect
from growth_assets.defs import build_definitions
from growth_assets.defs.growth import (BacktestThresholds, brms_posterior, goal_forecast_backtest, panel_retention_job,
                                      weekly_assets, weekly_scores)
from growth_assets.defs.growth.backtest import COVERAGE_CHECK, SKILL_CHECK
from growth_assets.demo.cohort import CohortParams, seed_cohort
from growth_assets.settings import Settings
from growth_assets_tests.alerts.test_failure_alerts import tick
from growth_assets_tests.support.graph import AS_OF, ReplayEngine, failure_text, resources
from growth_assets_tests.support.receiver import Receiver

# 16 weeks of history before AS_OF (2026-11-23): the run of partition 2026-10-19 (window
# 2026-08-03 .. 2026-10-19) forecast the week of 2026-11-16, which has closed
PAST = "2026-10-19"
P_WEEK = date(2026, 11, 16)
# spec §2's model exactly (every student calibrated in mirt_ability, one source), growing 0.08
# a week: the skill over spec §7's Normal is what the growth and the residual it ignores are
# worth (0.34-0.41 over seeds 21, 31, 41 here; with the demo cohort's 0.05 a week, 0.31-0.37)
MODEL_TRUE = CohortParams(share_topic_only=0.0, share_daily_only=0.0, slope_mean=0.08)


def _run(url, students, seed, params=MODEL_TRUE, shift=0.0, instance=None, **growth):
    with connect(url) as conn:
        seed_cohort(conn, students, 16, seed=seed, as_of=AS_OF, params=params)
        if shift:  # the model breaks: every score of the horizon week jumps
            conn.execute("UPDATE mirt_ability SET theta = theta + %s WHERE fitted_at >= %s", (shift, P_WEEK))
    res = resources(url, **{"n_chains": 4, "n_samples": 1000, **growth})
    res["backtest_thresholds"] = BacktestThresholds()
    fit = dg.materialize(weekly_assets, partition_key=PAST, resources=res, instance=instance)
    assert fit.success, failure_text(fit)
    bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res, instance=instance)
    return fit, bt


def _png(md: str) -> Image.Image:
    m = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert m, md[:80]
    raw = base64.b64decode(m.group(1))
    assert 1_000 < len(raw) <= 150_000
    img = Image.open(io.BytesIO(raw))
    img.verify()
    return Image.open(io.BytesIO(raw))


@pytest.mark.slow
def test_on_data_from_the_model_the_forecast_is_calibrated_and_beats_the_normal_baseline(db_url):
    fit, bt = _run(db_url, 3000, seed=21)
    assert bt.success, failure_text(bt)
    md = bt.asset_materializations_for_node("goal_forecast_backtest")[0].metadata
    run_id = fit.asset_materializations_for_node("growth_brms_meta")[0].metadata["run_id"].value
    assert md["run_id"].value == run_id and md["P_week"].value == P_WEEK.isoformat()
    assert md["students_scored"].value >= 2000 and md["predictive"].value.startswith("population draws")
    # binomial sd of the 90 % coverage on >= 2,000 students is <= 0.0067: 0.87-0.93 is 4.5 sd
    assert 0.87 <= md["coverage_90_model"].value <= 0.93
    assert 0.45 <= md["coverage_50_model"].value <= 0.55
    assert md["pit_uniformity_p"].value > 0.01
    assert md["brier_skill"].value > 0.3
    checks = {e.check_name: e for e in bt.get_asset_check_evaluations()}
    assert checks[COVERAGE_CHECK].passed and checks[SKILL_CHECK].passed
    for key in ("reliability", "pit_histogram"):
        assert _png(md[key].value).size[0] > 200
    with connect(db_url) as c:
        rows = dict(c.execute("SELECT measure, model FROM growth_forecast_backtest WHERE run_id = %s",
                              (run_id,)).fetchall())
        n, week, target = c.execute("SELECT min(n_students), min(horizon_week), min(target)"
                                    " FROM growth_forecast_backtest WHERE run_id = %s AND measure = 'coverage_90'",
                                    (run_id,)).fetchone()
    assert rows["coverage_90"] == pytest.approx(md["coverage_90_model"].value, abs=1e-4)
    assert {"coverage_50", "coverage_90", "pit_uniformity_p", "brier", "log_score", "brier_skill",
            "reliability"} <= set(rows)
    assert n == md["students_scored"].value and week == P_WEEK and target == 0.0
    # the fit's own pictures: the population line, P and the six parameters, and the trend
    post = fit.asset_materializations_for_node("brms_posterior")[0].metadata
    for key in ("picture_population_line", "picture_P", "picture_parameters"):
        assert _png(post[key].value).size[1] > 100
    meta = fit.asset_materializations_for_node("growth_brms_meta")[0].metadata
    assert _png(meta["diagnostics_trend"].value).size[0] > 300


@pytest.mark.slow
def test_a_jump_of_two_sds_in_the_horizon_week_fires_the_coverage_warning_and_an_alert(db_url):
    defs = build_definitions(Settings.from_env({}))
    with dg.instance_for_test() as instance, Receiver() as rx:
        _, cursor = tick(instance, defs, rx.url, None)  # the sensor's first tick starts from now
        _, bt = _run(db_url, 600, seed=22, shift=2 * MODEL_TRUE.sigma, instance=instance, n_chains=2,
                     n_samples=1000)
        assert bt.success  # WARN checks do not fail the run
        checks = {e.check_name: e for e in bt.get_asset_check_evaluations()}
        cov = checks[COVERAGE_CHECK]
        assert not cov.passed and cov.severity == dg.AssetCheckSeverity.WARN
        assert cov.metadata["observed"].value < 0.8
        tick(instance, defs, rx.url, cursor)
    alerts = [p for p in rx.posts if p.get("check") == COVERAGE_CHECK]
    assert len(alerts) == 1 and alerts[0]["severity"] == "WARN"
    assert alerts[0]["asset"] == "goal_forecast_backtest" and alerts[0]["partition"] == PAST
    assert alerts[0]["run_id"] == bt.run_id


def test_scoring_again_replaces_the_rows_and_an_open_horizon_is_refused(db_url):
    with connect(db_url) as conn:
        seed_cohort(conn, 60, 16, seed=5, as_of=AS_OF, params=MODEL_TRUE)
    res = resources(db_url, engine=ReplayEngine())
    res["backtest_thresholds"] = BacktestThresholds()
    assert dg.materialize(weekly_assets, partition_key=PAST, resources=res).success
    for _ in range(2):
        bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res)
        assert bt.success, failure_text(bt)
    with connect(db_url) as c:
        per_measure = c.execute("SELECT measure, count(*) FROM growth_forecast_backtest GROUP BY measure").fetchall()
    assert per_measure and all(n == 1 for _, n in per_measure)
    # the run of the latest partition forecasts a week that has not happened yet
    latest = "2026-11-16"
    assert dg.materialize(weekly_assets, partition_key=latest, resources=res).success
    early = dg.materialize([goal_forecast_backtest], partition_key=latest, resources=res, raise_on_error=False)
    assert not early.success
    assert "forecasts the week of 2026-12-14, which closes on 2026-12-21" in failure_text(early)


def test_a_partition_without_a_published_run_is_a_clear_error(db_url):
    res = resources(db_url)
    res["backtest_thresholds"] = BacktestThresholds()
    r = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res, raise_on_error=False)
    assert not r.success and f"no published (passed) run for partition {PAST}" in failure_text(r)


def _measures(url: str, run_id: str) -> dict[str, tuple]:
    with connect(url) as c:
        return {m: (model, baseline, n) for m, model, baseline, n in c.execute(
            "SELECT measure, model, baseline, n_students FROM growth_forecast_backtest WHERE run_id = %s",
            (run_id,))}


def test_a_pruned_panel_does_not_stop_the_backtest_and_old_fits_still_read_theirs(db_url):
    """The backtest reads each student's window sums from her stored line (brms_posterior keeps
    them), so it scores the same after ``panel_retention_job`` deleted the run's panel; a fit
    stored without the sums (before migration 0007) still reads them from its panel."""
    with connect(db_url) as conn:
        seed_cohort(conn, 300, 16, seed=6, as_of=AS_OF, params=MODEL_TRUE)
    res = resources(db_url, n_chains=2, n_samples=500)
    res["backtest_thresholds"] = BacktestThresholds()
    fit = dg.materialize(weekly_assets, partition_key=PAST, resources=res)
    run_id = fit.asset_materializations_for_node("growth_brms_meta")[0].metadata["run_id"].value

    def score() -> dict[str, tuple]:
        bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res, raise_on_error=False)
        assert bt.success, failure_text(bt)
        return _measures(db_url, run_id)

    with connect(db_url) as c:  # as a fit stored before 0007: no window sums beside the lines
        kept = c.execute("SELECT user_id, sum_w, sum_ww, sum_y, sum_wy FROM growth_student_posterior"
                         " WHERE run_id = %s", (run_id,)).fetchall()
        c.execute("UPDATE growth_student_posterior SET sum_w = NULL, sum_ww = NULL, sum_y = NULL, sum_wy = NULL"
                  " WHERE run_id = %s", (run_id,))
    from_panel_era = score()
    with connect(db_url) as c:
        c.cursor().executemany("UPDATE growth_student_posterior SET sum_w = %s, sum_ww = %s, sum_y = %s,"
                               " sum_wy = %s WHERE run_id = %s AND user_id = %s",
                               [(*r[1:], run_id, r[0]) for r in kept])
    with_sums = score()
    assert with_sums["coverage_90"][2] >= 200  # students scored
    for m, (model, baseline, n) in with_sums.items():
        assert from_panel_era[m][2] == n, m
        for a, b in ((model, from_panel_era[m][0]), (baseline, from_panel_era[m][1])):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12), m

    # a later panel, and the run's panel built long ago: the retention deletes it
    assert dg.materialize([weekly_scores], partition_key="2026-11-16", resources=res).success
    with connect(db_url) as c:
        c.execute("UPDATE growth_panel_meta SET created_at = now() - interval '60 days'"
                  " WHERE panel_id = (SELECT panel_id FROM growth_fit WHERE run_id = %s)", (run_id,))
    prune = panel_retention_job.execute_in_process(
        resources={"postgres": res["postgres"]},
        run_config={"ops": {"prune_growth_panels": {"config": {"keep_weeks": 2}}}})
    assert prune.success and prune.output_for_node("prune_growth_panels") == 1
    with connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM growth_panel p JOIN growth_fit f USING (panel_id)"
                         " WHERE f.run_id = %s", (run_id,)).fetchone()[0] == 0
    assert _same(score(), with_sums)
    # a fit stored without the sums whose panel was pruned: its students are not scored, and
    # the backtest says how many and why (it left them out without a word)
    legacy = [r[0] for r in kept[::3]]
    with connect(db_url) as c:
        c.execute("UPDATE growth_student_posterior SET sum_w = NULL, sum_ww = NULL, sum_y = NULL, sum_wy = NULL"
                  " WHERE run_id = %s AND user_id = ANY(%s)", (run_id, legacy))
    bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res)
    meta = bt.asset_materializations_for_node("goal_forecast_backtest")[0].metadata
    unscored = meta["students_without_window_sums"].value
    assert 0 < unscored <= len(legacy)
    assert meta["students_scored"].value + unscored == with_sums["coverage_90"][2]
    with connect(db_url) as c:
        c.execute("UPDATE growth_student_posterior SET sum_w = NULL, sum_ww = NULL, sum_y = NULL, sum_wy = NULL"
                  " WHERE run_id = %s", (run_id,))
    bt = dg.materialize([goal_forecast_backtest], partition_key=PAST, resources=res, raise_on_error=False)
    assert not bt.success and re.search(r"\d+ students of run \S+ with a realised score have no window sums",
                                        failure_text(bt)), failure_text(bt)
    assert "materialize weekly_scores of partition 2026-10-19" in failure_text(bt)
    # a refit of the pruned partition asks for its panel to be built again
    refit = dg.materialize([brms_posterior], partition_key=PAST, resources=res, raise_on_error=False)
    assert not refit.success and "materialize weekly_scores of this partition first" in failure_text(refit)


def _same(a: dict[str, tuple], b: dict[str, tuple]) -> bool:
    assert a.keys() == b.keys()
    for m in a:
        assert a[m][2] == b[m][2], m
        for x, y in zip(a[m][:2], b[m][:2]):
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-12, abs=1e-15), m
    return True


def test_the_baseline_is_the_latest_calibration_as_spec_7_read_it_even_when_its_se_is_unusable(db_url):
    """Spec §7 reads a student's latest calibration and publishes no P when its se is NULL or
    0. The backtest filtered on se > 0 before it chose the latest row, so it fell back to an
    older calibration and scored a baseline P that §7 never published."""
    import numpy as np

    with connect(db_url) as conn:
        seed_cohort(conn, 200, 16, seed=5, as_of=AS_OF, params=MODEL_TRUE)
    res = resources(db_url, n_chains=2, n_samples=400)
    assert dg.materialize(weekly_assets, partition_key=PAST, resources=res).success
    for se in (None, 0.0):  # her latest calibration before the run's week
        before, after, sid = late_calibration(db_url, 2.5, se)
        j = after["ids"].index(sid)
        assert not np.isfinite(after["theta"][j]) or not np.isfinite(after["se"][j]) or after["se"][j] <= 0, se
        has = np.isfinite(after["theta"]) & np.isfinite(after["se"]) & (after["se"] > 0)
        assert has.sum() == np.isfinite(before["theta"]).sum() - 1


def late_calibration(db_url, theta, se):
    """The backtest's students of PAST's run (``scored_students``) before and after one of them
    with a baseline gets a calibration (theta, se) an hour before the run's window ended, her
    latest when P was published (rolled back after); and her id."""
    from datetime import datetime, timedelta, timezone

    import numpy as np

    from growth_assets.defs.growth import backtest as B
    from growth_assets.defs.resources import GrowthSettings

    growth, now = GrowthSettings(), datetime.now(timezone.utc)
    with connect(db_url) as conn:
        run = dict(zip(B.RUN_COLUMNS, conn.execute(B._RUN, (PAST,)).fetchone(), strict=True))
        p_week = run["window_start"] + timedelta(weeks=int(run["horizon_week"]))
        before = B.scored_students(conn, run, p_week, growth, now)
        sid = before["ids"][int(np.flatnonzero(np.isfinite(before["theta"]))[0])]
        conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                     " VALUES (%s, %s, %s, 'late', 'v1', %s)",
                     (sid, theta, se, datetime.combine(run["window_end"], datetime.min.time(), timezone.utc)
                      - timedelta(hours=1)))
        after = B.scored_students(conn, run, p_week, growth, now)
        conn.rollback()
    return before, after, sid
