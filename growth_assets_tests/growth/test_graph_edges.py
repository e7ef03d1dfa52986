"""The graph at its edges (session 21's review: each test failed on the code before its fix):
two runs of one partition graded out of order, a fit graded after the retention, run config
that cannot work, checks' results without their numbers, a horizon of 0 weeks. Fast: the
ReplayEngine, small cohorts."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import dagster as dg
import pytest

from growth_assets.db import connect
from growth_assets.defs import build_definitions
from growth_assets.defs.growth import weekly_assets
from growth_assets.settings import Settings
from growth_assets_tests.support.graph import NO_DATABASE, PARTITION, ReplayEngine, failure_text, resources, seed_db


def _count(url, sql, *args):
    with connect(url) as c:
        return c.execute(sql, args).fetchone()[0]


def _keys(*names):
    return [dg.AssetKey(n) for n in names]


# ---------------------------------------------------------------------------------------------
# 1. growth_brms_meta.fitted_at is the time of GRADING, not of fitting. Two runs of one
#    partition (the Monday tick and a Materialize in the UI: the tag limit holds only the weekly
#    job's runs, the pool serialises only the fit steps) whose downstream steps finish in the
#    other order: the older fit is graded last, becomes "fitted later", and its P replaces the
#    newer fit's P in weekly_kpi. README: weekly_kpi_P never replaces "of the same window, a P of
#    a passed run fitted later: a re-run of the partition".
# ---------------------------------------------------------------------------------------------
def test_an_older_fit_graded_late_does_not_replace_the_p_of_the_fit_made_after_it(db_url):
    url = seed_db(db_url, 20, seed=3)
    defs = build_definitions(Settings.from_env({}), **resources(url, ReplayEngine()))
    job = defs.resolve_job_def("weekly_growth_job")
    run1 = str(uuid.uuid4())
    # run 1 (the Monday tick): its fit A is stored; its downstream steps are delayed
    r = job.execute_in_process(partition_key=PARTITION, run_id=run1,
                               asset_selection=_keys("weekly_scores", "brms_posterior"))
    assert r.success
    time.sleep(1.1)
    # run 2 (a Materialize of the same partition): fit B, made after A, graded and published
    r2 = job.execute_in_process(partition_key=PARTITION)
    assert r2.success
    with connect(url) as c:
        (a,), (b,) = c.execute("SELECT run_id FROM growth_fit ORDER BY created_at").fetchall()
    assert _count(url, "SELECT count(DISTINCT kpis->>'P_run_id') FROM weekly_kpi WHERE kpis ? 'P'") == 1
    # run 1 goes on: grades its own fit A and merges its P
    r3 = job.execute_in_process(partition_key=PARTITION, run_id=run1,
                                asset_selection=_keys("growth_brms_meta", "weekly_kpi_P"))
    assert r3.success
    with connect(url) as c:
        p_runs = {x for (x,) in c.execute("SELECT DISTINCT kpis->>'P_run_id' FROM weekly_kpi WHERE kpis ? 'P'")}
        newest_passed = c.execute("SELECT run_id FROM growth_brms_meta WHERE partition_key = %s AND status = 'passed'"
                                  " ORDER BY fitted_at DESC, run_id DESC LIMIT 1", (PARTITION,)).fetchone()[0]
    # B was fitted later: its P must stay, and it must stay the partition's published run
    assert p_runs == {b}, f"fit A ({a}, made before B) replaced B's ({b}) P"
    assert newest_passed == b


# ---------------------------------------------------------------------------------------------
# 2. The panel retention deletes growth_panel_meta, and growth_brms_meta needs it to grade a
#    stored fit. README: once a fit is stored "nothing reads [its panel] but a refit of that
#    partition", and a fit stopped by a blocking check is graded `failed_checks` "also in a later
#    run that selects only the downstream assets". After the retention, that later run fails.
# ---------------------------------------------------------------------------------------------
def test_the_retention_keeps_the_panel_of_a_fit_not_yet_graded_until_it_is(db_url):
    url = seed_db(db_url, 20, seed=3)
    old = "2026-11-09"
    bad = resources(url, ReplayEngine(max_rhat=1.2))
    # the Monday run of `old`: the blocking R-hat check stops it before growth_brms_meta
    res = dg.materialize(weekly_assets, partition_key=old, resources=bad, raise_on_error=False)
    assert not res.success and res.is_node_untouched("growth_brms_meta")
    # next week's panel; the retention (keep_weeks 1) runs a week later
    assert dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(url, ReplayEngine()),
                          selection=["weekly_scores"]).success
    with connect(url) as c:
        c.execute("UPDATE growth_panel_meta SET created_at = created_at - interval '8 days'")
    defs = build_definitions(Settings.from_env({}), **resources(url, ReplayEngine()))

    def prune() -> int:
        pr = defs.resolve_job_def("panel_retention_job").execute_in_process(
            run_config={"ops": {"prune_growth_panels": {"config": {"keep_weeks": 1}}}})
        assert pr.success
        return pr.output_for_node("prune_growth_panels")

    # the old panel is past the retention, but its fit is not graded yet: kept
    assert prune() == 0
    # the later run that selects only the downstream assets, as README describes
    later = dg.materialize(weekly_assets, partition_key=old, resources=bad,
                           selection=["growth_brms_meta", "weekly_kpi_P"], raise_on_error=False)
    assert _count(url, "SELECT count(*) FROM growth_brms_meta WHERE status = 'failed_checks'") == 1, \
        failure_text(later)
    assert prune() == 1  # graded: the next retention deletes it


# ---------------------------------------------------------------------------------------------
# 3. GrowthSettings (overridable per run in the launchpad) accepts score_min >= score_max,
#    which BRMS_SCORE_RANGE refuses ("must be finite with lo < hi"). Every score is then left
#    out, an empty panel is stored, and the run stops at "panel_not_empty: 0 rows in the
#    window" -- the cause (the range) is named nowhere.
# ---------------------------------------------------------------------------------------------
def test_an_inverted_score_range_in_run_config_is_refused_naming_it(db_url):
    url = seed_db(db_url, 20, seed=3)
    res = dg.materialize(weekly_assets, partition_key=PARTITION, raise_on_error=False,
                         resources=resources(url, ReplayEngine(), score_min=5.0, score_max=-5.0))
    assert not res.success
    text = failure_text(res) + " ".join(e.description or "" for e in res.get_asset_check_evaluations())
    assert "score_min" in text or "BRMS_SCORE_RANGE" in text, text
    assert _count(url, "SELECT count(*) FROM growth_panel_meta") == 0  # nothing stored


# ---------------------------------------------------------------------------------------------
# 4. README (Checks): "Every result carries the observed value and the thresholds." With
#    BRMS_UPDATE_KPI=false weekly_kpi_P's two checks carry neither; current_week_published never
#    does. The alert sensor then posts "observed None, threshold None".
# ---------------------------------------------------------------------------------------------
def test_kpi_checks_carry_observed_and_threshold_when_nothing_is_written(db_url):
    url = seed_db(db_url, 20, seed=3)
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(url, ReplayEngine(), update_kpi=False))
    assert res.success
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    for name in ("p_within_0_1", "rows_written_equal_students_fitted"):
        assert "observed" in ev[name].metadata and "threshold" in ev[name].metadata, (name, ev[name].metadata)


def test_the_publication_check_carries_observed_and_threshold(db_url):
    from growth_assets.defs.alerts.sensors import AlertWebhook, check_alert
    from growth_assets.defs.growth.published import CURRENT_WEEK_PUBLISHED, publication_check_job

    defs = build_definitions(Settings.from_env({}), **resources(db_url, ReplayEngine()))
    job = defs.resolve_job_def(publication_check_job.name)
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(instance=instance, run_config={
            "ops": {f"weekly_kpi_P_{CURRENT_WEEK_PUBLISHED}": {"config": {"as_of": "2026-11-23T06:00:00+00:00"}}}})
        (ev,) = res.get_asset_check_evaluations()
        assert not ev.passed
        alert = check_alert(instance.get_run_by_id(res.run_id), ev, AlertWebhook(url="http://x"))
    assert "observed None" not in alert["text"], alert["text"]


def test_the_publication_check_names_the_utc_instant_of_an_as_of_in_another_zone():
    """as_of 2026-11-23T07:00+01:00 is 06:00 UTC: the check's text said "the week that closed
    before 2026-11-23 07:00 UTC" (the wall time of the zone given, labelled UTC). The partition
    was right: Dagster converts the instant itself."""
    ev = _publication_check("2026-11-23T07:00:00+01:00")
    assert not ev.passed and ev.metadata["partition"].value == "2026-11-16"
    assert "2026-11-23 06:00 UTC" in ev.description, ev.description


def _publication_check(as_of: str):
    job = build_definitions(Settings.from_env({})).resolve_job_def("weekly_p_published_job")
    op = next(iter(job.graph.node_dict))
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(instance=instance, run_config={"ops": {op: {"config": {"as_of": as_of}}}})
    (ev,) = res.get_asset_check_evaluations()
    return ev


# ---------------------------------------------------------------------------------------------
# 5. BRMS_HORIZON_WEEKS=0 (allowed: 0..520): the Monday tick requests the backtest of the very
#    partition it is fitting, as a separate run launched at the same moment. That run cannot
#    see the fit it should score (it fails "no published (passed) run", or scores a previous
#    run of the partition). README: the backtest of "the partition whose P_week that week
#    was" -- the run that scores it must come after that partition's P is published.
# ---------------------------------------------------------------------------------------------
def test_with_horizon_zero_the_tick_does_not_backtest_the_partition_it_is_fitting():
    defs = build_definitions(Settings.from_env({"BRMS_HORIZON_WEEKS": "0"}))
    s = defs.resolve_schedule_def("fit_bayesian_growth")
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc),
                                    repository_def=defs.get_repository_def(),
                                    # the runs unreadable: the tick follows the horizon setting
                                    resources={"growth": defs.resources["growth"], "postgres": NO_DATABASE})
    reqs = s.evaluate_tick(ctx).run_requests
    fit = reqs[0]
    concurrent = [r for r in reqs[1:] if r.partition_key == fit.partition_key]
    assert not concurrent, [(r.run_key, r.partition_key) for r in reqs]
    # P is for the week just fitted, inside its window: no backtest of it (nothing out of sample)
    assert [r.asset_selection for r in reqs] == [fit.asset_selection]
    assert dg.AssetKey("goal_forecast_backtest") not in fit.asset_selection


# ---------------------------------------------------------------------------------------------
# 6. BacktestThresholds accepts coverage_90_low > coverage_90_high: predictive_coverage_90 can
#    then never pass (and DiagnosticThresholds accepts an ERROR threshold milder than its WARN).
# ---------------------------------------------------------------------------------------------
def test_inverted_backtest_thresholds_are_refused():
    from growth_assets.defs.growth.backtest import BacktestThresholds

    from growth_assets.defs.growth.diagnostics import DiagnosticThresholds

    with pytest.raises(Exception, match="coverage_90_low"):
        BacktestThresholds(coverage_90_low=0.95, coverage_90_high=0.85)
    # the Brier skill is at most 1 and the check passes above the threshold: 1 could never pass
    with pytest.raises(Exception, match="min_brier_skill"):
        BacktestThresholds(min_brier_skill=1.0)
    assert BacktestThresholds(min_brier_skill=0.99).min_brier_skill == 0.99
    with pytest.raises(Exception, match="rhat_error"):
        DiagnosticThresholds(rhat_error=1.005)
    with pytest.raises(Exception, match="ess_error"):
        DiagnosticThresholds(ess_error=500.0)


def test_the_three_weeks_check_passes_at_its_threshold_and_warns_below_it(db_url):
    """The share of students with 3 or more weeks passes when it equals BRMS_MIN_SHARE_3_WEEKS
    (``>=``, as the resource's description says "at least"); a threshold a hair above it warns.
    A mutant with ``>`` warned at equality and no test saw it."""
    from growth_assets.defs.growth.assets import SCORES_THREE_WEEKS, weekly_scores

    url = seed_db(db_url, 12, seed=5)
    with connect(url) as c:
        c.execute("DELETE FROM mirt_ability WHERE user_id IN (SELECT DISTINCT user_id FROM mirt_ability"
                  " ORDER BY user_id LIMIT 5) AND fitted_at > %s", (datetime(2026, 9, 14, tzinfo=timezone.utc),))

    def share_check(threshold):
        res = dg.materialize([weekly_scores], partition_key=PARTITION,
                             resources=resources(url, ReplayEngine(), min_share_3_weeks=threshold))
        (ev,) = [e for e in res.get_asset_check_evaluations() if e.check_name == SCORES_THREE_WEEKS]
        return ev

    first = share_check(0.0)
    share = float(first.metadata["observed"].value)
    assert 0.0 < share < 1.0, share  # some students now have fewer than 3 weeks
    with connect(url) as c:
        n, k = c.execute("SELECT count(*), count(*) FILTER (WHERE cardinality(weeks) >= 3) FROM growth_panel").fetchone()
    exact = k / n
    assert abs(exact - share) < 1e-3
    assert share_check(exact).passed
    warned = share_check(exact + 1e-9)
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN


def test_a_refresh_p_of_the_run_for_users_it_did_not_fit_is_no_row_count_mismatch(db_url):
    """The weekday refresh writes P from the run's draws (P_run_id: the run) for active users
    the run did not fit, into the current week. weekly_kpi_P materialized again that week (a
    re-run of the partition's last step) counted those rows as "rows carrying this run's P"
    and failed ``rows_written_equal_students_fitted`` (ERROR: an alert) for P rightly written."""
    from growth_assets.defs.growth.assets import KPI_ROWS_MATCH

    url = seed_db(db_url, 20, seed=3)
    defs = build_definitions(Settings.from_env({}), **resources(url, ReplayEngine()))
    job = defs.resolve_job_def("weekly_growth_job")
    assert job.execute_in_process(partition_key=PARTITION).success
    with connect(url) as c:
        week, run_id = c.execute("SELECT week_start, kpis->>'P_run_id' FROM weekly_kpi WHERE kpis ? 'P' LIMIT 1").fetchone()
        c.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('new-user', %s, jsonb_build_object("
                  "'P', 0.4, 'sigma', 0.3, 'P_target', 0, 'P_week', '2026-12-07', 'P_run_id', %s::text,"
                  " 'P_source', 'update', 'P_window_end', '2026-11-23'))", (week, run_id))
    again = job.execute_in_process(partition_key=PARTITION, asset_selection=_keys("weekly_kpi_P"))
    (ev,) = [e for e in again.get_asset_check_evaluations() if e.check_name == KPI_ROWS_MATCH]
    assert ev.passed, ev.description
    # a fitted student whose row keeps a P of a newer window (the merge never replaces it) does
    # not carry the run's P: that is still a mismatch, named
    with connect(url) as c:
        c.execute("UPDATE weekly_kpi SET kpis = kpis || '{\"P_window_end\": \"2027-01-04\", \"P_run_id\": \"x\"}'"
                  " WHERE user_id = (SELECT min(user_id) FROM weekly_kpi WHERE user_id <> 'new-user')")
    third = job.execute_in_process(partition_key=PARTITION, asset_selection=_keys("weekly_kpi_P"))
    (ev,) = [e for e in third.get_asset_check_evaluations() if e.check_name == KPI_ROWS_MATCH]
    assert not ev.passed and ev.description == "19 rows carry this run's P for 20 students fitted", ev.description
