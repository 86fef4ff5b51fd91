#!/usr/bin/env bash
# The main job until `hwemu demo` (issue #7) exists: launch a cluster, look at
# it, change a route under it, run a real RISC-V program, stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export HWEMU_RUN_DIR="${HWEMU_RUN_DIR:-$PWD/.hwemu/demo}"
hw=.venv/bin/hwemu
mkdir -p "$HWEMU_RUN_DIR"
trap '$hw down >/dev/null 2>&1 || true' EXIT

echo "== a RISC-V program compiled from C, on hwemu's CPU (standalone)"
$hw cpu run guest/build/samples/primes.elf --stats "$HWEMU_RUN_DIR/cpu.json" | tail -3
echo "   stats: $(cat "$HWEMU_RUN_DIR/cpu.json")"

if [ -f compose/native.toml ] && [ -f nodes/guest_os/__init__.py ]; then
  echo "== the same kind of program on a native cluster: memctl, cpu0, uart0, timer0, os1 as processes"
  $hw run compose/native.toml guest/build/samples/hello.elf -- world
fi

echo "== a cluster of processes, its status and a lossless route change"
$hw up compose/flip.toml --detach >/dev/null
$hw status
$hw route set data:src sink_b
$hw down
