#!/usr/bin/env bash
# The test command: installs what the tests need (venv and Python packages, Debian's R
# packages for the brms service, Debian's chromium for the UI test), then runs every test.
# Tests start their own PostgreSQL and R service and stop them. Extra arguments go to pytest (e.g. -k panel, -m "not slow").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
if [ -x scripts/install_r.sh ] && [ "${GROWTH_SKIP_R:-0}" != "1" ]; then
  bash scripts/install_r.sh
fi
if [ "${GROWTH_SKIP_BROWSER:-0}" != "1" ]; then
  bash scripts/install_browser.sh  # the UI test looks at the pictures in headless chromium
fi
status=0
"${GROWTH_VENV:-.venv}/bin/python" -m pytest "$@" || status=$?  # the venv bootstrap.sh made
if [ -f r_brms_plumber/tests/run_tests.R ] && [ "${GROWTH_SKIP_R:-0}" != "1" ] && [ $# -eq 0 ]; then
  echo "== R service tests (testthat)"
  Rscript r_brms_plumber/tests/run_tests.R || status=$?
fi
exit $status
