"""Monday 04:30 UTC: the weekly graph for the week that just closed."""

from __future__ import annotations

import dagster as dg

from .assets import weekly_growth_job

# The job's assets share the weekly partitions (Monday 04:30 UTC boundaries), so each tick
# requests the partition of the week that just closed: the 2026-11-23 04:30 tick runs
# partition 2026-11-16, whose window ends with that week.
weekly_growth_schedule = dg.build_schedule_from_partitioned_job(
    weekly_growth_job,
    name="fit_bayesian_growth",  # the seed's CronJob name
    description="fit-bayesian-growth: Monday 04:30 UTC (cron 30 4 * * 1), the week that just closed.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
