#!/usr/bin/env bash
# Sets everything up and runs Tollgate's main job on the embedded defaults with a demo workload.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node collector-processor/dist/cli/main.js demo "$@"
