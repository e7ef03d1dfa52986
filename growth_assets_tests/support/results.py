"""A spec §8 fit result built by hand from known line posteriors (for writer tests)."""

from __future__ import annotations

from growth_assets.model.contract import FORMULA, POPULATION_PARAMS, line_prediction, priors


def make_result(n_students: int = 3, run_id: str = "native-20261123-043000", h: int = 15,
                target: float = 0.0) -> dict:
    preds = []
    for i in range(n_students):
        ma, mb, va, vb, cab = -0.5 + 0.1 * i, 0.05, 0.04, 0.0004, -0.001
        mu, sigma, p = line_prediction(ma, mb, va, vb, cab, h, target)
        preds.append({"student_id": f"s{i:05d}", "n_obs": 12, "mean_a": ma, "mean_b": mb,
                      "var_a": va, "var_b": vb, "cov_ab": cab, "mu": float(mu),
                      "sigma": float(sigma), "P": float(p)})
    summ = {p: {"mean": 0.1, "sd": 0.01, "q5": 0.08, "q95": 0.12, "rhat": 1.001,
                "ess_bulk": 1500.0, "ess_tail": 1400.0} for p in POPULATION_PARAMS}
    return {
        "run_id": run_id, "engine": run_id.split("-")[0], "engine_version": "test",
        "formula": FORMULA, "priors": priors(0.0, 1.0), "seed": 1, "n_chains": 4,
        "n_samples": 2000, "n_warmup": 1000, "n_obs": 12 * n_students, "n_students": n_students,
        "lookback_weeks": 12, "horizon_week": h, "target": target, "posterior_summary": summ,
        "diagnostics": {"max_rhat": 1.002, "min_ess_bulk": 900.0, "min_ess_tail": 800.0,
                        "n_divergent": 0, "n_max_treedepth": 0, "elapsed_s": 1.0},
        "predictions": preds,
    }
