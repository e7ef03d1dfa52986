"""Review: FitResult / Panel accept what they should refuse."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from growth_assets.model.contract import ContractError, FitResultError, PanelError, line_prediction, parse_json
from growth_assets.model.panel import Panel
from growth_assets.model.result import FitResult, fit_panel
from growth_assets_tests.brms.test_faults import PANEL, SETTINGS, client, valid_body
from growth_assets_tests.model.test_result import SETTINGS as FIT_SETTINGS, Answers, honest, panel
from growth_assets_tests.support.results import make_result


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


def _panel(offset: float = 0.0, n_students: int = 5, weeks: int = 3) -> Panel:
    ids = [f"s{i:05d}" for i in range(n_students)]
    return Panel.from_frame(pd.DataFrame({
        "student_id": np.repeat(ids, weeks), "week": np.tile(np.arange(weeks), n_students),
        "score": offset + np.random.default_rng(1).normal(size=n_students * weeks)}))


def _honest(pn: Panel, target: float = 0.0, offset: float = 0.0) -> FitResult:
    r = make_result(pn.n_students, ids=pn.student_ids, n_obs=pn.n_obs(), scales=pn.scales(), target=target)
    s = r.students
    ma = s.mean_a + offset
    mu, sigma, p = line_prediction(ma, s.mean_b, s.var_a, s.var_b, s.cov_ab, r.horizon_week, target)
    return replace(r, students=replace(s, mean_a=ma, mu=mu, sigma=sigma, P=p))


# --- session 23's review -------------------------------------------------------------------


@pytest.mark.parametrize("col, text", [("week", "x"), ("week", "3 "), ("score", "12,5"), ("score", "n/a")])
def test_a_non_numeric_cell_is_named_as_written_not_as_nan(col, text):
    """read_panel_csv reads every column as text; Panel.from_frame coerced it and reported the
    coerced NaN: 'score: must be a finite number (rows 1) (got nan)' for a cell that says
    '12,5'. Bad input gets an error naming the field and the value as written."""
    d = {"student_id": ["a", "a", "b", "b"], "week": ["0", "1", "0", "1"], "score": ["1.0", "2.0", "3.0", "5.0"]}
    d[col][1] = text
    try:
        Panel.from_frame(pd.DataFrame(d))
    except PanelError as e:
        assert e.field == col
        assert e.value == text, str(e)
    else:  # '3 ' may be accepted as 3; that is fine
        assert text.strip().isdigit()


def test_an_infinite_summary_number_is_refused_not_written_as_Infinity():
    """parse_json refuses NaN/Infinity (its docstring: not JSON), but the JSON number 1e400 parses
    to the same float inf. An answer with rhat = max_rhat = 1e400 (or elapsed_s = 1e400) passes
    from_json and fit_panel; the accepted result's §8 JSON then holds `Infinity`, which the
    project's own parse_json refuses (and PostgreSQL jsonb rejects)."""
    pn = _panel()
    obj = _honest(pn).to_json()
    for p in obj["posterior_summary"].values():
        p["rhat"] = 1e400
    obj["diagnostics"]["max_rhat"] = 1e400
    body = json.dumps(obj).replace("Infinity", "1e400")  # a valid JSON number literal
    with pytest.raises(FitResultError) as e:
        res = FitResult.from_json(parse_json(body))
        res = fit_panel(Answers(res), pn, FIT_SETTINGS)
        parse_json(json.dumps(res.to_json()))  # what growth-assets fit writes, read back
    assert "rhat" in e.value.field, str(e.value)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_a_wrong_mu_is_refused_whatever_the_scores_offset(offset):
    """validate checks mu = mean_a + h mean_b within 1e-6 * (|mean_a| + h |mean_b|): relative to
    the scores' offset, not to the line's spread. With scores around 1e6 (sd 1) an answer whose mu
    is 0.9 too high (2.8 posterior sds; P 0.998 instead of 0.5, consistent with the wrong mu so
    Cantelli's check passes) is accepted, while the same error at offset 0 is refused. The
    engines compute mu from the same draws as mean_a/mean_b: their disagreement is ~1e-10 there."""
    pn = _panel(offset)
    target = offset - 0.5 + 0.75  # student 0's true mu: P = 0.5
    r = _honest(pn, target=target, offset=offset)
    s = r.students
    bad_mu = s.mu + 0.9
    bad_p = line_prediction(bad_mu, 0.0, s.sigma ** 2, 0.0, 0.0, 0, target)[2]
    assert abs(s.P[0] - 0.5) < 1e-9 and bad_p[0] > 0.99
    tampered = replace(r, students=replace(s, mu=bad_mu, P=bad_p))
    st = replace(FIT_SETTINGS, target=target)
    with pytest.raises(FitResultError) as e:
        fit_panel(Answers(tampered), pn, st)
    assert e.value.field.endswith(".mu"), str(e.value)
