#!/usr/bin/env bash
# `make demo`: build a small request-handling program, run it, profile it on-CPU
# for 5 seconds with the real BPF profiler, and write an HTML flame graph.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
out=${DEMO_OUTPUT:-build/demo-flamegraph.html}

gcc -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls \
  -o build/demo_service scripts/demo/demo_service.c
build/demo_service > build/demo_service.log &
workload=$!
trap 'kill $workload 2>/dev/null || true' EXIT
sleep 0.3

.venv/bin/rover profile --pid "$workload" --type on-cpu --duration 5s --output "$out"
echo "flame graph: $(realpath "$out")"
