"""The writers, one per owning asset: the fit (``growth_fit`` + per-student posterior
rows), the run record (``growth_brms_meta``), and the ``weekly_kpi`` merge of P. Each is
one transaction; each writes set-based (COPY, INSERT … SELECT), never one statement per
student.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from ..model.contract import POPULATION_PARAMS, ContractError, make_run_id
from ..model.panel import WindowSums
from ..model.result import FitResult
from ..settings import Settings, check_schema
from .binary_copy import Column, copy_in, encode

P_SOURCES = ("brms", "native", "posterior", "update", "normal")
# what both merges write into kpis, and how they resolve a row that exists
# Each row's P and sigma, merged with the keys every row of one merge shares: those are built
# once per statement (an uncorrelated scalar subquery: an InitPlan), not per row (jsonb_build_object
# of seven keys per row cost 2 of the 8.5 s of a million rows' merge). Built in SQL, as before, so
# the stored text is the same (a target of 0 is the JSON number 0, not Python's 0.0).
_KPIS = ("jsonb_build_object('P', {p}, 'sigma', sigma) || (SELECT"
         " jsonb_build_object('P_target', %(target)s::double precision, 'P_week', %(p_week)s::text,"
         " 'P_run_id', %(run_id)s::text, 'P_source', %(source)s::text)"
         # a P without a data window (the Normal approximation) carries no P_window_end
         " || CASE WHEN %(window_end)s::date IS NULL THEN '{{}}'::jsonb"
         " ELSE jsonb_build_object('P_window_end', %(window_end)s::text) END)")
_MERGE_TAIL = """ON CONFLICT (user_id, week_start) DO UPDATE
               SET kpis = CASE WHEN jsonb_typeof(w.kpis) = 'object' THEN w.kpis ELSE '{{}}'::jsonb END || EXCLUDED.kpis,
                   updated_at = now()
               -- (a platform row's kpis may be NULL, a column added nullable, or JSON null: NULL || x
               -- is NULL, null || x an array; another non-object is refused before, by name)
               -- never replace a P from a newer data window with one from an older window
               -- (a backfill, or a daily refresh that computed before the weekly run
               -- committed); a P without a window (Normal approximation) replaces none.
               -- Of one window, never a P of a passed run that readers take before the
               -- incoming one (fitted later: a re-run of the partition) by a P of another run
               -- (a refresh that computed from the earlier run, then wrote after the re-run).
               -- The incoming window and run are the statement's (%(window_end)s, %(run_id)s),
               -- so the runs that outrank the incoming one are found once (an InitPlan), not
               -- once per row: that lookup cost 9 of the 27 s of a million rows merged again
               WHERE (w.kpis ->> 'P_window_end') IS NULL
                  OR %(window_end)s::date > (w.kpis ->> 'P_window_end')::date
                  OR (%(window_end)s::date = (w.kpis ->> 'P_window_end')::date
                      AND NOT coalesce(w.kpis ->> 'P_run_id' = ANY ((
                          SELECT coalesce(array_agg(o.run_id), '{{}}')
                          FROM {meta} o JOIN {meta} n ON n.run_id = %(run_id)s::text
                          WHERE o.run_id <> n.run_id AND o.status = 'passed'
                            AND (coalesce(o.fitted_at, '-infinity'), o.run_id)
                                > (coalesce(n.fitted_at, '-infinity'), n.run_id))::text[]), false))"""


WEEK_LOCK_CLASS = 0x67726F7A  # the first key of the P writers' per-week advisory lock (_merge_rows)


def _merge_tail(schema: str | None) -> str:
    """``_MERGE_TAIL`` with the run records' table named in ``schema`` (default: the settings'
    ``GROWTH_DB_SCHEMA``): a caller's connection need not have it on its search_path."""
    schema = check_schema(schema) if schema is not None else Settings.from_env().db_schema
    return _MERGE_TAIL.format(meta=f'"{schema}".growth_brms_meta')


def _merge_rows(conn: psycopg.Connection, source: str, p: str, params: dict, schema: str | None) -> int:
    """Merge P from ``source`` (``FROM … WHERE …``, one row per user with ``user_id``, the P
    column ``p`` and ``sigma``) into ``weekly_kpi``'s week ``params['week_start']``; the
    caller's transaction. Returns the rows inserted or merged.

    When none of the users has a row of that week yet (the Monday run: a new week), the rows
    are inserted with a plain INSERT: ``ON CONFLICT``'s speculative insertion cost ~3 of the
    ~8 s of a million rows. A row another writer adds meanwhile (uncommitted when we looked)
    fails that INSERT with a unique violation: it is rolled back to its savepoint and every row
    is upserted, as when the week has rows. Both insert in ``user_id`` order, the order every
    writer locks rows in. The project's P writers of one week take turns (a transaction-scoped
    advisory lock per week): a refresh merges its groups (run, update, Normal paths) one after
    another in one transaction, so its rows as a whole are not locked in one order, and a
    merge of the same week between two of its groups deadlocked with it.
    """
    # the week's key as a number of days: a date's text follows the session's DateStyle
    conn.execute("SELECT pg_advisory_xact_lock(%(lock_class)s, %(week_start)s::date - date '2000-01-03')",
                 {**params, "lock_class": WEEK_LOCK_CLASS})
    rows = f"SELECT user_id, %(week_start)s, {_KPIS.format(p=p)} {source} ORDER BY user_id"
    insert = f"INSERT INTO weekly_kpi AS w (user_id, week_start, kpis) {rows}"
    week_has_rows = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM weekly_kpi w JOIN (SELECT user_id {source}) s USING (user_id)"
        " WHERE w.week_start = %(week_start)s)", params).fetchone()[0]
    if not week_has_rows:
        try:
            with conn.transaction():  # a savepoint: only this INSERT goes if it fails
                return conn.execute(insert, params).rowcount
        except psycopg.errors.UniqueViolation:
            pass  # another writer's rows now: they are merged into below, as rows of the week are
    # a kpis that is not an object: merged into, it became an array and P was lost
    odd = conn.execute(
        f"SELECT w.user_id, jsonb_typeof(w.kpis) FROM weekly_kpi w JOIN (SELECT user_id {source}) s USING (user_id)"
        " WHERE w.week_start = %(week_start)s AND jsonb_typeof(w.kpis) NOT IN ('object', 'null')"
        " ORDER BY 1 LIMIT 1", params).fetchone()
    if odd is not None:
        raise ContractError("weekly_kpi.kpis", f"must be a JSON object to merge P into (user {odd[0]},"
                            f" week {params['week_start']}), not a JSON {odd[1]}", odd[0])
    return conn.execute(f"{insert} {_merge_tail(schema)}", params).rowcount


RUN_STATUSES = ("passed", "failed_checks")
_COPY_CHUNK = 200_000  # students encoded at a time
STUDENT_COLUMNS = ("user_id", "n_obs", "mean_a", "mean_b", "var_a", "var_b", "cov_ab", "mu", "sigma", "P")


def check_monday(field: str, d: date) -> date:
    # a datetime is a date too: a Monday 10:00 then matched no week_start row, without a word
    if not isinstance(d, date) or isinstance(d, datetime):
        raise ContractError(field, "must be a date", d)
    if d.isoweekday() != 1:
        raise ContractError(field, "must be a Monday", d.isoformat())
    return d


def jsonable(obj: Any) -> Any:
    """Plain JSON for jsonb: numpy scalars and arrays as Python values, NaN and inf as null
    (PostgreSQL's jsonb has no NaN: "Token NaN is invalid")."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def free_run_id(conn: psycopg.Connection, engine: str, at: datetime | None = None) -> str:
    """The seed's ``<engine>-YYYYMMDD-HHMMSS`` for now, or the next second not yet taken in
    ``growth_fit`` (two runs that start within a second keep distinct ids). ``write_fit``
    still refuses a collision that a concurrent run causes after this check."""
    at = at or datetime.now(timezone.utc)
    for k in range(3600):
        run_id = make_run_id(engine, at + timedelta(seconds=k))
        if conn.execute("SELECT 1 FROM growth_fit WHERE run_id = %s", (run_id,)).fetchone() is None:
            return run_id
    raise ContractError("run_id", "no free run id within an hour of now", make_run_id(engine, at))


# growth_population_draws' columns, in the order of contract.POPULATION_PARAMS
DRAW_COLUMNS = "b_intercept, b_week, sd_intercept, sd_week, cor, sigma"


def write_fit(
    conn: psycopg.Connection,
    result: FitResult,
    *,
    partition_key: str | None = None,
    dagster_run_id: str | None = None,
    panel_id: str | None = None,
    window_sums: WindowSums | None = None,
) -> int:
    """Store one fit (``brms_posterior``'s tables): its ``growth_fit`` row and its
    per-student line posteriors in ``growth_student_posterior``.

    One transaction: the fit, all its students and its population draws (when the engine
    gave them: ``growth_population_draws``), or nothing. Writing the same run_id again
    from the same Dagster run (a retried step) replaces it; another fit with a colliding
    run_id (ids have one-second resolution) is refused, never overwritten. Returns the
    number of student rows written.

    ``window_sums`` (``Panel.window_sums()`` of the fitted panel): each student's sums over
    the rows the fit conditioned on, kept beside her line posterior for the real-time path;
    without them those columns are NULL (and that path reads the window from the sources).
    """
    run_id = result.run_id
    header = jsonable(result.header_json())
    header.pop("population_draws", None)  # their own table, as arrays
    with conn.transaction():
        cur = conn.execute(
            """
            INSERT INTO growth_fit (run_id, partition_key, dagster_run_id, panel_id, engine, result)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (run_id) DO UPDATE SET
                partition_key = EXCLUDED.partition_key, dagster_run_id = EXCLUDED.dagster_run_id,
                panel_id = EXCLUDED.panel_id, engine = EXCLUDED.engine, result = EXCLUDED.result,
                created_at = now()
            WHERE growth_fit.dagster_run_id IS NOT DISTINCT FROM EXCLUDED.dagster_run_id
            """,
            (run_id, partition_key, dagster_run_id, panel_id, result.engine, Jsonb(header)),
        )
        if cur.rowcount == 0:
            raise ContractError("run_id", "already stored by another run; refusing to overwrite it", run_id)
        conn.execute("DELETE FROM growth_student_posterior WHERE run_id = %s", (run_id,))
        s = result.students
        n = len(s)
        columns = {'"run_id"': Column("text", np.full(n, run_id.encode())),
                   '"user_id"': Column("text", np.asarray(s.student_id)),
                   '"n_obs"': Column("int4", np.asarray(s.n_obs)),
                   **{f'"{c}"': Column("float8", np.asarray(getattr(s, c))) for c in STUDENT_COLUMNS[2:]}}
        if window_sums is not None:
            columns.update({f'"{k}"': Column("float8", v, null=np.isnan(v))  # not in the panel: NULL
                            for k, v in window_sums.for_students(np.asarray(s.student_id)).items()})
        # binary COPY from the result's columns, a chunk at a time (no Python object per student)
        copy_in(conn, "growth_student_posterior", list(columns),
                (encode({k: c.rows(slice(i, i + _COPY_CHUNK)) for k, c in columns.items()})
                 for i in range(0, n, _COPY_CHUNK)))
        conn.execute("DELETE FROM growth_population_draws WHERE run_id = %s", (run_id,))
        if result.population_draws is not None:
            d = result.population_draws
            arrays = [np.asarray(d[p], dtype=np.float64).tolist() for p in POPULATION_PARAMS]
            conn.execute(f"INSERT INTO growth_population_draws (run_id, n_draws, {DRAW_COLUMNS})"
                         " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", (run_id, len(arrays[0]), *arrays))
    return len(s)


def read_population_draws(conn: psycopg.Connection, run_id: str) -> dict[str, np.ndarray] | None:
    """A run's thinned population draws (brms's names, data units), or None (a run stored
    before they existed, or by an engine that gave none)."""
    row = conn.execute(f"SELECT {DRAW_COLUMNS} FROM growth_population_draws WHERE run_id = %s",
                       (run_id,)).fetchone()
    if row is None:
        return None
    return {p: np.asarray(v, dtype=np.float64) for p, v in zip(POPULATION_PARAMS, row, strict=True)}


def write_backtest(conn: psycopg.Connection, run_id: str, measures: Sequence[Any], *, partition_key: str | None,
                   horizon_week: date, target: float, dagster_run_id: str | None) -> int:
    """Store a run's backtest (``goal_forecast_backtest``'s table), replacing an earlier
    scoring of the same run; one transaction. ``measures``: ``model.backtest.Measure``."""
    with conn.transaction():
        conn.execute("DELETE FROM growth_forecast_backtest WHERE run_id = %s", (run_id,))
        with conn.cursor().copy(
                "COPY growth_forecast_backtest (run_id, measure, partition_key, horizon_week, target, model,"
                " baseline, n_students, detail, dagster_run_id) FROM STDIN") as copy:
            for m in measures:
                copy.write_row((run_id, m.measure, partition_key, horizon_week, float(target),
                                jsonable(m.model), jsonable(m.baseline), int(m.n_students),
                                Jsonb(jsonable(m.detail or {})), dagster_run_id))
    return len(measures)


def write_run_record(
    conn: psycopg.Connection,
    fit: Mapping[str, Any],
    *,
    status: str,
    status_reasons: Sequence[str] = (),
    window_start: date | None = None,
    window_end: date | None = None,
    week_start: date | None = None,
    score_source: str | None = None,
    panel_id: str | None = None,
    source_counts: Mapping[str, int] | None = None,
    partition_key: str | None = None,
    dagster_run_id: str | None = None,
) -> None:
    """The ``growth_brms_meta`` row of a stored fit (``growth_brms_meta``'s table): the
    seed's columns (formula, priors, posterior summary, diagnostics, fitted_at) and what
    was added (engine, window, counts, status). ``fit`` is the fit's ``growth_fit.result``.
    """
    if status not in RUN_STATUSES:
        raise ContractError("status", f"must be one of {RUN_STATUSES}", status)
    diagnostics = dict(fit["diagnostics"])
    if "student_level" in fit:
        diagnostics["student_level"] = fit["student_level"]
    params = {
        "run_id": fit["run_id"], "formula": fit["formula"], "priors": Jsonb(fit["priors"]),
        "summary": Jsonb(fit["posterior_summary"]), "diagnostics": Jsonb(jsonable(diagnostics)),
        "engine": fit["engine"], "engine_version": fit["engine_version"], "status": status,
        "reasons": Jsonb(list(status_reasons)), "window_start": window_start,
        "window_end": window_end, "week_start": week_start, "n_students": fit["n_students"],
        "n_obs": fit["n_obs"], "horizon_week": fit["horizon_week"], "target": fit["target"],
        "seed": fit["seed"], "n_chains": fit["n_chains"], "n_samples": fit["n_samples"],
        "score_source": score_source, "panel_id": panel_id,
        "source_counts": Jsonb(dict(source_counts)) if source_counts is not None else None,
        "partition_key": partition_key, "dagster_run_id": dagster_run_id,
    }
    cols = ("run_id, formula, priors, posterior_summary, diagnostics, fitted_at, engine, "
            "engine_version, status, status_reasons, window_start, window_end, week_start, "
            "n_students, n_obs, horizon_week, target, seed, n_chains, n_samples, score_source, "
            "panel_id, source_counts, partition_key, dagster_run_id")
    # fitted_at: when the fit was stored (growth_fit.created_at), not when it was graded: of two
    # runs of one partition, the older fit graded last counted as "fitted later" and its P
    # replaced the newer fit's (the merge guard and the readers order passed runs by it)
    vals = ("%(run_id)s, %(formula)s, %(priors)s, %(summary)s, %(diagnostics)s,"
            " coalesce((SELECT f.created_at FROM growth_fit f WHERE f.run_id = %(run_id)s), now()), %(engine)s, "
            "%(engine_version)s, %(status)s, %(reasons)s, %(window_start)s, %(window_end)s, "
            "%(week_start)s, %(n_students)s, %(n_obs)s, %(horizon_week)s, %(target)s, %(seed)s, "
            "%(n_chains)s, %(n_samples)s, %(score_source)s, %(panel_id)s, %(source_counts)s, "
            "%(partition_key)s, %(dagster_run_id)s")
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in (x.strip() for x in cols.split(",")) if c != "run_id")
    with conn.transaction():
        conn.execute(f"INSERT INTO growth_brms_meta ({cols}) VALUES ({vals}) "
                     f"ON CONFLICT (run_id) DO UPDATE SET {updates}", params)


def merge_weekly_kpi(
    conn: psycopg.Connection,
    rows: Iterable[tuple[str, float, float]],
    *,
    week_start: date,
    target: float,
    p_week: date,
    run_id: str | None,
    source: str,
    window_end: date | None = None,
    schema: str | None = None,
) -> int:
    """Merge ``P``, ``sigma`` and what they mean into each user's ``weekly_kpi`` row.

    ``rows`` are (user_id, P, sigma). Set-based and atomic: COPY into a temporary table, then
    one ``INSERT … ON CONFLICT DO UPDATE SET kpis = weekly_kpi.kpis || EXCLUDED.kpis``, so
    the keys other writers own (``I_t``, ``E_t``, …) are kept, also when such a writer
    commits concurrently (the upsert re-reads the committed row under its row lock); into a
    week none of the users has a row of yet, a plain INSERT first (``_merge_rows``).
    Returns the number of rows merged. Bad values raise ContractError before anything is
    written; a failure half-way rolls everything back. A row's P of a newer window, or of a
    later passed run of the same window, is kept (``_MERGE_TAIL``); ``schema``: the project's
    (where the run records are; default ``GROWTH_DB_SCHEMA``).
    """
    check_monday("week_start", week_start)
    check_monday("P_week", p_week)
    if source not in P_SOURCES:
        raise ContractError("P_source", f"must be one of {P_SOURCES}", source)
    if not math.isfinite(float(target)):
        raise ContractError("P_target", "must be finite", target)
    checked = []
    seen: set[str] = set()
    for user_id, p, sigma in rows:
        if not isinstance(user_id, str) or not user_id:
            raise ContractError("user_id", "missing or empty", user_id)
        if user_id in seen:  # the upsert would fail on it with PostgreSQL's CardinalityViolation
            raise ContractError("user_id", "given twice (one P per user and week)", user_id)
        seen.add(user_id)
        p = float(p)
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ContractError("P", f"must be within [0, 1] (user {user_id})", p)
        s = None if sigma is None else float(sigma)
        if s is not None and not (math.isfinite(s) and s >= 0):
            raise ContractError("sigma", f"must be finite and >= 0 (user {user_id})", sigma)
        checked.append((user_id, p, s))
    with conn.transaction():
        # IF NOT EXISTS + TRUNCATE: a second merge in the same open transaction reuses it
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _kpi_p (user_id text NOT NULL, p double precision NOT NULL,"
            " sigma double precision) ON COMMIT DROP"
        )
        conn.execute("TRUNCATE _kpi_p")
        with conn.cursor().copy("COPY _kpi_p (user_id, p, sigma) FROM STDIN") as copy:
            for row in checked:
                copy.write_row(row)
        return _merge_rows(conn, "FROM _kpi_p", "p",
                           {"week_start": week_start, "target": float(target), "p_week": p_week.isoformat(),
                            "run_id": run_id, "source": source,
                            "window_end": window_end.isoformat() if window_end else None}, schema)


def merge_run_into_weekly_kpi(conn: psycopg.Connection, run_id: str, *, week_start: date,
                              target: float, p_week: date, source: str, window_end: date,
                              schema: str | None = None) -> int:
    """``merge_weekly_kpi`` of every student of a stored run, by ``INSERT … SELECT`` from
    ``growth_student_posterior`` (``_merge_rows``: no rows travel through Python)."""
    check_monday("week_start", week_start)
    check_monday("P_week", p_week)
    if source not in P_SOURCES:
        raise ContractError("P_source", f"must be one of {P_SOURCES}", source)
    if not math.isfinite(float(target)):  # jsonb would store NaN as the string "NaN"
        raise ContractError("P_target", "must be finite", target)
    with conn.transaction():
        return _merge_rows(conn, "FROM growth_student_posterior WHERE run_id = %(run_id)s", '"P"',
                           {"week_start": week_start, "target": float(target), "p_week": p_week.isoformat(),
                            "run_id": run_id, "source": source, "window_end": window_end.isoformat()},
                           schema)
