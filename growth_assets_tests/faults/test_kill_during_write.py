"""kill -9 of a writer in the middle of its write leaves nothing half-written: each write of
a run is one transaction (issue: nothing silently wrong, the fault suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
sys.path.insert(0, {repo!r})
import psycopg
from growth_assets.db.writers import write_fit, merge_weekly_kpi
from growth_assets_tests.support.results import make_result
from datetime import date
with psycopg.connect({url!r}) as conn:
    if {what!r} == "fit":
        write_fit(conn, make_result(300_000))
    else:
        rows = [(f"u{{i:07d}}", 0.5, 0.1) for i in range(300_000)]
        merge_weekly_kpi(conn, rows, week_start=date(2026, 11, 23), target=0.0, p_week=date(2026, 12, 14),
                         run_id="native-20261123-043000", source="native", window_end=date(2026, 11, 23))
"""


def _copy_running(url: str, table: str) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
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
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM growth_fit").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM growth_student_posterior").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM weekly_kpi").fetchone()[0] == 0
