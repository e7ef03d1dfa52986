"""Where ``weekly_scores``'s time goes: the panel query's stages, one at a time, at N students.

A throwaway cluster holds the demo cohort (``seed_cohort``: N students x 12 weeks, the same
rows as ``bench_weekly``'s), vacuumed and analysed. Each round measures, each stage in a
transaction of its own (rolled back) with the build's own settings (``PANEL_SETTINGS``):

- ``scan``: every source's window rows, filtered (the panel query's ``observed``), counted;
- ``scan + sort``: the same rows sorted by (student, week, source), as the panel query does;
- ``panel query``: the whole query (per-source means, first source per student-week) into a
  temporary table (the one stage PostgreSQL may run with parallel workers: CREATE TABLE AS);
- ``two halves at once``: the panel query of each half of the students (a range of ids) on its
  own connection, both at once in one exported snapshot (what splitting the build over two
  server processes would cost: each half still scans every source);
- ``build_panel (new)`` / ``build_panel (again)``: the real build (the panel stored a row per
  student, its counts and exclusions), first into an empty table, then replacing itself.

Per stage: wall seconds and the server's CPU seconds (its backends, from /proc), the median of
the rounds.

    python benchmarks/bench_panel.py --students 1000000 --rounds 3 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

AS_OF = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc)
STAGES = ("scan", "scan + sort", "panel query", "two halves at once", "build_panel (new)", "build_panel (again)")
# each source's "all users" filter, which a half's id range joins
_ALL = re.compile(r"\(%\(users\)s::text\[\] IS NULL OR (\w)\.user_id = ANY \(%\(users\)s::text\[\]\)\)")


def _queries(query: str) -> dict[str, str]:
    head, marker, _ = query.partition("),\nper_source AS (")
    assert marker, "the panel query changed: update bench_panel"
    half = _ALL.sub(r'(\1.user_id COLLATE "C" >= %(id_lo)s::text AND \1.user_id COLLATE "C" < %(id_hi)s::text)', query)
    assert half.count("id_lo") == 4, "the panel query changed: update bench_panel"
    return {
        "scan": f"{head}) SELECT count(*) FROM observed",
        "scan + sort": f"{head}) SELECT count(*) FROM (SELECT * FROM observed ORDER BY student_id, week, priority"
                       " OFFSET 0) s",
        "panel query": f"CREATE TEMP TABLE bench_panel ON COMMIT DROP AS {query}",
        "half": f"CREATE TEMP TABLE bench_half ON COMMIT DROP AS {half}",
    }


def _median_id(conn, params: dict) -> str:
    """The middle student id of the window's mirt_ability and features_topic_daily rows."""
    return conn.execute(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY id) FROM ("
        ' SELECT user_id COLLATE "C" AS id FROM mirt_ability WHERE fitted_at >= %(window_start)s::date'
        ' UNION ALL SELECT user_id COLLATE "C" FROM features_topic_daily WHERE date >= %(window_start)s::date) s',
        params).fetchone()[0]


def _two_halves(url: str, params: dict, sql: str, split: str) -> float:
    """Both halves' panel query at once, on two connections in one snapshot: wall seconds."""
    import psycopg
    from psycopg import sql as psql

    from growth_assets.db import connect
    from growth_assets.defs.growth.panel import PANEL_SETTINGS

    errors: list[BaseException] = []
    pids: list[int] = []
    with connect(url) as lead:
        lead.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        snapshot = lead.execute("SELECT pg_export_snapshot()").fetchone()[0]
        dsn, path = lead.info.dsn, lead.execute("SHOW search_path").fetchone()[0]
        start = threading.Barrier(3)

        def half(lo: str, hi: str) -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as c, c.transaction():
                    pids.append(c.info.backend_pid)
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    c.execute(psql.SQL("SET TRANSACTION SNAPSHOT {}").format(psql.Literal(snapshot)))
                    c.execute("SELECT set_config('search_path', %s, true)", (path,))
                    c.execute(PANEL_SETTINGS)
                    start.wait()
                    c.execute(sql, {**params, "id_lo": lo, "id_hi": hi})
            except BaseException as e:  # reported by the caller
                errors.append(e)
                start.abort()

        threads = [threading.Thread(target=half, args=args) for args in (("", split), (split, "\U0010ffff"))]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        lead.rollback()
    if errors:
        raise errors[0]
    deadline = time.monotonic() + 10  # their CPU counts once the server has reaped them
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    return wall


def run(url: str, rounds: int) -> dict[str, dict[str, float]]:
    from bench_metrics import server_cpu_s

    from growth_assets.db import connect
    from growth_assets.defs.growth.panel import PANEL_SETTINGS, build_panel, panel_query
    from growth_assets.model.window import Window
    from growth_assets.settings import SCORE_RANGE

    window = Window(AS_OF, 12)
    params = {"window_start": window.start, "window_end": window.end, "now": NOW, "users": None,
              "score_lo": float(SCORE_RANGE[0]), "score_hi": float(SCORE_RANGE[1])}
    sql = _queries(panel_query("theta"))
    got: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    with connect(url) as conn:
        split = _median_id(conn, params)
        conn.rollback()
        pid = conn.info.backend_pid
        for _ in range(rounds):
            conn.execute("DELETE FROM growth_panel")
            conn.execute("DELETE FROM growth_panel_meta")
            conn.commit()
            for stage in STAGES:
                cpu0, t0 = server_cpu_s(pid), time.perf_counter()
                if stage == "two halves at once":
                    wall = _two_halves(url, params, sql["half"], split)
                elif stage.startswith("build_panel"):
                    build_panel(conn, window, "theta", NOW)
                    conn.commit()
                    wall = time.perf_counter() - t0
                else:
                    with conn.transaction(force_rollback=True):
                        conn.execute(PANEL_SETTINGS)
                        conn.execute(sql[stage], params)
                    wall = time.perf_counter() - t0
                got[stage].append((wall, server_cpu_s(pid) - cpu0))
                print(f"{stage}: {wall:.2f} s", flush=True)
    return {s: {"seconds": round(statistics.median(w for w, _ in v), 2),
                "server_cpu_s": round(statistics.median(c for _, c in v), 2),
                "all_seconds": [round(w, 2) for w, _ in v]} for s, v in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="folder for panel.json / panel.md (default: a temporary folder)")
    args = ap.parse_args()
    from bench_metrics import throwaway_database

    from growth_assets.db import connect
    from growth_assets.demo.cohort import seed_cohort

    with throwaway_database("bench-panel-") as url:
        with connect(url) as conn:
            seed_cohort(conn, args.students, 12, 1, AS_OF)
        with connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        stages = run(url, args.rounds)
    res = {"students": args.students, "rounds": args.rounds, "stages": stages,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-panel-out-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "panel.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# The panel's stages at {args.students:,} students ({res['at'][:10]}, {os.cpu_count()} CPUs)", "",
             f"`python benchmarks/bench_panel.py --students {args.students} --rounds {args.rounds}`: the median"
             " of the rounds; server CPU = the seconds of the server's backends (both halves' for the"
             " two-connection stage).", "",
             "| stage | seconds | server CPU s | every round |", "|---|---:|---:|---|"]
    lines += [f"| {s} | {v['seconds']} | {v['server_cpu_s']} | {v['all_seconds']} |" for s, v in stages.items()]
    (out / "panel.md").write_text("\n".join(lines) + "\n")
    print(out / "panel.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
