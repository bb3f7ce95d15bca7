#!/usr/bin/env bash
# The local dev runner: a redis-server (password, AOF) and a Ray head supervised
# by rayhead with GCS fault tolerance, in one command. State lives in .local/.
# Ctrl-C stops Ray through rayhead, then Redis.
#
#   make dev                       # or: scripts/dev.sh
#   DEV_REDIS_PORT=16379 DEV_GCS_PORT=26379 DEV_PROBE=127.0.0.1:8099 scripts/dev.sh
#
# While it runs:  target/release/rayhead probe status --url http://$DEV_PROBE
#                 pkill -KILL gcs_server   # watch rayhead restart it in place
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=${DEV_REDIS_PORT:-16379}
GCS_PORT=${DEV_GCS_PORT:-26379}
PROBE=${DEV_PROBE:-127.0.0.1:8099}
STATE=.local
mkdir -p "$STATE/redis" "$STATE/ray"
export REDIS_PASSWORD=${REDIS_PASSWORD:-dev-password}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --requirepass "$REDIS_PASSWORD" \
  --appendonly yes --maxmemory-policy noeviction --dir "$STATE/redis" \
  --logfile "$PWD/$STATE/redis/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null || true' EXIT

export PATH="$PWD/.venv/bin:$PATH"
export RAY_REDIS_ADDRESS="127.0.0.1:$REDIS_PORT"
export RAY_external_storage_namespace=${RAY_external_storage_namespace:-dev}
export RAYHEAD_PROBE_LISTEN="$PROBE"
export RAY_DISABLE_USAGE_STATS=1
# The same shape as KubeRay's KUBERAY_GEN_RAY_START_CMD, literal $REDIS_PASSWORD included.
export KUBERAY_GEN_RAY_START_CMD="ray start --head --block --port=$GCS_PORT --node-ip-address=127.0.0.1 \
--temp-dir=$PWD/$STATE/ray --dashboard-host=127.0.0.1 --disable-usage-stats --redis-password=\$REDIS_PASSWORD"
rm -f "$STATE/ray/ray_current_cluster"

echo "[dev] Redis on 127.0.0.1:$REDIS_PORT, GCS on 127.0.0.1:$GCS_PORT, probes on http://$PROBE" >&2
echo "[dev] try: target/release/rayhead probe status --url http://$PROBE" >&2
target/release/rayhead run
