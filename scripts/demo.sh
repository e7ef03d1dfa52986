#!/usr/bin/env bash
# The demo: a local PostgreSQL (started if needed, kept running), a synthetic cohort, and the
# weekly graph materialized with the native engine. Arguments go to `growth-assets demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec "${GROWTH_VENV:-.venv}/bin/growth-assets" demo "$@"
