"""The weekly graph materialized with Dagster against a real PostgreSQL."""

import copy
from datetime import date

import dagster as dg
import psycopg
import pytest

from growth_assets.defs.growth import weekly_assets
from growth_assets.defs.growth.diagnostics import (
    DIVERGENCE_CHECK, ESS_CHECK, RHAT_CHECK, DiagnosticThresholds, evaluate, run_status)
from growth_assets.defs.resources import (GrowthEngineResource, GrowthSettings, PostgresResource,
                                          PostgresValueIOManager)
from growth_assets.demo.cohort import seed_cohort
from growth_assets_tests.support.results import make_result

AS_OF = date(2026, 11, 23)
PARTITION = "2026-11-16"  # the week that closed before AS_OF


def resources(db_url, engine=None, **growth):
    g = dict(n_chains=2, n_samples=400, seed=7)
    g.update(growth)
    return {
        "postgres": PostgresResource(database_url=db_url),
        "io_manager": PostgresValueIOManager(database_url=db_url),
        "growth": GrowthSettings(**g),
        "engine": engine or GrowthEngineResource(engine="native"),
        "diagnostics_thresholds": DiagnosticThresholds(),
    }


class ReplayEngine(dg.ConfigurableResource):
    """Fault injection for the checks: an engine whose result has chosen diagnostics.

    Not a stand-in for a real engine: the tests that claim an engine works use the real one.
    """

    max_rhat: float = 1.0
    n_divergent: int = 0
    min_ess: float = 2000.0
    fail: bool = False

    def get_engine(self):
        outer = self

        class _E:
            name = "native"

            def fit(self, panel, settings):
                if outer.fail:
                    raise RuntimeError("sampler crashed")
                ids = sorted(panel["student_id"].unique())
                r = make_result(len(ids), run_id=settings.run_id, h=settings.horizon_week,
                                target=settings.target)
                for p, sid in zip(r["predictions"], ids):
                    p["student_id"] = sid
                r["n_obs"] = len(panel)
                r["diagnostics"].update(max_rhat=outer.max_rhat, n_divergent=outer.n_divergent,
                                        min_ess_bulk=outer.min_ess, min_ess_tail=outer.min_ess)
                return r

        return _E()


@pytest.fixture
def seeded(db_url):
    with psycopg.connect(db_url) as conn:
        seed_cohort(conn, 60, 12, seed=3, as_of=AS_OF)
    return db_url


def failure_text(res) -> str:
    """The failed step's error with its causes, as the UI shows them."""
    out = []
    for ev in res.get_step_failure_events():
        err = ev.event_specific_data.error
        while err is not None:
            out.append(err.message)
            err = err.cause
    return "\n".join(out)


def count(url, sql, *args):
    with psycopg.connect(url) as c:
        return c.execute(sql, args).fetchone()[0]


@pytest.mark.slow
def test_whole_graph_on_the_native_engine_writes_meta_students_and_p(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION,
                         resources=resources(seeded, n_chains=4, n_samples=1000))
    assert res.success
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert set(checks) == {RHAT_CHECK, ESS_CHECK, DIVERGENCE_CHECK}
    scores_md = res.asset_materializations_for_node("weekly_scores")[0].metadata
    n_students = scores_md["students"].value
    assert n_students == 60 and scores_md["rows"].value > 60 * 5
    assert scores_md["rows_from_student_topic_theta"].value > 0
    assert scores_md["rows_from_features_topic_daily"].value > 0
    post_md = res.asset_materializations_for_node("brms_posterior")[0].metadata
    assert post_md["engine"].value == "native" and post_md["students"].value == n_students
    assert "posterior_summary" in post_md and 1.0 <= post_md["max_rhat"].value < 1.1
    run_id = res.output_for_node("growth_brms_meta")
    with psycopg.connect(seeded) as c:
        meta = c.execute("SELECT status, engine, n_students, window_start, week_start, horizon_week, target,"
                         " source_counts FROM growth_brms_meta WHERE run_id = %s", (run_id,)).fetchone()
        assert meta[:7] == ("passed", "native", n_students,
                            date(2026, 8, 31), AS_OF, 15, 0.0)
        assert sum(meta[7].values()) == scores_md["rows"].value
        assert c.execute("SELECT count(*) FROM growth_student_posterior WHERE run_id=%s", (run_id,)).fetchone()[0] == n_students
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
    assert all(not e.passed and e.severity == dg.AssetCheckSeverity.WARN for e in ev.values())
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


def test_an_empty_window_stops_with_an_error_naming_the_field(db_url):
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(db_url, ReplayEngine()),
                         raise_on_error=False)
    assert not res.success
    failure = res.get_step_failure_events()[0]
    assert failure.step_key == "brms_posterior"
    assert "rows: at least 3 rows are needed (got 0)" in failure_text(res)


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
    r = make_result(2)
    r["diagnostics"].update(min_ess_bulk=1000.0, min_ess_tail=1000.0, max_rhat=1.0, n_divergent=0)
    r["diagnostics"].update(diag)
    out = {o.check_name: o for o in evaluate(r, DiagnosticThresholds())}
    for name, (passed, sev) in expect.items():
        assert out[name].passed is passed
        if sev:
            assert out[name].severity == sev
    status, reasons = run_status(list(out.values()))
    assert status == ("failed_checks" if any(s == "ERROR" for _, s in expect.values()) else "passed")
    assert len(reasons) == sum(1 for _, s in expect.values() if s == "ERROR")


def test_thresholds_are_configurable():
    r = make_result(2)
    r["diagnostics"]["max_rhat"] = 1.03
    strict = {o.check_name: o for o in evaluate(r, DiagnosticThresholds(rhat_error=1.02))}
    assert strict[RHAT_CHECK].severity == "ERROR" and not strict[RHAT_CHECK].passed
