"""The native engine's published mu, sigma and P on panels at the edges of float arithmetic,
against an independent per-draw computation from the result's own population draws (session
24's review): a mu many sds off accepted at scores near 1e6, and scores whose sd overflows or
underflows (accepted as inf, a sigma half its size, or "all scores are equal")."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from growth_assets.model.contract import ContractError, PanelError, line_prediction
from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets.model.panel import Panel
from growth_assets.model.result import fit_panel
from growth_assets_tests.model.test_result import Answers


@pytest.fixture(scope="module")
def engine():
    return NativeEngine()


def _cohort(offset: float, scale: float, n_students: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_students):
        a, b = rng.normal(0, 0.5), rng.normal(0.05, 0.03)
        for w in range(12):
            rows.append((f"s{i:03d}", w, offset + scale * (a + b * w + rng.normal(0, 0.3))))
    return pd.DataFrame(rows, columns=["student_id", "week", "score"])


def _settings(target: float) -> FitSettings:
    return FitSettings(n_chains=2, n_samples=1000, seed=3, horizon_week=15, target=target, lookback_weeks=12)


def _reference(draws, df: pd.DataFrame, h: float, target: float, unit: float = 1.0):
    """Per student (mu, sigma, P) from the population draws, by dense 2x2 algebra per draw
    (precision form), in units of ``unit`` (so a tiny scale does not underflow here)."""
    d = {k: (np.asarray(v) if k.startswith("cor") else np.asarray(v) / unit) for k, v in draws.items()}
    t = target / unit
    out = {}
    for sid, g in df.groupby("student_id"):
        w = g["week"].to_numpy(float)
        y = g["score"].to_numpy(float) / unit
        Z = np.column_stack([np.ones_like(w), w])
        e = np.array([1.0, h])
        ms, vs = [], []
        for k in range(len(d["sigma"])):
            t0, t1 = d["sd_student_id__Intercept"][k], d["sd_student_id__week"][k]
            r, sg = d["cor_student_id__Intercept__week"][k], d["sigma"][k]
            S = np.array([[t0 * t0, r * t0 * t1], [r * t0 * t1, t1 * t1]])
            Si = np.linalg.inv(S)
            cov = np.linalg.inv(Si + Z.T @ Z / sg ** 2)
            mean = cov @ (Si @ np.array([d["b_Intercept"][k], d["b_week"][k]]) + Z.T @ y / sg ** 2)
            ms.append(e @ mean)
            vs.append(e @ cov @ e)
        ms, vs = np.array(ms), np.array(vs)
        out[sid] = (ms.mean() * unit, math.sqrt(vs.mean() + ms.var()) * unit,
                    float(np.mean(ndtr((ms - t) / np.sqrt(vs)))))
    return out


def test_a_mu_many_sds_off_is_refused_when_scores_sit_near_1e6(engine):
    """FitResult.validate checked mu = mean_a + h mean_b within 1e-6 sigma + 1e-9 (|mean_a| +
    h |mean_b|) (commit ad3c353 claimed: 'within a millionth of the line's own sd'). The second
    term is 1e-3 at scores near 1e6, whatever the line's sd: on a real native fit of scores
    1e6 + noise of sd ~3e-4, an answer whose mu is 0.0009 too high (~4 of the line's posterior
    sds) with its P made consistent (so Cantelli's check passes) was accepted by fit_panel. The
    engines agree with mean_a + h mean_b to ~1e-10 there (rounding at 1e6): it is refused now."""
    df = _cohort(1e6, 1e-3)
    pn = Panel.from_frame(df)
    target = 1e6 + 0.5e-3
    st = _settings(target)
    r = fit_panel(engine, pn, st)
    s = r.students
    i = int(np.argmin(np.abs(s.P - 0.5)))
    # the honest answer: mu is mean_a + h mean_b to rounding
    assert abs(s.mu[i] - (s.mean_a[i] + 15 * s.mean_b[i])) < 1e-8
    bad_mu = s.mu.copy()
    bad_mu[i] += 0.0009
    assert (bad_mu[i] - s.mu[i]) / s.sigma[i] > 3.0, s.sigma[i]  # several posterior sds off
    bad_p = s.P.copy()
    bad_p[i] = float(line_prediction(bad_mu[i], 0.0, s.sigma[i] ** 2, 0.0, 0.0, 0, target)[2])
    tampered = replace(r, students=replace(s, mu=bad_mu, P=bad_p))
    with pytest.raises(ContractError) as e:
        fit_panel(Answers(tampered), pn, st)
    assert "mu" in e.value.field


def test_scores_whose_sd_overflows_are_refused_naming_the_score():
    """prior_scales computes s = np.std(y, ddof=1): for finite scores of size ~1e155 the squares
    overflow and s = inf, which passes 'not s > 0'. The panel is accepted with priors
    normal(ybar, inf), and the fit then fails as 'population_draws.b_Intercept: the sampler ran
    off ... too few to identify the model's variances?' (30 students, 360 rows): the error
    names the engine, not the input (spec §3: bad panels get a clear error)."""
    df = _cohort(0.0, 1e155)
    try:
        pn = Panel.from_frame(df)
    except PanelError as e:
        assert e.field == "score", str(e)
        return
    ybar, s = pn.scales()
    assert math.isfinite(s), f"the panel is accepted with s = {s} (priors {ybar}, 2.5 * {s})"


def test_scores_on_a_tiny_scale_are_refused_or_get_their_right_sigma(engine):
    """Scores of size ~1e-160 (s ~ 6e-161) pass the panel checks (s > 0). The engine then forms
    var_a = s * s * var_std: s * s ~ 4e-321 is subnormal (three significant digits), and sigma =
    sqrt(var_a + 2h cov_ab + h^2 var_b) is tens of percent off the posterior sd of the line
    computed from the result's own population draws (all 1000 kept draws), while P (computed in
    standardised units) agrees. validate's sigma check has an absolute floor of 1e-15, so it
    cannot see it. Either such a panel is refused naming the score, or sigma is right."""
    sc = 1e-160
    df = _cohort(0.0, sc)
    try:
        pn = Panel.from_frame(df)
        r = fit_panel(engine, pn, _settings(0.3 * sc))
    except ContractError as e:
        assert e.field == "score", str(e)
        return
    ref = _reference(r.population_draws, df, 15.0, 0.3 * sc, unit=sc)
    s = r.students
    rel = np.array([s.sigma[k] / ref[sid][1] - 1.0 for k, sid in enumerate(s.student_id)])
    dp = np.array([abs(s.P[k] - ref[sid][2]) for k, sid in enumerate(s.student_id)])
    assert dp.max() < 2e-3  # P is right
    k = int(np.argmax(np.abs(rel)))
    assert abs(rel[k]) < 0.01, (s.student_id[k], s.sigma[k], ref[s.student_id[k]][1])


def test_scores_that_differ_are_not_called_equal():
    """Scores of size ~1e-200 differ (sd ~6e-201 computed stably) but prior_scales squares them
    to 0 and refuses with 'all scores are equal (sd == 0)': the error states something false
    about the input."""
    df = _cohort(0.0, 1e-200)
    assert df["score"].nunique() == len(df)
    with pytest.raises(PanelError) as e:  # a scale no variance of the model can hold
        Panel.from_frame(df)
    assert e.value.field == "score" and "equal" not in str(e.value) and "sd must be within" in str(e.value), str(e.value)
