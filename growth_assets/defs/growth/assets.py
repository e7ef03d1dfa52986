"""The weekly graph: weekly_scores -> brms_posterior -> growth_brms_meta -> weekly_kpi_P.

Partitioned by week: a partition is keyed by the last complete week of its 12-week window
(the Monday 04:30 UTC tick of 2026-11-23 materializes partition ``2026-11-16``, whose P goes
to ``weekly_kpi`` week 2026-11-23). Backfilling a past week refits that week's window.

Each asset owns its table(s) and returns a ``MaterializeResult``; nothing travels between
steps but through those tables, found by partition (and, within one Dagster run, by that
run's id), so every step may run in its own process or pod:

    weekly_scores    -> growth_panel, growth_panel_meta
    brms_posterior   -> growth_fit, growth_student_posterior
    growth_brms_meta -> growth_brms_meta
    weekly_kpi_P     -> weekly_kpi.kpis (P, sigma, P_target, P_week, P_run_id, P_source)
"""


import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import dagster as dg
import numpy as np
import psycopg

from ...db.writers import free_run_id, jsonable, merge_run_into_weekly_kpi, write_fit, write_run_record
from ...model.contract import POPULATION_PARAMS, SUMMARY_FIELDS, ContractError
from ...model.result import FitResult, fit_panel
from ...model.window import RUN_TIME_UTC
from ..resources import GrowthEngineResource, GrowthSettings, PostgresResource
from ..sources import panel_sources
from .diagnostics import CHECK_NAMES, DiagnosticThresholds, attempt_record, evaluate, falls_short, run_status
from .metadata import num, p_histogram_md, rounded
from .pictures import diagnostics_picture, p_picture, parameters_picture, population_picture
from .panel import PanelInfo, Window, build_panel, load_panel, panel_id_for, panel_info

weekly_partitions = dg.WeeklyPartitionsDefinition(
    start_date="2025-01-06", day_offset=1, hour_offset=RUN_TIME_UTC.hour, minute_offset=RUN_TIME_UTC.minute,
    timezone="UTC", end_offset=0,
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
    deps=panel_sources,
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
    ``growth_panel``, a row per student with her weeks' scores as arrays (the view
    ``growth_panel_rows`` shows a row per student-week); non-finite values, NULL ids and
    future-dated rows are left out and counted in the metadata.
    """
    with contract_failures():
        growth.checked()
        window = _window(context, growth)
    t0 = time.monotonic()
    with postgres.connect() as conn, contract_failures():
        info = build_panel(conn, window, growth.score_source, partition_key=context.partition_key,
                           dagster_run_id=context.run.run_id, score_range=(growth.score_min, growth.score_max))
    share3 = info.students_with_3_weeks / info.n_students if info.n_students else 0.0
    yield dg.MaterializeResult(metadata={
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
        "seconds": num(time.monotonic() - t0, 3),
    })
    yield _check(SCORES_NOT_EMPTY, info.n_rows > 0, "ERROR", f"{info.n_rows} rows in the window",
                 observed=info.n_rows, threshold=1)
    yield _check(SCORES_FINITE, info.non_finite == 0, "ERROR", f"{info.non_finite} non-finite scores",
                 observed=info.non_finite, threshold=0)
    yield _check(SCORES_TWO_STUDENTS, info.n_students >= 2, "ERROR", f"{info.n_students} students",
                 observed=info.n_students, threshold=2)
    yield _check(SCORES_THREE_WEEKS, share3 >= growth.min_share_3_weeks, "WARN",
                 f"{share3:.1%} of students have 3 or more weeks",
                 observed=num(share3), threshold=float(growth.min_share_3_weeks))


def _summary_table(result: FitResult) -> dg.MetadataValue:
    cols = [dg.TableColumn("parameter", "string")] + [dg.TableColumn(f, "float") for f in SUMMARY_FIELDS]
    records = [
        dg.TableRecord({"parameter": p, **{f: rounded(getattr(result.summary[p], f)) for f in SUMMARY_FIELDS}})
        for p in POPULATION_PARAMS
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=cols))


def fit_metadata(result: FitResult) -> dict[str, Any]:
    d = result.diagnostics
    p = result.students.P
    return {
        "run_id": result.run_id,
        "engine": result.engine,
        "engine_version": result.engine_version,
        "students": dg.MetadataValue.int(result.n_students),
        "rows": dg.MetadataValue.int(result.n_obs),
        "max_rhat": num(d.max_rhat, 4),
        "min_ess_bulk": num(d.min_ess_bulk, 0),
        "min_ess_tail": num(d.min_ess_tail, 0),
        "n_divergent": dg.MetadataValue.int(d.n_divergent),
        "n_max_treedepth": dg.MetadataValue.int(d.n_max_treedepth),
        "fit_seconds": num(d.elapsed_s, 2),
        "share_P_at_least_0_5": num(float((p >= 0.5).mean()) if p.size else float("nan"), 3),
        "horizon_week": dg.MetadataValue.int(result.horizon_week),
        "target": dg.MetadataValue.float(result.target),
        # kept for the real-time path's exact updates (metrics, path "update"); 0: none
        "population_draws": dg.MetadataValue.int(
            0 if result.population_draws is None else len(result.population_draws["sigma"])),
        "posterior_summary": _summary_table(result),
    }


SAMPLE_STUDENTS = 6


def sample_students(result: FitResult, panel, k: int = SAMPLE_STUDENTS) -> list[tuple]:
    """Up to ``k`` students with 3 or more weeks, evenly spaced in id order (the same ones
    for the same panel): (id, weeks, scores, posterior mean intercept, slope)."""
    counts = panel.n_obs()
    eligible = np.flatnonzero(counts >= 3)
    if eligible.size == 0:
        return []
    pick = eligible[np.linspace(0, eligible.size - 1, min(k, eligible.size)).round().astype(int)]
    ids = result.students.student_id
    out = []
    for code in pick:
        sid = panel.student_ids[code]
        rows = panel.student == code
        # her row of the result: in the panel's (sorted) order, as both engines give them, else
        # looked for (a dict of a million ids cost ~0.5 s of the step)
        i = int(code) if code < ids.size and ids[code] == sid else int(np.flatnonzero(ids == sid)[0])
        out.append((str(sid), panel.week[rows], panel.score[rows], float(result.students.mean_a[i]),
                    float(result.students.mean_b[i])))
    return out


def fit_pictures(result: FitResult, sample: list[tuple], window: Window, growth: GrowthSettings) -> dict[str, Any]:
    """brms_posterior's pictures: the population line with ``sample`` (``sample_students``), P,
    the parameters."""
    p_week = window.start + timedelta(weeks=int(result.horizon_week))
    md = {"picture_P": dg.MetadataValue.md(p_picture(result.students.P, result.target, p_week.isoformat()))}
    d = result.population_draws
    if d is None:
        md["pictures_note"] = "the engine gave no population draws: no line or parameter pictures"
        return md
    md["picture_population_line"] = dg.MetadataValue.md(population_picture(
        d, int(result.horizon_week), growth.lookback_weeks, result.target, sample,
        seed=int(result.seed)))
    md["picture_parameters"] = dg.MetadataValue.md(parameters_picture(d))
    return md


TREND_RUNS = 12


def diagnostics_trend(conn: psycopg.Connection, fitted_at) -> dg.MetadataValue:
    """The diagnostics of the last runs up to this one (growth_brms_meta), one picture."""
    rows = conn.execute(
        "SELECT run_id, partition_key, diagnostics, status FROM growth_brms_meta WHERE fitted_at <= %s"
        " ORDER BY fitted_at DESC, run_id DESC LIMIT %s", (fitted_at, TREND_RUNS)).fetchall()

    def get(d, k):
        v = (d or {}).get(k)
        return None if v is None else float(v)

    series = [{"label": (pk or run_id)[-10:] + ("" if status == "passed" else " ✗"),
               **{k: get(d, k) for k in ("max_rhat", "min_ess_bulk", "min_ess_tail", "n_divergent")},
               "fit_seconds": get(d, "elapsed_s")}
              for run_id, pk, d, status in reversed(rows)]
    return dg.MetadataValue.md(diagnostics_picture(series))


def _panel_of(conn: psycopg.Connection, window: Window, growth: GrowthSettings) -> PanelInfo:
    info = panel_info(conn, panel_id_for(window, growth.score_source))
    if info is None:
        raise dg.Failure(f"no panel for window {window.start}..{window.end} ({growth.score_source}):"
                         " materialize weekly_scores of this partition first")
    return info


def _latest(conn: psycopg.Connection, table: str, partition_key: str, dagster_run_id: str,
            columns: str, *, hold: bool = False) -> tuple | None:
    """The row of ``table`` for a partition: the one this Dagster run wrote, else the newest
    (a run that materializes only the downstream assets reads the last upstream run's).
    ``hold``: the row is held (FOR SHARE) until the connection's transaction ends, so what was
    read of it stays true meanwhile (a regrade waits)."""
    order = "created_at" if table == "growth_fit" else "fitted_at"
    return conn.execute(
        f"SELECT {columns} FROM {table} WHERE partition_key = %s"
        f" ORDER BY (dagster_run_id = %s) DESC NULLS LAST, {order} DESC, run_id DESC LIMIT 1"
        + (" FOR SHARE" if hold else ""),
        (partition_key, dagster_run_id)).fetchone()


@dg.asset(
    group_name=GROUP,
    partitions_def=weekly_partitions,
    kinds={"python", "postgres"},
    freshness_policy=weekly_freshness,
    deps=[weekly_scores],
    # one fit at a time across all runs, whatever launched them (the weekly job, an asset
    # backfill, a Materialize in the UI): the instance's pool limit (dagster.yaml) is 1
    pool="growth_fit",
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
def brms_posterior(context: dg.AssetExecutionContext, postgres: PostgresResource, growth: GrowthSettings,
                   engine: GrowthEngineResource, diagnostics_thresholds: DiagnosticThresholds):
    """The posterior of ``score ~ week + (week | student_id)`` (gaussian, the contract's
    data-scaled priors) for this week's panel: population summary, diagnostics, and each
    student's line posterior with mu, sigma and P at the horizon. Stored in ``growth_fit``
    and ``growth_student_posterior``.

    The engine comes from the ``engine`` resource (native NumPyro or the R brms service),
    chosen once per run and recorded. Its answer is checked against the request (the
    panel's students and rows, the target, horizon and sampling settings) before anything
    is stored. Blocking checks on R-hat, ESS and divergences stop a bad fit before
    growth_brms_meta in this run; a later run that grades it records ``failed_checks`` and
    weekly_kpi_P refuses it.
    """
    with contract_failures():
        fit_engine = engine.get_engine()
        window = _window(context, growth)
    with postgres.connect() as conn, contract_failures():
        info = _panel_of(conn, window, growth)
        panel = load_panel(conn, info.panel_id)
        settings = growth.fit_settings(run_id=free_run_id(conn, fit_engine.name))
    context.log.info("engine %s chosen for this run (run_id %s)", fit_engine.name, settings.run_id)
    t0 = time.monotonic()
    with contract_failures():
        result = fit_panel(fit_engine, panel, settings)
        attempts = [attempt_record(result)]
        # the convergence ladder: R-hat or ESS short of the WARN thresholds is refitted once
        # with twice the iterations (up to BRMS_MAX_N_SAMPLES) before the checks decide
        if falls_short(result.diagnostics, diagnostics_thresholds) and settings.n_samples < growth.max_n_samples:
            longer = replace(settings, n_samples=min(2 * settings.n_samples, growth.max_n_samples))
            context.log.warning("run %s: R-hat %.4g / min ESS %.4g fall short; refitting with %d iterations",
                                settings.run_id, result.diagnostics.max_rhat,
                                min(result.diagnostics.min_ess_bulk, result.diagnostics.min_ess_tail),
                                longer.n_samples)
            result = fit_panel(fit_engine, panel, longer)
            attempts.append(attempt_record(result))
        result = replace(result, diagnostics=replace(
            result.diagnostics, details={**result.diagnostics.details, "attempts": attempts}))
    pictures = fit_pictures(result, sample_students(result, panel), window, growth)
    sums = panel.window_sums()  # kept with each student's line, for the real-time path
    del panel
    with postgres.connect() as conn, contract_failures():
        n = write_fit(conn, result, partition_key=context.partition_key,
                      dagster_run_id=context.run.run_id, panel_id=info.panel_id, window_sums=sums)
    yield dg.MaterializeResult(metadata={
        **fit_metadata(result), "student_rows": dg.MetadataValue.int(n),
        "attempts": dg.MetadataValue.int(len(attempts)),
        "attempts_detail": dg.MetadataValue.json(jsonable(attempts)),
        "P_distribution": dg.MetadataValue.md(p_histogram_md(result.students.P)),
        **pictures,
        "wall_seconds": num(time.monotonic() - t0, 2)})
    for o in evaluate(result.diagnostics, result.kept_draws, diagnostics_thresholds):
        yield dg.AssetCheckResult(
            check_name=o.check_name, passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
            metadata=o.metadata(), description=o.description,
        )


@dg.asset(group_name=GROUP, partitions_def=weekly_partitions, kinds={"postgres"},
          freshness_policy=weekly_freshness, deps=[brms_posterior])
def growth_brms_meta(context: dg.AssetExecutionContext, postgres: PostgresResource,
                     growth: GrowthSettings, diagnostics_thresholds: DiagnosticThresholds):
    """One ``growth_brms_meta`` row per fit (formula, priors, posterior summary, diagnostics,
    engine, window, counts, status): the graded, published record of the partition's fit.

    The status is ``passed`` or ``failed_checks`` by the same rules as the blocking checks,
    so a bad fit graded by a later run is recorded as such and never reaches weekly_kpi.
    """
    with postgres.connect() as conn, contract_failures():
        row = _latest(conn, "growth_fit", context.partition_key, context.run.run_id, "result, panel_id")
        if row is None:
            raise dg.Failure(f"no fit stored for partition {context.partition_key}: materialize brms_posterior first")
        fit, panel_id = row
        # the panel the fit was made on (its window and source), whatever this run's settings
        # are: a run that grades an earlier fit records that fit
        info = panel_info(conn, panel_id)
        if info is None:
            raise dg.Failure(f"the panel {panel_id} of fit {fit['run_id']} is gone (the panel retention):"
                             f" materialize weekly_scores and brms_posterior of partition {context.partition_key}")
        if info.panel_id != panel_id_for(_window(context, growth), growth.score_source):
            context.log.warning("run %s grades fit %s, made on panel %s, not this run's settings' (%s weeks, %s)",
                                context.run.run_id, fit["run_id"], panel_id, growth.lookback_weeks,
                                growth.score_source)
        diag, kept = _stored_diagnostics(fit)
        status, reasons = run_status(evaluate(diag, kept, diagnostics_thresholds))
        write_run_record(
            conn, fit, status=status, status_reasons=reasons, window_start=info.window_start,
            window_end=info.window_end, week_start=info.week_start, score_source=info.score_source,
            panel_id=panel_id, source_counts=info.rows_by_source, partition_key=context.partition_key,
            dagster_run_id=context.run.run_id)
        trend = diagnostics_trend(conn, conn.execute(
            "SELECT fitted_at FROM growth_brms_meta WHERE run_id = %s", (fit["run_id"],)).fetchone()[0])
    if status != "passed":
        context.log.warning("run %s recorded as failed_checks: %s", fit["run_id"], "; ".join(reasons))
    return dg.MaterializeResult(metadata={
        "run_id": fit["run_id"], "status": status,
        "status_reasons": dg.MetadataValue.json(reasons),
        "students": dg.MetadataValue.int(int(fit["n_students"])),
        "diagnostics_trend": trend,
    })


def _stored_diagnostics(fit: dict[str, Any]):
    """The Diagnostics of a stored fit header (null = NaN, as stored by ``jsonable``)."""
    from ...model.result import Diagnostics

    d = fit["diagnostics"]

    def f(k):
        return float("nan") if d.get(k) is None else float(d[k])

    diag = Diagnostics(max_rhat=f("max_rhat"), min_ess_bulk=f("min_ess_bulk"), min_ess_tail=f("min_ess_tail"),
                       n_divergent=int(d["n_divergent"]), n_max_treedepth=int(d["n_max_treedepth"]))
    return diag, int(fit["n_chains"]) * (int(fit["n_samples"]) - int(fit["n_warmup"]))


@dg.asset(
    group_name=GROUP, partitions_def=weekly_partitions, kinds={"postgres"}, freshness_policy=weekly_freshness,
    deps=[growth_brms_meta],
    check_specs=[
        dg.AssetCheckSpec(KPI_P_IN_RANGE, asset="weekly_kpi_P", description="every stored P is within [0, 1]"),
        dg.AssetCheckSpec(KPI_ROWS_MATCH, asset="weekly_kpi_P",
                          description="weekly_kpi rows written equal the students fitted"),
    ],
)
def weekly_kpi_P(context: dg.AssetExecutionContext, postgres: PostgresResource, growth: GrowthSettings):
    """Each fitted student's goal probability ``P`` and its uncertainty ``sigma`` merged into
    ``weekly_kpi.kpis`` of the run's week, with ``P_target``, ``P_week`` (the Monday of the
    horizon week), ``P_run_id`` and ``P_source``; other keys of ``kpis`` are kept.

    Refuses a run whose diagnostics failed (status ``failed_checks``). With
    ``BRMS_UPDATE_KPI=false`` nothing is written and the metadata says so.
    """
    with postgres.connect() as conn:
        row = _latest(conn, "growth_brms_meta", context.partition_key, context.run.run_id,
                      "run_id, status, status_reasons, engine, horizon_week, target, week_start, window_start,"
                      " window_end", hold=True)  # passed until the merge commits: a regrade waits
        if row is None:
            raise dg.Failure(f"no growth_brms_meta run for partition {context.partition_key}:"
                             " materialize growth_brms_meta first")
        run_id, status, reasons, engine, h, target, week_start, window_start, window_end = row
        if status != "passed":
            raise dg.Failure(
                description=f"refusing to write P from run {run_id}: its diagnostics failed ({'; '.join(reasons)})",
                metadata={"run_id": run_id, "status": status},
            )
        if not growth.update_kpi:
            context.log.info("BRMS_UPDATE_KPI=false: P of run %s not written to weekly_kpi", run_id)
            yield dg.MaterializeResult(metadata={"run_id": run_id, "written": False,
                                                 "reason": "BRMS_UPDATE_KPI=false", "rows_written": 0})
            # every result carries the observed value and its threshold: none written, as set
            yield _check(KPI_P_IN_RANGE, True, "ERROR", "nothing written (BRMS_UPDATE_KPI=false)",
                         observed=0, threshold=0)
            yield _check(KPI_ROWS_MATCH, True, "ERROR", "nothing written (BRMS_UPDATE_KPI=false)",
                         observed=0, threshold=0)
            return
        p_week = window_start + timedelta(weeks=int(h))
        n = merge_run_into_weekly_kpi(conn, run_id, week_start=week_start, target=target, p_week=p_week,
                                      source=engine, window_end=window_end, schema=postgres.db_schema)
        fitted, p_min, p_max, share = conn.execute(
            'SELECT count(*), min("P"), max("P"), avg(("P" >= 0.5)::int) FROM growth_student_posterior'
            " WHERE run_id = %s", (run_id,)).fetchone()
        # the rows this step wrote: the run's P with its engine as P_source (the weekday refresh
        # writes P of the same run for users it did not fit, with P_source update or posterior)
        stored = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE (kpis->>'P')::float8 BETWEEN 0 AND 1)"
            " FROM weekly_kpi WHERE week_start = %s AND kpis->>'P_run_id' = %s AND kpis->>'P_source' = %s",
            (week_start, run_id, engine)).fetchone()
        hist = conn.execute(
            'SELECT width_bucket("P", 0, 1, 10) AS b, count(*) FROM growth_student_posterior'
            " WHERE run_id = %s GROUP BY b", (run_id,)).fetchall()
    yield dg.MaterializeResult(metadata={
        "run_id": run_id, "written": True, "rows_written": dg.MetadataValue.int(n),
        "students_fitted": dg.MetadataValue.int(fitted),
        "week_start": week_start.isoformat(), "P_week": p_week.isoformat(),
        "P_target": dg.MetadataValue.float(float(target)),
        "share_P_at_least_0_5": num(float(share) if share is not None else float("nan"), 3),
        "P_min": num(p_min, 3), "P_max": num(p_max, 3),
        "P_distribution": dg.MetadataValue.md(p_histogram_md(_bucket_counts(hist))),
    })
    yield _check(KPI_P_IN_RANGE, stored[1] == stored[0], "ERROR",
                 f"{stored[0] - stored[1]} stored P outside [0, 1]", observed=int(stored[0] - stored[1]), threshold=0)
    yield _check(KPI_ROWS_MATCH, stored[0] == fitted == n, "ERROR",
                 f"{stored[0]} rows carry this run's P for {fitted} students fitted",
                 observed=int(stored[0]), threshold=int(fitted))


def _bucket_counts(rows) -> np.ndarray:
    """width_bucket's 1..11 (11: P == 1) as the 10 counts of [0, 0.1), …, [0.9, 1]."""
    counts = np.zeros(10, dtype=np.int64)
    for b, c in rows:
        counts[min(max(int(b), 1), 10) - 1] += int(c)
    return counts


weekly_assets = [weekly_scores, brms_posterior, growth_brms_meta, weekly_kpi_P]

# the graph's steps: its assets and their own checks. The check of whether the current week is
# published (published.py) is on weekly_kpi_P too but is no step of the graph: it has its own
# job and schedule (Monday 06:00 UTC)
CURRENT_WEEK_PUBLISHED = "current_week_published"
weekly_check_keys = [k for a in weekly_assets for k in a.check_keys]
weekly_selection = dg.AssetSelection.assets(*weekly_assets).without_checks() | dg.AssetSelection.checks(*weekly_check_keys)

weekly_growth_job = dg.define_asset_job(
    "weekly_growth_job",
    selection=weekly_selection,
    description="The weekly growth graph with its diagnostics checks.",
    tags={"growth/fit": "weekly"},  # the instance runs one such job at a time
)
