#!/usr/bin/env bash
# Builds rover's image from the Dockerfile with podman on a Debian 12 host (as root), under
# the name daemonset.yaml runs:
#   1. podman and runc from Debian's packages, if missing (podman's settings for this
#      host: scripts/podman.sh);
#   2. each base image the Dockerfile names, if absent: pulled from its registry, or, when
#      no registry answers, made from Debian's mirrors (scripts/make-base-image.sh);
#   3. podman build with the layer cache (a second run with nothing changed takes
#      seconds); the image it replaces is removed.
#
#   scripts/build-image.sh [--tag IMAGE] [PODMAN-BUILD-OPTIONS...]   e.g. --no-cache
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[build-image] %s\n' "$*"; }
die() {
  printf '[build-image] error: %s\n' "$*" >&2
  exit 1
}

# The DaemonSet's image is what CI builds and tests.
tag=$(awk '$1 == "image:" { print $2; exit }' daemonset.yaml)
if [ "${1:-}" = --tag ]; then
  [ $# -ge 2 ] || die "--tag needs an image name"
  tag=$2
  shift 2
fi
[ -n "$tag" ] || die "no image: in daemonset.yaml and no --tag"
[ "$(id -u)" -eq 0 ] || die "must run as root (apt, rootful podman)"
[ -f /etc/debian_version ] || die "expects a Debian host (Debian 12)"
podman=(scripts/podman.sh)
started=$SECONDS

# -- 1. packages -----------------------------------------------------------------------------
apt_updated=0
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
# runc, not crun: see scripts/podman.sh.
apt_install podman runc

# -- 2. base images --------------------------------------------------------------------------
# The image of each FROM line (past any --platform=...), and the stages they name.
froms=$(awk 'toupper($1) == "FROM" { i = 2; while ($i ~ /^--/) i++; print $i, $(i + 2) }' Dockerfile)
mapfile -t bases < <(awk '{ print $1 }' <<<"$froms" | sort -u)
for base in "${bases[@]}"; do
  # an earlier stage, or already here
  if awk '{ print $2 }' <<<"$froms" | grep -qxF "$base" || "${podman[@]}" image exists "$base"; then
    continue
  fi
  # A name without a registry is Docker Hub's, as docker build reads it.
  case $base in
    */*) case ${base%%/*} in *.* | *:* | localhost) remote=$base ;; *) remote=docker.io/$base ;; esac ;;
    *) remote=docker.io/library/$base ;;
  esac
  if timeout 300 "${podman[@]}" pull --quiet "$remote" >/dev/null 2>&1; then
    "${podman[@]}" tag "$remote" "$base"
    log "$base: pulled from $remote"
  else
    log "$base: $remote cannot be pulled; making it from Debian's mirrors"
    apt_install mmdebstrap
    bash scripts/make-base-image.sh "$base"
  fi
done

# -- 3. build --------------------------------------------------------------------------------
previous=$("${podman[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
log "building $tag"
"${podman[@]}" build --layers --pull=never --tag "$tag" --file Dockerfile "$@" .
current=$("${podman[@]}" image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  # Untagged now; its layers still used by the new image or the cache stay.
  "${podman[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
# The build stage stays as an untagged image, the next build's cache: older ones go.
"${podman[@]}" images --quiet --filter dangling=true --filter label=rover-ebpf.stage=build |
  tail -n +2 | xargs --no-run-if-empty "${podman[@]}" rmi >/dev/null 2>&1 || true
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")
log "$tag: $(((size + 500000) / 1000000)) MB uncompressed, built in $((SECONDS - started)) s"
