"""Review: FitResult / Panel accept what they should refuse."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from growth_assets.model.contract import ContractError, FitResultError, line_prediction
from growth_assets.model.panel import Panel
from growth_assets.model.result import Diagnostics, ParamSummary, fit_panel
from growth_assets_tests.brms.test_faults import PANEL, SETTINGS, client, valid_body
from growth_assets_tests.model.test_result import Answers, honest, panel


def test_an_ess_beyond_posteriors_maximum_is_refused():
    """posterior's ESS is S / tau_hat with tau_hat >= 1 / log10(S) (spec §4: its
    definitions), so ESS <= S log10 S: 4000 kept draws give at most 14408. An answer
    claiming ESS 1e12 (garbled, or a summary of another run) is accepted, and passes the
    ESS check of the graph."""
    pn = panel()
    r = honest(pn)
    big = 1e12
    summ = {p: replace(s, ess_bulk=big, ess_tail=big) for p, s in r.summary.items()}
    bad = replace(r, summary=summ, diagnostics=replace(r.diagnostics, min_ess_bulk=big, min_ess_tail=big))
    kept = bad.kept_draws
    assert big > kept * math.log10(kept)
    with pytest.raises(FitResultError, match="ess"):
        fit_panel(Answers(bad), pn, SETTINGS.__class__(**{**SETTINGS.__dict__, "seed": 1, "run_id": "native-x"}))


def test_an_ess_beyond_the_maximum_is_refused_from_the_brms_client(fake):
    b = valid_body()
    for p in b["posterior_summary"].values():
        p["ess_bulk"] = p["ess_tail"] = 1e12
    b["diagnostics"]["min_ess_bulk"] = b["diagnostics"]["min_ess_tail"] = 1e12
    f = fake((200, json.dumps(b).encode(), 0))
    with pytest.raises(FitResultError):
        fit_panel(client(f.url), PANEL, SETTINGS)


def test_a_line_posterior_with_zero_variance_is_refused():
    """Spec §2: sigma > 0 (half-Cauchy), so Var(a_i | data) >= E[Mi_00] > 0 for every student:
    a line posterior with var_a = var_b = cov_ab = 0 (sigma = 0, P exactly 0 or 1) is no
    posterior of this model. It is accepted, and P = 1.0 would be written for the student."""
    pn = panel()
    r = honest(pn)
    s = r.students
    z = np.zeros(len(s))
    mu, sig, p = line_prediction(s.mean_a, s.mean_b, z, z, z, r.horizon_week, r.target)
    bad = replace(r, students=replace(s, var_a=z, var_b=z, cov_ab=z, mu=mu, sigma=sig, P=p))
    with pytest.raises(FitResultError):
        fit_panel(Answers(bad), pn, SETTINGS.__class__(**{**SETTINGS.__dict__, "seed": 1, "run_id": "native-x"}))


def test_non_json_infinity_in_an_answer_is_refused(fake):
    """Spec §8: numbers are plain JSON numbers. 'Infinity' is not JSON, but parse_json
    (json.loads without parse_constant) turns it into inf and FitResult takes it as an R-hat."""
    txt = json.dumps(valid_body()).replace('"rhat": 1.002', '"rhat": Infinity', 1)
    txt = txt.replace('"max_rhat": 1.002', '"max_rhat": Infinity')
    assert "Infinity" in txt
    f = fake((200, txt.encode(), 0))
    with pytest.raises(FitResultError):
        fit_panel(client(f.url), PANEL, SETTINGS)


def test_a_week_beyond_int64_is_refused_not_made_negative():
    """Spec §1: week is an integer 0..L-1. A week of 1e19 passes the checks (finite, whole,
    >= 0) and is then cast to int64: -9223372036854775808, a negative week, which also slips
    under lookback_weeks=12."""
    df = pd.DataFrame({"student_id": ["a", "a", "b", "b"], "week": [0, 1e19, 0, 1],
                       "score": [1.0, 2.0, 3.0, 5.0]})
    with pytest.raises(ContractError):
        p = Panel.from_frame(df, lookback_weeks=12)
        assert (p.week >= 0).all() and (p.week < 12).all(), p.week
