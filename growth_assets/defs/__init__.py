"""Dagster definitions, one folder per asset family."""

from __future__ import annotations

import dagster as dg

from ..settings import Settings
from .alerts import failure_alerts
from .growth import weekly_assets, weekly_growth_job, weekly_growth_schedule
from .growth.diagnostics import DiagnosticThresholds
from .resources import resources_from_settings


def build_definitions(settings: Settings | None = None, **resource_overrides) -> dg.Definitions:
    settings = settings or Settings.from_env()
    resources = {**resources_from_settings(settings),
                 "diagnostics_thresholds": DiagnosticThresholds(), **resource_overrides}
    return dg.Definitions(
        assets=weekly_assets,
        jobs=[weekly_growth_job],
        schedules=[weekly_growth_schedule],
        sensors=[failure_alerts],
        resources=resources,
    )
