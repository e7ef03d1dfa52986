#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) and install the package with its
# test extras. Idempotent: a second run with an unchanged pyproject.toml does nothing.
#   GROWTH_VENV=DIR      where the venv goes (default .venv)
#   GROWTH_EXTRAS=LIST   pip extras (default "test"; "" for the runtime only, as in the image)
#   GROWTH_SKIP_PG=1     do not install PostgreSQL's server (an image that never runs one)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GROWTH_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="${GROWTH_EXTRAS-test}"
stamp="$venv/.growth-assets-installed"
want="$( (cat "$root/pyproject.toml"; echo "extras=$extras") | sha256sum | cut -d' ' -f1)"

# PostgreSQL's server binaries (initdb, pg_ctl) for the local clusters of the demo and tests.
if [ "${GROWTH_SKIP_PG:-0}" != "1" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   && ! command -v initdb >/dev/null 2>&1; then
  echo "bootstrap: installing PostgreSQL (Debian package postgresql)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
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
echo "bootstrap: installing growth_assets and its dependencies"
target="$root"; [ -n "$extras" ] && target="$root[$extras]"
"$venv/bin/python" -m pip install --quiet -e "$target" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$stamp"
echo "bootstrap: done"
