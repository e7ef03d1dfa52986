#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) and install the package with its
# test extras, at the versions of requirements.lock. Idempotent: a second run with an
# unchanged pyproject.toml and lock does nothing.
#   GROWTH_VENV=DIR      where the venv goes (default .venv)
#   GROWTH_EXTRAS=LIST   pip extras (default "test"; "" for the runtime only, as in the image)
#   GROWTH_SKIP_PG=1     do not install PostgreSQL's server, nor PgBouncer (an image that never runs one)
#   GROWTH_DEPS_ONLY=1   only the locked dependencies, not the package (an image's cached layer)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GROWTH_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="${GROWTH_EXTRAS-test}"
stamp="$venv/.growth-assets-installed"
# the versions come from the lock file (scripts/lock.sh makes it from pyproject.toml's ranges)
lock="$root/requirements.lock"
[ -z "$extras" ] && lock="$root/requirements-runtime.lock"
want="$( (cat "$root/pyproject.toml" "$lock"; echo "extras=$extras") | sha256sum | cut -d' ' -f1)"

# PostgreSQL's server binaries (initdb, pg_ctl) for the local clusters of the demo and tests.
if [ "${GROWTH_SKIP_PG:-0}" != "1" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   && ! command -v initdb >/dev/null 2>&1; then
  echo "bootstrap: installing PostgreSQL (Debian package postgresql)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
# PgBouncer for the tests (a service's session through a pooler in transaction mode)
if [ "${GROWTH_SKIP_PG:-0}" != "1" ] && [[ ",$extras," == *",test,"* ]] \
   && ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "bootstrap: installing PgBouncer (Debian package pgbouncer, for the tests)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import growth_assets" 2>/dev/null; then
  echo "bootstrap: $venv is up to date"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=24" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "bootstrap: installing the locked dependencies ($(basename "$lock")) and growth_assets"
target="$root"; [ -n "$extras" ] && target="$root[$extras]"
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet "$venv/bin/python" -m pip install --quiet -r "$lock"
if [ "${GROWTH_DEPS_ONLY:-0}" = "1" ]; then  # an image's cached layer: the package comes next
  echo "bootstrap: locked dependencies installed (GROWTH_DEPS_ONLY=1: not the package)"
  exit 0
fi
quiet "$venv/bin/python" -m pip install --quiet --no-deps -e "$target"
# the lock must hold everything the package asks for (pip check: no missing or clashing pins)
"$venv/bin/python" -m pip check >/dev/null
echo "$want" > "$stamp"
echo "bootstrap: done"
