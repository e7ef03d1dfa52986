"""Synthetic panels for engine tests (see growth_assets.demo.cohort.synthetic_panel)."""

from growth_assets.demo.cohort import synthetic_panel as cohort_panel

__all__ = ["cohort_panel"]
