"""Monday 04:30 UTC: the weekly graph for the week that just closed."""

import dagster as dg

from .assets import weekly_growth_job, weekly_partitions


@dg.schedule(
    name="fit_bayesian_growth",  # the seed's CronJob
    job=weekly_growth_job,
    cron_schedule="30 4 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="fit-bayesian-growth: Monday 04:30 UTC (cron 30 4 * * 1), the week that just closed.",
)
def weekly_growth_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The tick of 2026-11-23 04:30 runs partition 2026-11-16: the last complete weekly
    partition (Monday 04:30 UTC boundaries) at the tick, whose window ends with that week."""
    # the partition holding the second before the tick (scheduled_execution_time is the cron
    # time even when the daemon evaluates the tick late)
    key = weekly_partitions.get_partition_key_for_timestamp(context.scheduled_execution_time.timestamp() - 1)
    return dg.RunRequest(run_key=key, partition_key=key)
