#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml's ranges (run after changing a dependency):
#   requirements.lock          runtime + test extras (the venv of scripts/test.sh and CI)
#   requirements-runtime.lock  runtime only (the user-code image)
# Installs come from these files (scripts/bootstrap.sh), so a new release of a dependency
# changes nothing until someone re-locks, and the tests run what the images run.
# UV=PATH: the uv to run (default: `uv` on the PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
uv="${UV:-uv}"
command -v "$uv" >/dev/null || uv=".venv/bin/uv"
[ -x "$uv" ] || command -v "$uv" >/dev/null || { echo "lock: needs uv (.venv/bin/pip install uv)" >&2; exit 1; }
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet)
"$uv" pip compile pyproject.toml --extra test "${common[@]}" -o requirements.lock
"$uv" pip compile pyproject.toml "${common[@]}" -o requirements-runtime.lock
echo "lock: wrote requirements.lock and requirements-runtime.lock"
