"""The writers of a fit: ``growth_brms_meta`` + per-student posterior rows, and the
``weekly_kpi`` merge of P. Each is one transaction; each writes set-based (COPY), never one
statement per student.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..model.contract import ContractError, validate_fit_result

P_SOURCES = ("brms", "native", "posterior", "normal")
RUN_STATUSES = ("passed", "failed_checks")
STUDENT_COLUMNS = ("user_id", "n_obs", "mean_a", "mean_b", "var_a", "var_b", "cov_ab", "mu", "sigma", "P")


def check_monday(field: str, d: date) -> date:
    if not isinstance(d, date):
        raise ContractError(field, "must be a date", d)
    if d.isoweekday() != 1:
        raise ContractError(field, "must be a Monday", d.isoformat())
    return d


def write_fit_run(
    conn: psycopg.Connection,
    result: Mapping[str, Any],
    *,
    status: str,
    status_reasons: Sequence[str] = (),
    window_start: date | None = None,
    window_end: date | None = None,
    week_start: date | None = None,
    score_source: str | None = None,
    panel_id: str | None = None,
    source_counts: Mapping[str, int] | None = None,
    dagster_run_id: str | None = None,
) -> int:
    """Store one fit: its ``growth_brms_meta`` row and its per-student posterior rows.

    One transaction: either the run and all its students are stored, or nothing is. Writing
    the same run_id again replaces that run (a retried step does not duplicate). Returns the
    number of student rows written.
    """
    result = validate_fit_result(result)
    if status not in RUN_STATUSES:
        raise ContractError("status", f"must be one of {RUN_STATUSES}", status)
    run_id = result["run_id"]
    diagnostics = dict(result["diagnostics"])
    for key in ("student_level",):
        if key in result:
            diagnostics[key] = result[key]
    with conn.transaction():
        cur = conn.execute(
            """
            INSERT INTO growth_brms_meta (
                run_id, formula, priors, posterior_summary, diagnostics, fitted_at,
                engine, engine_version, status, status_reasons, window_start, window_end,
                week_start, n_students, n_obs, horizon_week, target, seed, n_chains, n_samples,
                score_source, panel_id, source_counts, dagster_run_id)
            VALUES (%(run_id)s, %(formula)s, %(priors)s, %(summary)s, %(diagnostics)s, now(),
                    %(engine)s, %(engine_version)s, %(status)s, %(reasons)s, %(window_start)s,
                    %(window_end)s, %(week_start)s, %(n_students)s, %(n_obs)s, %(horizon_week)s,
                    %(target)s, %(seed)s, %(n_chains)s, %(n_samples)s, %(score_source)s,
                    %(panel_id)s, %(source_counts)s, %(dagster_run_id)s)
            ON CONFLICT (run_id) DO UPDATE SET
                formula = EXCLUDED.formula, priors = EXCLUDED.priors,
                posterior_summary = EXCLUDED.posterior_summary,
                diagnostics = EXCLUDED.diagnostics, fitted_at = EXCLUDED.fitted_at,
                engine = EXCLUDED.engine, engine_version = EXCLUDED.engine_version,
                status = EXCLUDED.status, status_reasons = EXCLUDED.status_reasons,
                window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
                week_start = EXCLUDED.week_start, n_students = EXCLUDED.n_students,
                n_obs = EXCLUDED.n_obs, horizon_week = EXCLUDED.horizon_week,
                target = EXCLUDED.target, seed = EXCLUDED.seed, n_chains = EXCLUDED.n_chains,
                n_samples = EXCLUDED.n_samples, score_source = EXCLUDED.score_source,
                panel_id = EXCLUDED.panel_id, source_counts = EXCLUDED.source_counts,
                dagster_run_id = EXCLUDED.dagster_run_id
            -- a retry of the same Dagster run, or the same fit stored again, replaces it; another
            -- fit with a colliding run_id (ids have one-second resolution) must not overwrite it
            WHERE growth_brms_meta.dagster_run_id IS NOT DISTINCT FROM EXCLUDED.dagster_run_id
               OR growth_brms_meta.posterior_summary = EXCLUDED.posterior_summary
            """,
            {
                "run_id": run_id,
                "formula": result["formula"],
                "priors": Jsonb(result["priors"]),
                "summary": Jsonb(result["posterior_summary"]),
                "diagnostics": Jsonb(diagnostics),
                "engine": result["engine"],
                "engine_version": result["engine_version"],
                "status": status,
                "reasons": Jsonb(list(status_reasons)),
                "window_start": window_start,
                "window_end": window_end,
                "week_start": week_start,
                "n_students": result["n_students"],
                "n_obs": result["n_obs"],
                "horizon_week": result["horizon_week"],
                "target": result["target"],
                "seed": result["seed"],
                "n_chains": result["n_chains"],
                "n_samples": result["n_samples"],
                "score_source": score_source,
                "panel_id": panel_id,
                "source_counts": Jsonb(dict(source_counts)) if source_counts is not None else None,
                "dagster_run_id": dagster_run_id,
            },
        )
        if cur.rowcount == 0:
            raise ContractError("run_id", "already stored by another run; refusing to overwrite it", run_id)
        conn.execute("DELETE FROM growth_student_posterior WHERE run_id = %s", (run_id,))
        cols = ", ".join(f'"{c}"' for c in ("run_id", *STUDENT_COLUMNS))
        with conn.cursor().copy(f"COPY growth_student_posterior ({cols}) FROM STDIN") as copy:
            for p in result["predictions"]:
                copy.write_row((run_id, p["student_id"], int(p["n_obs"]),
                                *(float(p[c]) for c in STUDENT_COLUMNS[2:])))
    return len(result["predictions"])


def merge_weekly_kpi(
    conn: psycopg.Connection,
    rows: Iterable[tuple[str, float, float]],
    *,
    week_start: date,
    target: float,
    p_week: date,
    run_id: str | None,
    source: str,
) -> int:
    """Merge ``P``, ``sigma`` and what they mean into each user's ``weekly_kpi`` row.

    ``rows`` are (user_id, P, sigma). Set-based and atomic: COPY into a temporary table, then
    one ``INSERT … ON CONFLICT DO UPDATE SET kpis = weekly_kpi.kpis || EXCLUDED.kpis``, so
    the keys other writers own (``I_t``, ``E_t``, …) are kept, also when such a writer
    commits concurrently (the upsert re-reads the committed row under its row lock).
    Returns the number of rows merged. Bad values raise ContractError before anything is
    written; a failure half-way rolls everything back.
    """
    check_monday("week_start", week_start)
    check_monday("P_week", p_week)
    if source not in P_SOURCES:
        raise ContractError("P_source", f"must be one of {P_SOURCES}", source)
    if not math.isfinite(float(target)):
        raise ContractError("P_target", "must be finite", target)
    checked = []
    for user_id, p, sigma in rows:
        if not isinstance(user_id, str) or not user_id:
            raise ContractError("user_id", "missing or empty", user_id)
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
        cur = conn.execute(
            """
            INSERT INTO weekly_kpi AS w (user_id, week_start, kpis)
            SELECT user_id, %(week_start)s,
                   jsonb_build_object(
                       'P', p, 'sigma', sigma, 'P_target', %(target)s::double precision,
                       'P_week', %(p_week)s::text, 'P_run_id', %(run_id)s::text,
                       'P_source', %(source)s::text)
            FROM _kpi_p
            ON CONFLICT (user_id, week_start) DO UPDATE
               SET kpis = w.kpis || EXCLUDED.kpis, updated_at = now()
            """,
            {"week_start": week_start, "target": float(target), "p_week": p_week.isoformat(),
             "run_id": run_id, "source": source},
        )
        return cur.rowcount
