"""R-hat / ESS as the R package ``posterior`` defines them, on chains whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from growth_assets.model import native_diagnostics as nd


def ar1_chains(m: int, n: int, phi: float, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_t(4, size=(m, n))
    x = np.zeros((m, n))
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + e[:, i]
    return x + offset * np.arange(m)[:, None]


def test_known_behaviour():
    iid = ar1_chains(4, 1000, 0.0, seed=1)
    assert 0.995 < nd.rhat(iid) < 1.01
    assert 3000 < nd.ess_bulk(iid) < 5000  # about the number of draws
    sticky = ar1_chains(4, 1000, 0.95, seed=2)
    assert nd.ess_bulk(sticky) < 300  # ~ 4000 (1 - phi) / (1 + phi) = 103
    apart = ar1_chains(4, 1000, 0.0, seed=3, offset=3.0)
    assert nd.rhat(apart) > 1.5
    # antithetic chains: ESS above S, capped by S log10(S)
    anti = ar1_chains(4, 1000, -0.5, seed=4)
    assert 4000 < nd.ess_bulk(anti) <= 4000 * math.log10(4000)
    assert math.isnan(nd.ess_bulk(np.ones((4, 100))))
    s = nd.summarise(iid)
    assert s["q5"] == pytest.approx(np.quantile(iid, 0.05))
    assert s["sd"] == pytest.approx(iid.std(ddof=1))


def test_tail_ess_sees_what_bulk_ess_does_not():
    """Heavy tails mixing slowly: bulk ESS stays high while tail ESS drops (posterior's point)."""
    rng = np.random.default_rng(7)
    scale = np.repeat(np.exp(ar1_chains(4, 1000, 0.99, seed=8) / 10), 1, axis=1)
    x = rng.normal(size=(4, 1000)) * scale
    assert nd.ess_tail(x) < 0.5 * nd.ess_bulk(x)
