#!/usr/bin/env bash
# The one place with rover's install steps: the Dockerfile runs it to build the image, and
# tests/test_deploy_install.py runs it into a fresh directory, so CI covers what the image
# gets. Run with --help for what it does.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [options] PREFIX

Installs rover into PREFIX on Debian 12 (as root):
  1. the Debian packages it needs at run time (python3, python3-venv, python3-bpfcc,
     libbpfcc, ca-certificates), unless they are installed already;
  2. a virtualenv at PREFIX/venv (Debian's /usr/bin/python3 with its system site
     packages, where bcc lives) holding rover and its dependencies (not editable);
  3. PREFIX/bin/rover;
  4. Debian 12's kernel headers (the 6.1 kernel and the 6.12 backport) for hosts that
     have none of their own, unpacked from the .deb files (never apt-get installed: that
     would pull in a kernel image).

Options:
  --source PATH         rover's source tree or a built wheel (default: this repository)
  --headers-dir DIR     where the fallback kernel headers go (default:
                        PREFIX/share/rover/kernel-headers; PREFIX/bin/rover points rover
                        at it; rover's own default is /usr/share/rover/kernel-headers)
  --kernel-series LIST  Debian 12 kernel series to ship headers for (default: "6.1 6.12";
                        "" ships none)
  --cache-dir DIR       where downloaded .deb files are kept between runs
                        (default: /var/cache/rover-install)
  --system-only         steps 1 and 4 only (the image installs them in a layer of their
                        own, which a change to rover's code does not rebuild)
  -h, --help            show this help

Running it again updates the install. On failure it names the step that failed.
EOF
}

log() { printf '[install] %s\n' "$*"; }
die() {
  printf '[install] error: %s\n' "$*" >&2
  exit 1
}

repo=$(cd "$(dirname "$0")/.." && pwd)
source_path=$repo
headers_dir=""
kernel_series="6.1 6.12"
cache_dir=/var/cache/rover-install
system_only=0
prefix=""
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --source) [ $# -ge 2 ] || die "--source needs a path"; source_path=$2; shift 2 ;;
    --headers-dir) [ $# -ge 2 ] || die "--headers-dir needs a directory"; headers_dir=$2; shift 2 ;;
    --kernel-series) [ $# -ge 2 ] || die "--kernel-series needs a list"; kernel_series=$2; shift 2 ;;
    --cache-dir) [ $# -ge 2 ] || die "--cache-dir needs a directory"; cache_dir=$2; shift 2 ;;
    --system-only) system_only=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$prefix" ] || die "one PREFIX only (got $prefix and $1)"; prefix=$1; shift ;;
  esac
done
[ -n "$prefix" ] || { usage >&2; die "PREFIX is missing"; }
case $prefix in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
prefix=${prefix%/}
headers_dir=${headers_dir:-$prefix/share/rover/kernel-headers}
case $headers_dir in /*) ;; *) die "--headers-dir must be absolute, got $headers_dir" ;; esac
[ -e "$source_path" ] || die "--source $source_path does not exist"
for series in $kernel_series; do
  [[ $series =~ ^[0-9]+\.[0-9]+$ ]] || die "--kernel-series: expected versions like 6.1, got $series"
done

step="starting"
trap 'printf "[install] error: step failed: %s\n" "$step" >&2' ERR

work=$(mktemp -d /tmp/rover-install.XXXXXX)
trap 'rm -rf "$work"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() {
  if [ $apt_updated -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
}

# -- 1. Debian packages ----------------------------------------------------------------------
step="Debian packages"
runtime_packages=(python3 python3-venv python3-bpfcc libbpfcc ca-certificates)
missing=()
for pkg in "${runtime_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "must run as root to install ${missing[*]}"
  apt_update
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- 2. virtualenv with rover ----------------------------------------------------------------
# (a function, so --system-only can leave steps 2 and 3 out)
install_rover() {
  step="virtualenv at $prefix/venv"
  venv=$prefix/venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import bcc' 2>/dev/null; then
    log "creating $venv"
    rm -rf "$venv"
    mkdir -p "$prefix"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  pip=("$venv/bin/pip" --disable-pip-version-check --quiet)

  step="building rover from $source_path"
  if [ -d "$source_path" ]; then
    # Build from a clean copy of what the wheel needs: an in-tree build would leave build/
    # behind, whose stale files can end up in later wheels.
    mkdir -p "$work/src"
    tar -C "$source_path" --exclude=__pycache__ -cf - \
      pyproject.toml setup.py MANIFEST.in README.md rover bpf configs | tar -C "$work/src" -xf -
    "${pip[@]}" wheel --no-deps --wheel-dir "$work/dist" "$work/src"
    wheel=$(ls "$work"/dist/rover_ebpf-*.whl)
  else
    case $source_path in *.whl) ;; *) die "--source: expected a directory or a .whl, got $source_path" ;; esac
    wheel=$source_path
  fi

  step="installing $(basename "$wheel") and its dependencies"
  log "installing $(basename "$wheel") into $venv"
  "${pip[@]}" install "$wheel"
  # The same version may be installed already: replace it with this build.
  "${pip[@]}" install --force-reinstall --no-deps "$wheel"
  "$venv/bin/python" -c 'import bcc, rover._data as d; assert (d.data_dir("bpf") / "oncpu.c").is_file()' \
    || die "the installed rover cannot import bcc or find its BPF sources"

  # -- 3. PREFIX/bin/rover -------------------------------------------------------------------
  step="$prefix/bin/rover"
  mkdir -p "$prefix/bin"
  cat >"$prefix/bin/rover.tmp" <<EOF
#!/bin/sh
# rover, installed by scripts/install.sh; the fallback kernel headers are where it put them.
: "\${ROVER_SHIPPED_KERNEL_HEADERS:=$headers_dir}"
export ROVER_SHIPPED_KERNEL_HEADERS
exec "$venv/bin/rover" "\$@"
EOF
  chmod 755 "$prefix/bin/rover.tmp"
  mv -f "$prefix/bin/rover.tmp" "$prefix/bin/rover"
}
if [ $system_only -eq 0 ]; then install_rover; fi

# -- 4. fallback kernel headers --------------------------------------------------------------
step="kernel headers"
case $(dpkg --print-architecture) in
  amd64) flavour=amd64 karch=x86 ;;
  arm64) flavour=arm64 karch=arm64 ;;
  *) die "no Debian kernel headers known for architecture $(dpkg --print-architecture)" ;;
esac

# The newest Debian 12 header package of a series, e.g. 6.1 -> linux-headers-6.1.0-56-amd64.
newest_headers_package() {
  local pattern="^linux-headers-${1//./\\.}\\.[0-9]+(-[0-9]+)?(\\+deb[0-9]+)?-${flavour}\$"
  apt-cache search --names-only "$pattern" | awk '{print $1}' | sort -V | tail -n 1
}

# The .deb of a package in the cache, downloaded if absent.
fetch_deb() {
  local pkg=$1 deb
  deb=$(find "$cache_dir" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
  if [ -z "$deb" ]; then
    (cd "$cache_dir" && apt-get download -qq -o APT::Sandbox::User=root "$pkg") >&2
    deb=$(find "$cache_dir" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
  fi
  printf '%s\n' "$deb"
}

# What bcc does not read: other architectures, module build tools, symbol versions, and the
# headers of device drivers (device tree bindings, sound, graphics, video, storage and
# network adapters: no profiling program includes them; 20 MiB a tree).
prune_tree() {
  local tree=$1 dir
  rm -rf "$tree/scripts" "$tree/tools" "$tree/Module.symvers" "$tree/vmlinux"
  for dir in dt-bindings sound drm media soc video rdma scsi target ufs pcmcia \
    linux/mfd linux/platform_data linux/mlx5 linux/soc linux/mtd linux/iio linux/qed \
    uapi/drm uapi/sound uapi/rdma; do
    rm -rf "${tree:?}/include/$dir"
  done
  if [ -d "$tree/arch" ]; then
    find "$tree/arch" -mindepth 1 -maxdepth 1 ! -name "$karch" -exec rm -rf {} +
  fi
}

if [ -n "$kernel_series" ]; then
  mkdir -p "$headers_dir" "$cache_dir"
  for series in $kernel_series; do
    step="kernel headers $series"
    arch_pkg=$(newest_headers_package "$series")
    if [ -z "$arch_pkg" ]; then
      apt_update
      arch_pkg=$(newest_headers_package "$series")
    fi
    [ -n "$arch_pkg" ] || die "no linux-headers-$series.*-$flavour package in Debian's lists"
    common_pkg=$(apt-cache depends "$arch_pkg" | awk '/Depends: linux-headers-.*-common/ {print $2; exit}')
    [ -n "$common_pkg" ] || die "cannot tell the -common package of $arch_pkg"
    # Older trees of this series go: only the current one is shipped.
    for old in "$headers_dir"/linux-headers-"$series".*; do
      [ -e "$old" ] || continue
      case $(basename "$old") in "$arch_pkg" | "$common_pkg") ;; *) rm -rf "$old" ;; esac
    done
    if [ -f "$headers_dir/$arch_pkg/include/generated/autoconf.h" ] &&
      [ -f "$headers_dir/$common_pkg/include/linux/kconfig.h" ]; then
      log "kernel headers $arch_pkg already in $headers_dir"
      continue
    fi
    log "kernel headers $arch_pkg + $common_pkg -> $headers_dir"
    staging=$work/headers-$series
    mkdir -p "$staging"
    for pkg in "$arch_pkg" "$common_pkg"; do
      dpkg-deb -x "$(fetch_deb "$pkg")" "$staging"
    done
    for pkg in "$arch_pkg" "$common_pkg"; do
      tree=$staging/usr/src/$pkg
      [ -d "$tree/include" ] || die "$pkg has no usr/src/$pkg/include"
      prune_tree "$tree"
      rm -rf "${headers_dir:?}/$pkg.new" "${headers_dir:?}/$pkg"
      cp -a "$tree" "$headers_dir/$pkg.new"
      mv "$headers_dir/$pkg.new" "$headers_dir/$pkg"
    done
  done
fi

step="checking the install"
if [ $system_only -eq 1 ]; then
  log "done: Debian packages, kernel headers in $headers_dir (--system-only: no rover)"
  exit 0
fi
version=$("$prefix/bin/rover" --version)
log "done: $prefix/bin/rover ($version), kernel headers in $headers_dir"
