"""contract.py with hand-derived numbers (spec §1, §3, §6, §7, §8)."""

from __future__ import annotations

import copy
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from growth_assets.model import contract
from growth_assets.model.panel import Panel
from growth_assets.model.result import FitResult

PHI_2 = 0.9772498680518208  # Phi(2)


# --- §3 priors -------------------------------------------------------------------------------


def test_prior_scales_and_table():
    assert contract.prior_scales([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sd with n-1
    assert contract.prior_scales([0.0, 0.0, 4.0, 4.0]) == (2.0, pytest.approx(math.sqrt(16 / 3)))
    assert contract.priors(300.0, 50.0) == [
        {"class": "Intercept", "dist": "normal", "args": [300.0, 125.0]},
        {"class": "b", "coef": "week", "dist": "normal", "args": [0.0, 50.0]},
        {"class": "sd", "dist": "cauchy", "args": [0.0, 50.0], "lb": 0},
        {"class": "sigma", "dist": "cauchy", "args": [0.0, 50.0], "lb": 0},
        {"class": "cor", "dist": "lkj", "args": [2.0]},
    ]
    with pytest.raises(contract.PanelError) as e:
        contract.prior_scales([5.0, 5.0, 5.0])
    assert e.value.field == "score"
    with pytest.raises(contract.PanelError) as e:
        contract.prior_scales([1.0, 2.0])
    assert e.value.field == "rows"


# --- §6 predictions --------------------------------------------------------------------------


def test_horizon_week():
    assert contract.horizon_week(12, 4) == 15
    assert contract.horizon_week(1, 0) == 0
    for args in ((0, 4), (12, -1)):
        with pytest.raises(contract.ContractError):
            contract.horizon_week(*args)


def test_line_prediction_by_hand():
    # mu = 1 + 2 * 0.5 = 2; var = 0.04 + 2*2*(-0.01) + 4*0.01 = 0.04; sigma = 0.2
    mu, sd, p = contract.line_prediction(1.0, 0.5, 0.04, 0.01, -0.01, 2.0, 2.0)
    assert (float(mu), float(sd), float(p)) == pytest.approx((2.0, 0.2, 0.5))
    _, _, p = contract.line_prediction(1.0, 0.5, 0.04, 0.01, -0.01, 2.0, 1.6)  # z = 2
    assert float(p) == pytest.approx(PHI_2, abs=1e-12)
    _, _, p = contract.line_prediction(1.0, 0.5, 0.04, 0.01, -0.01, 2.0, 2.4)  # z = -2
    assert float(p) == pytest.approx(1 - PHI_2, abs=1e-12)
    # vectorised, and a point mass: P is 1 at/above the target, 0 below
    mu, sd, p = contract.line_prediction([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0],
                                         [0.0, 0.0], 3.0, 1.0)
    assert list(sd) == [0.0, 0.0] and list(p) == [1.0, 1.0]
    _, _, p = contract.line_prediction(1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.5)
    assert float(p) == 0.0
    with pytest.raises(contract.ContractError):  # var = 1 + 2*1*(-2) + 1 = -2 < 0
        contract.line_prediction(0.0, 0.0, 1.0, 1.0, -2.0, 1.0, 0.0)


# --- §7 normal approximation -----------------------------------------------------------------


def test_normal_approximation_by_hand():
    assert contract.normal_approximation(0.5, 0.1, 0.7) == pytest.approx(1 - PHI_2, abs=1e-12)
    assert contract.normal_approximation(0.9, 0.1, 0.7) == pytest.approx(PHI_2, abs=1e-12)
    assert contract.normal_approximation(0.7, 0.3, 0.7) == 0.5
    for mu, sd in ((None, 0.1), (0.5, None), (0.5, 0.0), (0.5, -1.0), (math.nan, 0.1),
                   (0.5, math.inf)):
        assert contract.normal_approximation(mu, sd, 0.7) is None


def test_check_target():
    assert contract.check_target(0.7) == 0.7 and contract.check_target(np.float32(0.5)) == 0.5
    for bad in ("0.7", "abc", None, True, math.nan, math.inf):  # a string or a bool is no number
        with pytest.raises(contract.ContractError):
            contract.check_target(bad)


def test_make_run_id():
    at = datetime(2026, 11, 23, 4, 30, 0, tzinfo=timezone.utc)
    assert contract.make_run_id("native", at) == "native-20261123-043000"
    cet = timezone(timedelta(hours=1))
    assert contract.make_run_id("brms", datetime(2026, 11, 23, 5, 30, 0, tzinfo=cet)) == \
        "brms-20261123-043000"
    with pytest.raises(contract.ContractError):
        contract.make_run_id("stan", at)


# --- §1/§3 panel -----------------------------------------------------------------------------


def _panel(**over):
    d = {"student_id": ["a", "a", "b", "b"], "week": [0, 1, 0, 2], "score": [1.0, 2.0, 3.0, 5.0]}
    d.update(over)
    return pd.DataFrame(d)


def test_validate_panel_canonical_dtypes():
    pn = Panel.from_frame(_panel(student_id=[1, 1, 2, 2], week=[0.0, 1.0, 0.0, 2.0]))
    assert pn.student_ids.tolist() == ["1", "2"] and pn.student.tolist() == [0, 0, 1, 1]
    assert pn.week.dtype == np.int64 and pn.score.dtype == np.float64
    assert pn.to_frame()["student_id"].tolist() == ["1", "1", "2", "2"]


@pytest.mark.parametrize(
    "over, field",
    [
        ({"student_id": ["a", None, "b", "b"]}, "student_id"),
        ({"week": [0, 1.5, 0, 2]}, "week"),
        ({"week": [0, -1, 0, 2]}, "week"),
        ({"week": [0, "x", 0, 2]}, "week"),
        ({"score": [1.0, math.nan, 3.0, 5.0]}, "score"),
        ({"score": [1.0, math.inf, 3.0, 5.0]}, "score"),
        ({"week": [0, 0, 0, 2]}, "student_id,week"),
        ({"student_id": ["a"] * 4, "week": [0, 1, 2, 3]}, "student_id"),
        ({"score": [2.0] * 4}, "score"),
    ],
)
def test_validate_panel_errors(over, field):
    with pytest.raises(contract.PanelError) as e:
        Panel.from_frame(_panel(**over))
    assert e.value.field == field


def test_validate_panel_short_and_missing():
    with pytest.raises(contract.PanelError) as e:
        Panel.from_frame(pd.DataFrame({"student_id": ["a", "b"], "week": [0, 0],
                                              "score": [1.0, 2.0]}))
    assert e.value.field == "rows"
    with pytest.raises(contract.PanelError) as e:
        Panel.from_frame(_panel().drop(columns="score"))
    assert e.value.field == "columns"


# --- §8 fit result ---------------------------------------------------------------------------


def _result():
    stat = {"mean": 1.0, "sd": 0.1, "q5": 0.8, "q95": 1.2, "rhat": 1.0, "ess_bulk": 900.0,
            "ess_tail": 800.0}
    pred = {"student_id": "s1", "n_obs": 3, "mean_a": 0.1, "mean_b": 0.01, "var_a": 0.01,
            "var_b": 0.001, "cov_ab": 0.0, "mu": 0.25, "sigma": math.sqrt(0.01 + 225 * 0.001), "P": 0.4}
    return {
        "run_id": "native-20261123-043000", "engine": "native",
        "engine_version": "native numpyro 0.22.0 / jax 0.10.2", "formula": contract.FORMULA,
        "priors": contract.priors(0.0, 1.0), "seed": 1, "n_chains": 4, "n_samples": 2000,
        "n_warmup": 1000, "n_obs": 6, "n_students": 2, "lookback_weeks": 12,
        "horizon_week": 15, "target": 0.0,
        "posterior_summary": {p: dict(stat) for p in contract.POPULATION_PARAMS}
        | {"cor_student_id__Intercept__week": {**stat, "mean": 0.2, "q5": 0.0, "q95": 0.4}},
        "diagnostics": {"max_rhat": 1.0, "min_ess_bulk": 900.0, "min_ess_tail": 800.0,
                        "n_divergent": 0, "n_max_treedepth": 0, "elapsed_s": 1.0},
        "predictions": [pred, {**pred, "student_id": "s2"}],
    }


def test_valid_result_passes_and_round_trips():
    res = _result()
    fit = FitResult.from_json(res).validate()
    assert fit.to_json() == res


def _set(path, value):
    def mutate(res):
        obj = res
        for k in path[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return mutate


@pytest.mark.parametrize(
    "mutate, field",
    [
        (_set(["run_id"], KeyError), "run_id"),
        (_set(["engine"], "stan"), "engine"),
        (_set(["formula"], "score ~ week"), "formula"),
        (_set(["priors"], []), "priors"),
        (_set(["seed"], 1.5), "seed"),
        (_set(["n_chains"], [4]), "n_chains"),
        (_set(["target"], True), "target"),
        (_set(["posterior_summary", "sigma"], KeyError), "posterior_summary.sigma"),
        (_set(["posterior_summary", "b_week", "rhat"], [1.0]), "posterior_summary.b_week.rhat"),
        (_set(["diagnostics", "n_divergent"], KeyError), "diagnostics.n_divergent"),
        (_set(["predictions", 1, "P"], 1.2), "predictions[1].P"),
        (_set(["predictions", 0, "mu"], math.nan), "predictions[0].mu"),
        (_set(["predictions", 1, "student_id"], "s1"), "predictions.student_id"),
        (_set(["predictions", 0, "var_a"], -0.1), "predictions[0].var_a"),
        (_set(["predictions", 0, "cov_ab"], 0.5), "predictions[0].cov_ab"),  # not positive definite
        (_set(["predictions", 0, "sigma"], 0.1), "predictions[0].sigma"),  # not the line's sd at h
        (_set(["diagnostics", "n_divergent"], -1), "diagnostics.n_divergent"),
        (_set(["posterior_summary", "sigma", "mean"], math.nan), "posterior_summary.sigma.mean"),
        (_set(["n_students"], 3), "predictions"),
    ],
)
def test_invalid_results_name_the_field(mutate, field):
    res = copy.deepcopy(_result())
    mutate(res)
    with pytest.raises(contract.FitResultError) as e:
        FitResult.from_json(res).validate()
    assert e.value.field == field


def test_thin_draws_spreads_over_every_chain():
    """Docstring: n draws evenly spaced over all chains' draws (flattened chain by chain).
    Mutation killed: keep the first n (one chain's draws only, autocorrelated)."""
    chains = np.repeat(np.arange(4.0)[:, None], 2000, axis=1)  # chain c's draws are all c
    thin = contract.thin_draws({"sigma": chains}, 1000)["sigma"]
    assert thin.size == 1000
    assert set(np.unique(thin)) == {0.0, 1.0, 2.0, 3.0}
    assert np.bincount(thin.astype(int)).tolist() == [250, 250, 250, 250]
    flat = np.arange(8000.0)
    kept = contract.thin_draws({"x": flat}, 1000)["x"]
    assert kept[0] == 0 and kept[-1] == 7999 and np.all(np.diff(kept) >= 7) and np.all(np.diff(kept) <= 9)
