"""The backtest's arithmetic (spec §10), without a database: the posterior predictive CDF
against a per-draw reference that does not share its algebra, calibration on data drawn
from the model with the true hyperparameters, and the measures on known inputs."""

import numpy as np
import pytest
from scipy.special import ndtr

from growth_assets.demo.cohort import simulate_panel
from growth_assets.model import backtest as bt
from growth_assets.model.native_math import standardised_draws
from growth_assets.model.panel import Panel
from growth_assets_tests.support.per_draw import per_draw_lines

TAU, COR, SIGMA, SLOPE = (0.8, 0.06), 0.3, 0.35, 0.05


def _sums(panel: Panel):
    f = panel.to_frame()
    f["w2"], f["wy"] = f["week"] ** 2, f["week"] * f["score"]
    g = f.groupby("student_id", sort=True).agg(n=("score", "size"), sw=("week", "sum"), sww=("w2", "sum"),
                                               sy=("score", "sum"), swy=("wy", "sum"))
    return g


def _draws(rng, D: int, jitter: float) -> dict:
    """Hyperparameter draws in data units around the simulation's truth."""
    def j(v, size=D):
        return v * np.exp(jitter * rng.normal(size=size))
    return {"b_Intercept": 0.0 + jitter * rng.normal(size=D), "b_week": SLOPE + 0.1 * jitter * rng.normal(size=D),
            "sd_student_id__Intercept": j(TAU[0]), "sd_student_id__week": j(TAU[1]),
            "cor_student_id__Intercept__week": np.clip(COR + jitter * rng.normal(size=D), -0.99, 0.99),
            "sigma": j(SIGMA)}


def test_predictive_cdf_matches_a_per_draw_reference():
    rng = np.random.default_rng(3)
    panel = Panel.from_frame(simulate_panel(40, seed=3, n_weeks=12, p_obs=0.5, tau=TAU, cor=COR, sigma=SIGMA))
    draws = _draws(rng, 200, 0.2)
    g = _sums(panel)
    x = np.stack([rng.normal(0.5, 1, len(g)), np.full(len(g), 0.3)], axis=1)
    h = 15.0
    got = bt.predictive_cdf(draws, g.n, g.sw, g.sww, g.sy, g.swy, h, x)
    std, ybar, s = standardised_draws(draws)
    for i, (sid, m_d, var_d, sig_d) in enumerate(per_draw_lines(panel, std, ybar, s, h)):
        assert sid == g.index[i]
        for j in range(2):
            ref = np.mean(ndtr((x[i, j] - m_d) / np.sqrt(var_d + sig_d ** 2)))
            assert got[i, j] == pytest.approx(ref, abs=1e-10)


def test_true_hyperparameters_give_uniform_pit_and_nominal_coverage():
    """2,000 students from spec §2's model, their week-15 score drawn from the same lines:
    with the true hyperparameters the predictive is exact, so the PIT values are uniform."""
    n, h, target = 2000, 15, 0.5
    rng = np.random.default_rng(11)
    t = np.asarray(TAU)
    cov = np.array([[t[0] ** 2, COR * t[0] * t[1]], [COR * t[0] * t[1], t[1] ** 2]])
    ab = rng.multivariate_normal([0.0, SLOPE], cov, size=n)
    weeks = np.arange(12)
    obs = rng.random((n, 12)) < 0.8
    obs[:, 11] = True
    sid, w = np.nonzero(obs)
    y = ab[sid, 0] + ab[sid, 1] * w + rng.normal(0, SIGMA, sid.size)
    sums = {k: np.bincount(sid, v, minlength=n) for k, v in
            (("n", np.ones_like(y)), ("sw", w), ("sww", w * w), ("sy", y), ("swy", w * y))}
    y_h = ab[:, 0] + ab[:, 1] * h + rng.normal(0, SIGMA, n)
    draws = {"b_Intercept": np.array([0.0]), "b_week": np.array([SLOPE]), "sd_student_id__Intercept": t[:1],
             "sd_student_id__week": t[1:], "cor_student_id__Intercept__week": np.array([COR]),
             "sigma": np.array([SIGMA])}
    cdf = bt.predictive_cdf(draws, sums["n"], sums["sw"], sums["sww"], sums["sy"], sums["swy"], h,
                            np.stack([y_h, np.full(n, target)], 1))
    model = bt.model_forecasts(cdf)
    # the baseline: the last week's score, as if it were the student's ability (spec §7)
    last = ab[:, 0] + ab[:, 1] * weeks[-1] + rng.normal(0, SIGMA, n)
    base = bt.normal_baseline(last, np.full(n, 0.25), y_h, target)
    m = {r.measure: r for r in bt.score(y_h, target, model, base, np.ones(n, bool))}
    # binomial sd of a 90 % coverage on 2,000 students: 0.0067; 4 sd either side
    assert abs(m["coverage_90"].model - 0.90) < 0.027
    assert abs(m["coverage_50"].model - 0.50) < 0.045
    assert m["pit_uniformity_p"].model > 0.001
    # the baseline ignores growth and the residual: over-confident, and worse
    assert m["coverage_90"].baseline < 0.8
    assert m["brier_skill"].model > 0.2
    assert m["brier"].model < m["brier"].baseline and m["log_score"].model > m["log_score"].baseline
    assert sum(r["students"] for r in m["reliability"].detail["model"]) == n


def test_measures_on_known_inputs():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    model = bt.Forecasts(pit=np.array([0.1, 0.5, 0.8, 0.99]), q=np.array([0.2, 0.6, 0.9, 1.0]))
    base = bt.Forecasts(pit=np.array([0.5, 0.5, 0.5, 0.5]), q=np.array([0.5, 0.5, 0.5, 0.5]))
    m = {r.measure: r for r in bt.score(y, 1.5, model, base, np.array([True, True, True, False]))}
    # beside the baseline: the three students it has; every student's in the detail
    assert m["coverage_50"].model == pytest.approx(1 / 3) and m["coverage_90"].model == 1.0
    assert m["coverage_50"].detail["model_all_students"] == 0.25
    assert m["coverage_90"].detail["model_all_students"] == 0.75
    assert m["coverage_90"].n_students == 3 and m["coverage_90"].detail["students"] == 4
    assert m["brier"].model == pytest.approx((0.04 + 0.36 + 0.01) / 3)
    assert m["brier"].detail["model_all_students"] == pytest.approx((0.04 + 0.36 + 0.01 + 0.0) / 4)
    assert m["brier"].baseline == pytest.approx(0.25)
    assert m["brier_skill"].n_students == 3
    assert m["brier_skill"].model == pytest.approx(1 - ((0.04 + 0.36 + 0.01) / 3) / 0.25)
    assert m["log_score"].model == pytest.approx(np.mean([np.log(0.8), np.log(0.4), np.log(0.9)]))
    assert m["log_score"].detail["model_all_students"] == pytest.approx(
        np.mean([np.log(0.8), np.log(0.4), np.log(0.9), np.log(1 - 1e-6)]))
    rel = {r["bin"]: r for r in m["reliability"].detail["model"]}
    assert rel["0.9-1.0"]["students"] == 1 and rel["0.9-1.0"]["observed"] == 1.0
    rel_all = {r["bin"]: r for r in m["reliability"].detail["model_all_students"]}
    assert rel_all["0.9-1.0"]["students"] == 2
    assert np.isnan(m["pit_uniformity_p"].model)  # too few students for the test


def test_an_identical_forecast_scores_the_same_as_the_model_and_as_the_baseline():
    """Model and baseline side by side were scored on different students (the model on all,
    the baseline on those with a calibration): one forecaster scored differently as each."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=2000)
    same = bt.Forecasts(pit=ndtr(y), q=np.full(y.size, 0.5))
    m = {r.measure: r for r in bt.score(y, 0.0, same, same, y > -0.5)}
    for k in ("coverage_50", "coverage_90", "pit_uniformity_p", "brier", "log_score"):
        assert m[k].model == m[k].baseline, k
        assert m[k].n_students == int((y > -0.5).sum())
    assert m["reliability"].detail["model"] == m["reliability"].detail["baseline"]


def test_a_run_without_draws_and_without_a_residual_sigma_is_not_scored_without_it():
    """The path for a run stored without draws read the summary's sigma, and a summary without
    it (or with a null) became a residual of 0: a predictive without the noise of one test,
    too narrow, scored without a word. It is an error naming the field."""
    from growth_assets.defs.growth.backtest import score_run
    from growth_assets.model.contract import ContractError

    y = np.array([0.1, 0.5, -0.2])
    data = {"y": y, "sums": [np.ones(3)] * 5, "mu": np.zeros(3), "sd": np.full(3, 0.2),
            "theta": np.zeros(3), "se": np.full(3, 0.3)}
    run = {"target": 0.0, "horizon_week": 15, "posterior_summary": {"sigma": {"mean": 0.3, "sd": 0.01}}}
    score_run(run, data, None)  # with its sigma: scored
    for summary in ({}, {"sigma": None}, {"sigma": {"mean": None, "sd": 0.01}}, None):
        with pytest.raises(ContractError) as e:
            score_run({**run, "posterior_summary": summary}, data, None)
        assert e.value.field == "posterior_summary.sigma"


# --- session 23's mutation probes: each kills a bug the tests above let through ----------------


def test_model_pit_is_pr_pred_le_y_not_its_mirror():
    """Spec §10: PIT = Pr(pred <= y). A realised score far above the predictive has PIT ~ 1.
    Mutation killed: model_forecasts pit = 1 - cdf[:, 0] (coverage and the chi-square p are
    symmetric in PIT, so the existing tests cannot see it; the stored histogram is mirrored)."""
    draws = {"b_Intercept": np.array([0.0]), "b_week": np.array([0.0]),
             "sd_student_id__Intercept": np.array([0.5]), "sd_student_id__week": np.array([0.05]),
             "cor_student_id__Intercept__week": np.array([0.0]), "sigma": np.array([0.3])}
    one = np.ones(1)
    y = np.array([[5.0, 0.0]])  # realised score far above anything predicted; target 0
    cdf = bt.predictive_cdf(draws, one, 0 * one, 0 * one, 0 * one, 0 * one, 4.0, y)
    f = bt.model_forecasts(cdf)
    assert f.pit[0] > 0.99
    assert 0.3 < f.q[0] < 0.7  # Pr(pred >= 0) for a predictive centred on 0


def test_baseline_pit_is_pr_pred_le_y_not_its_mirror():
    """Mutation killed: normal_baseline pit = Phi((theta - y) / se)."""
    f = bt.normal_baseline(np.array([0.0]), np.array([1.0]), np.array([2.0]), 0.5)
    assert f.pit[0] == pytest.approx(ndtr(2.0))
    assert f.q[0] == pytest.approx(1.0 - ndtr(0.5))


def test_pit_histogram_counts_low_pits_in_the_first_bin():
    """A forecaster that always predicts too high has PITs near 0: the first bin, not the last."""
    counts, _ = bt.pit_histogram(np.full(60, 0.02))
    assert counts[0] == 60


def test_moment_predictive_uses_e_sigma_squared():
    """Docstring: the line's sd plus the residual's E[sigma^2] = mean^2 + sd^2.
    Mutation killed: sigma_sd ** 2 dropped (a predictive too narrow)."""
    cdf = bt.moment_predictive_cdf(np.array([0.0]), np.array([0.0]), 1.0, 1.0, np.array([[1.0]]))
    assert cdf[0, 0] == pytest.approx(ndtr(1.0 / np.sqrt(2.0)), abs=1e-12)
