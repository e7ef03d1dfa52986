"""Review: native_diagnostics against an independent transcription of R posterior's
rhat / ess_bulk / ess_tail (posterior 1.x: rhat(), ess_bulk(), ess_tail(), .ess(),
.split_chains(), z_scale(), fold_draws(), ess_quantile())."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, rankdata

from growth_assets.model import native_diagnostics as nd


# ---- posterior (R) transcribed; x is (chains, draws) here, posterior uses (draws, chains)
def _split(x):
    n = x.shape[1]
    if n < 2:
        return x
    half = n / 2
    return np.vstack([x[:, : math.floor(half)], x[:, math.ceil(half + 1) - 1:]])


def _z(x):
    r = rankdata(x.reshape(-1), method="average").reshape(x.shape)
    return norm.ppf((r - 3 / 8) / (x.size - 2 * 3 / 8 + 1))


def _rhat_basic(x):
    m, n = x.shape
    if n < 3:
        return math.nan
    cm, cv = x.mean(axis=1), x.var(axis=1, ddof=1)
    return math.sqrt((n * cm.var(ddof=1) / cv.mean() + n - 1) / n)


def _acov(v):
    n = v.size
    c = v - v.mean()
    return np.array([np.dot(c[: n - k], c[k:]) / n for k in range(n)])


def _ess(x):
    m, n = x.shape
    if n < 3 or np.ptp(x) == 0:
        return math.nan
    acov = np.stack([_acov(x[i]) for i in range(m)], axis=1)  # (lags, chains)
    mean_var = acov[0].mean() * n / (n - 1)
    var_plus = mean_var * (n - 1) / n
    if m > 1:
        var_plus += x.mean(axis=1).var(ddof=1)
    rho = np.zeros(n)
    t = 0
    even = 1.0
    rho[0] = even
    odd = 1 - (mean_var - acov[1].mean()) / var_plus
    rho[1] = odd
    while t < n - 5 and not math.isnan(even + odd) and even + odd > 0:
        t += 2
        even = 1 - (mean_var - acov[t].mean()) / var_plus
        odd = 1 - (mean_var - acov[t + 1].mean()) / var_plus
        if even + odd >= 0:
            rho[t], rho[t + 1] = even, odd
    max_t = t
    if even > 0:
        rho[max_t] = even
    t = 0
    while t <= max_t - 4:
        t += 2
        if rho[t] + rho[t + 1] > rho[t - 2] + rho[t - 1]:
            rho[t] = (rho[t - 2] + rho[t - 1]) / 2
            rho[t + 1] = rho[t]
    s = m * n
    tau = -1 + 2 * rho[:max_t].sum() + rho[max_t]
    tau = max(tau, 1 / math.log10(s))
    return s / tau


def posterior_rhat(x):
    x = np.atleast_2d(x)
    b = _rhat_basic(_z(_split(x)))
    f = _rhat_basic(_z(_split(np.abs(x - np.median(x)))))
    return max(b, f)


def posterior_ess_bulk(x):
    return _ess(_z(_split(np.atleast_2d(x))))


def posterior_ess_tail(x):
    x = np.atleast_2d(x)
    out = []
    for p in (0.05, 0.95):
        out.append(_ess(_split((x <= np.quantile(x, p)).astype(float))))
    return min(out)


def _chains(m, n, phi, seed):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(m, n))
    x = np.zeros((m, n))
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + e[:, i]
    return x


def test_four_chains_match_posterior():
    """Sanity: with 4 chains the native figures are posterior's (this passes)."""
    x = _chains(4, 500, 0.6, 1)
    assert nd.rhat(x) == pytest.approx(posterior_rhat(x), rel=1e-6)
    assert nd.ess_bulk(x) == pytest.approx(posterior_ess_bulk(x), rel=1e-6)
    assert nd.ess_tail(x) == pytest.approx(posterior_ess_tail(x), rel=1e-6)


def test_one_chain_rhat_is_posteriors_split_rhat_not_nan():
    """posterior::rhat splits a single chain in two and returns a number; spec §4 says the
    diagnostics are posterior's, and BRMS_N_CHAINS=1 is an allowed setting (settings.N_CHAINS
    1..8). native_diagnostics.rhat returns NaN (arviz-stats' rank R-hat wants 2 chains), so
    every one-chain native fit has max_rhat = NaN and fails the R-hat check whatever it did."""
    x = _chains(1, 1000, 0.3, 2)
    want = posterior_rhat(x)
    assert math.isfinite(want)
    got = nd.rhat(x)
    assert got == pytest.approx(want, rel=1e-6)
