#!/usr/bin/env bash
# Installs what rayhead's tests and dev runner need on a fresh Debian machine
# (root, Rust and Python 3.11 present): redis-server from Debian, podman and
# runc from Debian (the container tests), the two musl Rust targets of
# `make dist`, Ray 2.60.0 with its dashboard and Serve (ray[default,serve])
# in a project-local virtualenv (.venv), and the release build.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

RAY_VERSION=2.60.0
VENV=.venv

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The container tests: podman runs the images with runc (Debian's crun fails
# on a hybrid cgroup layout; runc works). Root only: a developer without root
# skips these, and the container tests then say why they cannot run.
if [ "$(id -u)" = 0 ]; then
  command -v podman >/dev/null 2>&1 || need_apt+=(podman)
  command -v runc >/dev/null 2>&1 || need_apt+=(runc)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's package may start a redis-server on 6379 where an init system runs;
# the tests start their own on free ports and never touch 6379.

if ! "$VENV/bin/python" -c "import ray, ray.serve, sys; sys.exit(ray.__version__ != '$RAY_VERSION')" 2>/dev/null; then
  log "creating $VENV with ray[default,serve]==$RAY_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "ray[default,serve]==$RAY_VERSION"
fi

# make dist's static binaries; rustup fetches each target's standard library once.
if command -v rustup >/dev/null 2>&1; then
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    rustup target list --installed | grep -qx "$t" || { log "adding the Rust target $t"; rustup target add "$t"; }
  done
fi

log "building"
cargo build --release --quiet
log "ready: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), ray $("$VENV/bin/ray" --version 2>/dev/null | awk '{print $NF}')"
