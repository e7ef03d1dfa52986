# syntax=docker/dockerfile:1
# The Dagster image of growth_assets: the gRPC code server `growth`, the webserver, the daemon,
# and the run/step pods the K8sRunLauncher starts from it (k8s/base).
#
#   docker build -f docker/user-code.Dockerfile -t growth-assets/user-code:0.2.0 .
#
# The install is scripts/bootstrap.sh, the script CI runs (scripts/test.sh), with the venv in
# /opt/venv instead of .venv, the runtime dependencies only (no test extras) and no PostgreSQL
# server (the image talks to the platform's database).
#
# BASE: Debian 12 with Debian's own Python 3.11 (python3, python3-venv), not the python: image:
# the same base as the R image, so the image a deployment pulls (debian:12 from a registry) and
# the one scripts/build_images.sh builds here from a debootstrap base (no registry reachable) hold
# the same Python, from the same Debian packages and security updates.
ARG BASE=debian:12.11-slim
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GROWTH_VENV=/opt/venv \
    DAGSTER_HOME=/opt/dagster/dagster_home

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/app
# the locked dependencies first (a layer that a code change does not invalidate), then the package;
# build_ca (optional secret): the CA bundle of a network whose TLS is intercepted, for pip;
# scripts/build_images.sh passes the host's. Not stored in the image.
COPY pyproject.toml README.md requirements-runtime.lock ./
COPY scripts/bootstrap.sh scripts/bootstrap.sh
RUN --mount=type=secret,id=build_ca \
    if [ -s /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
 && GROWTH_DEPS_ONLY=1 GROWTH_VENV=/opt/venv GROWTH_EXTRAS="" GROWTH_SKIP_PG=1 bash scripts/bootstrap.sh \
 && rm -rf /root/.cache
COPY growth_assets/ growth_assets/
RUN --mount=type=secret,id=build_ca \
    if [ -s /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
 && GROWTH_VENV=/opt/venv GROWTH_EXTRAS="" GROWTH_SKIP_PG=1 bash scripts/bootstrap.sh \
 && rm -rf /var/lib/apt/lists/* /root/.cache \
 && /opt/venv/bin/python -c "import growth_assets.definitions, dagster_k8s, dagster_postgres, dagster_webserver"

# non-root; the uid is the one the k8s manifests run as (runAsUser 10001)
RUN groupadd --gid 10001 dagster \
 && useradd --uid 10001 --gid 10001 --home-dir /opt/dagster --no-create-home --shell /usr/sbin/nologin dagster \
 && install -d -o 10001 -g 10001 /opt/dagster /opt/dagster/dagster_home /opt/dagster/workspace
USER 10001:10001
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/opt/dagster

EXPOSE 4000
CMD ["dagster", "api", "grpc", "-m", "growth_assets.definitions", "-a", "defs", "-h", "0.0.0.0", "-p", "4000", "--location-name", "growth"]
