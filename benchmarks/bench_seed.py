"""How long `seed-demo` takes to write a cohort (COPY), beside the INSERT-per-row baseline.

    .venv/bin/python benchmarks/bench_seed.py                      # 10,000 students, ~10 s
    .venv/bin/python benchmarks/bench_seed.py --students 100000 --out benchmarks/results

Starts a throwaway PostgreSQL, seeds the cohort, and times the same rows written with
psycopg's executemany INSERT (the baseline) on a sample, extrapolated per row. Writes seed.md
and seed.json into --out (default: a temporary folder; the committed results are
benchmarks/results, written only when named).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from growth_assets.db import connect, localpg
from growth_assets.db.migrate import migrate
from growth_assets.demo.cohort import generate, seed_cohort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=10_000)
    ap.add_argument("--weeks", type=int, default=12)
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    ap.add_argument("--out", type=Path, help="folder for seed.json / seed.md (default: a temporary one)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-seed-out-"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    tmp.chmod(0o755)
    cluster = localpg.ensure_cluster(tmp / "data")
    try:
        url = cluster.url()
        migrate(url, apply_source_changes=True)
        with connect(url) as conn:
            t0 = time.perf_counter()
            rep = seed_cohort(conn, a.students, a.weeks, seed=1, as_of=date(2026, 11, 23))
            seed_s = time.perf_counter() - t0
        rows = rep.mirt_rows + rep.topic_rows + rep.daily_rows
        # baseline: the same mirt_ability rows, one INSERT per row (executemany)
        sample = generate(max(2, a.baseline_rows // 10), a.weeks, 2, date(2026, 8, 31))["mirt_ability"]
        sample = sample.head(a.baseline_rows)
        with connect(url) as conn:
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                                " VALUES (%s, %s, %s, %s, %s, %s)",
                                list(sample.itertuples(index=False, name=None)))
            base_s = time.perf_counter() - t0
        base_per_row = base_s / len(sample)
        result = {"students": a.students, "weeks": a.weeks, "rows": rows, "seed_seconds": round(seed_s, 2),
                  "rows_per_second": round(rows / seed_s), "baseline_insert_rows_per_second": round(1 / base_per_row),
                  "speedup_vs_insert_per_row": round(base_per_row * rows / seed_s, 1)}
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seed.json").write_text(json.dumps(result, indent=1))
    (out / "seed.md").write_text(
        "# seed-demo (COPY) vs INSERT per row\n\n| students | weeks | rows | seconds | rows/s | INSERT rows/s | speed-up |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {a.students} | {a.weeks} | {rows} | {result['seed_seconds']} | {result['rows_per_second']} | "
        f"{result['baseline_insert_rows_per_second']} | {result['speedup_vs_insert_per_row']}x |\n")
    print(json.dumps(result))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
