"""A synthetic cohort drawn from the spec's linear growth model, written to the source tables.

Each student has a true line ``theta_i(week) = a_i + b_i * week`` (population means, sds and
correlation below). Observations are the line plus Normal noise (residual sd ``sigma``).
The cohort is deliberately untidy, like a real platform's:

- most students are calibrated weekly into ``mirt_ability`` (one row per calibration), with
  missing weeks;
- some appear only in ``student_topic_theta`` (several topics), some only in
  ``features_topic_daily`` (theta_estimate per topic-day);
- some have only one or two observations; some stop part-way;
- every student practises (``features_topic_daily`` attempts/correct), so the accuracy
  source has data too.

The true lines go to a CSV file, for calibration tests of the engines.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from ..model.window import Window


@dataclass(frozen=True)
class CohortParams:
    intercept_mean: float = -0.6
    slope_mean: float = 0.05
    intercept_sd: float = 0.8
    slope_sd: float = 0.04
    cor: float = 0.2
    sigma: float = 0.3
    p_observed: float = 0.85  # chance a weekly calibration happens
    share_topic_only: float = 0.06
    share_daily_only: float = 0.06
    share_sparse: float = 0.05  # students with only 1-2 observations
    share_stop: float = 0.10  # students who stop part-way
    model: str = "demo-2pl"
    version: str = "v1"


@dataclass(frozen=True)
class SeedReport:
    students: int
    weeks: int
    first_week: date
    mirt_rows: int
    topic_rows: int
    daily_rows: int
    truth_path: Path | None


def _copy_upsert(conn: psycopg.Connection, table: str, columns: list[str], df: pd.DataFrame) -> int:
    """COPY ``df`` into a temp table, then insert what is new (re-runs do not duplicate)."""
    tmp = f"_seed_{table}"
    cols = ", ".join(columns)
    conn.execute(f"CREATE TEMP TABLE {tmp} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
    buf = io.StringIO()
    df[columns].to_csv(buf, index=False, header=False)
    with conn.cursor().copy(f"COPY {tmp} ({cols}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(buf.getvalue())
    cur = conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {tmp} ON CONFLICT DO NOTHING")
    return cur.rowcount


def generate(n_students: int, n_weeks: int, seed: int, first_week: date,
             params: CohortParams = CohortParams()) -> dict[str, pd.DataFrame]:
    """The cohort as DataFrames: truth, mirt_ability, student_topic_theta, features_topic_daily."""
    if n_students < 2:
        raise ValueError(f"students: at least 2 are needed (got {n_students})")
    if n_weeks < 1:
        raise ValueError(f"weeks: at least 1 is needed (got {n_weeks})")
    if first_week.isoweekday() != 1:
        raise ValueError(f"first_week: must be a Monday (got {first_week})")
    p = params
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:07d}" for i in range(n_students)])
    cov = np.array([[p.intercept_sd**2, p.cor * p.intercept_sd * p.slope_sd],
                    [p.cor * p.intercept_sd * p.slope_sd, p.slope_sd**2]])
    ab = rng.multivariate_normal([p.intercept_mean, p.slope_mean], cov, size=n_students)
    group = rng.choice(["mirt", "topic_only", "daily_only"], size=n_students,
                       p=[1 - p.share_topic_only - p.share_daily_only, p.share_topic_only, p.share_daily_only])
    observed = rng.random((n_students, n_weeks)) < p.p_observed
    stop = rng.random(n_students) < p.share_stop
    stop_week = np.where(stop, rng.integers(1, max(n_weeks, 2), n_students), n_weeks)
    observed &= np.arange(n_weeks)[None, :] < stop_week[:, None]
    sparse = rng.random(n_students) < p.share_sparse
    for i in np.flatnonzero(sparse):  # keep 1 or 2 of the observed weeks
        keep = rng.choice(n_weeks, size=rng.integers(1, 3), replace=False)
        observed[i] = False
        observed[i, keep] = True
    s_idx, w_idx = np.nonzero(observed)
    line = ab[s_idx, 0] + ab[s_idx, 1] * w_idx
    week_monday = np.array([datetime.combine(first_week + timedelta(weeks=int(w)), time(), timezone.utc)
                            for w in range(n_weeks)])
    # a calibration at a random moment of its week (Monday 00:00 .. Sunday 23:59 UTC)
    offset = pd.to_timedelta(rng.integers(0, 7 * 24 * 3600, size=s_idx.size), unit="s")
    fitted_at = pd.to_datetime(week_monday[w_idx], utc=True) + offset
    theta = line + rng.normal(0, p.sigma, size=s_idx.size)
    g = group[s_idx]

    m = g == "mirt"
    mirt = pd.DataFrame({
        "user_id": ids[s_idx[m]], "theta": theta[m],
        "se": rng.uniform(0.15, 0.4, size=m.sum()),
        "model": p.model, "version": p.version, "fitted_at": fitted_at[m],
    })

    t = g == "topic_only"
    n_topics = 3
    rep = np.repeat(np.flatnonzero(t), n_topics)
    topic = pd.DataFrame({
        "user_id": ids[s_idx[rep]],
        "topic_id": np.tile([f"t{k}" for k in range(n_topics)], t.sum()),
        "theta": theta[rep] + rng.normal(0, 0.1, size=rep.size),
        "se": rng.uniform(0.2, 0.5, size=rep.size),
        "model": p.model, "version": p.version, "fitted_at": fitted_at[rep],
    })

    # practice: every observed student-week has one or two topic-days
    day = rng.integers(0, 7, size=s_idx.size)
    dates = pd.to_datetime(week_monday[w_idx]).tz_localize(None) + pd.to_timedelta(day, unit="D")
    attempts = rng.integers(5, 30, size=s_idx.size)
    p_correct = 1 / (1 + np.exp(-(line + 0.8)))
    correct = rng.binomial(attempts, p_correct)
    daily = pd.DataFrame({
        "user_id": ids[s_idx], "topic_id": "t0", "date": dates.date,
        "attempts": attempts, "correct": correct,
        "avg_time_ms": rng.integers(5000, 60000, size=s_idx.size),
        "theta_estimate": np.where(g == "daily_only", np.round(theta, 6), np.round(line + rng.normal(0, 0.5, s_idx.size), 6)),
        "theta_sd": np.round(rng.uniform(0.3, 0.6, size=s_idx.size), 6),
    })
    # theta_estimate is a rough daily proxy: only the daily-only students rely on it
    daily.loc[(g != "daily_only"), "theta_estimate"] = np.nan

    n_obs = np.bincount(s_idx, minlength=n_students)
    truth = pd.DataFrame({"student_id": ids, "a": ab[:, 0], "b": ab[:, 1], "group": group,
                          "stop_week": stop_week, "sparse": sparse, "n_obs": n_obs})
    return {"truth": truth, "mirt_ability": mirt, "student_topic_theta": topic,
            "features_topic_daily": daily}


DEMO_ID = r"^s[0-9]{7}$"  # the ids generate() gives
SEEDED_TABLES = ("mirt_ability", "student_topic_theta", "features_topic_daily")


def demo_rows(conn: psycopg.Connection) -> int:
    """Rows of demo students (ids like s0000001) already in the source tables."""
    return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE user_id ~ %s", (DEMO_ID,)).fetchone()[0]
               for t in SEEDED_TABLES)


def delete_demo_rows(conn: psycopg.Connection) -> int:
    """Remove every demo student's rows from the source tables (one transaction)."""
    with conn.transaction():
        return sum(conn.execute(f"DELETE FROM {t} WHERE user_id ~ %s", (DEMO_ID,)).rowcount for t in SEEDED_TABLES)


def seed_cohort(conn: psycopg.Connection, n_students: int, n_weeks: int, seed: int,
                as_of: date, truth_path: Path | None = None,
                params: CohortParams = CohortParams()) -> SeedReport:
    """Write a cohort covering the ``n_weeks`` complete weeks before the week of ``as_of``."""
    first_week = Window(as_of, n_weeks).start
    data = generate(n_students, n_weeks, seed, first_week, params)
    with conn.transaction():
        n_mirt = _copy_upsert(conn, "mirt_ability",
                              ["user_id", "theta", "se", "model", "version", "fitted_at"], data["mirt_ability"])
        n_topic = _copy_upsert(conn, "student_topic_theta",
                               ["user_id", "topic_id", "theta", "se", "model", "version", "fitted_at"],
                               data["student_topic_theta"])
        n_daily = _copy_upsert(conn, "features_topic_daily",
                               ["user_id", "topic_id", "date", "attempts", "correct", "avg_time_ms",
                                "theta_estimate", "theta_sd"], data["features_topic_daily"])
    if truth_path is not None:
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        t = data["truth"].copy()
        t["first_week"] = first_week.isoformat()
        t.to_csv(truth_path, index=False)
    return SeedReport(n_students, n_weeks, first_week, n_mirt, n_topic, n_daily, truth_path)


def synthetic_panel(n_students: int, seed: int = 1, n_weeks: int = 12, **params) -> pd.DataFrame:
    """The calendar-indexed panel (student_id, week, score) of a cohort calibrated in
    ``mirt_ability`` only, built without a database: missing weeks, sparse and stopping students.
    For engine tests and benchmarks."""
    p = CohortParams(share_topic_only=0, share_daily_only=0, **params)
    first = date(2026, 8, 31)
    m = generate(n_students, n_weeks, seed, first, p)["mirt_ability"]
    week = ((m["fitted_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
             - pd.Timestamp(first)).dt.days // 7)
    return (pd.DataFrame({"student_id": m["user_id"], "week": week, "score": m["theta"]})
            .groupby(["student_id", "week"], as_index=False)["score"].mean())


def simulate_panel(n_students: int, seed: int, n_weeks: int = 12, p_obs: float = 0.8,
                   intercept: float = 0.0, slope: float = 0.05, tau: tuple[float, float] = (0.8, 0.06),
                   cor: float = 0.3, sigma: float = 0.35) -> pd.DataFrame:
    """A panel straight from spec §2's model, vectorised for millions of students: each
    student observed in a random subset of weeks (at least one)."""
    rng = np.random.default_rng(seed)
    t = np.asarray(tau, dtype=float)
    cov = np.array([[t[0] ** 2, cor * t[0] * t[1]], [cor * t[0] * t[1], t[1] ** 2]])
    r = rng.multivariate_normal([0.0, 0.0], cov, size=n_students)
    a, b = intercept + r[:, 0], slope + r[:, 1]
    obs = rng.random((n_students, n_weeks)) < p_obs
    obs[np.arange(n_students), rng.integers(0, n_weeks, n_students)] = True
    sid, week = np.nonzero(obs)
    score = a[sid] + b[sid] * week + rng.normal(0.0, sigma, size=len(sid))
    ids = np.char.add("s", np.char.zfill(np.arange(n_students).astype(str), 7)).astype(object)
    return pd.DataFrame({"student_id": ids[sid], "week": week.astype(np.int64), "score": score})
