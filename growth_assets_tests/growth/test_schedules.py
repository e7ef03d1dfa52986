from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pytest

from growth_assets.db import connect
from growth_assets.defs import build_definitions
from growth_assets.defs.growth import weekly_assets
from growth_assets.defs.resources import PostgresResource
from growth_assets.demo.cohort import seed_cohort
from growth_assets.settings import Settings
from growth_assets_tests.support.graph import AS_OF, NO_DATABASE, ReplayEngine, failure_text, resources


@pytest.fixture(scope="module")
def defs():
    return build_definitions(Settings.from_env({}))


def _tick(defs, when: datetime, postgres: PostgresResource = NO_DATABASE):
    s = defs.resolve_schedule_def("fit_bayesian_growth")
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def(),
                                    resources={"growth": defs.resources["growth"], "postgres": postgres})
    return s.evaluate_tick(ctx).run_requests


WEEKLY = {"weekly_scores", "brms_posterior", "growth_brms_meta", "weekly_kpi_P"}


def test_monday_tick_runs_the_week_that_just_closed_and_scores_the_run_whose_horizon_it_was(defs, caplog):
    """With the runs unreadable (no database answers), the partition today's horizon points to."""
    s = defs.resolve_schedule_def("fit_bayesian_growth")
    assert s.cron_schedule == "30 4 * * 1" and s.execution_timezone == "UTC"
    assert s.job_name == "monday_job"
    fit, backtest = _tick(defs, datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
    assert fit.partition_key == "2026-11-16"
    assert {k.to_user_string() for k in fit.asset_selection} == WEEKLY
    assert fit.tags["growth/fit"] == "weekly"  # the instance's one-fit-at-a-time pool, as weekly_growth_job
    # the run of partition 2026-10-19 forecast the week of 2026-11-16 (4 weeks after its window)
    assert backtest.partition_key == "2026-10-19" and backtest.run_key == "backtest:2026-10-19"
    assert [k.to_user_string() for k in backtest.asset_selection] == ["goal_forecast_backtest"]
    assert "growth/fit" not in backtest.tags
    nxt = _tick(defs, datetime(2026, 11, 30, 4, 30, tzinfo=timezone.utc))
    assert [r.partition_key for r in nxt] == ["2026-11-23", "2026-10-26"]
    assert "could not be read (OperationalError)" in caplog.text and "BRMS_HORIZON_WEEKS=4" in caplog.text


def test_a_P_published_under_another_horizon_setting_is_scored_when_its_week_closes(db_url):
    """Spec §10: every published P is scored when its week arrives. The tick chose the partition
    to score from today's BRMS_HORIZON_WEEKS: a partition fitted when the horizon was 6 (its P
    for the week of 2026-11-16) was never scored once the setting was 4 again, and the tick of
    2026-11-23 scored 2026-10-19 instead, whose run has no P for that week. The stored runs'
    own horizons now say which partitions to score."""
    with connect(db_url) as conn:
        seed_cohort(conn, 60, 20, seed=5, as_of=AS_OF)
    fitted = resources(db_url, engine=ReplayEngine(), horizon_weeks=6)
    r = dg.materialize(weekly_assets, partition_key="2026-10-05", resources=fitted)
    assert r.success, failure_text(r)
    with connect(db_url) as c:
        ws, h = c.execute("SELECT window_start, horizon_week FROM growth_brms_meta"
                          " WHERE partition_key = '2026-10-05'").fetchone()
    assert ws + timedelta(weeks=h) == date(2026, 11, 16)  # its P_week
    defs = build_definitions(Settings.from_env({"BRMS_HORIZON_WEEKS": "4"}))
    backtests = {day: [q.partition_key for q in _tick(defs, datetime(2026, 11, day, 4, 30, tzinfo=timezone.utc),
                                                      fitted["postgres"])[1:]]
                 for day in (16, 23, 30)}
    # only the tick after the week of 2026-11-16, and only the partition with a P for it
    assert backtests == {16: [], 23: ["2026-10-05"], 30: []}


def test_without_the_runs_the_backtest_follows_the_horizon_setting():
    defs = build_definitions(Settings.from_env({"BRMS_HORIZON_WEEKS": "2"}))
    assert [r.partition_key for r in _tick(defs, datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))] == [
        "2026-11-16", "2026-11-02"]


def test_no_backtest_before_the_first_partition_could_have_closed(defs):
    # partitions start on 2025-01-06: the tick of 2025-01-20 fits 2025-01-13, nothing to score yet
    assert [r.partition_key for r in _tick(defs, datetime(2025, 1, 20, 4, 30, tzinfo=timezone.utc))] == [
        "2025-01-13"]


def test_weekly_job_covers_the_graph_and_its_checks(defs):
    job = defs.resolve_job_def("weekly_growth_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "weekly_scores", "brms_posterior", "growth_brms_meta", "weekly_kpi_P"}
    assert {"rhat_below_threshold", "ess_above_threshold"} <= {k.name for k in job.asset_layer.asset_graph.asset_check_keys}


def test_the_panels_retention_runs_on_mondays_after_the_weekly_run(defs):
    """prune_growth_panels: its own job and tick, two hours after the weekly run's (the weekly
    graph does not wait for it), the newest 8 windows kept unless the run's config says otherwise."""
    s = defs.resolve_schedule_def("prune_growth_panels")
    assert s.cron_schedule == "30 6 * * 1" and s.execution_timezone == "UTC"
    assert s.job_name == "panel_retention_job" and s.default_status == dg.DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def("panel_retention_job")
    ops = job.run_config_schema.config_type.fields["ops"].config_type
    keep = ops.fields["prune_growth_panels"].config_type.fields["config"].config_type.fields["keep_weeks"]
    assert keep.default_value == 8
    # a retention of no week is refused before the database is touched, naming the field
    bad = job.execute_in_process(run_config={"ops": {"prune_growth_panels": {"config": {"keep_weeks": 0}}}},
                                 raise_on_error=False)
    assert not bad.success
    text = "".join(str(e.event_specific_data.error) for e in bad.all_events if e.is_step_failure)
    assert "keep_weeks" in text and "greater than or equal to 1" in text


def test_the_current_weeks_p_is_checked_by_partition_not_by_any_materialization(db_url):
    """The cron freshness policy reads an asset's latest materialization of any partition: with
    the Monday run failed, a backfill of an old week on Tuesday made weekly_kpi_P fresh again,
    and this week's P was never written. The Monday 06:00 check asks for the partition of the
    week that just closed, and for its P written."""
    from growth_assets.defs.growth import weekly_assets
    from growth_assets.defs.growth.published import CURRENT_WEEK_PUBLISHED, publication_check_job
    from growth_assets_tests.support.graph import PARTITION, ReplayEngine, resources, seed_db

    seed_db(db_url, 20, seed=3)
    defs = build_definitions(Settings.from_env({}), **resources(db_url, ReplayEngine()))
    job = defs.resolve_job_def(publication_check_job.name)
    monday = "2026-11-23T06:00:00+00:00"  # the week of PARTITION closed at 04:30

    def check(instance, as_of=monday):
        res = job.execute_in_process(instance=instance, run_config={
            "ops": {f"weekly_kpi_P_{CURRENT_WEEK_PUBLISHED}": {"config": {"as_of": as_of}}}})
        (ev,) = res.get_asset_check_evaluations()
        return ev

    with dg.instance_for_test() as instance:
        old = "2026-11-02"  # an old week, backfilled: fresh to the cron policy, not to this check
        assert dg.materialize(weekly_assets, partition_key=old, instance=instance,
                              resources=resources(db_url, ReplayEngine())).success
        ev = check(instance)
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
        assert ev.metadata["partition"].value == PARTITION and PARTITION in ev.description
        assert dg.materialize(weekly_assets, partition_key=PARTITION, instance=instance,
                              resources=resources(db_url, ReplayEngine())).success
        ev = check(instance)
        assert ev.passed and ev.metadata["partition"].value == PARTITION
        assert ev.metadata["rows_written"].value > 0
        # a week later, the next partition is the one asked for
        assert not check(instance, "2026-11-30T06:00:00+00:00").passed
        # written=False (BRMS_UPDATE_KPI=false): materialized, but no P published
        assert dg.materialize(weekly_assets, partition_key="2026-11-23", instance=instance,
                              resources=resources(db_url, ReplayEngine(), update_kpi=False)).success
        ev = check(instance, "2026-11-30T06:00:00+00:00")
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN and "BRMS_UPDATE_KPI" in ev.description


def test_the_publication_check_runs_mondays_at_0600_utc(defs):
    s = defs.resolve_schedule_def("weekly_p_published")
    assert s.cron_schedule == "0 6 * * 1" and s.execution_timezone == "UTC"


def test_the_publication_check_is_no_step_of_the_weekly_runs(defs):
    """It is on weekly_kpi_P, so a selection of the weekly assets took it in: every weekly run
    (and the Monday tick's) ran it as a fifth step, about the current week whatever the
    partition."""
    job = defs.resolve_job_def("weekly_growth_job")
    checks = {k.name for k in job.asset_layer.asset_graph.asset_check_keys}
    assert "rhat_below_threshold" in checks and "current_week_published" not in checks
    assert "current_week_published" not in {k.name for k in defs.resolve_job_def("monday_job").asset_layer.asset_graph.asset_check_keys}
    fit = _tick(defs, datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))[0]
    names = {k.name for k in fit.asset_check_keys}
    assert "rhat_below_threshold" in names and "current_week_published" not in names


def test_a_late_run_of_the_publication_tick_judges_the_ticks_week():
    """A run of the Monday 2026-11-23 06:00 tick (launched late: the daemon's catch-up of missed
    ticks, a queue, or re-executed from the UI later) must judge partition 2026-11-16 (the
    week that closed at that Monday's 04:30). It judged the wall clock's week (found by
    review); the tick now pins the check's as_of, as daily_kpi_schedule does."""
    assert datetime.now(timezone.utc) > datetime(2026, 11, 30, 4, 30, tzinfo=timezone.utc)  # the probe's premise
    defs = build_definitions(Settings.from_env({}))
    from growth_assets.defs.growth.assets import weekly_kpi_P

    sched = defs.resolve_schedule_def("weekly_p_published")
    tick = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
    ctx = dg.build_schedule_context(scheduled_execution_time=tick, repository_def=defs.get_repository_def())
    (req,) = sched.evaluate_tick(ctx).run_requests
    job = defs.resolve_job_def("weekly_p_published_job")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=weekly_kpi_P.key, partition="2026-11-16",
            metadata={"run_id": "native-20261123-043000", "written": True, "rows_written": 60}))
        res = job.execute_in_process(instance=instance, run_config=req.run_config or {}, tags=req.tags)
    (ev,) = res.get_asset_check_evaluations()
    assert ev.metadata["partition"].value == "2026-11-16", (ev.metadata["partition"].value, ev.description)
    assert ev.passed


def test_a_bad_as_of_of_the_publication_check_is_refused_naming_the_field_and_value():
    """The same for the publication check's as_of (weekly_p_published_job, launchpad):
    "2026-11-31T06:00" failed with "day is out of range for month" alone."""
    job = build_definitions(Settings.from_env({})).resolve_job_def("weekly_p_published_job")
    op = next(iter(job.graph.node_dict))
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(instance=instance, raise_on_error=False,
                                     run_config={"ops": {op: {"config": {"as_of": "2026-11-31T06:00"}}}})
    assert not res.success
    text = failure_text(res)
    assert "as_of" in text and "2026-11-31T06:00" in text, text
