"""How long `seed-demo` takes to write a cohort (COPY), beside the INSERT-per-row baseline.

    .venv/bin/python benchmarks/bench_seed.py --students 100000

Starts a throwaway PostgreSQL, seeds the cohort, and times the same rows written with
psycopg's executemany INSERT (the baseline) on a sample, extrapolated per row. Writes
benchmarks/results/seed.md and seed.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import psycopg

from growth_assets.db import localpg
from growth_assets.db.migrate import migrate
from growth_assets.demo.cohort import generate, seed_cohort

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=100_000)
    ap.add_argument("--weeks", type=int, default=12)
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    tmp.chmod(0o755)
    cluster = localpg.ensure_cluster(tmp / "data")
    try:
        url = cluster.url()
        migrate(url, apply_source_changes=True)
        with psycopg.connect(url) as conn:
            t0 = time.perf_counter()
            rep = seed_cohort(conn, a.students, a.weeks, seed=1, as_of=date(2026, 11, 23))
            seed_s = time.perf_counter() - t0
        rows = rep.mirt_rows + rep.topic_rows + rep.daily_rows
        # baseline: the same mirt_ability rows, one INSERT per row (executemany)
        sample = generate(max(2, a.baseline_rows // 10), a.weeks, 2, date(2026, 8, 31))["mirt_ability"]
        sample = sample.head(a.baseline_rows)
        with psycopg.connect(url) as conn:
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
    OUT.mkdir(exist_ok=True)
    (OUT / "seed.json").write_text(json.dumps(result, indent=1))
    (OUT / "seed.md").write_text(
        "# seed-demo (COPY) vs INSERT per row\n\n| students | weeks | rows | seconds | rows/s | INSERT rows/s | speed-up |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {a.students} | {a.weeks} | {rows} | {result['seed_seconds']} | {result['rows_per_second']} | "
        f"{result['baseline_insert_rows_per_second']} | {result['speedup_vs_insert_per_row']}x |\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
