"""Simulation-based calibration of the native engine's sampler (Talts et al. 2018).

Draw the six hyperparameters from the contract's priors, the students' lines and the
scores from the model, fit, and rank each true value among thinned posterior draws: if
the sampler targets the posterior, every rank is uniform on 0..L. Run in standardised
units (the engine's ``ybar = 0, s = 1``), where the priors are fixed (spec §3 divided by
s), so the simulated data do not move the prior.

The cohorts mix designs (students with 1 to 8 rows), so some fits are in the funnel
(sd_week small against what the data resolve) and some far from it; the sampler's
coordinates (signed linear sd_week, partially non-centred correlation) must leave the
calibration intact in both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from growth_assets.model import native, native_math
from growth_assets.model.engine import FitSettings
from growth_assets.model.panel import Panel

N_SIMS = 160
N_STUDENTS = 10
RANKS = 99  # thinned draws per fit: ranks 0..99
BINS = 10
PARAMS = ("intercept_c", "beta1", "tau0", "tau1", "rho", "sigma")


def prior_draw(rng: np.random.Generator) -> dict[str, float]:
    return {
        "intercept_c": rng.normal(0.0, 2.5),
        "beta1": rng.normal(0.0, 1.0),
        "tau0": abs(stats.cauchy.rvs(random_state=rng)),
        "tau1": abs(stats.cauchy.rvs(random_state=rng)),
        "rho": 2.0 * rng.beta(2.0, 2.0) - 1.0,
        "sigma": abs(stats.cauchy.rvs(random_state=rng)),
    }


def simulate(rng: np.random.Generator, truth: dict[str, float]) -> Panel:
    rows = []
    weeks_of = [np.sort(rng.choice(8, size=int(rng.integers(1, 6)), replace=False))
                for _ in range(N_STUDENTS)]
    wbar = float(np.mean(np.concatenate(weeks_of)))
    beta = np.array([truth["intercept_c"] - truth["beta1"] * wbar, truth["beta1"]])
    t0, t1, r = truth["tau0"], truth["tau1"], truth["rho"]
    cov = np.array([[t0 * t0, r * t0 * t1], [r * t0 * t1, t1 * t1]])
    for i, weeks in enumerate(weeks_of):
        a, b = rng.multivariate_normal(beta, cov)
        for w in weeks:
            rows.append((f"s{i:03d}", int(w), a + b * w + truth["sigma"] * rng.normal()))
    return Panel.from_frame(pd.DataFrame(rows, columns=["student_id", "week", "score"]))


def ranks_of_one(seed: int, settings: FitSettings) -> tuple[dict[str, int], int]:
    """Ranks of one simulation's true values among RANKS thinned draws; divergences."""
    rng = np.random.default_rng(10_000 + seed)
    truth = prior_draw(rng)
    panel = simulate(rng, truth)
    red = native_math.reduce_panel(panel, 0.0, 1.0)  # standardised units are the data's
    groups = native_math.group_stats(red, pad_to=native_math.padded_size(int(red.group.max()) + 1))
    draws, extra = native.sample_hyperparameters(groups, red.wbar, settings)
    flat = {k: v.reshape(-1) for k, v in draws.items()}
    keep = np.linspace(0, len(flat["sigma"]) - 1, RANKS).round().astype(int)
    ranks = {p: int(np.sum(flat[p][keep] < truth[p])) for p in PARAMS}
    return ranks, int(np.sum(extra["diverging"]))


@pytest.mark.slow
def test_ranks_of_the_true_hyperparameters_are_uniform():
    ranks = {p: [] for p in PARAMS}
    divergent = 0
    for sim in range(N_SIMS):
        r, d = ranks_of_one(sim, FitSettings(n_chains=2, n_samples=1000, seed=3 + sim))
        divergent += d
        for p in PARAMS:
            ranks[p].append(r[p])
    # chi-square of 10 bins of the 100 ranks, per parameter; 6 tests at 0.001 each
    worst = 1.0
    for p in PARAMS:
        counts = np.bincount(np.asarray(ranks[p]) * BINS // (RANKS + 1), minlength=BINS)
        pval = stats.chisquare(counts).pvalue
        worst = min(worst, pval)
        assert pval > 1e-3, (p, counts.tolist(), pval)
    # and the ranks are not piled at the ends (an over- or under-dispersed posterior)
    for p in PARAMS:
        x = (np.asarray(ranks[p]) + 0.5) / (RANKS + 1)
        assert stats.kstest(x, "uniform").pvalue > 1e-3, p
    print(f"SBC over {N_SIMS} fits: smallest chi-square p {worst:.3f}; "
          f"divergent draws {divergent} of {N_SIMS * 1000}")
