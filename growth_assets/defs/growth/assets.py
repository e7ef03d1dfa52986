"""The weekly graph: weekly_scores -> brms_posterior -> growth_brms_meta -> weekly_kpi_P.

Partitioned by week: a partition is keyed by the last complete week of its 12-week window
(the Monday 04:30 UTC tick of 2026-11-23 materializes partition ``2026-11-16``, whose P goes
to ``weekly_kpi`` week 2026-11-23). Backfilling a past week refits that week's window.
"""


import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import dagster as dg
import numpy as np

from ...db.writers import merge_weekly_kpi, write_fit_run
from ...model.contract import (POPULATION_PARAMS, SUMMARY_FIELDS, ContractError, make_run_id,
                               validate_fit_result, validate_panel)
from ..resources import GrowthEngineResource, GrowthSettings, PostgresResource
from .diagnostics import CHECK_NAMES, DiagnosticThresholds, evaluate, run_status
from .panel import PanelInfo, Window, build_panel, load_panel

weekly_partitions = dg.WeeklyPartitionsDefinition(
    start_date="2025-01-06", day_offset=1, hour_offset=4, minute_offset=30, timezone="UTC",
    end_offset=0,
)

GROUP = "growth"

# Due by Monday 06:00 UTC; the 04:30 run must land after 04:00 (lower bound) to count.
weekly_freshness = dg.FreshnessPolicy.cron(deadline_cron="0 6 * * 1", lower_bound_delta=timedelta(hours=2),
                                           timezone="UTC")

SCORES_NOT_EMPTY = "panel_not_empty"
SCORES_FINITE = "scores_finite"
SCORES_TWO_STUDENTS = "at_least_two_students"
SCORES_THREE_WEEKS = "share_students_with_3_weeks"
KPI_P_IN_RANGE = "p_within_0_1"
KPI_ROWS_MATCH = "rows_written_equal_students_fitted"


def _check(name: str, passed: bool, severity: str, description: str, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name, passed=bool(passed), description=description, metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR if severity == "ERROR" else dg.AssetCheckSeverity.WARN,
    )


@contextmanager
def contract_failures():
    """Bad input or output becomes a Dagster Failure that names the field and the value."""
    try:
        yield
    except ContractError as e:
        raise dg.Failure(description=str(e), metadata={"field": e.field, "value": repr(e.value)}) from e


def _window(context: dg.AssetExecutionContext, growth: GrowthSettings) -> Window:
    return Window.for_partition(context.partition_key, growth.lookback_weeks)


@dg.asset(
    group_name=GROUP,
    partitions_def=weekly_partitions,
    kinds={"postgres", "sql"},
    freshness_policy=weekly_freshness,
    check_specs=[
        dg.AssetCheckSpec(SCORES_NOT_EMPTY, asset="weekly_scores", blocking=True,
                          description="the window has rows to fit"),
        dg.AssetCheckSpec(SCORES_FINITE, asset="weekly_scores", blocking=True,
                          description="every stored score is finite"),
        dg.AssetCheckSpec(SCORES_TWO_STUDENTS, asset="weekly_scores", blocking=True,
                          description="at least 2 students (the model needs a population)"),
        dg.AssetCheckSpec(SCORES_THREE_WEEKS, asset="weekly_scores",
                          description="WARN when fewer than half the students have 3 or more weeks"),
    ],
)
def weekly_scores(context: dg.AssetExecutionContext, postgres: PostgresResource,
                  growth: GrowthSettings):
    """The panel the model is fitted to: one row per (student, week) of the 12 complete weeks
    before the run's week (spec §1, §5).

    Aggregated inside PostgreSQL from mirt_ability, then student_topic_theta, then
    features_topic_daily, then weekly_kpi's ability_estimate (the first source with a value
    wins per student-week), or accuracy = correct / attempts. The panel is stored in
    ``growth_panel``; non-finite values, NULL ids and future-dated rows are left out and
    counted in the metadata.
    """
    with contract_failures():
        growth.checked()
        window = _window(context, growth)
    t0 = time.monotonic()
    with postgres.connect() as conn, contract_failures():
        info = build_panel(conn, window, growth.score_source)
        non_finite = conn.execute(
            "SELECT count(*) FROM growth_panel WHERE panel_id = %s"
            " AND score IN ('NaN', 'Infinity', '-Infinity')", (info.panel_id,)).fetchone()[0]
    share3 = info.students_with_3_weeks / info.n_students if info.n_students else 0.0
    yield dg.Output(info, metadata={
        "panel_id": info.panel_id,
        "rows": dg.MetadataValue.int(info.n_rows),
        "students": dg.MetadataValue.int(info.n_students),
        "students_with_3_weeks": dg.MetadataValue.int(info.students_with_3_weeks),
        "observations": dg.MetadataValue.int(info.observations),
        "window_start": info.window_start.isoformat(),
        "window_end_exclusive": info.window_end.isoformat(),
        "score_source": info.score_source,
        **{f"rows_from_{k}": dg.MetadataValue.int(v) for k, v in info.rows_by_source.items()},
        **{f"excluded_{k}": dg.MetadataValue.int(v) for k, v in info.excluded.items()},
        "seconds": dg.MetadataValue.float(round(time.monotonic() - t0, 3)),
    })
    yield _check(SCORES_NOT_EMPTY, info.n_rows > 0, "ERROR", f"{info.n_rows} rows in the window",
                 observed=info.n_rows, threshold=1)
    yield _check(SCORES_FINITE, non_finite == 0, "ERROR", f"{non_finite} non-finite scores",
                 observed=int(non_finite), threshold=0)
    yield _check(SCORES_TWO_STUDENTS, info.n_students >= 2, "ERROR", f"{info.n_students} students",
                 observed=info.n_students, threshold=2)
    yield _check(SCORES_THREE_WEEKS, share3 >= growth.min_share_3_weeks, "WARN",
                 f"{share3:.1%} of students have 3 or more weeks",
                 observed=float(share3), threshold=float(growth.min_share_3_weeks))


def _summary_table(result: dict[str, Any]) -> dg.MetadataValue:
    cols = [dg.TableColumn("parameter", "string")] + [dg.TableColumn(f, "float") for f in SUMMARY_FIELDS]
    records = [
        dg.TableRecord({"parameter": p, **{f: float(result["posterior_summary"][p][f]) for f in SUMMARY_FIELDS}})
        for p in POPULATION_PARAMS
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=cols))


def fit_metadata(result: dict[str, Any]) -> dict[str, Any]:
    d = result["diagnostics"]
    p = np.array([x["P"] for x in result["predictions"]], dtype=float)
    return {
        "run_id": result["run_id"],
        "engine": result["engine"],
        "engine_version": result["engine_version"],
        "students": dg.MetadataValue.int(int(result["n_students"])),
        "rows": dg.MetadataValue.int(int(result["n_obs"])),
        "max_rhat": dg.MetadataValue.float(float(d["max_rhat"])),
        "min_ess_bulk": dg.MetadataValue.float(float(d["min_ess_bulk"])),
        "min_ess_tail": dg.MetadataValue.float(float(d["min_ess_tail"])),
        "n_divergent": dg.MetadataValue.int(int(d["n_divergent"])),
        "n_max_treedepth": dg.MetadataValue.int(int(d["n_max_treedepth"])),
        "fit_seconds": dg.MetadataValue.float(float(d.get("elapsed_s", float("nan")))),
        "share_P_at_least_0_5": dg.MetadataValue.float(float((p >= 0.5).mean()) if p.size else float("nan")),
        "horizon_week": dg.MetadataValue.int(int(result["horizon_week"])),
        "target": dg.MetadataValue.float(float(result["target"])),
        "posterior_summary": _summary_table(result),
    }


@dg.asset(
    group_name=GROUP,
    partitions_def=weekly_partitions,
    kinds={"python"},
    freshness_policy=weekly_freshness,
    # on Kubernetes (k8s_job_executor) the fit step gets a pod sized for sampling
    op_tags={"dagster-k8s/config": {"container_config": {"resources": {
        "requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "6Gi"}}}}},
    check_specs=[
        dg.AssetCheckSpec(name, asset="brms_posterior", blocking=True, description=desc)
        for name, desc in zip(CHECK_NAMES, (
            "max R-hat over all sampled parameters: WARN > 1.01, ERROR > 1.05",
            "min bulk and tail ESS: WARN < 400, ERROR < 100",
            "divergent transitions: WARN > 0, ERROR > 1 % of kept draws",
        ))
    ],
)
def brms_posterior(context: dg.AssetExecutionContext, weekly_scores: PanelInfo,
                   postgres: PostgresResource, growth: GrowthSettings,
                   engine: GrowthEngineResource, diagnostics_thresholds: DiagnosticThresholds):
    """The posterior of ``score ~ week + (week | student_id)`` (gaussian, the contract's
    data-scaled priors) for this week's panel: population summary, diagnostics, and each
    student's line posterior with mu, sigma and P at the horizon (spec §8 JSON).

    The engine comes from the ``engine`` resource (native NumPyro or the R brms service),
    chosen once per run and recorded. Blocking checks on R-hat, ESS and divergences stop a
    bad fit before growth_brms_meta in this run; a later run that consumes it records it as
    ``failed_checks`` and weekly_kpi_P refuses it.
    """
    with contract_failures():
        fit_engine = engine.get_engine()
        settings = growth.fit_settings(run_id=make_run_id(fit_engine.name))
    context.log.info("engine %s chosen for this run (run_id %s)", fit_engine.name, settings.run_id)
    with postgres.connect() as conn:
        panel = load_panel(conn, weekly_scores.panel_id)
    with contract_failures():
        panel = validate_panel(panel)
    t0 = time.monotonic()
    raw = fit_engine.fit(panel[["student_id", "week", "score"]], settings)
    with contract_failures():
        result = validate_fit_result(raw)
    result.setdefault("diagnostics", {}).setdefault("elapsed_s", time.monotonic() - t0)
    p = np.array([x["P"] for x in result["predictions"]], dtype=float)
    yield dg.Output(result, metadata={**fit_metadata(result), "P_distribution": dg.MetadataValue.md(p_histogram_md(p)),
                                      "wall_seconds": dg.MetadataValue.float(round(time.monotonic() - t0, 3))})
    for o in evaluate(result, diagnostics_thresholds):
        yield dg.AssetCheckResult(
            check_name=o.check_name, passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
            metadata=o.metadata(), description=o.description,
        )


@dg.asset(group_name=GROUP, partitions_def=weekly_partitions, kinds={"postgres"},
          freshness_policy=weekly_freshness)
def growth_brms_meta(context: dg.AssetExecutionContext, brms_posterior: dict[str, Any],
                     weekly_scores: PanelInfo, postgres: PostgresResource,
                     growth: GrowthSettings, diagnostics_thresholds: DiagnosticThresholds) -> str:
    """One ``growth_brms_meta`` row per fit (formula, priors, posterior summary, diagnostics,
    engine, window, counts, status) and its per-student line posteriors in
    ``growth_student_posterior``, written in one transaction.

    The status is ``passed`` or ``failed_checks`` by the same rules as the blocking checks, so a
    bad fit consumed by a later run is recorded as such and never reaches weekly_kpi.
    """
    status, reasons = run_status(evaluate(brms_posterior, diagnostics_thresholds))
    with postgres.connect() as conn:
        n = write_fit_run(
            conn, brms_posterior, status=status, status_reasons=reasons,
            window_start=weekly_scores.window_start, window_end=weekly_scores.window_end,
            week_start=weekly_scores.week_start, score_source=weekly_scores.score_source,
            panel_id=weekly_scores.panel_id, source_counts=weekly_scores.rows_by_source,
            dagster_run_id=context.run.run_id,
        )
    if status != "passed":
        context.log.warning("run %s recorded as failed_checks: %s", brms_posterior["run_id"], "; ".join(reasons))
    context.add_output_metadata({
        "run_id": brms_posterior["run_id"], "status": status,
        "status_reasons": dg.MetadataValue.json(reasons),
        "student_rows": dg.MetadataValue.int(n),
    })
    return brms_posterior["run_id"]


@dg.asset(
    group_name=GROUP, partitions_def=weekly_partitions, kinds={"postgres"}, freshness_policy=weekly_freshness,
    check_specs=[
        dg.AssetCheckSpec(KPI_P_IN_RANGE, asset="weekly_kpi_P", description="every stored P is within [0, 1]"),
        dg.AssetCheckSpec(KPI_ROWS_MATCH, asset="weekly_kpi_P",
                          description="weekly_kpi rows written equal the students fitted"),
    ],
)
def weekly_kpi_P(context: dg.AssetExecutionContext, growth_brms_meta: str, weekly_scores: PanelInfo,
                 postgres: PostgresResource, growth: GrowthSettings):
    """Each fitted student's goal probability ``P`` and its uncertainty ``sigma`` merged into
    ``weekly_kpi.kpis`` of the run's week, with ``P_target``, ``P_week`` (the Monday of the
    horizon week), ``P_run_id`` and ``P_source``; other keys of ``kpis`` are kept.

    Refuses a run whose diagnostics failed (status ``failed_checks``). With
    ``BRMS_UPDATE_KPI=false`` nothing is written and the metadata says so.
    """
    run_id = growth_brms_meta
    with postgres.connect() as conn:
        row = conn.execute(
            "SELECT status, status_reasons, engine, horizon_week, target, week_start, window_start"
            " FROM growth_brms_meta WHERE run_id = %s", (run_id,)).fetchone()
        if row is None:
            raise dg.Failure(f"run {run_id} is not in growth_brms_meta; materialize growth_brms_meta first")
        status, reasons, engine, h, target, week_start, window_start = row
        if status != "passed":
            raise dg.Failure(
                description=f"refusing to write P from run {run_id}: its diagnostics failed ({'; '.join(reasons)})",
                metadata={"run_id": run_id, "status": status},
            )
        if not growth.update_kpi:
            context.log.info("BRMS_UPDATE_KPI=false: P of run %s not written to weekly_kpi", run_id)
            yield dg.Output({"run_id": run_id, "rows_written": 0, "written": False},
                            metadata={"run_id": run_id, "written": False,
                                      "reason": "BRMS_UPDATE_KPI=false", "rows_written": 0})
            yield _check(KPI_P_IN_RANGE, True, "ERROR", "nothing written (BRMS_UPDATE_KPI=false)")
            yield _check(KPI_ROWS_MATCH, True, "ERROR", "nothing written (BRMS_UPDATE_KPI=false)")
            return
        p_week = window_start + timedelta(weeks=int(h))
        rows = conn.execute(
            'SELECT user_id, "P", sigma FROM growth_student_posterior WHERE run_id = %s', (run_id,)
        ).fetchall()
        n = merge_weekly_kpi(conn, rows, week_start=week_start, target=target, p_week=p_week,
                             run_id=run_id, source=engine)
        stored = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE (kpis->>'P')::float8 BETWEEN 0 AND 1)"
            " FROM weekly_kpi WHERE week_start = %s AND kpis->>'P_run_id' = %s", (week_start, run_id)).fetchone()
    p = np.array([r[1] for r in rows], dtype=float)
    out = {"run_id": run_id, "rows_written": n, "written": True, "students_fitted": len(rows),
           "P_min": float(p.min()) if p.size else None, "P_max": float(p.max()) if p.size else None}
    yield dg.Output(out, metadata={
        "run_id": run_id, "written": True, "rows_written": dg.MetadataValue.int(n),
        "students_fitted": dg.MetadataValue.int(len(rows)),
        "week_start": week_start.isoformat(), "P_week": p_week.isoformat(),
        "P_target": dg.MetadataValue.float(float(target)),
        "share_P_at_least_0_5": dg.MetadataValue.float(float((p >= 0.5).mean()) if p.size else float("nan")),
        "P_min": dg.MetadataValue.float(float(p.min()) if p.size else float("nan")),
        "P_max": dg.MetadataValue.float(float(p.max()) if p.size else float("nan")),
        "P_distribution": dg.MetadataValue.md(p_histogram_md(p)),
    })
    yield _check(KPI_P_IN_RANGE, stored[1] == stored[0], "ERROR",
                 f"{stored[0] - stored[1]} stored P outside [0, 1]", observed=int(stored[0] - stored[1]), threshold=0)
    yield _check(KPI_ROWS_MATCH, stored[0] == len(rows) == n, "ERROR",
                 f"{stored[0]} rows carry this run's P for {len(rows)} students fitted",
                 observed=int(stored[0]), threshold=len(rows))


def p_histogram_md(p: np.ndarray, bins: int = 10) -> str:
    """The distribution of P as a small markdown table (renders inline: under 1,000 chars)."""
    if p.size == 0:
        return "no students"
    counts, edges = np.histogram(p, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    lines = ["| P | students | |", "|---|---:|---|"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"| {lo:.1f}–{hi:.1f} | {int(c)} | {'█' * round(12 * int(c) / top)} |")
    return "\n".join(lines)


weekly_assets = [weekly_scores, brms_posterior, growth_brms_meta, weekly_kpi_P]

weekly_growth_job = dg.define_asset_job(
    "weekly_growth_job",
    selection=dg.AssetSelection.assets(*weekly_assets),
    description="The weekly growth graph with its diagnostics checks.",
    tags={"growth/fit": "weekly"},  # the instance runs one such job at a time
)
