"""Monday 04:30 UTC: the weekly graph for the week that just closed, and the backtest of
the run whose horizon week it was."""

from datetime import date, timedelta

import dagster as dg

from ...model.window import RUN_TIME_UTC
from ..resources import GrowthSettings
from .assets import weekly_assets, weekly_check_keys, weekly_growth_job, weekly_partitions, weekly_selection
from .backtest import goal_forecast_backtest

# what the Monday tick may launch: the weekly graph, and the backtest (each run a subset)
monday_job = dg.define_asset_job(
    "monday_job", selection=weekly_selection | dg.AssetSelection.assets(goal_forecast_backtest),
    description="The Monday tick's runs: the weekly graph of the week that just closed, and the backtest"
                " of the partition whose horizon week it was.")


def backtest_partition(closed_week: str, horizon_weeks: int) -> str:
    """The partition whose P is for ``closed_week``: its window's last week is
    ``horizon_weeks`` before (P_week = partition + horizon_weeks, spec §6)."""
    return (date.fromisoformat(closed_week) - timedelta(weeks=horizon_weeks)).isoformat()


@dg.schedule(
    name="fit_bayesian_growth",  # the seed's CronJob
    job=monday_job,
    cron_schedule=f"{RUN_TIME_UTC.minute} {RUN_TIME_UTC.hour} * * 1",  # the partitions' own time
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="fit-bayesian-growth: Monday 04:30 UTC (cron 30 4 * * 1), the week that just closed; and the "
                "backtest of the run whose horizon week it was.",
)
def weekly_growth_schedule(context: dg.ScheduleEvaluationContext, growth: GrowthSettings):
    """The tick of 2026-11-23 04:30 runs partition 2026-11-16 (the last complete weekly
    partition at the tick, whose window ends with that week) through the weekly graph, and
    scores partition 2026-10-19, whose P was for the week of 2026-11-16 (4 weeks ahead)."""
    # the partition holding the second before the tick (scheduled_execution_time is the cron
    # time even when the daemon evaluates the tick late)
    key = weekly_partitions.get_partition_key_for_timestamp(context.scheduled_execution_time.timestamp() - 1)
    # the graph's own checks, as weekly_growth_job selects them
    fit = dg.RunRequest(run_key=key, partition_key=key, asset_selection=[a.key for a in weekly_assets],
                        asset_check_keys=weekly_check_keys,
                        tags=dict(weekly_growth_job.tags))
    past = backtest_partition(key, growth.horizon_weeks)
    requests = [fit]
    # BRMS_HORIZON_WEEKS=0: P is for the week just fitted, which its window holds: nothing out of
    # sample to score (the backtest refuses it); a run of it launched at once also raced the fit
    if past != key and past in weekly_partitions.get_partition_keys(context.scheduled_execution_time):
        requests.append(dg.RunRequest(run_key=f"backtest:{past}", partition_key=past,
                                      asset_selection=[goal_forecast_backtest.key]))
    return requests
