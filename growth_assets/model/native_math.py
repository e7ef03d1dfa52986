"""The mathematics of the native engine, free of any sampler.

The model (spec §2) with the random effects integrated out. For a student with ``n``
rows, design ``Z = [1, week]`` and scores ``y``, given the six hyperparameters
``beta = (b_Intercept, b_week)``, ``tau = (sd_Intercept, sd_week)``, ``rho`` (the
correlation) and ``sigma``:

    y ~ MVN(Z beta, V),  V = sigma^2 I + Z Sigma Z',  Sigma = diag(tau) Omega diag(tau)

With ``A = Z'Z``, ``g = Z'y`` and ``B = I + A Sigma / sigma^2`` (2x2):

    log det V       = n log sigma^2 + log det B                       (determinant lemma)
    r' V^-1 r       = r'r / sigma^2 - u' Mi u / sigma^4,  u = Z'r = g - A beta,
    Mi              = (Sigma^-1 + A / sigma^2)^-1 = Sigma B^-1          (Woodbury)

so a student enters only through ``(n, sum w, sum w^2)`` (which fix ``A``), ``g`` and
``y'y``. Students with the same ``A`` (the same ``(n, sum w, sum w^2)``) are grouped: a
group needs its count, the mean and the scatter of ``g`` and the total of ``y'y``, so one
log-density evaluation costs O(number of groups), whatever the number of students.

Given the hyperparameters the line ``(a_i, b_i) = beta + r_i`` of a student is Normal:

    mean = c + K g,   c = (I - K A) beta,  K = Mi / sigma^2,    cov = C = Mi,

where ``c``, ``K`` and ``C`` depend on the group only. Averaging over hyperparameter
draws (Rao-Blackwell) is therefore exact through per-group moments of the 6-vector
``v = (c0, c1, K00, K01, K10, K11)``: mean of the line = J E[v], covariance = E[C] +
J Cov(v) J' with ``J = [[1, 0, g0, g1, 0, 0], [0, 1, 0, 0, g0, g1]]`` (law of total
variance). For ``P = mean_d Phi(z_d)`` with ``z_d = (e_h'(c + K g) - t) / s_h`` and
``s_h^2 = e_h' C e_h``, ``z_d = w_d . (1, g0, g1)`` with a per-group, per-draw ``w_d``.
With ``m = E z`` and ``v = Var z`` (over the draws), Taylor's theorem with Lagrange's
remainder gives two cheap forms of ``mean_d Phi(z_d)``, each with a proven error bound:

    first order    Phi(m),                        error <= max|phi'| / 2 * v = 0.12099 v
    second order   Phi(m) - m phi(m) v / 2,       error <= max|phi''| / 6 * E|z - m|^3
                                                        <= 0.066490 * (E (z - m)^4)^(3/4)

(``max|phi'| = phi(1)``, ``max|phi''| = phi(0)``; the first-order term has mean zero; the
third absolute moment is bounded by the fourth, Lyapunov). Each student gets the form with
the smaller bound, and the exact mean over draws where that bound exceeds the tolerance.
``m``, ``v`` and the fourth moment are exact per group through the moments of ``w``
(``E[w]``, ``Cov(w)``, its fourth central moments), so the cheap forms cost O(groups x draws
+ students), the exact mean O(students x draws).

Every function takes ``xp`` (numpy or jax.numpy) where it matters, so the JAX log density
and its numpy twin are the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from .chunks import each_chunk
from .contract import line_prediction
from .keys import unique_rows
from .lines import conditional_terms, posterior_blocks
from .panel import Panel

LOG_2PI = math.log(2.0 * math.pi)
P_TOLERANCE = 1e-3  # max error of the cheap P; students above it get the exact mean over draws
_STUDENT_CHUNK = 100_000
# max |phi'(z)| = phi(1) = exp(-1/2)/sqrt(2 pi); half of it bounds Phi(mean z) - mean Phi(z).
P_BOUND_COEF = 0.5 * math.exp(-0.5) / math.sqrt(2.0 * math.pi)
# max |phi''(z)| = phi(0) = 1/sqrt(2 pi); a sixth of it bounds the second-order form's error
# per unit of E|z - m|^3.
P_BOUND2_COEF = 1.0 / (6.0 * math.sqrt(2.0 * math.pi))


# --- sufficient statistics -----------------------------------------------------------------


@dataclass
class Reduced:
    """A validated panel reduced to per-student sufficient statistics (standardised y)."""

    student_ids: np.ndarray  # (S,) object, sorted
    n_obs: np.ndarray  # (S,) int64
    sw: np.ndarray  # (S,) sum of weeks
    sww: np.ndarray  # (S,) sum of squared weeks
    g: np.ndarray  # (S, 2): (sum y, sum w*y), y standardised
    yy: np.ndarray  # (S,) sum y^2, y standardised
    group: np.ndarray  # (S,) int64 index of the student's (n, sw, sww) group
    ybar: float
    s: float
    wbar: float  # mean week over the rows (brms's centring of the fixed effect)
    n_rows: int


@dataclass
class Groups:
    """Per-group statistics, padded with empty groups (count 0) to a fixed length."""

    count: np.ndarray  # (G,) students in the group
    n: np.ndarray  # (G,) rows per student
    sw: np.ndarray
    sww: np.ndarray
    gbar: np.ndarray  # (G, 2) mean of g over the group's students
    scatter: np.ndarray  # (G, 3) sum (g - gbar)(g - gbar)': (00, 01, 11)
    yy: np.ndarray  # (G,) total of y'y over the group's students
    n_groups: int  # real groups; the rest are padding

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return (self.count, self.n, self.sw, self.sww, self.gbar, self.scatter, self.yy)


def padded_size(n: int, minimum: int = 64) -> int:
    """The power-of-two bucket for ``n`` groups, so array shapes (and compiled code) are
    shared between cohorts of different sizes."""
    return max(minimum, 1 << max(0, int(n - 1).bit_length()))


def reduce_panel(panel: Panel, ybar: float, s: float) -> Reduced:
    """Per-student sufficient statistics of a checked panel (no per-row Python objects)."""
    codes, uniques = panel.student, panel.student_ids
    n_students = len(uniques)
    w = panel.week.astype(np.float64)
    y = (panel.score - ybar) / s
    n = np.bincount(codes, minlength=n_students)
    sw = np.bincount(codes, weights=w, minlength=n_students)
    sww = np.bincount(codes, weights=w * w, minlength=n_students)
    g = np.stack(
        [
            np.bincount(codes, weights=y, minlength=n_students),
            np.bincount(codes, weights=w * y, minlength=n_students),
        ],
        axis=1,
    )
    yy = np.bincount(codes, weights=y * y, minlength=n_students)
    # weeks are integers, so (n, sum w, sum w^2) are exact integers: a safe grouping key
    group = _pattern_groups(n, sw, sww)
    return Reduced(
        student_ids=np.asarray(uniques, dtype=object),
        n_obs=n.astype(np.int64),
        sw=sw,
        sww=sww,
        g=g,
        yy=yy,
        group=group.reshape(-1).astype(np.int64),
        ybar=float(ybar),
        s=float(s),
        wbar=float(w.mean()),
        n_rows=int(panel.n_rows),
    )


def group_stats(p: Reduced, pad_to: int | None = None) -> Groups:
    """Aggregate students into groups of identical Z'Z (two-pass, centred scatter)."""
    gi = p.group
    n_groups = int(gi.max()) + 1
    size = n_groups if pad_to is None else max(pad_to, n_groups)
    count = np.bincount(gi, minlength=size).astype(np.float64)
    safe = np.maximum(count, 1.0)

    def gsum(x: np.ndarray) -> np.ndarray:
        return np.bincount(gi, weights=x, minlength=size)

    n = gsum(p.n_obs.astype(np.float64)) / safe
    sw = gsum(p.sw) / safe
    sww = gsum(p.sww) / safe
    gbar = np.stack([gsum(p.g[:, 0]), gsum(p.g[:, 1])], axis=1) / safe[:, None]
    d = p.g - gbar[gi]
    scatter = np.stack([gsum(d[:, 0] ** 2), gsum(d[:, 0] * d[:, 1]), gsum(d[:, 1] ** 2)], axis=1)
    return Groups(count, n, sw, sww, gbar, scatter, gsum(p.yy), n_groups)


# --- the collapsed likelihood --------------------------------------------------------------


def panel_totals(groups: "Groups") -> np.ndarray:
    """Sums over all students that the log density needs outside the group loop:
    (rows, sum y'y, sum g0, sum g1, sum A00, sum A01, sum A11)."""
    c = groups.count
    return np.array([
        np.sum(c * groups.n), np.sum(groups.yy),
        np.sum(c * groups.gbar[:, 0]), np.sum(c * groups.gbar[:, 1]),
        np.sum(c * groups.n), np.sum(c * groups.sw), np.sum(c * groups.sww),
    ])


def collapsed_loglik(xp, beta0, beta1, tau0, tau1, rho, sigma, groups, totals=None) -> object:
    """Sum over all students of log N(y_i | Z_i beta, sigma^2 I + Z_i Sigma Z_i').

    ``groups`` is ``Groups.as_tuple()`` (numpy or jax arrays), ``totals`` its
    ``panel_totals`` (computed here when None); scalar hyperparameters.
    """
    count, n, sw, sww, gbar, scatter, yy = groups
    if totals is None:
        c = count
        totals = [xp.sum(c * n), xp.sum(yy), xp.sum(c * gbar[:, 0]), xp.sum(c * gbar[:, 1]),
                  xp.sum(c * n), xp.sum(c * sw), xp.sum(c * sww)]
    rows, tyy, tg0, tg1, tA00, tA01, tA11 = (totals[i] for i in range(7))
    M00, M01, M11, logdetB = posterior_blocks(xp, tau0, tau1, rho, sigma, n, sw, sww)
    s2 = sigma * sigma
    # sum_i r_i'r_i over all students: linear in the totals
    rr = (tyy - 2.0 * (beta0 * tg0 + beta1 * tg1)
          + tA00 * beta0 * beta0 + 2.0 * tA01 * beta0 * beta1 + tA11 * beta1 * beta1)
    # sum_i u_i'Mi u_i = tr(Mi scatter) + count (gbar - A beta)'Mi(gbar - A beta), per group
    e0 = gbar[:, 0] - (n * beta0 + sw * beta1)
    e1 = gbar[:, 1] - (sw * beta0 + sww * beta1)
    uMu = xp.sum(
        M00 * (scatter[:, 0] + count * e0 * e0)
        + 2.0 * M01 * (scatter[:, 1] + count * e0 * e1)
        + M11 * (scatter[:, 2] + count * e1 * e1)
    )
    logdet = rows * (LOG_2PI + xp.log(s2)) + xp.sum(count * logdetB)
    return -0.5 * (logdet + rr / s2 - uMu / (s2 * s2))


# --- Rao-Blackwellised per-student posterior -----------------------------------------------


# A student's quantities are polynomials in her g = (g0, g1) whose coefficients depend on her
# group only: with x = (1, g0, g1), the line's mean is linear in x, its variance and Var z are
# quadratic forms in x, and E (z - m)^4 = E (dw . x)^4 is a quartic. Each group's moments are
# therefore kept as those polynomials' coefficients, and a student costs one gather of a
# group's coefficients and a few multiply-adds (not a 9 x 9 quadratic form of her own).
# monomials of degree <= 2 in (g0, g1): 1, g0, g1, g0^2, g0 g1, g1^2
_QUAD_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
# monomials of degree <= 4: g0^p g1^q, with the multinomial coefficient of (dw . x)^4's term
_QUARTIC = tuple((p, q, math.comb(4, p + q) * math.comb(p + q, p)) for p in range(5) for q in range(5 - p))


def _quartic_at() -> tuple[np.ndarray, np.ndarray]:
    """Where each _QUARTIC moment E[dw0^(4-p-q) dw1^p dw2^q] stands in E[p p'] (p: dw's
    products of _QUAD_PAIRS): its four factors split into two pairs."""
    rows, cols = [], []
    for p, q, _ in _QUARTIC:
        f = [0] * (4 - p - q) + [1] * p + [2] * q
        rows.append(_QUAD_PAIRS.index((f[0], f[1])))
        cols.append(_QUAD_PAIRS.index((f[2], f[3])))
    return np.array(rows), np.array(cols)


_QUARTIC_AT = _quartic_at()
_QUARTIC_MULT = np.array([m for _, _, m in _QUARTIC], dtype=np.float64)


@dataclass
class GroupMoments:
    """Per-group moments over the hyperparameter draws (standardised units), as the
    coefficients of each student quantity's polynomial in x = (1, g0, g1)."""

    lin: np.ndarray  # (G, 3, 3): (mean_a, mean_b, E z) . x
    quad: np.ndarray  # (G, 4, 6): var_a, cov_ab, var_b, Var z over the monomials 1, g0, g1, g0^2, g0 g1, g1^2
    quartic: np.ndarray  # (G, 15): E (z - m)^4 over the monomials g0^p g1^q of _QUARTIC


def _quad_coefficients(M: np.ndarray) -> np.ndarray:
    """x' M x over the monomials of _QUAD_PAIRS, for (..., 3, 3) matrices M (not necessarily
    symmetric: x' M x = x' sym(M) x)."""
    return np.stack([M[..., i, j] if i == j else M[..., i, j] + M[..., j, i] for i, j in _QUAD_PAIRS], axis=-1)


def _monomials(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, 6) monomials of degree <= 2 of _QUAD_PAIRS and (S, 15) of _QUARTIC, for g (S, 2)."""
    g0, g1 = g[:, 0], g[:, 1]
    p0 = [np.ones_like(g0), g0, g0 * g0, g0 * g0 * g0, (g0 * g0) * (g0 * g0)]
    p1 = [np.ones_like(g1), g1, g1 * g1, g1 * g1 * g1, (g1 * g1) * (g1 * g1)]
    quad = np.stack([p0[0], g0, g1, p0[2], g0 * g1, p1[2]], axis=-1)
    quartic = np.stack([p0[p] * p1[q] for p, q, _ in _QUARTIC], axis=-1)
    return quad, quartic


def group_draw_terms(draws: dict[str, np.ndarray], n, sw, sww, h: float, t: float):
    """For groups (G,) and draws (D,): v (G, D, 6), C (G, D, 3), w (G, D, 3).

    ``draws`` in standardised units: beta0, beta1, tau0, tau1, rho, sigma, each (D,).
    """
    c0, c1, K00, K01, K10, K11, M00, M01, M11 = conditional_terms(
        *(draws[k][None, :] for k in ("beta0", "beta1", "tau0", "tau1", "rho", "sigma")),
        n[:, None], sw[:, None], sww[:, None])
    v = np.stack(np.broadcast_arrays(c0, c1, K00, K01, K10, K11), axis=-1)
    C = np.stack(np.broadcast_arrays(M00, M01, M11), axis=-1)
    sh = np.sqrt(np.maximum(M00 + 2.0 * h * M01 + h * h * M11, 1e-300))
    w = np.stack(
        np.broadcast_arrays((c0 + h * c1 - t) / sh, (K00 + h * K10) / sh, (K01 + h * K11) / sh),
        axis=-1,
    )
    return v, C, w


def group_moments(draws, n, sw, sww, h: float, t: float, block: int = 32) -> GroupMoments:
    """Moments of the per-draw group terms, a block of groups at a time (bounded memory)."""
    G = len(n)
    lin = np.empty((G, 3, 3))
    quad = np.empty((G, 4, 6))
    quartic = np.empty((G, len(_QUARTIC)))
    a_idx, b_idx = [0, 2, 3], [1, 4, 5]  # v's entries in mean_a = a . x and mean_b = b . x
    for lo in range(0, G, block):
        sl = slice(lo, min(G, lo + block))
        v, C, w = group_draw_terms(draws, n[sl], sw[sl], sww[sl], h, t)
        D = v.shape[1]
        Ev = v.mean(axis=1)
        dv = v - Ev[:, None, :]
        Cv = np.matmul(dv.transpose(0, 2, 1), dv) / D  # (b, 6, 6), population covariance
        EC = C.mean(axis=1)
        Ew = w.mean(axis=1)
        dw = w - Ew[:, None, :]
        Cw = np.matmul(dw.transpose(0, 2, 1), dw) / D  # Cov(w): Var z = x' Cw x
        lin[sl, 0], lin[sl, 1], lin[sl, 2] = Ev[:, a_idx], Ev[:, b_idx], Ew
        quad[sl, 0] = _quad_coefficients(Cv[:, a_idx][:, :, a_idx])
        quad[sl, 1] = _quad_coefficients(Cv[:, a_idx][:, :, b_idx])
        quad[sl, 2] = _quad_coefficients(Cv[:, b_idx][:, :, b_idx])
        quad[sl, 3] = _quad_coefficients(Cw)
        quad[sl, 0:3, 0] += EC  # E[C] = (00, 01, 11): var_a, cov_ab, var_b
        # every fourth moment E[dw_i dw_j dw_k dw_l] is an entry of E[p p'], p = dw's six products
        prod = np.stack([dw[..., i] * dw[..., j] for i, j in _QUAD_PAIRS], axis=-1)
        M4 = np.matmul(prod.transpose(0, 2, 1), prod) / D
        quartic[sl] = M4[:, _QUARTIC_AT[0], _QUARTIC_AT[1]] * _QUARTIC_MULT
    return GroupMoments(lin, quad, quartic)


def student_lines(gm: GroupMoments, group: np.ndarray, g: np.ndarray):
    """(mean_a, mean_b, var_a, var_b, cov_ab, P_approx, P_bound) per student, exact moments
    of the Rao-Blackwellised posterior; ``P_approx`` (the module docstring's first- or
    second-order form, whichever has the smaller bound) within ``P_bound`` of the
    Rao-Blackwellised P. Standardised units; vectorised over the given students."""
    m2, m4 = _monomials(g)
    lin = np.einsum("sok,sk->so", gm.lin[group], m2[:, :3])
    quad = np.einsum("sok,sk->so", gm.quad[group], m2)
    z_m4 = np.maximum(np.einsum("sk,sk->s", gm.quartic[group], m4), 0.0)
    p, bound = cheap_p(lin[:, 2], np.maximum(quad[:, 3], 0.0), z_m4)
    return lin[:, 0], lin[:, 1], quad[:, 0], quad[:, 2], quad[:, 1], p, bound


def cheap_p(z_mean: np.ndarray, z_var: np.ndarray, z_m4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, its error bound) from the mean, variance and fourth central moment of z over the
    draws: of the module docstring's two forms, the one with the smaller proven bound."""
    first = P_BOUND_COEF * z_var
    second = P_BOUND2_COEF * z_m4 ** 0.75
    p1 = ndtr(z_mean)
    p2 = p1 - 0.5 * z_mean * np.exp(-0.5 * z_mean * z_mean) / math.sqrt(2.0 * math.pi) * z_var
    use2 = second < first
    return np.where(use2, p2, p1), np.where(use2, second, first)


def cheap_p_one(z_mean: np.float64, z_var: np.float64, z_m4: np.float64) -> tuple[np.float64, np.float64]:
    """``cheap_p`` of one student, on scalars: the same operations in the same order (the
    same bits), without building arrays for one number each (~60 us of a ~100 us call)."""
    first = P_BOUND_COEF * z_var
    second = P_BOUND2_COEF * z_m4 ** 0.75
    p1 = ndtr(z_mean)
    if second < first:
        return p1 - 0.5 * z_mean * np.exp(-0.5 * z_mean * z_mean) / math.sqrt(2.0 * math.pi) * z_var, second
    return p1, first


def exact_p(draws, n, sw, sww, g: np.ndarray, h: float, t: float, chunk: int = 2_000_000):
    """mean over draws of Phi(z_d) for students (all with the same group: scalars n, sw, sww).

    Works through students in chunks so that chunk * D stays bounded."""
    _, _, w = group_draw_terms(draws, np.array([n]), np.array([sw]), np.array([sww]), h, t)
    wt = np.ascontiguousarray(w[0].T)  # (3, D): z_d = (1, g0, g1) . w_d
    D = wt.shape[1]
    step = max(1, chunk // D)
    x = np.column_stack([np.ones(len(g)), g[:, 0], g[:, 1]])
    out = np.empty(len(g))
    for lo in range(0, len(g), step):
        # (students, D) in one pass; einsum, not BLAS: a threaded BLAS spins on the core the
        # database (on the same machine in tests and benchmarks) is using, and costs 2x here
        z = np.einsum("si,id->sd", x[lo:lo + step], wt)
        ndtr(z, out=z)
        out[lo:lo + step] = z.mean(axis=1)
    return out


def student_predictions(
    red: Reduced,
    draws_flat: dict[str, np.ndarray],
    h: float,
    target: float,
    p_tolerance: float = P_TOLERANCE,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Rao-Blackwellised line posterior, mu, sigma and P per student (data units)."""
    ybar, s = red.ybar, red.s
    t_std = (target - ybar) / s
    n_groups = int(red.group.max()) + 1
    gs = group_stats(red)
    gm = group_moments(draws_flat, gs.n[:n_groups], gs.sw[:n_groups],
                                   gs.sww[:n_groups], h, t_std)
    S = len(red.student_ids)
    out = {k: np.empty(S) for k in ("mean_a", "mean_b", "var_a", "var_b", "cov_ab", "P")}
    bound = np.empty(S)

    def chunk(j: int) -> None:
        sl = slice(j * _STUDENT_CHUNK, min(S, (j + 1) * _STUDENT_CHUNK))
        ma, mb, va, vb, cab, p, bd = student_lines(gm, red.group[sl], red.g[sl])
        out["mean_a"][sl] = ybar + s * ma
        out["mean_b"][sl] = s * mb
        out["var_a"][sl] = s * s * va
        out["var_b"][sl] = s * s * vb
        out["cov_ab"][sl] = s * s * cab
        out["P"][sl] = p
        bound[sl] = bd

    each_chunk(chunk, -(-S // _STUDENT_CHUNK))  # disjoint slices, on the cores this process may use
    exact = bound > p_tolerance
    if exact.any():
        idx = np.flatnonzero(exact)
        order = idx[np.argsort(red.group[idx], kind="stable")]
        grp = red.group[order]
        cuts = np.flatnonzero(np.diff(grp)) + 1
        for part in np.split(order, cuts):
            gi = red.group[part[0]]
            out["P"][part] = exact_p(
                draws_flat, gs.n[gi], gs.sw[gi], gs.sww[gi], red.g[part], h, t_std)
    mu, sd, _ = line_prediction(
        out["mean_a"], out["mean_b"], out["var_a"], out["var_b"], out["cov_ab"], h, target)
    out["mu"], out["sigma"] = mu, sd
    out["P"] = np.clip(out["P"], 0.0, 1.0)
    info = {
        "p_tolerance": p_tolerance,
        "n_p_exact": int(exact.sum()),
        "max_p_bound_cheap": float(bound[~exact].max()) if (~exact).any() else 0.0,
    }
    return out, info


def standardised_draws(draws) -> tuple[dict[str, np.ndarray], float, float]:
    """Population draws in data units (brms's names) as the standardised draws the
    arithmetic uses, with their scale (ybar = mean intercept, s = sqrt(E sd_Intercept^2 +
    E sigma^2)): data = ybar + s * standardised."""
    b0 = np.asarray(draws["b_Intercept"], dtype=np.float64)
    t0 = np.asarray(draws["sd_student_id__Intercept"], dtype=np.float64)
    sig = np.asarray(draws["sigma"], dtype=np.float64)
    ybar = float(b0.mean())
    s = float(np.sqrt(np.mean(t0 * t0) + np.mean(sig * sig))) or 1.0
    std = {"beta0": (b0 - ybar) / s, "beta1": np.asarray(draws["b_week"], dtype=np.float64) / s,
           "tau0": t0 / s, "tau1": np.asarray(draws["sd_student_id__week"], dtype=np.float64) / s,
           "rho": np.asarray(draws["cor_student_id__Intercept__week"], dtype=np.float64),
           "sigma": sig / s}
    # the per-draw terms of one student's line that do not depend on her data (_predict_one):
    # Sigma's entries, sigma^2, and det(Sigma) / sigma^2
    std["S00"], std["S11"] = std["tau0"] ** 2, std["tau1"] ** 2
    std["S01"] = std["rho"] * std["tau0"] * std["tau1"]
    std["s2"] = std["sigma"] ** 2
    std["ds"] = (std["S00"] * std["S11"] - std["S01"] ** 2) / std["s2"]
    std["T"] = np.stack([np.ones_like(b0), std["beta0"], std["beta1"], std["S00"], std["S01"], std["S11"],
                         std["ds"], std["s2"]])  # (8, D): each per-draw term of _predict_one is a row of C @ T
    return std, ybar, s


# up to this many students, predict_from_sums works per student over the draws directly (the
# real-time path's single call: ~0.1 ms instead of ~2.5 ms for the grouped moments' set-up)
FEW_STUDENTS = 16


def _predict_one(std, ybar: float, s: float, n: float, sw: float, sww: float, sy: float, swy: float,
                 h: float, target: float, p_tolerance: float):
    """``_predict_few`` for one student, with her sums as scalars (the real-time single call:
    ~115 us for 1000 draws, measured 2026-12-08; ~275 with numpy's mean and var): the same
    quantities by the same rules, in fewer array passes. Per draw, with u = g - A beta
    (``lines.conditional_terms``' c + K g written as beta + K u), the line at h is Normal(m, v) with
    m = b0 + h b1 + ((M00 + h M01) u0 + (M01 + h M11) u1) / sigma^2 and
    v = M00 + 2 h M01 + h^2 M11; a student with one row takes the bounded Sherman-Morrison
    form of ``conditional_terms`` (K there grows like 1 / sigma^2)."""
    b0, b1, S00, S01, S11, s2 = std["beta0"], std["beta1"], std["S00"], std["S01"], std["S11"], std["s2"]
    g0, g1 = (sy - n * ybar) / s, (swy - sw * ybar) / s
    if n == 1:
        w = sw
        Sz0, Sz1 = S00 + w * S01, S01 + w * S11
        q = s2 + Sz0 + w * Sz1
        m = b0 + h * b1 + (Sz0 + h * Sz1) * ((g0 - b0 - w * b1) / q)
        M00 = np.maximum(S00 - Sz0 * Sz0 / q, 0.0)
        M11 = np.maximum(S11 - Sz1 * Sz1 / q, 0.0)
        M01 = S01 - Sz0 * Sz1 / q
        v = M00 + 2.0 * h * M01 + h * h * M11
    else:
        # linear in the per-draw terms (rows of T: 1, b0, b1, S00, S01, S11, ds, s2), so one
        # small matrix product gives them all: den = sigma^2 det B; Mh0, Mh1 = (M z_h) det B;
        # vn = z_h' M z_h det B; u = g - A beta; bh = b0 + h b1 (single-threaded at this size)
        C = np.array([
            [0.0, 0.0, 0.0, n, 2.0 * sw, sww, n * sww - sw * sw, 1.0],
            [0.0, 0.0, 0.0, 1.0, h, 0.0, sww - h * sw, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0, h, h * n - sw, 0.0],
            [0.0, 0.0, 0.0, 1.0, 2.0 * h, h * h, sww - 2.0 * h * sw + h * h * n, 0.0],
            [g0, -n, -sw, 0.0, 0.0, 0.0, 0.0, 0.0],
            [g1, -sw, -sww, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, h, 0.0, 0.0, 0.0, 0.0, 0.0]])
        den, Mh0, Mh1, vn, u0, u1, bh = C @ std["T"]
        m = bh + (Mh0 * u0 + Mh1 * u1) / den
        v = vn * s2 / den
    t = (target - ybar) / s
    z = (m - t) / np.sqrt(np.maximum(v, 1e-300))
    # means as numpy's mean and var compute them (a pairwise sum, then one division), without
    # their Python overhead: ~10-20 us each, most of this function's time, for 1000 draws
    D, add = m.size, np.add.reduce
    mu_std = add(m) / D
    dm = m - mu_std
    var_std = add(v) / D + add(dm * dm) / D
    z_mean = add(z) / D
    dz2 = (z - z_mean) ** 2
    p, bound = cheap_p_one(z_mean, add(dz2) / D, add(dz2 * dz2) / D)
    if bound > p_tolerance:
        p = add(ndtr(z)) / D
    return (np.array([ybar + s * mu_std]), np.array([s * math.sqrt(max(var_std, 0.0))]),
            np.array([min(max(p, 0.0), 1.0)]))


def _predict_few(std, ybar: float, s: float, n, sw, sww, sy, swy, h: float, target: float,
                 p_tolerance: float):
    """``predict_from_sums`` for a few students, draw by draw: the same quantities as the
    grouped path (``student_predictions``), by the same rules, without its grouping. Per draw
    d the line at h is Normal(m_d, v_d) given the sums (``lines.conditional_terms``); mu and
    sigma are the mixture's moments, P = mean_d Phi(z_d) with z_d = (m_d - t) / sqrt(v_d), or
    the cheap form (``cheap_p``) when its bound is within ``p_tolerance`` (the grouped path's
    rule)."""
    c0, c1, K00, K01, K10, K11, M00, M01, M11 = conditional_terms(
        *(std[k][None, :] for k in ("beta0", "beta1", "tau0", "tau1", "rho", "sigma")),
        n[:, None], sw[:, None], sww[:, None])  # (S, D)
    g0, g1 = ((sy - n * ybar) / s)[:, None], ((swy - sw * ybar) / s)[:, None]
    t = (target - ybar) / s
    m = c0 + h * c1 + g0 * (K00 + h * K10) + g1 * (K01 + h * K11)
    v = M00 + 2.0 * h * M01 + h * h * M11
    z = (m - t) / np.sqrt(np.maximum(v, 1e-300))
    mu_std = m.mean(axis=1)
    var_std = v.mean(axis=1) + m.var(axis=1)
    z_mean = z.mean(axis=1)
    dz = z - z_mean[:, None]
    p, bound = cheap_p(z_mean, np.mean(dz * dz, axis=1), np.mean(dz ** 4, axis=1))
    exact = bound > p_tolerance
    p = np.where(exact, ndtr(z).mean(axis=1), p)
    return ybar + s * mu_std, s * np.sqrt(np.maximum(var_std, 0.0)), np.clip(p, 0.0, 1.0)


def _pattern_groups(n: np.ndarray, sw: np.ndarray, sww: np.ndarray) -> np.ndarray:
    """A group index per student for the distinct (n, sum w, sum w^2): whole weeks, so exact
    integer keys (``keys.unique_rows``: one packed int64 key when their ranges allow)."""
    return unique_rows([np.rint(x).astype(np.int64) for x in (n, sw, sww)])[1]


def predict_from_sums(draws, n, sw, sww, sy, swy, h: float, target: float,
                      p_tolerance: float = 0.0, standardised=None):
    """(mu, sigma, P) of ``a + b h`` for students given only their five sums (n, sum w,
    sum w^2, sum y, sum w y) and population draws in data units (brms's names): the
    engine's own Rao-Blackwellised mixture (``student_predictions``: per-draw terms once
    per group of students with the same (n, sum w, sum w^2)), so ``P = mean_d
    Phi((m_d(h) - target) / s_d(h))``, exactly with ``p_tolerance = 0``. Scores are
    standardised by the draws' own scale (mean intercept; sqrt(E sd_Intercept^2 + E
    sigma^2)) for the arithmetic; the answer is in data units. ``standardised``:
    ``standardised_draws(draws)`` already computed (a caller that keeps the draws)."""
    std, ybar, s = standardised if standardised is not None else standardised_draws(draws)
    n, sw, sww, sy, swy = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (n, sw, sww, sy, swy))
    if len(n) == 1:
        return _predict_one(std, ybar, s, float(n[0]), float(sw[0]), float(sww[0]), float(sy[0]), float(swy[0]),
                            float(h), float(target), p_tolerance)
    if len(n) <= FEW_STUDENTS:
        return _predict_few(std, ybar, s, n, sw, sww, sy, swy, float(h), float(target), p_tolerance)
    group = _pattern_groups(n, sw, sww)
    red = Reduced(student_ids=np.arange(len(n)).astype(object), n_obs=n.astype(np.int64), sw=sw,
                  sww=sww, g=np.stack([(sy - n * ybar) / s, (swy - sw * ybar) / s], axis=1),
                  yy=np.zeros(len(n)), group=group.reshape(-1).astype(np.int64), ybar=ybar, s=s,
                  wbar=0.0, n_rows=int(n.sum()))
    out, _ = student_predictions(red, std, float(h), float(target), p_tolerance)
    return out["mu"], out["sigma"], out["P"]
