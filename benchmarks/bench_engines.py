"""Native vs brms, side by side in one run, on the same synthetic cohorts.

    .venv/bin/python benchmarks/bench_engines.py                   # 50 students, a few minutes
    .venv/bin/python benchmarks/bench_engines.py --sizes 50 200 --out benchmarks/results

Each engine fits through the same command (`growth-assets fit`) in a fresh process, so the
native engine pays its imports and JIT compilation (with its persistent compilation cache, as
in production); brms pays its sampling with the compiled model already cached in the running
service (started here unless R_BRMS_BASE_URL is set). Both at the contract's defaults (4 chains
x 2000 iterations). Writes engines.md and engines.json into --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from growth_assets.db.localpg import free_port
from growth_assets.demo.cohort import synthetic_panel

ROOT = Path(__file__).resolve().parents[1]


def start_service() -> tuple[str, subprocess.Popen | None]:
    if os.environ.get("R_BRMS_BASE_URL"):
        return os.environ["R_BRMS_BASE_URL"], None
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "growth_assets.cli", "r-service", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the R service did not become ready")


def fit(engine: str, csv: Path, out: Path, env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "growth_assets.cli", "fit", "--engine", engine, "--panel", str(csv),
                    "--out", str(out), "--seed", "1"], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0, json.loads(out.read_text())


def passes(res: dict) -> bool:
    d = res["diagnostics"]
    return d["max_rhat"] <= 1.01 and min(d["min_ess_bulk"], d["min_ess_tail"]) >= 400 and d["n_divergent"] == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[50],
                    help="cohort sizes (the committed results: --sizes 50 200)")
    ap.add_argument("--out", type=Path, help="folder for engines.json / engines.md (default: a temporary one;"
                                             " the committed results are benchmarks/results)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-engines-"))
    out.mkdir(parents=True, exist_ok=True)
    url, proc = start_service()
    env = {**os.environ, "R_BRMS_BASE_URL": url}
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in a.sizes:
                panel = synthetic_panel(n, seed=n, share_sparse=0.1)
                csv = Path(tmp) / f"panel{n}.csv"
                panel.to_csv(csv, index=False)
                t_native, native = fit("native", csv, Path(tmp) / "n.json", env)
                t_brms, brms = fit("brms", csv, Path(tmp) / "b.json", env)
                b = {p["student_id"]: p for p in brms["predictions"]}
                dp = max(abs(p["P"] - b[p["student_id"]]["P"]) for p in native["predictions"])
                da = max(abs(p["mean_a"] - b[p["student_id"]]["mean_a"]) / np.sqrt(b[p["student_id"]]["var_a"])
                         for p in native["predictions"])
                rows.append({"students": n, "rows": len(panel), "native_s": round(t_native, 2),
                             "brms_s": round(t_brms, 2), "speedup": round(t_brms / t_native, 1),
                             "native_passes_checks": passes(native), "brms_passes_checks": passes(brms),
                             "native_min_ess_bulk": round(native["diagnostics"]["min_ess_bulk"]),
                             "brms_min_ess_bulk": round(brms["diagnostics"]["min_ess_bulk"]),
                             "max_abs_dP": round(dp, 4), "max_dmean_a_over_sd": round(da, 3)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    (out / "engines.json").write_text(json.dumps(rows, indent=1))
    lines = ["# native vs brms (same cohorts, same command, one run)", "",
             "Wall time of `growth-assets fit` per engine (native: fresh process, imports + JIT with the",
             "persistent cache; brms: the request to the running service, compiled model cached).", "",
             "| students | rows | native s | brms s | brms / native | native passes | brms passes |"
             " native min ESS | brms min ESS | max abs dP | max d mean_a / sd |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['students']} | {r['rows']} | {r['native_s']} | {r['brms_s']} | {r['speedup']}x | "
                     f"{r['native_passes_checks']} | {r['brms_passes_checks']} | {r['native_min_ess_bulk']} | "
                     f"{r['brms_min_ess_bulk']} | {r['max_abs_dP']} | {r['max_dmean_a_over_sd']} |")
    (out / "engines.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
