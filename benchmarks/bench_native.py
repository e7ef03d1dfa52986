"""Time the native engine on synthetic cohorts of N students x 12 weeks.

Each size runs in its own subprocess (a fresh Python: JAX import, JIT or the persistent
compilation cache, data generation, the fit), so its peak RSS (``ru_maxrss``) is that of
one fit. Results go to ``benchmarks/results/native.json`` and ``native.md``.

    python benchmarks/bench_native.py --sizes 10000,100000,1000000

The synthetic panel follows spec §2 (in score units of a theta scale): b = (0.0, 0.05),
sd = (0.8, 0.06), cor = 0.3, sigma = 0.35; every student-week is observed with
probability 0.8 (at least one week per student), so the cohort has missing weeks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def synthetic_panel(n_students: int, n_weeks: int = 12, p_obs: float = 0.8, seed: int = 7):
    from growth_assets.demo.cohort import simulate_panel

    return simulate_panel(n_students, seed, n_weeks=n_weeks, p_obs=p_obs)


def worker(n_students: int, n_chains: int, n_samples: int, seed: int, data_seed: int) -> dict:
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    panel = synthetic_panel(n_students, seed=data_seed)
    t_gen = time.perf_counter() - t0
    from growth_assets.model import contract
    from growth_assets.model.engine import FitSettings
    from growth_assets.model.native import NativeEngine
    from growth_assets.model.panel import Panel
    from growth_assets.model.result import fit_panel
    from growth_assets.settings import NativeRuntime

    t_import = time.perf_counter() - t0 - t_gen
    settings = FitSettings(n_chains=n_chains, n_samples=n_samples, seed=seed,
                           horizon_week=15, target=0.5)
    runtime = NativeRuntime.from_env()
    t1 = time.perf_counter()
    pn = Panel.from_frame(panel)
    del panel
    t_panel = time.perf_counter() - t1
    engine = NativeEngine(runtime)
    t2 = time.perf_counter()
    fit = fit_panel(engine, pn, settings)  # the fit, checked against its request
    t_fit = time.perf_counter() - t2
    res = fit.header_json()
    res["n_obs"] = fit.n_obs
    d = res["diagnostics"]
    return {
        "n_students": n_students,
        "n_rows": res["n_obs"],
        "n_groups": res["sampler"]["n_groups"],
        "n_chains": n_chains,
        "n_samples": n_samples,
        "data_seed": data_seed,
        "fit_s": round(t_fit, 2),
        "phases_s": {k: round(v, 2) for k, v in d["timings_s"].items()},
        "generate_s": round(t_gen, 2),
        "panel_s": round(t_panel, 2),
        "import_s": round(t_import, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "max_rhat": round(d["max_rhat"], 4),
        "min_ess_bulk": round(d["min_ess_bulk"], 0),
        "n_divergent": d["n_divergent"],
        "n_max_treedepth": d["n_max_treedepth"],
        "n_p_exact": res["p_method"]["n_p_exact"],
        "program": res["sampler"].get("program"),
        # home folded to ~: results are committed, and carry no path of the machine
        "jax_cache_dir": str(runtime.cache_dir).replace(os.path.expanduser("~"), "~", 1),
        "estimates": {p: round(res["posterior_summary"][p]["mean"], 4)
                      for p in contract.POPULATION_PARAMS},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000",
                    help="comma-separated numbers of students (e.g. 10000,100000,1000000)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1234, help="sampler seed")
    ap.add_argument("--data-seed", type=int, default=7, help="seed of the synthetic panel")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench-native"),
                    help="results path without extension (.json and .md are written); "
                         "benchmarks/results/native to update the committed results")
    ap.add_argument("--repeat", type=int, default=1,
                    help="fresh processes per size; the fastest (process wall) is reported")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.chains, args.samples, args.seed,
                                args.data_seed)))
        return 0

    rows = []
    for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
        cmd = [sys.executable, __file__, "--worker", str(n), "--chains", str(args.chains),
               "--samples", str(args.samples), "--seed", str(args.seed),
               "--data-seed", str(args.data_seed)]
        tries = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                tries = [{"n_students": n, "error": proc.stderr.strip().splitlines()[-1:]}]
                break
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["process_wall_s"] = round(wall, 2)
            tries.append(row)
        row = min(tries, key=lambda r: r.get("process_wall_s", math.inf))
        if len(tries) > 1:
            row["process_wall_all_s"] = [r["process_wall_s"] for r in tries]
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "jax_cache_dir": os.environ.get("GROWTH_JAX_CACHE_DIR", "(default)"),
        "load_average_at_start": os.getloadavg(),
        "repeat": args.repeat,
        "note": "fit_s = fit_panel(NativeEngine) (reduce, Laplace, NUTS, students, the check "
                "against the request); panel_s = the columns from the table; process_wall_s adds interpreter start, imports, data generation "
                "(the fastest of `repeat` fresh processes); "
                "peak_rss_mb = ru_maxrss of the worker process; program = where the "
                "compiled sampler came from (traced in the process, or loaded from the "
                "executable cache: file)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    lines = [
        "# Native engine benchmark", "",
        f"{meta['when']}; Python {meta['python']}; {meta['machine']}; "
        f"{args.chains} chains x {args.samples} iterations; synthetic data seed "
        f"{args.data_seed}; JAX cache {meta['jax_cache_dir']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average_at_start'])}.", "",
        "| students | rows | groups | fit s | sample s | students s | process s | "
        "peak RSS MB | max R-hat | min ESS bulk | divergent | program |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n_students']} | error: {r['error']} |")
            continue
        ph = r["phases_s"]
        lines.append(
            f"| {r['n_students']:,} | {r['n_rows']:,} | {r['n_groups']} | {r['fit_s']} | "
            f"{ph['sample']} | {ph['students']} | {r['process_wall_s']} | {r['peak_rss_mb']} | "
            f"{r['max_rhat']} | {r['min_ess_bulk']:.0f} | {r['n_divergent']} | "
            f"{r.get('program', '')} |")
    lines += ["", meta["note"] + ".", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
