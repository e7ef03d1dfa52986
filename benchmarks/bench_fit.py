"""The fit step at national scale: a stored panel of N students to their stored line posteriors.

What ``brms_posterior`` does after ``weekly_scores``, step by step, native engine, in a fresh
process per size: read the stored panel (``load_panel``), fit it (``fit_panel``), the window
sums, store the fit and the students' rows (``write_fit``). Each step's seconds and its peak
RSS (the kernel's high-water mark, reset before each step through ``/proc/self/clear_refs``).

The panel is made in the database, not by the weekly job (seeding ten million students' source
rows and building their panel would take most of an hour here): ``growth_panel`` rows drawn by
SQL from spec §2's model (``setseed``: the same panel every time), 12 weeks, each observed with
probability 0.8 and at least one per student, intercept sd 0.8, slope sd 0.06, cor 0.3, sigma
0.35. A panel already stored for a size is reused.

    python benchmarks/bench_fit.py --sizes 1000000,10000000 --out benchmarks/results/fit
    python benchmarks/bench_fit.py --url postgresql://... --sizes 100000   # an existing database
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_WEEKS = 12

# a student's line: a = 0.8 z1, b = 0.05 + 0.06 (0.3 z1 + sqrt(1 - 0.3^2) z2); scores a + b w + 0.35 e.
# Normal draws by Box-Muller from random(); the outer row's number in the lateral's WHERE keeps
# PostgreSQL from evaluating the lateral once for all rows.
PANEL_SQL = """
INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources, observations)
SELECT %(panel_id)s, 'b' || lpad(i::text, 8, '0'), w.weeks, w.scores,
       array_fill('mirt_ability'::text, ARRAY[cardinality(w.weeks)]),
       array_fill(1, ARRAY[cardinality(w.weeks)])
FROM (SELECT i, sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z1,
             sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z2,
             floor(random() * 12)::int AS always
      FROM generate_series(0, %(n)s - 1) i) s,
LATERAL (SELECT array_agg(wk ORDER BY wk) AS weeks,
                array_agg(0.8 * s.z1 + (0.05 + 0.06 * (0.3 * s.z1 + 0.9539392 * s.z2)) * wk
                          + 0.35 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) ORDER BY wk) AS scores
         FROM generate_series(0, 11) wk
         WHERE s.i >= 0 AND (wk = s.always OR random() < 0.8)) w
"""


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS to the current RSS
        f.write("5")


def ensure_panel(url: str, n: int) -> str:
    """The synthetic panel of ``n`` students (made once per database); its panel_id."""
    from psycopg.types.json import Jsonb

    from growth_assets.db.connection import connect

    panel_id = f"bench-fit-{n}"
    with connect(url) as conn:
        if conn.execute("SELECT 1 FROM growth_panel_meta WHERE panel_id = %s", (panel_id,)).fetchone():
            return panel_id
        t = time.perf_counter()
        with conn.transaction():
            conn.execute("SELECT setseed(0.25)")
            conn.execute(PANEL_SQL, {"panel_id": panel_id, "n": n})
            conn.execute("INSERT INTO growth_panel_meta (panel_id, window_start, window_end, as_of, score_source,"
                         " stats) VALUES (%s, '2026-08-31', '2026-11-22', '2026-11-23', 'theta', %s)",
                         (panel_id, Jsonb({"synthetic": True, "n_students": n})))
        conn.execute("ANALYZE growth_panel")
        print(f"  panel of {n:,} students made in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return panel_id


def worker(url: str, panel_id: str, n_chains: int, n_samples: int, seed: int) -> dict:
    sys.path.insert(0, str(REPO))
    from growth_assets.db.connection import connect
    from growth_assets.db.writers import write_fit
    from growth_assets.defs.growth.panel import load_panel
    from growth_assets.model.engine import FitSettings
    from growth_assets.model.native import NativeEngine
    from growth_assets.model.result import fit_panel
    from growth_assets.settings import NativeRuntime

    steps: dict[str, dict[str, float]] = {}

    def step(name, f, *a, **k):
        _reset_hwm()
        t = time.perf_counter()
        out = f(*a, **k)
        steps[name] = {"s": round(time.perf_counter() - t, 2), "peak_rss_mb": round(_hwm_mb(), 0)}
        return out

    run_id = f"bench-fit-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    settings = FitSettings(n_chains=n_chains, n_samples=n_samples, seed=seed, horizon_week=15, target=0.5,
                           run_id=run_id)
    engine = NativeEngine(NativeRuntime.from_env())
    with connect(url) as conn:
        panel = step("load_panel", load_panel, conn, panel_id)
        n_rows, n_students = panel.n_rows, panel.n_students
        result = step("fit", fit_panel, engine, panel, settings)
        sums = step("window_sums", panel.window_sums)
        del panel
        n = step("write_fit", write_fit, conn, result, panel_id=panel_id, window_sums=sums)
        stored = conn.execute("SELECT count(*) FROM growth_student_posterior WHERE run_id = %s",
                              (run_id,)).fetchone()[0]
        with conn.transaction():  # the benchmark's run is not kept
            conn.execute("DELETE FROM growth_population_draws WHERE run_id = %s", (run_id,))
            conn.execute("DELETE FROM growth_student_posterior WHERE run_id = %s", (run_id,))
            conn.execute("DELETE FROM growth_fit WHERE run_id = %s", (run_id,))
    d = result.diagnostics
    return {"n_students": n_students, "n_rows": n_rows, "student_rows_written": n, "student_rows_stored": stored,
            "steps": steps, "total_s": round(sum(v["s"] for v in steps.values()), 2),
            "peak_rss_mb": max(v["peak_rss_mb"] for v in steps.values()),
            "max_rhat": round(d.max_rhat, 4), "min_ess_bulk": round(d.min_ess_bulk, 0),
            "n_divergent": d.n_divergent, "fit_phases_s": d.details.get("timings_s")}


def markdown(rows: list[dict], meta: dict) -> str:
    names = list(rows[0]["steps"])
    out = ["# The fit step from a stored panel (`bench_fit`)", "",
           f"{meta['started']}; {meta['machine']}; native engine, {meta['chains']} chains x {meta['samples']}"
           " iterations; one fresh process per size. Seconds (peak RSS MB) per step.", "",
           "| students | rows | " + " | ".join(f"`{s}`" for s in names) + " | total s | peak RSS MB | max R-hat |",
           "|---:|---:|" + "---:|" * (len(names) + 3)]
    for r in rows:
        cells = [f"{r['steps'][s]['s']} ({r['steps'][s]['peak_rss_mb']:.0f})" for s in names]
        out.append(f"| {r['n_students']:,} | {r['n_rows']:,} | " + " | ".join(cells)
                   + f" | {r['total_s']} | {r['peak_rss_mb']:.0f} | {r['max_rhat']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated numbers of students")
    ap.add_argument("--url", help="an existing database (migrated); default: a throwaway cluster in --pgdata")
    ap.add_argument("--pgdata", default=str(Path(tempfile.gettempdir()) / "bench-fit-pg"))
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1234, help="sampler seed")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench-fit"),
                    help="results path without extension (.json and .md are written)")
    ap.add_argument("--worker", nargs=2, metavar=("URL", "PANEL_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.chains, args.samples, args.seed)))
        return 0

    sys.path.insert(0, str(REPO))
    from growth_assets.db import localpg
    from growth_assets.db.migrate import migrate

    url = args.url or localpg.ensure_cluster(args.pgdata).url(localpg.DB_NAME)
    migrate(url)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        panel_id = ensure_panel(url, n)
        proc = subprocess.run([sys.executable, __file__, "--worker", url, panel_id, "--chains", str(args.chains),
                               "--samples", str(args.samples), "--seed", str(args.seed)],
                              capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"the worker for {n:,} students failed (exit {proc.returncode})")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    meta = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"Python {platform.python_version()}; {platform.machine()}, {os.cpu_count()} CPUs",
            "chains": args.chains, "samples": args.samples}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
