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


def test_a_cohort_drawn_in_chunks_has_every_id_once_and_chunks_of_their_own(monkeypatch):
    from growth_assets.demo import cohort

    monkeypatch.setattr(cohort, "CHUNK_STUDENTS", 50)
    d = generate(120, 12, seed=3, first_week=FIRST)
    t = d["truth"]
    assert list(t["student_id"]) == [f"s{i:07d}" for i in range(120)]
    # the chunks are different draws (not one chunk's stream repeated), the first as unchunked
    assert not np.allclose(t["a"][:50].to_numpy(), t["a"][50:100].to_numpy())
    monkeypatch.setattr(cohort, "CHUNK_STUDENTS", 100_000)
    pd.testing.assert_frame_equal(generate(50, 12, seed=3, first_week=FIRST)["truth"], t.head(50))
    with pytest.raises(ValueError, match="students: at most 10,000,000"):
        next(cohort.cohort_chunks(10_000_001, 12, 1, FIRST))


INDEXES = ("SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
           " WHERE indrelid = ANY(ARRAY['mirt_ability', 'student_topic_theta', 'features_topic_daily']::regclass[])"
           " ORDER BY 1")


def test_an_empty_table_is_loaded_then_indexed_as_it_was(db_url):
    """The bulk path drops the empty tables' indexes and keys for the load and makes them
    again exactly; the stored rows are the generated ones, value for value."""
    with connect(db_url) as conn:
        before = conn.execute(INDEXES).fetchall()
        assert len(before) >= 7
        seed_cohort(conn, 300, 12, seed=4, as_of=date(2026, 11, 25))
        assert conn.execute(INDEXES).fetchall() == before
        pkey = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'features_topic_daily'::regclass"
                            " AND contype = 'p'").fetchone()
        assert pkey is not None
        d = generate(300, 12, seed=4, first_week=FIRST)
        stored = pd.DataFrame(conn.execute(
            "SELECT user_id, topic_id, date, attempts, correct, avg_time_ms, theta_estimate::float8, theta_sd::float8"
            " FROM features_topic_daily ORDER BY user_id, topic_id, date").fetchall(),
            columns=list(d["features_topic_daily"].columns))
        want = d["features_topic_daily"].sort_values(["user_id", "topic_id", "date"], ignore_index=True)
        pd.testing.assert_frame_equal(stored, want, check_dtype=False)
        m = conn.execute("SELECT user_id, theta, se, model, version, fitted_at FROM mirt_ability"
                         " ORDER BY user_id, fitted_at").fetchall()
        want_m = d["mirt_ability"].sort_values(["user_id", "fitted_at"], ignore_index=True)
        assert [r[:5] for r in m] == [tuple(r) for r in want_m.iloc[:, :5].itertuples(index=False)]
        assert [r[5] for r in m] == list(want_m["fitted_at"].dt.to_pydatetime())


def test_a_seed_that_fails_half_way_leaves_the_tables_as_they_were(db_url, monkeypatch):
    from growth_assets.demo import cohort

    monkeypatch.setattr(cohort, "CHUNK_STUDENTS", 100)
    real = cohort.encode
    calls = []

    def failing(cols):
        calls.append(1)
        if len(calls) > 4:  # the second chunk
            raise RuntimeError("disk full")
        return real(cols)

    monkeypatch.setattr(cohort, "encode", failing)
    with connect(db_url) as conn:
        before = conn.execute(INDEXES).fetchall()
        with pytest.raises(RuntimeError, match="disk full"):
            seed_cohort(conn, 300, 12, seed=4, as_of=date(2026, 11, 25))
        assert conn.execute(INDEXES).fetchall() == before
        assert conn.execute("SELECT (SELECT count(*) FROM mirt_ability) + (SELECT count(*) FROM features_topic_daily)"
                            " + (SELECT count(*) FROM student_topic_theta)").fetchone()[0] == 0


def test_one_week_is_a_cohort_too():
    """_check allows one week, but a sparse student asked for 2 of 1 weeks:
    'Cannot take a larger sample than population' for every seed tried."""
    for seed in range(1, 6):
        d = generate(300, 1, seed, FIRST)
        assert len(d["mirt_ability"]) > 0


def test_the_same_seed_gives_the_same_cohort_as_before_for_more_weeks():
    """The fix for one week draws the same numbers for two or more weeks (the demo's data stays)."""
    a = generate(300, 12, 9, FIRST)["mirt_ability"]
    assert len(a) == 2450 and float(a["theta"].sum()) == pytest.approx(-720.783623922937, abs=1e-9)
