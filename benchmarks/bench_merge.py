"""``weekly_kpi_P``'s merge (``merge_run_into_weekly_kpi``) of a million students, against
another checkout's, side by side on one database.

A throwaway cluster holds one passed run of N made-up student rows (``bench_metrics``), vacuumed
so that no merge pays for the first read of fresh rows. Each round runs each checkout in turn,
each in a fresh process: the merge into a week with no rows yet (the Monday run: N inserts),
then the same merge again (a retried step: N updates of the rows just written). Per merge:
wall seconds and the CPU seconds of the server backend that ran it; the checkouts must write
the same ``kpis`` (an md5 over every row, in key order).

    python benchmarks/bench_merge.py --students 1000000 --baseline ../old-checkout --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
CASES = ("new week", "same week again")
FINGERPRINT = "SELECT md5(string_agg(user_id || ':' || kpis::text, ',' ORDER BY user_id)) FROM weekly_kpi"


def worker(src: str, url: str) -> dict:
    """In a fresh process with checkout ``src``: the two merges, timed."""
    sys.path.insert(0, src)
    import psycopg

    import growth_assets
    from bench_metrics import RUN_ID, WEEK
    from bench_metrics import backend_cpu_s
    from growth_assets.db.writers import merge_run_into_weekly_kpi

    assert Path(growth_assets.__file__).resolve().is_relative_to(Path(src).resolve()), growth_assets.__file__
    out: dict = {}
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE weekly_kpi")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE weekly_kpi")
        conn.autocommit = False
        pid = conn.info.backend_pid
        for case in CASES:
            t, cpu = time.perf_counter(), backend_cpu_s(pid)
            n = merge_run_into_weekly_kpi(conn, RUN_ID, week_start=WEEK, target=0.0, p_week=date(2027, 3, 1),
                                          source="native", window_end=WEEK)
            conn.commit()
            out[case] = {"seconds": time.perf_counter() - t, "server_cpu_s": backend_cpu_s(pid) - cpu, "rows": n}
        out["fingerprint"] = conn.execute(FINGERPRINT).fetchone()[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=10_000, help="student rows of the run (the issue's: 1000000)")
    ap.add_argument("--rounds", type=int, default=3, help="times each checkout is measured, in turn")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    ap.add_argument("--out", type=Path, help="folder for merge.json / merge.md")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    from bench_metrics import run_checkout, store_synthetic_run, throwaway_database
    from growth_assets.db import connect
    from growth_assets.db.connection import project_conninfo

    res: dict = {"students": args.students, "rounds": args.rounds,
                 "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    codes = [("current", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    runs: dict[str, list[dict]] = {label: [] for label, _ in codes}
    with throwaway_database("bench-merge-") as url:
        with connect(url) as conn:
            store_synthetic_run(conn, [f"s{i:07d}" for i in range(args.students)], 6)
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM (ANALYZE)")
        url = project_conninfo(url)
        for _ in range(args.rounds):  # in turn, so that a slow spell of the machine falls on both
            for label, src in codes:
                runs[label].append(run_checkout("bench_merge", src, url))
                print(label, json.dumps(runs[label][-1]), flush=True)
    res["runs"] = runs
    prints = {r["fingerprint"] for got in runs.values() for r in got}
    res["same_kpis"] = len(prints) == 1
    if args.baseline:
        res["baseline_src"] = args.baseline.name

    def med(label: str, case: str, key: str) -> float:
        return statistics.median(r[case][key] for r in runs[label])

    lines = ["# `weekly_kpi_P`'s merge (`merge_run_into_weekly_kpi`)", "",
             f"{res['at']}, {args.students:,} students, local PostgreSQL, {res['machine']['cpus']} CPUs,"
             f" {args.rounds} rounds, each checkout in a fresh process in turn; medians over the rounds"
             " (wall seconds; CPU seconds of the server backend).", "",
             "| code | " + " | ".join(f"{c} s | {c} server CPU s" for c in CASES) + " |",
             "|---|" + "---:|---:|" * len(CASES)]
    for label, _ in codes:
        lines.append(f"| {label} | " + " | ".join(f"{med(label, c, 'seconds'):.2f} | {med(label, c, 'server_cpu_s'):.2f}"
                                                  for c in CASES) + " |")
    if args.baseline:
        lines += [""] + [f"- {c}: current / baseline {med('current', c, 'seconds') / med('baseline', c, 'seconds'):.2f}"
                         f" in wall time, {med('current', c, 'server_cpu_s') / med('baseline', c, 'server_cpu_s'):.2f}"
                         " in the server's CPU time" for c in CASES]
    lines += ["", f"The same kpis from every code and round (md5 over every row): {res['same_kpis']}."]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-merge-out-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "merge.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "merge.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if res["same_kpis"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
