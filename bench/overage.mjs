// Overage against hard limits, per path, with and without quota leases; and the SDK's per-call cost of
// leases. Usage: node bench/overage.mjs  (after npm run build)
//
// Part 1 — a real Tollgate (child process, private redis-server) and real MCP servers (child processes, the
// instrumentation's 2.x matrix fixture, which appends a line to a file each time a tool runs). An agent makes
// a burst of 60 concurrent calls, or 30 calls 100 ms apart, against a 10-calls/day limit and against a money
// limit (0.07 at 0.01 a call). Calls over = tools that ran − what the limit allows. Paths: the SDK on stdio
// and on Streamable HTTP (2026-07-28, stateless) with leases, the same without leases (today's per-export
// enforcement), and a plain OTLP sender (no SDK: it exports every 1000 ms and stops at a kill).
//
// Part 2 — LeaseBook.take() in steady state against a real Tollgate: ns per call, background renewals, and
// Redis script calls per renewal (Redis INFO commandstats).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { Redis } from 'ioredis';
import { LeaseBook } from '../instrumentation/dist/leases.js';
import { DEV_INGEST_KEY, freePort, ROOT, startTollgate, table, writeResult } from './lib.mjs';

const FIXTURE = join(ROOT, 'instrumentation/test/fixtures/matrix-v2.mjs');
const PKG = join(ROOT, 'instrumentation');
const LIMIT_CALLS = 10;
const PRICE_NANO = 10_000_000; // 0.01
const LIMIT_MONEY_NANO = 70_000_000; // 0.07 → 7 calls

const PLANS = `currency: USD
products:
  demo-mcp:
    defaultPlan: calls
    plans:
      calls:
        tools: { "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } } }
        limits: { callsPerDay: ${LIMIT_CALLS} }
        marginGuard: { enabled: false }
      money:
        tools: { "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } } }
        limits: { spendPerPeriod: "0.07" }
        marginGuard: { enabled: false }
      roomy:
        tools: { "*": { price: { perCall: "0.000001" } } }
        limits: { callsPerDay: 1000000000, spendPerPeriod: "1000000" }
        marginGuard: { enabled: false }
    customers:
${['stdio', 'http', 'otlp']
  .flatMap((p) => ['lease', 'nolease'].flatMap((l) => ['burst', 'paced'].map((s) => `${p}-${l}-${s}`)))
  .map((c) => `      ${c}-money: { plan: money }`)
  .join('\n')}
      steady: { plan: roomy }
`;

function ranCount(file) {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0;
}

async function startHttpFixture(env) {
  const proc = spawn(process.execPath, [FIXTURE], { cwd: PKG, env, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const port = await new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      err += d.toString();
      const m = /listening (\d+)/.exec(err);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', (code) => reject(new Error(`fixture exited ${code}: ${err}`)));
  });
  return { url: new URL(`http://127.0.0.1:${port}/mcp`), proc };
}

/** One SDK scenario: the agent's calls against a fixture server; returns tools that ran. */
async function sdkScenario(tg, dir, { transport, leases, shape, customer }) {
  const ran = join(dir, `${customer}.ran`);
  const env = {
    ...process.env,
    TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl,
    TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
    TOLLGATE_CUSTOMER_ID: customer,
    TG_TRANSPORT: transport,
    TG_RAN_FILE: ran,
    OTEL_SERVICE_NAME: `overage-${customer}`,
    ...(leases ? { TOLLGATE_LEASES: '1', TOLLGATE_LEASE_TIMEOUT_MS: '2000' } : {}),
  };
  const http = transport === 'http' ? await startHttpFixture(env) : undefined;
  const client = new Client(
    { name: 'agent', version: '1.0.0' },
    http ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {},
  );
  const t = http
    ? new StreamableHTTPClientTransport(http.url, {
        requestInit: { headers: { authorization: `Bearer ${customer}:token` } },
      })
    : new StdioClientTransport({
        command: process.execPath,
        args: [FIXTURE],
        cwd: PKG,
        env,
        stderr: 'ignore',
      });
  await client.connect(t);
  const call = () => client.callTool({ name: 'echo', arguments: { text: 'x' } });
  let refused = 0;
  try {
    if (shape === 'burst') {
      const r = await Promise.allSettled(Array.from({ length: 60 }, call));
      refused = r.filter((x) => x.status === 'rejected').length;
    } else {
      for (let i = 0; i < 30; i++) {
        try {
          await call();
        } catch {
          refused++;
          // a killed session (no leases: the kill closes it) ends the agent's run
          if (!leases) break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    await client.close().catch(() => {});
    http?.proc.kill();
  }
  return { ran: ranCount(ran), refused };
}

/** A plain OTLP sender (no SDK): calls run, spans are exported every 1000 ms, the agent stops at a kill. */
async function otlpScenario(tg, { shape, customer }) {
  let buffer = [];
  let ran = 0;
  let killed = false;
  const span = () => {
    const start = BigInt(Date.now()) * 1_000_000n;
    return {
      traceId: randomBytes(16).toString('hex'),
      spanId: randomBytes(8).toString('hex'),
      name: 'tools/call echo',
      kind: 2,
      startTimeUnixNano: String(start),
      endTimeUnixNano: String(start + 2_000_000n),
      attributes: [
        { key: 'mcp.method.name', value: { stringValue: 'tools/call' } },
        { key: 'gen_ai.tool.name', value: { stringValue: 'echo' } },
        { key: 'tollgate.customer.id', value: { stringValue: customer } },
      ],
    };
  };
  const flush = async () => {
    const spans = buffer;
    buffer = [];
    if (!spans.length) return;
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({ resourceSpans: [{ resource: { attributes: [] }, scopeSpans: [{ spans }] }] }),
    });
    const body = await res.json();
    if ((body.tollgate?.directives ?? []).some((d) => d.action === 'kill' && d.customer === customer))
      killed = true;
  };
  const timer = setInterval(() => void flush(), 1000);
  try {
    if (shape === 'burst') {
      for (let i = 0; i < 60; i++) {
        ran++;
        buffer.push(span());
      }
      await new Promise((r) => setTimeout(r, 1200));
    } else {
      for (let i = 0; i < 30 && !killed; i++) {
        ran++;
        buffer.push(span());
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    clearInterval(timer);
    await flush();
  }
  return { ran, refused: 0 };
}

async function part1(tg, dir) {
  const rows = [['path', 'leases', 'pattern', 'limit', 'allowed', 'tools ran', 'calls over', 'money over']];
  const results = [];
  const paths = [
    ['SDK stdio (2.x)', 'stdio', true],
    ['SDK Streamable HTTP (2.x, 2026-07-28)', 'http', true],
    ['SDK stdio (2.x)', 'stdio', false],
    ['SDK Streamable HTTP (2.x, 2026-07-28)', 'http', false],
    ['plain OTLP (no SDK)', 'otlp', false],
  ];
  for (const [label, transport, leases] of paths) {
    for (const shape of ['burst', 'paced']) {
      for (const limit of ['calls', 'money']) {
        const customer = `${transport}-${leases ? 'lease' : 'nolease'}-${shape}${limit === 'money' ? '-money' : ''}`;
        const r =
          transport === 'otlp'
            ? await otlpScenario(tg, { shape, customer })
            : await sdkScenario(tg, dir, { transport, leases, shape, customer });
        const allowed = limit === 'calls' ? LIMIT_CALLS : LIMIT_MONEY_NANO / PRICE_NANO;
        const over = Math.max(0, r.ran - allowed);
        results.push({
          path: label,
          transport,
          leases,
          shape,
          limit,
          allowed,
          ran: r.ran,
          over,
          overNano: over * PRICE_NANO,
        });
        rows.push([
          label,
          leases ? 'on' : 'off',
          shape === 'burst' ? '60 at once' : '30 × 100 ms',
          limit === 'calls' ? '10 calls/day' : '0.07 USD',
          allowed,
          r.ran,
          over,
          `${(over * PRICE_NANO) / 1e9} USD`,
        ]);
      }
    }
  }
  console.log('\nOverage against hard limits (tools that ran beyond what the limit allows)');
  console.log(table(rows));
  return results;
}

/** Part 2: LeaseBook.take() in steady state, against the real Tollgate of part 1. */
async function part2(tg, redis) {
  const book = new LeaseBook(
    {
      url: `${tg.otlpUrl}/v1/leases`,
      headers: { authorization: `Bearer ${DEV_INGEST_KEY}` },
      timeoutMs: 2000,
      failMode: 'open',
      windowMs: 2000,
      safetyMs: 2500,
      requestTimeoutMs: 5000,
    },
    `bench-${randomBytes(4).toString('hex')}`,
    (m) => console.error(m),
  );
  // warm up: the first call waits for the first grant; then the rate-sized leases take over
  for (let i = 0; i < 50_000; i++) {
    const t = book.take('steady', 'echo', 'sess-1', Date.now());
    if (t instanceof Promise) await t;
    if (i % 1000 === 0) await new Promise((r) => setImmediate(r));
  }
  await redis.config('RESETSTAT');
  const before = { ...book.stats };
  const N = 2_000_000;
  const CHUNK = 1000;
  let waited = 0;
  let busyNs = 0n;
  for (let done = 0; done < N; done += CHUNK) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < CHUNK; i++) {
      const t = book.take('steady', 'echo', 'sess-1', Date.now());
      if (t instanceof Promise) {
        busyNs += process.hrtime.bigint() - t0;
        waited++;
        await t;
      }
    }
    busyNs += process.hrtime.bigint() - t0;
    // the event loop turns between chunks, as it does between real calls: background renewals land
    await new Promise((r) => setImmediate(r));
  }
  const info = await redis.info('commandstats');
  const scripts = [...info.matchAll(/cmdstat_(evalsha|eval):calls=(\d+)/g)].reduce(
    (n, m) => n + Number(m[2]),
    0,
  );
  const renewals = book.stats.requests - before.requests;
  await book.releaseAll();
  book.close();
  const nsPerCall = Number(busyNs) / N;
  const r = {
    calls: N,
    nsPerCall: Math.round(nsPerCall),
    renewals,
    syncWaits: waited,
    redisScriptCalls: scripts,
    redisCallsPerRenewal: renewals ? +(scripts / renewals).toFixed(2) : null,
  };
  console.log('\nSDK per-call cost of leases (LeaseBook.take, steady state, background renewals included)');
  console.log(
    table([
      ['calls', 'ns per call', 'renewals', 'calls that waited', 'Redis script calls', 'per renewal'],
      [r.calls, r.nsPerCall, r.renewals, r.syncWaits, r.redisScriptCalls, r.redisCallsPerRenewal],
    ]),
  );
  return r;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-overage-'));
  writeFileSync(join(dir, 'plans.yaml'), PLANS);
  const redisPort = await freePort();
  const redisProc = spawn(
    'redis-server',
    ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: 'ignore',
    },
  );
  await new Promise((r) => setTimeout(r, 300));
  const redis = new Redis({ port: redisPort, host: '127.0.0.1' });
  const tg = await startTollgate([
    '--plans',
    join(dir, 'plans.yaml'),
    '--redis-url',
    `redis://127.0.0.1:${redisPort}`,
  ]);
  try {
    const only = process.argv[2];
    const overage = only === 'cost' ? undefined : await part1(tg, dir);
    const cost = await part2(tg, redis);
    writeResult('overage', { at: new Date().toISOString(), node: process.version, overage, cost });
  } finally {
    await tg.stop();
    redis.disconnect();
    redisProc.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}
