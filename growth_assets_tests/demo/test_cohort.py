from datetime import date

import numpy as np
import pandas as pd
import pytest

from growth_assets.db import connect
from growth_assets.demo.cohort import generate, seed_cohort

FIRST = date(2026, 8, 31)


def test_cohort_has_the_untidiness_of_a_real_platform():
    d = generate(2000, 12, seed=5, first_week=FIRST)
    truth = d["truth"]
    assert len(truth) == 2000 and truth["student_id"].is_unique
    groups = truth["group"].value_counts()
    assert {"mirt", "topic_only", "daily_only"} == set(groups.index)
    assert groups["topic_only"] > 50 and groups["daily_only"] > 50
    mirt_ids = set(d["mirt_ability"]["user_id"])
    topic_ids = set(d["student_topic_theta"]["user_id"])
    daily_theta_ids = set(d["features_topic_daily"].dropna(subset=["theta_estimate"])["user_id"])
    assert not (mirt_ids & topic_ids) and not (mirt_ids & daily_theta_ids)
    assert truth["n_obs"].isin([1, 2]).sum() > 40           # one or two observations
    assert (truth["stop_week"] < 12).sum() > 100            # some stop part-way
    assert (truth["n_obs"] < 12).mean() > 0.5               # missing weeks are common
    # one row per weekly calibration: never two mirt rows of a student in one week
    m = d["mirt_ability"]
    week = (m["fitted_at"].dt.tz_convert("UTC").dt.normalize().dt.tz_localize(None)
            - pd.Timestamp(FIRST)).dt.days // 7
    assert not pd.DataFrame({"u": m["user_id"], "w": week}).duplicated().any()
    assert week.between(0, 11).all()
    # the population the lines were drawn from
    assert abs(truth["a"].mean() - (-0.6)) < 4 * 0.8 / np.sqrt(2000)
    assert abs(truth["b"].std() - 0.04) < 0.004
    daily = d["features_topic_daily"]
    assert (daily["correct"] <= daily["attempts"]).all() and (daily["attempts"] > 0).all()


def test_same_seed_same_cohort():
    a, b = generate(300, 12, 9, FIRST), generate(300, 12, 9, FIRST)
    pd.testing.assert_frame_equal(a["mirt_ability"], b["mirt_ability"])
    assert not generate(300, 12, 10, FIRST)["truth"]["a"].equals(a["truth"]["a"])


@pytest.mark.parametrize("kw,field", [({"n_students": 1}, "students"), ({"n_weeks": 0}, "weeks"),
                                      ({"first_week": date(2026, 9, 1)}, "first_week")])
def test_bad_arguments_name_the_field(kw, field):
    args = {"n_students": 10, "n_weeks": 12, "seed": 1, "first_week": FIRST, **kw}
    with pytest.raises(ValueError, match=field):
        generate(**args)


def test_seeding_twice_does_not_duplicate(db_url, tmp_path):
    truth = tmp_path / "truth.csv"
    with connect(db_url) as conn:
        rep = seed_cohort(conn, 200, 12, seed=2, as_of=date(2026, 11, 25), truth_path=truth)
        again = seed_cohort(conn, 200, 12, seed=2, as_of=date(2026, 11, 25))
        assert rep.first_week == FIRST
        assert rep.mirt_rows > 1000 and again.mirt_rows == 0 and again.daily_rows == 0
        n = conn.execute("SELECT count(*) FROM mirt_ability").fetchone()[0]
        assert n == rep.mirt_rows
    t = pd.read_csv(truth)
    assert list(t.columns[:3]) == ["student_id", "a", "b"] and len(t) == 200
