"""Monday 04:30 UTC: the weekly graph for the week that just closed, and the backtest of
the run whose horizon week it was."""

import logging
from datetime import date, timedelta

import dagster as dg
import psycopg

from ...db.connection import connect
from ...model.window import RUN_TIME_UTC
from ..resources import GrowthSettings, PostgresResource
from .assets import weekly_assets, weekly_check_keys, weekly_growth_job, weekly_partitions, weekly_selection
from .backtest import goal_forecast_backtest

# what the Monday tick may launch: the weekly graph, and the backtest (each run a subset)
monday_job = dg.define_asset_job(
    "monday_job", selection=weekly_selection | dg.AssetSelection.assets(goal_forecast_backtest),
    description="The Monday tick's runs: the weekly graph of the week that just closed, and the backtest"
                " of the partition whose horizon week it was.")


log = logging.getLogger(__name__)


def backtest_partition(closed_week: str, horizon_weeks: int) -> str:
    """The partition whose P is for ``closed_week`` under today's ``BRMS_HORIZON_WEEKS``: its
    window's last week is ``horizon_weeks`` before (P_week = partition + horizon_weeks, spec §6)."""
    return (date.fromisoformat(closed_week) - timedelta(weeks=horizon_weeks)).isoformat()


# the partitions with a passed run whose P is for the week that closed, out of sample (its
# horizon week after its window), from each run's own horizon: a P published under another
# BRMS_HORIZON_WEEKS than today's is scored too
_FORECAST_FOR = ("SELECT DISTINCT partition_key FROM growth_brms_meta"
                 " WHERE status = 'passed' AND partition_key <> '' AND horizon_week IS NOT NULL"
                 " AND window_start + 7 * horizon_week = %(closed)s::date"
                 " AND window_start + 7 * horizon_week >= window_end ORDER BY 1")


def backtest_partitions(postgres: PostgresResource, closed_week: str, horizon_weeks: int) -> list[str]:
    """The partitions whose published P is for ``closed_week``, read from the stored runs (each
    run's own horizon). If the runs cannot be read, the partition of today's horizon setting
    (``backtest_partition``), logged: the tick that launches the weekly fit must not fail
    because the database did not answer it."""
    try:
        # bounded well within the daemon's 60 s for a tick: a database that does not answer
        # (dropped packets, a lock) falls back in seconds instead of stopping the weekly fit's launch
        with connect(postgres.database_url, schema=postgres.db_schema, connect_timeout=5,
                     options="-c statement_timeout=10000 -c lock_timeout=5000") as conn:
            return [r[0] for r in conn.execute(_FORECAST_FOR, {"closed": closed_week})]
    except psycopg.Error as e:
        log.warning("the runs whose P is for the week of %s could not be read (%s): the backtest of the"
                    " partition BRMS_HORIZON_WEEKS=%d points to is requested", closed_week, type(e).__name__,
                    horizon_weeks)
        past = backtest_partition(closed_week, horizon_weeks)
        # BRMS_HORIZON_WEEKS=0: P is for the week just fitted, which its window holds: nothing out
        # of sample to score (the backtest refuses it); a run of it launched at once also raced the fit
        return [past] if past != closed_week else []


@dg.schedule(
    name="fit_bayesian_growth",  # the seed's CronJob
    job=monday_job,
    cron_schedule=f"{RUN_TIME_UTC.minute} {RUN_TIME_UTC.hour} * * 1",  # the partitions' own time
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="fit-bayesian-growth: Monday 04:30 UTC (cron 30 4 * * 1), the week that just closed; and the "
                "backtest of the run whose horizon week it was.",
)
def weekly_growth_schedule(context: dg.ScheduleEvaluationContext, growth: GrowthSettings,
                           postgres: PostgresResource):
    """The tick of 2026-11-23 04:30 runs partition 2026-11-16 (the last complete weekly
    partition at the tick, whose window ends with that week) through the weekly graph, and
    scores each partition whose P was for the week of 2026-11-16: 2026-10-19 for a run 4
    weeks ahead, 2026-10-05 for one made when the horizon was 6 (``backtest_partitions``)."""
    # the partition holding the second before the tick (scheduled_execution_time is the cron
    # time even when the daemon evaluates the tick late)
    key = weekly_partitions.get_partition_key_for_timestamp(context.scheduled_execution_time.timestamp() - 1)
    # the graph's own checks, as weekly_growth_job selects them
    fit = dg.RunRequest(run_key=key, partition_key=key, asset_selection=[a.key for a in weekly_assets],
                        asset_check_keys=weekly_check_keys,
                        tags=dict(weekly_growth_job.tags))
    known = set(weekly_partitions.get_partition_keys(context.scheduled_execution_time))
    return [fit] + [dg.RunRequest(run_key=f"backtest:{past}", partition_key=past,
                                  asset_selection=[goal_forecast_backtest.key])
                    for past in backtest_partitions(postgres, key, growth.horizon_weeks) if past in known]
