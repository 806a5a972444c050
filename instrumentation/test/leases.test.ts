import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client as Client2, StreamableHTTPClientTransport as Http2 } from '@modelcontextprotocol/client';
import { StdioClientTransport as Stdio2 } from '@modelcontextprotocol/client/stdio';
import { Client as Client1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport as Stdio1 } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport as Http1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { customerTag, REFUSAL_CODES, redisKeys } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { dayOf } from '../../collector-processor/src/enforcement/periods.js';
import { type PrivateRedis, startPrivateRedis } from '../../collector-processor/src/redis/private-redis.js';
import {
  DEV_INGEST_KEY,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { resolveConfig } from '../src/config.js';
import { TollgateRefusal } from '../src/errors.js';
import { instrumentMcpServer, shutdownTollgate, tollgateRuntimes } from '../src/index.js';
import { DENIAL_CACHE_MS, LeaseBook } from '../src/leases.js';
import { connectStdio, FIXTURES, PACKAGE_DIR, waitFor } from './support/mcp.js';

/**
 * Quota leases end to end: real SDK processes (MCP SDK 1.x and 2.x, stdio and Streamable HTTP) take each
 * call from a lease a real Tollgate grants out of real limits in a real redis-server. A burst against a
 * 10-calls/day limit or a money limit runs exactly as many tools as the limit allows — 0 over — whatever the
 * export interval; a killed (kill -9) process's lease comes back within its TTL; renewal while Redis is down
 * follows the configured failure policy.
 */

const TTL_MS = 1500;
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        limits: { callsPerDay: 10 }
        marginGuard: { enabled: false }
      wallet:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        limits: { spendPerPeriod: "0.07" }
        marginGuard: { enabled: false }
      tokens:
        tools:
          "*": { price: { perCall: "0.01" } }
          search_docs: { price: { perCall: "0.01", perOutputToken: "0.00001" } }
        limits: { spendPerPeriod: "0.1" }
        marginGuard: { enabled: false }
      scoped:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        limits: { callsPerToolPerPeriod: { scarce: 3 }, spendPerSession: "0.05" }
        marginGuard: { enabled: false }
    customers:
      wallet-co: { plan: wallet }
      scoped-co: { plan: scoped }
      tokens-co: { plan: tokens }
`;

let tg: TestTollgate;
let redis: PrivateRedis;
let dir: string;

beforeAll(async () => {
  redis = await startPrivateRedis();
  tg = await startTestTollgate({ '--redis-url': redis.url, '--lease-ttl': String(TTL_MS) }, PLANS);
  dir = mkdtempSync(join(tmpdir(), 'tollgate-leases-'));
});

afterAll(async () => {
  await shutdownTollgate();
  await tg?.cleanup();
  await redis?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Line = '1.x' | '2.4';
const ENTRY: Record<Line, string> = { '1.x': `${FIXTURES}matrix-v1.mjs`, '2.4': `${FIXTURES}matrix-v2.mjs` };

interface Conn {
  call(tool: string): Promise<unknown>;
  close(): Promise<void>;
  proc?: ChildProcess;
  pid?: number;
}

function envOf(
  customer: string,
  transport: 'stdio' | 'http',
  ranFile: string,
  extra: Record<string, string> = {},
) {
  return {
    ...(process.env as Record<string, string>),
    TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
    TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
    TOLLGATE_CUSTOMER_ID: customer,
    TOLLGATE_LEASES: '1',
    // generous: on this shared 2-core machine an answer can take longer than the 250 ms default, and a
    // timed-out renewal follows the fail mode (open: the call runs unleased), which is not what is tested here
    TOLLGATE_LEASE_TIMEOUT_MS: '3000',
    TG_TRANSPORT: transport,
    TG_RAN_FILE: ranFile,
    OTEL_SERVICE_NAME: `leases-${customer}`,
    ...extra,
  };
}

async function startHttp(line: Line, env: Record<string, string>): Promise<{ url: URL; proc: ChildProcess }> {
  const proc = spawn(process.execPath, [ENTRY[line]], {
    cwd: PACKAGE_DIR,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  const port = await new Promise<number>((resolve, reject) => {
    proc.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening (\d+)/.exec(err);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', (code) => reject(new Error(`fixture exited ${code}: ${err}`)));
  });
  return { url: new URL(`http://127.0.0.1:${port}/mcp`), proc };
}

async function connect(
  line: Line,
  transport: 'stdio' | 'http',
  customer: string,
  ranFile: string,
  extra: Record<string, string> = {},
): Promise<Conn> {
  const env = envOf(customer, transport, ranFile, extra);
  const http = transport === 'http' ? await startHttp(line, env) : undefined;
  const headers = { authorization: `Bearer ${customer}:token` };
  if (line === '1.x') {
    const client = new Client1({ name: 'burst-agent', version: '1.0.0' });
    const t = http
      ? new Http1(http.url, { requestInit: { headers } })
      : new Stdio1({ command: process.execPath, args: [ENTRY[line]], cwd: PACKAGE_DIR, env, stderr: 'pipe' });
    await client.connect(t);
    return {
      call: (name) => client.callTool({ name, arguments: name === 'echo' ? { text: 'x' } : {} }),
      close: async () => {
        await client.close();
        http?.proc.kill();
      },
      proc: http?.proc,
      pid: t instanceof Stdio1 ? (t.pid ?? undefined) : http?.proc.pid,
    };
  }
  // 2.x: the stateless 2026-07-28 protocol over HTTP (a server per request), the 2025 one on stdio
  const client = new Client2(
    { name: 'burst-agent', version: '1.0.0' },
    http ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {},
  );
  const t = http
    ? new Http2(http.url, { requestInit: { headers } })
    : new Stdio2({ command: process.execPath, args: [ENTRY[line]], cwd: PACKAGE_DIR, env, stderr: 'pipe' });
  await client.connect(t);
  return {
    call: (name) => client.callTool({ name, arguments: name === 'echo' ? { text: 'x' } : {} }),
    close: async () => {
      await client.close();
      http?.proc.kill();
    },
    proc: http?.proc,
    pid: t instanceof Stdio2 ? (t.pid ?? undefined) : http?.proc.pid,
  };
}

function ranCount(file: string): number {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0;
}

interface RpcError {
  code?: number;
  data?: { tollgate?: { refusal?: string; reason?: string; scope?: string } };
}

/** A burst: `n` calls at once (no export can answer in between), then `m` more one at a time. */
async function burst(conn: Conn, n: number, m: number) {
  const settled = await Promise.allSettled(Array.from({ length: n }, () => conn.call('echo')));
  for (let i = 0; i < m; i++) settled.push(...(await Promise.allSettled([conn.call('echo')])));
  const ok = settled.filter((s) => s.status === 'fulfilled').length;
  const refusals = settled
    .filter((s): s is PromiseRejectedResult => s.status === 'rejected')
    .map((s) => s.reason as RpcError);
  return { ok, refusals };
}

async function billed(customer: string, n: number) {
  return waitFor(`${n} billed calls of ${customer}`, async () => {
    await tg.lander?.idle();
    const r = await query<{ decision: string; n: string }>(
      tg,
      'SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = {c:String} GROUP BY decision',
      { c: customer },
    );
    const total = r.reduce((s, x) => s + Number(x.n), 0);
    return total >= n ? Object.fromEntries(r.map((x) => [x.decision, Number(x.n)])) : undefined;
  });
}

const dayKey = (customer: string) => redisKeys.day(customerTag('demo-mcp', customer), dayOf(Date.now()));

describe('lease configuration', () => {
  it('is off by default, on with the option or TOLLGATE_LEASES, and asks the receiver that answers directives', () => {
    expect(resolveConfig({ endpoint: 'http://h:4318' }, {}).resolved.runtime?.leases).toBeUndefined();
    const on = resolveConfig({ endpoint: 'http://h:4318', ingestKey: 'k', leases: true }, {}).resolved.runtime
      ?.leases;
    expect(on).toMatchObject({
      url: 'http://h:4318/v1/leases',
      timeoutMs: 250,
      failMode: 'open',
      windowMs: 2000,
    });
    expect(on?.headers).toEqual({ authorization: 'Bearer k' });
    const env = resolveConfig(
      { endpoint: 'http://collector:4318', directivesEndpoint: 'http://tollgate:4318' },
      { TOLLGATE_LEASES: '1', TOLLGATE_LEASE_FAIL_MODE: 'closed', TOLLGATE_LEASE_TIMEOUT_MS: '900' },
    ).resolved.runtime?.leases;
    expect(env).toMatchObject({ url: 'http://tollgate:4318/v1/leases', failMode: 'closed', timeoutMs: 900 });
    const bad = resolveConfig(
      { endpoint: 'http://h:4318', leases: { failMode: 'sometimes' as 'open', timeoutMs: -1 } },
      {},
    );
    expect(bad.problems).toEqual([
      'leases.failMode must be open or closed (got sometimes)',
      'leases.timeoutMs must be a positive integer (got -1); using 250',
    ]);
    expect(resolveConfig({ leases: true }, {}).problems).toContain(
      'leases need the built-in exporter: set `endpoint` or TOLLGATE_OTLP_ENDPOINT (without one no call is leased)',
    );
    // TOLLGATE_LEASES in the usual spellings; any other is named, never silently off
    const leasesOf = (v: string) => resolveConfig({ endpoint: 'http://h:4318' }, { TOLLGATE_LEASES: v });
    for (const v of ['1', 'true', 'TRUE', 'yes', 'On', ' on ']) {
      expect([v, leasesOf(v).resolved.runtime?.leases !== undefined, leasesOf(v).problems]).toEqual([
        v,
        true,
        [],
      ]);
    }
    for (const v of ['0', 'false', 'No', 'off', '']) {
      expect([v, leasesOf(v).resolved.runtime?.leases, leasesOf(v).problems]).toEqual([v, undefined, []]);
    }
    expect(leasesOf('sure').problems).toEqual([
      'TOLLGATE_LEASES must be 1, true, yes or on (or 0, false, no, off); got sure: leases are off',
    ]);
  });
});

describe('a burst against a hard limit: 0 calls over through the SDK', () => {
  const cells = [
    { line: '1.x', transport: 'stdio' },
    { line: '2.4', transport: 'stdio' },
    { line: '1.x', transport: 'http' },
    { line: '2.4', transport: 'http' },
  ] as const;
  for (const c of cells) {
    it(`${c.line} ${c.transport}: 10 calls/day`, async () => {
      const customer = `burst-${c.line}-${c.transport}`.replace('.', '');
      const ran = join(dir, `${customer}.ran`);
      const conn = await connect(c.line, c.transport, customer, ran);
      try {
        const r = await burst(conn, 40, 5);
        expect(ranCount(ran)).toBe(10);
        expect(r.ok).toBe(10);
        expect(r.refusals).toHaveLength(35);
        for (const e of r.refusals) {
          expect(e.code).toBe(REFUSAL_CODES.killed);
          expect(e.data?.tollgate).toMatchObject({
            refusal: 'killed',
            scope: 'customer',
            reason: 'hard_limit:calls_per_day',
          });
        }
        expect(await billed(customer, 10)).toEqual({ billed: 10 });
      } finally {
        await conn.close();
      }
    });
  }

  it('2.4 stdio: a money limit (0.07 at 0.01 a call) runs exactly 7 calls', async () => {
    const customer = 'wallet-co';
    const ran = join(dir, `${customer}.ran`);
    const conn = await connect('2.4', 'stdio', customer, ran);
    try {
      const r = await burst(conn, 20, 3);
      expect(ranCount(ran)).toBe(7);
      expect(r.ok).toBe(7);
      for (const e of r.refusals) {
        expect(e.code).toBe(REFUSAL_CODES.killed);
        expect(e.data?.tollgate?.reason).toBe('hard_limit:spend_per_period');
      }
      expect(await billed(customer, 7)).toEqual({ billed: 7 });
    } finally {
      await conn.close();
    }
  });
});

describe('per-token prices', () => {
  it('the money overage is bounded by the unknown part of the calls in flight, and settles', async () => {
    // search_docs: 0.01 known per call + 480 output tokens at 0.00001 (0.0048) learnt only from the span
    const customer = 'tokens-co';
    const s = await connectStdio({
      TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: customer,
      TOLLGATE_LEASES: '1',
      TOLLGATE_LEASE_TIMEOUT_MS: '3000',
    });
    const call = () => s.client.callTool({ name: 'search_docs', arguments: { query: 'q' } });
    try {
      // a burst: every call is in flight before any span settles, so each is taken at its known price
      const burst = await Promise.allSettled(Array.from({ length: 20 }, call));
      const ran = burst.filter((r) => r.status === 'fulfilled').length;
      expect(ran).toBe(10); // 0.1 / 0.01
      const period = redisKeys.period(customerTag('demo-mcp', customer), dayOf(Date.now()).slice(0, 7));
      const spend = await waitFor('the burst settled', async () => {
        const v = await tg.redis?.hget(period, 'spend');
        return Number(v) >= ran * 14_800_000 ? Number(v) : undefined;
      });
      // the bound: over the limit by at most the unknown part (0.0048) of the calls in flight (10)
      expect(spend).toBe(ran * 14_800_000);
      expect(spend - 100_000_000).toBeLessThanOrEqual(ran * 4_800_000);
      // settled: nothing more runs
      const after = await Promise.allSettled(Array.from({ length: 3 }, call));
      expect(after.filter((r) => r.status === 'fulfilled')).toHaveLength(0);
    } finally {
      await s.client.close();
    }
  });
});

describe('a dead instance', () => {
  /** When the leases of `customer` lapse at Tollgate: their last renewal + the TTL, as Tollgate recorded it. */
  async function lapseOf(customer: string): Promise<number> {
    const expiries = (await tg.redis?.zrange(
      redisKeys.leaseExpiry(customerTag('demo-mcp', customer)),
      0,
      -1,
      'WITHSCORES',
    )) as string[];
    return Math.max(0, ...expiries.filter((_, i) => i % 2 === 1).map(Number));
  }

  it('kill -9: what its lease held stays held past the TTL, so the limit holds', async () => {
    const customer = 'killed-holder';
    const ran = join(dir, `${customer}.ran`);
    const a = await connect('2.4', 'stdio', customer, ran);
    // a little traffic so the lease grows beyond what is used, then time for the spans to settle
    await burst(a, 4, 0);
    await waitFor('4 settled', async () =>
      (await tg.redis?.hget(dayKey(customer), 'calls')) === '4' ? true : undefined,
    );
    expect(Number(await tg.redis?.hget(dayKey(customer), 'lr'))).toBeGreaterThan(0);
    process.kill(a.pid as number, 'SIGKILL');
    await a.close().catch(() => {});
    // the lapse as Tollgate recorded it once the dead instance's last export was answered (its answer renews
    // the lease, after the calls are counted)
    await new Promise((r) => setTimeout(r, 300));
    const lapsesAt = await lapseOf(customer);
    // past the lapse: the dead lease's allowance stays held (it may have been taken by calls whose spans
    // never came); the rest of the day's limit is there for the next process
    await new Promise((r) => setTimeout(r, Math.max(0, lapsesAt - Date.now()) + 300));
    // read after the lapse: a read before the kill could come before that top-up (CI saw 2 run where 4 should)
    const held = Number(await tg.redis?.hget(dayKey(customer), 'lr'));
    expect(held).toBeGreaterThan(0);
    const ranB = join(dir, `${customer}-b.ran`);
    const b = await connect('2.4', 'stdio', customer, ranB);
    try {
      const late = await burst(b, 10, 0);
      expect(late.ok).toBe(10 - 4 - held);
      expect(ranCount(ran) + ranCount(ranB)).toBe(10 - held);
      expect(await billed(customer, 10 - held)).toEqual({ billed: 10 - held });
      expect(Number(await tg.redis?.hget(dayKey(customer), 'lr'))).toBe(held);
    } finally {
      await b.close();
    }
  });

  it('kill -9 before its calls were exported: they ran unreported, and no later call runs past the limit', async () => {
    // a crash probe: 12 calls answered, SIGKILL before the export; after the lapse 37 ran against 25
    const customer = 'unreported-holder';
    const ran = join(dir, `${customer}.ran`);
    const a = await connect('2.4', 'stdio', customer, ran, { TG_EXPORT_INTERVAL_MS: '60000' });
    const first = await burst(a, 6, 0);
    expect(first.ok).toBe(6);
    const lapsesAt = await lapseOf(customer);
    process.kill(a.pid as number, 'SIGKILL');
    await a.close().catch(() => {});
    await new Promise((r) => setTimeout(r, Math.max(0, lapsesAt - Date.now()) + 300));
    const ranB = join(dir, `${customer}-b.ran`);
    const b = await connect('2.4', 'stdio', customer, ranB);
    try {
      await burst(b, 10, 0);
      expect(ranCount(ran)).toBe(6);
      // the 6 never reached Tollgate (unbilled: they are lost with the process), but they count: at most 10 ran
      expect(ranCount(ran) + ranCount(ranB)).toBeLessThanOrEqual(10);
    } finally {
      await b.close();
    }
  });

  it('an idle process gives its lease back before it would lapse: nothing is held for it', async () => {
    const customer = 'idle-holder';
    const ran = join(dir, `${customer}.ran`);
    const a = await connect('2.4', 'stdio', customer, ran);
    try {
      await burst(a, 3, 0);
      await waitFor('3 settled', async () =>
        (await tg.redis?.hget(dayKey(customer), 'calls')) === '3' ? true : undefined,
      );
      expect(Number(await tg.redis?.hget(dayKey(customer), 'lr'))).toBeGreaterThan(0);
      // a third of the TTL without a call: released by the SDK's timer, well before the lease would lapse
      // (a lapse would leave it held: only a release brings it to 0)
      await waitFor('the idle lease released', async () =>
        Number(await tg.redis?.hget(dayKey(customer), 'lr')) === 0 ? true : undefined,
      );
      const again = await burst(a, 7, 0);
      expect(again.ok).toBe(7);
      expect((await burst(a, 1, 0)).ok).toBe(0);
      expect(ranCount(ran)).toBe(10);
    } finally {
      await a.close();
    }
  });
});

describe('calls of a tool the server does not have', () => {
  it('2.4 stdio: take nothing from the lease and count toward no limit; 10 real calls of 10/day still run', async () => {
    const customer = 'typo-co';
    const ran = join(dir, `${customer}.ran`);
    const conn = await connect('2.4', 'stdio', customer, ran);
    try {
      const typos = await Promise.allSettled(Array.from({ length: 12 }, () => conn.call('ehco')));
      for (const t of typos) {
        expect(t.status).toBe('rejected');
        expect((t as PromiseRejectedResult).reason).toMatchObject({ code: -32602 });
      }
      const r = await burst(conn, 12, 0);
      expect(r.ok).toBe(10);
      expect(ranCount(ran)).toBe(10);
      expect(await billed(customer, 10)).toEqual({ billed: 10 });
    } finally {
      await conn.close();
    }
  });
});

describe('a session that ends', () => {
  it('2.4 stdio, by the end of its input: its lease goes back as it exits, so the next session has the rest of the limit at once', async () => {
    const customer = 'serial-co';
    const releases = async () =>
      (await readMetrics(tg.apiUrl as string)).get(
        'tollgate_lease_requests_total{op="release",outcome="ok"}',
      ) ?? 0;
    const before = await releases();
    const ran = join(dir, `${customer}.ran`);
    const a = await connect('2.4', 'stdio', customer, ran);
    const first = await burst(a, 3, 0);
    expect(first.ok).toBe(3);
    await a.close(); // the client closes its input: the server process runs out of work and exits
    // released by the process as it exits (before, nothing gave it back until its TTL lapsed)
    await waitFor('the lease released at exit', async () => ((await releases()) > before ? true : undefined));
    await waitFor('3 settled and nothing held', async () => {
      const [calls, held] = [
        await tg.redis?.hget(dayKey(customer), 'calls'),
        Number((await tg.redis?.hget(dayKey(customer), 'lr')) ?? 0),
      ];
      return calls === '3' && held === 0 ? true : undefined;
    });
    const ranB = join(dir, `${customer}-b.ran`);
    const b = await connect('2.4', 'stdio', customer, ranB);
    try {
      const second = await burst(b, 12, 0);
      expect(second.ok).toBe(7);
      expect(ranCount(ran) + ranCount(ranB)).toBe(10);
    } finally {
      await b.close();
    }
  });
});

async function inProcess(customer: string, failMode: 'open' | 'closed', tools = ['echo'], timeoutMs = 200) {
  const server = new McpServer({ name: 'lease-redis-down', version: '1.0.0' });
  instrumentMcpServer(server, {
    endpoint: tg.otlpUrl,
    ingestKey: DEV_INGEST_KEY,
    serviceName: `redis-down-${failMode}`,
    exportIntervalMs: 50,
    stateFile: false,
    logger: false,
    customer: () => customer,
    leases: { failMode, timeoutMs },
  });
  for (const tool of tools) {
    server.registerTool(tool, { inputSchema: { text: z.string() } }, async ({ text }) => ({
      content: [{ type: 'text', text }],
    }));
  }
  const [x, y] = InMemoryTransport.createLinkedPair();
  await server.connect(x);
  const client = new Client1({ name: 'agent', version: '1' });
  await client.connect(y);
  return {
    call: (tool = 'echo') => client.callTool({ name: tool, arguments: { text: 'x' } }),
    client,
  };
}

describe('limits scoped to a tool or a session', () => {
  it('a per-tool limit refuses that tool only; a per-session spend limit refuses that session', async () => {
    // a lease answer later than the timeout would fail open and let every call run: on a loaded machine 200 ms
    // is not enough (a CI run saw all 8 pass); Redis is up here, so a generous timeout costs nothing
    const conn = await inProcess('scoped-co', 'open', ['scarce', 'echo'], 10_000);
    try {
      const scarce = await Promise.allSettled(Array.from({ length: 8 }, () => conn.call('scarce')));
      expect(scarce.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
      for (const r of scarce.filter((x): x is PromiseRejectedResult => x.status === 'rejected')) {
        expect((r.reason as RpcError).code).toBe(REFUSAL_CODES.killed);
        expect((r.reason as RpcError).data?.tollgate).toMatchObject({
          scope: 'tool',
          reason: 'hard_limit:calls_per_tool',
        });
      }
      // the in-memory connection is one billing session: 0.05 at 0.01 a call, 3 already spent on scarce
      const echo = await Promise.allSettled(Array.from({ length: 5 }, () => conn.call('echo')));
      expect(echo.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
      for (const r of echo.filter((x): x is PromiseRejectedResult => x.status === 'rejected')) {
        expect((r.reason as RpcError).data?.tollgate).toMatchObject({
          scope: 'session',
          reason: 'hard_limit:spend_per_session',
        });
      }
      expect(await billed('scoped-co', 5)).toEqual({ billed: 5 });
    } finally {
      await conn.client.close();
    }
  });
});

describe('a Tollgate that offers no leases', () => {
  it('answers 404: calls run as without leases, even when leases fail closed', async () => {
    const seen: string[] = [];
    const stub = http.createServer((req, res) => {
      seen.push(req.url ?? '');
      req.resume();
      req.on('end', () => {
        if (req.url === '/v1/leases') res.writeHead(404, { 'content-type': 'application/json' }).end('{}');
        else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => stub.listen(0, '127.0.0.1', r));
    const server = new McpServer({ name: 'no-leases', version: '1.0.0' });
    instrumentMcpServer(server, {
      endpoint: `http://127.0.0.1:${(stub.address() as AddressInfo).port}`,
      format: 'json',
      serviceName: 'no-leases',
      stateFile: false,
      logger: false,
      customer: () => 'anyone',
      leases: { failMode: 'closed' },
    });
    server.registerTool('echo', { inputSchema: { text: z.string() } }, async ({ text }) => ({
      content: [{ type: 'text', text }],
    }));
    const [x, y] = InMemoryTransport.createLinkedPair();
    await server.connect(x);
    const client = new Client1({ name: 'agent', version: '1' });
    await client.connect(y);
    try {
      const r = await Promise.allSettled(
        Array.from({ length: 5 }, () => client.callTool({ name: 'echo', arguments: { text: 'x' } })),
      );
      expect(r.filter((s) => s.status === 'fulfilled')).toHaveLength(5);
      expect(seen.filter((u) => u === '/v1/leases')).toHaveLength(1);
    } finally {
      await client.close();
      stub.closeAllConnections();
      await new Promise((r) => stub.close(r));
    }
  });
});

/** A lease book of its own (instance `instanceId`) asking Tollgate directly, or `url`; `over` changes options. */
function bookOf(
  instanceId: string,
  over: Partial<ConstructorParameters<typeof LeaseBook>[0]> = {},
): LeaseBook {
  return new LeaseBook(
    {
      url: `${tg.otlpUrl}/v1/leases`,
      headers: { authorization: `Bearer ${DEV_INGEST_KEY}` },
      timeoutMs: 2000,
      failMode: 'open',
      windowMs: 2000,
      safetyMs: 200,
      requestTimeoutMs: 1000,
      ...over,
    },
    instanceId,
    () => {},
  );
}

/** One call of `customer` taken from `book` (its wait for an answer included). */
async function takeFrom(book: LeaseBook, customer: string) {
  const t = book.take(customer, 'lookup', 's1', Date.now());
  return t instanceof Promise ? await t : t;
}

describe('renewal while Redis is down', () => {
  it('fail-open runs calls without a lease and counts them; fail-closed refuses with -32052', async () => {
    const open = await inProcess('down-open', 'open');
    const closed = await inProcess('down-closed', 'closed');
    // both hold a lease while Redis is up
    await open.call();
    await closed.call();
    const book = (name: string) => tollgateRuntimes().find((rt) => rt.leases?.remaining(name))?.leases;
    const openBook = book('down-open');
    const closedBook = book('down-closed');
    const covered = closedBook?.remaining('down-closed')?.calls as number;
    expect(covered).toBeGreaterThanOrEqual(0);
    await redis.stop();
    try {
      const o = await Promise.allSettled(Array.from({ length: 6 }, () => open.call()));
      expect(o.filter((s) => s.status === 'fulfilled')).toHaveLength(6);
      expect(openBook?.stats.failOpen).toBeGreaterThanOrEqual(1);
      // what the lease still covered runs (no Redis needed); the rest is refused, retryable
      const c = await Promise.allSettled(Array.from({ length: 6 }, () => closed.call()));
      expect(c.filter((s) => s.status === 'fulfilled')).toHaveLength(covered);
      const refused = c.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
      expect(refused).toHaveLength(6 - covered);
      for (const s of refused) expect((s.reason as RpcError).code).toBe(REFUSAL_CODES.unavailable);
      expect(closedBook?.stats.failClosed).toBe(6 - covered);
    } finally {
      redis = await startPrivateRedis({ port: redis.port });
    }
    // back: leases again (after the failure backoff)
    await new Promise((r) => setTimeout(r, 1100));
    await expect(closed.call()).resolves.toBeDefined();
    await open.client.close();
    await closed.client.close();
  });
});

describe('a limit Tollgate reported exhausted, then Tollgate unreachable', () => {
  it('stays refused while the limit lasts (fail-open or not); a customer with room left fails open', async () => {
    const book = bookOf('inst-exhausted', { timeoutMs: 300 });
    const take = (customer: string) => takeFrom(book, customer);
    // 10 calls a day: the 11th is refused by Tollgate's answer
    let taken = 0;
    for (let i = 0; i < 14 && !((await take('spent-co')) instanceof TollgateRefusal); i++) taken++;
    expect(taken).toBe(10);
    expect(await take('room-co')).not.toBeInstanceOf(TollgateRefusal);
    await redis.stop(); // lease requests answer 503 now
    try {
      // past the denial cache: before, the next call asked Tollgate, got no answer and ran unleased
      await new Promise((r) => setTimeout(r, DENIAL_CACHE_MS + 100));
      const failOpenBefore = book.stats.failOpen;
      for (let i = 0; i < 5; i++) {
        const refused = await take('spent-co');
        expect(refused).toBeInstanceOf(TollgateRefusal);
        expect((refused as TollgateRefusal).data.tollgate.reason).toBe('hard_limit:calls_per_day');
      }
      expect(book.stats.failOpen).toBe(failOpenBefore);
      // room-co's lease runs out (or lapses) meanwhile; what it cannot cover fails open, as documented
      let ran = 0;
      for (let i = 0; i < 12; i++) if (!((await take('room-co')) instanceof TollgateRefusal)) ran++;
      expect(ran).toBe(12);
      expect(book.stats.failOpen).toBeGreaterThan(failOpenBefore);
    } finally {
      redis = await startPrivateRedis({ port: redis.port });
      // the next tests need Tollgate's Redis client connected again (it reconnects with backoff)
      await waitFor('Tollgate reconnected to Redis', async () =>
        (await tg.redis?.ping().catch(() => '')) === 'PONG' ? true : undefined,
      );
    }
  });
});

describe('a release that fails', () => {
  it('is tried again at the next tick, and Tollgate takes it after the lease lapsed: nothing stays stranded', async () => {
    const customer = 'release-retry-co';
    // Tollgate behind a proxy that can fail (a restart, a 503 while Redis is away)
    let failing = false;
    const target = new URL(tg.otlpUrl as string);
    const proxy = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (failing) {
          res.writeHead(503).end();
          return;
        }
        const up = http.request(
          {
            host: target.hostname,
            port: target.port,
            path: req.url,
            method: req.method,
            headers: req.headers,
          },
          (r) => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.pipe(res);
          },
        );
        up.end(Buffer.concat(chunks));
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const port = (proxy.address() as AddressInfo).port;
    try {
      const book = bookOf('inst-release-retry', { url: `http://127.0.0.1:${port}/v1/leases` });
      expect(await takeFrom(book, customer)).not.toBeInstanceOf(TollgateRefusal);
      const held = Number(await tg.redis?.hget(dayKey(customer), 'lr'));
      expect(held).toBeGreaterThan(0);
      failing = true;
      await book.releaseIdle(Date.now() + 60_000); // the release gets a 503: kept to be tried again
      // the lease lapses meanwhile, and a lease that lapses stays held
      await new Promise((r) => setTimeout(r, TTL_MS + 300));
      const reap = await fetch(`${tg.otlpUrl}/v1/leases`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
        body: JSON.stringify({
          instanceId: 'inst-other',
          requests: [{ op: 'release', customer, leaseId: `ls_${'0'.repeat(24)}` }],
        }),
      });
      expect(reap.status).toBe(200);
      expect(Number(await tg.redis?.hget(dayKey(customer), 'lr'))).toBe(held);
      // Tollgate is back: the next tick releases it, lapsed or not
      failing = false;
      await book.releaseIdle(Date.now());
      expect(Number(await tg.redis?.hget(dayKey(customer), 'lr'))).toBe(1); // the one call taken, not yet settled
    } finally {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  });
});

describe('a kill while a lease is held', () => {
  it('the answer that says so cuts the held lease back: the next call is refused, not run on the old grant', async () => {
    const book = bookOf('inst-cut', { requestTimeoutMs: 5000 });
    const take = () => takeFrom(book, 'cut-co');
    // take until the held lease covers more than the calls already taken
    let taken = 0;
    while ((book.remaining('cut-co')?.calls ?? 0) < 1 && taken < 8) {
      expect(await take()).not.toBeInstanceOf(TollgateRefusal);
      taken++;
      await new Promise((r) => setTimeout(r, 50)); // let a background renewal land
    }
    const held = book.remaining('cut-co');
    expect(held?.calls).toBeGreaterThan(0);
    // an operator kill (the state enforce.lua and the admin API write), then Tollgate's own answer to a renewal
    await tg.redis?.hset(redisKeys.state(customerTag('demo-mcp', 'cut-co')), 'c', 'kill|operator:ops|0||');
    const res = await fetch(`${tg.otlpUrl}/v1/leases`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({
        instanceId: 'inst-cut',
        requests: [
          { op: 'grant', customer: 'cut-co', leaseId: held?.leaseId, consumedCalls: taken, wantCalls: 5 },
        ],
      }),
    });
    const [answer] = ((await res.json()) as { results: { ok: boolean; lease: unknown }[] }).results;
    expect(answer?.ok).toBe(true);
    book.renewed([answer?.lease]);
    expect(book.remaining('cut-co')?.calls).toBeLessThanOrEqual(0);
    const refused = await take();
    expect(refused).toBeInstanceOf(TollgateRefusal);
    expect((refused as TollgateRefusal).data.tollgate.reason).toBe('operator:ops');
  });
});

describe('a process too busy to read the answer in time', () => {
  it('the time its own event loop was stalled is not counted against Tollgate: the exhausted limit refuses, nothing runs unleased', async () => {
    const options = {
      url: `${tg.otlpUrl}/v1/leases`,
      headers: { authorization: `Bearer ${DEV_INGEST_KEY}` },
      timeoutMs: 250, // the default
      failMode: 'open' as const,
      windowMs: 2000,
      safetyMs: 200,
      requestTimeoutMs: 5000,
    };
    // one instance takes the whole day's budget (10 calls) of the customer
    const first = new LeaseBook(options, 'inst-stall-a', () => {});
    let ran = 0;
    for (let i = 0; i < 20; i++) {
      const t = first.take('stall-co', 'lookup', 's1', Date.now());
      const r = t instanceof Promise ? await t : t;
      if (r instanceof TollgateRefusal) break;
      ran++;
    }
    expect(ran).toBe(10);

    // another instance (another server process) needs a lease for its first call, and right then its event
    // loop is busy for longer than the lease timeout (a cold start, a large synchronous task): Tollgate
    // would answer in milliseconds, but the process cannot read the answer until the stall ends
    const second = new LeaseBook(options, 'inst-stall-b', () => {});
    const pending = second.take('stall-co', 'lookup', 's2', Date.now());
    expect(pending).toBeInstanceOf(Promise);
    const stallUntil = Date.now() + 400;
    while (Date.now() < stallUntil) {
      // busy: no I/O, no timers
    }
    const outcome = await pending;
    expect(second.stats.failOpen).toBe(0);
    expect(outcome).toBeInstanceOf(TollgateRefusal);
    expect((outcome as TollgateRefusal).data.tollgate.reason).toBe('hard_limit:calls_per_day');
    first.close();
    second.close();
  });

  it('an answer that arrived while the process was busy is read before the deadline fails the call', async () => {
    // A relay in another process delays Tollgate's answers by 100 ms (a slow network); this process is busy
    // from 50 ms until 5 ms after the 600 ms deadline. The answer waits in the socket when the deadline timer
    // runs, only 5 ms late (too little to say the process stalled): it must be read before failing open.
    const relay = await slowRelay(100);
    try {
      const port = relay.port;
      const options = {
        url: `http://127.0.0.1:${port}/v1/leases`,
        headers: { authorization: `Bearer ${DEV_INGEST_KEY}` },
        timeoutMs: 600,
        failMode: 'open' as const,
        windowMs: 2000,
        safetyMs: 200,
        requestTimeoutMs: 5000,
      };
      const fill = new LeaseBook(options, 'inst-late-a', () => {});
      for (let i = 0; i < 20; i++) {
        const t = fill.take('late-co', 'lookup', 's1', Date.now());
        if ((t instanceof Promise ? await t : t) instanceof TollgateRefusal) break;
      }
      const book = new LeaseBook(options, 'inst-late-b', () => {});
      const t0 = Date.now();
      const pending = book.take('late-co', 'lookup', 's2', t0);
      setTimeout(() => {
        while (Date.now() < t0 + 605) {
          // busy
        }
      }, 50);
      const outcome = await pending;
      expect(book.stats.failOpen).toBe(0);
      expect(outcome).toBeInstanceOf(TollgateRefusal);
      fill.close();
      book.close();
    } finally {
      relay.stop();
    }
  });

  it('a Tollgate that does not answer still ends the wait after timeoutMs (then the fail mode applies)', async () => {
    const hang = await hangingTollgate();
    const book = new LeaseBook(
      {
        url: hang.url,
        headers: {},
        timeoutMs: 250,
        failMode: 'open',
        windowMs: 2000,
        safetyMs: 200,
        requestTimeoutMs: 5000,
      },
      'inst-hang',
      () => {},
    );
    const t0 = performance.now();
    const pending = book.take('hang-co', 'lookup', 's1', Date.now());
    expect(pending).toBeInstanceOf(Promise);
    expect(await pending).not.toBeInstanceOf(TollgateRefusal);
    const waited = performance.now() - t0;
    expect(book.stats.failOpen).toBe(1);
    expect(waited).toBeGreaterThanOrEqual(240);
    expect(waited).toBeLessThan(2000);
    book.close();
    await hang.close();
  });
});

/** A Tollgate that accepts connections and never answers: its leases URL, and how to close it. */
async function hangingTollgate(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<import('node:net').Socket>();
  const server = createNetServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/leases`,
    async close() {
      for (const sock of sockets) sock.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A relay in another process that passes Tollgate's answers on `delayMs` late (a slow network or Tollgate). */
async function slowRelay(delayMs: number): Promise<{ port: number; stop(): void }> {
  const target = new URL(tg.otlpUrl as string);
  const relayScript = `
    const net = require('node:net');
    const s = net.createServer((client) => {
      const up = net.connect(${Number(target.port)}, '${target.hostname}');
      client.pipe(up);
      up.on('data', (c) => setTimeout(() => client.write(c), ${delayMs}));
      up.on('end', () => setTimeout(() => client.end(), ${delayMs}));
      for (const x of [client, up]) x.on('error', () => {});
    });
    s.listen(0, '127.0.0.1', () => process.stdout.write(String(s.address().port) + '\\n'));
  `;
  const relay = spawn(process.execPath, ['-e', relayScript], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    relay.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    relay.once('exit', () => reject(new Error('relay exited')));
  });
  return { port, stop: () => relay.kill() };
}

describe('a slow Tollgate (its answers 600 ms late)', () => {
  it('the first burst of a customer waits for the first answer: 15 calls against 10 a day run 10, none unleased', async () => {
    const relay = await slowRelay(600);
    try {
      const book = new LeaseBook(
        {
          url: `http://127.0.0.1:${relay.port}/v1/leases`,
          headers: { authorization: `Bearer ${DEV_INGEST_KEY}` },
          timeoutMs: 250, // the defaults
          firstTimeoutMs: 2000,
          failMode: 'open',
          windowMs: 2000,
          safetyMs: 200,
          requestTimeoutMs: 5000,
        },
        'inst-slow',
        () => {},
      );
      const outcomes = await Promise.all(
        Array.from({ length: 15 }, () => book.take('slow-co', 'lookup', 's1', Date.now())),
      );
      expect(book.stats.failOpen).toBe(0);
      expect(outcomes.filter((o) => !(o instanceof TollgateRefusal))).toHaveLength(10);
      book.close();
    } finally {
      relay.stop();
    }
  });

  it('a Tollgate that never answers costs one long first wait per customer, then timeoutMs', async () => {
    const hang = await hangingTollgate();
    const book = new LeaseBook(
      {
        url: hang.url,
        headers: {},
        timeoutMs: 250,
        firstTimeoutMs: 1000,
        failMode: 'open',
        windowMs: 2000,
        safetyMs: 200,
        requestTimeoutMs: 5000,
      },
      'inst-hang-first',
      () => {},
    );
    const waitOf = async () => {
      const t0 = performance.now();
      expect(await book.take('hang-first-co', 'lookup', 's1', Date.now())).not.toBeInstanceOf(
        TollgateRefusal,
      );
      return performance.now() - t0;
    };
    const first = await waitOf();
    expect(first).toBeGreaterThanOrEqual(990);
    await new Promise((r) => setTimeout(r, 1100)); // past the failure backoff
    const second = await waitOf();
    expect(second).toBeGreaterThanOrEqual(240);
    expect(second).toBeLessThan(900);
    expect(book.stats.failOpen).toBe(2);
    book.close();
    await hang.close();
  });
});

describe('a customer killed by a hard limit', () => {
  it.each([
    ['hk-co', 'hard_limit:calls_per_day'],
    ['hk2-co', 'hard_limit:spend_per_period'],
  ])(
    '%s (%s): a new instance is refused by the killed answer — not after timeoutMs, not by running the call',
    async (customer, reason) => {
      // the state enforce.lua writes when an export's calls crossed a limit (calls without leases: another
      // sender, or calls run fail-open): lease.lua answers `killed`, with the limit's reason
      const until = Date.now() + 3_600_000;
      await tg.redis?.hset(
        redisKeys.state(customerTag('demo-mcp', customer)),
        'c',
        `kill|${reason}|${until}||`,
      );
      const book = new LeaseBook(
        {
          url: `${tg.otlpUrl}/v1/leases`,
          headers: { authorization: `Bearer ${DEV_INGEST_KEY}` },
          timeoutMs: 1000,
          failMode: 'open',
          windowMs: 2000,
          safetyMs: 200,
          requestTimeoutMs: 5000,
        },
        `inst-${customer}`,
        () => {},
      );
      const outcomes: unknown[] = [];
      const t0 = performance.now();
      for (let i = 0; i < 3; i++) {
        const t = book.take(customer, 'lookup', 's1', Date.now());
        outcomes.push(t instanceof Promise ? await t : t);
      }
      const elapsed = performance.now() - t0;
      for (const o of outcomes) {
        expect(o).toBeInstanceOf(TollgateRefusal);
        expect((o as TollgateRefusal).data.tollgate).toMatchObject({
          refusal: 'killed',
          scope: 'customer',
          id: customer,
          reason,
          untilUnixMs: until,
        });
      }
      expect(book.stats.failOpen).toBe(0);
      expect(book.stats.refused).toBe(3);
      // one answer says so: the calls after it are refused from it, without asking again at once
      expect(book.stats.requests).toBe(1);
      expect(elapsed).toBeLessThan(1000);
      book.close();
    },
  );
});
