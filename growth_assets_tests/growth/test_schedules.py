from datetime import datetime, timezone

import dagster as dg
import pytest

from growth_assets.defs import build_definitions
from growth_assets.settings import Settings


@pytest.fixture(scope="module")
def defs():
    return build_definitions(Settings.from_env({}))


def test_monday_tick_runs_the_week_that_just_closed(defs):
    s = defs.resolve_schedule_def("fit_bayesian_growth")
    assert s.cron_schedule == "30 4 * * 1" and s.execution_timezone == "UTC"
    assert s.job_name == "weekly_growth_job"
    repo = defs.get_repository_def()
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc),
                                    repository_def=repo)
    reqs = s.evaluate_tick(ctx).run_requests
    assert len(reqs) == 1 and reqs[0].partition_key == "2026-11-16"
    nxt = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 4, 30, tzinfo=timezone.utc),
                                    repository_def=repo)
    assert s.evaluate_tick(nxt).run_requests[0].partition_key == "2026-11-23"


def test_weekly_job_covers_the_graph_and_its_checks(defs):
    job = defs.resolve_job_def("weekly_growth_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "weekly_scores", "brms_posterior", "growth_brms_meta", "weekly_kpi_P"}
    assert {"rhat_below_threshold", "ess_above_threshold"} <= {k.name for k in job.asset_layer.asset_graph.asset_check_keys}
