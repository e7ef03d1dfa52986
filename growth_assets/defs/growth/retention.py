"""``growth_panel`` retention: a weekly job that deletes the panels nobody reads any more.

Each weekly run stores its panel (a row per student: ~440 MB a week at a million students).
Once the fit of a window is stored, nothing reads its panel again but a refit of that
partition: the real-time path and the backtest read the window sums kept with each student's
line. ``prune_growth_panels`` keeps the newest ``keep_weeks`` windows and every panel built in
the last ``keep_weeks`` weeks (a backfill's), and deletes the rest (``panel.prune_panels``).
It runs on its own schedule, after the Monday run, so the weekly graph does not wait for it.
"""

import dagster as dg
from pydantic import Field

from ...model.window import RUN_TIME_UTC
from ..resources import PostgresResource
from .assets import contract_failures
from .panel import prune_panels

DEFAULT_KEEP_WEEKS = 8


class PanelRetention(dg.Config):
    keep_weeks: int = Field(DEFAULT_KEEP_WEEKS, ge=1, description=(
        "panels kept: the newest keep_weeks weekly windows, and any panel built in the last keep_weeks weeks"))


@dg.op(description="Delete the stored panels (growth_panel, growth_panel_meta) older than the retention.")
def prune_growth_panels(context: dg.OpExecutionContext, config: PanelRetention,
                        postgres: PostgresResource) -> dg.Output[int]:
    with postgres.connect() as conn, contract_failures():
        pruned = prune_panels(conn, config.keep_weeks)
    context.log.info("pruned %d panels (%d rows); newest window ends %s", len(pruned.panel_ids), pruned.rows,
                     pruned.newest_window_end)
    return dg.Output(len(pruned.panel_ids), metadata={
        "panels_pruned": dg.MetadataValue.int(len(pruned.panel_ids)),
        "rows_deleted": dg.MetadataValue.int(pruned.rows),
        "panel_ids": dg.MetadataValue.text(", ".join(pruned.panel_ids) or "none"),
        "keep_weeks": dg.MetadataValue.int(config.keep_weeks),
        "newest_window_end": str(pruned.newest_window_end or ""),
    })


@dg.job(description="Delete the stored panels older than the retention (config: keep_weeks).")
def panel_retention_job():
    prune_growth_panels()


# Mondays, two hours after the weekly run's tick
RETENTION_HOUR_UTC = (RUN_TIME_UTC.hour + 2) % 24

panel_retention_schedule = dg.ScheduleDefinition(
    name="prune_growth_panels",
    job=panel_retention_job,
    cron_schedule=f"{RUN_TIME_UTC.minute} {RETENTION_HOUR_UTC} * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Mondays {RETENTION_HOUR_UTC:02d}:{RUN_TIME_UTC.minute:02d} UTC: delete the panels older than "
                f"the retention (the newest {DEFAULT_KEEP_WEEKS} windows are kept, and panels built in the last "
                f"{DEFAULT_KEEP_WEEKS} weeks).",
)
