"""The daily KPI refresh: P for the users active this week, through the fallback chain."""

from datetime import date, datetime, timedelta, timezone

import dagster as dg
from pydantic import field_validator

from ...metrics import PATHS, refresh_active_users
from ...model.window import monday_of
from ..growth.assets import brms_posterior, growth_brms_meta
from ..resources import GrowthSettings, PostgresResource, checked_as_of
from ..sources import panel_sources

daily_freshness = dg.FreshnessPolicy.cron(deadline_cron="0 3 * * 1-5", lower_bound_delta=timedelta(hours=1),
                                          timezone="UTC")


class DailyRefreshConfig(dg.Config):
    as_of: str | None = None  # ISO date; default: today (UTC)

    @field_validator("as_of")
    @classmethod
    def _iso_date(cls, v: str | None) -> str | None:
        return checked_as_of(v, date.fromisoformat, "an ISO date (YYYY-MM-DD)")


@dg.asset(group_name="kpi", kinds={"postgres"}, freshness_policy=daily_freshness,
          # what it reads: the scores (active users, the population path), the runs and their
          # student posteriors
          deps=[*panel_sources, growth_brms_meta, brms_posterior])
def daily_kpi_P(context: dg.AssetExecutionContext, config: DailyRefreshConfig, postgres: PostgresResource,
                growth: GrowthSettings) -> dg.MaterializeResult:
    """P and sigma for every user active in the current week (rows in mirt_ability or
    features_topic_daily), through ``growth_assets.metrics``' batch form — the stored weekly P
    when it is for this target and the latest passing run, else the run's line posterior, else
    the Normal approximation — merged into this week's ``weekly_kpi`` rows in one transaction,
    keeping every other key. The seed's ``compute-daily-kpis``."""
    today = datetime.now(timezone.utc).date()
    as_of = date.fromisoformat(config.as_of) if config.as_of else today
    if as_of > today:  # its week has not begun, or not for long: P computed now is no P of it
        raise dg.Failure(f"as_of={config.as_of!r} is after today ({today.isoformat()}, UTC): the refresh"
                         " writes the current week's P or an earlier week's")
    week_start = monday_of(as_of)
    with postgres.connect() as conn:
        counts = refresh_active_users(conn, week_start, target=growth.target)
    return dg.MaterializeResult(metadata={
        "week_start": week_start.isoformat(),
        "target": dg.MetadataValue.float(float(growth.target)),
        "users": dg.MetadataValue.int(counts["users"]),
        "written": dg.MetadataValue.int(counts["written"]),
        **{f"path_{p}": dg.MetadataValue.int(counts.get(p, 0)) for p in PATHS},
    })


daily_kpi_job = dg.define_asset_job("daily_kpi_job", selection=dg.AssetSelection.assets(daily_kpi_P),
                                    description="The daily KPI refresh of P.")

@dg.schedule(
    name="compute_daily_kpis",  # the seed's CronJob
    job=daily_kpi_job,
    cron_schedule="10 2 * * 1-5",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="compute-daily-kpis: 02:10 UTC, Monday to Friday; each run for its tick's day.",
)
def daily_kpi_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The tick's own day as the run's ``as_of``: a run that starts late (queued past midnight)
    or is re-executed days later writes the week of its tick, not of the wall clock."""
    day = context.scheduled_execution_time.astimezone(timezone.utc).date()
    return dg.RunRequest(run_key=day.isoformat(),
                         run_config={"ops": {"daily_kpi_P": {"config": {"as_of": day.isoformat()}}}})
