"""Bounds and rules of the data path that no test pinned (session 23's mutation probes: each
test fails on a mutant of the code, a plausible bug, that the suite let through): the window's
bounds in weekly_kpi and the exclusions, a same-day future theta in the real-time query, a
retried write_fit's draws, the diagnostics thresholds at their exact values, the retention of
an older ungraded fit; and weekly_kpi_P's P-range check shown able to fail. Session 24's
probes added the retention of an ungraded fit beside a later fit of another partition, and the
diagnostics shown with the digits that tell them from their thresholds."""

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import numpy as np

from growth_assets.db.writers import read_population_draws, write_fit
from growth_assets.defs.growth.diagnostics import ESS_CHECK, RHAT_CHECK, DiagnosticThresholds, evaluate
from growth_assets.defs.growth.panel import Window, build_panel, panel_query
from growth_assets.model.contract import POPULATION_PARAMS
from growth_assets_tests.support.results import make_result

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
MONDAY = date(2026, 11, 23)  # window: weeks starting 2026-08-31 .. 2026-11-16


def _kpi(conn, user, week, kpis):
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES (%s, %s, %s)", (user, week, kpis))


def test_the_runs_own_weekly_kpi_row_is_not_in_the_panel(conn):
    """Spec §1: the window is the 12 complete weeks before the run's week; week is 0..L-1.
    Mutant: panel_theta.sql's weekly_kpi bound ``week_start < window_end`` -> ``<=``."""
    _kpi(conn, "C", date(2026, 11, 9), '{"ability_estimate": 1.1}')
    _kpi(conn, "C", MONDAY, '{"ability_estimate": 2.5}')  # the run's own (incomplete) week
    conn.commit()
    info = build_panel(conn, Window(MONDAY, 12), "theta", now=NOW)
    rows = conn.execute("SELECT student_id, week, score FROM growth_panel_rows WHERE panel_id = %s"
                        " ORDER BY 1, 2", (info.panel_id,)).fetchall()
    assert rows == [("C", 10, 1.1)]


def test_a_bad_weekly_kpi_row_before_the_window_is_not_counted_as_excluded(conn):
    """panel_exclusions.sql counts rows 'in the window, or dated after now'.
    Mutant: its weekly_kpi lower bound ``week_start >= window_start`` dropped."""
    _kpi(conn, "C", date(2026, 11, 9), '{"ability_estimate": 1.1}')
    _kpi(conn, "C", date(2026, 8, 24), '{"ability_estimate": "high"}')  # the week before the window
    _kpi(conn, "", date(2026, 8, 17), '{"ability_estimate": 0.3}')
    conn.commit()
    info = build_panel(conn, Window(MONDAY, 12), "theta", now=NOW)
    assert info.excluded == {"null_user_id": 0, "non_finite_theta": 0, "invalid_attempts": 0,
                             "future_dated": 0, "out_of_range": 0}


def test_the_real_time_query_leaves_out_theta_fitted_after_now_on_the_same_day(conn):
    """metrics' sums read panel_query with window_end = tomorrow and now = as_of: a theta stamped
    later today (after as_of) is future-dated and must not count.
    Mutant: panel_theta.sql's ``t.fitted_at <= now`` dropped (student_topic_theta)."""
    now = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
    later = now + timedelta(hours=3)
    for table, extra in (("mirt_ability", {"se": 0.2}), ("student_topic_theta", {"topic_id": "t", "se": 0.3})):
        cols = {"user_id": "u_" + table, "theta": 1.0, "model": "m", "version": "v", "fitted_at": later, **extra}
        conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                     tuple(cols.values()))
    conn.commit()
    params = {"window_start": date(2026, 9, 7), "window_end": now.date() + timedelta(days=1), "now": now,
              "users": ["u_mirt_ability", "u_student_topic_theta"], "score_lo": -1e3, "score_hi": 1e3}
    assert conn.execute(panel_query("theta", for_users=True), params).fetchall() == []


def test_a_retried_write_of_a_run_replaces_its_population_draws_too(conn):
    """write_fit: 'Writing the same run_id again from the same Dagster run (a retried step)
    replaces it'. Mutant: the DELETE of growth_population_draws moved under
    ``if result.population_draws is not None`` (the first write's draws outlive it)."""
    draws = {p: np.linspace(0.1, 0.2, 8) for p in POPULATION_PARAMS}
    first = replace(make_result(3), population_draws=draws)
    write_fit(conn, first, dagster_run_id="d1")
    assert read_population_draws(conn, first.run_id) is not None
    write_fit(conn, make_result(3), dagster_run_id="d1")  # the retry: same run_id, no draws
    assert read_population_draws(conn, first.run_id) is None


def test_the_diagnostics_thresholds_are_strict_inequalities_at_their_boundaries():
    """diagnostics.py: ERROR when max R-hat > 1.05, WARN when > 1.01; ESS ERROR when < 100,
    WARN when < 400. Exactly at a threshold is not beyond it. Mutant: ``>``/``<`` -> ``>=``/``<=``."""
    t = DiagnosticThresholds()
    def out(**d):
        r = make_result(2, **{**dict(max_rhat=1.0, min_ess_bulk=1000.0, min_ess_tail=1000.0), **d})
        return {o.check_name: o for o in evaluate(r.diagnostics, r.kept_draws, t)}
    at_error = out(max_rhat=1.05)[RHAT_CHECK]
    assert (at_error.passed, at_error.severity) == (False, "WARN")
    assert out(max_rhat=1.01)[RHAT_CHECK].passed
    at_ess_error = out(min_ess_bulk=100.0)[ESS_CHECK]
    assert (at_ess_error.passed, at_ess_error.severity) == (False, "WARN")
    assert out(min_ess_tail=400.0)[ESS_CHECK].passed


def test_the_retention_keeps_only_the_newest_ungraded_fit_of_a_partition(conn):
    """prune_panels: 'The panel of the newest fit of a partition that has no run record yet is
    kept' (an older one is never graded). Mutant: the ``g.created_at > f.created_at`` clause
    dropped, so an older, never-graded fit keeps its panel forever."""
    from growth_assets.db.writers import jsonable, write_run_record
    from growth_assets.defs.growth.panel import prune_panels

    old_id, new_id = "theta:L12:2026-08-17", "theta:L12:2026-08-31"
    for pid, ws, we in ((old_id, date(2026, 8, 17), date(2026, 11, 9)), (new_id, date(2026, 8, 31), MONDAY)):
        conn.execute("INSERT INTO growth_panel_meta (panel_id, window_start, window_end, as_of, score_source, stats,"
                     " created_at) VALUES (%s, %s, %s, %s, 'theta', '{}', now() - interval '30 days')",
                     (pid, ws, we, we))
    older = make_result(2, run_id="native-20261110-043000")
    newer = make_result(2, run_id="native-20261110-050000")
    write_fit(conn, older, partition_key="2026-11-02", panel_id=old_id)
    write_fit(conn, newer, partition_key="2026-11-02", panel_id=old_id)
    conn.execute("UPDATE growth_fit SET created_at = now() - interval '2 hours' WHERE run_id = %s", (older.run_id,))
    write_run_record(conn, jsonable(newer.header_json()), status="passed", partition_key="2026-11-02")
    conn.commit()
    assert prune_panels(conn, 1).panel_ids == (old_id,)


def test_the_p_range_check_fails_a_stored_p_outside_0_1(db_url, monkeypatch):
    """growth_student_posterior's own CHECK keeps P within [0, 1], so p_within_0_1 could be
    shown to pass only: a writer that stored another value into weekly_kpi must fail it (ERROR)."""
    from growth_assets.db import connect
    from growth_assets.defs.growth import assets, weekly_assets
    from growth_assets_tests.support.graph import PARTITION, ReplayEngine, resources, seed_db

    real = assets.merge_run_into_weekly_kpi

    def merge_then_corrupt(conn, run_id, **kw):
        n = real(conn, run_id, **kw)
        conn.execute("UPDATE weekly_kpi SET kpis = kpis || '{\"P\": 1.5}' WHERE user_id ="
                     " (SELECT min(user_id) FROM weekly_kpi WHERE kpis->>'P_run_id' = %s)", (run_id,))
        return n

    monkeypatch.setattr(assets, "merge_run_into_weekly_kpi", merge_then_corrupt)
    url = seed_db(db_url, 20, seed=3)
    res = dg.materialize(weekly_assets, partition_key=PARTITION, raise_on_error=False,
                         resources=resources(url, ReplayEngine()))
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}["p_within_0_1"]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    assert ev.metadata["observed"].value == 1
    with connect(url) as c:
        assert c.execute("SELECT count(*) FROM weekly_kpi WHERE (kpis->>'P')::float8 > 1").fetchone()[0] == 1


def test_a_failing_diagnostic_is_not_shown_equal_to_its_threshold():
    """max R-hat 1.0504 fails 1.05 (ERROR), and 99.996 fails an ESS of 100: shown with 4
    significant digits, the check's text and its observed value (what the alert posts as
    "observed ..., threshold ...") read "max R-hat 1.05 > 1.05" and "100 < 100"."""
    from growth_assets.model.result import Diagnostics

    d = Diagnostics(max_rhat=1.0504, min_ess_bulk=99.996, min_ess_tail=1000.0, n_divergent=0, n_max_treedepth=0)
    t = DiagnosticThresholds(ess_warn=400.0, ess_error=100.0)
    out = {o.check_name: o for o in evaluate(d, 4000, t)}
    rhat, ess = out[RHAT_CHECK], out[ESS_CHECK]
    assert (rhat.passed, rhat.severity, ess.passed, ess.severity) == (False, "ERROR", False, "ERROR")
    assert rhat.metadata()["observed"] > rhat.metadata()["error_threshold"]
    assert ess.metadata()["observed"] < ess.metadata()["error_threshold"]
    assert rhat.description == "max R-hat 1.0504 > 1.05", rhat.description
    assert ess.description == "min bulk/tail ESS 99.996 < 100", ess.description
    # a value 4 digits tell apart keeps 4 (the text users know)
    far = {o.check_name: o for o in evaluate(replace(d, max_rhat=1.2345678), 4000, t)}[RHAT_CHECK]
    assert far.description == "max R-hat 1.235 > 1.05" and far.metadata()["observed"] == 1.235


def test_the_retention_keeps_an_ungraded_fits_panel_when_another_partition_has_a_later_fit(conn):
    """prune_panels: "The panel of the newest fit of a partition that has no run record yet is
    kept". Mutant: `g.partition_key = f.partition_key` dropped (or compared to another column):
    a later fit of ANOTHER partition (next Monday's run) then counts as newer, and the ungraded
    fit's panel is deleted; a later run that selects only growth_brms_meta cannot grade it."""
    from growth_assets.db.writers import jsonable, write_fit, write_run_record
    from growth_assets.defs.growth.panel import prune_panels
    from growth_assets_tests.support.results import make_result

    old_id, new_id = "theta:L12:2026-08-17", "theta:L12:2026-08-31"
    for pid, ws, we in ((old_id, date(2026, 8, 17), date(2026, 11, 9)), (new_id, date(2026, 8, 31), MONDAY)):
        conn.execute("INSERT INTO growth_panel_meta (panel_id, window_start, window_end, as_of, score_source, stats,"
                     " created_at) VALUES (%s, %s, %s, %s, 'theta', '{}', now() - interval '30 days')",
                     (pid, ws, we, we))
    ungraded = make_result(2, run_id="native-20261110-043000")  # stopped by a blocking check
    later = make_result(2, run_id="native-20261124-043000")  # next week's partition, graded
    write_fit(conn, ungraded, partition_key="2026-11-09", panel_id=old_id)
    write_fit(conn, later, partition_key="2026-11-23", panel_id=new_id)
    conn.execute("UPDATE growth_fit SET created_at = now() - interval '2 weeks' WHERE run_id = %s", (ungraded.run_id,))
    write_run_record(conn, jsonable(later.header_json()), status="passed", partition_key="2026-11-23")
    conn.commit()
    assert prune_panels(conn, 1).panel_ids == ()
    assert conn.execute("SELECT count(*) FROM growth_panel_meta WHERE panel_id = %s", (old_id,)).fetchone()[0] == 1


def test_the_pictures_sample_carries_each_students_own_line_in_any_result_order():
    """The population picture's sample: each student's weeks and scores from the panel, her
    line (mean intercept and slope) from the result's row of the same id, whether the result
    lists the students in the panel's order (both engines) or in another."""
    from growth_assets.defs.growth.assets import sample_students
    from growth_assets.model.panel import Panel

    rng = np.random.default_rng(3)
    ids = [f"s{k:03d}" for k in range(40)]
    rows = [(sid, w, float(rng.normal())) for sid in ids for w in range(3 + int(sid[1:]) % 4)]
    panel = Panel.from_frame(__import__("pandas").DataFrame(rows, columns=["student_id", "week", "score"]))
    res = make_result(40, ids=panel.student_ids, n_obs=panel.n_obs())
    for result in (res, replace(res, students=res.students.take(np.arange(40)[::-1]))):
        sample = sample_students(result, panel)
        assert len(sample) == 6
        own = dict(zip(result.students.student_id, zip(result.students.mean_a, result.students.mean_b)))
        for sid, w, y, a, b in sample:
            code = list(panel.student_ids).index(sid)
            assert np.array_equal(w, panel.week[panel.student == code]) and np.array_equal(y, panel.score[panel.student == code])
            assert (a, b) == own[sid], sid
        assert len({a for _, _, _, a, _ in sample}) == 6  # the lines differ: a wrong row would show
