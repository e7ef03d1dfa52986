"""Scoring a published P when its week arrives (spec §10): the posterior predictive of each
student's realised score at the horizon, against the Normal approximation of spec §7.

The model's forecast of the realised score ``y`` of the horizon week ``h`` is the
posterior predictive ``a + b h + e``, ``e ~ Normal(0, sigma)``: per hyperparameter draw
``d`` the student's line is Normal given her window (``lines.conditional_terms``, the
engines' own algebra), so the predictive is the mixture over draws of
``Normal(m_d(h), s_d(h)^2 + sigma_d^2)`` and every probability below is a mean over draws
of Normal CDFs, exact for the stored draws. The baseline is spec §7's Normal: the latest
calibration before the run's week, ``Normal(theta, se)``, whose probability of reaching the
target is exactly the P that §7 would have published.

Measures (model and baseline on the same students: those with a calibration; the model on
every student in each measure's detail): the PIT value ``Pr(pred <= y)`` (its
10-bin histogram and the chi-square test of uniformity), coverage of the central 50 % and
90 % predictive intervals (``|PIT - 0.5| <= 0.25``, ``<= 0.45``), the Brier score and the
log score (mean log probability given to what happened, probabilities clipped to
[1e-6, 1 - 1e-6]) of the predictive probability of reaching the target, a reliability
table (ten bins of predicted probability: count, mean prediction, observed frequency),
and the Brier skill ``1 - Brier_model / Brier_baseline``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import ndtr

from .contract import ContractError
from .lines import conditional_terms
from .native_math import standardised_draws

PIT_BINS = 10
RELIABILITY_BINS = 10
LOG_CLIP = 1e-6
_CHUNK = 2_000_000  # students x draws per block


def predictive_cdf(draws: dict[str, np.ndarray], n, sw, sww, sy, swy, h: float, x: np.ndarray) -> np.ndarray:
    """``mean_d Pr(a + b h + e <= x[i, j])`` for each student ``i`` (five window sums) and
    value ``j`` (``x`` is (S, k) in data units); draws in data units (brms's names)."""
    std, ybar, s = standardised_draws(draws)
    n, sw, sww, sy, swy = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (n, sw, sww, sy, swy))
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n.size:
        raise ContractError("x", "must be (students, values)", x.shape)
    g0, g1 = (sy - n * ybar) / s, (swy - sw * ybar) / s
    xs = (x - ybar) / s
    key = np.stack([n, np.rint(sw), np.rint(sww)], axis=1)
    uniq, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    out = np.empty_like(xs)
    D = std["sigma"].size
    order = np.argsort(group, kind="stable")
    cuts = np.flatnonzero(np.diff(group[order])) + 1
    for part in np.split(order, cuts):
        gn, gsw, gsww = uniq[group[part[0]]]
        c0, c1, K00, K01, K10, K11, M00, M01, M11 = conditional_terms(
            *(std[k] for k in ("beta0", "beta1", "tau0", "tau1", "rho", "sigma")), gn, gsw, gsww)
        A, B, C = c0 + h * c1, K00 + h * K10, K01 + h * K11  # m_d = A + B g0 + C g1
        sd = np.sqrt(np.maximum(M00 + 2.0 * h * M01 + h * h * M11, 0.0) + std["sigma"] ** 2)
        step = max(1, _CHUNK // D)
        for lo in range(0, part.size, step):
            idx = part[lo:lo + step]
            m = A[None, :] + g0[idx, None] * B[None, :] + g1[idx, None] * C[None, :]  # (s, D)
            for j in range(xs.shape[1]):
                out[idx, j] = ndtr((xs[idx, j, None] - m) / sd[None, :]).mean(axis=1)
    return out


def moment_predictive_cdf(mu, sd, sigma_mean: float, sigma_sd: float, x: np.ndarray) -> np.ndarray:
    """The same for a run without stored draws: the line's stored posterior mean and sd at
    the horizon, plus the residual's E[sigma^2], as one Normal (an approximation; the
    metadata says which was used)."""
    v = np.asarray(sd, dtype=np.float64) ** 2 + sigma_mean ** 2 + sigma_sd ** 2
    return ndtr((np.asarray(x, dtype=np.float64) - np.asarray(mu)[:, None]) / np.sqrt(v)[:, None])


@dataclass(frozen=True)
class Forecasts:
    """One forecaster's predictive for the scored students."""

    pit: np.ndarray  # (S,) Pr(pred <= y)
    q: np.ndarray  # (S,) Pr(pred >= target)


def normal_baseline(theta, se, y, target: float) -> Forecasts:
    """Spec §7's Normal(theta, se) as a forecast of the realised score."""
    theta, se, y = (np.asarray(v, dtype=np.float64) for v in (theta, se, y))
    return Forecasts(pit=ndtr((y - theta) / se), q=np.clip(1.0 - ndtr((target - theta) / se), 0.0, 1.0))


def model_forecasts(cdf: np.ndarray) -> Forecasts:
    """From ``predictive_cdf`` at (y, target): PIT and the probability of reaching the target."""
    return Forecasts(pit=np.clip(cdf[:, 0], 0.0, 1.0), q=np.clip(1.0 - cdf[:, 1], 0.0, 1.0))


def pit_histogram(pit: np.ndarray, bins: int = PIT_BINS) -> tuple[np.ndarray, float]:
    """Counts of PIT in ``bins`` equal bins and the chi-square p-value of uniformity."""
    counts, _ = np.histogram(np.clip(pit, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    p = float(stats.chisquare(counts).pvalue) if counts.sum() >= 5 * bins else float("nan")
    return counts, p


def brier(q: np.ndarray, outcome: np.ndarray) -> float:
    return float(np.mean((q - outcome) ** 2)) if q.size else float("nan")


def log_score(q: np.ndarray, outcome: np.ndarray) -> float:
    if not q.size:
        return float("nan")
    qc = np.clip(q, LOG_CLIP, 1.0 - LOG_CLIP)
    return float(np.mean(np.where(outcome, np.log(qc), np.log1p(-qc))))


def reliability(q: np.ndarray, outcome: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict]:
    """Ten bins of predicted probability: students, mean prediction, observed frequency."""
    b = np.minimum((np.clip(q, 0.0, 1.0) * bins).astype(int), bins - 1)
    rows = []
    for k in range(bins):
        m = b == k
        c = int(m.sum())
        rows.append({"bin": f"{k / bins:.1f}-{(k + 1) / bins:.1f}", "students": c,
                     "mean_predicted": float(q[m].mean()) if c else None,
                     "observed": float(outcome[m].mean()) if c else None})
    return rows


@dataclass(frozen=True)
class Measure:
    """One row of ``growth_forecast_backtest``."""

    measure: str
    model: float | None
    baseline: float | None
    n_students: int
    detail: dict | None = None


def score(y: np.ndarray, target: float, model: Forecasts, baseline: Forecasts,
          has_baseline: np.ndarray) -> list[Measure]:
    """The measures of spec §10 (module docstring). Each row puts the model beside the
    baseline on the same students, those with a calibration (``has_baseline``; spec §10: the
    Normal approximation is scored on the same students); the model's score on every student
    with a realised score is in the row's detail (``model_all_students``, ``students``), and
    is what the coverage check reads."""
    y = np.asarray(y, dtype=np.float64)
    reach = y >= target
    hb = np.asarray(has_baseline, dtype=bool)
    S, Sb = int(y.size), int(hb.sum())
    bpit, bq, breach = baseline.pit[hb], baseline.q[hb], reach[hb]
    mpit, mq = model.pit[hb], model.q[hb]

    def cov(pit, width):
        return float(np.mean(np.abs(pit - 0.5) <= width / 2)) if pit.size else float("nan")

    def every(value, **more) -> dict:
        return {"model_all_students": value, "students": S, **more}

    m_counts, m_p = pit_histogram(mpit)
    a_counts, a_p = pit_histogram(model.pit)
    b_counts, b_p = pit_histogram(bpit)
    bm, bb = brier(mq, breach), brier(bq, breach)
    skill = 1.0 - bm / bb if Sb and bb > 0 else float("nan")
    return [
        Measure("coverage_50", cov(mpit, 0.5), cov(bpit, 0.5), Sb, every(cov(model.pit, 0.5))),
        Measure("coverage_90", cov(mpit, 0.9), cov(bpit, 0.9), Sb, every(cov(model.pit, 0.9))),
        Measure("pit_uniformity_p", m_p, b_p, Sb,
                every(a_p, model_counts=m_counts.tolist(), baseline_counts=b_counts.tolist(),
                      model_all_students_counts=a_counts.tolist(), bins=PIT_BINS)),
        Measure("brier", bm, bb, Sb, every(brier(model.q, reach))),
        Measure("log_score", log_score(mq, breach), log_score(bq, breach), Sb,
                every(log_score(model.q, reach), clip=LOG_CLIP)),
        Measure("brier_skill", skill, None, Sb,
                {"brier_model": bm, "brier_baseline": bb, "students_with_baseline": Sb}),
        Measure("share_reaching_target", float(breach.mean()) if Sb else float("nan"),
                float(breach.mean()) if Sb else None, Sb, every(float(reach.mean()) if S else float("nan"))),
        Measure("reliability", None, None, Sb,
                every(reliability(model.q, reach), model=reliability(mq, breach), baseline=reliability(bq, breach))),
    ]
