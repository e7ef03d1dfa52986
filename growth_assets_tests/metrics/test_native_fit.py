"""Path 2 of a run without population draws against a real native-engine fit of a
synthetic cohort (NumPyro NUTS, 2 x 400); runs with draws: test_update.py."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, datetime, timezone

import numpy as np
import pytest

from growth_assets.defs.growth.panel import Window, build_panel, load_panel
from growth_assets.demo.cohort import seed_cohort
from growth_assets.metrics import (
    compute_goal_attainment_probabilities as batch,
    explain_goal_attainment_probability as explain,
    population_line_posterior,
)

pytest.importorskip("numpyro")
from growth_assets.model.engine import FitSettings  # noqa: E402
from growth_assets.model.native import NativeEngine  # noqa: E402
from growth_assets.model.result import fit_panel  # noqa: E402

from .helpers import store_fit  # noqa: E402

AS_OF = date(2026, 11, 23)
TARGET = -0.2


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")


def test_path_2_agrees_with_a_real_native_fit(conn):
    seed_cohort(conn, n_students=80, n_weeks=12, seed=11, as_of=AS_OF)
    window = Window(as_of=AS_OF, lookback_weeks=12)
    info = build_panel(conn, window, "theta")
    panel = load_panel(conn, info.panel_id)
    res = fit_panel(NativeEngine(), panel, FitSettings(n_chains=2, n_samples=400, seed=3, horizon_week=15,
                                                       target=TARGET, run_id="native-20261123-043000"))
    assert res.diagnostics.max_rhat < 1.05
    # a run stored without population draws (before they existed, or from an engine that
    # gives none): path 2 is the stored line ("run") or the plug-in ("population")
    res = replace(res, population_draws=None)
    store_fit(conn, res, window_start=window.start, week_start=window.week_start)
    conn.execute("UPDATE growth_brms_meta SET fitted_at = %s",
                 (datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc),))
    conn.commit()
    st = res.students
    preds = {sid: dict(zip(("n_obs", "mean_a", "mean_b", "var_a", "var_b", "mu", "sigma", "P"), row))
             for sid, *row in zip(st.student_id, st.n_obs, st.mean_a, st.mean_b, st.var_a, st.var_b,
                                  st.mu, st.sigma, st.P)}

    # 1. every student of the fit, at the fit's own target and horizon: path 2 ("run") gives
    #    the stored mu and sigma exactly and P within 0.02 of the engine's exact mixture P
    answers = batch(conn, list(preds), target=TARGET)
    diffs = []
    for sid, p in preds.items():
        a = answers[sid]
        assert a.path == "run", sid
        assert a.mu == pytest.approx(p["mu"], abs=1e-9) and a.sigma == pytest.approx(p["sigma"], abs=1e-9)
        diffs.append(abs(a.P - p["P"]))
    assert max(diffs) <= 0.02, max(diffs)
    print(f"run path vs stored P over {len(diffs)} students: max |dP| = {max(diffs):.4f}")
    assert sum(0.02 < p["P"] < 0.98 for p in preds.values()) >= 10  # not only trivial P's

    # 2. take students out: a copy of the run without them, fitted later; path 2 then builds
    #    their line from the population posterior + their own scores, read through the
    #    panel's own query: students of every source, those seen only in student_topic_theta
    #    and only in features_topic_daily among them.
    src = dict(conn.execute("SELECT student_id, string_agg(DISTINCT source, ',') FROM growth_panel_rows"
                            " WHERE panel_id = %s GROUP BY 1", (info.panel_id,)).fetchall())
    only = {k: sorted(s for s, v in src.items() if v == k) for k in
            ("mirt_ability", "student_topic_theta", "features_topic_daily")}
    assert len(only["student_topic_theta"]) >= 2 and len(only["features_topic_daily"]) >= 2
    out = sorted(only["mirt_ability"][:26] + only["student_topic_theta"][:2] + only["features_topic_daily"][:2])
    res2 = replace(res, run_id="native-20261123-050000",
                   students=res.students.take(np.flatnonzero(~np.isin(res.students.student_id.astype(str), out))))
    store_fit(conn, res2, window_start=window.start, week_start=window.week_start)
    conn.execute("UPDATE growth_brms_meta SET fitted_at = %s WHERE run_id = %s",
                 (datetime(2026, 11, 23, 5, tzinfo=timezone.utc), res2.run_id))
    conn.commit()
    frame = panel.to_frame()

    # the line itself, from the same five sums as the SQL, vs the fit's line.
    # Tolerance (derived): the fit's line is the mixture over hyperparameter draws t of
    # N(m(t), C(t)); its mean is E m(t) and its variance E C(t) + Var m(t). The plug-in is
    # m(E t), C(E t). m is smooth, so E m(t) - m(E t) is second order in the spread of t, while
    # sd m(t) = sqrt(var_fit - E C(t)) is first order: |mean_fit - mean_plugin| is bounded by
    # that sd (use var_plugin for E C(t)); we allow it plus 5 % of the fit's posterior sd for
    # the Monte Carlo error of 400 draws (E m(t) and the summary means are both estimates).
    worst = {"a": 0.0, "b": 0.0, "var": 0.0}
    for sid in out:
        rows = frame[frame.student_id == sid]
        w, y = rows.week.to_numpy(float), rows.score.to_numpy(float)
        ma, mb, va, vb, cab = population_line_posterior(
            {k: v.as_dict() for k, v in res.summary.items()}, np.array([len(w)]), np.array([w.sum()]),
            np.array([(w * w).sum()]), np.array([y.sum()]), np.array([(w * y).sum()]))
        f = preds[sid]
        for name, m, v, fm, fv in (("a", ma[0], va[0], f["mean_a"], f["var_a"]),
                                   ("b", mb[0], vb[0], f["mean_b"], f["var_b"])):
            tol = math.sqrt(max(fv - v, 0.0)) + 0.05 * math.sqrt(fv)
            assert abs(m - fm) <= tol, (sid, name, m, fm, tol)
            worst[name] = max(worst[name], abs(m - fm) / math.sqrt(fv))
            # the plug-in's variance misses only Var m(t): a little smaller, never far off
            assert 0.8 * fv <= v <= 1.02 * fv, (sid, name, v, fv)
            worst["var"] = max(worst["var"], abs(v / fv - 1))
    print("worst |mean diff| / posterior sd:", worst)

    # and through the database: path 2 'population', mu/sigma/P close to the fit's
    taken = batch(conn, out, target=TARGET)
    for sid in out:
        a, f = taken[sid], preds[sid]
        assert a.path == "population" and a.run_id == res2.run_id, (sid, a.reasons)
        assert a.n_obs == f["n_obs"]
        assert abs(a.mu - f["mu"]) <= 0.1 * f["sigma"] + math.sqrt(max(f["sigma"] ** 2 - a.sigma ** 2, 0)), sid
        assert abs(a.P - f["P"]) <= 0.03, (sid, a.P, f["P"])
        one = explain(conn, sid, target=TARGET)  # alone: the same answer, up to the last bits of
        # PostgreSQL's float sums (the row order within a group follows the plan)
        assert (one.path, one.run_id, one.n_obs, one.reasons) == (a.path, a.run_id, a.n_obs, a.reasons)
        assert (one.P, one.mu, one.sigma) == pytest.approx((a.P, a.mu, a.sigma), rel=1e-12, abs=1e-15)
    print("population path vs the fit, max |dP| =",
          max(abs(taken[sid].P - preds[sid]["P"]) for sid in out))
