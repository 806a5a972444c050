// The Lua key builders and state decoder must agree with contracts/src/redis-keys.ts and
// contracts/src/enforcement-state.ts byte for byte, and the gateway's billing sessions with
// contracts/src/billing-session.ts. This transpiles those two TypeScript files
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
let sessionTs;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tollgate-contracts-'));
  for (const name of [
    'redis-keys',
    'enforcement-state',
    'refusals',
    'billing-session',
    'event-id',
    'identifiers',
  ]) {
    const src = readFileSync(join(REPO, 'contracts', 'src', `${name}.ts`), 'utf8');
    const out = ts.transpileModule(src, {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
    });
    writeFileSync(join(dir, `${name}.mjs`), out.outputText.replace(/'\.\/([a-z-]+)\.js'/g, "'./$1.mjs'"));
  }
  keysTs = await import(pathToFileURL(join(dir, 'redis-keys.mjs')).href);
  stateTs = await import(pathToFileURL(join(dir, 'enforcement-state.mjs')).href);
  refusalsTs = await import(pathToFileURL(join(dir, 'refusals.mjs')).href);
  sessionTs = await import(pathToFileURL(join(dir, 'billing-session.mjs')).href);
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
    local session = require "kong.plugins.tollgate.session"
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

describe('billing sessions: kong/plugins/tollgate/session.lua vs contracts/src/billing-session.ts', () => {
  it('activity session ids and credential fingerprints are identical', () => {
    const CASES = IDS.filter((v) => !v.includes('\u0000')).map((v, i) => ({
      customer: v,
      agent: IDS[(i + 3) % IDS.length].replace('\u0000', ''),
      credential: `cred-${i}-${v}`,
      ms: 1_700_000_000_000 + i * 997,
    }));
    const got = lua(
      `for i, c in ipairs(input) do
         local fp = session.credential_fingerprint(c.credential)
         out[i] = { fp = fp, id = session.activity_session_id(c.customer, c.agent, fp, c.ms) }
       end`,
      CASES,
    );
    CASES.forEach((c, i) => {
      const fp = sessionTs.credentialFingerprint(c.credential);
      assert.deepEqual(
        got[i],
        { fp, id: sessionTs.activitySessionId(c.customer, c.agent, fp, c.ms) },
        JSON.stringify(c),
      );
    });
  });

  it('the trace id of a traceparent is read the same way', () => {
    const TPS = [
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00',
      ' 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ',
      '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-tail',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01',
      'garbage',
      '',
    ];
    const got = lua(
      `for i, v in ipairs(input) do out[i] = session.trace_id_of_traceparent(v) or false end`,
      TPS,
    );
    TPS.forEach((v, i) => {
      assert.equal(got[i] || undefined, sessionTs.traceIdOfTraceparent(v), JSON.stringify(v));
    });
  });
});

describe("the billing exporter's numbers: Lua's OTLP/JSON == what the processor decodes", () => {
  it('every double reaches collector-processor/src/otlp/decode-json.ts exactly (no 14-digit rounding)', async () => {
    const { decodeJsonExport } = await import(
      pathToFileURL(join(REPO, 'collector-processor/dist/otlp/decode-json.js')).href
    );
    // decimal literals: strtod (Lua) and Number (JS) both read them to the nearest double
    const LITERALS = [
      '123456789012345678',
      '9007199254740993',
      '9007199254740994',
      '100000000000001',
      '1000000000000000.5',
      '0.1',
      '0.30000000000000004',
      '-2.5e-7',
      '1e300',
      '123456.78901234567',
      '5e-324',
      '1200',
      '0',
      '1e21',
    ];
    const text = lua(
      `
      local exporter = require "kong.plugins.tollgate.exporter"
      local attrs = {}
      for i, lit in ipairs(input) do attrs["tollgate.usage.n" .. i] = tonumber(lit) end
      out = exporter.encode({ exporter.encode_span({ trace_id = ("%032x"):format(1), span_id = ("%016x"):format(1),
        name = "kong", kind = 2, start_time_ns = 1.7e18, end_time_ns = 1.7e18, attributes = attrs }) },
        { ["service.name"] = "kong" }, "0.1.0")`,
      LITERALS,
    );
    const decoded = await decodeJsonExport(Buffer.from(text, 'utf8'));
    assert.equal(decoded.malformed, 0);
    const a = decoded.spans[0].attributes;
    LITERALS.forEach((lit, i) => {
      assert.ok(
        Object.is(a[`tollgate.usage.n${i + 1}`], Number(lit)),
        `${lit}: got ${a[`tollgate.usage.n${i + 1}`]}`,
      );
    });
  });
});
