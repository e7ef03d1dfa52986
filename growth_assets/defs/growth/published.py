"""Is this week's P published? A check by partition, Mondays 06:00 UTC.

The weekly assets' cron freshness policies read an asset's latest materialization of any
partition: a backfill of an old week made ``weekly_kpi_P`` fresh again while this week's P was
never written (the Monday run failed). This check asks for the partition of the week that
closed at the last Monday 04:30 UTC, and for its P written; the alert sensor posts its failure
like any other failed check.
"""


from datetime import datetime, timezone

import dagster as dg
from pydantic import field_validator

from ..resources import checked_as_of
from .assets import CURRENT_WEEK_PUBLISHED, weekly_kpi_P, weekly_partitions


class PublishedCheckConfig(dg.Config):
    as_of: str | None = None  # an ISO instant (UTC if it names no zone); default: now

    @field_validator("as_of")
    @classmethod
    def _iso_instant(cls, v: str | None) -> str | None:
        return checked_as_of(v, datetime.fromisoformat, "an ISO instant (YYYY-MM-DDTHH:MM, UTC if no zone)")


@dg.asset_check(asset=weekly_kpi_P, name=CURRENT_WEEK_PUBLISHED,
                description="the partition of the week that closed at the last Monday 04:30 UTC has weekly_kpi_P"
                            " materialized with its P written (ERROR if not materialized; WARN if it wrote"
                            " nothing, BRMS_UPDATE_KPI=false)")
def current_week_published(context: dg.AssetCheckExecutionContext, config: PublishedCheckConfig) -> dg.AssetCheckResult:
    now = datetime.fromisoformat(config.as_of) if config.as_of else datetime.now(timezone.utc)
    # an instant of another zone is read as the same instant in UTC (its wall time labelled
    # "UTC" named another hour in the check's text)
    now = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    keys = weekly_partitions.get_partition_keys(now)  # the complete ones at now (end_offset 0)
    key = keys[-1] if keys else None
    # observed: the partition's P published (1: a materialization that wrote it), threshold 1;
    # the alert reads both
    if key is None:
        return dg.AssetCheckResult(passed=True, metadata={"observed": 1, "threshold": 1},
                                   description=f"no partition has closed by {now.isoformat()}")
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=weekly_kpi_P.key, asset_partitions=[key]), limit=1).records
    if not records:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"partition": key, "observed": 0, "threshold": 1},
            description=f"weekly_kpi_P of partition {key} (the week that closed before {now:%Y-%m-%d %H:%M} UTC)"
                        " is not materialized: this week's P is not published")
    mat = records[0].asset_materialization
    md = {k: getattr(v, "value", v) for k, v in (mat.metadata or {}).items()}
    meta = {"partition": key, "run_id": str(md.get("run_id")),
            "rows_written": dg.MetadataValue.int(int(md.get("rows_written") or 0)),
            "observed": 0 if md.get("written") is False else 1, "threshold": 1}
    if md.get("written") is False:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=meta,
            description=f"weekly_kpi_P of partition {key} ran but wrote no P ({md.get('reason') or 'BRMS_UPDATE_KPI=false'})")
    return dg.AssetCheckResult(passed=True, metadata=meta,
                               description=f"P of partition {key} written for {meta['rows_written'].value} students")


publication_check_job = dg.define_asset_job(
    "weekly_p_published_job", selection=dg.AssetSelection.checks(current_week_published),
    description="Is this week's P published (the partition of the week that just closed)?")

@dg.schedule(
    name="weekly_p_published", job=publication_check_job, cron_schedule="0 6 * * 1", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Monday 06:00 UTC (the weekly assets' freshness deadline): is the week that just closed published?")
def publication_check_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The tick's instant as the check's ``as_of``: a run that starts late (the daemon catching
    up missed ticks, a queue) or is re-executed later judges its tick's week, not the wall
    clock's (it judged the current week, and the tick's week was never checked)."""
    at = context.scheduled_execution_time.astimezone(timezone.utc)
    return dg.RunRequest(run_key=at.isoformat(), run_config={
        "ops": {_CHECK_OP: {"config": {"as_of": at.isoformat()}}}})


# the op that runs the check in publication_check_job (an asset check's op: asset and check names)
_CHECK_OP = f"{weekly_kpi_P.key.to_python_identifier()}_{CURRENT_WEEK_PUBLISHED}"
