"""Dagster definitions, one folder per asset family."""

from __future__ import annotations

import dagster as dg

from ..settings import Settings
from .alerts import failure_alerts
from .growth import (BacktestThresholds, current_week_published, forecast_backtest_job, goal_forecast_backtest,
                     monday_job, panel_retention_job, panel_retention_schedule, publication_check_job,
                     publication_check_schedule, weekly_assets, weekly_growth_job, weekly_growth_schedule)
from .growth.diagnostics import DiagnosticThresholds
from .kpi import daily_kpi_job, daily_kpi_P, daily_kpi_schedule
from .resources import resources_from_settings
from .sources import panel_sources


def build_definitions(settings: Settings | None = None, **resource_overrides) -> dg.Definitions:
    settings = settings or Settings.from_env()
    resources = {**resources_from_settings(settings),
                 "diagnostics_thresholds": DiagnosticThresholds(),
                 "backtest_thresholds": BacktestThresholds(), **resource_overrides}
    return dg.Definitions(
        assets=[*panel_sources, *weekly_assets, goal_forecast_backtest, daily_kpi_P],
        asset_checks=[current_week_published],
        jobs=[weekly_growth_job, forecast_backtest_job, monday_job, daily_kpi_job, panel_retention_job,
              publication_check_job],
        schedules=[weekly_growth_schedule, daily_kpi_schedule, panel_retention_schedule, publication_check_schedule],
        sensors=[failure_alerts],
        resources=resources,
    )
