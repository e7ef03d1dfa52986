"""A diagnostic that posterior's definitions leave undefined (NaN: a stuck chain, constant
draws of a sampled parameter) fails the checks; it is never dropped before they see it
(issue: nothing silently wrong, item 5; the R side: tests/testthat/test-diagnostics.R)."""

from __future__ import annotations

import math

import numpy as np

from growth_assets.defs.growth.diagnostics import RHAT_CHECK, DiagnosticThresholds, evaluate, run_status
from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets.model.panel import Panel
from growth_assets_tests.model.test_native import synthetic


def test_constant_draws_of_a_sampled_parameter_fail_the_rhat_check():
    settings = FitSettings(n_chains=2, n_samples=400, seed=3, horizon_week=10, target=60.0, lookback_weeks=8)
    engine = NativeEngine()
    nf = engine.sample(Panel.from_frame(synthetic(30, seed=4)), settings)
    healthy = engine.result(nf, settings)
    assert math.isfinite(healthy.diagnostics.max_rhat)
    nf.draws["sigma"] = np.full_like(nf.draws["sigma"], float(nf.draws["sigma"].mean()))  # a stuck sigma
    stuck = engine.result(nf, settings)
    # today's main dropped the NaN (_nan_max) and reported the other parameters' max R-hat
    assert math.isnan(stuck.summary["sigma"].rhat)
    assert math.isnan(stuck.diagnostics.max_rhat) and math.isnan(stuck.diagnostics.min_ess_bulk)
    outcomes = {o.check_name: o for o in evaluate(stuck.diagnostics, stuck.kept_draws, DiagnosticThresholds())}
    assert not outcomes[RHAT_CHECK].passed and outcomes[RHAT_CHECK].severity == "ERROR"
    assert run_status(list(outcomes.values()))[0] == "failed_checks"


def test_an_undefined_tail_ess_fails_the_ess_check_whatever_the_bulk():
    """Found by review: min(500, nan) is 500 in Python (and min(nan, 500) is nan), so a NaN
    tail ESS beside a finite bulk ESS passed the check, the run status and the ladder."""
    from dataclasses import replace

    from growth_assets.defs.growth.diagnostics import ESS_CHECK, falls_short
    from growth_assets_tests.support.results import make_result

    d = make_result(2).diagnostics
    for bulk, tail in ((500.0, math.nan), (math.nan, 500.0)):
        odd = replace(d, min_ess_bulk=bulk, min_ess_tail=tail)
        outcomes = {o.check_name: o for o in evaluate(odd, 4000, DiagnosticThresholds())}
        assert not outcomes[ESS_CHECK].passed and outcomes[ESS_CHECK].severity == "ERROR", (bulk, tail)
        assert run_status(list(outcomes.values()))[0] == "failed_checks"
        assert falls_short(odd, DiagnosticThresholds())
