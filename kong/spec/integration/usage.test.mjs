// Usage lines metered at Kong, end to end: a real MCP SDK 2.x server tool reports its usage in the result's
// _meta["tollgate/usage"]; real nginx runs the plugin, which puts it on the call's span; a real Tollgate
// (collector-processor on a real redis-server) rates it with a plan that has usage lines; the rated call
// is read back from Tollgate's analytics API. Two ways to Tollgate, both real code: the plugin's billing
// exporter (Kong tracing off, OTLP/JSON to billing_endpoint) and the export Kong's opentelemetry plugin
// would send (kept by the shim, forwarded to /v1/traces as that plugin would).
// Run: node --test kong/spec/integration/usage.test.mjs (from the repo root, after npm ci && npm run build)

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client as Client2, StreamableHTTPClientTransport as Http2 } from '@modelcontextprotocol/client';
import { DEV_INGEST_KEY, metric, startTollgate } from '../../../bench/lib.mjs';
import { startNginx, startRedis, startUpstream, stop } from './harness.mjs';

const ADMIN_KEY = 'tg_dev_admin'; // the development admin key of `tollgate start`
const MODERN = '2026-07-28';

// the development ingest key's product; per call 0.001, input tokens 0.000003, output 0.000015; cached
// input tokens are part of the input tokens and priced 0.0000003; rows scanned 0.0000001 each
const PLANS = `currency: USD
products:
  demo-mcp:
    defaultPlan: llm
    plans:
      llm:
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
          rows_scanned: {}
        tools:
          "*":
            price:
              perCall: "0.001"
              perInputToken: "0.000003"
              perOutputToken: "0.000015"
              usage: { cached_input_tokens: "0.0000003", rows_scanned: "0.0000001" }
        marginGuard: { enabled: false }
`;

const USAGE = {
  'gen_ai.usage.input_tokens': 1200,
  'gen_ai.usage.output_tokens': 300,
  'gen_ai.usage.cache_read.input_tokens': 1000,
  'tollgate.usage.rows_scanned': 42,
};
// 0.001 per call + (1200 − 1000) × 0.000003 + 1000 × 0.0000003 + 300 × 0.000015 + 42 × 0.0000001, in nano
const CALL_NANO = 1_000_000n + 200n * 3_000n + 1_000n * 300n + 300n * 15_000n + 42n * 100n;

let redisMain;
let upstream;
let tollgate;
let nginx;
let base;
let plansDir;

before(async () => {
  redisMain = await startRedis();
  upstream = await startUpstream();
  plansDir = mkdtempSync(join(tmpdir(), 'tollgate-kong-usage-'));
  writeFileSync(join(plansDir, 'plans.yaml'), PLANS);
  tollgate = await startTollgate([
    '--plans',
    join(plansDir, 'plans.yaml'),
    '--redis-url',
    `redis://127.0.0.1:${redisMain.port}`,
  ]);
  nginx = await startNginx({
    upstreamPort: upstream.port,
    node: { id: '1e2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b', version: '3.9.1' },
    plugins: {
      billed: {
        product: 'demo-mcp',
        customer_source: 'header',
        redis_port: redisMain.port,
        billing_endpoint: `${tollgate.otlpUrl}/v1/traces`,
        billing_authorization: `Bearer ${DEV_INGEST_KEY}`,
      },
    },
  });
  base = `http://127.0.0.1:${nginx.port}`;
});

after(async () => {
  const log = nginx?.errorLog() ?? '';
  await stop(nginx);
  await stop(upstream);
  await tollgate?.stop();
  await stop(redisMain);
  if (plansDir) rmSync(plansDir, { recursive: true, force: true });
  assert.doesNotMatch(log, /\[error\].*(runtime error|lua entry thread aborted)/, log);
});

/** One `metered` call through Kong by the 2.x SDK client, as `customer`. */
async function callMetered(customer, usage, headers = {}) {
  const client = new Client2(
    { name: 'kong-usage-e2e', version: '1.0.0' },
    { versionNegotiation: { mode: { pin: MODERN } } },
  );
  await client.connect(
    new Http2(new URL(`${base}/billed/modern/mcp`), {
      requestInit: { headers: { 'x-customer-id': customer, ...headers } },
    }),
  );
  try {
    return await client.callTool({ name: 'metered', arguments: { usage } });
  } finally {
    await client.close();
  }
}

/** Tollgate's revenue-by-tool rows of a customer (analytics API, admin key). */
async function revenueByTool(customer) {
  const res = await fetch(
    `${tollgate.apiUrl}/analytics/mcp/revenue/by-tool?product=demo-mcp&customer=${encodeURIComponent(customer)}`,
    { headers: { authorization: `Bearer ${ADMIN_KEY}` } },
  );
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).rows;
}

async function until(what, probe, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The export Kong's opentelemetry plugin would have sent for the tools/call of a test id (the SDK
 * client's other requests, such as server/discover, export spans of their own: not billable). */
async function toolExportOf(testId) {
  const billable = (doc) =>
    doc.resourceSpans.some((rs) =>
      rs.scopeSpans.some((ss) => ss.spans.some((s) => s.attributes.some((a) => a.key === 'mcp.method.name'))),
    );
  let all = [];
  for (let i = 0; i < 80; i++) {
    all = all.concat(await (await fetch(`${base}/_spans?id=${encodeURIComponent(testId)}`)).json());
    const tools = all.filter(billable);
    if (tools.length > 0) {
      assert.equal(tools.length, 1);
      return tools[0];
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`no tools/call export for ${testId}`);
}

function expectRated(rows, calls) {
  assert.equal(rows.length, 1, JSON.stringify(rows));
  const [row] = rows;
  assert.equal(row.tool, 'metered');
  assert.equal(row.calls, calls);
  assert.equal(row.revenueNano, String(CALL_NANO * BigInt(calls)));
  const lines = Object.fromEntries(row.usageLines.map((l) => [l.line, l]));
  assert.deepEqual(Object.keys(lines).sort(), ['cached_input_tokens', 'rows_scanned']);
  assert.equal(lines.cached_input_tokens.quantity, String(1000 * calls));
  assert.equal(lines.cached_input_tokens.revenueNano, String(300_000n * BigInt(calls)));
  assert.equal(lines.rows_scanned.quantity, String(42 * calls));
  assert.equal(lines.rows_scanned.revenueNano, String(4_200n * BigInt(calls)));
  assert.equal(row.usageRevenueNano, String(304_200n * BigInt(calls)));
}

describe('usage lines reported through Kong are rated by Tollgate', () => {
  it("billing exporter (Kong tracing off): the tool's tokens and usage lines are priced as the plan says", async () => {
    const result = await callMetered('cus-kong-usage-1', USAGE, { 'x-test-tracing': 'off' });
    assert.deepEqual(result._meta?.['tollgate/usage'], USAGE);
    const rows = await until('the rated call', async () => {
      const r = await revenueByTool('cus-kong-usage-1');
      return r.length > 0 && r[0].calls >= 1 ? r : undefined;
    });
    expectRated(rows, 1);
  });

  it("Kong's opentelemetry export (tracing on): rated the same", async () => {
    const testId = 'usage-otel-1';
    await callMetered('cus-kong-usage-2', USAGE, { 'x-test-id': testId });
    const doc = await toolExportOf(testId);
    const res = await fetch(`${tollgate.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(doc),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {}, 'no partial success: the whole export was accepted');
    const rows = await until('the rated call', async () => {
      const r = await revenueByTool('cus-kong-usage-2');
      return r.length > 0 && r[0].calls >= 1 ? r : undefined;
    });
    expectRated(rows, 1);
  });

  it('a negative quantity from the upstream: Tollgate rejects that span (invalid_usage), nothing is billed for it', async () => {
    const rejected = async () =>
      (await metric(tollgate.apiUrl, 'tollgate_calls_rejected_total{reason="invalid_usage"}')) ?? 0;
    const before = await rejected();
    const testId = 'usage-bad-1';
    await callMetered(
      'cus-kong-usage-3',
      { ...USAGE, 'tollgate.usage.rows_scanned': -5 },
      { 'x-test-id': testId },
    );
    const doc = await toolExportOf(testId);
    const res = await fetch(`${tollgate.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(doc),
    });
    assert.equal(res.status, 200);
    const answer = await res.json();
    assert.equal(answer.partialSuccess?.rejectedSpans, '1', JSON.stringify(answer));
    assert.match(answer.partialSuccess.errorMessage, /invalid_usage/);
    assert.match(answer.partialSuccess.errorMessage, /rows_scanned .* is negative/);
    assert.equal(await rejected(), before + 1);
    // a good call of the same customer afterwards is billed: only the bad span was refused
    await callMetered('cus-kong-usage-3', USAGE, { 'x-test-tracing': 'off' });
    const rows = await until('the good call', async () => {
      const r = await revenueByTool('cus-kong-usage-3');
      return r.length > 0 && r[0].calls >= 1 ? r : undefined;
    });
    expectRated(rows, 1);
  });
});
