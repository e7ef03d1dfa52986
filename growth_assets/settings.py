"""Every environment variable the project reads, read here and only here.

Names are the seed system's (``BRMS_*``, ``METRICS_*``, ``R_BRMS_*``, ``DATABASE_URL``).
Nothing is read at import time: call ``Settings.from_env()`` where a value is needed.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SCORE_SOURCES = ("theta", "accuracy")
FAMILIES = ("gaussian",)
ENGINE_CHOICES = ("brms", "native")
CHAIN_METHODS = ("vectorized", "sequential")


@dataclass(frozen=True)
class IntLimit:
    """An integer setting's default and inclusive range, stated once for the environment,
    the Dagster resources, the CLI, the engines and (kept equal by a test) the R service."""

    env: str
    default: int
    lo: int
    hi: int

    def check(self, field_name: str, value) -> int:
        from .model.contract import ContractError  # the model's error type, named by field

        if isinstance(value, bool) or not isinstance(value, (int,)) and not (
                isinstance(value, float) and value.is_integer()):
            raise ContractError(field_name, "must be an integer", value)
        v = int(value)
        if not self.lo <= v <= self.hi:
            raise ContractError(field_name, f"must be within {self.lo}..{self.hi}", v)
        return v


LOOKBACK_WEEKS = IntLimit("BRMS_LOOKBACK_WEEKS", 12, 1, 520)
N_SAMPLES = IntLimit("BRMS_N_SAMPLES", 2000, 200, 20000)
N_CHAINS = IntLimit("BRMS_N_CHAINS", 4, 1, 8)
SEED = IntLimit("BRMS_SEED", 1234, 0, 2**31 - 1)
HORIZON_WEEKS = IntLimit("BRMS_HORIZON_WEEKS", 4, 0, 520)
# the convergence ladder: a fit whose R-hat or ESS falls short is refitted once with twice
# the iterations, up to this many
MAX_N_SAMPLES = IntLimit("BRMS_MAX_N_SAMPLES", 8000, 200, 20000)
HORIZON_WEEK = IntLimit("horizon_week", 15, 0, 1_000_000)  # (L - 1) + horizon, a week index
R_BRMS_TIMEOUT_SECS = 600.0
# a whole fit's bound, a week at most: 9999999999 ("never") overflowed the socket's timeout
# (time_t) in every fit, an error that named no setting
R_BRMS_TIMEOUT_MAX_SECS = 7 * 86_400.0
MAX_NATIVE_DEVICES = 256
# GROWTH_JAX_CACHE_DIR's words for "no caches" (the project's false words among them)
CACHE_OFF_WORDS = ("", "off", "none", "0", "false", "no")


class SettingsError(ValueError):
    """An environment variable with a value the project cannot use."""

    def __init__(self, name: str, value: str, detail: str):
        super().__init__(f"{name}={value!r}: {detail}")
        self.name, self.value = name, value


def _get(env: Mapping[str, str], name: str) -> str | None:
    v = env.get(name)
    return None if v is None or v.strip() == "" else v.strip()


# what a person writes for a number: ASCII digits (Python's int() and float() also read
# "1_000" and other scripts' digits, which nobody means in a setting)
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise SettingsError(name, raw, "must be an integer")
    v = int(raw)
    if not lo <= v <= hi:
        raise SettingsError(name, raw, f"must be within {lo}..{hi}")
    return v


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in ("nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"):
        raise SettingsError(name, raw, "must be finite")
    if not _FLOAT.fullmatch(raw):
        raise SettingsError(name, raw, "must be a number")
    v = float(raw)
    if not math.isfinite(v):
        raise SettingsError(name, raw, "must be finite")
    return v


def env_url(env: Mapping[str, str], name: str, secret: bool = False) -> str | None:
    """An http(s) URL with a host, or None when unset. ``secret`` (a webhook, whose path is its
    token): the error shows at most its scheme and host."""
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in raw)
        # a port beyond 65535, or not a number: ValueError; port 0, which urlsplit reads as 0: no
        # server listens there (else a "connection refused" later)
        ok = ok and parts.port != 0
    except ValueError:
        parts, ok = None, False
    if not ok:
        shown = raw if not secret else (f"{parts.scheme}://{parts.hostname}/..." if parts and parts.hostname
                                         else "(not shown: it holds a secret)")
        raise SettingsError(name, shown, "must be an http:// or https:// URL with a host (and a port within 1..65535)")
    return raw


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


DB_SCHEMA = "growth"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def libpq_options(env: Mapping[str, str] | None = None) -> str:
    """libpq's own ``PGOPTIONS`` (not a setting of the project's): libpq reads it only when a
    connection string has no ``options``, and the project always writes some (its
    search_path), so ``db.connection`` adds it back from here."""
    return (os.environ if env is None else env).get("PGOPTIONS", "")


def check_schema(value: str, name: str = "GROWTH_DB_SCHEMA") -> str:
    """The schema of the project's own tables: a plain lower-case SQL identifier, not one of
    PostgreSQL's own (pg_*, information_schema)."""
    if not _SCHEMA_NAME.fullmatch(value) or value.startswith("pg_") or value == "information_schema":
        raise SettingsError(name, value, "must be a lower-case SQL identifier (letters, digits, _; at most 63; "
                                         "not pg_* or information_schema)")
    return value


def env_choice(env: Mapping[str, str], name: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise SettingsError(name, raw, f"must be one of {', '.join(choices)}")
    return raw.lower()


SCORE_RANGE = (-1000.0, 1000.0)  # BRMS_SCORE_RANGE: a theta (|theta| < 10) or a scaled score
ACCURACY_RANGE = (0.0, 1.0)  # correct / attempts, always


def score_range_problem(lo: float, hi: float) -> str | None:
    """What is wrong with a score range (None: nothing); BRMS_SCORE_RANGE's and a run's config's rule."""
    return None if math.isfinite(lo) and math.isfinite(hi) and lo < hi else "must be finite with lo < hi"


def refit_ceiling_problem(n_samples: int, max_n_samples: int) -> str | None:
    """BRMS_MAX_N_SAMPLES below BRMS_N_SAMPLES: the convergence refit would never run, without a word."""
    if max_n_samples < n_samples:
        return f"must be >= {N_SAMPLES.env} ({n_samples}); equal to it turns the refit off"
    return None


def env_range(env: Mapping[str, str], name: str, default: tuple[float, float]) -> tuple[float, float]:
    raw = _get(env, name)
    if raw is None:
        return default
    parts = [x.strip() for x in raw.split(",")]
    # the other numbers' rule (ASCII digits: float() took "1_000" and other scripts' digits,
    # which the R service, reading the same variable, refuses)
    if len(parts) != 2 or not all(_FLOAT.fullmatch(x) for x in parts):
        raise SettingsError(name, raw, "must be two numbers, lo,hi")
    lo, hi = (float(x) for x in parts)
    if why := score_range_problem(lo, hi):
        raise SettingsError(name, raw, why)
    return lo, hi


def env_limit(env: Mapping[str, str], limit: IntLimit) -> int:
    return env_int(env, limit.env, limit.default, limit.lo, limit.hi)


def default_cache_dir(env: Mapping[str, str]) -> str:
    base = _get(env, "XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "growth_assets", "jax")


@dataclass(frozen=True)
class NativeRuntime:
    """How the native engine runs JAX (GROWTH_JAX_CACHE_DIR, GROWTH_NATIVE_DEVICES,
    GROWTH_NATIVE_CHAIN_METHOD): read here, applied by the engine when it is built."""

    cache_dir: str | None = None  # None: no persistent caches
    devices: int | None = None  # None: min(2, CPUs)
    chain_method: str = "vectorized"

    def __post_init__(self) -> None:
        # built from the launchpad too (GrowthEngineResource): "Sequential" or "parallel" ran in
        # a third mode (chains over devices, yet not vectorized), silently
        if self.chain_method not in CHAIN_METHODS:
            raise SettingsError("GROWTH_NATIVE_CHAIN_METHOD", str(self.chain_method), f"must be one of {CHAIN_METHODS}")
        if self.devices is not None and not 1 <= self.devices <= MAX_NATIVE_DEVICES:
            raise SettingsError("GROWTH_NATIVE_DEVICES", str(self.devices), f"must be within 1..{MAX_NATIVE_DEVICES}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "NativeRuntime":
        env = os.environ if env is None else env
        raw = env.get("GROWTH_JAX_CACHE_DIR")
        if raw is None:
            cache = default_cache_dir(env)
        else:
            cache = None if raw.strip().lower() in CACHE_OFF_WORDS else raw.strip()
        devices = env_int(env, "GROWTH_NATIVE_DEVICES", 0, 0, MAX_NATIVE_DEVICES) or None
        method = env_choice(env, "GROWTH_NATIVE_CHAIN_METHOD", "vectorized", CHAIN_METHODS)
        return cls(cache, devices, method)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = field(default=None, repr=False)  # holds the password
    # GROWTH_DB_SCHEMA: the schema of the project's own tables (the platform's are found on the
    # rest of the connection's search_path, public by default)
    db_schema: str = DB_SCHEMA
    lookback_weeks: int = LOOKBACK_WEEKS.default
    n_samples: int = N_SAMPLES.default
    n_chains: int = N_CHAINS.default
    seed: int = SEED.default
    horizon_weeks: int = HORIZON_WEEKS.default
    max_n_samples: int = MAX_N_SAMPLES.default
    update_kpi: bool = True
    score_source: str = "theta"
    family: str = "gaussian"
    engine: str | None = None  # GROWTH_ENGINE; None: native unless R_BRMS_BASE_URL is set
    r_brms_base_url: str | None = None
    r_brms_timeout_secs: float = R_BRMS_TIMEOUT_SECS
    r_brms_internal_token: str | None = field(default=None, repr=False)
    metrics_use_bayesian: bool = True
    metrics_default_target: float = 0.0
    # a score outside it is left out of the panel and the real-time path (and counted), and
    # refused by `growth-assets fit`: one bad value never stops everyone's run
    score_range: tuple[float, float] = SCORE_RANGE
    # the real-time path: how long a database may take before the call fails with a clear error
    db_connect_timeout_secs: int = 5
    db_statement_timeout_ms: int = 30_000
    db_lock_timeout_ms: int = 5_000
    alert_webhook_url: str | None = field(default=None, repr=False)
    dagster_webserver_url: str | None = None
    native: NativeRuntime = field(default_factory=NativeRuntime)
    # GROWTH_LOCAL_DIR: the demo's database, Dagster home, outputs; None: the project's .local
    local_dir: str | None = None
    r_service_dir: str | None = None  # R_BRMS_SERVICE_DIR: default r_brms_plumber/ of the project
    pg_bindir: str | None = None  # PG_BINDIR: PostgreSQL's server binaries for local clusters

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings of ``env`` (default: this process's environment, read again whenever
        it changed: the same environment gives the same, cached, Settings)."""
        if env is None:
            return _settings_of(_environment_key())
        return cls._parse(env)

    @classmethod
    def _parse(cls, env: Mapping[str, str]) -> "Settings":
        timeout = env_float(env, "R_BRMS_TIMEOUT_SECS", R_BRMS_TIMEOUT_SECS)
        if not 0 < timeout <= R_BRMS_TIMEOUT_MAX_SECS:
            raise SettingsError("R_BRMS_TIMEOUT_SECS", _get(env, "R_BRMS_TIMEOUT_SECS") or "",
                                f"must be > 0 and at most {R_BRMS_TIMEOUT_MAX_SECS:.0f} (a week)")
        n_samples = env_limit(env, N_SAMPLES)
        # unset: the refit's ceiling is at least the iterations asked for (BRMS_N_SAMPLES=10000 on
        # its own was refused, naming a variable its user never set); set, it must be
        max_n_samples = env_int(env, MAX_N_SAMPLES.env, max(MAX_N_SAMPLES.default, n_samples),
                                MAX_N_SAMPLES.lo, MAX_N_SAMPLES.hi)
        if why := refit_ceiling_problem(n_samples, max_n_samples):
            raise SettingsError(MAX_N_SAMPLES.env, str(max_n_samples), why)
        return cls(
            database_url=_get(env, "DATABASE_URL"),
            db_schema=check_schema(_get(env, "GROWTH_DB_SCHEMA") or DB_SCHEMA),
            lookback_weeks=env_limit(env, LOOKBACK_WEEKS),
            n_samples=n_samples,
            n_chains=env_limit(env, N_CHAINS),
            seed=env_limit(env, SEED),
            horizon_weeks=env_limit(env, HORIZON_WEEKS),
            max_n_samples=max_n_samples,
            update_kpi=env_bool(env, "BRMS_UPDATE_KPI", True),
            score_source=env_choice(env, "BRMS_SCORE_SOURCE", "theta", SCORE_SOURCES),
            family=env_choice(env, "BRMS_FAMILY", "gaussian", FAMILIES),
            engine=env_choice(env, "GROWTH_ENGINE", None, ENGINE_CHOICES),
            r_brms_base_url=env_url(env, "R_BRMS_BASE_URL"),
            r_brms_timeout_secs=timeout,
            r_brms_internal_token=_get(env, "R_BRMS_INTERNAL_TOKEN"),
            metrics_use_bayesian=env_bool(env, "METRICS_USE_BAYESIAN", True),
            metrics_default_target=env_float(env, "METRICS_DEFAULT_TARGET", 0.0),
            score_range=env_range(env, "BRMS_SCORE_RANGE", SCORE_RANGE),
            db_connect_timeout_secs=env_int(env, "DATABASE_CONNECT_TIMEOUT_SECS", 5, 1, 3600),
            db_statement_timeout_ms=env_int(env, "DATABASE_STATEMENT_TIMEOUT_MS", 30_000, 1, 86_400_000),
            db_lock_timeout_ms=env_int(env, "DATABASE_LOCK_TIMEOUT_MS", 5_000, 1, 86_400_000),
            alert_webhook_url=env_url(env, "ALERT_WEBHOOK_URL", secret=True),
            dagster_webserver_url=env_url(env, "DAGSTER_WEBSERVER_URL"),
            native=NativeRuntime.from_env(env),
            local_dir=_get(env, "GROWTH_LOCAL_DIR") or None,
            r_service_dir=_get(env, "R_BRMS_SERVICE_DIR"),
            pg_bindir=_get(env, "PG_BINDIR"),
        )

    @property
    def chosen_engine(self) -> str:
        """GROWTH_ENGINE, else brms when R_BRMS_BASE_URL is set, else native."""
        if self.engine:
            return self.engine
        return "brms" if self.r_brms_base_url else "native"


def _environment_key() -> tuple:
    """The process environment as a hashable value, cheaply: CPython's os.environ keeps its
    encoded items in ``_data`` (2 us to copy, against 50 us to decode and sort every item;
    the real-time path reads the settings on every call)."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return tuple(data.items())
    return tuple(sorted(os.environ.items()))


@functools.lru_cache(maxsize=8)
def _settings_of(key: tuple) -> Settings:
    """The settings of exactly the environment ``key`` is (not of a later one)."""
    return Settings._parse({os.fsdecode(k) if isinstance(k, bytes) else k:
                            os.fsdecode(v) if isinstance(v, bytes) else v for k, v in key})
