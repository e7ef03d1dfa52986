"""The daily KPI family: the weekday refresh of P."""

from .assets import daily_kpi_job, daily_kpi_P, daily_kpi_schedule

__all__ = ["daily_kpi_job", "daily_kpi_P", "daily_kpi_schedule"]
