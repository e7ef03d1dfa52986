"""The whole weekly job, per step, at several cohort sizes: seconds and peak memory.

For each size: a fresh database on a throwaway local PostgreSQL, ``growth-assets seed-demo``
in its own process (timed, peak RSS; once per size: every code runs on the same source rows,
after migrating the database to its own schema), then the weekly job in a fresh Python process
(``weekly_growth_job`` through ``execute_in_process`` with the partition of the seeded
window, native engine). Per step: wall seconds from Dagster's step events, and the peak RSS
of the process while that step ran (sampled every 20 ms). ``--baseline SRC`` runs the same
sizes with another checkout of the project (for example a ``git worktree`` of an older
commit) side by side, on the same machine in the same run, so the ratios compare like with
like.

    python benchmarks/bench_weekly.py --sizes 10000,100000 --out /tmp/weekly
    python benchmarks/bench_weekly.py --sizes 1000000 --baseline ../old-checkout --out DIR

Results: ``DIR/weekly.json`` and ``DIR/weekly.md`` (default: a temporary folder; the
committed results in ``benchmarks/results/`` are written only when you name that folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from growth_assets.db import connect

REPO = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-23"  # a Monday: the seeded window is the 12 weeks before it
PARTITION = "2026-11-16"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_job_worker(src: str, url: str, n_chains: int, n_samples: int) -> dict:
    """In a fresh process: the weekly job of PARTITION, with per-step time and peak RSS."""
    sys.path.insert(0, src)
    os.environ.update(DATABASE_URL=url, GROWTH_ENGINE="native", BRMS_N_CHAINS=str(n_chains),
                      BRMS_N_SAMPLES=str(n_samples))
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.time(), _rss_mb()))
            stop.wait(0.02)

    t_import = time.perf_counter()
    import dagster as dg

    import growth_assets
    from growth_assets.defs import build_definitions

    assert Path(growth_assets.__file__).resolve().is_relative_to(Path(src).resolve()), growth_assets.__file__
    defs = build_definitions()
    job = defs.resolve_job_def("weekly_growth_job")
    t_import = time.perf_counter() - t_import
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    with dg.instance_for_test() as instance:
        res = job.execute_in_process(partition_key=PARTITION, instance=instance, raise_on_error=False)
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        steps: dict[str, dict] = {}
        for e in instance.all_logs(res.run_id):
            ev = e.dagster_event
            if ev is None or ev.step_key is None:
                continue
            st = steps.setdefault(ev.step_key, {})
            if ev.event_type_value == "STEP_START":
                st["start"] = e.timestamp
            elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                st["end"] = e.timestamp
                st["status"] = ev.event_type_value
    out_steps = {}
    for key, st in steps.items():
        if "start" not in st or "end" not in st:
            continue
        peak = max((m for t, m in samples if st["start"] <= t <= st["end"]), default=float("nan"))
        out_steps[key] = {"seconds": round(st["end"] - st["start"], 2), "peak_rss_mb": round(peak, 0),
                          "status": st["status"]}
    return {"success": res.success, "job_seconds": round(wall, 2),
            "import_seconds": round(t_import, 2), "steps": out_steps,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)}


_SEED = ("import resource, sys; from growth_assets.cli import main; rc = main(sys.argv[1:]); "
         "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def _seed(n: int, env: dict, truth: Path) -> tuple[float, float]:
    """seed-demo in its own process: (seconds, peak RSS MB)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _SEED, "seed-demo", "--students", str(n), "--weeks", "12",
                        "--seed", "1", "--as-of", AS_OF, "--truth-out", str(truth)],
                       env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"seed-demo failed: {p.stderr[-2000:]}")
    kb = [int(x.split()[1]) for x in p.stdout.splitlines() if x.startswith("PEAK_RSS_KB")]
    return dt, kb[-1] / 1024


def _job(src: Path, url: str, args) -> dict:

    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(src)}
    if args.cold:  # a machine whose programs are compiled afresh: an empty cache
        env["GROWTH_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-jax-")
    # every code starts from the same state: the seeded source tables, analysed, and nothing
    # an earlier code's run wrote (its panel, fits, runs, weekly_kpi rows)
    with connect(url, autocommit=True) as c:
        derived = [r[0] for r in c.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname IN ('public', 'growth') AND (tablename LIKE 'growth%'"
            " AND tablename <> 'growth_schema_migrations' OR tablename IN ('weekly_kpi', 'dagster_asset_value'))")]
        for table in derived:  # one at a time: before 0011, TRUNCATE of growth_fit and its student rows
            c.execute(f"TRUNCATE {table} CASCADE")  # in one statement failed (see that migration)
        c.execute("VACUUM ANALYZE")
    # cwd = the code's own folder: `python -c` puts the working directory first on sys.path
    subprocess.run([sys.executable, "-c", "import sys; from growth_assets.cli import main; "
                    "sys.exit(main(['db', 'migrate']))"], env=env, check=True, capture_output=True, cwd=src)
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(src), url,
                          str(args.chains), str(args.samples)], env=env, capture_output=True, text=True, cwd=src)
    if out.returncode != 0:
        raise RuntimeError(f"job worker failed: {out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    with connect(url) as c:  # the P the job published, for the comparison of codes
        got = c.execute('SELECT user_id, "P" FROM growth_student_posterior ORDER BY user_id').fetchall()
    row["_P"] = dict(got)
    return row


def bench_size(codes: list[tuple[str, Path]], admin_url: str, n: int, args) -> list[dict]:
    """One database per size, seeded once by the first code; each code then migrates it to
    its own schema and runs the job on the same source rows, in the order given."""
    import psycopg

    db = f"bench_{n}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{db}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + db
    truth = Path(tempfile.mkdtemp()) / "truth.csv"
    # seeded by the first code (the baseline): a newer code's migrations cannot be undone by an
    # older code, and each code then migrates the database to its own schema in turn
    seed_s, seed_peak = _seed(n, {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(codes[0][1])}, truth)
    rows: list[dict] = []
    published: dict[str, dict[str, float]] = {}
    for label, src in codes:
        if label in args.warm:  # a run first, unreported: its caches are then as on a Monday
            _job(src, url, args)
        row = {"label": label, "students": n, "seed_seconds": round(seed_s, 1),
               "seed_peak_rss_mb": round(seed_peak), **_job(src, url, args)}
        if not row["success"]:
            raise RuntimeError(f"{label} at {n}: the weekly job failed: {row['steps']}")
        p = row.pop("_P")
        if rows:  # the same data and seed: how far this code's P is from the first code's
            first = published[rows[0]["label"]]
            row["students_in_both"] = len(first.keys() & p.keys())
            row["max_abs_dP_vs_" + rows[0]["label"]] = max(
                (abs(first[u] - p[u]) for u in first.keys() & p.keys()), default=float("nan"))
        published[label] = p
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    steps = ["weekly_scores", "brms_posterior", "growth_brms_meta", "weekly_kpi_P"]
    lines = [f"# Weekly job per step ({meta['when']}, {meta['machine']})", "",
             f"native engine, {meta['chains']} chains x {meta['samples']} iterations, "
             f"{meta.get('jax_cache', 'the shared JAX cache')}; seconds "
             "(peak RSS MB of the job process during the step)", "",
             "| code | students | seed-demo s (MB) | " + " | ".join(steps) + " | whole job s | job peak MB |",
             "|---|---:|---:|" + "---:|" * len(steps) + "---:|---:|"]
    for r in rows:
        cells = []
        for s in steps:
            st = r["steps"].get(s)
            cells.append(f"{st['seconds']} ({st['peak_rss_mb']:.0f})" if st else "–")
        lines.append(f"| {r['label']} | {r['students']:,} | {r['seed_seconds']} ({r['seed_peak_rss_mb']}) | " + " | ".join(cells)
                     + f" | {r['job_seconds']} | {r['peak_rss_mb']:.0f} |")
    base = {r["students"]: r for r in rows if r["label"] == "baseline"}
    ratios = [f"- {r['students']:,} students: whole job {base[r['students']]['job_seconds'] / r['job_seconds']:.2f}x "
              f"faster than the baseline, peak {r['peak_rss_mb']:.0f} MB vs {base[r['students']]['peak_rss_mb']:.0f} MB"
              for r in rows if r["label"] == "current" and r["students"] in base]
    if ratios:
        lines += ["", "Ratios (baseline / current, same machine, same run):", *ratios]
    same = [f"- {r['students']:,} students: max |P(current) - P(baseline)| = {r['max_abs_dP_vs_baseline']:.2g}"
            f" over {r['students_in_both']:,} students in both" for r in rows if "max_abs_dP_vs_baseline" in r]
    if same:
        lines += ["", "The same data and seed, the same P:", *same]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, src, url, chains, samples = sys.argv
        print(json.dumps(run_job_worker(src, url, int(chains), int(samples))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000", help="comma-separated cohort sizes (default 10000)")
    ap.add_argument("--baseline", help="another checkout of the project, run side by side")
    ap.add_argument("--warm", default="", help="comma-separated labels (baseline,current) whose job runs "
                    "once, unreported, before the measured run (fills the JAX caches for the sizes' shapes)")
    ap.add_argument("--cold", action="store_true", help="each measured job with an empty JAX cache of its own"
                    " (its programs traced and compiled in the job, as on a new machine)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", help="folder for weekly.json / weekly.md (default: a temporary folder)")
    args = ap.parse_args()
    args.warm = {x for x in args.warm.split(",") if x}
    if args.cold and args.warm:
        ap.error("--cold and --warm contradict each other")
    sys.path.insert(0, str(REPO))
    from growth_assets.db import localpg

    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-weekly-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    tmp.chmod(0o755)
    cluster = localpg.ensure_cluster(tmp / "data")
    rows = []
    try:
        codes = ([("baseline", Path(args.baseline).resolve())] if args.baseline else []) + [("current", REPO)]
        for n in [int(x) for x in args.sizes.split(",")]:
            rows += bench_size(codes, cluster.url("postgres"), n, args)
    finally:
        cluster.stop()
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine":
            f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
            "chains": args.chains, "samples": args.samples,
            "jax_cache": "an empty JAX cache per job (--cold)" if args.cold else "the shared JAX cache"}
    (out_dir / "weekly.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out_dir / "weekly.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
