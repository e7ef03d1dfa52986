"""Dagster resources: the database, the fit settings, the engine.

Values come from ``growth_assets.settings`` (the one place that reads the environment, and
the one statement of every default and range), through ``resources_from_settings``; tests
build them directly. There is no IO manager: each asset writes its own tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from ..model.contract import ContractError, horizon_week
from ..model.engine import Engine, FitSettings
from ..model.engines import make_engine
from ..settings import (DB_SCHEMA, CHAIN_METHODS, HORIZON_WEEKS, LOOKBACK_WEEKS, MAX_N_SAMPLES, MAX_NATIVE_DEVICES,
                        N_CHAINS, N_SAMPLES, R_BRMS_TIMEOUT_MAX_SECS, R_BRMS_TIMEOUT_SECS, SCORE_RANGE, SCORE_SOURCES,
                        SEED, IntLimit, NativeRuntime, env_url, refit_ceiling_problem, score_range_problem,
                        Settings)


def checked_as_of(value: str | None, parse: Callable[[str], Any], shape: str) -> str | None:
    """A run config's ``as_of`` (launchpad text), read by ``parse`` (``date.fromisoformat`` or
    ``datetime.fromisoformat``): a mistyped one is refused naming the field and the value, not
    with Python's bare "month must be in 1..12"."""
    if value is not None:
        try:
            parse(value)
        except ValueError as e:
            raise ValueError(f"as_of={value!r} is not {shape}: {e}") from None
    return value


def _int_field(limit: IntLimit, description: str) -> Any:
    return Field(limit.default, ge=limit.lo, le=limit.hi, description=f"{limit.env}: {description}")


class PostgresResource(dg.ConfigurableResource):
    """The project's PostgreSQL (``DATABASE_URL``): hands out connections as context managers."""

    database_url: str = Field(description="libpq URL of the project's database (DATABASE_URL)")
    db_schema: str = Field(DB_SCHEMA, description="GROWTH_DB_SCHEMA: the schema of the project's own tables, "
                                                  "first on every connection's search_path")

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        from ..db.connection import connect

        with connect(self.database_url, schema=self.db_schema) as conn:
            yield conn


class GrowthSettings(dg.ConfigurableResource):
    """What the weekly fit reads (BRMS_* / METRICS_DEFAULT_TARGET); overridable per run."""

    lookback_weeks: int = _int_field(LOOKBACK_WEEKS, "complete weeks in the window")
    score_source: str = Field("theta", description="BRMS_SCORE_SOURCE: theta | accuracy")
    family: str = Field("gaussian", description="BRMS_FAMILY: only gaussian is supported")
    n_chains: int = _int_field(N_CHAINS, "chains")
    n_samples: int = _int_field(N_SAMPLES, "iterations per chain, half warm-up")
    seed: int = _int_field(SEED, "the sampler's seed")
    horizon_weeks: int = _int_field(HORIZON_WEEKS, "P is for this many weeks after the window")
    max_n_samples: int = _int_field(MAX_N_SAMPLES, "a fit whose R-hat/ESS falls short is refitted once with "
                                                   "twice the iterations, up to this many")
    target: float = Field(0.0, description="METRICS_DEFAULT_TARGET: the goal P is computed for")
    update_kpi: bool = Field(True, description="BRMS_UPDATE_KPI: write P into weekly_kpi")
    score_min: float = Field(SCORE_RANGE[0], description="BRMS_SCORE_RANGE: scores below are left out, counted")
    score_max: float = Field(SCORE_RANGE[1], description="BRMS_SCORE_RANGE: scores above are left out, counted")
    min_share_3_weeks: float = Field(0.5, ge=0, le=1,
                                     description="WARN when fewer students than this share have 3+ weeks")

    def checked(self) -> "GrowthSettings":
        if self.score_source not in SCORE_SOURCES:
            raise ContractError("BRMS_SCORE_SOURCE", f"must be one of {SCORE_SOURCES}", self.score_source)
        if self.family != "gaussian":
            raise ContractError("BRMS_FAMILY", "only gaussian is supported by this model", self.family)
        # the environment's rules (settings): a run's config of lo >= hi stored an empty panel,
        # and the run stopped at "panel_not_empty", naming no cause
        if why := score_range_problem(self.score_min, self.score_max):
            raise ContractError("BRMS_SCORE_RANGE", f"score_min,score_max {why}", f"{self.score_min},{self.score_max}")
        if why := refit_ceiling_problem(self.n_samples, self.max_n_samples):
            raise ContractError("BRMS_MAX_N_SAMPLES", f"max_n_samples {why}", self.max_n_samples)
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
    r_brms_timeout_secs: float = Field(R_BRMS_TIMEOUT_SECS, gt=0, le=R_BRMS_TIMEOUT_MAX_SECS,
                                       description="R_BRMS_TIMEOUT_SECS (the whole fit; a week at most)")
    r_brms_internal_token: str | None = Field(None, description="R_BRMS_INTERNAL_TOKEN (shown as an env var)")
    r_brms_max_retries: int = Field(3, ge=0, le=10, description="retries on connection errors, 502/503/504, a 429 (after its"
                                                                 " Retry-After) and a lost answer")
    r_brms_backoff_secs: float = Field(2.0, ge=0, description="first retry delay, doubled each retry")
    native_cache_dir: str | None = Field(None, description="GROWTH_JAX_CACHE_DIR (None: no caches)")
    native_devices: int | None = Field(None, ge=1, le=MAX_NATIVE_DEVICES,
                                       description="GROWTH_NATIVE_DEVICES (None: min(2, CPUs))")
    native_chain_method: str = Field("vectorized", description="GROWTH_NATIVE_CHAIN_METHOD: " + " | ".join(CHAIN_METHODS))

    def get_engine(self) -> Engine:
        # the launchpad's values pass the checks their environment variables pass (a URL typed
        # without its scheme failed in httpx, naming no setting; a chain method in another case
        # ran in a third mode), read when the run uses them (an EnvVar is resolved by then)
        if self.r_brms_base_url is not None:
            env_url({"R_BRMS_BASE_URL": self.r_brms_base_url}, "R_BRMS_BASE_URL")
        return make_engine(self.engine, r_brms_base_url=self.r_brms_base_url,
                           r_brms_timeout_secs=self.r_brms_timeout_secs,
                           r_brms_internal_token=self.r_brms_internal_token,
                           max_retries=self.r_brms_max_retries, backoff_secs=self.r_brms_backoff_secs,
                           native=NativeRuntime(self.native_cache_dir, self.native_devices,
                                                self.native_chain_method.strip().lower()))


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
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL") if url else "",
                                     db_schema=settings.db_schema),
        "growth": GrowthSettings(
            lookback_weeks=settings.lookback_weeks, score_source=settings.score_source,
            family=settings.family, n_chains=settings.n_chains, n_samples=settings.n_samples,
            seed=settings.seed, horizon_weeks=settings.horizon_weeks, max_n_samples=settings.max_n_samples,
            target=settings.metrics_default_target, update_kpi=settings.update_kpi,
            score_min=settings.score_range[0], score_max=settings.score_range[1],
        ),
        "engine": GrowthEngineResource(
            engine=settings.chosen_engine, r_brms_base_url=settings.r_brms_base_url,
            r_brms_timeout_secs=settings.r_brms_timeout_secs, r_brms_internal_token=token,
            native_cache_dir=settings.native.cache_dir, native_devices=settings.native.devices,
            native_chain_method=settings.native.chain_method,
        ),
    }
