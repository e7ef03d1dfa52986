"""The weekly job with the default multiprocess executor, for ``dg.reconstructable``: each
step runs in its own Python process, as steps run in their own pods on Kubernetes, so
nothing can pass between them but through PostgreSQL."""

import os

import dagster as dg

from growth_assets.defs import build_definitions
from growth_assets.settings import Settings
from growth_assets_tests.support.graph import ReplayEngine


def weekly_job() -> dg.JobDefinition:
    defs = build_definitions(Settings.from_env(), engine=ReplayEngine())
    job = defs.resolve_job_def("weekly_growth_job")
    assert os.environ["DATABASE_URL"]
    return job
