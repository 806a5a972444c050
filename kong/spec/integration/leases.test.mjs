// Quota leases at Kong: real nginx (2 workers sharing the lease dict) running the plugin, a real Tollgate
// (collector-processor, POST /v1/leases and /v1/traces) on a real redis-server, and the real MCP SDK 2.x
// server upstream, which counts the tool calls it ran. The spans Kong's opentelemetry plugin would export
// (kept by the shim) are sent on to Tollgate's /v1/traces, as that plugin would, so the calls settle.
// Run: node --test kong/spec/integration/leases.test.mjs (from the repo root, after npm ci && npm run build)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import {
  allSpans,
  attrsOf,
  freePort,
  KONG_DIR,
  redis,
  startNginx,
  startRedis,
  startUpstream,
  stop,
} from './harness.mjs';

const REPO = resolve(KONG_DIR, '..');
const CLI = join(REPO, 'collector-processor/dist/cli/main.js');
const { customerTag, redisKeys } = await import(pathToFileURL(join(REPO, 'contracts/dist/index.js')).href);

const PRODUCT = 'demo-mcp';
const INGEST_KEY = 'tg_dev_ingest_demo'; // the development ingest key of `tollgate start` (product demo-mcp)
const MODERN = '2026-07-28';
const NODE_ID = '7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f';
const PRICE = 10_000_000n; // 0.01

const PLANS = `currency: USD
products:
  demo-mcp:
    defaultPlan: calls
    plans:
      calls:
        tools: { "*": { price: { perCall: "0.01" } } }
        limits: { callsPerDay: 10 }
        marginGuard: { enabled: false }
      money:
        tools: { "*": { price: { perCall: "0.01" } } }
        limits: { spendPerPeriod: "0.07" }
        marginGuard: { enabled: false }
      roomy:
        tools: { "*": { price: { perCall: "0.01" } } }
        limits: { callsPerDay: 100000, spendPerPeriod: "100000" }
        marginGuard: { enabled: false }
      three:
        tools: { "*": { price: { perCall: "0.01" } } }
        limits: { spendPerPeriod: "0.03" }
        marginGuard: { enabled: false }
      unlimited:
        tools: { "*": { price: { perCall: "0.01" } } }
        marginGuard: { enabled: false }
    customers:
      burst-calls: { plan: calls }
      burst-money: { plan: money }
      paced-calls: { plan: calls }
      paced-money: { plan: money }
      steady: { plan: roomy }
      free-flow: { plan: unlimited }
      open-1: { plan: calls }
      closed-1: { plan: calls }
      released: { plan: roomy }
      hangs-up: { plan: three }
`;

let redisMain;
let upstream;
let tollgate;
let nginx;
let base;
let seq = 0;

async function startTollgate(redisPort) {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-kong-leases-'));
  writeFileSync(join(dir, 'plans.yaml'), PLANS);
  const otlpPort = await freePort();
  const apiPort = await freePort();
  const child = spawn(
    process.execPath,
    [
      CLI,
      'start',
      '--data-dir',
      join(dir, 'data'),
      '--otlp-port',
      String(otlpPort),
      '--otlp-grpc-port',
      '0',
      '--api-port',
      String(apiPort),
      '--log-level',
      'warn',
      '--plans',
      join(dir, 'plans.yaml'),
      '--redis-url',
      `redis://127.0.0.1:${redisPort}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  child.output = '';
  child.stderr.on('data', (d) => {
    child.output += d;
  });
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`tollgate exited: ${child.output}`);
    try {
      if ((await fetch(`http://127.0.0.1:${apiPort}/healthz`)).ok) break;
    } catch {}
    if (i > 600) throw new Error('tollgate did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, dir, otlpUrl: `http://127.0.0.1:${otlpPort}` };
}

before(async () => {
  redisMain = await startRedis();
  upstream = await startUpstream();
  tollgate = await startTollgate(redisMain.port);
  const deadPort = await freePort();
  const common = {
    product: PRODUCT,
    customer_source: 'header',
    redis_port: redisMain.port,
    cache_ttl_ms: 200,
    leases: true,
    billing_endpoint: `${tollgate.otlpUrl}/v1/traces`,
    billing_authorization: `Bearer ${INGEST_KEY}`,
    // lease_timeout_ms: the default (250 ms)
  };
  nginx = await startNginx({
    upstreamPort: upstream.port,
    workers: 2,
    node: { id: NODE_ID, version: '3.9.1' },
    plugins: {
      leased: common,
      down_open: {
        ...common,
        lease_endpoint: `http://127.0.0.1:${deadPort}/v1/leases`,
        fault_tolerant: true,
      },
      down_closed: {
        ...common,
        lease_endpoint: `http://127.0.0.1:${deadPort}/v1/leases`,
        fault_tolerant: false,
      },
    },
  });
  base = `http://127.0.0.1:${nginx.port}`;
});

after(async () => {
  const log = nginx?.errorLog() ?? '';
  await stop(nginx);
  await stop(upstream);
  if (tollgate) {
    const exited = new Promise((r) => tollgate.child.once('exit', r));
    tollgate.child.kill('SIGTERM');
    await exited;
    rmSync(tollgate.dir, { recursive: true, force: true });
  }
  await stop(redisMain);
  assert.doesNotMatch(log, /\[error\].*(runtime error|lua entry thread aborted)/, log);
});

function call(conf, customer, testId, extra = {}, { text = testId, signal } = {}) {
  seq += 1;
  return fetch(`${base}/${conf}/modern/mcp`, {
    method: 'POST',
    signal,
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': MODERN,
      'mcp-method': 'tools/call',
      'mcp-name': 'echo',
      'x-customer-id': customer,
      'x-test-id': testId,
      ...extra,
    },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: seq,
      method: 'tools/call',
      params: {
        name: 'echo',
        arguments: { text },
        _meta: {
          'io.modelcontextprotocol/protocolVersion': MODERN,
          'io.modelcontextprotocol/clientInfo': { name: 'kong-leases-it', version: '1' },
          'io.modelcontextprotocol/clientCapabilities': {},
        },
      },
    }),
  });
}

async function ran() {
  return (await (await fetch(`http://127.0.0.1:${upstream.port}/_stats`)).json()).modern_echo;
}

async function leaseStats() {
  return (await fetch(`${base}/_lease_stats`)).json();
}

/** The spans Kong's opentelemetry plugin would have exported for a test id (consumed). */
async function exportsOf(testId, atLeast) {
  let out = [];
  for (let i = 0; i < 80; i++) {
    out = out.concat(await (await fetch(`${base}/_spans?id=${encodeURIComponent(testId)}`)).json());
    if (out.length >= atLeast) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  return out;
}

/** Sends Kong's exports on to Tollgate, as Kong's opentelemetry plugin would. */
async function forward(exports) {
  for (const doc of exports) {
    const res = await fetch(`${tollgate.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${INGEST_KEY}` },
      body: JSON.stringify(doc),
    });
    assert.equal(res.status, 200, await res.text());
  }
}

function today() {
  return new Date().toISOString().slice(0, 10);
}

async function dayCounter(customer, field) {
  return Number(
    (await redis(redisMain.port, 'HGET', redisKeys.day(customerTag(PRODUCT, customer), today()), field)) ?? 0,
  );
}

async function periodCounter(customer, field) {
  const key = redisKeys.period(customerTag(PRODUCT, customer), today().slice(0, 7));
  return BigInt((await redis(redisMain.port, 'HGET', key, field)) ?? 0);
}

async function until(what, probe, ms = 5000, detail = async () => '') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what} ${await detail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function burst(customer, n) {
  const testId = `burst-${customer}`;
  const before = await ran();
  const responses = await Promise.all(Array.from({ length: n }, () => call('leased', customer, testId)));
  const bodies = await Promise.all(responses.map(async (r) => ({ status: r.status, doc: await r.json() })));
  return { testId, bodies, ran: (await ran()) - before };
}

describe('quota leases through the Kong plugin', () => {
  it('a burst of 60 against 10 calls a day: 10 run, 50 are refused before the upstream, 0 over; the spans settle', async () => {
    const s0 = await leaseStats();
    const { testId, bodies, ran: tools } = await burst('burst-calls', 60);
    const s1 = await leaseStats();
    assert.equal(s1.fail_open - s0.fail_open, 0, 'no call passed without a lease');
    assert.equal(s1.taken - s0.taken, 10);
    assert.equal(s1.refused - s0.refused, 50);
    const ok = bodies.filter((b) => b.status === 200 && b.doc.result);
    const refused = bodies.filter((b) => b.doc.error?.code === -32050);
    assert.equal(
      ok.length,
      10,
      JSON.stringify({ stats: await leaseStats(), log: nginx.errorLog().slice(-3000) }),
    );
    assert.equal(refused.length, 50);
    assert.equal(tools, 10, 'the upstream ran exactly the calls the lease covered');
    for (const r of refused) {
      assert.equal(r.status, 403);
      assert.equal(r.doc.error.data.reason, 'hard_limit:calls_per_day');
      assert.equal(r.doc.error.data.scope, 'customer');
    }

    // each call's span names its lease and its known price; sent on, they settle against the lease
    const exports = await exportsOf(testId, 10);
    const billed = allSpans(exports).filter((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(billed.length, 10);
    const leaseIds = new Set();
    for (const s of billed) {
      const a = attrsOf(s);
      assert.match(a['tollgate.lease.id'], /^ls_[0-9a-f]{24}$/);
      assert.equal(a['tollgate.lease.reserved_nano'], String(PRICE));
      leaseIds.add(a['tollgate.lease.id']);
    }
    assert.equal(
      exports[0].resourceSpans[0].resource.attributes.find((kv) => kv.key === 'service.instance.id').value
        .stringValue,
      NODE_ID,
    );
    await forward(exports);
    await until(
      'the calls are counted',
      async () => (await dayCounter('burst-calls', 'calls')) === 10,
      10000,
      async () =>
        JSON.stringify({
          calls: await dayCounter('burst-calls', 'calls'),
          lr: await dayCounter('burst-calls', 'lr'),
        }),
    );
    // counted once: the reservation moved to the counter (held back by leases: 0)
    await until('nothing is held back', async () => (await dayCounter('burst-calls', 'lr')) === 0);
    assert.ok(leaseIds.size >= 1);

    // the limit is spent: a later call is refused too, and never reaches the upstream
    const before = await ran();
    const later = await call('leased', 'burst-calls', 'after-burst');
    assert.equal((await later.json()).error.code, -32050);
    assert.equal(await ran(), before);
  });

  it('a burst of 60 against 0.07 USD at 0.01 a call: 7 run, 0 over the money limit', async () => {
    const s0 = await leaseStats();
    const { testId, bodies, ran: tools } = await burst('burst-money', 60);
    const ok = bodies.filter((b) => b.status === 200 && b.doc.result);
    const refused = bodies.filter((b) => b.doc.error?.code === -32050);
    // a call past the budget runs only without a lease (lease_timeout_ms passed, fault_tolerant): say so
    const why = async () =>
      JSON.stringify({ before: s0, after: await leaseStats(), log: nginx.errorLog().slice(-3000) });
    assert.equal(ok.length, 7, await why());
    assert.equal(refused.length, 53);
    assert.equal(tools, 7);
    assert.equal(refused[0].doc.error.data.reason, 'hard_limit:spend_per_period');
    await forward(await exportsOf(testId, 7));
    await until(
      'the spend is counted',
      async () => (await periodCounter('burst-money', 'spend')) === 7n * PRICE,
    );
    assert.equal(await periodCounter('burst-money', 'lrm'), 0n);
  });

  it('30 calls 100 ms apart against 10 a day and against 0.07 USD: 10 and 7 run, 0 over', async () => {
    const paced = async (customer) => {
      const before = await ran();
      let ok = 0;
      for (let i = 0; i < 30; i++) {
        const res = await call('leased', customer, `paced-${customer}`);
        if ((await res.json()).result) ok++;
        await new Promise((r) => setTimeout(r, 100));
      }
      await forward(await exportsOf(`paced-${customer}`, ok));
      return { ok, ran: (await ran()) - before };
    };
    // one after the other: the upstream's counter is shared
    const calls = await paced('paced-calls');
    const money = await paced('paced-money');
    assert.deepEqual(calls, { ok: 10, ran: 10 });
    assert.deepEqual(money, { ok: 7, ran: 7 });
    await until('the calls are counted', async () => (await dayCounter('paced-calls', 'calls')) === 10);
    await until(
      'the spend is counted',
      async () => (await periodCounter('paced-money', 'spend')) === 7n * PRICE,
    );
  });

  it('a client that hangs up while each tool runs runs no tool past 0.03 USD at 0.01 a call: the 3 that ran are billed and settled', async () => {
    const testId = 'hangs-up';
    const before = await ran();
    // each call's tool takes 1 s; the client goes away after 300 ms (past a first lease's renewals), every time (499 at nginx)
    await Promise.all(
      Array.from({ length: 3 }, async () => {
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 300);
        await call('leased', 'hangs-up', testId, {}, { text: 'sleep:1000', signal: ac.signal })
          .then((r) => r.text())
          .catch(() => null);
      }),
    );
    await until('the tools ran', async () => (await ran()) - before === 3);
    const exports = await exportsOf(testId, 3);
    const spans = allSpans(exports).filter((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(spans.length, 3);
    for (const s of spans) {
      assert.equal(attrsOf(s)['tollgate.outcome'], 'unknown');
      assert.equal(attrsOf(s)['error.type'], undefined);
    }
    await forward(exports);
    // settled as calls that ran: counted and priced (a failed call is not priced without billFailedCalls,
    // and its reservation would go back), nothing held back
    await until('the calls are counted', async () => (await dayCounter('hangs-up', 'calls')) === 3);
    await until(
      'the calls are priced',
      async () => (await periodCounter('hangs-up', 'spend')) === 3n * PRICE,
    );
    await until('nothing is held back', async () => (await periodCounter('hangs-up', 'lrm')) === 0n);
    // and so a fourth call is refused before the upstream (hanging up bought no extra run)
    await new Promise((r) => setTimeout(r, 600)); // past the 0.5 s exhaustion memory of the node
    const ranBefore = await ran();
    const fourth = await call('leased', 'hangs-up', 'hangs-up-4');
    assert.equal((await fourth.json()).error?.code, -32050);
    assert.equal(await ran(), ranBefore);
  });

  it('renews ahead of exhaustion: a steady stream rarely waits, and the lease grows with the rate', async () => {
    const s0 = await leaseStats();
    const n = 60;
    for (let i = 0; i < n; i++) {
      const res = await call('leased', 'steady', 'steady');
      assert.equal(res.status, 200);
      await res.text();
      await new Promise((r) => setTimeout(r, 10));
    }
    const s1 = await leaseStats();
    const sync = s1.sync_renewals - s0.sync_renewals;
    const background = s1.background_renewals - s0.background_renewals;
    assert.equal(s1.taken - s0.taken, n);
    assert.ok(background >= 1, `renewed in the background (${JSON.stringify(s1)})`);
    assert.ok(sync < n / 4, `few calls waited for a renewal: ${sync} of ${n}`);
    await exportsOf('steady', n);
  });

  it('a customer without hard limits takes no lease: its calls run, enforced per export', async () => {
    const res = await call('leased', 'free-flow', 'free-flow');
    assert.equal(res.status, 200);
    await res.text();
    const [span] = allSpans(await exportsOf('free-flow', 1));
    const a = attrsOf(span);
    assert.equal(a['tollgate.lease.id'], undefined);
    assert.equal(a['tollgate.enforcement'], 'allow');
  });

  it('Tollgate unreachable, fault_tolerant = true: the call runs without a lease (counted as fail_open)', async () => {
    const s0 = await leaseStats();
    const before = await ran();
    const res = await call('down_open', 'open-1', 'down-open');
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(await ran(), before + 1);
    const [span] = allSpans(await exportsOf('down-open', 1));
    const a = attrsOf(span);
    // it failed once under load ('allow': as if the dead port had answered); say what the node saw
    const why = async () =>
      JSON.stringify({ before: s0, after: await leaseStats(), log: nginx.errorLog().slice(-3000) });
    assert.equal(a['tollgate.enforcement'], 'lease_unavailable', await why());
    assert.equal(a['tollgate.lease.id'], undefined);
    const s1 = await leaseStats();
    assert.equal(s1.fail_open - s0.fail_open, 1);
    assert.ok(s1.failures > s0.failures);
  });

  it('Tollgate unreachable, fault_tolerant = false: 503 with -32052, the call never reaches the upstream', async () => {
    const s0 = await leaseStats();
    const before = await ran();
    const res = await call('down_closed', 'closed-1', 'down-closed');
    const why = async () =>
      JSON.stringify({ before: s0, after: await leaseStats(), log: nginx.errorLog().slice(-3000) });
    assert.equal(res.status, 503, await why());
    const doc = await res.json();
    assert.equal(doc.error.code, -32052);
    assert.equal(doc.error.data.reason, 'lease_unavailable');
    assert.equal(res.headers.get('retry-after'), '1');
    assert.equal(await ran(), before);
    const s1 = await leaseStats();
    assert.equal(s1.fail_closed - s0.fail_closed, 1);
  });
});

describe('return of unused allowance', () => {
  it('a graceful shutdown (SIGQUIT) of the node releases its leases: what was not used returns at once', async () => {
    for (let i = 0; i < 20; i++) {
      const res = await call('leased', 'released', 'released');
      assert.equal(res.status, 200);
      await res.text();
      await new Promise((r) => setTimeout(r, 10));
    }
    await forward(await exportsOf('released', 20));
    await until('the calls are settled', async () => (await dayCounter('released', 'calls')) === 20);
    // renewed ahead of time, the lease holds calls back beyond the 20 it took
    const heldBefore = await dayCounter('released', 'lr');
    assert.ok(heldBefore >= 1, `the lease holds calls back (${heldBefore})`);
    const exited = new Promise((r) => nginx.child.once('exit', r));
    nginx.child.kill('SIGQUIT');
    await exited;
    // everything it took is settled: nothing stays held back, long before the lease's TTL
    await until('the lease is released', async () => (await dayCounter('released', 'lr')) === 0, 3000);
    assert.equal(await periodCounter('released', 'lrm'), 0n);
  });
});
