"""A FitResult built by hand from known line posteriors (for writer and graph tests)."""

from __future__ import annotations

import numpy as np

from growth_assets.model.contract import POPULATION_PARAMS, line_prediction, priors
from growth_assets.model.result import Diagnostics, FitResult, ParamSummary, StudentLines


def make_result(n_students: int = 3, run_id: str = "native-20261123-043000", h: int = 15,
                target: float = 0.0, ids=None, n_obs=None, scales=(0.0, 1.0), **diag) -> FitResult:
    """A made-up fit of ``n_students`` (``ids``, ``n_obs``), with spec §3's priors for a panel
    of ``scales`` (its ybar, s: ``Panel.scales()``) and the diagnostics ``diag``."""
    i = np.arange(n_students)
    ma, mb = -0.5 + 0.1 * i, np.full(n_students, 0.05)
    va, vb, cab = np.full(n_students, 0.04), np.full(n_students, 0.0004), np.full(n_students, -0.001)
    mu, sigma, p = line_prediction(ma, mb, va, vb, cab, h, target)
    ids = np.array([f"s{k:05d}" for k in i] if ids is None else list(ids), dtype=object)
    n_obs = np.full(n_students, 12, dtype=np.int64) if n_obs is None else np.asarray(n_obs, dtype=np.int64)
    students = StudentLines(ids, n_obs, ma, mb, va, vb, cab, mu, sigma, p)
    d = dict(max_rhat=1.002, min_ess_bulk=900.0, min_ess_tail=800.0, n_divergent=0, n_max_treedepth=0,
             elapsed_s=1.0)
    d.update(diag)
    # the summary as the diagnostics sum it up (their worst figures are its own): a chosen
    # diagnostic (a fault injected for the checks) is then the fit's, not a contradiction
    summ = {q: ParamSummary(0.1, 0.01, 0.08, 0.12, d["max_rhat"], d["min_ess_bulk"], d["min_ess_tail"])
            for q in POPULATION_PARAMS}
    return FitResult(run_id=run_id, engine=run_id.split("-")[0], engine_version="test",
                     priors=tuple(priors(*scales)), seed=1, n_chains=4, n_samples=2000, n_warmup=1000,
                     n_obs=int(n_obs.sum()), lookback_weeks=12, horizon_week=h, target=target,
                     summary=summ, diagnostics=Diagnostics(**d), students=students)


def accepted_json(engine, panel, settings) -> dict:
    """Fit a DataFrame panel the way the graph does (checked against the request), as the
    spec §8 JSON the tests read."""
    from growth_assets.model.panel import Panel
    from growth_assets.model.result import fit_panel

    return fit_panel(engine, Panel.from_frame(panel), settings).to_json()


def checked_json(obj: dict) -> dict:
    """A spec §8 JSON answer, parsed and checked on its own; returned as it came."""
    FitResult.from_json(obj).validate()
    return obj
