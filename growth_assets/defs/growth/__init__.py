"""The weekly growth family: the four assets, their checks and the Monday schedule."""

from .assets import brms_posterior, growth_brms_meta, weekly_assets, weekly_growth_job, weekly_kpi_P, weekly_scores
from .schedules import weekly_growth_schedule

__all__ = ["brms_posterior", "growth_brms_meta", "weekly_assets", "weekly_growth_job", "weekly_kpi_P",
           "weekly_growth_schedule", "weekly_scores"]
