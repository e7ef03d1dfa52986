"""The statistical contract of ``shared/growth-model-spec.md`` as pure functions.

No Dagster, no database: every engine (the R brms service, the native engine) and every
reader (the assets, ``metrics.py``) goes through these, so the spec has one home.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

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
SUMMARY_FIELDS = ("mean", "sd", "q5", "q95", "rhat", "ess_bulk", "ess_tail")
DIAGNOSTIC_FIELDS = ("max_rhat", "min_ess_bulk", "min_ess_tail", "n_divergent", "n_max_treedepth")
PREDICTION_FIELDS = ("mean_a", "mean_b", "var_a", "var_b", "cov_ab", "mu", "sigma", "P")
PANEL_COLUMNS = ("student_id", "week", "score")


class ContractError(ValueError):
    """Input or output that breaks the contract; names the field and the offending value."""

    def __init__(self, field: str, detail: str, value: Any = None):
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


def validate_panel(panel: pd.DataFrame) -> pd.DataFrame:
    """Check a panel against spec §1 and §3; return it with canonical dtypes.

    Raises PanelError naming the field: missing columns, NULL ids, non-integer or negative
    weeks, non-finite scores, duplicate (student, week) rows, s == 0, fewer than 2 students
    or fewer than 3 rows.
    """
    missing = [c for c in PANEL_COLUMNS if c not in panel.columns]
    if missing:
        raise PanelError("columns", f"panel lacks column(s) {missing}", list(panel.columns))
    df = panel.loc[:, list(PANEL_COLUMNS)].copy()
    if df["student_id"].isna().any():
        raise PanelError("student_id", "NULL student id", int(df["student_id"].isna().sum()))
    df["student_id"] = df["student_id"].astype(str)
    week = pd.to_numeric(df["week"], errors="coerce")
    bad_week = week.isna() | (week != np.floor(week)) | (week < 0)
    if bad_week.any():
        raise PanelError("week", "must be an integer >= 0", df.loc[bad_week, "week"].iloc[0])
    df["week"] = week.astype(np.int64)
    score = pd.to_numeric(df["score"], errors="coerce").astype(float)
    bad_score = ~np.isfinite(score.to_numpy())
    if bad_score.any():
        raise PanelError("score", "must be a finite number", df.loc[bad_score, "score"].iloc[0])
    df["score"] = score
    dup = df.duplicated(["student_id", "week"])
    if dup.any():
        row = df.loc[dup].iloc[0]
        raise PanelError(
            "student_id,week", "duplicate student-week row", (row["student_id"], int(row["week"]))
        )
    if len(df) < 3:
        raise PanelError("rows", "at least 3 rows are needed", len(df))
    n_students = df["student_id"].nunique()
    if n_students < 2:
        raise PanelError("student_id", "at least 2 students are needed", n_students)
    prior_scales(df["score"].to_numpy())  # raises on s == 0
    return df


def prior_scales(scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(ybar, s): mean and sample sd (n-1) of all scores of the panel (spec §3)."""
    y = np.asarray(scores, dtype=float)
    if y.size < 3:
        raise PanelError("rows", "at least 3 rows are needed", int(y.size))
    s = float(np.std(y, ddof=1))
    if not s > 0:
        raise PanelError("score", "all scores are equal (sd == 0); the priors cannot be scaled", s)
    return float(np.mean(y)), s


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
    p = np.where(sigma > 0, norm.cdf(z), (mu >= target).astype(float))
    return mu, sigma, np.clip(p, 0.0, 1.0)


# --- §7: the Normal approximation ------------------------------------------------------


def normal_approximation_p(mu: np.ndarray | float, sd: np.ndarray | float, target: float) -> np.ndarray:
    """P = 1 - Phi((target - mu) / sd), clamped to [0, 1], for estimates already known to be
    usable (finite mu, finite sd > 0); vectorised for the batch readers."""
    mu, sd = np.asarray(mu, dtype=float), np.asarray(sd, dtype=float)
    return np.clip(norm.sf((target - mu) / sd), 0.0, 1.0)


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
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise ContractError("target", "must be a number", target) from None
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


def _number(obj: Mapping[str, Any], key: str, where: str, *, allow_none: bool = False) -> float:
    if key not in obj:
        raise FitResultError(f"{where}{key}", "missing key")
    v = obj[key]
    if v is None and allow_none:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FitResultError(f"{where}{key}", "must be a plain JSON number", v)
    return float(v)


def _integer(obj: Mapping[str, Any], key: str, where: str = "") -> int:
    v = _number(obj, key, where)
    if v != math.floor(v):
        raise FitResultError(f"{where}{key}", "must be an integer", v)
    return int(v)


def validate_fit_result(obj: Any) -> dict[str, Any]:
    """Check a fit result against spec §8; return it unchanged or raise FitResultError.

    A missing key, an array where a number belongs, a P outside [0, 1]: each is an error
    that names the key, so a malformed or truncated response never becomes a stored run.
    """
    if not isinstance(obj, Mapping):
        raise FitResultError("<root>", "fit result must be a JSON object", type(obj).__name__)
    for key in ("run_id", "engine", "engine_version", "formula"):
        if not isinstance(obj.get(key), str) or not obj.get(key):
            raise FitResultError(key, "missing or not a string", obj.get(key))
    if obj["engine"] not in ENGINES:
        raise FitResultError("engine", f"must be one of {ENGINES}", obj["engine"])
    if obj["formula"] != FORMULA:
        raise FitResultError("formula", f"must be {FORMULA!r}", obj["formula"])
    if not isinstance(obj.get("priors"), list) or not obj["priors"]:
        raise FitResultError("priors", "missing or not a list", obj.get("priors"))
    for key in ("seed", "n_chains", "n_samples", "n_warmup", "n_obs", "n_students",
                "lookback_weeks", "horizon_week"):
        _integer(obj, key)
    _number(obj, "target", "")
    summary = obj.get("posterior_summary")
    if not isinstance(summary, Mapping):
        raise FitResultError("posterior_summary", "missing or not an object")
    for p in POPULATION_PARAMS:
        if not isinstance(summary.get(p), Mapping):
            raise FitResultError(f"posterior_summary.{p}", "missing")
        for f in SUMMARY_FIELDS:
            _number(summary[p], f, f"posterior_summary.{p}.")
    diag = obj.get("diagnostics")
    if not isinstance(diag, Mapping):
        raise FitResultError("diagnostics", "missing or not an object")
    for f in DIAGNOSTIC_FIELDS:
        _number(diag, f, "diagnostics.")
    preds = obj.get("predictions")
    if not isinstance(preds, list):
        raise FitResultError("predictions", "missing or not a list")
    if len(preds) != _integer(obj, "n_students"):
        raise FitResultError("predictions", "one prediction per student is required",
                             f"{len(preds)} predictions for n_students={obj['n_students']}")
    seen: set[str] = set()
    for i, pr in enumerate(preds):
        where = f"predictions[{i}]."
        if not isinstance(pr, Mapping):
            raise FitResultError(f"predictions[{i}]", "not an object")
        sid = pr.get("student_id")
        if not isinstance(sid, str) or not sid:
            raise FitResultError(f"{where}student_id", "missing or not a string", sid)
        if sid in seen:
            raise FitResultError(f"{where}student_id", "duplicate student", sid)
        seen.add(sid)
        _integer(pr, "n_obs", where)
        for f in PREDICTION_FIELDS:
            v = _number(pr, f, where)
            if not math.isfinite(v):
                raise FitResultError(f"{where}{f}", "must be finite", v)
        if not 0.0 <= pr["P"] <= 1.0:
            raise FitResultError(f"{where}P", "must be within [0, 1]", pr["P"])
        if pr["sigma"] < 0 or pr["var_a"] < 0 or pr["var_b"] < 0:
            raise FitResultError(f"{where}sigma/var", "must be >= 0")
    return dict(obj)
