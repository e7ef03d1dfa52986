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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import psycopg

from ..db import source_tables
from ..db.binary_copy import Column, copy_in, encode
from ..model.contract import ContractError
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


CHUNK_STUDENTS = 100_000  # students drawn and written at a time: memory stays flat in the cohort's size
MAX_STUDENTS = 10_000_000  # ids are s0000000 .. s9999999
SEEDED_TABLES = ("mirt_ability", "student_topic_theta", "features_topic_daily")
DEMO_ID = r"^s[0-9]{7}$"  # the ids generate() gives
_US_PER_S = 1_000_000


def check_size(n_students: int, n_weeks: int | None) -> None:
    """A cohort's size (ContractError naming the field): the CLI asks before it touches a database."""
    if n_students < 2:
        raise ContractError("students", "at least 2 are needed", n_students)
    if n_students > MAX_STUDENTS:
        raise ContractError("students", f"at most {MAX_STUDENTS:,} (ids are s0000000 .. s9999999)", n_students)
    if n_weeks is not None and n_weeks < 1:
        raise ContractError("weeks", "at least 1 is needed", n_weeks)


def _check(n_students: int, n_weeks: int, first_week: date) -> None:
    check_size(n_students, n_weeks)
    if first_week.isoweekday() != 1:
        raise ContractError("first_week", "must be a Monday", first_week)


def _ids(lo: int, hi: int) -> np.ndarray:
    """``s{i:07d}`` for i in [lo, hi), as 8-byte strings, without a Python object per id."""
    digits = np.empty((hi - lo, 8), dtype=np.uint8)
    digits[:, 0] = ord("s")
    x = np.arange(lo, hi, dtype=np.int64)
    for k in range(7, 0, -1):
        digits[:, k] = ord("0") + x % 10
        x //= 10
    return digits.view("S8").ravel()


def _draw(lo: int, hi: int, n_weeks: int, rng: np.random.Generator, first_week: date,
          p: CohortParams) -> dict[str, dict[str, np.ndarray]]:
    """Students [lo, hi) of the cohort, as numpy columns per table."""
    n = hi - lo
    ids = _ids(lo, hi)
    cov = np.array([[p.intercept_sd**2, p.cor * p.intercept_sd * p.slope_sd],
                    [p.cor * p.intercept_sd * p.slope_sd, p.slope_sd**2]])
    ab = rng.multivariate_normal([p.intercept_mean, p.slope_mean], cov, size=n)
    group = rng.choice(["mirt", "topic_only", "daily_only"], size=n,
                       p=[1 - p.share_topic_only - p.share_daily_only, p.share_topic_only, p.share_daily_only])
    observed = rng.random((n, n_weeks)) < p.p_observed
    stop = rng.random(n) < p.share_stop
    stop_week = np.where(stop, rng.integers(1, max(n_weeks, 2), n), n_weeks)
    observed &= np.arange(n_weeks)[None, :] < stop_week[:, None]
    sparse = rng.random(n) < p.share_sparse
    for i in np.flatnonzero(sparse):  # keep 1 or 2 of the observed weeks (of one week: that one)
        keep = rng.choice(n_weeks, size=min(int(rng.integers(1, 3)), n_weeks), replace=False)
        observed[i] = False
        observed[i, keep] = True
    s_idx, w_idx = np.nonzero(observed)
    line = ab[s_idx, 0] + ab[s_idx, 1] * w_idx
    monday = np.datetime64(first_week, "D") + 7 * w_idx
    # a calibration at a random moment of its week (Monday 00:00 .. Sunday 23:59 UTC)
    offset = rng.integers(0, 7 * 24 * 3600, size=s_idx.size)
    fitted_at = monday.astype("datetime64[us]") + offset * _US_PER_S
    theta = line + rng.normal(0, p.sigma, size=s_idx.size)
    g = group[s_idx]

    m = g == "mirt"
    mirt = {"user_id": ids[s_idx[m]], "theta": theta[m], "se": rng.uniform(0.15, 0.4, size=int(m.sum())),
            "fitted_at": fitted_at[m]}

    t = g == "topic_only"
    n_topics = 3
    rep = np.repeat(np.flatnonzero(t), n_topics)
    topic = {"user_id": ids[s_idx[rep]],
             "topic_id": np.tile(np.array([f"t{k}" for k in range(n_topics)], dtype="S2"), int(t.sum())),
             "theta": theta[rep] + rng.normal(0, 0.1, size=rep.size),
             "se": rng.uniform(0.2, 0.5, size=rep.size), "fitted_at": fitted_at[rep]}

    # practice: every observed student-week has a topic-day
    day = rng.integers(0, 7, size=s_idx.size)
    attempts = rng.integers(5, 30, size=s_idx.size)
    p_correct = 1 / (1 + np.exp(-(line + 0.8)))
    correct = rng.binomial(attempts, p_correct)
    avg_time = rng.integers(5000, 60000, size=s_idx.size)
    rng.normal(0, 0.5, s_idx.size)  # a rough daily proxy once stored for all, now drawn only: same stream
    # theta_estimate: only the daily-only students have one (NaN: NULL)
    theta_estimate = np.where(g == "daily_only", np.round(theta, 6), np.nan)
    daily = {"user_id": ids[s_idx], "topic_id": np.full(s_idx.size, b"t0", dtype="S2"), "date": monday + day,
             "attempts": attempts, "correct": correct, "avg_time_ms": avg_time,
             "theta_estimate": theta_estimate, "theta_sd": np.round(rng.uniform(0.3, 0.6, size=s_idx.size), 6)}

    truth = {"student_id": ids, "a": ab[:, 0], "b": ab[:, 1], "group": group, "stop_week": stop_week,
             "sparse": sparse, "n_obs": np.bincount(s_idx, minlength=n)}
    return {"truth": truth, "mirt_ability": mirt, "student_topic_theta": topic, "features_topic_daily": daily}


def cohort_chunks(n_students: int, n_weeks: int, seed: int, first_week: date,
                  params: CohortParams = CohortParams()) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """The cohort, ``CHUNK_STUDENTS`` students at a time (numpy columns per table). The same
    seed gives the same cohort; the first chunk draws from ``default_rng(seed)``, chunk k > 0
    from ``default_rng([seed, k])``."""
    _check(n_students, n_weeks, first_week)
    for k, lo in enumerate(range(0, n_students, CHUNK_STUDENTS)):
        rng = np.random.default_rng(seed if k == 0 else [seed, k])
        yield _draw(lo, min(lo + CHUNK_STUDENTS, n_students), n_weeks, rng, first_week, params)


def _frame(cols: dict[str, np.ndarray], p: CohortParams, table: str) -> pd.DataFrame:
    d = {k: (v.astype(str) if v.dtype.kind == "S" else v) for k, v in cols.items()}
    if "fitted_at" in d:
        d["fitted_at"] = pd.to_datetime(d["fitted_at"], utc=True)
    if "date" in d:
        d["date"] = d["date"].astype(object)  # datetime.date, as the table's type
    df = pd.DataFrame(d)
    if table in ("mirt_ability", "student_topic_theta"):
        df.insert(len(df.columns) - 1, "model", p.model)
        df.insert(len(df.columns) - 1, "version", p.version)
    return df


def generate(n_students: int, n_weeks: int, seed: int, first_week: date,
             params: CohortParams = CohortParams()) -> dict[str, pd.DataFrame]:
    """The cohort as DataFrames: truth, mirt_ability, student_topic_theta, features_topic_daily
    (for tests and small cohorts; ``seed_cohort`` writes a large one in chunks)."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for chunk in cohort_chunks(n_students, n_weeks, seed, first_week, params):
        for table, cols in chunk.items():
            parts.setdefault(table, []).append(_frame(cols, params, table))
    return {t: pd.concat(dfs, ignore_index=True) for t, dfs in parts.items()}


# the rows generate() writes, and only those: a demo id (s0000001), and the demo's model
# (calibrations) or topics (topic-days). The id alone matched a platform's own rows whose ids
# happen to look alike: `demo` deleted them
DEMO_TOPICS = ("t0", "t1", "t2")
_DEMO_ROW = {
    "mirt_ability": "user_id ~ %(id)s AND model = %(model)s",
    "student_topic_theta": "user_id ~ %(id)s AND model = %(model)s AND topic_id = ANY(%(topics)s)",
    "features_topic_daily": "user_id ~ %(id)s AND topic_id = ANY(%(topics)s)",
}


def _demo_params() -> dict:
    return {"id": DEMO_ID, "model": CohortParams.model, "topics": list(DEMO_TOPICS)}


def demo_rows(conn: psycopg.Connection) -> int:
    """Rows of the demo's cohort (``_DEMO_ROW``) already in the source tables."""
    return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE {_DEMO_ROW[t]}", _demo_params()).fetchone()[0]
               for t in SEEDED_TABLES)


def delete_demo_rows(conn: psycopg.Connection) -> int:
    """Remove the demo cohort's rows (``_DEMO_ROW``) from the source tables (one transaction)."""
    with conn.transaction():
        return sum(conn.execute(f"DELETE FROM {t} WHERE {_DEMO_ROW[t]}", _demo_params()).rowcount
                   for t in SEEDED_TABLES)


def _columns(table: str, cols: dict[str, np.ndarray], p: CohortParams) -> dict[str, Column]:
    """A chunk of one table as binary COPY columns, in the table's types."""
    types = source_tables.COLUMNS[table]
    out = {name: Column(types[name], values) for name, values in cols.items()}
    if table in ("mirt_ability", "student_topic_theta"):
        n = len(cols["user_id"])
        out["model"] = Column("text", np.full(n, p.model.encode()))
        out["version"] = Column("text", np.full(n, p.version.encode()))
    return out


def _encoded(chunks, p: CohortParams):
    """Each chunk as {table: (column names, binary COPY data, rows)} and the truth frame."""
    for chunk in chunks:
        enc = {}
        for t in SEEDED_TABLES:
            cols = _columns(t, chunk[t], p)
            enc[t] = (list(cols), encode(cols), len(chunk[t]["user_id"]))
        yield enc, _frame(chunk["truth"], p, "truth")


def _prefetched(items: Iterator) -> Iterator:
    """``items`` drawn one ahead in a thread: the next chunk is drawn and encoded while the
    server takes this one (numpy and libpq let go of the GIL for their long work)."""
    it, done = iter(items), object()
    with ThreadPoolExecutor(1, thread_name_prefix="seed-chunks") as pool:
        ahead = pool.submit(next, it, done)
        while (item := ahead.result()) is not done:
            ahead = pool.submit(next, it, done)
            yield item


def _bulk_load_target(conn: psycopg.Connection, table: str) -> list[str] | None:
    """For an empty table that no foreign key references: drop its indexes and keys and
    return the statements that make them again (PostgreSQL's advice for loading a table:
    index once at the end, https://www.postgresql.org/docs/15/populate.html). None: the
    table has rows (or is referenced), so rows go through a staging table instead."""
    conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
        return None
    if conn.execute("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = %s::regclass)",
                    (table,)).fetchone()[0]:
        return None
    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " AND c.contype IN ('p', 'u', 'x') WHERE i.indrelid = %s::regclass ORDER BY 1", (table,)).fetchall()
    remake = []
    for index, indexdef, conname, condef in rows:
        if conname is not None:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{conname}"')
            remake.append(f'ALTER TABLE {table} ADD CONSTRAINT "{conname}" {condef}')
        else:
            conn.execute(f"DROP INDEX {index}")
            remake.append(indexdef)
    return remake


def seed_cohort(conn: psycopg.Connection, n_students: int, n_weeks: int, seed: int,
                as_of: date, truth_path: Path | None = None,
                params: CohortParams = CohortParams()) -> SeedReport:
    """Write a cohort covering the ``n_weeks`` complete weeks before the week of ``as_of``;
    one transaction.

    Drawn and sent ``CHUNK_STUDENTS`` students at a time by binary COPY (memory does not grow
    with the cohort). An empty source table is loaded directly and indexed once at the end (its
    indexes and keys made again as they were; the table is locked meanwhile); a table with rows
    gets only what is new, through a staging table (seeding twice does not duplicate)."""
    first_week = Window(as_of, n_weeks).start
    _check(n_students, n_weeks, first_week)
    written = dict.fromkeys(SEEDED_TABLES, 0)
    names: dict[str, list[str]] = {}
    with conn.transaction():
        remake = {t: _bulk_load_target(conn, t) for t in SEEDED_TABLES}
        target = {}
        for t in SEEDED_TABLES:
            if remake[t] is None:
                target[t] = f"_seed_{t}"
                conn.execute(f"CREATE TEMP TABLE {target[t]} (LIKE {t} INCLUDING DEFAULTS) ON COMMIT DROP")
            else:
                target[t] = t
        if truth_path is not None:
            truth_path.parent.mkdir(parents=True, exist_ok=True)
        for k, (encoded, truth) in enumerate(_prefetched(_encoded(cohort_chunks(
                n_students, n_weeks, seed, first_week, params), params))):
            for t in SEEDED_TABLES:
                names[t], data, n = encoded[t]
                copy_in(conn, target[t], names[t], [data])
                written[t] += n
            if truth_path is not None:
                truth.assign(first_week=first_week.isoformat()).to_csv(
                    truth_path, index=False, header=k == 0, mode="w" if k == 0 else "a")
        conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        for t in SEEDED_TABLES:
            if remake[t] is None:
                cols = ", ".join(names[t])
                written[t] = conn.execute(f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {target[t]}"
                                          " ON CONFLICT DO NOTHING").rowcount
            else:
                for statement in remake[t]:
                    conn.execute(statement)
        for t in SEEDED_TABLES:
            conn.execute(f"ANALYZE {t}")
    return SeedReport(n_students, n_weeks, first_week, written["mirt_ability"], written["student_topic_theta"],
                      written["features_topic_daily"], truth_path)


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
