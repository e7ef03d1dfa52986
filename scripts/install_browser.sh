#!/usr/bin/env bash
# Install Debian's chromium, which the UI test (growth_assets_tests/test_ui_pictures.py)
# drives headless through Playwright (executable_path: Playwright downloads no browser).
# Idempotent: does nothing when chromium is already installed.
#   scripts/install_browser.sh --check    # only report; exit 1 if it is missing
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "install_browser: chromium is installed ($(chromium --version 2>/dev/null | head -1))"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "install_browser: chromium is missing" >&2
  exit 1
fi
echo "install_browser: installing Debian's chromium"
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium --version
