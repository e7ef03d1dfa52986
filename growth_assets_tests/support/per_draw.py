"""A per-draw reference for the native engine's Rao-Blackwellised students, and the check
the edge-cohort suites run over many seeds: no crash, no negative variance, every P
within 0.01 of the reference, mu and sigma exact.

The reference does not share the engine's algebra: each draw's conditional Normal of the
line is written with the Woodbury form on the data scale, per student, and P is the mean
over draws of Phi((m_d(h) - t) / s_d(h))."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets.model.panel import Panel
from growth_assets.model.result import fit_panel


def per_draw_lines(panel: Panel, draws: dict, ybar: float, s: float, h: float, students=None):
    """For each student (sorted; all, or those in ``students``): (student_id, m_d(h),
    var_d(h), sigma_d), each (D,), from standardised draws (flat arrays), in data units."""
    beta = np.stack([ybar + s * draws["beta0"], s * draws["beta1"]], 1)  # (D, 2)
    t0, t1, rho, sig = s * draws["tau0"], s * draws["tau1"], draws["rho"], s * draws["sigma"]
    Sigma = np.stack([np.stack([t0 * t0, rho * t0 * t1], -1), np.stack([rho * t0 * t1, t1 * t1], -1)], -2)
    eh = np.array([1.0, h])
    frame = panel.to_frame()
    if students is not None:
        frame = frame[frame["student_id"].isin(set(students))]
    for sid, d in frame.groupby("student_id", sort=True):
        Z = np.column_stack([np.ones(len(d)), d["week"].to_numpy(float)])
        y = d["score"].to_numpy(float)
        # V = Z Sigma Z' + sig^2 I ; m = beta + Sigma Z' V^-1 (y - Z beta); C = Sigma - Sigma Z' V^-1 Z Sigma
        V = np.einsum("ij,djk,lk->dil", Z, Sigma, Z) + (sig**2)[:, None, None] * np.eye(len(y))
        SZ = np.einsum("dij,kj->dik", Sigma, Z)  # Sigma Z'
        r = y[None, :] - beta @ Z.T
        m = beta + np.einsum("dik,dk->di", SZ, np.linalg.solve(V, r[..., None])[..., 0])
        C = Sigma - np.einsum("dik,dkl->dil", SZ, np.linalg.solve(V, np.transpose(SZ, (0, 2, 1))))
        yield sid, m @ eh, np.maximum(np.einsum("i,dij,j->d", eh, C, eh), 0.0), sig


def per_draw_reference(panel: Panel, draws: dict, ybar: float, s: float, h: float, target: float,
                       students=None):
    """[(student_id, P, mu, var of a + b h)] from standardised draws (flat arrays), for
    every student or those in ``students``."""
    return [(sid, float(np.mean(ndtr((mu_d - target) / np.sqrt(var_d)))), float(mu_d.mean()),
             float(var_d.mean() + mu_d.var()))
            for sid, mu_d, var_d, _ in per_draw_lines(panel, draws, ybar, s, h, students)]


class Replay:
    """An engine answering with one NativeFit's draws, so the graph's own check
    (``fit_panel``) accepts the result the test then compares with the reference."""

    name = "native"

    def __init__(self, engine: NativeEngine, nf):
        self.engine, self.nf = engine, nf

    def fit(self, panel: Panel, settings: FitSettings):
        return self.engine.result(self.nf, settings)


def check_stable_and_exact(engine: NativeEngine, panel: Panel, settings: FitSettings, label,
                           every: int = 1) -> dict:
    """Fit, accept, and compare every student (or every ``every``-th, the reference costs
    draws x rows^2 per student) with the per-draw reference; every student's variances are
    checked. Returns the fit's facts (divergences, worst |P - reference|, smallest sigma
    draw)."""
    nf = engine.sample(panel, settings)
    res = fit_panel(Replay(engine, nf), panel, settings)
    st = res.students
    assert (st.var_a >= 0).all() and (st.var_b >= 0).all() and (st.sigma >= 0).all(), label
    assert (st.var_a * st.var_b - st.cov_ab**2 >= -1e-12 * st.var_a * st.var_b).all(), label
    index = np.arange(0, len(st.student_id), every)
    ref = per_draw_reference(panel, nf.flat_draws, nf.panel.ybar, nf.panel.s,
                             float(settings.horizon_week), float(settings.target),
                             students=st.student_id[index])
    worst = 0.0
    for i, (sid, p_ref, mu_ref, var_ref) in zip(index, ref, strict=True):
        assert st.student_id[i] == sid
        assert abs(st.P[i] - p_ref) <= 0.01, (label, sid, st.P[i], p_ref)
        assert abs(st.mu[i] - mu_ref) <= 1e-6 * (1 + abs(mu_ref)), (label, sid)
        assert st.sigma[i] ** 2 == pytest.approx(var_ref, rel=1e-5, abs=1e-12), (label, sid)
        worst = max(worst, abs(st.P[i] - p_ref))
    return {"n_divergent": int(res.diagnostics.n_divergent), "max_rhat": res.diagnostics.max_rhat,
            "worst_p_error": worst, "smallest_sigma": float(nf.flat_draws["sigma"].min() * nf.panel.s)}


def per_draw_phi(draws: dict, sums, h: float, target: float) -> np.ndarray:
    """Phi((m_d(h) - target) / s_d(h)) for each draw d (data units, brms's names) of one
    student with the five sums (n, sum w, sum w^2, sum y, sum w y): the conditional line
    per draw (``lines.conditional_line``), no grouping, no mixture moments."""
    from growth_assets.model.lines import conditional_line

    ma, mb, va, vb, cab = conditional_line(
        draws["b_Intercept"], draws["b_week"], draws["sd_student_id__Intercept"],
        draws["sd_student_id__week"], draws["cor_student_id__Intercept__week"], draws["sigma"],
        *(np.full(len(draws["sigma"]), float(x)) for x in sums))
    m_d = ma + h * mb
    s_d = np.sqrt(np.maximum(va + 2 * h * cab + h * h * vb, 0.0))
    return ndtr((m_d - target) / s_d)
