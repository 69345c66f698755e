#!/usr/bin/env bash
# podman with the two settings its defaults get wrong on hosts like CI's VM, given in a
# file of our own (CONTAINERS_CONF) so the machine's containers.conf stays untouched:
# - runtime runc: crun cannot start containers when cgroup v2 is mounted in hybrid mode
#   next to v1 controllers;
# - open files and processes: rootful podman asks for 1048576 of each in every container
#   and build step, more than a host whose hard limit is lower can grant without
#   CAP_SYS_RESOURCE; ask for the host's hard limit of open files instead, and for at most
#   32768 processes (podman lowers its own limit to that when it starts; RLIMIT_NPROC counts
#   every process of the user, host-wide, so it must not be small either).
# A CONTAINERS_CONF already set is the caller's choice and is kept.
#
#   scripts/podman.sh ARGS...    (as podman ARGS...)
set -euo pipefail

if [ -z "${CONTAINERS_CONF:-}" ]; then
  conf_dir=${ROVER_PODMAN_CONF_DIR:-/run/rover-podman}
  CONTAINERS_CONF=$conf_dir/containers.conf
  limit() { # the hard limit, at most $2
    local value
    value=$(ulimit -H "$1")
    if [ "$value" = unlimited ] || [ "$value" -gt "$2" ]; then value=$2; fi
    printf '%s' "$value"
  }
  nofile=$(limit -n 1048576)
  nproc=$(limit -u 32768)
  wanted="# Written by scripts/podman.sh (see there why); regenerated when it differs.
[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]

[engine]
runtime = \"runc\""
  if [ "$(cat "$CONTAINERS_CONF" 2>/dev/null)" != "$wanted" ]; then
    mkdir -p "$conf_dir"
    printf '%s\n' "$wanted" >"$CONTAINERS_CONF.tmp.$$"
    mv "$CONTAINERS_CONF.tmp.$$" "$CONTAINERS_CONF"
  fi
  export CONTAINERS_CONF
fi
exec podman "$@"
