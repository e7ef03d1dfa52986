"""R-hat / ESS as the R package ``posterior`` defines them, checked against arviz (which
implements the same definitions) and against known cases."""

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


CASES = [(4, 1000, 0.0, 0.0), (4, 1001, 0.6, 0.0), (2, 300, 0.9, 0.0), (4, 500, -0.4, 0.0),
         (3, 64, 0.7, 0.0), (4, 400, 0.3, 1.5)]


@pytest.mark.parametrize("m, n, phi, offset", CASES)
def test_matches_arviz(m, n, phi, offset):
    az = pytest.importorskip("arviz")
    x = ar1_chains(m, n, phi, seed=m * n, offset=offset)
    assert nd.rhat(x) == pytest.approx(float(az.rhat(x, method="rank")), rel=1e-10)
    assert nd.ess_bulk(x) == pytest.approx(float(az.ess(x, method="bulk")), rel=1e-10)
    assert nd.ess_tail(x) == pytest.approx(float(az.ess(x, method="tail")), rel=1e-10)


def test_known_behaviour_without_arviz():
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
