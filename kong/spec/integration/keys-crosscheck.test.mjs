// The Lua key builders and state decoder must agree with contracts/src/redis-keys.ts and
// contracts/src/enforcement-state.ts byte for byte. This transpiles those two TypeScript files
// (with the repo's own typescript, so no build step is needed) and compares both sides on
// tricky inputs, Lua running under luajit.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { KONG_DIR } from './harness.mjs';

const REPO = resolve(KONG_DIR, '..');
const require = createRequire(join(REPO, 'package.json'));
const ts = require('typescript');

let dir;
let keysTs;
let stateTs;
let refusalsTs;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tollgate-contracts-'));
  for (const name of ['redis-keys', 'enforcement-state', 'refusals']) {
    const src = readFileSync(join(REPO, 'contracts', 'src', `${name}.ts`), 'utf8');
    const out = ts.transpileModule(src, {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
    });
    writeFileSync(
      join(dir, `${name}.mjs`),
      out.outputText.replaceAll("'./redis-keys.js'", "'./redis-keys.mjs'"),
    );
  }
  keysTs = await import(pathToFileURL(join(dir, 'redis-keys.mjs')).href);
  stateTs = await import(pathToFileURL(join(dir, 'enforcement-state.mjs')).href);
  refusalsTs = await import(pathToFileURL(join(dir, 'refusals.mjs')).href);
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs the Lua side on a JSON list of inputs and returns its JSON answer. */
function lua(script, input) {
  const inFile = join(dir, 'in.json');
  writeFileSync(inFile, JSON.stringify(input));
  const code = `
    package.path = "${KONG_DIR}/?.lua;" .. package.path
    local cjson = require "cjson"
    local f = assert(io.open("${inFile}", "rb"))
    local input = cjson.decode(f:read("*a"))
    f:close()
    local keys = require "kong.plugins.tollgate.keys"
    local state = require "kong.plugins.tollgate.state"
    local out = {}
    ${script}
    io.write(cjson.encode(out))`;
  return JSON.parse(execFileSync('luajit', ['-e', code], { encoding: 'utf8' }));
}

const IDS = [
  'cus_1',
  'a:b',
  '{tag}',
  '100%',
  'with space',
  'tab\there',
  'nl\nx',
  '\u0000nul',
  '\u001f\u0020\u0021',
  '%41',
  '}{',
  '::',
  'café',
  '日本語',
  'emoji 😀',
  '\u007f',
  'x'.repeat(300),
  '',
];

describe('Redis keys: Lua == contracts/src/redis-keys.ts', () => {
  it('customer tag and state key', () => {
    const pairs = [];
    for (const p of ['acme', 'a:b', 'p%']) for (const c of IDS) pairs.push([p, c]);
    const got = lua(
      `
      for i, pc in ipairs(input) do
        local tag = keys.customer_tag(pc[1], pc[2])
        out[i] = { tag, keys.state_key(tag) }
      end`,
      pairs,
    );
    pairs.forEach(([p, c], i) => {
      const tag = keysTs.customerTag(p, c);
      assert.deepEqual(
        got[i],
        [tag, keysTs.redisKeys.state(tag)],
        `product ${JSON.stringify(p)} customer ${JSON.stringify(c)}`,
      );
    });
  });

  it('state fields', () => {
    const cases = [];
    for (const scope of ['customer', 'agent', 'session', 'tool'])
      for (const id of IDS) cases.push([scope, id]);
    const got = lua(`for i, c in ipairs(input) do out[i] = keys.state_field(c[1], c[2]) end`, cases);
    cases.forEach(([scope, id], i) => {
      assert.equal(got[i], stateTs.stateField(scope, id), `${scope} ${JSON.stringify(id)}`);
    });
  });
});

describe('refusal codes: Lua == contracts/src/refusals.ts', () => {
  it('kill, throttle, unavailable and too-large answers use the shared JSON-RPC codes', () => {
    const got = lua(
      `local jsonrpc = require "kong.plugins.tollgate.jsonrpc"
       out = { killed = jsonrpc.CODES.KILLED, throttled = jsonrpc.CODES.THROTTLED,
               unavailable = jsonrpc.CODES.UNAVAILABLE, tooLarge = jsonrpc.CODES.TOO_LARGE }`,
      {},
    );
    assert.deepEqual(got, { ...refusalsTs.REFUSAL_CODES });
  });
});

describe('enforcement state: Lua == contracts/src/enforcement-state.ts', () => {
  const NOW = 1_750_000_000_000;
  const values = () => [
    stateTs.encodeState({ action: 'kill', reason: 'hard_limit:spend_per_period', untilUnixMs: 0 }),
    stateTs.encodeState({
      action: 'throttle',
      reason: 'margin_guard:throttle',
      untilUnixMs: NOW + 5000,
      ratePerSecond: 2.5,
      marginBps: 850,
    }),
    stateTs.encodeState({
      action: 'warn',
      reason: 'margin_guard:warn',
      untilUnixMs: NOW - 1,
      marginBps: 1900,
    }),
    stateTs.encodeState({ action: 'kill', reason: 'operator', untilUnixMs: NOW + 1 }),
    'kill',
    'throttle|r|soon|fast|',
    'resume|x|0||',
    '',
    'kill|r|5|1|2|extra',
    'warn||||-300',
  ];

  it('decodeState and stateInForce', () => {
    const VALUES = values();
    const got = lua(
      `
      for i, v in ipairs(input.values) do
        local s = state.decode(v)
        if s == nil then
          out[i] = cjson.null
        else
          out[i] = {
            action = s.action, reason = s.reason, untilUnixMs = s.until_ms,
            ratePerSecond = (s.rate == false) and "NaN" or s.rate,
            marginBps = s.margin_bps,
            inForce = state.in_force(s, input.now),
          }
        end
      end`,
      { values: VALUES, now: NOW },
    );
    VALUES.forEach((v, i) => {
      const s = stateTs.decodeState(v);
      if (s === undefined) {
        assert.equal(got[i], null, JSON.stringify(v));
        return;
      }
      const expected = {
        action: s.action,
        reason: s.reason,
        untilUnixMs: s.untilUnixMs,
        inForce: stateTs.stateInForce(s, NOW),
      };
      if (s.ratePerSecond !== undefined)
        expected.ratePerSecond = Number.isNaN(s.ratePerSecond) ? 'NaN' : s.ratePerSecond;
      if (s.marginBps !== undefined && !Number.isNaN(s.marginBps)) expected.marginBps = s.marginBps;
      assert.deepEqual(got[i], expected, JSON.stringify(v));
    });
  });
});
