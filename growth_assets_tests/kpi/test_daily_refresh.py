from datetime import datetime, timedelta, timezone

import dagster as dg

from dagster._utils.schedules import cron_string_iterator

from growth_assets.db import connect
from growth_assets.defs import build_definitions
from growth_assets.defs.growth import weekly_assets
from growth_assets.defs.kpi import daily_kpi_P
from growth_assets.defs.resources import GrowthSettings, PostgresResource
from growth_assets.demo.cohort import seed_cohort
from growth_assets.settings import Settings
from growth_assets_tests.support.graph import AS_OF, PARTITION, ReplayEngine, failure_text, resources


def test_the_daily_refresh_ticks_at_0210_utc_monday_to_friday_only():
    s = build_definitions(Settings.from_env({})).resolve_schedule_def("compute_daily_kpis")
    assert s.cron_schedule == "10 2 * * 1-5" and s.execution_timezone == "UTC"
    start = datetime(2026, 11, 21, 0, 0, tzinfo=timezone.utc).timestamp()  # a Saturday
    ticks = []
    for t in cron_string_iterator(start, s.cron_schedule, "UTC"):
        if t.timestamp() > start + 14 * 86400:
            break
        ticks.append(t)
    assert [t.strftime("%a %H:%M") for t in ticks[:6]] == [
        "Mon 02:10", "Tue 02:10", "Wed 02:10", "Thu 02:10", "Fri 02:10", "Mon 02:10"]
    assert len(ticks) == 10  # two weeks, no Saturday or Sunday
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 24, 2, 10, tzinfo=timezone.utc))
    assert s.job_name == "daily_kpi_job" and len(s.evaluate_tick(ctx).run_requests) == 1


def test_a_tick_names_its_own_day_so_a_late_or_re_executed_run_writes_that_week():
    """The run read the wall clock: Friday's run re-executed on Monday (or queued past
    midnight into Monday) wrote Monday's week instead of Friday's."""
    s = build_definitions(Settings.from_env({})).resolve_schedule_def("compute_daily_kpis")
    friday = datetime(2026, 12, 4, 2, 10, tzinfo=timezone.utc)
    (req,) = s.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=friday)).run_requests
    assert req.run_config == {"ops": {"daily_kpi_P": {"config": {"as_of": "2026-12-04"}}}}


def test_daily_refresh_after_a_weekly_run_reuses_stored_p_and_keeps_other_keys(db_url, monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    with connect(db_url) as conn:
        seed_cohort(conn, 30, 13, seed=4, as_of=AS_OF + timedelta(days=7))  # data into the run's week too
        conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('s0000001', %s, '{\"I_t\": 5}')"
                     " ON CONFLICT (user_id, week_start) DO UPDATE SET kpis = weekly_kpi.kpis || EXCLUDED.kpis",
                     (AS_OF,))
    res = resources(db_url, ReplayEngine())
    assert dg.materialize(weekly_assets, partition_key=PARTITION, resources=res).success
    out = dg.materialize([daily_kpi_P], resources=res,
                         run_config={"ops": {"daily_kpi_P": {"config": {"as_of": "2026-11-25"}}}})
    assert out.success
    md = out.asset_materializations_for_node("daily_kpi_P")[0].metadata
    assert md["week_start"].value == "2026-11-23"
    users = md["users"].value
    assert users > 0 and md["path_stored"].value == users  # every active user has this run's P
    assert md["written"].value == 0  # reused, not rewritten
    with connect(db_url) as c:
        k = c.execute("SELECT kpis FROM weekly_kpi WHERE user_id = 's0000001' AND week_start = %s", (AS_OF,)).fetchone()[0]
    assert k["I_t"] == 5 and "P" in k


def test_daily_refresh_with_no_run_uses_the_normal_approximation(db_url, monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    with connect(db_url) as conn:
        seed_cohort(conn, 20, 13, seed=4, as_of=AS_OF + timedelta(days=7))
    out = dg.materialize([daily_kpi_P], resources=resources(db_url, ReplayEngine()),
                         run_config={"ops": {"daily_kpi_P": {"config": {"as_of": "2026-11-24"}}}})
    md = out.asset_materializations_for_node("daily_kpi_P")[0].metadata
    assert md["path_stored"].value == 0 and md["path_run"].value == 0
    assert md["path_normal"].value > 0 and md["written"].value == md["path_normal"].value
    with connect(db_url) as c:
        src = {r[0] for r in c.execute("SELECT kpis->>'P_source' FROM weekly_kpi WHERE week_start = %s AND kpis ? 'P'",
                                       (AS_OF,))}
    assert src == {"normal"}


def test_the_daily_refresh_after_a_native_run_writes_the_updated_p_of_the_weeks_scores(db_url, monkeypatch):
    """The native engine keeps its population draws: a user with scores since the run's window
    is answered by the exact update (path ``update``), and the refresh stores that P with
    ``P_source = 'update'``. The writer refused that source, so the refresh's one transaction
    failed, and no user's P was written, whenever any active user had a score since the window."""
    from growth_assets.metrics import compute_goal_attainment_probabilities

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    with connect(db_url) as conn:
        seed_cohort(conn, 30, 13, seed=4, as_of=AS_OF + timedelta(days=7))  # data into the run's week too
    res = resources(db_url)  # the native engine
    assert dg.materialize(weekly_assets, partition_key=PARTITION, resources=res).success
    out = dg.materialize([daily_kpi_P], resources=res, raise_on_error=False,
                         run_config={"ops": {"daily_kpi_P": {"config": {"as_of": "2026-11-25"}}}})
    assert out.success
    md = out.asset_materializations_for_node("daily_kpi_P")[0].metadata
    updated = md["path_update"].value
    assert updated > 0 and md["written"].value == updated + md["path_normal"].value
    with connect(db_url) as c:
        rows = c.execute("SELECT user_id, kpis FROM weekly_kpi WHERE week_start = %s AND kpis->>'P_source' = 'update'",
                         (AS_OF,)).fetchall()
        assert len(rows) == updated
        now = compute_goal_attainment_probabilities(c, [u for u, _ in rows], target=0.0)
    for u, k in rows:  # what a call answers now: the same P (her scores since keep it on path update)
        assert now[u].path == "update" and k["P"] == now[u].P and k["P_target"] == 0.0
        assert k["P_week"] == now[u].p_week.isoformat() and k["P_run_id"] == now[u].run_id


def test_a_refresh_of_a_week_before_the_latest_runs_window_is_refused_and_the_backfill_still_writes(
        db_url, monkeypatch):
    """A refresh computes P now, from the latest passed run: run late (Tuesday's tick re-executed
    after the next Monday's run), it wrote into a past week's rows a P whose data window ends
    after that week, and the merge guard then refused that week's own P when its partition was
    backfilled (half the students kept the later window's P for good)."""
    from datetime import date

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    from growth_assets_tests.support.graph import seed_db

    url = seed_db(db_url, 20, seed=3)
    res = resources(url, ReplayEngine())
    assert dg.materialize(weekly_assets, partition_key=PARTITION, resources=res).success  # window ends 2026-11-23
    late = dg.materialize([daily_kpi_P], resources=res, raise_on_error=False,
                          run_config={"ops": {"daily_kpi_P": {"config": {"as_of": "2026-11-17"}}}})
    assert not late.success
    text = str(late.get_step_failure_events()[0].event_specific_data.error)
    assert "week_start" in text and "2026-11-16" in text and "2026-11-23" in text, text
    with connect(url) as c:
        assert c.execute("SELECT count(*) FROM weekly_kpi WHERE week_start = '2026-11-16' AND kpis ? 'P'"
                         ).fetchone()[0] == 0
    # the backfill of partition 2026-11-09, whose P is weekly_kpi's week 2026-11-16: every student
    bf = dg.materialize(weekly_assets, partition_key="2026-11-09", resources=res)
    checks = {e.check_name: e.passed for e in bf.get_asset_check_evaluations()}
    assert checks["rows_written_equal_students_fitted"]
    with connect(url) as c:
        ends = {x for (x,) in c.execute("SELECT DISTINCT kpis->>'P_window_end' FROM weekly_kpi"
                                        " WHERE week_start = %s AND kpis ? 'P'", (date(2026, 11, 16),))}
    assert ends == {"2026-11-16"}, ends


def _daily_run(as_of: str):
    return dg.materialize(
        [daily_kpi_P], raise_on_error=False,
        resources={"postgres": PostgresResource(database_url="postgresql://u@127.0.0.1:9/x"),
                   "growth": GrowthSettings()},
        run_config={"ops": {"daily_kpi_P": {"config": {"as_of": as_of}}}})


def test_a_bad_as_of_of_the_daily_refresh_is_refused_naming_the_field_and_value():
    """Bad input gets a clear error naming the field and the value: the launchpad's as_of
    "2026-13-01" failed with Python's "month must be in 1..12" alone."""
    res = _daily_run("2026-13-01")
    assert not res.success
    text = failure_text(res)
    assert "as_of" in text and "2026-13-01" in text, text


def test_an_as_of_after_today_is_refused_before_the_database_is_touched():
    """A launchpad as_of in a year to come (2062 for 2026) named a week that has not begun:
    P computed now was written into it (the database here is unreachable: the refusal comes first)."""
    res = _daily_run("2062-11-29")
    assert not res.success
    text = failure_text(res)
    assert "as_of" in text and "2062-11-29" in text and "after today" in text, text
