#!/usr/bin/env bash
# The main job: launch a cluster, look at it, change a route under it, run a
# real RISC-V program, stop everything; then `hwemu demo` (issue #7): a VMM
# interposed under a running OS, memory lent between OSes, devirtualized again,
# every step's pause and every check shown (exit 1 if a check failed).
set -euo pipefail
cd "$(dirname "$0")/.."
export HWEMU_RUN_DIR="${HWEMU_RUN_DIR:-$PWD/.hwemu/demo}"
hw=.venv/bin/hwemu
mkdir -p "$HWEMU_RUN_DIR"
trap '$hw down >/dev/null 2>&1 || true' EXIT

echo "== a RISC-V program compiled from C, on hwemu's CPU (standalone)"
$hw cpu run guest/build/samples/primes.elf --stats "$HWEMU_RUN_DIR/cpu.json" | tail -3
echo "   stats: $(cat "$HWEMU_RUN_DIR/cpu.json")"

echo "== a native cluster: memctl, cpu0, uart0, timer0 and the OS os1 are processes"
$hw up compose/native.toml --detach >/dev/null
$hw run compose/native.toml guest/build/samples/hello.elf -- world
$hw run compose/native.toml guest/build/samples/primes.elf | tail -2
$hw status
$hw down

echo "== a lossless route change under a running cluster"
$hw up compose/flip.toml --detach >/dev/null
$hw route show
$hw route set data:src sink_b
$hw down

echo "== the main job: interpose a VMM under a running OS, lend memory, devirtualize (hwemu demo)"
$hw demo --json "$HWEMU_RUN_DIR/demo.json"
echo "   report: $HWEMU_RUN_DIR/demo.json"
