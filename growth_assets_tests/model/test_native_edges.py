"""Review: native engine defects reproduced on small panels (each fit takes seconds)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from growth_assets.defs.growth.diagnostics import DiagnosticThresholds, evaluate, run_status
from growth_assets.demo.cohort import simulate_panel
from growth_assets.model.contract import FitResultError
from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets.model.panel import Panel
from growth_assets.model.result import fit_panel


@pytest.fixture(scope="module")
def engine():
    return NativeEngine()


@pytest.fixture(scope="module")
def cohort():
    return Panel.from_frame(simulate_panel(40, 3, n_weeks=8, p_obs=0.7, intercept=50.0, slope=1.5,
                                           tau=(4.0, 0.8), cor=-0.3, sigma=2.0))


def test_one_chain_fit_has_a_finite_rhat(engine, cohort):
    """BRMS_N_CHAINS=1 is allowed (settings: 1..8). posterior::rhat splits one chain in two
    and gives a number (spec §4); the native engine reports NaN for every R-hat, so the
    R-hat check fails every one-chain fit, however well it mixed (ESS ~500 of 500 here)."""
    st = FitSettings(n_chains=1, n_samples=1000, seed=7, horizon_week=11, target=55.0, lookback_weeks=8)
    r = fit_panel(engine, cohort, st)
    assert r.diagnostics.min_ess_bulk > 300  # it mixed
    assert math.isfinite(r.diagnostics.max_rhat), {p: s.rhat for p, s in r.summary.items()}
    status, errors = run_status(evaluate(r.diagnostics, r.kept_draws, DiagnosticThresholds()))
    assert status == "passed", errors


def test_max_treedepth_counts_only_transitions_that_hit_the_depth(engine, cohort):
    """Spec §4: 'transitions that hit the maximum tree depth' (Stan/brms: treedepth__ >= 10,
    which needs all 2^10 - 1 = 1023 leapfrog steps; a trajectory that U-turns or diverges
    inside the 10th doubling reports depth 9). native.result counts every transition with
    >= 512 steps (floor(log2(n)) + 1 >= 10): a 600-step transition that stopped by a U-turn is
    reported as hitting the maximum depth."""
    st = FitSettings(n_chains=4, n_samples=1000, seed=7, horizon_week=11, target=55.0, lookback_weeks=8)
    nf = engine.sample(cohort, st)
    steps = np.asarray(nf.extra["num_steps"]).copy()
    steps[:] = 7
    steps[0, 0] = 600  # stopped inside the 10th doubling (U-turn): did not hit the depth
    steps[1, 0] = 1023  # ran the full 10 doublings: hit it
    nf.extra["num_steps"] = steps
    r = engine.result(nf, st)
    assert r.diagnostics.n_max_treedepth == 1


def test_a_fit_whose_chains_ran_off_says_so_naming_the_parameter(engine):
    """2 students and 3 rows (spec §3: the smallest panel that is fitted). With seed 7 the
    native sampler's log sigma runs off (every transition divergent): the error named the
    engine's answer ('posterior_summary.sigma.mean: must be finite (got inf)'), as if the
    engine had broken the contract, not that the sampling failed and why."""
    df = pd.DataFrame({"student_id": ["a", "a", "b"], "week": [0, 1, 0], "score": [1.0, 2.0, 0.5]})
    st = FitSettings(n_chains=4, n_samples=1000, seed=7, horizon_week=11, target=0.0, lookback_weeks=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # said once, by the error: not also as numpy's warning
        with pytest.raises(FitResultError, match=r"population_draws\.sigma.*ran off.*not finite.*2 students, 3 rows"):
            fit_panel(engine, Panel.from_frame(df), st)


def test_wbar_is_the_mean_week_of_the_rows():
    """Spec §3: the Intercept prior sits at the mean week of the rows (brms centres week).
    Mutation probed: wbar = mean of the distinct weeks (equal on a balanced panel such as
    sleepstudy, which is what the brms comparisons use)."""
    from growth_assets.model import contract, native_math

    df = pd.DataFrame({"student_id": ["a", "a", "a", "b", "b", "c"],
                       "week": [0, 1, 2, 0, 1, 0], "score": [1.0, 2.0, 3.5, 0.5, 1.5, 2.0]})
    pn = Panel.from_frame(df)
    red = native_math.reduce_panel(pn, *contract.prior_scales(df["score"].to_numpy()))
    assert red.wbar == pytest.approx(df["week"].mean())  # 4/6, not 1.0
