"""The real-time path with a run's population draws ("update"), against today's chain.

A throwaway cluster holds N users, a quarter of each kind:

- ``stored``: in the latest passed run, six scores in the window, none since, a stored P;
- ``update``: in the run, six scores in the window and two in the weeks since (a stale
  stored P): answered from the run's 1000 draws and all eight scores;
- ``new``: not in the run, three scores, the last two after the window;
- ``normal``: not in the run, two thetas from before the window.

Measured per checkout, each in a fresh process on the same database: p50 / p99 of one
``compute_goal_attainment_probability`` call per kind (an open connection, each call a fresh
chain), and the batch form for all N users. ``--baseline SRC`` runs the same with another
checkout, side by side (a checkout from before the schema setting reads the same tables
through the search_path).

    python benchmarks/bench_update.py --users 100000 --baseline ../main-before --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_metrics import server_cpu_s  # noqa: E402  (this folder, on the path just above)
WINDOW_START = date(2026, 8, 31)
WEEK = date(2026, 11, 23)  # the window's end; weeks 12 and 13 have passed since
RUN_ID = "native-20261123-043000"
H = 15
KINDS = ("stored", "update", "new", "normal")


def uid(i: int) -> str:
    return f"u{i:07d}"


def kind_of(i: int) -> str:
    return KINDS[i % 4]


def _at(week: int, hour: int = 9) -> datetime:
    return datetime.combine(WINDOW_START, datetime.min.time(), timezone.utc) + timedelta(weeks=week, hours=hour)


def populate(conn, n: int) -> None:
    import numpy as np
    import pandas as pd
    from psycopg.types.json import Jsonb

    from bench_metrics import MEANS, store_synthetic_run
    from growth_assets.model.contract import POPULATION_PARAMS
    from growth_assets.model.panel import Panel

    rng = np.random.default_rng(2)
    gauss = random.Random(3).gauss  # seeded: the same population every run
    scale = {"b_Intercept": 0.01, "b_week": 0.001, "sd_student_id__Intercept": 0.01,
             "sd_student_id__week": 0.002, "cor_student_id__Intercept__week": 0.05, "sigma": 0.003}
    draws = {k: (MEANS[k] + scale[k] * rng.standard_normal(1000)).tolist() for k in POPULATION_PARAMS}
    weeks_of = {"stored": range(0, 12, 2), "update": (*range(0, 12, 2), 12, 13), "new": (11, 12, 13), "normal": ()}
    scores = {i: [(w, gauss(0, 1)) for w in weeks_of[kind_of(i)]] for i in range(n)}
    in_run = [i for i in range(n) if kind_of(i) in ("stored", "update")]
    seen = [(uid(i), w, y) for i in in_run for w, y in scores[i] if w < 12]  # what the run's fit saw
    sums = Panel.from_frame(pd.DataFrame(seen, columns=["student_id", "week", "score"])).window_sums()
    p_of = store_synthetic_run(conn, [uid(i) for i in in_run], 6, draws=draws, window_sums=sums)
    with conn.transaction():
        with conn.cursor().copy("COPY mirt_ability (user_id, theta, se, model, version, fitted_at)"
                                " FROM STDIN") as copy:
            for i in range(n):
                u, kind = uid(i), kind_of(i)
                for w, y in scores[i]:
                    copy.write_row((u, y, 0.25, "m", "v", _at(w)))
                if kind == "normal":
                    for d in (20, 10):
                        copy.write_row((u, gauss(0, 1), 0.25, "m", "v", datetime(2026, 8, d, tzinfo=timezone.utc)))
        with conn.cursor().copy("COPY weekly_kpi (user_id, week_start, kpis) FROM STDIN") as copy:
            for i in range(n):
                u = uid(i)
                if kind_of(i) in ("stored", "update"):
                    copy.write_row((u, WEEK, Jsonb({"I_t": 1.0, "P": p_of[u], "sigma": 0.3,
                                                    "P_target": 0.0, "P_week": "2026-12-14",
                                                    "P_run_id": RUN_ID, "P_source": "native"})))
    conn.commit()
    # vacuumed and analysed before any measure: an autovacuum of the fresh tables must not
    # fall on the first checkout measured
    conn.autocommit = True
    conn.execute("VACUUM (ANALYZE)")
    conn.autocommit = False


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


class CpuClock:
    """CPU seconds of this process and of the server (its connection's backend, and any other
    backend that exited meanwhile: a batch's second connection, ``server_cpu_s``): what a
    measure cost the two cores, which time stolen from this virtual machine does not inflate
    as it does the wall-clock time (the same checkout's wall time varied 2x within minutes here)."""

    def __init__(self, conn) -> None:
        self.pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.rollback()

    def now(self) -> tuple[float, float]:
        return time.process_time(), server_cpu_s(self.pid)


def worker(src: str, url: str, n: int, calls: int, reps: int) -> dict:
    """In a fresh process with checkout ``src``: p50/p99 of one call per kind (a random
    sample, after 20 warm-up calls, on one open connection) and the batch form for every
    user. ``url``: a connection string with the project's schema on its search_path (a
    checkout from before the schema setting finds its tables there too)."""
    os.environ["METRICS_USE_BAYESIAN"] = "true"
    from collections import Counter

    import psycopg

    # bench_metrics puts this repository first on sys.path when it is imported: it goes
    # before ``src`` does (it did not, until 2026-12-02, and every "baseline" measured was
    # this checkout's own code)
    from bench_metrics import time_single_calls

    sys.path.insert(0, src)
    import growth_assets
    from growth_assets.metrics import compute_goal_attainment_probabilities

    assert Path(growth_assets.__file__).resolve().is_relative_to(Path(src).resolve()), growth_assets.__file__

    users = [uid(i) for i in range(n)]
    out: dict = {"single": {}}
    with psycopg.connect(url) as conn:
        clock = CpuClock(conn)
        time_single_calls(conn, users[:100], 40)  # the process's first calls (imports, the draws) apart
        for kind in KINDS:
            c0, s0 = clock.now()
            times = time_single_calls(conn, [u for i, u in enumerate(users) if kind_of(i) == kind], calls)
            c1, s1 = clock.now()
            out["single"][kind] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "n": len(times),
                                   # per call, warm-up calls included (time_single_calls makes 20 more)
                                   "client_cpu_ms": (c1 - c0) * 1000 / (len(times) + 20),
                                   "server_cpu_ms": (s1 - s0) * 1000 / (len(times) + 20)}
        compute_goal_attainment_probabilities(conn, users[:1000], target=0.0)  # warm-up
        conn.rollback()
        times, client, server = [], [], []
        for _ in range(reps):
            t, (c0, s0) = time.perf_counter(), clock.now()
            ans = compute_goal_attainment_probabilities(conn, users, target=0.0)
            times.append(time.perf_counter() - t)
            c1, s1 = clock.now()
            client.append(c1 - c0)
            server.append(s1 - s0)
            conn.rollback()
    out["batch"] = {"seconds": times, "median_s": statistics.median(times),
                    "client_cpu_s": statistics.median(client), "server_cpu_s": statistics.median(server),
                    "paths": dict(Counter(a.path for a in ans.values()))}
    return out


def best_of(runs: list[dict]) -> dict:
    """Each measure's best over the rounds (the least disturbed by the rest of the machine)."""
    single = {k: dict(min((r["single"][k] for r in runs), key=lambda t: t["p50_ms"])) for k in runs[0]["single"]}
    batch = dict(min((r["batch"] for r in runs), key=lambda b: b["median_s"]))
    for k, t in single.items():  # the CPU measures' own best (of client + server) over the rounds
        best = min((r["single"][k] for r in runs), key=lambda t: t["client_cpu_ms"] + t["server_cpu_ms"])
        t["client_cpu_ms"], t["server_cpu_ms"] = best["client_cpu_ms"], best["server_cpu_ms"]
    best = min((r["batch"] for r in runs), key=lambda b: b["client_cpu_s"] + b["server_cpu_s"])
    batch["client_cpu_s"], batch["server_cpu_s"] = best["client_cpu_s"], best["server_cpu_s"]
    return {"single": single, "batch": batch, "all_rounds": runs}


def run_worker(src: Path, url: str, n: int, calls: int, reps: int) -> dict:
    from bench_metrics import run_checkout

    return run_checkout("bench_update", src, url, n, calls, reps)


def batch_row(label: str, b: dict) -> str:
    return (f"| {label} | {b['median_s']:.2f} | {b['client_cpu_s']:.2f} | {b['server_cpu_s']:.2f} |"
            f" {b['paths']} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000, help="users in the store (the issue's measure: 100000)")
    ap.add_argument("--calls", type=int, default=300, help="single calls per kind")
    ap.add_argument("--batch-reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="times each checkout is measured, in turn (best kept)")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    ap.add_argument("--out", type=Path, help="folder for update.json / update.md")
    args = ap.parse_args()
    os.environ["METRICS_USE_BAYESIAN"] = "true"
    os.environ.pop("METRICS_DEFAULT_TARGET", None)
    sys.path.insert(0, str(REPO))

    from bench_metrics import throwaway_database
    from growth_assets.db import connect
    from growth_assets.db.connection import project_conninfo
    from growth_assets.metrics import explain_goal_attainment_probability

    res: dict = {"users": args.users, "calls_per_kind": args.calls,
                 "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    expect = {"stored": "stored", "update": "update", "new": "update", "normal": "normal"}
    with throwaway_database("bench-update-") as url:
        with connect(url) as conn:
            populate(conn, args.users)
            for i in range(min(args.users, 400)):
                a = explain_goal_attainment_probability(conn, uid(i), target=0.0)
                assert a.path == expect[kind_of(i)], (uid(i), a.path, a.reasons)
            conn.rollback()
        url = project_conninfo(url)  # for the workers' own connections, of either checkout
        codes = [("this", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
        runs: dict[str, list[dict]] = {label: [] for label, _ in codes}
        for _ in range(args.rounds):  # the checkouts in turn, so that a slow spell of the machine falls on both
            for label, src in codes:
                runs[label].append(run_worker(src, url, args.users, args.calls, args.batch_reps))
                print(label, json.dumps(runs[label][-1]), flush=True)
        res["rounds"] = args.rounds
        for label, got in runs.items():
            res[label] = best_of(got)
        if args.baseline:
            res["baseline_src"] = args.baseline.name

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-update-out-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "update.json").write_text(json.dumps(res, indent=2) + "\n")
    base = res.get("baseline")
    def cpu(t: dict) -> float:
        return t["client_cpu_ms"] + t["server_cpu_ms"]

    head = "| kind | path | p50 ms | p99 ms | CPU ms (client + server) |" + (
        " baseline p50 ms | baseline p99 ms | baseline CPU ms | p50 this / baseline | CPU this / baseline |"
        if base else "")
    rule = "|---|---|---:|---:|---:|" + ("---:|---:|---:|---:|---:|" if base else "")
    rows = []
    for k in KINDS:
        t = res["this"]["single"][k]
        row = (f"| {k} | {expect[k]} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} |"
               f" {cpu(t):.2f} ({t['client_cpu_ms']:.2f} + {t['server_cpu_ms']:.2f}) |")
        if base:
            o = base["single"][k]
            row += (f" {o['p50_ms']:.2f} | {o['p99_ms']:.2f} | {cpu(o):.2f} | {t['p50_ms'] / o['p50_ms']:.2f} |"
                    f" {cpu(t) / cpu(o):.2f} |")
        rows.append(row)
    lines = [
        "# The real-time path with population draws (`update`)",
        "",
        f"{res['at']}, {args.users:,} users (a quarter of each kind), local PostgreSQL, "
        f"{res['machine']['cpus']} CPUs. `python benchmarks/bench_update.py --users {args.users}"
        + (" --baseline <another checkout>`" if base else "`") + ": each checkout in a fresh process,"
        f" in turn, on the same database, {res['rounds']} rounds (each measure the best of its rounds).",
        "",
        f"## One call (`compute_goal_attainment_probability`, open connection, {args.calls} calls per kind)",
        "",
        head,
        rule,
        *rows,
        "",
        "## Batch form, every user",
        "",
        "| code | median s | CPU s, client | CPU s, server | paths |",
        "|---|---:|---:|---:|---|",
        batch_row("this checkout", res["this"]["batch"]),
    ]
    if base:
        this_b = res["this"]["batch"]
        lines.append(batch_row(f"baseline ({res['baseline_src']})", base["batch"]))
        lines += ["", f"Batch ratio this / baseline: {this_b['median_s'] / base['batch']['median_s']:.2f} in wall time,"
                  f" {(this_b['client_cpu_s'] + this_b['server_cpu_s']) / (base['batch']['client_cpu_s'] + base['batch']['server_cpu_s']):.2f}"
                  " in CPU time (client + server)."]
    lines += ["", "CPU: seconds of the client process (`time.process_time`) and of its server backend (/proc),"
              " the best round of each; time stolen from the virtual machine does not count in them."]
    (out / "update.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
