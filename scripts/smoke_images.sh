#!/usr/bin/env bash
# Run the two images built by scripts/build_images.sh (buildah, chroot isolation: the
# containers share the host's network, so 127.0.0.1 reaches them and they reach it):
#   - r-brms-plumber: the service as the image's non-root user, ready from the model baked at
#     build time (a cache hit, in seconds), and one fit through the project's own client
#     (`growth-assets fit --engine brms`), whose answer is checked against the contract;
#   - user-code: `growth-assets --help`, the definitions load, and the weekly job materializes
#     against a throwaway PostgreSQL on the host.
#   scripts/smoke_images.sh [VERSION]      (default: pyproject.toml's version)
# Uses the project's venv on the host (scripts/bootstrap.sh) for the client side.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}"
r_image="localhost/growth-assets/r-brms-plumber:$version"
u_image="localhost/growth-assets/user-code:$version"
bash scripts/bootstrap.sh >/dev/null
py=.venv/bin/python
work="$(mktemp -d)"
chmod 755 "$work"  # the local PostgreSQL runs as the postgres user
pids=(); ctrs=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  for c in "${ctrs[@]:-}"; do [ -n "$c" ] && buildah rm "$c" >/dev/null 2>&1 || true; done
  [ -n "${GROWTH_LOCAL_DIR:-}" ] && "$root/.venv/bin/growth-assets" db stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { "$py" -c 'from growth_assets.db.localpg import free_port; print(free_port())'; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

# --- the R service --------------------------------------------------------------------------
port="$(free_port)"
token="$("$py" -c 'import secrets; print(secrets.token_hex(16))')"
ctr="$(buildah from "$r_image")"; ctrs+=("$ctr")
echo "smoke: r-brms-plumber: starting the service (the image's own user) on 127.0.0.1:$port"
t0=$(date +%s.%N)
# a token made for this run only (it is on buildah's command line, like docker run -e)
buildah run --env "R_BRMS_INTERNAL_TOKEN=$token" \
  --env R_BRMS_HOST=127.0.0.1 --env "R_BRMS_PORT=$port" "$ctr" -- /opt/r_brms_plumber/serve.sh \
  >"$work/r.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 1 240); do
  kill -0 "${pids[0]}" 2>/dev/null || { tail -30 "$work/r.log" >&2; fail "r-brms-plumber: the service exited"; }
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)"
  if [ "$code" = "200" ]; then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || { tail -30 "$work/r.log" >&2; fail "r-brms-plumber: /readyz never answered 200"; }
ready_s="$(echo "$(date +%s.%N) - $t0" | bc)"
listener="$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
[ -n "$listener" ] && [ "$(stat -c %u "/proc/$listener")" = "10002" ] \
  || fail "r-brms-plumber: the service does not run as uid 10002 (pid ${listener:-?})"
grep -q "model: ready in .* (cache hit" "$work/r.log" \
  || { tail -20 "$work/r.log" >&2; fail "r-brms-plumber: the model was not the one baked at build time"; }
grep -q "front: nginx on 127.0.0.1:$port" "$work/r.log" \
  || { tail -20 "$work/r.log" >&2; fail "r-brms-plumber: the nginx front did not start"; }
printf 'smoke: r-brms-plumber: ready in %.1f s as uid 10002 behind its nginx front (model: cache hit, compiled at build time)\n' "$ready_s"
code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/growth/fit" -d '{}')"
[ "$code" = "401" ] || fail "r-brms-plumber: a fit without the token answered $code, not 401"
t0=$(date +%s)
R_BRMS_BASE_URL="http://127.0.0.1:$port" R_BRMS_INTERNAL_TOKEN="$token" .venv/bin/growth-assets fit \
  --engine brms --panel reference/sleepstudy.csv --out "$work/fit.json" --chains 2 --samples 600 --seed 5 \
  --target 300 >"$work/fit.out" 2>&1 || { cat "$work/fit.out" >&2; tail -20 "$work/r.log" >&2; fail "r-brms-plumber: the fit"; }
"$py" - "$work/fit.json" <<'EOF' || fail "r-brms-plumber: the answer does not hold to the contract"
import json, sys
from growth_assets.model.result import FitResult
r = FitResult.from_json(json.load(open(sys.argv[1])))
assert r.engine == "brms" and r.n_students == 18 and r.n_obs == 180, (r.engine, r.n_students, r.n_obs)
b = r.summary["b_Intercept"].mean
assert 230 < b < 275, b  # sleepstudy: brms's long-run answer is 251.4
print(f"smoke: r-brms-plumber: fit {r.run_id}: 18 students, b_Intercept {b:.1f}, max R-hat {r.diagnostics.max_rhat:.3f}")
EOF
echo "smoke: r-brms-plumber: fit answered in $(( $(date +%s) - t0 )) s"
# buildah run (chroot) does not forward signals: send SIGTERM, as Kubernetes would, to the
# image's entrypoint (serve.sh, the R server's parent), and expect the graceful shutdown
# (the listener is the front's nginx, a child of the R server, a child of serve.sh)
entry="$listener"
while [ "$entry" -gt 1 ] && ! tr '\0' ' ' <"/proc/$entry/cmdline" | grep -q "serve.sh"; do
  entry="$(awk '{print $4}' "/proc/$entry/stat")"
done
[ "$entry" -gt 1 ] || fail "r-brms-plumber: serve.sh is not an ancestor of the listener"
kill -TERM "$entry"
for _ in $(seq 1 60); do kill -0 "$entry" 2>/dev/null || break; sleep 0.5; done
! kill -0 "$entry" 2>/dev/null || fail "r-brms-plumber: still running 30 s after SIGTERM"
! kill -0 "$listener" 2>/dev/null || fail "r-brms-plumber: the front outlived the service"
grep -q "shutdown: done" "$work/r.log" || fail "r-brms-plumber: no graceful shutdown on SIGTERM"
wait "${pids[0]}" 2>/dev/null || true
echo "smoke: r-brms-plumber: SIGTERM: shut down gracefully"

# --- the user-code image ----------------------------------------------------------------------
ctr="$(buildah from "$u_image")"; ctrs+=("$ctr")
buildah run "$ctr" -- sh -c '[ "$(id -u)" = 10001 ]' || fail "user-code: the image does not run as uid 10001"
buildah run "$ctr" -- growth-assets --help >/dev/null || fail "user-code: growth-assets --help"
buildah run "$ctr" -- python -c \
  "from growth_assets.definitions import defs; g = defs.resolve_asset_graph(); print('smoke: user-code: definitions load:', len(list(g.get_all_asset_keys())), 'assets')" \
  || fail "user-code: the definitions do not load"
export GROWTH_LOCAL_DIR="$work/local"
.venv/bin/growth-assets db start >/dev/null
db_url="$(.venv/bin/growth-assets db url)"
# the latest weekly run's day (on a Monday before 04:30 UTC the day before: the partition of
# today's date's last week does not exist until the run's time)
as_of="$("$py" -c "from growth_assets.model.window import latest_run_as_of; print(latest_run_as_of())")"
DATABASE_URL="$db_url" .venv/bin/growth-assets seed-demo --students 200 --weeks 12 --seed 3 --as-of "$as_of" \
  --truth-out "$work/truth.csv" >/dev/null
partition="$("$py" -c "from datetime import date; from growth_assets.model.window import Window; print(Window(date.fromisoformat('$as_of'), 12).last_week)")"
echo "smoke: user-code: the weekly job for partition $partition, in the image, on the host's PostgreSQL"
t0=$(date +%s)
buildah run --env "DATABASE_URL=$db_url" --env GROWTH_ENGINE=native --env BRMS_N_SAMPLES=1000 \
  "$ctr" -- dagster asset materialize -m growth_assets.definitions \
  --select weekly_scores,brms_posterior,growth_brms_meta,weekly_kpi_P --partition "$partition" >"$work/job.log" 2>&1 \
  || { tail -40 "$work/job.log" >&2; fail "user-code: the weekly job"; }
n="$("$py" -c "import psycopg; print(psycopg.connect('$db_url').execute(\"SELECT count(*) FROM weekly_kpi WHERE kpis ? 'P' AND (kpis->>'P')::float8 BETWEEN 0 AND 1\").fetchone()[0])")"
[ "$n" -gt 150 ] || fail "user-code: only $n students have a P after the weekly job"
echo "smoke: user-code: weekly job done in $(( $(date +%s) - t0 )) s; P written for $n students"
echo "smoke: both images passed"
