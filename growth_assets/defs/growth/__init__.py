"""The weekly growth family: the four assets, their checks, the backtest, the Monday schedule and the
panels' retention."""

from .assets import brms_posterior, growth_brms_meta, weekly_assets, weekly_growth_job, weekly_kpi_P, weekly_scores
from .backtest import BacktestThresholds, forecast_backtest_job, goal_forecast_backtest
from .retention import panel_retention_job, panel_retention_schedule
from .schedules import monday_job, weekly_growth_schedule

__all__ = ["BacktestThresholds", "brms_posterior", "forecast_backtest_job", "goal_forecast_backtest",
           "growth_brms_meta", "monday_job", "panel_retention_job", "panel_retention_schedule", "weekly_assets", "weekly_growth_job", "weekly_kpi_P",
           "weekly_growth_schedule", "weekly_scores"]
