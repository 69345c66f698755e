#!/usr/bin/env bash
# Removes from rover's virtualenv what rover never runs, for the image (the Dockerfile runs
# it in the same step as install.sh, so nothing removed stays in a lower layer):
# - the Kubernetes client's asyncio variant (kubernetes.aio, 68 MB) and the packages only
#   it needs (aiohttp and its helpers): rover uses the synchronous client;
# - the installers, pip and setuptools: nothing is installed at run time;
# - test suites (numpy's compiled test modules too), type stubs, and what only builds
#   other packages: numpy's f2py and distutils, C headers, Cython declarations.
# Then every rover module is imported, so a removal that breaks rover fails the build.
#
#   scripts/prune-venv.sh VENV
set -euo pipefail

die() {
  printf '[prune-venv] error: %s\n' "$*" >&2
  exit 1
}
[ $# -eq 1 ] || die "usage: $0 VENV"
venv=$1
python=$venv/bin/python
[ -x "$python" ] || die "$venv is not a virtualenv"
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
before=$(du -sm "$venv" | cut -f1)

# pip removes what each distribution installed (its RECORD), scripts included; absent ones
# are skipped. pip goes last: it uninstalls itself.
asyncio_only=(aiohttp aiohttp-retry aiohappyeyeballs aiosignal attrs frozenlist multidict
  propcache yarl)
"$python" -m pip uninstall --yes --quiet "${asyncio_only[@]}" setuptools 2>&1 |
  grep -v '^WARNING: Skipping' || true
"$python" -m pip uninstall --yes --quiet pip
rm -rf "$site/kubernetes/aio"

find "$site" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
find "$site" \( -name '*.pyi' -o -name '*.pxd' \) -delete
rm -rf "$site"/numpy/_core/_*_tests.cpython-*.so "$site"/numpy/_core/_simd.cpython-*.so \
  "$site/numpy/random/_examples" "$site/numpy/random/lib" "$site/numpy/f2py" \
  "$site/numpy/distutils" "$site/numpy/_core/include" "$site/numpy/_core/lib" \
  "$venv/bin/f2py" "$venv/bin/numpy-config"

# Every rover module must still import (rover.cli and the agent's lazy imports included).
"$python" -I - <<'EOF' || die "rover no longer imports after pruning"
import importlib, pkgutil, rover

for module in pkgutil.walk_packages(rover.__path__, "rover."):
    importlib.import_module(module.name)
import kubernetes.client, kubernetes.config, kubernetes.watch  # noqa: E401 - the sync client
EOF
printf '[prune-venv] %s: %s MB -> %s MB\n' "$venv" "$before" "$(du -sm "$venv" | cut -f1)"
