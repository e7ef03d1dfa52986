"""Every environment variable the project reads, read here and only here.

Names are the seed system's (``BRMS_*``, ``METRICS_*``, ``R_BRMS_*``, ``DATABASE_URL``).
Nothing is read at import time: call ``Settings.from_env()`` where a value is needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

SCORE_SOURCES = ("theta", "accuracy")
FAMILIES = ("gaussian",)
ENGINE_CHOICES = ("brms", "native")


class SettingsError(ValueError):
    """An environment variable with a value the project cannot use."""

    def __init__(self, name: str, value: str, detail: str):
        super().__init__(f"{name}={value!r}: {detail}")
        self.name, self.value = name, value


def _get(env: Mapping[str, str], name: str) -> str | None:
    v = env.get(name)
    return None if v is None or v.strip() == "" else v.strip()


def env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise SettingsError(name, raw, "must be an integer") from None
    if not lo <= v <= hi:
        raise SettingsError(name, raw, f"must be within {lo}..{hi}")
    return v


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise SettingsError(name, raw, "must be a number") from None
    if not math.isfinite(v):
        raise SettingsError(name, raw, "must be finite")
    return v


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, raw, "must be true or false")


def env_choice(env: Mapping[str, str], name: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise SettingsError(name, raw, f"must be one of {', '.join(choices)}")
    return raw.lower()


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    lookback_weeks: int = 12
    n_samples: int = 2000
    n_chains: int = 4
    seed: int = 1234
    horizon_weeks: int = 4
    update_kpi: bool = True
    score_source: str = "theta"
    family: str = "gaussian"
    engine: str | None = None  # GROWTH_ENGINE; None: native unless R_BRMS_BASE_URL is set
    r_brms_base_url: str | None = None
    r_brms_timeout_secs: float = 600.0
    r_brms_internal_token: str | None = field(default=None, repr=False)
    metrics_use_bayesian: bool = True
    metrics_default_target: float = 0.0
    alert_webhook_url: str | None = field(default=None, repr=False)
    dagster_webserver_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        timeout = env_float(env, "R_BRMS_TIMEOUT_SECS", 600.0)
        if timeout <= 0:
            raise SettingsError("R_BRMS_TIMEOUT_SECS", str(timeout), "must be > 0")
        return cls(
            database_url=_get(env, "DATABASE_URL"),
            lookback_weeks=env_int(env, "BRMS_LOOKBACK_WEEKS", 12, 1, 520),
            n_samples=env_int(env, "BRMS_N_SAMPLES", 2000, 200, 20000),
            n_chains=env_int(env, "BRMS_N_CHAINS", 4, 1, 8),
            seed=env_int(env, "BRMS_SEED", 1234, 0, 2**31 - 1),
            horizon_weeks=env_int(env, "BRMS_HORIZON_WEEKS", 4, 0, 520),
            update_kpi=env_bool(env, "BRMS_UPDATE_KPI", True),
            score_source=env_choice(env, "BRMS_SCORE_SOURCE", "theta", SCORE_SOURCES),
            family=env_choice(env, "BRMS_FAMILY", "gaussian", FAMILIES),
            engine=env_choice(env, "GROWTH_ENGINE", None, ENGINE_CHOICES),
            r_brms_base_url=_get(env, "R_BRMS_BASE_URL"),
            r_brms_timeout_secs=timeout,
            r_brms_internal_token=_get(env, "R_BRMS_INTERNAL_TOKEN"),
            metrics_use_bayesian=env_bool(env, "METRICS_USE_BAYESIAN", True),
            metrics_default_target=env_float(env, "METRICS_DEFAULT_TARGET", 0.0),
            alert_webhook_url=_get(env, "ALERT_WEBHOOK_URL"),
            dagster_webserver_url=_get(env, "DAGSTER_WEBSERVER_URL"),
        )

    @property
    def chosen_engine(self) -> str:
        """GROWTH_ENGINE, else brms when R_BRMS_BASE_URL is set, else native."""
        if self.engine:
            return self.engine
        return "brms" if self.r_brms_base_url else "native"
