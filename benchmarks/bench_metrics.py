"""Latency of ``growth_assets.metrics`` on a local PostgreSQL.

A throwaway cluster (``localpg.ensure_cluster`` in a temp dir), migrated, holds N users split
evenly over the four paths of the chain:

- ``stored``: in the latest passed run, with a valid stored P in weekly_kpi (+ 1 theta);
- ``run``: in the run, a weekly_kpi row without P (another writer's keys) (+ 1 theta);
- ``population``: not in the run, 7 thetas every other week since the window start (the last
  in the week of the run);
- ``normal``: not in the run, 2 thetas from before the window.

Measured: p50 / p99 of one ``compute_goal_attainment_probability`` call per path (each call
is a fresh chain: 3-5 queries on one open connection), the batch form for all N users (one
query per path), and ``refresh_active_users`` for the week (batch + merge of every user).

    python benchmarks/bench_metrics.py --users 100000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WINDOW_START = date(2026, 8, 31)
WEEK = date(2026, 11, 23)
RUN_ID = "native-20261123-043000"
H = 15


def uid(i: int) -> str:
    return f"u{i:07d}"


def path_of(i: int) -> str:
    return ("stored", "run", "population", "normal")[i % 4]


MEANS = {"b_Intercept": -0.5, "b_week": 0.05, "sd_student_id__Intercept": 0.8,
         "sd_student_id__week": 0.04, "cor_student_id__Intercept__week": 0.2, "sigma": 0.3}


@contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """The URL of a migrated database on a throwaway local cluster (in a temporary folder),
    stopped and removed after the block."""
    from growth_assets.db import localpg
    from growth_assets.db.migrate import migrate

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)
    cluster = localpg.ensure_cluster(tmp / "data")
    try:
        url = cluster.url()
        migrate(url, apply_source_changes=True)
        yield url
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run_checkout(module: str, src: Path, *args) -> dict:
    """``module.worker(str(src), *args)`` (a benchmark of this folder) in a fresh process in
    the checkout ``src``, which that worker puts first on its path: its JSON result."""
    here = str(Path(__file__).resolve().parent)
    code = (f"import json, sys; sys.path.insert(0, {here!r}); import {module} as b; "
            f"print(json.dumps(b.worker(*{(str(src), *args)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(src),
                         env={**os.environ, "PYTHONPATH": ""})
    if out.returncode != 0:
        raise RuntimeError(f"the worker with {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_cpu_s(pid: int, fields: tuple[int, ...]) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the command's name
    return sum(int(stat[f]) for f in fields) / os.sysconf("SC_CLK_TCK")


def backend_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a server backend has used so far, from /proc (the bench's
    cluster runs on this machine)."""
    return _proc_cpu_s(pid, (11, 12))


def server_cpu_s(pid: int) -> float:
    """``backend_cpu_s`` of a backend, plus the CPU seconds of every backend of its server
    that has exited so far (its postmaster's reaped children, by /proc's cutime and cstime):
    the work of a second connection that a measure opened and closed counts too."""
    postmaster = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return backend_cpu_s(pid) + _proc_cpu_s(postmaster, (13, 14))


def store_synthetic_run(conn, ids: list[str], n_obs: int, draws: dict | None = None,
                        window_sums=None) -> dict[str, float]:
    """A passed run of the window WINDOW_START..WEEK with made-up line posteriors for
    ``ids`` (and ``draws``, the population draws, and ``window_sums``, each student's sums of
    the rows the fit saw, when given); returns each student's P."""
    import numpy as np

    from growth_assets.db.writers import jsonable, write_fit, write_run_record
    from growth_assets.model.contract import FORMULA, POPULATION_PARAMS, line_prediction, priors
    from growth_assets.model.result import FitResult

    rng = np.random.default_rng(1)
    ma = rng.normal(-0.5, 0.5, len(ids))
    mb = rng.normal(0.05, 0.03, len(ids))
    va, vb, cab = 0.04, 0.0004, -0.001
    mu, sd, p = line_prediction(ma, mb, va, vb, cab, H, 0.0)
    sd = np.broadcast_to(sd, mu.shape)
    preds = [{"student_id": u, "n_obs": n_obs, "mean_a": float(ma[k]), "mean_b": float(mb[k]),
              "var_a": va, "var_b": vb, "cov_ab": cab, "mu": float(mu[k]), "sigma": float(sd[k]),
              "P": float(p[k])} for k, u in enumerate(ids)]
    summary = {k: {"mean": MEANS[k], "sd": 0.01, "q5": MEANS[k] - 0.02, "q95": MEANS[k] + 0.02,
                   "rhat": 1.001, "ess_bulk": 1500.0, "ess_tail": 1400.0} for k in POPULATION_PARAMS}
    result = {"run_id": RUN_ID, "engine": "native", "engine_version": "bench", "formula": FORMULA,
              "priors": priors(0.0, 1.0), "seed": 1, "n_chains": 4, "n_samples": 2000,
              "n_warmup": 1000, "n_obs": n_obs * len(preds), "n_students": len(preds),
              "lookback_weeks": 12, "horizon_week": H, "target": 0.0,
              "posterior_summary": summary,
              "diagnostics": {"max_rhat": 1.002, "min_ess_bulk": 900.0, "min_ess_tail": 800.0,
                              "n_divergent": 0, "n_max_treedepth": 0, "elapsed_s": 1.0},
              "predictions": preds}
    if draws is not None:
        result["population_draws"] = draws
    fit = FitResult.from_json(result).validate()
    write_fit(conn, fit, **({"window_sums": window_sums} if window_sums is not None else {}))
    write_run_record(conn, jsonable(fit.header_json()), status="passed", window_start=WINDOW_START,
                     window_end=WEEK, week_start=WEEK, score_source="theta")
    return {pr["student_id"]: pr["P"] for pr in preds}


def time_single_calls(conn, ids: list[str], calls: int) -> list[float]:
    """Milliseconds of one ``compute_goal_attainment_probability`` call each, for a seeded
    sample of ``ids`` (after 20 warm-up calls), on one open connection."""
    from growth_assets.metrics import compute_goal_attainment_probability

    sample = random.Random(7).sample(ids, min(calls, len(ids)))
    for u in sample[:20]:  # warm-up
        compute_goal_attainment_probability(conn, u, target=0.0)
    times = []
    for u in sample:
        t = time.perf_counter()
        compute_goal_attainment_probability(conn, u, target=0.0)
        times.append((time.perf_counter() - t) * 1000)
    conn.rollback()
    return times


def populate(conn, n: int) -> None:
    from psycopg.types.json import Jsonb

    p_of = store_synthetic_run(conn, [uid(i) for i in range(n) if path_of(i) in ("stored", "run")], 12)
    t_week = datetime(2026, 11, 23, 6, tzinfo=timezone.utc)
    with conn.transaction():
        with conn.cursor().copy("COPY mirt_ability (user_id, theta, se, model, version, fitted_at)"
                                " FROM STDIN") as copy:
            for i in range(n):
                u, kind = uid(i), path_of(i)
                if kind in ("stored", "run"):
                    copy.write_row((u, random.gauss(0, 1), 0.25, "m", "v", t_week))
                elif kind == "population":
                    for w in range(0, 14, 2):  # week 12 is WEEK (active in the refresh)
                        copy.write_row((u, random.gauss(0, 1), 0.25, "m", "v",
                                        datetime.combine(WINDOW_START, datetime.min.time(), timezone.utc)
                                        + timedelta(weeks=w, hours=9)))
                else:
                    for d in (20, 10):
                        copy.write_row((u, random.gauss(0, 1), 0.25, "m", "v",
                                        datetime(2026, 8, d, tzinfo=timezone.utc)))
        with conn.cursor().copy("COPY weekly_kpi (user_id, week_start, kpis) FROM STDIN") as copy:
            for i in range(n):
                u, kind = uid(i), path_of(i)
                if kind == "stored":
                    copy.write_row((u, WEEK, Jsonb({"I_t": 1.0, "P": p_of[u], "sigma": 0.3,
                                                    "P_target": 0.0, "P_week": "2026-12-14",
                                                    "P_run_id": RUN_ID, "P_source": "native"})))
                elif kind == "run":
                    copy.write_row((u, WEEK, Jsonb({"I_t": 1.0})))
    conn.execute("ANALYZE")
    conn.commit()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000, help="users in the store (the issue's measure: 100000)")
    ap.add_argument("--calls", type=int, default=300, help="single calls per path")
    ap.add_argument("--batch-reps", type=int, default=3)
    ap.add_argument("--out", type=Path, help="folder for metrics.json / metrics.md (default: a temporary one;"
                                             " the committed results are benchmarks/results)")
    args = ap.parse_args()
    os.environ["METRICS_USE_BAYESIAN"] = "true"
    os.environ.pop("METRICS_DEFAULT_TARGET", None)


    from growth_assets.db import localpg
    from growth_assets.db.migrate import migrate
    from growth_assets.db import connect
    from growth_assets.metrics import (
        compute_goal_attainment_probabilities,
        explain_goal_attainment_probability,
        refresh_active_users,
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    tmp.chmod(0o755)
    cluster = localpg.ensure_cluster(tmp / "data")
    out: dict = {"users": args.users, "calls_per_path": args.calls,
                 "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform()},
                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        url = cluster.url()
        migrate(url, apply_source_changes=True)
        with connect(url) as conn:
            t0 = time.perf_counter()
            populate(conn, args.users)
            out["populate_s"] = time.perf_counter() - t0
            out["pg_version"] = conn.execute("SHOW server_version").fetchone()[0]
            users = [uid(i) for i in range(args.users)]
            # sanity: each user's path is the one it was built for
            for i in range(0, min(args.users, 400)):
                a = explain_goal_attainment_probability(conn, uid(i), target=0.0)
                assert a.path == path_of(i), (uid(i), a.path, a.reasons)
            single = {}
            for kind in ("stored", "run", "population", "normal"):
                times = time_single_calls(conn, [u for i, u in enumerate(users) if path_of(i) == kind], args.calls)
                single[kind] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99),
                                "mean_ms": statistics.fmean(times), "n": len(times)}
                print(kind, single[kind], flush=True)
            out["single_call"] = single
            reps = []
            for _ in range(args.batch_reps):
                t = time.perf_counter()
                ans = compute_goal_attainment_probabilities(conn, users, target=0.0)
                reps.append(time.perf_counter() - t)
                conn.rollback()
            from collections import Counter
            out["batch"] = {"seconds": reps, "median_s": statistics.median(reps),
                            "users_per_s": args.users / statistics.median(reps),
                            "paths": dict(Counter(a.path for a in ans.values()))}
            print("batch", out["batch"], flush=True)
            t = time.perf_counter()
            counts = refresh_active_users(conn, WEEK, target=0.5)
            conn.commit()
            out["refresh_active_users"] = {"seconds": time.perf_counter() - t, "counts": counts}
            print("refresh", out["refresh_active_users"], flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = args.out or Path(tempfile.mkdtemp(prefix="bench-metrics-out-"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["single_call"]
    lines = [
        "# metrics.py latency",
        "",
        f"{out['at']}, {args.users:,} users (a quarter on each path), local PostgreSQL "
        f"{out['pg_version']} (fsync off), {out['machine']['cpus']} CPUs shared, Python "
        f"{out['machine']['python']}. `python benchmarks/bench_metrics.py --users {args.users}`.",
        "",
        "## One call (`compute_goal_attainment_probability`, open connection)",
        "",
        "| path | p50 ms | p99 ms | mean ms | calls |",
        "|---|---:|---:|---:|---:|",
        *[f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['mean_ms']:.2f} | {v['n']} |"
          for k, v in s.items()],
        "",
        "## Batch form and refresh",
        "",
        f"- `compute_goal_attainment_probabilities` for all {args.users:,} users: median "
        f"{out['batch']['median_s']:.2f} s over {args.batch_reps} runs "
        f"({out['batch']['users_per_s']:,.0f} users/s); paths {out['batch']['paths']}.",
        f"- `refresh_active_users` (week {WEEK}, target 0.5, so no stored P is reused: every "
        f"active user is computed and merged): {out['refresh_active_users']['seconds']:.2f} s, "
        f"counts {out['refresh_active_users']['counts']}.",
        f"- populating the database: {out['populate_s']:.1f} s.",
        "",
    ]
    (results / "metrics.md").write_text("\n".join(lines))
    print(f"results in {results}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
