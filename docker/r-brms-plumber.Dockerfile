# syntax=docker/dockerfile:1
# The R brms service (r_brms_plumber/), with the growth model compiled at build time.
#
#   docker build -f docker/r-brms-plumber.Dockerfile -t growth-assets/r-brms-plumber:0.2.0 .
#
# The R install is scripts/install_r.sh, the script CI runs (scripts/test.sh): Debian bookworm's
# r-cran-* packages, so the image and CI fit with the same brms/rstan builds.
#
# BASE: Debian 12. The public image by default (what a deployment pulls); where no registry is
# reachable, scripts/build_images.sh passes a Debian 12 base it made with debootstrap.
ARG BASE=debian:12.11-slim
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

COPY scripts/install_r.sh /opt/src/scripts/install_r.sh
RUN bash /opt/src/scripts/install_r.sh \
 && rm -rf /var/lib/apt/lists/*

# non-root; the uid is the one the k8s manifests run as (runAsUser 10002)
RUN groupadd --gid 10002 rbrms \
 && useradd --uid 10002 --gid 10002 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin rbrms

COPY r_brms_plumber/ /opt/r_brms_plumber/
RUN install -d -o 10002 -g 10002 /opt/r_brms_plumber/model-cache

USER 10002:10002
ENV HOME=/tmp \
    R_BRMS_MODEL_CACHE=/opt/r_brms_plumber/model-cache
# Bake the compiled model: the service's own ensure_compiled_model() (cache key = brms, rstan,
# StanHeaders and R versions + the Stan code, all fixed in this image), then a verified cache hit.
# In Kubernetes an init container copies this directory into the pod's writable cache volume.
RUN Rscript /opt/r_brms_plumber/warm_cache.R

EXPOSE 8080
# R_BRMS_HOST / R_BRMS_PORT default to 0.0.0.0:8080
# serve.sh: SIGTERM (a rollout) becomes a graceful shutdown, not an instant death
CMD ["/opt/r_brms_plumber/serve.sh"]
