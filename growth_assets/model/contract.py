"""The statistical contract of ``docs/growth-model-spec.md`` as pure functions.

No Dagster, no database: every engine (the R brms service, the native engine) and every
reader (the assets, ``metrics.py``) goes through these, so the spec has one home.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy.special import ndtr  # Phi; scipy.stats costs a second to import

FORMULA = "score ~ week + (week | student_id)"
ENGINES = ("brms", "native")
POPULATION_PARAMS = (
    "b_Intercept",
    "b_week",
    "sd_student_id__Intercept",
    "sd_student_id__week",
    "cor_student_id__Intercept__week",
    "sigma",
)
# Population draws a run keeps for the real-time path (metrics, path "update"). P there is
# the mean over draws d of Phi(z_d); its Monte Carlo error is sd_d(Phi(z_d)) / sqrt(ESS).
# Phi(z_d) varies over the draws only through the hyperparameters' uncertainty, which for
# a cohort of hundreds is small against the student's own: sd_d(Phi(z_d)) was at most 0.041
# over 300 students of a 1000-student cohort (growth_assets_tests/metrics/test_update.py).
# 1000 draws, thinned evenly from the run's (at the defaults one in eight, about as far
# apart as the chains' autocorrelation, so ESS ~ 1000), keep the error at 0.041 / sqrt(1000)
# = 0.0013, and under 0.005 as long as sd_d(Phi(z_d)) < 0.15 (a cohort of a few dozen).
POPULATION_DRAWS = 1000
MAX_POPULATION_DRAWS = 100_000
SUMMARY_FIELDS = ("mean", "sd", "q5", "q95", "rhat", "ess_bulk", "ess_tail")
DIAGNOSTIC_FIELDS = ("max_rhat", "min_ess_bulk", "min_ess_tail", "n_divergent", "n_max_treedepth")
PREDICTION_FIELDS = ("mean_a", "mean_b", "var_a", "var_b", "cov_ab", "mu", "sigma", "P")
PANEL_COLUMNS = ("student_id", "week", "score")


class ContractError(ValueError):
    """Input or output that breaks the contract; names the field and the offending value."""

    def __init__(self, field: str, detail: str, value: Any = None):
        if isinstance(value, np.generic):  # show 3, not np.int64(3)
            value = value.item()
        self.field = field
        self.detail = detail
        self.value = value
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{field}: {detail}{shown}")


class PanelError(ContractError):
    """A panel that must not be fitted (spec §3)."""


class FitResultError(ContractError):
    """A fit result that does not follow spec §8."""


# --- §1/§3: the panel and its priors -------------------------------------------------


SCALE_RANGE = (1e-75, 1e75)  # the scores' sd: its fourth power is a normal float


def prior_scales(scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(ybar, s): mean and sample sd (n-1) of all scores of the panel (spec §3)."""
    y = np.asarray(scores, dtype=float)
    if y.size < 3:
        raise PanelError("rows", "at least 3 rows are needed", int(y.size))
    ybar = float(np.mean(y))
    if not float(np.ptp(y)) > 0:
        raise PanelError("score", "all scores are equal (sd == 0); the priors cannot be scaled", 0.0)
    with np.errstate(over="ignore", under="ignore"):  # judged just below
        s = float(np.std(y, ddof=1))
    if not SCALE_RANGE[0] <= s <= SCALE_RANGE[1]:
        # a variance (s^2 in the lines' algebra) must be a normal float: at s ~ 1e-160 the
        # students' sigma came out half its size, silently; the squares of scores near 1e155
        # overflowed (s = inf, accepted) and of ones near 1e-200 underflowed ("all equal"). The
        # sd shown is taken over the largest deviation, where its squares neither overflow nor
        # underflow (the usual one above is kept bit for bit: every fit depends on it)
        spread = float(np.max(np.abs(y - ybar)))
        shown = spread * float(np.std((y - ybar) / spread, ddof=1))
        raise PanelError("score", f"the scores' sd must be within {SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g}"
                         " (rescale them)", shown)
    return ybar, s


def priors(ybar: float, s: float) -> list[dict[str, Any]]:
    """The prior table of spec §3, as recorded with every fit."""
    return [
        {"class": "Intercept", "dist": "normal", "args": [ybar, 2.5 * s]},
        {"class": "b", "coef": "week", "dist": "normal", "args": [0.0, s]},
        {"class": "sd", "dist": "cauchy", "args": [0.0, s], "lb": 0},
        {"class": "sigma", "dist": "cauchy", "args": [0.0, s], "lb": 0},
        {"class": "cor", "dist": "lkj", "args": [2.0]},
    ]


# --- §6: what a fit yields per student ------------------------------------------------


def horizon_week(lookback_weeks: int, horizon_weeks: int) -> int:
    """h = (L - 1) + horizon: the week index the prediction is made for."""
    if lookback_weeks < 1:
        raise ContractError("lookback_weeks", "must be >= 1", lookback_weeks)
    if horizon_weeks < 0:
        raise ContractError("horizon_weeks", "must be >= 0", horizon_weeks)
    return int(lookback_weeks) - 1 + int(horizon_weeks)


def line_prediction(
    mean_a: np.ndarray | float,
    mean_b: np.ndarray | float,
    var_a: np.ndarray | float,
    var_b: np.ndarray | float,
    cov_ab: np.ndarray | float,
    h: float,
    target: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, P) of the expected score a + b*h under a Normal line posterior.

    mu = mean_a + h*mean_b; sigma^2 = var_a + 2h*cov_ab + h^2*var_b;
    P = Pr(a + b*h >= target) = 1 - Phi((target - mu) / sigma).
    A zero sigma gives P of 0 or 1 (a point mass); a negative variance is an error.
    The mixture-level line posterior lives in ``lines``; this is its value at one week.
    """
    mean_a, mean_b, var_a, var_b, cov_ab = (
        np.asarray(x, dtype=float) for x in (mean_a, mean_b, var_a, var_b, cov_ab)
    )
    mu = mean_a + h * mean_b
    var = var_a + 2.0 * h * cov_ab + h * h * var_b
    if np.any(var < -1e-12 * np.maximum(1.0, var_a + h * h * var_b)):
        raise ContractError("var_a/var_b/cov_ab", "line posterior covariance is not positive")
    sigma = np.sqrt(np.maximum(var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (mu - target) / sigma
    p = np.where(sigma > 0, ndtr(z), (mu >= target).astype(float))
    return mu, sigma, np.clip(p, 0.0, 1.0)


# --- §7: the Normal approximation ------------------------------------------------------


def has_normal_approximation(score_source: str | None) -> bool:
    """Whether §7's approximation speaks of the scores a run is fitted on: it is a theta (and its
    se), so of accuracy scores (§5: a target of 0.7 is 70 % correct) there is none."""
    return score_source != "accuracy"


def normal_approximation_p(mu: np.ndarray | float, sd: np.ndarray | float, target: float) -> np.ndarray:
    """P = 1 - Phi((target - mu) / sd), clamped to [0, 1], for estimates already known to be
    usable (finite mu, finite sd > 0); vectorised for the batch readers."""
    mu, sd = np.asarray(mu, dtype=float), np.asarray(sd, dtype=float)
    return np.clip(ndtr((mu - target) / sd), 0.0, 1.0)


def normal_approximation(mu: float | None, sd: float | None, target: float) -> float | None:
    """P = 1 - Phi((target - mu) / sd) from an ability estimate and its standard error.

    No estimate, a non-finite one, or sd <= 0: None, never a made-up number.
    """
    if mu is None or sd is None:
        return None
    mu, sd = float(mu), float(sd)
    if not (math.isfinite(mu) and math.isfinite(sd)) or sd <= 0:
        return None
    return float(normal_approximation_p(mu, sd, target))


def check_target(target: Any) -> float:
    """A target must be a finite number (a NaN target is an error, not a silent P)."""
    # a bool or a string is not a target, even where Python would convert it
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, float, np.integer, np.floating)):
        raise ContractError("target", "must be a number", target)
    try:
        t = float(target)
    except OverflowError:  # an int beyond a float's range (10**400)
        raise ContractError("target", "must be finite", f"{str(target)[:20]}...") from None
    if not math.isfinite(t):
        raise ContractError("target", "must be finite", target)
    return t


# --- §8: the fit result -----------------------------------------------------------------


def make_run_id(engine: str, at: datetime | None = None) -> str:
    """``brms-YYYYMMDD-HHMMSS`` / ``native-…`` in UTC (the seed's format)."""
    if engine not in ENGINES:
        raise ContractError("engine", f"must be one of {ENGINES}", engine)
    at = at or datetime.now(timezone.utc)
    return f"{engine}-{at.astimezone(timezone.utc):%Y%m%d-%H%M%S}"


def thin_draws(draws: Mapping[str, Any], n: int = POPULATION_DRAWS) -> dict[str, np.ndarray]:
    """``n`` draws evenly spaced over all chains' draws (flattened chain by chain), or
    all of them when there are fewer."""
    flat = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in draws.items()}
    total = len(next(iter(flat.values())))
    if total <= n:
        return flat
    keep = np.linspace(0, total - 1, n).round().astype(np.int64)
    return {k: v[keep] for k, v in flat.items()}


def _no_key_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FitResultError(k, "the key appears twice in one JSON object (which value is meant?)")
        out[k] = v
    return out


def _not_json(token: str) -> Any:
    raise FitResultError("answer", "is not JSON: numbers are plain JSON numbers (spec §8), null where none", token)


def parse_json(body: bytes | str) -> Any:
    """An engine's JSON answer: a key twice in one object is a FitResultError naming it (the
    json module keeps the last value without a word), and so are ``NaN`` and ``Infinity``
    (not JSON: the json module took them as floats); malformed JSON is json's ValueError."""
    import json

    return json.loads(body, object_pairs_hook=_no_key_twice, parse_constant=_not_json)
