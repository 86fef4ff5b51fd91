#!/usr/bin/env bash
# Set this machine up for the swarm engine and its tests (docs/swarm.md): Docker
# (Debian's docker.io) and debootstrap installed, dockerd running (no bridge, no
# iptables: every container uses the host network), and a one-node Swarm on
# 127.0.0.1. Idempotent: what is there already is left as it is.
# Exit status 0: ready; 1: it cannot be done here (the reason on stderr).
set -euo pipefail

say() { echo "swarm-setup: $*" >&2; }
SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
    say "not root and no sudo: install docker.io and debootstrap, start dockerd and run" \
        "'docker swarm init --advertise-addr 127.0.0.1' yourself"
    exit 1
  fi
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log=/var/log/hwemu-dockerd.log
  say "starting dockerd (log: $log)"
  # setsid: the daemon outlives this script and the CI step that ran it
  "${SUDO[@]}" setsid sh -c "exec dockerd --bridge=none --iptables=false >>$log 2>&1" </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    say "dockerd did not start; the end of $log:"
    tail -5 "$log" >&2 || true
    exit 1
  fi
fi

# cgroup v1 puts every container under one "docker" cpu group, which weighs as much as ONE
# process of the host: on a busy machine a cluster of ten containers then gets the CPU time of one
# local process. Weigh the group as sixteen (a cluster's nodes run as local ones would).
# (made here if no container ran yet: Docker uses the group it finds)
shares=/sys/fs/cgroup/cpu/docker/cpu.shares
if [ -d /sys/fs/cgroup/cpu ] && [ ! -e "$shares" ]; then mkdir -p /sys/fs/cgroup/cpu/docker 2>/dev/null || true; fi
if [ -w "$shares" ] && [ "$(cat "$shares")" -lt 16384 ]; then
  echo 16384 > "$shares" || say "could not raise $shares (containers get less CPU on a busy host)"
fi

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  say "docker swarm init --advertise-addr 127.0.0.1"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
fi
say "ready: dockerd $(docker version --format '{{.Server.Version}}'), swarm active"
