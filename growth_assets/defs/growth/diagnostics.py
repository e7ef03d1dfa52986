"""The diagnostics rules of a fit: one function decides, the checks and the run status use it.

R-hat: ERROR when max > 1.05, WARN when > 1.01. ESS (bulk and tail): ERROR when min < 100,
WARN when < 400. Divergent transitions: ERROR above 1 % of the kept draws, WARN above 0.
A NaN diagnostic is an ERROR (it means the summary could not be computed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import Field, model_validator

from ...model.result import Diagnostics

RHAT_CHECK = "rhat_below_threshold"
ESS_CHECK = "ess_above_threshold"
DIVERGENCE_CHECK = "divergent_transitions_below_threshold"
CHECK_NAMES = (RHAT_CHECK, ESS_CHECK, DIVERGENCE_CHECK)


class DiagnosticThresholds(dg.ConfigurableResource):
    """Thresholds of the diagnostics checks; overridable per run in the launchpad."""

    rhat_warn: float = Field(1.01, gt=1.0, description="WARN when max R-hat exceeds this")
    rhat_error: float = Field(1.05, gt=1.0, description="ERROR when max R-hat exceeds this")
    ess_warn: float = Field(400.0, ge=0, description="WARN when min bulk/tail ESS is below this")
    ess_error: float = Field(100.0, ge=0, description="ERROR when min bulk/tail ESS is below this")
    divergent_error_share: float = Field(
        0.01, ge=0, le=1, description="ERROR when divergent transitions exceed this share of kept draws")

    @model_validator(mode="after")
    def _error_beyond_warn(self) -> "DiagnosticThresholds":
        """An ERROR threshold milder than its WARN one would ERROR where no WARN was."""
        if self.rhat_error < self.rhat_warn:
            raise ValueError(f"rhat_error ({self.rhat_error}) must be >= rhat_warn ({self.rhat_warn})")
        if self.ess_error > self.ess_warn:
            raise ValueError(f"ess_error ({self.ess_error}) must be <= ess_warn ({self.ess_warn})")
        return self


@dataclass(frozen=True)
class Outcome:
    check_name: str
    passed: bool
    severity: str  # "ERROR" | "WARN": what a failure of this outcome means
    observed: float
    warn_threshold: float
    error_threshold: float
    description: str
    digits: int = 4  # significant digits the value is shown with (more where 4 would equal its threshold)

    def metadata(self) -> dict[str, Any]:
        return {"observed": float(f"{self.observed:.{self.digits}g}"), "warn_threshold": self.warn_threshold,
                "error_threshold": self.error_threshold, "description": self.description}


def _digits(observed: float, threshold: float) -> int:
    """The significant digits (4 at least) at which ``observed`` is not written as ``threshold``:
    a max R-hat of 1.0504 fails 1.05, and shown with 4 digits it read "1.05 > 1.05"."""
    return next((k for k in range(4, 18) if f"{observed:.{k}g}" != f"{threshold:.{k}g}"), 17)


def _grade(name: str, observed: float, warn: float, error: float, higher_is_worse: bool,
           what: str) -> Outcome:
    if not math.isfinite(observed):
        return Outcome(name, False, "ERROR", observed, warn, error, f"{what} is not finite")
    bad_err = observed > error if higher_is_worse else observed < error
    bad_warn = observed > warn if higher_is_worse else observed < warn
    cmp = ">" if higher_is_worse else "<"
    if bad_err:
        k = _digits(observed, error)
        return Outcome(name, False, "ERROR", observed, warn, error, f"{what} {observed:.{k}g} {cmp} {error:.4g}", k)
    if bad_warn:
        k = _digits(observed, warn)
        return Outcome(name, False, "WARN", observed, warn, error, f"{what} {observed:.{k}g} {cmp} {warn:.4g}", k)
    return Outcome(name, True, "ERROR", observed, warn, error, f"{what} {observed:.4g} within thresholds")


def _min_ess(d: Diagnostics) -> float:
    """The lower of bulk and tail ESS; NaN if either is (Python's min keeps or drops a NaN by
    the order of its arguments: min(500, nan) is 500)."""
    bulk, tail = float(d.min_ess_bulk), float(d.min_ess_tail)
    return math.nan if math.isnan(bulk) or math.isnan(tail) else min(bulk, tail)


def evaluate(d: Diagnostics, kept_draws: int, t: DiagnosticThresholds) -> list[Outcome]:
    """Grade a fit's diagnostics against the thresholds: one outcome per check."""
    kept = max(1, int(kept_draws))
    ess = _min_ess(d)
    n_div = float(d.n_divergent)
    share = n_div / kept
    div = _grade(DIVERGENCE_CHECK, share, 0.0, t.divergent_error_share, True, "divergent share")
    div = Outcome(div.check_name, div.passed, div.severity, n_div, 0.0, t.divergent_error_share * kept,
                  f"{int(n_div)} divergent transitions of {kept} kept draws ({share:.2%})")
    return [
        _grade(RHAT_CHECK, float(d.max_rhat), t.rhat_warn, t.rhat_error, True, "max R-hat"),
        _grade(ESS_CHECK, ess, t.ess_warn, t.ess_error, False, "min bulk/tail ESS"),
        div,
    ]


def run_status(outcomes: list[Outcome]) -> tuple[str, list[str]]:
    """``failed_checks`` when any ERROR outcome failed (WARNs do not stop a fit)."""
    errors = [o.description for o in outcomes if not o.passed and o.severity == "ERROR"]
    return ("failed_checks" if errors else "passed"), errors


def falls_short(d: Diagnostics, t: DiagnosticThresholds) -> bool:
    """R-hat or ESS short of the WARN thresholds (or undefined): what more iterations can
    mend. Divergences are not: a longer run of the same sampler diverges as often."""
    ess = _min_ess(d)
    rhat = float(d.max_rhat)
    return not (math.isfinite(rhat) and math.isfinite(ess)) or rhat > t.rhat_warn or ess < t.ess_warn


def attempt_record(result) -> dict[str, Any]:
    d = result.diagnostics
    return {"n_samples": result.n_samples, "seed": result.seed, "max_rhat": d.max_rhat,
            "min_ess_bulk": d.min_ess_bulk, "min_ess_tail": d.min_ess_tail,
            "n_divergent": d.n_divergent, "elapsed_s": d.elapsed_s}
