#!/usr/bin/env bash
# Install the R runtime of the brms service (r_brms_plumber/) from Debian's
# packages. The single source of the R install: used by CI and the Docker image.
# Idempotent: does nothing when every package is already installed.
#
#   scripts/install_r.sh            # install what is missing
#   scripts/install_r.sh --check    # only report; exit 1 if something is missing
set -euo pipefail

PACKAGES=(
  r-base-core
  r-base-dev          # compiler toolchain: rstan compiles the model at first start
  r-cran-brms
  r-cran-rstan
  r-cran-posterior
  r-cran-plumber      # brings httpuv, promises, later
  r-cran-promises
  r-cran-later
  r-cran-callr
  r-cran-processx
  r-cran-jsonlite
  r-cran-digest
  r-cran-curl         # tests: HTTP client for the end-to-end test
  r-cran-testthat
  nginx               # the service's front: read timeouts httpuv lacks (r_brms_plumber/R/front.R)
)
# Note: Debian's r-cran-bh keeps the Boost headers in /usr/include; the
# service sets rstan_options(boost_lib = "/usr/include") itself.

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_r.sh: all ${#PACKAGES[@]} R packages already installed; nothing to do"
  exit 0
fi

echo "install_r.sh: missing: ${missing[*]}"
if [ "${1:-}" = "--check" ]; then
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "install_r.sh: not root and sudo is not available; install as root: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_r.sh: apt-get update"
"${SUDO[@]}" apt-get update
echo "install_r.sh: apt-get install -y --no-install-recommends ${missing[*]}"
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"

# verify from R that the namespaces load
Rscript -e 'pk <- c("brms","rstan","posterior","plumber","promises","later","callr","jsonlite","digest","curl","testthat"); ok <- vapply(pk, requireNamespace, logical(1), quietly = TRUE); if (!all(ok)) { cat("install_r.sh: R cannot load:", pk[!ok], "\n"); quit(status = 1) }; cat("install_r.sh: R packages OK:", paste(sprintf("%s %s", pk, vapply(pk, function(p) as.character(packageVersion(p)), "")), collapse = ", "), "\n")'
echo "install_r.sh: done"
