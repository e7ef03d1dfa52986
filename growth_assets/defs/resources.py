"""Dagster resources: the database, the fit settings, the engine, the IO manager.

Values come from ``growth_assets.settings`` (the one place that reads the environment),
through ``resources_from_settings``; tests build them directly.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from ..model.contract import ContractError, horizon_week
from ..model.engine import Engine, FitSettings
from ..model.engines import make_engine
from ..settings import SCORE_SOURCES, Settings


class PostgresResource(dg.ConfigurableResource):
    """The project's PostgreSQL (``DATABASE_URL``): hands out connections as context managers."""

    database_url: str = Field(description="libpq URL of the project's database (DATABASE_URL)")

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.database_url) as conn:
            yield conn


class GrowthSettings(dg.ConfigurableResource):
    """What the weekly fit reads (BRMS_* / METRICS_DEFAULT_TARGET); overridable per run."""

    lookback_weeks: int = Field(12, ge=1, le=520, description="BRMS_LOOKBACK_WEEKS")
    score_source: str = Field("theta", description="BRMS_SCORE_SOURCE: theta | accuracy")
    family: str = Field("gaussian", description="BRMS_FAMILY: only gaussian is supported")
    n_chains: int = Field(4, ge=1, le=8, description="BRMS_N_CHAINS")
    n_samples: int = Field(2000, ge=200, le=20000, description="BRMS_N_SAMPLES (iterations per chain)")
    seed: int = Field(1234, ge=0, description="BRMS_SEED")
    horizon_weeks: int = Field(4, ge=0, description="BRMS_HORIZON_WEEKS after the window's last week")
    target: float = Field(0.0, description="METRICS_DEFAULT_TARGET: the goal P is computed for")
    update_kpi: bool = Field(True, description="BRMS_UPDATE_KPI: write P into weekly_kpi")
    min_share_3_weeks: float = Field(0.5, ge=0, le=1,
                                     description="WARN when fewer students than this share have 3+ weeks")

    def checked(self) -> "GrowthSettings":
        if self.score_source not in SCORE_SOURCES:
            raise ContractError("BRMS_SCORE_SOURCE", f"must be one of {SCORE_SOURCES}", self.score_source)
        if self.family != "gaussian":
            raise ContractError("BRMS_FAMILY", "only gaussian is supported by this model", self.family)
        return self

    def fit_settings(self, run_id: str | None = None) -> FitSettings:
        self.checked()
        return FitSettings(
            n_chains=self.n_chains, n_samples=self.n_samples, seed=self.seed,
            horizon_week=horizon_week(self.lookback_weeks, self.horizon_weeks),
            target=self.target, lookback_weeks=self.lookback_weeks, run_id=run_id,
        )


class GrowthEngineResource(dg.ConfigurableResource):
    """Which engine fits the model: ``native`` (in-process NumPyro) or ``brms`` (the R service).

    Chosen once per run (GROWTH_ENGINE; when unset, brms if R_BRMS_BASE_URL is set, else
    native), logged, and recorded with the fit. Never switched in the middle of a run.
    """

    engine: str = Field("native", description="GROWTH_ENGINE: native | brms")
    r_brms_base_url: str | None = Field(None, description="R_BRMS_BASE_URL")
    r_brms_timeout_secs: float = Field(600.0, gt=0, description="R_BRMS_TIMEOUT_SECS")
    r_brms_internal_token: str | None = Field(None, description="R_BRMS_INTERNAL_TOKEN (shown as an env var)")
    r_brms_max_retries: int = Field(3, ge=0, le=10, description="retries on connection errors and 502/503/504")
    r_brms_backoff_secs: float = Field(2.0, ge=0, description="first retry delay, doubled each retry")

    def get_engine(self) -> Engine:
        return make_engine(self.engine, r_brms_base_url=self.r_brms_base_url,
                           r_brms_timeout_secs=self.r_brms_timeout_secs,
                           r_brms_internal_token=self.r_brms_internal_token,
                           max_retries=self.r_brms_max_retries, backoff_secs=self.r_brms_backoff_secs)


class PostgresValueIOManager(dg.ConfigurableIOManager):
    """Stores the values assets hand each other in PostgreSQL (``dagster_asset_value``).

    A step in another process or pod reads what the previous step wrote, which Dagster's
    default filesystem IO manager cannot promise on Kubernetes. Values are pickled; only
    this project's own steps write them.
    """

    database_url: str

    def _key(self, context) -> tuple[str, str]:
        key = context.asset_key.to_user_string()
        part = context.partition_key if context.has_partition_key else ""
        return key, part

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        key, part = self._key(context)
        run_id = getattr(context, "run_id", None)
        with psycopg.connect(self.database_url) as conn:
            conn.execute(
                """INSERT INTO dagster_asset_value (asset_key, partition_key, value, dagster_run_id)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (asset_key, partition_key) DO UPDATE
                   SET value = EXCLUDED.value, dagster_run_id = EXCLUDED.dagster_run_id, stored_at = now()""",
                (key, part, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), run_id),
            )

    def load_input(self, context: dg.InputContext) -> Any:
        key, part = self._key(context)
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT value FROM dagster_asset_value WHERE asset_key = %s AND partition_key = %s",
                (key, part),
            ).fetchone()
        if row is None:
            raise dg.Failure(f"no stored value for asset {key!r} partition {part!r}: materialize it first")
        return pickle.loads(row[0])


def resources_from_settings(settings: Settings) -> dict[str, Any]:
    """The resources of the deployed definitions, from the environment's settings."""
    url = settings.database_url or ""
    from .alerts.sensors import AlertWebhook

    token = dg.EnvVar("R_BRMS_INTERNAL_TOKEN") if settings.r_brms_internal_token else None
    return {
        # the webhook URL is a secret of sorts (Slack's carries a token): shown as an env var
        "alert_webhook": AlertWebhook(
            url=dg.EnvVar("ALERT_WEBHOOK_URL") if settings.alert_webhook_url else None,
            webserver_url=settings.dagster_webserver_url),
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL") if url else ""),
        "io_manager": PostgresValueIOManager(database_url=dg.EnvVar("DATABASE_URL") if url else ""),
        "growth": GrowthSettings(
            lookback_weeks=settings.lookback_weeks, score_source=settings.score_source,
            family=settings.family, n_chains=settings.n_chains, n_samples=settings.n_samples,
            seed=settings.seed, horizon_weeks=settings.horizon_weeks,
            target=settings.metrics_default_target, update_kpi=settings.update_kpi,
        ),
        "engine": GrowthEngineResource(
            engine=settings.chosen_engine, r_brms_base_url=settings.r_brms_base_url,
            r_brms_timeout_secs=settings.r_brms_timeout_secs, r_brms_internal_token=token,
        ),
    }
