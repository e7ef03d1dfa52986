"""A backfill, a race and a deadlock: none may put an older window's P in front of a newer
one (issue: nothing silently wrong, items 1 and 2)."""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest

from growth_assets.db import connect
from growth_assets import metrics
from growth_assets.db.writers import merge_weekly_kpi
from growth_assets.metrics import explain_goal_attainment_probability as explain
from growth_assets.metrics import GoalAnswer, refresh_active_users
from growth_assets_tests.metrics.helpers import add_theta, kpis, store_fit
from growth_assets_tests.support.results import make_result

NEW_WEEK = date(2026, 11, 23)  # partition 2026-11-16: window 2026-08-31 .. 2026-11-22
OLD_WEEK = date(2026, 11, 16)  # partition 2026-11-09: window 2026-08-24 .. 2026-11-15
P_WEEK = date(2026, 12, 14)


@pytest.fixture(autouse=True)
def bayesian(monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")


def store(conn, run_id, week, fitted_at, shift=0.0):
    r = make_result(3, run_id=run_id)
    from dataclasses import replace

    r = replace(r, students=replace(r.students, mean_a=r.students.mean_a + shift,
                                    mu=r.students.mu + shift))
    from growth_assets.model.contract import line_prediction

    s = r.students
    mu, sd, p = line_prediction(s.mean_a, s.mean_b, s.var_a, s.var_b, s.cov_ab, r.horizon_week, r.target)
    r = replace(r, students=replace(s, mu=mu, sigma=sd, P=p))
    store_fit(conn, r, window_start=week - timedelta(weeks=12), week_start=week)
    conn.execute("UPDATE growth_brms_meta SET fitted_at = %s WHERE run_id = %s", (fitted_at, run_id))
    conn.commit()
    return r


def test_a_backfill_of_an_old_week_never_takes_over_the_answers(conn):
    """Materializing partition 2026-11-09 after 2026-11-16 stored the older window last: the
    latest fitted_at. Today's main then answered every student from the older run."""
    new = store(conn, "native-20261123-043000", NEW_WEEK, datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
    store(conn, "native-20261201-090000", OLD_WEEK, datetime(2026, 12, 1, 9, tzinfo=timezone.utc), shift=1.0)
    a = explain(conn, "s00001", target=0.0)
    assert a.run_id == new.run_id and a.path == "run"
    assert a.P == pytest.approx(float(new.students.P[1]), abs=1e-9)
    # and the daily refresh writes the newer window's P into this week's rows
    add_theta(conn, "s00001", 0.1, 0.3, datetime(2026, 11, 24, tzinfo=timezone.utc))
    refresh_active_users(conn, NEW_WEEK, target=0.0)
    k = kpis(conn, "s00001", NEW_WEEK)
    assert k["P_run_id"] == new.run_id and k["P_window_end"] == "2026-11-23"


def merge(conn, p, window_end, run_id, source="posterior", week=NEW_WEEK):
    return merge_weekly_kpi(conn, [("u1", p, 0.1)], week_start=week, target=0.0, p_week=date(2026, 12, 14),
                            run_id=run_id, source=source, window_end=window_end)


def test_a_merge_never_replaces_a_p_from_a_newer_window(conn):
    """The race: the daily refresh computed its answers from last week's run, the weekly run
    committed this week's P, then the refresh wrote. Today's main let it overwrite."""
    assert merge(conn, 0.7, date(2026, 11, 23), "native-new") == 1  # the weekly run
    assert merge(conn, 0.2, date(2026, 11, 16), "native-old") == 0  # the late refresh: refused
    assert kpis(conn, "u1")["P"] == 0.7 and kpis(conn, "u1")["P_run_id"] == "native-new"
    assert merge(conn, 0.3, None, None, source="normal") == 0  # no window: replaces no run's P
    assert merge(conn, 0.8, date(2026, 11, 23), "native-new2") == 1  # the same window: a re-run
    assert kpis(conn, "u1")["P"] == 0.8
    # a row without a window (a legacy or Normal P) is replaced by a run's P
    conn.execute("UPDATE weekly_kpi SET kpis = kpis - 'P_window_end'")
    conn.commit()
    assert merge(conn, 0.5, date(2026, 11, 16), "native-old") == 1


def test_a_merge_from_an_older_run_of_the_same_window_does_not_replace_the_newer_runs_p(conn):
    """Two runs of one window (a re-run of the partition): readers take the later one (by
    fitted_at). A daily refresh that computed from the earlier run, then wrote after the
    re-run's P was merged, replaced it: the guard compared windows only, and they were equal.
    weekly_kpi then showed the earlier run's P until the next write."""
    early = store(conn, "native-20261123-043000", NEW_WEEK, datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
    late = store(conn, "native-20261123-090000", NEW_WEEK, datetime(2026, 11, 23, 9, tzinfo=timezone.utc))
    assert explain(conn, "s00001", target=0.0).run_id == late.run_id  # the readers' latest
    assert merge(conn, 0.7, NEW_WEEK, late.run_id) == 1  # the re-run's weekly P
    assert merge(conn, 0.2, NEW_WEEK, early.run_id, source="update") == 0  # the late refresh: refused
    assert kpis(conn, "u1")["P"] == 0.7 and kpis(conn, "u1")["P_run_id"] == late.run_id
    assert merge(conn, 0.6, NEW_WEEK, late.run_id, source="update") == 1  # the same run again: its refresh
    assert kpis(conn, "u1")["P"] == 0.6
    # the other way round: the later run's P replaces the earlier one's
    assert merge(conn, 0.3, NEW_WEEK, early.run_id, week=OLD_WEEK) == 1
    assert merge(conn, 0.4, NEW_WEEK, late.run_id, week=OLD_WEEK) == 1
    assert kpis(conn, "u1", OLD_WEEK)["P_run_id"] == late.run_id
    # a later run regraded to failed_checks: readers take the earlier run again, and so may its P
    conn.execute("UPDATE growth_brms_meta SET status = 'failed_checks' WHERE run_id = %s", (late.run_id,))
    conn.commit()
    assert explain(conn, "s00001", target=0.0).run_id == early.run_id
    assert merge(conn, 0.25, NEW_WEEK, early.run_id, source="update") == 1
    assert kpis(conn, "u1")["P_run_id"] == early.run_id


def test_a_p_of_the_window_that_names_no_run_is_replaced_while_a_later_run_exists(conn):
    """A row with the window but no P_run_id (another writer's, or a legacy row) is outranked
    by no run: a run's P of the same window replaces it, also while a later passed run of the
    window exists (the guard's lookup of the runs that outrank the incoming one is made once
    per statement, and a missing P_run_id must not make it refuse)."""
    early = store(conn, "native-20261123-043000", NEW_WEEK, datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
    store(conn, "native-20261123-090000", NEW_WEEK, datetime(2026, 11, 23, 9, tzinfo=timezone.utc))
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('u1', %s, %s)",
                 (NEW_WEEK, '{"P": 0.9, "P_window_end": "2026-11-23", "I_t": 4}'))
    conn.commit()
    assert merge(conn, 0.3, NEW_WEEK, early.run_id) == 1
    assert kpis(conn, "u1")["P"] == 0.3 and kpis(conn, "u1")["I_t"] == 4


def test_writers_lock_rows_in_one_order_so_two_merges_do_not_deadlock(db_url):
    """Transaction A holds u1 and then wants u2; B merges [u2, u1]. B locking u2 first (the
    order its rows came in) deadlocked with A; sorted, B waits for u1 and both commit."""
    week = NEW_WEEK
    errors: list[BaseException] = []
    with connect(db_url) as setup:
        for u in ("u1", "u2"):
            setup.execute("INSERT INTO weekly_kpi (user_id, week_start) VALUES (%s, %s)", (u, week))
    # autocommit: each `transaction()` block below is a real transaction, committed at its end
    a, b = psycopg.connect(db_url, autocommit=True), psycopg.connect(db_url, autocommit=True)
    try:
        a.execute("SET deadlock_timeout = '100ms'")
        b.execute("SET deadlock_timeout = '100ms'")
        with a.transaction():
            merge_weekly_kpi(a, [("u1", 0.1, 0.1)], week_start=week, target=0.0, p_week=date(2026, 12, 14),
                             run_id="r-a", source="posterior", window_end=week)

            def run_b():
                try:
                    merge_weekly_kpi(b, [("u2", 0.2, 0.1), ("u1", 0.2, 0.1)], week_start=week, target=0.0,
                                     p_week=date(2026, 12, 14), run_id="r-b", source="posterior",
                                     window_end=week)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            t = threading.Thread(target=run_b)
            t.start()
            time.sleep(0.5)  # B is waiting for u1 now (or, unsorted, holds u2)
            merge_weekly_kpi(a, [("u2", 0.1, 0.1)], week_start=week, target=0.0, p_week=date(2026, 12, 14),
                             run_id="r-a", source="posterior", window_end=week)
        t.join(10)
    finally:
        a.close()
        b.close()
    assert not errors, errors
    with connect(db_url) as c:
        assert {r[0] for r in c.execute("SELECT kpis->>'P_run_id' FROM weekly_kpi").fetchall()} == {"r-b"}


def test_refresh_store_and_a_sorted_merge_of_the_same_week_do_not_deadlock(db_url, monkeypatch):
    """metrics._store (refresh_active_users / calculate_and_store_weekly_kpi) merges one group per
    (target, p_week, run, source, window) in ONE transaction: users of the first group (here the
    run path: u1, u3) are written before the second group's (the Normal path: u2), so the
    transaction's rows are not locked in user_id order. _merge_rows' docstring says every writer
    locks in user_id order "so two merges cannot deadlock"; a concurrent sorted merge of the same
    week (weekly_kpi_P's merge of a re-run with students u2, u3) then deadlocked with the refresh.
    The project's P writers of one week now take turns."""
    answers = [
        GoalAnswer("u1", 0.0, 0.6, 0.1, None, "run", (), "r-old", "native", P_WEEK, None, 5, NEW_WEEK),
        GoalAnswer("u2", 0.0, 0.4, 0.2, None, "normal", (), None, "normal", None, None, None, None),
        GoalAnswer("u3", 0.0, 0.7, 0.1, None, "run", (), "r-old", "native", P_WEEK, None, 5, NEW_WEEK),
    ]
    errors: list[BaseException] = []
    second_group = threading.Event()
    calls = {"n": 0}
    real = metrics.merge_weekly_kpi

    def slow_second_group(conn, rows, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the refresh holds u1, u3; let the other merge start meanwhile
            second_group.set()
            time.sleep(0.6)
        return real(conn, rows, **kw)

    monkeypatch.setattr(metrics, "merge_weekly_kpi", slow_second_group)

    def refresh():
        try:
            with connect(db_url) as c:
                c.execute("SET deadlock_timeout = '100ms'")
                c.commit()
                metrics._store(c, answers, NEW_WEEK, "growth")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def weekly_merge():
        second_group.wait(10)
        try:
            with connect(db_url) as c:
                c.execute("SET deadlock_timeout = '100ms'")
                c.commit()
                real(c, [("u2", 0.5, 0.1), ("u3", 0.5, 0.1)], week_start=NEW_WEEK, target=0.0, p_week=P_WEEK,
                     run_id="r-new", source="native", window_end=NEW_WEEK)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=refresh), threading.Thread(target=weekly_merge)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors


def test_a_regrade_that_fails_the_run_waits_for_the_merge_that_read_it_passed(db_url):
    """weekly_kpi_P reads its run's status, then merges its P. A growth_brms_meta of the same
    partition that regrades the fit with stricter thresholds (failed_checks) committed in
    between, and the P of a failed run was written all the same (suspected by review). The
    merge now holds its run's record from the read to its commit: the regrade waits."""
    import dagster as dg

    from growth_assets.defs.growth import assets as assets_mod
    from growth_assets.defs.growth import weekly_assets, weekly_kpi_P
    from growth_assets_tests.support.graph import PARTITION, ReplayEngine, resources, seed_db

    url = seed_db(db_url, 20, seed=3)
    res = resources(url, ReplayEngine())
    assert dg.materialize(weekly_assets, partition_key=PARTITION, resources=res).success
    real, regrade = assets_mod.merge_run_into_weekly_kpi, {}

    def merge_after_a_regrade(conn, run_id, **kw):
        with connect(url) as other:  # the regrade, between the read and the merge
            other.execute("SET lock_timeout = '1s'")
            try:
                other.execute("UPDATE growth_brms_meta SET status = 'failed_checks' WHERE run_id = %s", (run_id,))
                other.commit()
                regrade["committed"] = True
            except psycopg.errors.LockNotAvailable:
                regrade["waited"] = True
        return real(conn, run_id, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(assets_mod, "merge_run_into_weekly_kpi", merge_after_a_regrade)
    try:
        assert dg.materialize([weekly_kpi_P], partition_key=PARTITION, resources=res).success
    finally:
        mp.undo()
    assert regrade == {"waited": True}
