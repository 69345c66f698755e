#!/usr/bin/env bash
# Makes a Debian base image locally, for hosts that reach Debian's mirrors but no container
# registry: mmdebstrap's minbase of a suite from this machine's Debian apt sources, trimmed
# as debian:*-slim is, imported into podman under the name the Dockerfile's FROM uses.
#
#   scripts/make-base-image.sh IMAGE    e.g. debian:bookworm-slim (the suite is the tag)
set -euo pipefail

log() { printf '[base-image] %s\n' "$*"; }
die() {
  printf '[base-image] error: %s\n' "$*" >&2
  exit 1
}

[ $# -eq 1 ] || die "usage: $0 IMAGE (e.g. debian:bookworm-slim)"
image=$1
tag=${image##*:}
suite=${tag%-slim}
[[ $image == *:* && $suite =~ ^[a-z]+$ ]] || die "expected debian:SUITE[-slim], got $image"
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, rootful podman)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
podman=("$(dirname "$0")/podman.sh")

# The machine's Debian sources for this suite (its mirror or proxy, its -updates and
# -security), one line each; other vendors' repositories are left out.
# shellcheck disable=SC2016 # $(...) is apt's format syntax, not the shell's
sources=$(apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)' |
  awk -v suite="$suite" '$1 == "deb" && ($3 == suite || index($3, suite "-") == 1) {
    print "deb " $2 " " $3 " " $4 }' | sort -u)
[ -n "$sources" ] || die "no apt source for $suite on this machine (see apt-get indextargets)"
log "sources:"
printf '  %s\n' "$sources"

work=$(mktemp -d /tmp/rover-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf '%s\n' "$sources" >"$work/sources.list"

# As debian:*-slim: merged /usr set up by mmdebstrap's hook (else init-system-helpers pulls
# in usrmerge and 46 MB of perl to do it), no documentation, manual pages or translations, now or in later apt
# installs (mmdebstrap keeps --dpkgopt in /etc/dpkg/dpkg.cfg.d/). The host's extra
# certificate authorities go in too: when ca-certificates is installed in a build they
# are trusted, as HTTPS from this machine needs (a proxy that re-signs traffic, say).
log "mmdebstrap --variant=minbase $suite"
# shellcheck disable=SC2016 # the hooks' "$1" (the chroot) is mmdebstrap's to expand
mmdebstrap --quiet --variant=minbase --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/groff/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --dpkgopt='path-exclude=/usr/share/linda/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='if [ -d /usr/local/share/ca-certificates ]; then
    cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"; fi' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
  "$suite" "$work/rootfs.tar" "$work/sources.list"

"${podman[@]}" import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --change "LABEL org.opencontainers.image.description=\"Debian $suite minbase, made locally by scripts/make-base-image.sh\"" \
  "$work/rootfs.tar" "$image" >/dev/null
log "$image: $("${podman[@]}" image inspect --format '{{.Size}}' "$image" | numfmt --to=iec) (made locally)"
