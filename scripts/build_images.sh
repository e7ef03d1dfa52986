#!/usr/bin/env bash
# Build the two images without a Docker engine: buildah (vfs storage, chroot isolation) from
# docker/*.Dockerfile, on a Debian 12 base made here with debootstrap from Debian's packages
# (no image registry is reachable; a deployment builds the same Dockerfiles FROM debian:12.x-slim).
#
#   scripts/build_images.sh            # base (cached), then both images, tagged with the version
#   scripts/build_images.sh --smoke    # ... then run each (scripts/smoke_images.sh)
#
#   GROWTH_IMAGE_BASE=IMAGE    use this base instead of the local one (e.g. debian:12.11-slim)
#   GROWTH_DEBIAN_MIRROR=URL   debootstrap's mirror (default: the one apt's own sources name)
#   GROWTH_BUILD_CA=FILE       CA bundle pip trusts while building (default: the host's system
#                              bundle; a build secret, not stored in the image)
#   GROWTH_IMAGE_CACHE=DIR     where the base's root file system tarball is kept between runs
#                              (default /var/cache/growth-assets/images)
# Needs root (buildah with chroot isolation, debootstrap); installs buildah and debootstrap
# from Debian's packages when they are missing. Layers are cached (buildah --layers): a second
# run with unchanged inputs rebuilds nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
smoke=0
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    *) echo "build_images: unknown argument $a (only --smoke)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "build_images: needs root (buildah chroot isolation, debootstrap)" >&2; exit 1; }

export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  echo "build_images: installing ${need[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
[ -n "$version" ] || { echo "build_images: no version in pyproject.toml" >&2; exit 1; }
base_tag="localhost/growth-assets/debian-base:12"
cache="${GROWTH_IMAGE_CACHE:-/var/cache/growth-assets/images}"
t_all=$(date +%s)

mirror="${GROWTH_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$( (cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true) \
            | grep -oE '^(URIs:|deb) +https?://[^ ]+' | grep -v security | head -1 | awk '{print $2}' || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

base="${GROWTH_IMAGE_BASE:-}"
if [ -z "$base" ]; then
  base="$base_tag"
  if ! buildah inspect --type image "$base_tag" >/dev/null 2>&1; then
    mkdir -p "$cache"
    tarball="$cache/debian-12-minbase.tar"
    if [ ! -s "$tarball" ]; then
      echo "build_images: debootstrap bookworm (minbase) from $mirror"
      t0=$(date +%s)
      rootfs="$(mktemp -d)"
      debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
      # the same suites as a debian:12 image: the release, its updates, its security updates
      printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
        "$mirror" "$mirror" "${mirror%/debian}/debian" >"$rootfs/etc/apt/sources.list"
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"
      echo "build_images: base root file system in $(( $(date +%s) - t0 )) s"
    fi
    ctr="$(buildah from scratch)"
    buildah add "$ctr" "$tarball" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd /bin/bash --label org.opencontainers.image.title="debian 12 (debootstrap)" "$ctr"
    buildah commit -q "$ctr" "$base_tag" >/dev/null
    buildah rm "$ctr" >/dev/null
  fi
  echo "build_images: base $base_tag"
fi

# the host's CA bundle, as the optional build secret build_ca (pip behind an intercepting proxy)
ca="${GROWTH_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"
secret=()
[ -s "$ca" ] && secret=(--secret "id=build_ca,src=$ca")

build() {  # name dockerfile
  local name="$1" df="$2" t0
  t0=$(date +%s)
  echo "build_images: building $name:$version FROM $base"
  buildah bud --layers --isolation chroot --build-arg "BASE=$base" "${secret[@]}" \
    --ignorefile "$df.dockerignore" -f "$df" -t "localhost/growth-assets/$name:$version" . \
    >"/tmp/build_images-$name.log" 2>&1 || { tail -40 "/tmp/build_images-$name.log" >&2; exit 1; }
  echo "build_images: $name:$version built in $(( $(date +%s) - t0 )) s" \
       "($(buildah images --noheading --format '{{.Size}}' "localhost/growth-assets/$name:$version"))"
}
build r-brms-plumber docker/r-brms-plumber.Dockerfile
build user-code docker/user-code.Dockerfile
buildah images --filter "reference=localhost/growth-assets/*"
echo "build_images: done in $(( $(date +%s) - t_all )) s"

if [ "$smoke" -eq 1 ]; then
  exec bash scripts/smoke_images.sh "$version"
fi
