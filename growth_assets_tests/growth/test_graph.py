"""The weekly graph materialized with Dagster against a real PostgreSQL."""

from datetime import date

import dagster as dg
import pytest

from growth_assets.db import connect
from growth_assets.defs.growth import weekly_assets
from growth_assets.defs.growth.diagnostics import (
    DIVERGENCE_CHECK, ESS_CHECK, RHAT_CHECK, DiagnosticThresholds, evaluate, run_status)
from growth_assets.demo.cohort import seed_cohort
from growth_assets_tests.support.graph import AS_OF, PARTITION, ReplayEngine, failure_text, resources
from growth_assets_tests.support.results import make_result

@pytest.fixture
def seeded(db_url):
    with connect(db_url) as conn:
        seed_cohort(conn, 60, 12, seed=3, as_of=AS_OF)
    return db_url


def count(url, sql, *args):
    with connect(url) as c:
        return c.execute(sql, args).fetchone()[0]


@pytest.mark.slow
def test_whole_graph_on_the_native_engine_writes_meta_students_and_p(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, n_chains=4, n_samples=1000))
    assert res.success
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert set(checks) == {RHAT_CHECK, ESS_CHECK, DIVERGENCE_CHECK, "panel_not_empty", "scores_finite",
                           "at_least_two_students", "share_students_with_3_weeks", "p_within_0_1",
                           "rows_written_equal_students_fitted"}
    assert all(checks.values()), checks
    scores_md = res.asset_materializations_for_node("weekly_scores")[0].metadata
    n_students = scores_md["students"].value
    assert n_students == 60 and scores_md["rows"].value > 60 * 5
    assert scores_md["rows_from_student_topic_theta"].value > 0
    assert scores_md["rows_from_features_topic_daily"].value > 0
    post_md = res.asset_materializations_for_node("brms_posterior")[0].metadata
    assert post_md["engine"].value == "native" and post_md["students"].value == n_students
    assert "posterior_summary" in post_md and 1.0 <= post_md["max_rhat"].value < 1.1
    # 4 x 500 kept draws, 1000 of them kept for the real-time path, in their own table
    assert post_md["population_draws"].value == 1000
    run_id = res.asset_materializations_for_node("growth_brms_meta")[0].metadata["run_id"].value
    with connect(seeded) as c:
        meta = c.execute("SELECT status, engine, n_students, window_start, week_start, horizon_week, target,"
                         " source_counts FROM growth_brms_meta WHERE run_id = %s", (run_id,)).fetchone()
        assert meta[:7] == ("passed", "native", n_students,
                            date(2026, 8, 31), AS_OF, 15, 0.0)
        assert sum(meta[7].values()) == scores_md["rows"].value
        assert c.execute("SELECT count(*) FROM growth_student_posterior WHERE run_id=%s", (run_id,)).fetchone()[0] == n_students
        assert c.execute("SELECT n_draws FROM growth_population_draws WHERE run_id=%s", (run_id,)).fetchone() == (1000,)
        kp = c.execute("SELECT count(*), min((kpis->>'P')::float), max((kpis->>'P')::float),"
                       " count(DISTINCT kpis->>'P_week'), min(kpis->>'P_week'), min(kpis->>'P_source'),"
                       " min(kpis->>'P_run_id') FROM weekly_kpi WHERE week_start=%s AND kpis ? 'P'",
                       (AS_OF,)).fetchone()
    assert kp[0] == n_students and 0.0 <= kp[1] <= kp[2] <= 1.0
    # P_week: the Monday of the horizon week, 4 weeks after the window's last week (2026-11-16)
    assert kp[3:] == (1, "2026-12-14", "native", run_id)


def test_blocking_check_stops_the_fit_and_a_later_run_still_refuses_it(seeded):
    bad = ReplayEngine(max_rhat=1.2)
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(seeded, bad),
                         raise_on_error=False)
    assert not res.success
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert not ev[RHAT_CHECK].passed and ev[RHAT_CHECK].severity == dg.AssetCheckSeverity.ERROR
    assert ev[RHAT_CHECK].metadata["observed"].value == 1.2
    assert ev[RHAT_CHECK].metadata["error_threshold"].value == 1.05
    assert ev[ESS_CHECK].passed and ev[DIVERGENCE_CHECK].passed
    assert res.is_node_untouched("growth_brms_meta") and res.is_node_untouched("weekly_kpi_P")
    assert count(seeded, "SELECT count(*) FROM growth_brms_meta") == 0
    # a second run selecting only the downstream assets consumes the stored (bad) posterior:
    # it is recorded as failed_checks and never reaches weekly_kpi
    res2 = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(seeded, bad),
                          selection=["growth_brms_meta", "weekly_kpi_P"], raise_on_error=False)
    assert not res2.success
    assert count(seeded, "SELECT count(*) FROM growth_brms_meta WHERE status='failed_checks'") == 1
    failure = res2.get_step_failure_events()[0]
    assert failure.step_key == "weekly_kpi_P"
    assert "refusing to write P" in failure_text(res2)
    assert count(seeded, "SELECT count(*) FROM weekly_kpi WHERE kpis ? 'P'") == 0


def test_warn_checks_do_not_block(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, ReplayEngine(max_rhat=1.02, min_ess=300.0, n_divergent=1)))
    assert res.success
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    fit_checks = [ev[n] for n in (RHAT_CHECK, ESS_CHECK, DIVERGENCE_CHECK)]
    assert all(not e.passed and e.severity == dg.AssetCheckSeverity.WARN for e in fit_checks)
    assert ev["rows_written_equal_students_fitted"].passed and ev["p_within_0_1"].passed
    assert count(seeded, "SELECT count(*) FROM growth_brms_meta WHERE status='passed'") == 1
    assert count(seeded, "SELECT count(*) FROM weekly_kpi WHERE kpis ? 'P'") == 60


def test_update_kpi_false_skips_the_write_and_says_so(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, ReplayEngine(), update_kpi=False))
    assert res.success
    md = res.asset_materializations_for_node("weekly_kpi_P")[0].metadata
    assert md["written"].value is False and md["reason"].value == "BRMS_UPDATE_KPI=false"
    assert count(seeded, "SELECT count(*) FROM weekly_kpi WHERE kpis ? 'P'") == 0
    assert count(seeded, "SELECT count(*) FROM growth_brms_meta") == 1


def test_a_failing_engine_writes_nothing(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, ReplayEngine(fail=True)), raise_on_error=False)
    assert not res.success and res.get_failed_step_keys() == {"brms_posterior"}
    assert count(seeded, "SELECT count(*) FROM growth_brms_meta") == 0
    assert count(seeded, "SELECT count(*) FROM weekly_kpi WHERE kpis ? 'P'") == 0


def test_an_empty_window_is_stopped_by_the_blocking_data_checks(db_url):
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(db_url, ReplayEngine()),
                         raise_on_error=False)
    assert not res.success
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert not ev["panel_not_empty"].passed and ev["panel_not_empty"].metadata["observed"].value == 0
    assert not ev["at_least_two_students"].passed
    assert res.is_node_untouched("brms_posterior")


def test_a_panel_too_small_to_fit_stops_with_an_error_naming_the_field(db_url):
    with connect(db_url) as c:  # 2 students, 2 rows: past the data checks, not the contract
        c.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at) VALUES"
                  " ('a', 0.1, 0.2, 'm', 'v', '2026-11-17T10:00Z'), ('b', 0.3, 0.2, 'm', 'v', '2026-11-17T10:00Z')")
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(db_url, ReplayEngine()),
                         raise_on_error=False)
    assert not res.success
    assert res.get_step_failure_events()[0].step_key == "brms_posterior"
    assert "rows: at least 3 rows are needed (got 2)" in failure_text(res)


def test_unsupported_family_is_a_clear_error(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, ReplayEngine(), family="binomial"), raise_on_error=False)
    assert not res.success
    assert "BRMS_FAMILY: only gaussian is supported by this model (got 'binomial')" in failure_text(res)


@pytest.mark.parametrize("diag,expect", [
    ({"max_rhat": 1.0}, {RHAT_CHECK: (True, None)}),
    ({"max_rhat": 1.011}, {RHAT_CHECK: (False, "WARN")}),
    ({"max_rhat": 1.051}, {RHAT_CHECK: (False, "ERROR")}),
    ({"max_rhat": float("nan")}, {RHAT_CHECK: (False, "ERROR")}),
    ({"min_ess_bulk": 399.0}, {ESS_CHECK: (False, "WARN")}),
    ({"min_ess_tail": 99.0}, {ESS_CHECK: (False, "ERROR")}),
    ({"n_divergent": 1}, {DIVERGENCE_CHECK: (False, "WARN")}),
    ({"n_divergent": 40}, {DIVERGENCE_CHECK: (False, "WARN")}),   # 40 / 4000 = 1 %: not above
    ({"n_divergent": 41}, {DIVERGENCE_CHECK: (False, "ERROR")}),
])
def test_each_threshold_grades_as_specified(diag, expect):
    d = {**dict(min_ess_bulk=1000.0, min_ess_tail=1000.0, max_rhat=1.0, n_divergent=0), **diag}
    r = make_result(2, **d)
    out = {o.check_name: o for o in evaluate(r.diagnostics, r.kept_draws, DiagnosticThresholds())}
    for name, (passed, sev) in expect.items():
        assert out[name].passed is passed
        if sev:
            assert out[name].severity == sev
    status, reasons = run_status(list(out.values()))
    assert status == ("failed_checks" if any(s == "ERROR" for _, s in expect.values()) else "passed")
    assert len(reasons) == sum(1 for _, s in expect.values() if s == "ERROR")


def test_the_share_of_students_with_3_weeks_warns(db_url):
    with connect(db_url) as c:  # 3 students with one week each
        c.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at) VALUES"
                  " ('a', 0.1, 0.2, 'm', 'v', '2026-11-17T10:00Z'), ('b', 0.3, 0.2, 'm', 'v', '2026-11-17T10:00Z'),"
                  " ('c', 0.2, 0.2, 'm', 'v', '2026-11-10T10:00Z')")
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(db_url, ReplayEngine()))
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    share = ev["share_students_with_3_weeks"]
    assert not share.passed and share.severity == dg.AssetCheckSeverity.WARN
    assert share.metadata["observed"].value == 0.0 and share.metadata["threshold"].value == 0.5
    assert res.success  # a WARN does not block


def test_thresholds_are_configurable():
    r = make_result(2, max_rhat=1.03)
    strict = {o.check_name: o for o in evaluate(r.diagnostics, r.kept_draws, DiagnosticThresholds(rhat_error=1.02))}
    assert strict[RHAT_CHECK].severity == "ERROR" and not strict[RHAT_CHECK].passed


def test_steps_in_separate_processes_hand_each_other_nothing_but_tables(seeded, tmp_path, monkeypatch):
    """The multiprocess executor: four step processes, no IO manager, no value store. Each
    step finds its input by partition (and run id) in the tables of the step before."""
    from growth_assets_tests.support.mp_job import weekly_job

    monkeypatch.setenv("DATABASE_URL", seeded)
    monkeypatch.setenv("GROWTH_ENGINE", "native")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        res = dg.execute_job(dg.reconstructable(weekly_job), instance=instance,
                             tags={"dagster/partition": PARTITION})
        assert res.success, failure_text(res)
        pids = {e.dagster_event.pid for e in instance.all_logs(res.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"}
    assert len(pids) == 4  # one process per step
    run_id = res.asset_materializations_for_node("growth_brms_meta")[0].metadata["run_id"].value
    with connect(seeded) as c:
        assert c.execute("SELECT partition_key, dagster_run_id FROM growth_fit WHERE run_id = %s",
                         (run_id,)).fetchone() == (PARTITION, res.run_id)
        assert c.execute("SELECT count(*) FROM weekly_kpi WHERE kpis->>'P_run_id' = %s", (run_id,)).fetchone()[0] \
            == count(seeded, "SELECT count(*) FROM growth_student_posterior WHERE run_id = %s", run_id) == 60


def test_metadata_numbers_are_rounded_to_meaningful_digits(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, ReplayEngine(max_rhat=1.0013318181320263, min_ess=987.6543)))
    assert res.success
    post = res.asset_materializations_for_node("brms_posterior")[0].metadata
    assert post["max_rhat"].value == 1.0013 and post["min_ess_bulk"].value == 988.0
    table = post["posterior_summary"].value.records[0].data
    assert all(v == float(f"{v:.4g}") for k, v in table.items() if k != "parameter")
    kpi = res.asset_materializations_for_node("weekly_kpi_P")[0].metadata
    for k in ("P_min", "P_max", "share_P_at_least_0_5"):
        v = kpi[k].value
        assert v == round(v, 3), (k, v)
    check = next(e for e in res.get_asset_check_evaluations() if e.check_name == "rhat_below_threshold")
    assert check.metadata["observed"].value == 1.001


def test_a_run_that_grades_an_earlier_fit_records_that_fits_panel_not_its_own_settings(db_url):
    """growth_brms_meta of a run that did not fit (only the downstream assets, after a failed
    fit) records the fit it grades: the window and score source of the panel that fit was made
    on. It took them from this run's settings instead: with lookback_weeks 8 against the fit's
    12 it recorded the 8-week window's start, and weekly_kpi_P then wrote that fit's P for
    the week of 2027-01-11 instead of 2026-12-14, under every check (found by review)."""
    from growth_assets_tests.support.graph import seed_db

    url = seed_db(db_url, 30, seed=5)
    assert dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(url, ReplayEngine())).success
    with connect(url) as c:
        first = c.execute("SELECT run_id, panel_id, window_start, score_source FROM growth_brms_meta").fetchone()
    assert first[2] == date(2026, 8, 31)
    # the settings change to 8 weeks and the accuracy source; that run's own fit fails
    changed = dict(lookback_weeks=8, score_source="accuracy")
    failed = dg.materialize(weekly_assets, partition_key=PARTITION, raise_on_error=False,
                            resources=resources(url, ReplayEngine(fail=True), **changed))
    assert not failed.success
    again = dg.materialize(weekly_assets, partition_key=PARTITION, selection=["growth_brms_meta", "weekly_kpi_P"],
                           resources=resources(url, ReplayEngine(), **changed))
    assert again.success
    with connect(url) as c:
        rows = c.execute("SELECT run_id, panel_id, window_start, score_source FROM growth_brms_meta").fetchall()
        weeks = c.execute("SELECT DISTINCT kpis->>'P_week' FROM weekly_kpi WHERE kpis ? 'P'").fetchall()
    assert rows == [first] and weeks == [("2026-12-14",)]
