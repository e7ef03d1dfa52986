"""The Dagster code location: assembled from the families, nothing else."""

from growth_assets.defs import build_definitions

defs = build_definitions()
