"""The weekly growth family: the four assets, their checks, the backtest, the Monday schedule and the
panels' retention."""

from .assets import brms_posterior, growth_brms_meta, weekly_assets, weekly_growth_job, weekly_kpi_P, weekly_scores
from .backtest import BacktestThresholds, forecast_backtest_job, goal_forecast_backtest
from .published import current_week_published, publication_check_job, publication_check_schedule
from .retention import panel_retention_job, panel_retention_schedule
from .schedules import monday_job, weekly_growth_schedule

__all__ = ["BacktestThresholds", "brms_posterior", "current_week_published", "forecast_backtest_job",
           "goal_forecast_backtest", "publication_check_job", "publication_check_schedule",
           "growth_brms_meta", "monday_job", "panel_retention_job", "panel_retention_schedule", "weekly_assets", "weekly_growth_job", "weekly_kpi_P",
           "weekly_growth_schedule", "weekly_scores"]
