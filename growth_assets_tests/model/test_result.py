"""FitResult: checked once, where it enters, against the request it answers (the panel's
students and rows, the target, horizon and sampling settings). An engine that answers
another question is refused with the field named, before anything is stored."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from growth_assets.model.contract import FitResultError
from growth_assets.model.engine import FitSettings
from growth_assets.model.panel import Panel
from growth_assets.model.result import fit_panel
from growth_assets_tests.support.results import make_result

SETTINGS = FitSettings(n_chains=4, n_samples=2000, seed=1, horizon_week=15, target=0.0,
                       lookback_weeks=12, run_id="native-20261123-043000")


def panel(n_students=5, weeks=3) -> Panel:
    ids = [f"s{i:05d}" for i in range(n_students)]
    return Panel.from_frame(pd.DataFrame({
        "student_id": np.repeat(ids, weeks), "week": np.tile(np.arange(weeks), n_students),
        "score": np.random.default_rng(1).normal(size=n_students * weeks)}))


class Answers:
    """An engine that answers with a given result (fault injection: what a tampered or
    buggy engine could send). Not a stand-in for a real engine."""

    name = "native"

    def __init__(self, result):
        self.result = result

    def fit(self, panel, settings):
        return self.result


def honest(pn: Panel):
    return make_result(pn.n_students, ids=pn.student_ids, n_obs=pn.n_obs())


def test_an_honest_answer_is_accepted_and_sorted_by_student():
    pn = panel()
    r = honest(pn)
    shuffled = replace(r, students=r.students.take(np.array([3, 1, 4, 0, 2])))
    got = fit_panel(Answers(shuffled), pn, SETTINGS)
    assert got.students.student_id.tolist() == pn.student_ids.tolist()


@pytest.mark.parametrize("tamper, field", [
    (lambda r, pn: replace(r, students=r.students.take(np.arange(3))), "predictions.student_id"),  # dropped
    (lambda r, pn: replace(make_result(5, ids=["s00000", "s00001", "s00002", "s00003", "x9"],
                                       n_obs=pn.n_obs()), n_obs=r.n_obs), "predictions.student_id"),
    (lambda r, pn: replace(r, target=1.0), "target"),
    (lambda r, pn: replace(r, horizon_week=11), "horizon_week"),
    (lambda r, pn: replace(r, n_chains=2), "n_chains"),
    (lambda r, pn: replace(r, seed=2), "seed"),
    (lambda r, pn: replace(r, n_obs=r.n_obs + 1), "n_obs"),
    (lambda r, pn: replace(r, students=replace(r.students, n_obs=r.students.n_obs + 1)), "predictions.n_obs"),
    (lambda r, pn: replace(r, engine="brms"), "engine"),
])
def test_an_answer_to_another_question_is_refused_naming_the_field(tamper, field):
    pn = panel()
    r = make_result(5, ids=pn.student_ids, n_obs=pn.n_obs())
    with pytest.raises(FitResultError) as e:
        fit_panel(Answers(tamper(r, pn)), pn, SETTINGS)
    assert e.value.field == field, str(e.value)


def test_students_missing_and_unknown_are_both_named():
    pn = panel()
    r = make_result(5, ids=["s00000", "s00001", "s00002", "zz1", "zz2"], n_obs=pn.n_obs())
    with pytest.raises(FitResultError, match=r"2 missing \(e.g. \['s00003', 's00004'\]\), 2 not in the panel"):
        fit_panel(Answers(r), pn, SETTINGS)


def test_the_json_edge_round_trips_columns():
    r = make_result(4)
    back = type(r).from_json(r.to_json())
    for f in ("mean_a", "var_b", "P", "sigma"):
        np.testing.assert_array_equal(getattr(back.students, f), getattr(r.students, f))
    assert back.students.student_id.tolist() == r.students.student_id.tolist()
    assert back.summary == r.summary and back.diagnostics.max_rhat == r.diagnostics.max_rhat
