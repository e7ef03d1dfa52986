"""The weekly growth family: the four assets, their checks, the backtest and the Monday schedule."""

from .assets import brms_posterior, growth_brms_meta, weekly_assets, weekly_growth_job, weekly_kpi_P, weekly_scores
from .backtest import BacktestThresholds, forecast_backtest_job, goal_forecast_backtest
from .schedules import monday_job, weekly_growth_schedule

__all__ = ["BacktestThresholds", "brms_posterior", "forecast_backtest_job", "goal_forecast_backtest",
           "growth_brms_meta", "monday_job", "weekly_assets", "weekly_growth_job", "weekly_kpi_P",
           "weekly_growth_schedule", "weekly_scores"]
