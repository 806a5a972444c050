#!/usr/bin/env bash
# wrk through nginx with and without the tollgate plugin code path against a static upstream.
# Usage: bash kong/bench/run.sh [durationSeconds] [connections]   (after npm ci at the repo root)
set -euo pipefail
KONG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
missing=()
for p in wrk nginx libnginx-mod-http-lua lua-nginx-redis lua-cjson redis-server; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cd "$KONG_DIR/.."
exec node kong/bench/bench.mjs "$@"
