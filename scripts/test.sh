#!/usr/bin/env bash
# Sets everything up and runs the full test suite: lint, type-check/build, unit and integration tests
# against real Redis and real ClickHouse (chDB). A missing service is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: the dashboard test drives Debian's Chromium through playwright-core (no browser download)
bash scripts/setup.sh chromium fonts-liberation
export CI="${CI:-true}"
npm test
# The Kong plugin: busted specs under LuaJIT, then real nginx + Redis + MCP SDK upstream (installs its own
# Debian packages); prints its own "N passed, N failed" line.
bash kong/run-tests.sh
