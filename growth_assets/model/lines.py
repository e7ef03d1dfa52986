"""A student's line posterior given the population hyperparameters: one home for it.

For a student with ``n`` rows, design ``Z = [1, week]`` and scores ``y``, given
``beta = (b_Intercept, b_week)``, ``Sigma = diag(tau) Omega diag(tau)`` (sds ``tau0,
tau1``, correlation ``rho``) and the residual ``sigma``, the line ``(a, b) = beta + r`` is
Normal with

    cov  = Mi = (Sigma^-1 + A / sigma^2)^-1 = Sigma B^-1,   B = I + A Sigma / sigma^2,
    mean = c + K g,   K = Mi / sigma^2,   c = (I - K A) beta,

``A = Z'Z = [[n, sum w], [sum w, sum w^2]]`` and ``g = Z'y = (sum y, sum w y)``. Written
with ``B``'s adjugate, no inverse of ``Sigma`` is ever formed, so a (near) singular
``Sigma`` (a slope sd near 0, a correlation near +-1) is harmless, and a student with no
rows gets exactly the population prior. Every function broadcasts over numpy (or
jax.numpy: ``xp``) arrays, so the native engine (per hyperparameter draw, per group of
students) and ``metrics.py`` (per student, at the run's posterior) share the same code.
"""

from __future__ import annotations

import numpy as np


def posterior_blocks(xp, tau0, tau1, rho, sigma, n, sw, sww):
    """Mi (entries 00, 01, 11) and log det B, broadcast over the arguments.

    With d = det Sigma: Mi = adj(adj Sigma + d A / sigma^2) / det B and
    det B = 1 + tr(A Sigma)/sigma^2 + det(A) d / sigma^4."""
    inv_s2 = 1.0 / (sigma * sigma)
    S00 = tau0 * tau0
    S11 = tau1 * tau1
    S01 = rho * tau0 * tau1
    d = S00 * S11 - S01 * S01  # = (tau0 tau1)^2 (1 - rho^2) >= 0
    ds = d * inv_s2
    detA = n * sww - sw * sw
    detB = 1.0 + (n * S00 + 2.0 * sw * S01 + sww * S11) * inv_s2 + detA * ds * inv_s2
    inv_det = 1.0 / detB
    M00 = (S00 + ds * sww) * inv_det
    M01 = (S01 - ds * sw) * inv_det
    M11 = (S11 + ds * n) * inv_det
    return M00, M01, M11, xp.log(detB)


def conditional_terms(beta0, beta1, tau0, tau1, rho, sigma, n, sw, sww):
    """(c0, c1, K00, K01, K10, K11, M00, M01, M11): mean = c + K g, cov = M (numpy).

    A student with one row (n = 1, week w, z = (1, w)) has g = y z, so only K z matters,
    and K = M / sigma^2 itself grows like 1 / sigma^2 as sigma -> 0 (the intercept sd and
    sigma are not separately identified when most students have one row, and sigma's draws
    reach 1e-4): its huge entries then cancel in c + K g, and across draws in the mixture
    moments. For n = 1 the terms come from Sherman-Morrison instead, all bounded:
    K z = Sigma z / q, c = beta - (K z) z'beta, M = Sigma - (Sigma z)(Sigma z)' / q with
    q = sigma^2 + z'Sigma z; K is returned as [K z, 0] (K g = (K z) g0 for such a g)."""
    M00, M01, M11, _ = posterior_blocks(np, tau0, tau1, rho, sigma, n, sw, sww)
    s2 = sigma * sigma
    K00, K01, K11 = M00 / s2, M01 / s2, M11 / s2
    Ab0 = n * beta0 + sw * beta1
    Ab1 = sw * beta0 + sww * beta1
    c0 = beta0 - (K00 * Ab0 + K01 * Ab1)
    c1 = beta1 - (K01 * Ab0 + K11 * Ab1)
    K10 = K01
    one = np.asarray(n) == 1
    if np.any(one):
        w = sw  # the one row's week
        S00, S11, S01 = tau0 * tau0, tau1 * tau1, rho * tau0 * tau1
        Sz0, Sz1 = S00 + w * S01, S01 + w * S11
        q = s2 + Sz0 + w * Sz1
        b0, b1 = Sz0 / q, Sz1 / q
        zb = beta0 + w * beta1
        zero = np.zeros_like(b0)
        c0, c1 = np.where(one, beta0 - b0 * zb, c0), np.where(one, beta1 - b1 * zb, c1)
        K00, K10 = np.where(one, b0, K00), np.where(one, b1, K10)
        K01, K11 = np.where(one, zero, K01), np.where(one, zero, K11)
        M00 = np.where(one, np.maximum(S00 - Sz0 * Sz0 / q, 0.0), M00)
        M11 = np.where(one, np.maximum(S11 - Sz1 * Sz1 / q, 0.0), M11)
        M01 = np.where(one, S01 - Sz0 * Sz1 / q, M01)
    return c0, c1, K00, K01, K10, K11, M00, M01, M11


def conditional_line(beta0, beta1, tau0, tau1, rho, sigma, n, sw, sww, sy, swy):
    """(mean_a, mean_b, var_a, var_b, cov_ab) of the line given the hyperparameters and
    the student's five sums (n, sum w, sum w^2, sum y, sum w y)."""
    c0, c1, K00, K01, K10, K11, M00, M01, M11 = conditional_terms(
        beta0, beta1, tau0, tau1, rho, sigma, n, sw, sww)
    return c0 + K00 * sy + K01 * swy, c1 + K10 * sy + K11 * swy, M00, M11, M01

