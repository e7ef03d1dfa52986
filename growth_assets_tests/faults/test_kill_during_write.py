"""kill -9 of a writer in the middle of its write leaves nothing half-written: each write of
a run is one transaction (issue: nothing silently wrong, the fault suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from growth_assets.db import connect

REPO = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
sys.path.insert(0, {repo!r})
from growth_assets.db import connect
from growth_assets.db.writers import write_fit, merge_weekly_kpi
from growth_assets_tests.support.results import make_result
from datetime import date
with connect({url!r}) as conn:
    if {what!r} == "fit":
        write_fit(conn, make_result(300_000))
    else:
        rows = [(f"u{{i:07d}}", 0.5, 0.1) for i in range(300_000)]
        merge_weekly_kpi(conn, rows, week_start=date(2026, 11, 23), target=0.0, p_week=date(2026, 12, 14),
                         run_id="native-20261123-043000", source="native", window_end=date(2026, 11, 23))
"""


def _copy_running(url: str, table: str) -> bool:
    with connect(url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE %s AND state = 'active'",
                         (f"COPY {table}%",)).fetchone()[0] > 0


@pytest.mark.parametrize("what, table", [("fit", "growth_student_posterior"), ("merge", "_kpi_p")])
def test_kill_9_mid_copy_leaves_nothing(db_url, what, table):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=str(REPO), url=db_url, what=what)],
                            env=dict(os.environ))
    deadline = time.monotonic() + 120
    try:
        while not _copy_running(db_url, table):
            assert proc.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline, "the COPY never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # what the OOM killer does
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)  # the server notices the dropped connection and rolls back
    with connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM growth_fit").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM weekly_kpi").fetchone()[0] == 0


def _kill_when(db_url: str, code: str, started, what: str) -> None:
    """Run ``code`` in a child process, kill -9 it once ``started()`` is true."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    deadline = time.monotonic() + 120
    try:
        while not started():
            assert proc.poll() is None, f"the {what} finished before it could be killed"
            assert time.monotonic() < deadline, f"the {what} never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)


def _active(db_url: str, prefix: str) -> bool:
    with connect(db_url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE %s AND state = 'active'"
                         " AND pid <> pg_backend_pid()", (prefix + "%",)).fetchone()[0] > 0


_PANEL = """
import sys
sys.path.insert(0, {repo!r})
from growth_assets.db import connect
from datetime import date, datetime, timezone
from growth_assets.defs.growth import panel
from growth_assets.model.window import Window
panel.SPLIT_MIN_SAMPLE = {min_sample!r}
with connect({url!r}) as conn:
    panel.build_panel(conn, Window(date(2026, 11, 23), 12), "theta", now=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["one statement", "two halves"])
def test_kill_9_mid_panel_rebuild_keeps_the_previous_panel(db_url, path):
    """The panel of a window is rebuilt in place (delete, insert, stats): a rebuild killed
    while it stores the rows (one statement's INSERT, or the COPY of the two halves read on
    other connections) leaves the previous panel and its meta exactly as they were."""
    from datetime import date, datetime, timezone

    from growth_assets.defs.growth.panel import build_panel
    from growth_assets.model.window import Window

    with connect(db_url) as c:
        c.execute("""INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)
                     SELECT 'u' || lpad(i::text, 7, '0'), (i % 97) / 100.0, 0.2, 'mirt', 'v1',
                            timestamptz '2026-09-01 10:00+00' + (w * 7 || ' days')::interval
                     FROM generate_series(1, 60000) i, generate_series(0, 11) w""")
        c.commit()
        before = build_panel(c, Window(date(2026, 11, 23), 12), "theta",
                             now=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
        rows_before = c.execute("SELECT count(*), sum(score::numeric) FROM growth_panel_rows").fetchone()
        meta_before = c.execute("SELECT stats, created_at FROM growth_panel_meta").fetchall()
        c.execute("UPDATE mirt_ability SET theta = theta + 1")  # what the rebuild would change
        c.commit()
    assert before.n_rows == 60000 * 12
    # the statement that stores the panel: one statement's INSERT is a CTE of it, past the 1 KB
    # of query text pg_stat_activity shows; the halves' rows go in by the builder's COPY
    min_sample, storing = ((10**12, "%WITH students AS (") if path == "one statement"
                           else (1, "COPY growth_panel (panel_id"))
    _kill_when(db_url, _PANEL.format(repo=str(REPO), url=db_url, min_sample=min_sample),
               lambda: _active(db_url, storing), "panel build")
    with connect(db_url) as c:
        assert c.execute("SELECT count(*), sum(score::numeric) FROM growth_panel_rows").fetchone() == rows_before
        assert c.execute("SELECT stats, created_at FROM growth_panel_meta").fetchall() == meta_before


_RECORD = """
import sys
sys.path.insert(0, {repo!r})
from growth_assets.db import connect
from growth_assets.db.writers import jsonable, write_run_record
from growth_assets_tests.support.results import make_result
with connect({url!r}) as conn:
    write_run_record(conn, jsonable(make_result(3).header_json()), status="failed_checks",
                     status_reasons=["a newer verdict that must not half-land"])
"""


def test_kill_9_mid_run_record_keeps_the_previous_record(db_url):
    """The run record's upsert waits on a lock (here: a reader holding the row), and the
    writer is killed there: the stored record keeps its status and reasons."""
    from growth_assets.db.writers import jsonable, write_fit, write_run_record
    from growth_assets_tests.support.results import make_result

    res = make_result(3)
    with connect(db_url) as c:
        write_fit(c, res)
        write_run_record(c, jsonable(res.header_json()), status="passed")
        before = c.execute("SELECT status, status_reasons, posterior_summary FROM growth_brms_meta").fetchall()
    with connect(db_url) as holder:
        holder.execute("SELECT 1 FROM growth_brms_meta FOR UPDATE")  # held until the kill

        def waiting() -> bool:
            with connect(db_url, autocommit=True) as c:
                return c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND query ILIKE 'INSERT INTO growth_brms_meta%'").fetchone()[0] > 0

        _kill_when(db_url, _RECORD.format(repo=str(REPO), url=db_url), waiting, "run record")
        holder.rollback()
    time.sleep(0.5)
    with connect(db_url) as c:
        assert c.execute("SELECT status, status_reasons, posterior_summary FROM growth_brms_meta").fetchall() == before
        assert c.execute("SELECT count(*) FROM growth_brms_meta").fetchone()[0] == 1
