"""Convergence diagnostics as the R package ``posterior`` defines them (Vehtari et al. 2021).

Rank-normalised split R-hat, bulk ESS and tail ESS of one parameter given as an array
``(chains, draws)``, computed by ``arviz-stats`` (ArviZ's array-level statistics, which
implement posterior's definitions), plus the summary row the contract reports.
"""

from __future__ import annotations

import numpy as np
from arviz_stats.base import array_stats
from scipy.special import ndtri
from scipy.stats import rankdata


def _chains(x: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


def _undefined(x: np.ndarray) -> bool:
    """posterior returns NA for non-finite or constant draws (arviz-stats would not)."""
    return not np.isfinite(x).all() or np.ptp(x) == 0


def _z_scale(x: np.ndarray) -> np.ndarray:
    """``posterior::z_scale``: normal scores of the ranks (average ties, Blom's offset 3/8)."""
    return ndtri((rankdata(x, method="average").reshape(x.shape) - 0.375) / (x.size + 0.25))


def rhat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat (max of bulk and folded), as ``posterior::rhat``.

    One chain: posterior splits it in two and compares the halves; arviz-stats wants two
    chains before it splits (NaN for one, which failed every one-chain fit's R-hat check),
    so the halves go to it already split, ranked and folded, as chains to compare as they are."""
    x = _chains(x)
    if _undefined(x):
        return float("nan")
    if x.shape[0] > 1:
        return float(array_stats.rhat(x, chain_axis=-2, draw_axis=-1, method="rank"))
    half = x.shape[1] // 2
    if half < 2:
        return float("nan")
    halves = np.vstack((x[:, :half], x[:, -half:]))  # the middle draw of an odd count left out
    return max(float(array_stats.rhat(_z_scale(h), chain_axis=-2, draw_axis=-1, method="identity"))
               for h in (halves, np.abs(halves - np.median(halves))))


def ess_bulk(x: np.ndarray) -> float:
    x = _chains(x)
    if _undefined(x):
        return float("nan")
    return float(array_stats.ess(x, chain_axis=-2, draw_axis=-1, method="bulk"))


def ess_tail(x: np.ndarray) -> float:
    """min of the ESS of the 5 % and 95 % quantile indicators, as ``posterior::ess_tail``."""
    x = _chains(x)
    if _undefined(x):
        return float("nan")
    return float(array_stats.ess(x, chain_axis=-2, draw_axis=-1, method="tail", prob=(0.05, 0.95)))


def summarise(x: np.ndarray) -> dict[str, float]:
    """mean, sd, q5, q95, rhat, ess_bulk, ess_tail of one parameter ``(chains, draws)``."""
    x = _chains(x)
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
