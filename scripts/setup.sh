#!/usr/bin/env bash
# Installs everything Tollgate needs on a fresh Debian/Ubuntu machine with Node.js (20.19+ or 22.12+):
# Debian packages that are missing (redis-server), the npm packages (npm ci), and the build.
# Idempotent: run it as often as you like.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in "$@" redis-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

node -e 'const [a,b]=process.versions.node.split(".").map(Number); if(!((a===20&&b>=19)||(a===22&&b>=12)||a>=24)){console.error("setup: Node "+process.versions.node+" is not supported (need 20.19+, 22.12+ or 24+)");process.exit(1)}'

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
# The instrumentation's version matrix also runs the oldest supported MCP SDK 2.x line, from its own folder.
FIXTURE=instrumentation/test/fixtures/sdk-2.0
if [ ! -d "$FIXTURE/node_modules" ] || [ "$FIXTURE/package-lock.json" -nt "$FIXTURE/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci ($FIXTURE)"
  npm ci --prefix "$FIXTURE" --no-audit --no-fund --loglevel=error
fi
npm run --silent build
