#!/usr/bin/env bash
# Idempotent set-up of a Debian 12 machine (as root) for running and testing rover:
# apt packages, kernel headers for bcc, tracefs, and the project's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] must run as root (apt, kernel headers and BPF need it)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Runtime: bcc from Debian (never the unrelated PyPI "bcc"); build tools for test workloads;
# chromium + chromedriver for the flame graph browser tests.
apt_install python3 python3-venv python3-pip python3-bpfcc libbpfcc binutils gcc g++ make \
  util-linux mount bpftool golang-go chromium chromium-driver fonts-dejavu-core ca-certificates nginx-core wrk
command -v rustc >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/rustc" ] || apt_install rustc
# node runs a JIT workload with --perf-basic-prof; npm fetches speedscope for the tests that
# check our files against its schema and app.
command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm

# Kernel headers for bcc: the running kernel's own package when Debian has it, else the
# newest Debian 12 6.12 headers, linked where bcc looks (/lib/modules/$(uname -r)/{build,source}).
release=$(uname -r)
moddir=/lib/modules/$release
if [ ! -f "$moddir/build/include/generated/autoconf.h" ]; then
  if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
  if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
    apt_install "linux-headers-$release"
  else
    arch_pkg=$(apt-cache search --names-only '^linux-headers-6\.12\.[0-9]+\+deb12-amd64$' \
      | awk '{print $1}' | sort -V | tail -n 1)
    [ -n "$arch_pkg" ] || { echo "[setup] no linux-headers-6.12.*-amd64 package found" >&2; exit 1; }
    apt_install "$arch_pkg"
    version=${arch_pkg#linux-headers-}
    version=${version%-amd64}
    mkdir -p "$moddir"
    ln -sfn "/usr/src/linux-headers-$version-amd64" "$moddir/build"
    ln -sfn "/usr/src/linux-headers-$version-common" "$moddir/source"
    log "linked $moddir/{build,source} to the $version headers (no package for $release)"
  fi
fi

# Tracepoints need tracefs (debugfs for older layouts).
if [ ! -d /sys/kernel/tracing/events/sched ] && [ ! -d /sys/kernel/debug/tracing/events/sched ]; then
  mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true
  mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || true
fi

# The virtualenv: Debian's python (it matches python3-bpfcc) with system site packages for bcc.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing the project into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
.venv/bin/python -c 'import bcc, elftools, rover' || { echo "[setup] the virtualenv is broken" >&2; exit 1; }
log "ready: .venv/bin/rover"
