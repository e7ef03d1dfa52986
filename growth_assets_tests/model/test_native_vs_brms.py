"""The native engine against the real brms service on synthetic, untidy cohorts."""

import numpy as np
import pytest

from growth_assets_tests.support.results import accepted_json, checked_json  # noqa: F401

from growth_assets.model.engine import FitSettings
from growth_assets.model.native import NativeEngine
from growth_assets_tests.support.panels import cohort_panel

pytestmark = [pytest.mark.r_service, pytest.mark.slow]


@pytest.mark.parametrize("seed", [21, 22])
def test_native_agrees_with_brms_student_by_student(r_service, seed):
    panel = cohort_panel(50, seed=seed, share_sparse=0.2)
    n_obs = panel.groupby("student_id").size()
    assert (n_obs <= 2).sum() >= 5, "the cohort must include students with 1-2 observations"
    assert panel.groupby("student_id")["week"].max().lt(11).any()  # some stop early
    settings = FitSettings(seed=seed, horizon_week=15, target=0.0, lookback_weeks=12)  # contract defaults
    brms = accepted_json(r_service.client(), panel, settings)
    native = accepted_json(NativeEngine(), panel, settings)
    for res in (brms, native):
        assert res["diagnostics"]["max_rhat"] < 1.01 and res["diagnostics"]["min_ess_bulk"] > 400
    b = {p["student_id"]: p for p in brms["predictions"]}
    worst = {"P": 0.0, "a": 0.0, "b": 0.0}
    for p in native["predictions"]:
        q = b[p["student_id"]]
        worst["P"] = max(worst["P"], abs(p["P"] - q["P"]))
        worst["a"] = max(worst["a"], abs(p["mean_a"] - q["mean_a"]) / np.sqrt(q["var_a"]))
        worst["b"] = max(worst["b"], abs(p["mean_b"] - q["mean_b"]) / np.sqrt(q["var_b"]))
        assert p["n_obs"] == q["n_obs"]
    # the tolerances: every student's P within 0.03, line means within 0.1 posterior sd
    assert worst["P"] < 0.03 and worst["a"] < 0.1 and worst["b"] < 0.1, worst
    for name, s in brms["posterior_summary"].items():
        assert abs(native["posterior_summary"][name]["mean"] - s["mean"]) < 0.15 * s["sd"], name
        assert abs(native["posterior_summary"][name]["sd"] / s["sd"] - 1) < 0.10, name
