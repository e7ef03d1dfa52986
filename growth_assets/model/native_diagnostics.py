"""Convergence diagnostics as the R package ``posterior`` defines them (Vehtari et al. 2021).

Rank-normalised split R-hat (``rhat``), bulk ESS (``ess_bulk``) and tail ESS
(``ess_tail``), for one parameter given as an array ``(chains, draws)``. A line-by-line
port of posterior 1.x (``rhat``, ``ess_bulk``, ``ess_tail``, ``.ess``), which arviz's
``rhat(method="rank")`` / ``ess(method="bulk"|"tail")`` implement as well; the tests
check this module against arviz.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata


def _split_chains(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    n = x.shape[1]
    if n < 2:
        return x
    half = n // 2
    return np.concatenate([x[:, :half], x[:, n - half:]], axis=0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    r = rankdata(x, method="average").reshape(x.shape)
    return norm.ppf((r - 0.375) / (x.size + 0.25))


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x.flat[0])) or not np.all(np.isfinite(x))


def _rhat_basic(x: np.ndarray) -> float:
    """Classic R-hat of already split chains."""
    m, n = x.shape
    if _constant(x):
        return math.nan
    chain_mean = x.mean(axis=1)
    chain_var = x.var(axis=1, ddof=1)
    B = n * chain_mean.var(ddof=1) if m > 1 else 0.0
    W = chain_var.mean()
    var_plus = (n - 1) / n * W + B / n
    return float(math.sqrt(var_plus / W))


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row (biased, divided by n), via FFT as posterior does."""
    m, n = x.shape
    size = 1 << (2 * n - 1).bit_length()
    xc = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(xc, n=size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n]
    return acov / n


def _ess(x: np.ndarray) -> float:
    """posterior's ``.ess`` of (already split) chains: Geyer's initial positive sequence,
    made monotone, with the improved (antithetic) end term and the 1/log10(S) floor."""
    m, n = x.shape
    if n < 3 or _constant(x):
        return math.nan
    acov = _autocov(x)
    chain_mean = x.mean(axis=1)
    mean_var = acov[:, 0].mean() * n / (n - 1)
    var_plus = mean_var * (n - 1) / n
    if m > 1:
        var_plus += chain_mean.var(ddof=1)
    acov_means = acov.mean(axis=0)
    rho = np.zeros(n + 1)
    t = 0
    rho_even = 1.0
    rho[0] = rho_even
    rho_odd = 1.0 - (mean_var - acov_means[1]) / var_plus
    rho[1] = rho_odd
    while t < n - 5 and not math.isnan(rho_even + rho_odd) and rho_even + rho_odd > 0:
        t += 2
        rho_even = 1.0 - (mean_var - acov_means[t]) / var_plus
        rho_odd = 1.0 - (mean_var - acov_means[t + 1]) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t] = rho_even
            rho[t + 1] = rho_odd
    max_t = t
    if rho_even > 0:
        rho[max_t] = rho_even
    t = 0
    while t <= max_t - 4:
        t += 2
        if rho[t] + rho[t + 1] > rho[t - 2] + rho[t - 1]:
            rho[t] = (rho[t - 2] + rho[t - 1]) / 2.0
            rho[t + 1] = rho[t]
    total = m * n
    tau_hat = -1.0 + 2.0 * rho[:max_t].sum() + rho[max_t]
    tau_hat = max(tau_hat, 1.0 / math.log10(total))
    return float(total / tau_hat)


def ess_basic(x: np.ndarray, split: bool = True) -> float:
    x = _split_chains(x) if split else np.atleast_2d(np.asarray(x, dtype=np.float64))
    return _ess(x)


def rhat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat: max of the bulk and the folded (tail) R-hat."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    split = _split_chains(x)
    bulk = _rhat_basic(_z_scale(split))
    folded = np.abs(x - np.median(x))
    tail = _rhat_basic(_z_scale(_split_chains(folded)))
    return float(max(bulk, tail))


def ess_bulk(x: np.ndarray) -> float:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return _ess(_z_scale(_split_chains(x)))


def _ess_quantile(x: np.ndarray, prob: float) -> float:
    q = np.quantile(x, prob)  # R's type 7
    return _ess(_split_chains((x <= q).astype(np.float64)))


def ess_tail(x: np.ndarray) -> float:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return float(min(_ess_quantile(x, 0.05), _ess_quantile(x, 0.95)))


def summarise(x: np.ndarray) -> dict[str, float]:
    """mean, sd, q5, q95, rhat, ess_bulk, ess_tail of one parameter ``(chains, draws)``."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    flat = x.reshape(-1)
    return {
        "mean": float(flat.mean()),
        "sd": float(flat.std(ddof=1)),
        "q5": float(np.quantile(flat, 0.05)),
        "q95": float(np.quantile(flat, 0.95)),
        "rhat": rhat(x),
        "ess_bulk": ess_bulk(x),
        "ess_tail": ess_tail(x),
    }
