#!/usr/bin/env bash
# Set up everything hwemu needs on a fresh Debian machine that has only python3:
# the RISC-V cross toolchain and qemu-user (Debian packages), then .venv/ with
# the project installed editable, pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v riscv64-unknown-elf-gcc >/dev/null || need_pkgs+=(gcc-riscv64-unknown-elf)
[ -d /usr/lib/picolibc/riscv64-unknown-elf ] || need_pkgs+=(picolibc-riscv64-unknown-elf)
command -v qemu-riscv32 >/dev/null || need_pkgs+=(qemu-user)
# headless Chromium renders the demo's HTML report in its test (tests/integration/test_demo_report.py)
command -v chromium >/dev/null || need_pkgs+=(chromium)
# network namespaces and veth pairs: the across-hosts test (tests/integration/test_netns.py); setpriv
# runs a process as another account in test_hosts.py
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    echo "setup: installing Debian packages with sudo: ${need_pkgs[*]}"
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "setup: not root and no sudo: install these Debian packages first: ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.hwemu-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
  touch "$stamp"
fi

# Byte-compile our own sources: every node is a process that imports them,
# and where PYTHONDONTWRITEBYTECODE is set (as on this project's machines)
# nothing would cache them, so each start compiled them anew (0.62 → 0.46 s
# to import a CPU node, an OS kernel, the directory and the orchestrator).
# A source edited later is simply compiled in memory again until the next set-up.
.venv/bin/python -m compileall -q protocol nodes orchestrator hwemu tests bench >/dev/null
