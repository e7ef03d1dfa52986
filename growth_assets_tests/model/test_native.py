"""The native engine against the brms reference, and its pieces against brute force."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta as beta_dist
from scipy.stats import halfcauchy, multivariate_normal, norm

from growth_assets.demo.cohort import simulate_panel
from growth_assets.model import contract, native, native_math
from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets.model.panel import Panel
from growth_assets.model.result import FitResult, fit_panel

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "reference"


def checked(panel: pd.DataFrame) -> tuple[pd.DataFrame, Panel]:
    """The checked panel, as the engines get it, and as a sorted table for brute force."""
    pn = Panel.from_frame(panel)
    return pn.to_frame(), pn


def fit_json(panel: pd.DataFrame, settings: FitSettings, engine: NativeEngine | None = None) -> dict:
    """A native fit, accepted as the graph accepts it, in its spec §8 JSON form."""
    return fit_panel(engine or NativeEngine(), Panel.from_frame(panel), settings).to_json()


def synthetic(n_students: int, seed: int, n_weeks: int = 8, p_obs: float = 0.7) -> pd.DataFrame:
    """Spec §2's model on another scale than theta, with missing weeks."""
    return simulate_panel(n_students, seed, n_weeks=n_weeks, p_obs=p_obs, intercept=50.0, slope=1.5,
                          tau=(4.0, 0.8), cor=-0.3, sigma=2.0)


def dense_student_posterior(y, w, beta, tau, rho, sigma):
    """(mean, cov) of (a, b) | y for one student and one draw, by dense linear algebra."""
    Z = np.column_stack([np.ones_like(w), w])
    Sigma = np.array([[tau[0] ** 2, rho * tau[0] * tau[1]], [rho * tau[0] * tau[1], tau[1] ** 2]])
    prec = np.linalg.inv(Sigma) + Z.T @ Z / sigma**2
    cov = np.linalg.inv(prec)
    mean = cov @ (np.linalg.solve(Sigma, beta) + Z.T @ y / sigma**2)
    return mean, cov


# --- the collapsed likelihood ----------------------------------------------------------------


def _raw_groups(panel: pd.DataFrame, pad_to: int | None = None):
    df, pn = checked(panel)
    red = native_math.reduce_panel(pn, ybar=0.0, s=1.0)  # raw units
    return df, red, native_math.group_stats(red, pad_to=pad_to)


@pytest.mark.parametrize("rho", [0.35, -0.9, 0.999999])
def test_collapsed_likelihood_equals_dense_multivariate_normal(rho):
    panel = synthetic(40, seed=3, n_weeks=6, p_obs=0.5)
    df, red, gs = _raw_groups(panel)
    assert (red.n_obs == 1).any() and gs.n_groups < len(red.student_ids)  # n=1 and shared Z'Z
    beta, tau, sigma = np.array([48.0, 1.2]), np.array([3.5, 0.7]), 2.3
    Sigma = np.array([[tau[0] ** 2, rho * tau[0] * tau[1]], [rho * tau[0] * tau[1], tau[1] ** 2]])
    dense = 0.0
    for _, d in df.groupby("student_id"):
        w = d["week"].to_numpy(float)
        Z = np.column_stack([np.ones_like(w), w])
        dense += multivariate_normal.logpdf(
            d["score"].to_numpy(), Z @ beta, sigma**2 * np.eye(len(w)) + Z @ Sigma @ Z.T)
    got = native_math.collapsed_loglik(np, beta[0], beta[1], tau[0], tau[1], rho, sigma,
                                       gs.as_tuple())
    assert got == pytest.approx(dense, rel=1e-10, abs=1e-8)
    # padding with empty groups and precomputed totals change nothing
    _, _, padded = _raw_groups(panel, pad_to=native_math.padded_size(gs.n_groups))
    assert len(padded.count) > gs.n_groups
    got_padded = native_math.collapsed_loglik(
        np, beta[0], beta[1], tau[0], tau[1], rho, sigma, padded.as_tuple(),
        native_math.panel_totals(padded))
    assert got_padded == pytest.approx(dense, rel=1e-10, abs=1e-8)


@pytest.mark.parametrize("kappa", [0.0, 7.5])
@pytest.mark.parametrize("mirror", [1.0, -1.0])
def test_jax_log_density_matches_numpy_and_priors(kappa, mirror):
    """The function NUTS sees: likelihood (JAX, x64) + priors + Jacobians of the transforms,
    in the sampler's coordinates (log sd_Intercept, signed sd_week x, w = logit u * f with
    f = sqrt(1 + (kappa x)^2), log sigma). The mirror point (-x, -cor) is the same model,
    and the reported parameters of both are the same."""
    import jax.numpy as jnp

    panel = synthetic(30, seed=4)
    df, pn = checked(panel)
    ybar, s = contract.prior_scales(df["score"].to_numpy())
    red = native_math.reduce_panel(pn, ybar, s)
    gs = native_math.group_stats(red, pad_to=64)
    ic, b, tau0, tau1, rho, sig = 0.1, 0.05, 0.4, 0.08, math.tanh(0.15), 0.2
    lik = native_math.collapsed_loglik(np, ic - b * red.wbar, b, tau0, tau1, rho, sig, gs.as_tuple())
    u = (1 + rho) / 2
    f = math.sqrt(1 + (kappa * tau1) ** 2)
    prior = (  # spec §3 in standardised units, + log Jacobians of exp / |x| / sigmoid / w
        norm.logpdf(ic, 0, 2.5) + norm.logpdf(b, 0, 1)
        + sum(halfcauchy.logpdf(x) for x in (tau0, tau1, sig)) - math.log(2)  # x -> |x|: 2 to 1
        + math.log(tau0) + math.log(sig)
        + beta_dist.logpdf(u, 2, 2) + math.log(u * (1 - u)) - math.log(f)
    )
    lu = math.log(u / (1 - u))
    q = np.array([ic, b, math.log(tau0), mirror * tau1, mirror * lu * f, math.log(sig)])
    with jax.enable_x64(True):
        got = float(native.log_posterior_q(
            jnp.asarray(q), red.wbar, kappa, jnp.asarray(native_math.panel_totals(gs)),
            tuple(jnp.asarray(a) for a in gs.as_tuple())))
    # the JAX prior omits the normals' constants and the 1/2 of the mirror: compare up to those
    const = -math.log(2.5 * math.sqrt(2 * math.pi)) - math.log(math.sqrt(2 * math.pi)) - math.log(2)
    assert got + const == pytest.approx(lik + prior, rel=1e-12, abs=1e-8)
    back = native.population_from_q(q, red.wbar, kappa)
    for name, want in (("tau0", tau0), ("tau1", tau1), ("rho", rho), ("sigma", sig),
                       ("intercept_c", ic), ("beta1", b), ("beta0", ic - b * red.wbar)):
        assert float(back[name]) == pytest.approx(want, rel=1e-12, abs=1e-14), name


def test_lkj2_on_a_2x2_correlation_is_beta22_on_half_one_plus_r():
    """The sampler's Beta(2, 2) on u = (1 + cor)/2 is brms's lkj(2) (up to a constant)."""
    import jax.numpy as jnp
    import numpyro.distributions as dist

    rs = np.array([-0.95, -0.5, 0.0, 0.3, 0.9])
    lkj = np.array([float(dist.LKJ(2, 2.0).log_prob(jnp.array([[1.0, r], [r, 1.0]])))
                    for r in rs])
    beta = beta_dist.logpdf((1 + rs) / 2, 2, 2) - math.log(2)  # density of r = 2u - 1
    np.testing.assert_allclose(lkj - lkj[2], beta - beta[2], rtol=1e-5, atol=1e-5)


# --- the Rao-Blackwellised students ------------------------------------------------------------


def test_rao_blackwell_students_match_brute_force_over_draws():
    panel = synthetic(25, seed=5)
    df, pn = checked(panel)
    ybar, s = contract.prior_scales(df["score"].to_numpy())
    red = native_math.reduce_panel(pn, ybar, s)
    rng = np.random.default_rng(9)
    D = 60  # made-up hyperparameter draws (standardised units), spread like a small posterior
    draws = {
        "beta0": rng.normal(0.0, 0.1, D), "beta1": rng.normal(0.1, 0.03, D),
        "tau0": np.exp(rng.normal(math.log(0.4), 0.2, D)),
        "tau1": np.exp(rng.normal(math.log(0.1), 0.2, D)),
        "rho": np.tanh(rng.normal(-0.3, 0.3, D)), "sigma": np.exp(rng.normal(math.log(0.2), 0.1, D)),
    }
    h, target = 11.0, 65.0
    got, info = native.student_predictions(red, draws, h, target, p_tolerance=0.0)
    assert info["n_p_exact"] == len(red.student_ids)
    for i, (sid, d) in enumerate(df.groupby("student_id", sort=True)):
        assert red.student_ids[i] == sid
        y, w = d["score"].to_numpy(), d["week"].to_numpy(float)
        means, covs = [], []
        for k in range(D):
            beta = np.array([ybar + s * draws["beta0"][k], s * draws["beta1"][k]])
            tau = s * np.array([draws["tau0"][k], draws["tau1"][k]])
            m, C = dense_student_posterior(y, w, beta, tau, draws["rho"][k], s * draws["sigma"][k])
            means.append(m)
            covs.append(C)
        means, covs = np.array(means), np.array(covs)
        mean = means.mean(axis=0)
        cov = covs.mean(axis=0) + np.cov(means.T, bias=True)  # law of total variance
        eh = np.array([1.0, h])
        P = np.mean(norm.cdf((means @ eh - target) / np.sqrt(np.einsum("i,kij,j->k", eh, covs, eh))))
        np.testing.assert_allclose(
            [got["mean_a"][i], got["mean_b"][i], got["var_a"][i], got["var_b"][i],
             got["cov_ab"][i], got["P"][i]],
            [mean[0], mean[1], cov[0, 0], cov[1, 1], cov[0, 1], P], rtol=1e-9, atol=1e-10)
        assert got["mu"][i] == pytest.approx(eh @ mean, rel=1e-12)
        assert got["sigma"][i] == pytest.approx(math.sqrt(eh @ cov @ eh), rel=1e-9)


def _reduced_cohort():
    """(the reduced panel, ybar, s) of a synthetic cohort of 300 students."""
    df, pn = checked(synthetic(300, seed=6))
    ybar, s = contract.prior_scales(df["score"].to_numpy())
    return native_math.reduce_panel(pn, ybar, s), ybar, s


def _spread_draws(rng, spread: float, D: int = 200) -> dict[str, np.ndarray]:
    """Standardised hyperparameter draws, their posterior as wide as ``spread`` says."""
    return {
        "beta0": rng.normal(0.0, 0.1 * spread, D), "beta1": rng.normal(0.1, 0.03 * spread, D),
        "tau0": np.exp(rng.normal(math.log(0.4), 0.2 * spread, D)),
        "tau1": np.exp(rng.normal(math.log(0.1), 0.2 * spread, D)),
        "rho": np.tanh(rng.normal(-0.3, 0.3 * spread, D)),
        "sigma": np.exp(rng.normal(math.log(0.2), 0.1 * spread, D)),
    }


def test_cheap_p_stays_within_its_proven_bound():
    """A cheap P (first- or second-order form) is used only where its bound <= tolerance;
    the bound must hold."""
    red, ybar, s = _reduced_cohort()
    rng = np.random.default_rng(10)
    for spread in (0.02, 0.2, 1.0):  # concentrated .. wide hyperparameter posteriors
        draws = _spread_draws(rng, spread)
        t_std = (60.0 - ybar) / s
        gs = native_math.group_stats(red)
        gm = native_math.group_moments(draws, gs.n, gs.sw, gs.sww, 11.0, t_std)
        *_, p_cheap, bound = native_math.student_lines(gm, red.group, red.g)
        exact, _ = native.student_predictions(red, draws, 11.0, 60.0, p_tolerance=0.0)
        err = np.abs(p_cheap - exact["P"])
        assert np.all(err <= bound + 1e-12), (spread, float((err - bound).max()))
        mixed, info = native.student_predictions(red, draws, 11.0, 60.0, p_tolerance=1e-3)
        assert np.max(np.abs(mixed["P"] - exact["P"])) <= 1e-3
        if spread == 0.02:
            assert info["n_p_exact"] < len(red.student_ids)  # the cheap form is exercised
        if spread == 1.0:
            assert info["n_p_exact"] > 0  # and so is the fallback



def test_one_students_cheap_p_is_the_vectorised_one_bit_for_bit():
    """The single call's scalar form (``cheap_p_one``) and the batch's (``cheap_p``) are one
    rule: the same P and bound to the last bit, in both of its branches."""
    rng = np.random.default_rng(11)
    z_mean, z_var = rng.normal(0, 2, 2000), rng.uniform(0, 0.2, 2000)
    z_m4 = z_var ** 2 * rng.uniform(1, 30, 2000)
    p, bound = native_math.cheap_p(z_mean, z_var, z_m4)
    one = [native_math.cheap_p_one(*x) for x in zip(z_mean, z_var, z_m4)]
    assert np.array_equal([o[0] for o in one], p) and np.array_equal([o[1] for o in one], bound)
    second = native_math.P_BOUND2_COEF * z_m4 ** 0.75 < native_math.P_BOUND_COEF * z_var
    assert second.any() and (~second).any()  # both forms met

@pytest.mark.parametrize("tolerance", [0.0, 1e-3])
def test_a_few_students_get_the_grouped_answer_draw_by_draw(tolerance):
    """predict_from_sums for up to FEW_STUDENTS students (the real-time single call) works
    draw by draw instead of through the grouped moments: the same mu, sigma and P (same
    rules for the cheap P) as the grouped path gives the same students among many."""
    rng = np.random.default_rng(3)
    D = 400
    draws = {"b_Intercept": rng.normal(0.1, 0.01, D), "b_week": rng.normal(0.05, 0.002, D),
             "sd_student_id__Intercept": np.abs(rng.normal(0.5, 0.05, D)),
             "sd_student_id__week": np.abs(rng.normal(0.03, 0.01, D)),
             "cor_student_id__Intercept__week": np.tanh(rng.normal(0.1, 0.3, D)),
             "sigma": np.abs(rng.normal(0.3, 0.02, D))}
    S = 3 * native_math.FEW_STUDENTS  # enough for the grouped path
    weeks = [np.sort(rng.choice(16, size=k, replace=False)) for k in rng.integers(1, 9, S)]
    n, sw, sww = (np.array([f(w) for w in weeks], float) for f in (len, np.sum, lambda w: np.sum(w * w)))
    ys = [0.1 + 0.05 * w + rng.normal(0, 0.5) + rng.normal(0, 0.3, len(w)) for w in weeks]
    sy, swy = np.array([y.sum() for y in ys]), np.array([(y * w).sum() for y, w in zip(ys, weeks)])
    h, target = 15.0, 0.7
    grouped = native_math.predict_from_sums(draws, n, sw, sww, sy, swy, h, target, p_tolerance=tolerance)
    for lo in range(0, S, native_math.FEW_STUDENTS):
        sl = slice(lo, lo + native_math.FEW_STUDENTS)
        few = native_math.predict_from_sums(draws, n[sl], sw[sl], sww[sl], sy[sl], swy[sl], h, target,
                                            p_tolerance=tolerance)
        for got, want in zip(few, grouped):
            np.testing.assert_allclose(got, want[sl], rtol=1e-11, atol=1e-12)
    for i in range(S):  # one student alone (the single call's own arithmetic), one-row students among them
        one = native_math.predict_from_sums(draws, n[i:i + 1], sw[i:i + 1], sww[i:i + 1], sy[i:i + 1],
                                            swy[i:i + 1], h, target, p_tolerance=tolerance)
        for got, want in zip(one, grouped):
            np.testing.assert_allclose(got, want[i:i + 1], rtol=1e-10, atol=1e-12)
    assert (n == 1).any() and (n > 1).any()
    if tolerance == 0.0:  # and both are the exact mixture: a per-draw loop shares no code with either
        std, ybar, s = native_math.standardised_draws(draws)
        for i in (0, S // 2, S - 1):
            m, v = [], []
            for d in range(D):
                tau = s * np.array([std["tau0"][d], std["tau1"][d]])
                beta = np.array([ybar + s * std["beta0"][d], s * std["beta1"][d]])
                mean, C = dense_student_posterior(ys[i], weeks[i].astype(float), beta, tau, std["rho"][d],
                                                  s * std["sigma"][d])
                m.append(mean @ (1.0, h))
                v.append(np.array([1.0, h]) @ C @ np.array([1.0, h]))
            m, v = np.array(m), np.array(v)
            assert grouped[2][i] == pytest.approx(np.mean(norm.cdf((m - target) / np.sqrt(v))), abs=1e-10)
            assert grouped[0][i] == pytest.approx(m.mean(), abs=1e-10)
            assert grouped[1][i] ** 2 == pytest.approx(v.mean() + m.var(), rel=1e-9)


# --- the engine ----------------------------------------------------------------------------------


SMALL = FitSettings(n_chains=2, n_samples=400, seed=77, horizon_week=10, target=60.0,
                    lookback_weeks=8, run_id="native-20261123-043000")


@pytest.fixture(scope="module")
def small_fit():
    return fit_json(synthetic(60, seed=8), SMALL)


def test_result_follows_the_contract(small_fit):
    res = small_fit
    FitResult.from_json(res).validate()
    assert res["engine"] == "native" and res["run_id"] == SMALL.run_id
    assert res["engine_version"].startswith("native numpyro ")
    assert res["n_students"] == 60 and len(res["predictions"]) == 60
    assert (res["n_chains"], res["n_samples"], res["n_warmup"]) == (2, 400, 200)
    assert res["student_level"] == "rao-blackwellised"
    panel = synthetic(60, seed=8)
    ybar, s = contract.prior_scales(panel["score"])
    assert res["priors"] == contract.priors(ybar, s)
    assert res["n_obs"] == len(panel)
    json.dumps(res, allow_nan=False)  # plain JSON numbers
    for p in res["predictions"]:
        mu, sd, _ = contract.line_prediction(p["mean_a"], p["mean_b"], p["var_a"], p["var_b"],
                                             p["cov_ab"], SMALL.horizon_week, SMALL.target)
        assert p["mu"] == pytest.approx(float(mu)) and p["sigma"] == pytest.approx(float(sd))


def test_same_seed_same_result_other_seed_other_draws(small_fit):
    again = fit_json(synthetic(60, seed=8), SMALL)
    for key in ("posterior_summary", "predictions"):
        assert again[key] == small_fit[key]
    other = fit_json(synthetic(60, seed=8), FitSettings(
        **{**SMALL.__dict__, "seed": 78}))
    assert other["posterior_summary"]["b_week"]["mean"] != small_fit["posterior_summary"][
        "b_week"]["mean"]


def test_run_id_is_made_when_absent():
    res = fit_json(synthetic(10, seed=2), FitSettings(
        **{**SMALL.__dict__, "run_id": None}))
    assert res["run_id"].startswith("native-") and len(res["run_id"]) == len("native-20261123-043000")


@pytest.mark.parametrize(
    "panel, field",
    [
        (pd.DataFrame({"student_id": ["a"] * 5, "week": range(5), "score": np.arange(5.0)}),
         "student_id"),
        (pd.DataFrame({"student_id": list("aabb"), "week": [0, 1, 0, 1], "score": [1.0] * 4}),
         "score"),
        (pd.DataFrame({"student_id": list("ab"), "week": [0, 1], "score": [1.0, 2.0]}), "rows"),
        (pd.DataFrame({"student_id": list("aab"), "week": [0, 0, 1], "score": [1.0, 2, 3]}),
         "student_id,week"),
        (pd.DataFrame({"student_id": list("aab"), "score": [1.0, 2, 3]}), "columns"),
    ],
)
def test_panels_the_contract_rejects_raise_panel_error(panel, field):
    with pytest.raises(contract.PanelError) as err:
        fit_json(panel, SMALL)
    assert err.value.field == field


def test_bad_target_is_an_error():
    with pytest.raises(contract.ContractError):
        fit_json(synthetic(10, seed=2), FitSettings(
            **{**SMALL.__dict__, "target": float("nan")}))


def test_jax_cache_dir_is_configurable(tmp_path):
    from growth_assets.settings import NativeRuntime, SettingsError

    assert NativeRuntime.from_env({"GROWTH_JAX_CACHE_DIR": str(tmp_path / "c")}).cache_dir == str(tmp_path / "c")
    assert NativeRuntime.from_env({"GROWTH_JAX_CACHE_DIR": "off"}).cache_dir is None
    assert NativeRuntime.from_env({"XDG_CACHE_HOME": str(tmp_path)}).cache_dir == str(
        tmp_path / "growth_assets" / "jax")
    rt = NativeRuntime.from_env({"GROWTH_NATIVE_DEVICES": "3", "GROWTH_NATIVE_CHAIN_METHOD": "sequential"})
    assert (rt.devices, rt.chain_method) == (3, "sequential")
    with pytest.raises(SettingsError, match="GROWTH_NATIVE_CHAIN_METHOD='parallel'"):
        NativeRuntime.from_env({"GROWTH_NATIVE_CHAIN_METHOD": "parallel"})


# --- against brms (slow: the contract's defaults, 4 x 2000) ------------------------------------


@pytest.fixture(scope="module")
def reference():
    path = REFERENCE_DIR / "sleepstudy.brms.json"
    if not path.exists():
        pytest.fail(f"reference data missing: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sleepstudy_fit():
    panel = pd.read_csv(REFERENCE_DIR / "sleepstudy.csv")
    settings = FitSettings(seed=1234, horizon_week=15, target=300.0, lookback_weeks=10)
    engine = NativeEngine()
    nf = engine.sample(Panel.from_frame(panel), settings)
    return nf, engine.result(nf, settings).to_json()


@pytest.mark.slow
def test_sleepstudy_population_matches_brms(reference, sleepstudy_fit):
    _, res = sleepstudy_fit
    FitResult.from_json(res).validate()
    assert res["n_obs"] == reference["n_obs"] and res["n_students"] == reference["n_students"]
    assert res["priors"][0]["args"] == pytest.approx([reference["ybar"], 2.5 * reference["s"]])
    for row in reference["population"]:
        got = res["posterior_summary"][row["variable"]]
        # the reference README's criterion for 4 x 1000 kept draws
        assert abs(got["mean"] - row["mean"]) <= 0.15 * row["sd"], row["variable"]
        assert abs(got["sd"] / row["sd"] - 1) <= 0.10, row["variable"]
        assert got["q5"] == pytest.approx(row["5%"], abs=0.25 * row["sd"])
        assert got["q95"] == pytest.approx(row["95%"], abs=0.25 * row["sd"])
        assert got["rhat"] < 1.01 and got["ess_bulk"] > 1000 and got["ess_tail"] > 1000
    d = res["diagnostics"]
    assert d["n_divergent"] == 0 and d["n_max_treedepth"] == 0 and d["max_rhat"] < 1.01


@pytest.mark.slow
def test_sleepstudy_students_match_brms(reference, sleepstudy_fit):
    nf, res = sleepstudy_fit
    got = {p["student_id"]: p for p in res["predictions"]}
    assert set(got) == {st["student_id"] for st in reference["students"]}
    for st in reference["students"]:
        p = got[st["student_id"]]
        assert p["n_obs"] == st["n_obs"]
        # Monte Carlo error of a posterior mean with ESS >= 1000 is <= 0.032 sd
        assert abs(p["mean_a"] - st["mean_a"]) <= 0.1 * math.sqrt(st["var_a"])
        assert abs(p["mean_b"] - st["mean_b"]) <= 0.1 * math.sqrt(st["var_b"])
        assert p["var_a"] / st["var_a"] == pytest.approx(1, abs=0.1)
        assert p["var_b"] / st["var_b"] == pytest.approx(1, abs=0.1)
        corr = st["cov_ab"] / math.sqrt(st["var_a"] * st["var_b"])
        assert p["cov_ab"] / math.sqrt(p["var_a"] * p["var_b"]) == pytest.approx(corr, abs=0.05)
        h15 = next(h for h in st["horizons"] if h["h"] == 15)
        assert p["mu"] == pytest.approx(h15["mean"], abs=0.1 * h15["sd"])
        assert p["sigma"] == pytest.approx(h15["sd"], rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("h", [11, 15])
def test_sleepstudy_probabilities_match_brms(reference, sleepstudy_fit, h):
    """P for each of the reference's targets, from the same draws.

    Tolerance 0.03: the reference P is a frequency over 20,000 draws (Monte Carlo sd <=
    0.5 / sqrt(ESS ~ 5,000) = 0.007); ours is a Rao-Blackwellised mean over 4,000 draws
    (sd <= 0.5 / sqrt(ESS ~ 2,500) = 0.01, usually far less), so |difference| has sd <=
    0.012 and 0.03 is 2.5 of those at the very worst P = 0.5."""
    nf, _ = sleepstudy_fit
    ids = list(nf.panel.student_ids)
    worst = 0.0
    for k, t in enumerate(reference["targets"]):
        preds, _ = nf.predict(h, t)
        for st in reference["students"]:
            ref = next(x for x in st["horizons"] if x["h"] == h)["P"][k]
            diff = abs(preds["P"][ids.index(st["student_id"])] - ref)
            worst = max(worst, diff)
            assert diff <= 0.03, (st["student_id"], t, h)
    assert worst > 0  # a real comparison, not a copy


# --- the preconditioner changes speed, never the posterior; results reproduce across processes --


@pytest.mark.slow
def test_a_poor_preconditioner_gives_the_same_posterior(monkeypatch):
    """q = m + L z is an affine map with a constant Jacobian: whatever (m, L) the Laplace
    step returns, NUTS targets the same posterior. Shift m by 2 posterior sds and stretch
    and shear L, and the population posterior stays within Monte Carlo error."""
    panel = synthetic(40, seed=11)
    settings = FitSettings(seed=5, horizon_week=10, target=60.0)
    good = fit_json(panel, settings)
    real = native.laplace

    def poor(wbar, totals, groups, ready=None):
        m, L, info = real(wbar, totals, groups, ready)
        shear = np.eye(6) + 0.8 * np.tri(6, 6, -1)
        return m + 2.0 * np.sqrt(np.sum(L**2, axis=1)), 3.0 * L @ shear, {**info, "poor": True}

    monkeypatch.setattr(native, "laplace", poor)
    bad = fit_json(panel, settings)
    assert bad["sampler"]["laplace"]["poor"] and bad["diagnostics"]["max_rhat"] < 1.01
    for p in contract.POPULATION_PARAMS:
        g, b = good["posterior_summary"][p], bad["posterior_summary"][p]
        assert abs(g["mean"] - b["mean"]) <= 0.15 * g["sd"], p
        assert b["sd"] / g["sd"] == pytest.approx(1, abs=0.1), p
    assert bad["diagnostics"]["mean_leapfrog_steps"] > good["diagnostics"]["mean_leapfrog_steps"]


_CHILD = """
import hashlib, json, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {here!r})
from test_native import synthetic, SMALL, fit_json
res = fit_json(synthetic(60, seed=8), SMALL)
keep = {{k: res[k] for k in ("posterior_summary", "predictions")}}
print(res["sampler"]["n_devices"], hashlib.sha256(json.dumps(keep).encode()).hexdigest())
"""


@pytest.mark.slow
def test_same_seed_same_result_across_processes(small_fit):
    import hashlib
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    code = _CHILD.format(repo=str(here.parents[1]), here=str(here))
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert outs[0] == outs[1]
    if int(outs[0][0]) == small_fit["sampler"]["n_devices"]:
        keep = {k: small_fit[k] for k in ("posterior_summary", "predictions")}
        assert outs[0][1] == hashlib.sha256(json.dumps(keep).encode()).hexdigest()


def test_week_patterns_group_as_the_rows_unique_to_each_student():
    """predict_from_sums groups students by (n, sum w, sum w^2) through one packed int64 key
    when the ranges allow, else through the rows themselves: both give the groups of
    np.unique over the rows, in the same order."""
    rng = np.random.default_rng(5)
    n = rng.integers(1, 13, 5000).astype(float)
    sw = rng.integers(0, 60, 5000).astype(float)
    sww = rng.integers(0, 600, 5000).astype(float)
    _, want = np.unique(np.stack([n, sw, sww], axis=1), axis=0, return_inverse=True)
    np.testing.assert_array_equal(native_math._pattern_groups(n, sw, sww), want.reshape(-1))
    huge = sww * 2.0**40  # spans whose product overflows int64: the rows' own unique
    _, want = np.unique(np.stack([n, sw, huge], axis=1), axis=0, return_inverse=True)
    np.testing.assert_array_equal(native_math._pattern_groups(n, sw, huge), want.reshape(-1))


def _moments_and_each_students_z(seed: int, spread: float, h: float = 11.0):
    """(reduced cohort, its group moments, each student's z_d over the draws computed draw by
    draw from her own group's terms, with none of the grouped moments)."""
    red, ybar, s = _reduced_cohort()
    draws = _spread_draws(np.random.default_rng(seed), spread)
    t_std = (60.0 - ybar) / s
    gs = native_math.group_stats(red)
    gm = native_math.group_moments(draws, gs.n, gs.sw, gs.sww, h, t_std)
    x = np.column_stack([np.ones(len(red.group)), red.g])
    z = []
    for i, gi in enumerate(red.group):
        _, _, w = native_math.group_draw_terms(draws, gs.n[gi:gi + 1], gs.sw[gi:gi + 1], gs.sww[gi:gi + 1], h, t_std)
        z.append(w[0] @ x[i])
    return red, gm, np.array(z)


def test_the_second_order_form_leaves_fewer_students_to_the_exact_mean():
    """Where the first-order bound (0.121 Var z) exceeds the tolerance, the second-order form
    (Phi(m) - m phi(m) v / 2, bound phi(0)/6 (E (z - m)^4)^(3/4)) often does not: fewer
    students need the mean over every draw, and every cheap P is still within its bound of
    the exact one (computed here draw by draw, with none of the grouped moments)."""
    red, gm, z = _moments_and_each_students_z(10, 0.5)
    *_, p_cheap, bound = native_math.student_lines(gm, red.group, red.g)
    first_order_exact = int(np.sum(native_math.P_BOUND_COEF * z.var(axis=1) > 1e-3))
    assert first_order_exact > 0  # the case the second-order form is for
    assert int(np.sum(bound > 1e-3)) < first_order_exact
    exact = norm.cdf(z).mean(axis=1)
    assert np.all(np.abs(p_cheap - exact) <= bound + 1e-12)


def test_a_groups_polynomial_coefficients_give_each_students_moments_over_the_draws():
    """student_lines evaluates per-group polynomials in g = (g0, g1); each student's mean and
    variance of z and E (z - m)^4 must equal those computed draw by draw from her own z_d."""
    red, gm, z = _moments_and_each_students_z(11, 0.7)
    m2, m4 = native_math._monomials(red.g)
    np.testing.assert_allclose(np.einsum("sk,sk->s", gm.lin[red.group, 2], m2[:, :3]), z.mean(axis=1),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.einsum("sk,sk->s", gm.quad[red.group, 3], m2), z.var(axis=1),
                               rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(np.einsum("sk,sk->s", gm.quartic[red.group], m4),
                               np.mean((z - z.mean(axis=1, keepdims=True)) ** 4, axis=1), rtol=1e-7, atol=1e-14)
