#!/usr/bin/env bash
# Runs every test of the Kong plugin: the busted specs under LuaJIT (schema, pure modules,
# handler against the PDK fake) and the integration run (real nginx + lua-nginx-module, real
# redis-server, real MCP SDK upstream, a real Tollgate for the quota leases) plus the Lua/TypeScript
# key cross-check.
#
# Usage (from anywhere, after `npm ci` at the repo root): bash kong/run-tests.sh
# Installs missing Debian packages itself. Ends with a plain "N passed, N failed" line and exits
# non-zero on any failure; a missing tool counts as a failure, never as a skip.
set -uo pipefail

KONG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$KONG_DIR/.." && pwd)"

# luajit2 is OpenResty's LuaJIT branch (/usr/bin/luajit); Debian's plain `luajit` package
# conflicts with the libluajit2 that lua-resty-core (pulled by libnginx-mod-http-lua) needs.
PACKAGES=(luajit2 lua-busted lua-cjson nginx libnginx-mod-http-lua lua-nginx-redis redis-server)

passed=0
failed=0
problems=()

note_failure() {
  failed=$((failed + 1))
  problems+=("$1")
  echo "FAILED: $1" >&2
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
      note_failure "missing packages (${missing[*]}) and not root to install them"
      return 1
    fi
  fi
  if ! "${sudo[@]}" apt-get update -qq >/dev/null; then
    note_failure "apt-get update"
    return 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    note_failure "apt-get install ${missing[*]}"
    return 1
  fi
}

require_tool() {
  command -v "$1" >/dev/null 2>&1 || { note_failure "required tool not found: $1"; return 1; }
}

install_packages
tools_ok=1
for t in luajit busted nginx redis-server node; do
  require_tool "$t" || tools_ok=0
done
for f in /usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so \
         /usr/share/lua/5.1/nginx/redis.lua; do
  [ -e "$f" ] || { note_failure "missing $f"; tools_ok=0; }
done
for m in @modelcontextprotocol/sdk typescript zod; do
  [ -d "$REPO_DIR/node_modules/$m" ] || { note_failure "node_modules/$m missing: run npm ci at the repo root"; tools_ok=0; }
done
# the lease integration runs a real Tollgate (collector-processor) and reads the contracts' key names
for f in collector-processor/dist/cli/main.js contracts/dist/index.js; do
  [ -e "$REPO_DIR/$f" ] || { note_failure "$f missing: run npm run build at the repo root"; tools_ok=0; }
done

# --- busted specs (LuaJIT) -------------------------------------------------------------------
if [ "$tools_ok" -eq 1 ] || command -v busted >/dev/null 2>&1; then
  echo "== busted specs (luajit)"
  tap="$(cd "$KONG_DIR" && busted --lua=luajit -o TAP 2>&1)"
  rc=$?
  echo "$tap"
  ok=$(grep -cE '^ok [0-9]+' <<<"$tap")
  nok=$(grep -cE '^not ok [0-9]+' <<<"$tap")
  passed=$((passed + ok))
  failed=$((failed + nok))
  if [ "$rc" -ne 0 ] && [ "$nok" -eq 0 ]; then
    note_failure "busted exited $rc without a failing test (load error?)"
  fi
  [ "$ok" -eq 0 ] && note_failure "busted ran no test"
fi

# --- integration (nginx + redis + MCP SDK upstream) and key cross-check (node:test) ----------
if [ "$tools_ok" -eq 1 ]; then
  echo "== integration and cross-check (node --test)"
  tap="$(cd "$REPO_DIR" && node --test --test-reporter=tap --test-concurrency=1 \
           kong/spec/integration/keys-crosscheck.test.mjs kong/spec/integration/integration.test.mjs \
           kong/spec/integration/leases.test.mjs kong/spec/integration/usage.test.mjs \
           kong/spec/integration/hostile.test.mjs 2>&1)"
  rc=$?
  echo "$tap"
  ok=$(sed -nE 's/^# pass ([0-9]+)$/\1/p' <<<"$tap" | tail -1)
  nok=$(sed -nE 's/^# fail ([0-9]+)$/\1/p' <<<"$tap" | tail -1)
  ok=${ok:-0}
  nok=${nok:-0}
  passed=$((passed + ok))
  failed=$((failed + nok))
  if [ "$rc" -ne 0 ] && [ "$nok" -eq 0 ]; then
    note_failure "node --test exited $rc without a failing test (hook or load error)"
  fi
  [ "$ok" -eq 0 ] && note_failure "node --test ran no test"
else
  note_failure "integration not run: required tools missing"
fi

for p in "${problems[@]+"${problems[@]}"}"; do
  echo "problem: $p"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
