"""``goal_forecast_backtest``: every published P scored once its horizon week has closed.

Partition k scores the published run of partition k (its newest ``passed`` run): the
realised scores of the run's horizon week (``P_week``), read by the panel's own query
(same sources, same priority), against the run's posterior predictive, with spec §7's
Normal approximation as it stood when P was published as the baseline (spec §10,
``model.backtest``). Stored in ``growth_forecast_backtest`` (one row per run and measure),
shown as metadata and pictures, graded by two WARN checks.
"""


import math
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import psycopg
from pydantic import Field, model_validator

from ...db.writers import read_population_draws, write_backtest
from ...metrics import LATEST_THETA_ORDER
from ...model.contract import has_normal_approximation
from ...model import backtest as bt
from ...model.contract import ContractError
from ..resources import GrowthSettings, PostgresResource
from ..sources import panel_sources
from .assets import GROUP, contract_failures, weekly_kpi_P, weekly_partitions
from .metadata import num
from .panel import panel_query
from .pictures import pit_picture, reliability_picture

COVERAGE_CHECK = "predictive_coverage_90"
SKILL_CHECK = "brier_skill_vs_normal"


class BacktestThresholds(dg.ConfigurableResource):
    """Where the backtest's checks WARN (spec §10)."""

    coverage_90_low: float = Field(0.85, ge=0, le=1, description="WARN below this 90 % predictive coverage")
    coverage_90_high: float = Field(0.95, ge=0, le=1, description="WARN above this 90 % predictive coverage")
    # the skill 1 - Brier_model / Brier_baseline is at most 1, and the check passes above this:
    # at 1 it could never pass (and WARNed, and alerted, every week)
    min_brier_skill: float = Field(0.0, lt=1, description="WARN unless the Brier skill against the Normal "
                                                           "baseline is above this (< 1)")

    @model_validator(mode="after")
    def _low_below_high(self) -> "BacktestThresholds":
        """An empty band: predictive_coverage_90 could never pass."""
        if self.coverage_90_low > self.coverage_90_high:
            raise ValueError(f"coverage_90_low ({self.coverage_90_low}) must be <= coverage_90_high"
                             f" ({self.coverage_90_high})")
        return self


# the run whose P weekly_kpi published (the partition's P is in its window_end's week), else
# the newest passed run (BRMS_UPDATE_KPI=false, or a P not merged yet): a refit of the
# partition that stopped before weekly_kpi_P was scored in place of the P teachers saw
_RUN = """
SELECT run_id, horizon_week, target, window_start, window_end, score_source, panel_id, posterior_summary,
       EXISTS (SELECT 1 FROM weekly_kpi k WHERE k.week_start = m.window_end
               AND k.kpis ->> 'P_run_id' = m.run_id) AS published
FROM growth_brms_meta m WHERE partition_key = %s AND status = 'passed'
ORDER BY published DESC, fitted_at DESC, run_id DESC LIMIT 1
"""
RUN_COLUMNS = ("run_id", "horizon_week", "target", "window_start", "window_end", "score_source", "panel_id",
               "posterior_summary", "published")

# the realised scores of the horizon week (the panel's query over that one week), the
# students' window sums (kept with each line by brms_posterior; from the fitted panel's rows
# only for a fit stored without them, so a pruned panel does not stop the backtest), their
# stored line at the horizon, and the latest calibration before the run's week (the
# baseline of spec §7)
_SCORED = """
WITH realised AS ({panel}),
panel_sums AS (
    SELECT student_id, count(*)::float8 AS n, sum(week)::float8 AS sw, sum(week * week)::float8 AS sww,
           sum(score) AS sy, sum(week * score) AS swy
    FROM growth_panel_rows WHERE panel_id = %(panel_id)s AND student_id IN (
        SELECT user_id FROM growth_student_posterior
        WHERE run_id = %(run_id)s AND sum_w IS NULL AND user_id IN (SELECT student_id FROM realised))
    GROUP BY student_id),
sums AS (
    SELECT user_id AS student_id, n_obs::float8 AS n, sum_w AS sw, sum_ww AS sww, sum_y AS sy, sum_wy AS swy
    FROM growth_student_posterior
    WHERE run_id = %(run_id)s AND sum_w IS NOT NULL AND user_id IN (SELECT student_id FROM realised)
    UNION ALL SELECT * FROM panel_sums),
base AS (  -- the latest calibration as spec §7 read it (metrics' rule); one whose theta or se is not
           -- usable published no P, so it is no baseline (an older calibration is not one either)
    SELECT user_id, theta, se FROM (
        SELECT DISTINCT ON (user_id) user_id, theta, se FROM mirt_ability
        WHERE user_id IN (SELECT student_id FROM realised)
          AND fitted_at < (%(published)s::date)::timestamp AT TIME ZONE 'UTC'
          AND theta IS NOT NULL
        ORDER BY user_id, {latest}) latest
    WHERE se > 0 AND se < 'Infinity' AND theta BETWEEN %(score_lo)s AND %(score_hi)s
      AND %(theta_scale)s)
SELECT r.student_id, r.score, s.n, s.sw, s.sww, s.sy, s.swy, sp.mu, sp.sigma, b.theta, b.se
FROM realised r
LEFT JOIN sums s USING (student_id)  -- none: a fit stored without sums whose panel was pruned
JOIN growth_student_posterior sp ON sp.run_id = %(run_id)s AND sp.user_id = r.student_id
LEFT JOIN base b ON b.user_id = r.student_id
ORDER BY r.student_id
"""


def scored_students(conn: psycopg.Connection, run: dict, p_week, growth: GrowthSettings, now: datetime):
    """The run's students with a realised score in the horizon week, as columns; and
    (``no_sums``) how many more had one but no window sums to score it with (a fit stored
    before the sums were kept, whose panel the retention has since deleted)."""
    params = {"window_start": p_week, "window_end": p_week + timedelta(weeks=1), "now": now, "users": None,
              "score_lo": float(growth.score_min), "score_hi": float(growth.score_max),
              "panel_id": run["panel_id"], "run_id": run["run_id"], "published": run["window_end"],
              # spec §7's Normal is on theta's scale: of an accuracy run (a share correct) none was
              # published, so none is its baseline
              "theta_scale": has_normal_approximation(run["score_source"])}
    rows = conn.execute(_SCORED.format(panel=panel_query(run["score_source"]), latest=LATEST_THETA_ORDER),
                        params).fetchall()
    no_sums = sum(r[2] is None for r in rows)
    rows = [r for r in rows if r[2] is not None]
    cols = list(zip(*rows)) if rows else [[] for _ in range(11)]
    f = [np.asarray(c, dtype=np.float64) for c in cols[1:9]]
    theta = np.array([np.nan if v is None else v for v in cols[9]], dtype=np.float64)
    se = np.array([np.nan if v is None else v for v in cols[10]], dtype=np.float64)
    return {"ids": list(cols[0]), "y": f[0], "sums": f[1:6], "mu": f[6], "sd": f[7], "theta": theta, "se": se,
            "no_sums": no_sums}


def score_run(run: dict, data: dict, draws: dict | None) -> tuple[list[bt.Measure], str]:
    """The measures of one run (``model.backtest.score``) and the predictive used."""
    y, target, h = data["y"], float(run["target"]), float(run["horizon_week"])
    x = np.stack([y, np.full(y.size, target)], axis=1)
    if draws is not None:
        cdf, method = bt.predictive_cdf(draws, *data["sums"], h, x), "population draws (exact mixture)"
    else:
        s = (run["posterior_summary"] or {}).get("sigma")
        mean, sd = (s.get("mean"), s.get("sd")) if isinstance(s, dict) else (None, None)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (mean, sd)):
            # without it the predictive would lack the residual (one test's noise): too narrow
            raise ContractError("posterior_summary.sigma", f"run {run.get('run_id')} has no stored draws and no"
                                " residual sigma (mean, sd) to score its predictive with", s)
        cdf = bt.moment_predictive_cdf(data["mu"], data["sd"], float(mean), float(sd), x)
        method = "stored line moments + residual (no draws stored)"
    has_base = np.isfinite(data["theta"]) & np.isfinite(data["se"])
    base = bt.normal_baseline(np.where(has_base, data["theta"], 0.0), np.where(has_base, data["se"], 1.0),
                              y, target)
    return bt.score(y, target, bt.model_forecasts(cdf), base, has_base), method


def reliability_table(detail: dict) -> dg.MetadataValue:
    """The reliability bins of the model and the baseline as one table."""
    cols = [dg.TableColumn("bin", "string")] + [
        dg.TableColumn(f"{who}_{k}", "float" if k != "students" else "int")
        for who in ("model", "baseline") for k in ("students", "mean_predicted", "observed")]
    records = []
    for mr, br in zip(detail["model"], detail["baseline"], strict=True):
        rec = {"bin": mr["bin"]}
        for who, r in (("model", mr), ("baseline", br)):
            rec[f"{who}_students"] = int(r["students"])
            for k in ("mean_predicted", "observed"):
                rec[f"{who}_{k}"] = float("nan") if r[k] is None else round(float(r[k]), 3)
        records.append(dg.TableRecord(rec))
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=cols))


@dg.asset(
    group_name=GROUP,
    partitions_def=weekly_partitions,
    kinds={"python", "postgres"},
    deps=[weekly_kpi_P, *panel_sources],
    check_specs=[
        dg.AssetCheckSpec(COVERAGE_CHECK, asset="goal_forecast_backtest",
                          description="WARN when the 90 % predictive interval's coverage leaves [0.85, 0.95]"),
        dg.AssetCheckSpec(SKILL_CHECK, asset="goal_forecast_backtest",
                          description="WARN unless the Brier skill against the Normal baseline is above 0"),
    ],
)
def goal_forecast_backtest(context: dg.AssetExecutionContext, postgres: PostgresResource,
                           growth: GrowthSettings, backtest_thresholds: BacktestThresholds):
    """The published P of this partition's run, scored when its horizon week (``P_week``)
    has closed: each realised score of that week against the run's posterior predictive
    (spec §10) — PIT, 50 % / 90 % coverage, Brier and log score of the probability of
    reaching the target, reliability — and the same for spec §7's Normal approximation on
    the same students, with the model's Brier skill against it. Stored in
    ``growth_forecast_backtest``; refuses a partition whose horizon week is not over yet.
    """
    t0 = time.monotonic()
    now = datetime.now(timezone.utc)
    with postgres.connect() as conn, contract_failures():
        row = conn.execute(_RUN, (context.partition_key,)).fetchone()
        if row is None:
            raise dg.Failure(f"no published (passed) run for partition {context.partition_key}:"
                             " materialize the weekly graph of this partition first")
        run = dict(zip(RUN_COLUMNS, row, strict=True))
        p_week = run["window_start"] + timedelta(weeks=int(run["horizon_week"]))
        if p_week < run["window_end"]:  # BRMS_HORIZON_WEEKS=0: the week's score is in the fitted window
            raise dg.Failure(
                description=f"run {run['run_id']} forecasts the week of {p_week}, inside its own data window"
                            f" (ends {run['window_end']}): its realised scores were fitted, so scoring them says"
                            " nothing of the forecast (BRMS_HORIZON_WEEKS=0)",
                metadata={"run_id": run["run_id"], "P_week": p_week.isoformat()})
        closes = p_week + timedelta(weeks=1)
        if now.date() < closes:
            raise dg.Failure(
                description=f"run {run['run_id']} forecasts the week of {p_week}, which closes on {closes}"
                            " (00:00 UTC): nothing to score yet",
                metadata={"run_id": run["run_id"], "P_week": p_week.isoformat(), "closes": closes.isoformat()})
        data = scored_students(conn, run, p_week, growth, now)
        if data["no_sums"]:
            why = (f"{data['no_sums']} students of run {run['run_id']} with a realised score have no window sums:"
                   f" the fit was stored without them and its panel {run['panel_id']} is gone (the retention);"
                   f" materialize weekly_scores of partition {context.partition_key} to score them")
            if not data["ids"]:
                raise dg.Failure(why)
            context.log.warning("%s; scoring the other %d", why, len(data["ids"]))
        if not data["ids"]:
            raise dg.Failure(f"no realised score in the week of {p_week} for any student of run {run['run_id']}")
        draws = read_population_draws(conn, run["run_id"])
        measures, method = score_run(run, data, draws)
        write_backtest(conn, run["run_id"], measures, partition_key=context.partition_key, horizon_week=p_week,
                       target=float(run["target"]), dagster_run_id=context.run.run_id)
    m = {x.measure: x for x in measures}
    # the model's calibration: on every student scored; model beside baseline: on the baseline's
    cov90, skill = m["coverage_90"].detail["model_all_students"], m["brier_skill"].model
    rel, pit, beside = m["reliability"].detail, m["pit_uniformity_p"].detail, m["brier_skill"].n_students > 0
    th = backtest_thresholds
    yield dg.MaterializeResult(metadata={
        "run_id": run["run_id"], "P_week": p_week.isoformat(), "target": dg.MetadataValue.float(float(run["target"])),
        # the run whose P weekly_kpi holds, or (False) the newest passed run: none was published
        "run_published": bool(run["published"]),
        "students_scored": dg.MetadataValue.int(len(data["ids"])),
        "students_with_baseline": dg.MetadataValue.int(m["brier_skill"].n_students),
        "students_without_window_sums": dg.MetadataValue.int(data["no_sums"]),
        "predictive": method,
        # the model on every student scored, then model and baseline on the baseline's students
        **{f"{k}_model": num(m[k].detail["model_all_students"], 4)
           for k in ("coverage_50", "coverage_90", "brier", "log_score")},
        **{f"{k}_model_beside_baseline": num(m[k].model, 4)
           for k in ("coverage_50", "coverage_90", "brier", "log_score")},
        **{f"{k}_baseline": num(m[k].baseline, 4) for k in ("coverage_50", "coverage_90", "brier", "log_score")},
        "pit_uniformity_p": num(m["pit_uniformity_p"].detail["model_all_students"], 3),
        "brier_skill": num(skill, 4),
        "reliability_table": reliability_table(m["reliability"].detail),
        # side by side on the same students (with no baseline at all: the model on every student)
        "reliability": dg.MetadataValue.md(reliability_picture(
            rel["model"] if beside else rel["model_all_students"], rel["baseline"])),
        "pit_histogram": dg.MetadataValue.md(pit_picture(
            pit["model_counts"] if beside else pit["model_all_students_counts"], pit["baseline_counts"])),
        "seconds": num(time.monotonic() - t0, 3),
    })
    yield dg.AssetCheckResult(
        check_name=COVERAGE_CHECK, passed=bool(th.coverage_90_low <= cov90 <= th.coverage_90_high),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"90 % predictive interval covered {cov90:.1%} of {len(data['ids'])} realised scores"
                    f" (expected {th.coverage_90_low:.0%}–{th.coverage_90_high:.0%})",
        metadata={"observed": num(cov90, 4), "threshold": f"[{th.coverage_90_low}, {th.coverage_90_high}]",
                  "run_id": run["run_id"]})
    if not has_normal_approximation(run["score_source"]):  # no §7 P on this scale: nothing to be skilled against
        yield dg.AssetCheckResult(
            check_name=SKILL_CHECK, passed=True, severity=dg.AssetCheckSeverity.WARN,
            description="no Normal baseline: the run's scores are accuracy (a share correct), and spec §7's"
                        " approximation is on theta's scale; the model's own calibration is the coverage check's",
            metadata={"observed": None, "threshold": dg.MetadataValue.float(th.min_brier_skill),
                      "run_id": run["run_id"], "baseline": "none (accuracy)"})
        return
    yield dg.AssetCheckResult(
        check_name=SKILL_CHECK, passed=bool(np.isfinite(skill) and skill > th.min_brier_skill),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"Brier skill {skill:.3f} against the Normal approximation on "
                    f"{m['brier_skill'].n_students} students (WARN unless > {th.min_brier_skill:g})",
        metadata={"observed": num(skill, 4), "threshold": dg.MetadataValue.float(th.min_brier_skill),
                  "run_id": run["run_id"]})


forecast_backtest_job = dg.define_asset_job(
    "forecast_backtest_job", selection=dg.AssetSelection.assets(goal_forecast_backtest),
    description="Score the published P of a partition once its horizon week has closed.")
