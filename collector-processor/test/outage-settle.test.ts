import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { customerTag, type RatedCall, redisKeys } from '@tollgate/contracts';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { RedisEnforcer } from '../src/enforcement/enforcer.js';
import { EnforcementLog } from '../src/enforcement/events.js';
import { dayOf } from '../src/enforcement/periods.js';
import { OWED_CALLS_FILE } from '../src/redis/owed-log.js';
import { type PrivateRedis, startPrivateRedis } from '../src/redis/private-redis.js';
import {
  DEV_INGEST_KEY,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
  tempDir,
} from './support/harness.js';
import { exportOf, recordOf, toolSpan } from './support/otlp-json.js';
import { ratedNow } from './support/rated-call.js';

let tg: TestTollgate | undefined;
let redis: PrivateRedis | undefined;
let redisDir: string | undefined;
afterEach(async () => {
  await tg?.cleanup();
  await redis?.stop();
  if (redisDir) rmSync(redisDir, { recursive: true, force: true });
  tg = undefined;
  redis = undefined;
  redisDir = undefined;
});

type Span = ReturnType<typeof toolSpan>;

async function post(spans: Span[]): Promise<number> {
  const res = await fetch(`${tg!.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans)),
  });
  await res.arrayBuffer();
  return res.status;
}

const spansOf = (customer: string, n: number): Span[] =>
  Array.from({ length: n }, () => toolSpan({ customer }));

async function metric(name: string): Promise<number> {
  return (await readMetrics(tg!.apiUrl as string)).get(name) ?? 0;
}

async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A redis-server that keeps its data across a stop and a start (AOF, fsync'd per write) on one port. */
async function durableRedis(port?: number): Promise<PrivateRedis> {
  redisDir ??= tempDir('tollgate-redis-');
  return startPrivateRedis({
    ...(port ? { port } : {}),
    extraArgs: ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', redisDir],
  });
}

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: metered
    plans:
      metered:
        freeCallsPerMonth: 30
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        limits:
          callsPerDay: 50
`;

describe('calls billed fail-open while Redis is down', () => {
  it('are claimed and counted in Redis once it is back: free calls, limits and dedup as without the outage', async () => {
    redis = await durableRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    const customer = 'outage-co';
    expect(await post(spansOf(customer, 10))).toBe(200); // positions 1–10 in Redis
    await redis.stop();
    const outage = [spansOf(customer, 10), spansOf(customer, 10), spansOf(customer, 10)];
    for (const spans of outage) expect(await post(spans)).toBe(200); // positions 11–40, continued locally
    expect(await metric('tollgate_calls_unenforced_total')).toBe(30);
    expect(await metric('tollgate_calls_owed{step="claim"}')).toBe(30);

    // Redis comes back with its data; no export is needed for the outage's calls to be counted
    redis = await durableRedis(redis.port);
    await until('Tollgate to reconnect', async () => tg!.redis!.status === 'ready');
    // a lease asked for at once is granted from counters that hold the outage: half of the 10 calls the
    // day's limit leaves (40 of 50 used), not half of 40
    const leaseOf = async (req: Record<string, unknown>) => {
      const res = await fetch(`${tg!.otlpUrl}/v1/leases`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
        body: JSON.stringify({ instanceId: 'inst-outage', requests: [{ customer, ...req }] }),
      });
      expect(res.status).toBe(200);
      const [out] = (
        (await res.json()) as { results: { ok: boolean; lease: { leaseId: string; calls: number } }[] }
      ).results;
      return out;
    };
    const granted = await leaseOf({ op: 'grant', wantCalls: 50 });
    expect(granted?.lease.calls).toBe(5);
    expect((await leaseOf({ op: 'release', leaseId: granted?.lease.leaseId, consumedCalls: 0 }))?.ok).toBe(
      true,
    );
    await until(
      'the owed calls to be counted',
      async () => (await metric('tollgate_calls_owed{step="claim"}')) === 0,
    );
    expect(await metric('tollgate_calls_settled_total{step="claim",result="counted"}')).toBe(30);
    const tag = customerTag('demo-mcp', customer);
    const day = dayOf(Date.now() - 5_000);
    expect(await tg.redis!.hget(redisKeys.period(tag, day.slice(0, 7)), 'n')).toBe('40');

    // the sender retries an outage export after Redis is back: a duplicate, not billed again
    expect(await post(outage[1] as Span[])).toBe(200);
    // 20 new calls: positions 41–60, all priced (the 30 free ones are gone); the day's calls 41–60 against a
    // limit of 50, so the last 10 are over it
    const after = spansOf(customer, 20);
    expect(await post(after)).toBe(200);
    await tg.lander!.idle();

    const [all] = await query(
      tg,
      `SELECT count() AS n, uniqExact(span_id) AS ids, countIf(price_nano > 0) AS priced, sum(price_nano) AS nano
       FROM mcp_tool_calls WHERE customer = {c:String}`,
      { c: customer },
    );
    // without the outage: 60 calls, 30 free and 30 at 0.01 — 0.30 USD
    expect(all).toEqual({ n: '60', ids: '60', priced: '30', nano: '300000000' });
    const [late] = await query(
      tg,
      `SELECT countIf(decision = 'over_limit') AS over FROM mcp_tool_calls WHERE span_id IN ({ids:Array(String)})`,
      { ids: after.map((s) => s.spanId) },
    );
    expect(late).toEqual({ over: '10' });
    expect(await tg.redis!.hget(redisKeys.day(tag, day), 'calls')).not.toBeNull();
  });
});

describe('calls billed while Redis was down, the process stopped before it came back', () => {
  it('are written down and counted in Redis by the next start', async () => {
    redis = await durableRedis();
    const dataDir = tempDir();
    const flags = { '--redis-url': redis.url, '--data-dir': dataDir };
    const first = await startTestTollgate(flags, PLANS);
    tg = first;
    const customer = 'restart-co';
    expect(await post(spansOf(customer, 10))).toBe(200); // positions 1–10
    await redis.stop();
    const outage = [spansOf(customer, 15), spansOf(customer, 15)];
    for (const spans of outage) expect(await post(spans)).toBe(200);
    await first.lander!.idle();
    await first.stop(); // its last try fails: Redis is still down
    tg = undefined;
    expect(existsSync(join(dataDir, OWED_CALLS_FILE))).toBe(true);

    redis = await durableRedis(redis.port);
    tg = await startTestTollgate(flags, PLANS);
    await until('the left calls to be counted', async () => !existsSync(join(dataDir, OWED_CALLS_FILE)));
    const tag = customerTag('demo-mcp', customer);
    const day = dayOf(Date.now() - 5_000);
    expect(await tg.redis!.hget(redisKeys.period(tag, day.slice(0, 7)), 'n')).toBe('40');
    expect(await tg.redis!.hget(redisKeys.day(tag, day), 'calls')).toBe('40');
    // a retry of an outage export: a duplicate; 20 new calls: positions 41–60, priced, the last 10 over 50 a day
    expect(await post(outage[0] as Span[])).toBe(200);
    const after = spansOf(customer, 20);
    expect(await post(after)).toBe(200);
    await tg.lander!.idle();
    const [all] = await query(
      tg,
      `SELECT count() AS n, countIf(price_nano > 0) AS priced, countIf(decision = 'over_limit') AS over
       FROM mcp_tool_calls WHERE customer = {c:String}`,
      { c: customer },
    );
    expect(all).toEqual({ n: '60', priced: '30', over: '10' });
  });
});

describe('a process started while Redis is still down', () => {
  it("continues the positions of the customers the last run owed calls of: the outage's free calls are not given again", async () => {
    redis = await durableRedis();
    const dataDir = tempDir();
    const flags = { '--redis-url': redis.url, '--data-dir': dataDir };
    const first = await startTestTollgate(flags, PLANS);
    tg = first;
    const customer = 'restart-down-co';
    expect(await post(spansOf(customer, 10))).toBe(200); // positions 1–10 in Redis
    await redis.stop();
    expect(await post(spansOf(customer, 15))).toBe(200); // 11–25, locally: free
    await first.lander!.idle();
    await first.stop();
    tg = undefined;

    // started again with Redis still down: 10 calls are positions 26–35, so 5 free and 5 priced (not 1–10: free)
    tg = await startTestTollgate(flags, PLANS);
    expect(await post(spansOf(customer, 10))).toBe(200);
    await tg.lander!.idle();
    const priced = async () =>
      (
        await query(
          tg!,
          `SELECT count() AS n, countIf(price_nano > 0) AS priced, sum(price_nano) AS nano
           FROM mcp_tool_calls WHERE customer = {c:String}`,
          { c: customer },
        )
      )[0];
    expect(await priced()).toEqual({ n: '35', priced: '5', nano: '50000000' });

    // Redis back: every owed call is counted once, and the next call is position 36
    redis = await durableRedis(redis.port);
    await until(
      'the owed calls to be counted',
      async () => (await metric('tollgate_calls_owed{step="claim"}')) === 0,
    );
    const tag = customerTag('demo-mcp', customer);
    expect(await tg.redis!.hget(redisKeys.period(tag, dayOf(Date.now() - 5_000).slice(0, 7)), 'n')).toBe(
      '35',
    );
    expect(await post(spansOf(customer, 1))).toBe(200);
    await tg.lander!.idle();
    expect(await priced()).toEqual({ n: '36', priced: '6', nano: '60000000' });
  });
});

describe('a retry sent to a process started while Redis is still down', () => {
  it('is a duplicate of the calls the last run counted and landed: billed once (it was billed twice)', async () => {
    redis = await durableRedis();
    const dataDir = tempDir();
    const flags = { '--redis-url': redis.url, '--data-dir': dataDir };
    const first = await startTestTollgate(flags, PLANS);
    tg = first;
    const customer = 'restart-retry-co';
    const spans = spansOf(customer, 5);
    expect(await post(spans)).toBe(200); // counted in Redis, landed
    await first.lander!.idle();
    await redis.stop();
    await first.stop();
    tg = undefined;

    tg = await startTestTollgate(flags, PLANS);
    const billed = async () =>
      (
        await query(
          tg!,
          'SELECT count() AS n, uniqExact(event_id) AS ids FROM mcp_tool_calls WHERE customer = {c:String}',
          { c: customer },
        )
      )[0];
    // the same export again (its sender lost the answer), and a new call beside the first one again
    expect(await post(spans)).toBe(200);
    const fresh = spansOf(customer, 1);
    expect(await post([spans[0] as Span, ...fresh])).toBe(200);
    await tg.lander!.idle();
    expect(await billed()).toEqual({ n: '6', ids: '6' });
    expect(await metric('tollgate_calls_duplicate_total')).toBe(6);

    // Redis back: the one new call is counted, the retries are not
    redis = await durableRedis(redis.port);
    await until(
      'the owed calls to be counted',
      async () => (await metric('tollgate_calls_owed{step="claim"}')) === 0,
    );
    const tag = customerTag('demo-mcp', customer);
    expect(await tg.redis!.hget(redisKeys.period(tag, dayOf(Date.now() - 5_000).slice(0, 7)), 'n')).toBe('6');
    expect(await metric('tollgate_calls_settled_total{step="claim",result="duplicate"}')).toBe(0);
    await tg.lander!.idle();
    expect(await billed()).toEqual({ n: '6', ids: '6' });
  });
});

describe('a spool record replayed while Redis is down (fail-open)', () => {
  it('waits for Redis instead of being rated fail-open by a process that knows no positions', async () => {
    redis = await durableRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    const customer = 'replay-co';
    expect(await post(spansOf(customer, 10))).toBe(200); // positions 1–10
    const spans = spansOf(customer, 25);
    const rec = recordOf('replayed-in-outage-1', tg.plans!.current.version, spans);
    await redis.stop();
    let done = false;
    const replaying = tg.pipeline!.replay([rec]).then(() => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 2500));
    expect(done).toBe(false);
    expect(await metric('tollgate_calls_unenforced_total')).toBe(0);
    redis = await durableRedis(redis.port);
    await replaying;
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      `SELECT count() AS n, countIf(decision = 'unenforced') AS unenforced, countIf(price_nano > 0) AS priced
       FROM mcp_tool_calls WHERE span_id IN ({ids:Array(String)})`,
      { ids: spans.map((s) => s.spanId) },
    );
    // positions 11–35 from Redis: 20 free, 5 priced
    expect(row).toEqual({ n: '25', unenforced: '0', priced: '5' });
  });

  it('except a record of a block the lander resumes: every later block waits for it, so it goes first, fail-open', async () => {
    redis = await durableRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    const record = (rid: string, spans: Span[]) => recordOf(rid, tg!.plans!.current.version, spans);
    const waiting = spansOf('replay-wait-co', 5);
    const resumed = spansOf('replay-resumed-co', 5);
    await redis.stop();
    const replaying = tg.pipeline!.replay(
      [record('rec-waits', waiting), record('rec-resumed', resumed)],
      new Set(['rec-resumed']),
    );
    await until('the resumed record to land', async () => {
      await tg!.lander!.idle();
      const [r] = await query(
        tg!,
        'SELECT count() AS n FROM mcp_tool_calls WHERE span_id IN ({ids:Array(String)})',
        {
          ids: resumed.map((s) => s.spanId),
        },
      );
      return r?.n === '5';
    });
    const [w] = await query(
      tg,
      'SELECT count() AS n FROM mcp_tool_calls WHERE span_id IN ({ids:Array(String)})',
      {
        ids: waiting.map((s) => s.spanId),
      },
    );
    expect(w).toEqual({ n: '0' });
    redis = await durableRedis(redis.port);
    await replaying;
    await tg.lander!.idle();
    const rows = await query(
      tg,
      'SELECT customer, decision, count() AS n FROM mcp_tool_calls WHERE customer LIKE {p:String} GROUP BY customer, decision ORDER BY customer',
      { p: 'replay-%-co' },
    );
    expect(rows).toEqual([
      { customer: 'replay-resumed-co', decision: 'unenforced', n: '5' },
      { customer: 'replay-wait-co', decision: 'free', n: '5' },
    ]);
  });
});

describe('an enforcement step whose script fails', () => {
  it("is applied once Redis answers again, under its own marker (counted once), before the customer's next step", async () => {
    redis = await startPrivateRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const events = new EnforcementLog(tg.clickhouse.client, log);
    const conn = (tg.redis as Redis).duplicate();
    if (conn.status !== 'ready') await new Promise((r) => conn.once('ready', r));
    const enforcer = new RedisEnforcer(conn, tg.plans!, events, log, tg.metrics, { maxSpanAgeHours: 24 });
    const now = Date.now();
    const day = dayOf(now);
    const rows = (customer: string, n: number): RatedCall[] =>
      ratedNow({
        customer,
        n,
        planVersion: tg!.plans!.current.version,
        priceNano: 10_000_000n,
        costNano: 1_000_000n,
      });
    const script = conn as unknown as Record<string, unknown>;
    const real = script.tollgateEnforce;
    let failing = true;
    script.tollgateEnforce = async (...args: unknown[]) => {
      if (failing) throw new Error('Connection is closed.');
      return (real as (...a: unknown[]) => Promise<unknown>).apply(conn, args);
    };
    const calls = async (customer: string) =>
      Number((await tg!.redis!.hget(redisKeys.day(customerTag('demo-mcp', customer), day), 'calls')) ?? 0);

    // 60 calls against a limit of 50 a day, the step failing: billed, nothing counted, nothing marked
    const first = rows('enf-co', 60);
    expect(await enforcer.apply('demo-mcp', 'rec-1', first)).toEqual([]);
    expect(first.some((r) => r.decision === 'over_limit')).toBe(false);
    expect(await calls('enf-co')).toBe(0);
    expect(enforcer.owedCount).toBe(60);
    await expect(enforcer.settle()).rejects.toThrow('Connection is closed.'); // still failing: kept
    expect(enforcer.owedCount).toBe(60);

    failing = false;
    await enforcer.settle();
    expect(enforcer.owedCount).toBe(0);
    expect(await calls('enf-co')).toBe(60);
    const states = await enforcer.statesOf('demo-mcp', 'enf-co');
    expect(states.map((d) => `${d.action}:${d.reason}`)).toContain('kill:hard_limit:calls_per_day');
    // the same record's step once more (a replay): its marker says it was applied
    await enforcer.apply('demo-mcp', 'rec-1', rows('enf-co', 60));
    expect(await calls('enf-co')).toBe(60);

    // a customer's next step waits for its owed one: limits are judged in order
    failing = true;
    await enforcer.apply('demo-mcp', 'rec-2', rows('enf-order', 40));
    failing = false;
    const next = rows('enf-order', 20).map((r, i) => ({ ...r, eventId: `enf-order-next-${i}` }));
    const directives = await enforcer.apply('demo-mcp', 'rec-3', next);
    expect(await calls('enf-order')).toBe(60);
    expect(next.filter((r) => r.decision === 'over_limit')).toHaveLength(10);
    expect(directives.map((d) => `${d.action}:${d.reason}`)).toContain('kill:hard_limit:calls_per_day');
    expect(enforcer.owedCount).toBe(0);
    conn.disconnect();
    await events.close();
  });
});

describe("two customers' usage events with one id", () => {
  const event = (id: string, customerId: string) => ({
    id,
    customerId,
    timestamp: new Date(Date.now() - 1000).toISOString(),
    metricName: 'mcp.tool_call',
    productType: 'mcp',
    toolName: 'search',
    executionDurationMs: 0,
  });
  async function send(events: ReturnType<typeof event>[]): Promise<{ accepted: number; duplicates: number }> {
    const res = await fetch(`${tg!.otlpUrl}/v1/ingest/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({ events }),
    });
    expect(res.status).toBe(200);
    return (await res.json()) as { accepted: number; duplicates: number };
  }

  it("are one customer's two calls on two UTC days, as Redis counts them, with Redis up and during an outage", async () => {
    redis = await durableRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    const on = (id: string, daysAgo: number) => ({
      ...event(id, 'ev-days'),
      timestamp: new Date(Date.now() - daysAgo * 86_400_000 - 1000).toISOString(),
    });
    // one request, Redis up: today's and yesterday's are two calls, the repeat of today's a duplicate
    expect(await send([on('d-1', 0), on('d-1', 1), on('d-1', 0)])).toMatchObject({
      accepted: 2,
      duplicates: 1,
    });
    await redis.stop();
    // during the outage, in two requests: two calls; then a retry of each: duplicates
    expect(await send([on('d-2', 0)])).toMatchObject({ accepted: 1 });
    expect(await send([on('d-2', 1)])).toMatchObject({ accepted: 1, duplicates: 0 });
    expect(await send([on('d-2', 0), on('d-2', 1)])).toMatchObject({ accepted: 0, duplicates: 2 });
    redis = await durableRedis(redis.port);
    await until(
      'the owed calls to be counted',
      async () => (await metric('tollgate_calls_owed{step="claim"}')) === 0,
    );
    await tg.lander!.idle();
    const [row] = await query(tg, `SELECT count() AS n FROM mcp_tool_calls WHERE customer = 'ev-days'`);
    expect(row).toEqual({ n: '4' });
  });

  it('sent several times at once during an outage, are counted once', async () => {
    redis = await durableRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    await redis.stop();
    const events = Array.from({ length: 20_000 }, (_, i) => event(`burst-${i}`, 'ev-burst'));
    // the same 20,000 calls in 4 requests at once: each request rates them over several turns of the event loop
    const answers = await Promise.all(Array.from({ length: 4 }, () => send(events)));
    expect(answers.reduce((n, a) => n + a.accepted, 0)).toBe(20_000);
    redis = await durableRedis(redis.port);
    await until(
      'the owed calls to be counted',
      async () => (await metric('tollgate_calls_owed{step="claim"}')) === 0,
    );
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      `SELECT count() AS n, uniqExact(event_id) AS ids FROM mcp_tool_calls WHERE customer = 'ev-burst'`,
    );
    expect(row).toEqual({ n: '20000', ids: '20000' });
  });

  it('are two calls, in one request and in two, with Redis up and during an outage, as Redis counts them', async () => {
    redis = await durableRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url }, PLANS);
    // Redis up, one request: each customer's event once, the repeat of the first a duplicate
    expect(
      await send([event('order-1', 'ev-a'), event('order-1', 'ev-b'), event('order-1', 'ev-a')]),
    ).toMatchObject({ accepted: 2, duplicates: 1 });
    await redis.stop();
    // Redis down: the same id under two customers in two requests, then a retry of each
    expect(await send([event('order-2', 'ev-a')])).toMatchObject({ accepted: 1, duplicates: 0 });
    expect(await send([event('order-2', 'ev-b')])).toMatchObject({ accepted: 1, duplicates: 0 });
    expect(await send([event('order-2', 'ev-a'), event('order-2', 'ev-b')])).toMatchObject({
      accepted: 0,
      duplicates: 2,
    });
    expect(await metric('tollgate_calls_owed{step="claim"}')).toBe(2);
    redis = await durableRedis(redis.port);
    await until(
      'the owed calls to be counted',
      async () => (await metric('tollgate_calls_owed{step="claim"}')) === 0,
    );
    expect(await metric('tollgate_calls_settled_total{step="claim",result="counted"}')).toBe(2);
    await tg.lander!.idle();
    const rows = await query(
      tg,
      `SELECT customer, count() AS n FROM mcp_tool_calls WHERE customer IN ('ev-a', 'ev-b')
       GROUP BY customer ORDER BY customer`,
    );
    expect(rows).toEqual([
      { customer: 'ev-a', n: '2' },
      { customer: 'ev-b', n: '2' },
    ]);
  });
});
