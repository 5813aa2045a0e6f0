#!/usr/bin/env bash
# Rootful podman for the container test, and the exporter image's base built here.
#
#   bash scripts/container-base.sh up    # configure podman, build the base image once
#   eval "$(bash scripts/container-base.sh env)"   # CONTAINERS_CONF, CONTAINERS_STORAGE_CONF
#
# No registry is reachable from the build machines, so `python:3.12-slim-bookworm` cannot be
# pulled: the base is Debian bookworm from mmdebstrap with Debian's Python, imported under a
# local tag and also tagged with the name exporter/Dockerfile's FROM uses. podman 4.3 needs runc here (crun
# refuses the hybrid cgroup layout) and explicit rlimits (its defaults fail with EPERM).
#
# The same base (LSE_PYTHON_IMAGE) carries the Debian Prometheus and Alertmanager image of the
# stack test (tests/container/prometheus.Dockerfile, built by podman-compose through
# tests/container/compose.debian.yml). Both stay in $DIR's storage between runs: the base is
# built once, and podman's layer cache reuses the Prometheus image's package layer.
set -euo pipefail
DIR=${LSE_PODMAN_DIR:-/var/lib/lse-podman}
BASE=localhost/lse-python-base:bookworm

env_lines() {
  echo "export CONTAINERS_CONF=$DIR/containers.conf"
  echo "export CONTAINERS_STORAGE_CONF=$DIR/storage.conf"
  echo "export LSE_PYTHON_IMAGE=$BASE"
}

up() {
  mkdir -p "$DIR"
  cat >"$DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
  cat >"$DIR/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
CONF
  eval "$(env_lines)"
  if ! podman image exists "$BASE"; then
    build_base
  fi
  # Also under the name exporter/Dockerfile's FROM uses, so that compose builds it unchanged.
  local from
  from=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$(dirname "$0")/../exporter/Dockerfile")
  podman tag "$BASE" "docker.io/library/$from"
  echo "container-base: $BASE, tagged $from"
}

build_base() {
  local tar="$DIR/base.tar"
  echo "container-base: mmdebstrap bookworm with Debian's python3 (about 30 s)"
  # The machine's CA bundle lets pip inside the build reach PyPI.
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-pip,python3-dev,python-is-python3,ca-certificates \
    --customize-hook='mkdir -p "$1/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"' \
    --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" >"$1/etc/pip.conf"' \
    bookworm "$tar"
  # Debian's pip refuses to install into its own Python (PEP 668) unless told: the image is
  # the exporter's alone, as python:*-slim's /usr/local is.
  podman import --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" --change 'CMD ["python3"]' \
    "$tar" "$BASE" >/dev/null
  rm -f "$tar"
}

case "${1:-}" in
  up) up ;;
  env) env_lines ;;
  *) echo "usage: $0 up|env" >&2; exit 2 ;;
esac
