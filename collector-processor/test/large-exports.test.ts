import { customerTag, type Directive, type RatedCall, redisKeys, type ToolCall } from '@tollgate/contracts';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENFORCE_CHUNK, RedisEnforcer } from '../src/enforcement/enforcer.js';
import { EnforcementLog } from '../src/enforcement/events.js';
import {
  CLAIM_CHUNK,
  CLAIM_STATUS,
  type ClaimInput,
  claimCalls,
  SCRIPTS_IN_FLIGHT,
} from '../src/meter/claim.js';
import { query, readMetrics, sendExport, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import { BASE_RATED_CALL, ratedNow } from './support/rated-call.js';

/**
 * Exports far larger than an SDK's 512 spans: an OTel Collector's batch processor sends up to 8,192 spans per
 * export by default, often of one customer. claim.lua once passed all of an export's calls of one customer
 * to one HMGET / HSET through Lua's unpack, which stops at 8,000 values: from about 4,000 calls the script
 * failed, the pipeline took that for Redis being down and billed the whole export unenforced (fail-open:
 * no dedup claim, no counters, no hard limit) or refused it with a 503 forever (fail-closed); and a
 * gzip'd export of 200,000 calls (within the body limits) held Redis in one script past the command
 * timeout, with the same result. Claims and enforcement now go to Redis in chunks of at most 4,096 calls.
 */
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: capped
    plans:
      capped:
        tools:
          "*": { price: { perCall: "0.001" }, cost: { perCall: "0.0001" } }
        limits:
          callsPerDay: 9500
        marginGuard: { enabled: false }
`;

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
});

const day = new Date().toISOString().slice(0, 10);

async function send(body: string): Promise<Directive[]> {
  return (await sendExport(tg, body)).tollgate?.directives ?? [];
}

const batch = (customer: string, n: number) =>
  JSON.stringify(
    exportOf(
      Array.from({ length: n }, (_, i) =>
        toolSpan({ customer, tool: `tool_${i % 4}`, attrs: { 'mcp.session.id': `${customer}-s` } }),
      ),
      { 'service.name': 'mcp', 'service.instance.id': `inst-${customer}` },
    ),
  );

describe('an export of 9,000 calls of one customer', () => {
  it('is claimed, counted and enforced like a small one, and its retry counts nothing', async () => {
    const customer = 'collector-batch';
    const body = batch(customer, 9000);
    const before = await readMetrics(tg.apiUrl!);
    expect(await send(body)).toEqual([]);
    expect(await send(body)).toEqual([]); // the Collector's retry of the same export
    const after = await readMetrics(tg.apiUrl!);
    expect(after.get('tollgate_redis_errors_total') ?? 0).toBe(
      before.get('tollgate_redis_errors_total') ?? 0,
    );
    expect(after.get('tollgate_calls_unenforced_total') ?? 0).toBe(
      before.get('tollgate_calls_unenforced_total') ?? 0,
    );

    const tag = customerTag('demo-mcp', customer);
    const period = redisKeys.period(tag, day.slice(0, 7));
    expect(await tg.redis!.hmget(period, 'calls', 'n', 't:tool_0', 't:tool_3')).toEqual([
      '9000',
      '9000',
      '2250',
      '2250',
    ]);
    expect(await tg.redis!.hlen(redisKeys.dedup(tag, day))).toBe(9000);

    await tg.lander!.idle();
    const rows = await query(
      tg,
      `SELECT decision, count() n, uniqExact(event_id) ids, sum(price_nano) revenue
       FROM mcp_tool_calls WHERE customer = {c:String} GROUP BY decision`,
      { c: customer },
    );
    expect(rows).toEqual([{ decision: 'billed', n: '9000', ids: '9000', revenue: String(9000 * 1_000_000) }]);
  });

  it('one export of 10,000 calls crosses the daily limit of 9,500 in its third chunk: 500 over the limit, and a kill', async () => {
    const customer = 'one-big-export';
    const directives = await send(batch(customer, 10_000));
    expect(directives.find((d) => d.action === 'kill' && d.scope === 'customer')).toMatchObject({
      customer,
      reason: 'hard_limit:calls_per_day',
    });
    await tg.lander!.idle();
    const rows = await query(
      tg,
      `SELECT decision, count() n FROM mcp_tool_calls WHERE customer = {c:String}
       GROUP BY decision ORDER BY decision`,
      { c: customer },
    );
    expect(rows).toEqual([
      { decision: 'billed', n: '9500' },
      { decision: 'over_limit', n: '500' },
    ]);
    const tag = customerTag('demo-mcp', customer);
    expect(await tg.redis!.hget(redisKeys.day(tag, day), 'calls')).toBe('10000');
  });
});

/** Script calls redis-server has run so far (EVALSHA and EVAL, INFO commandstats). */
async function scriptCalls(): Promise<number> {
  const info = await tg.redis!.info('commandstats');
  let n = 0;
  for (const m of info.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)) n += Number(m[1]);
  return n;
}

describe('an export of 1,000 customers', () => {
  it(`holds at most ${SCRIPTS_IN_FLIGHT} script calls in Redis at once, and counts every customer`, async () => {
    // Every customer's claim and enforcement used to go out at once: at 20,000 customers in one export the
    // later ones timed out behind the others (1,031 calls unenforced, 2,000 enforcement scripts failed).
    const redis = tg.redis as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    let inFlight = 0;
    let most = 0;
    const originals: [string, (...a: unknown[]) => Promise<unknown>][] = [];
    for (const name of ['tollgateClaim', 'tollgateEnforce']) {
      const original = redis[name] as (...a: unknown[]) => Promise<unknown>;
      originals.push([name, original]);
      redis[name] = async function (this: unknown, ...a: unknown[]) {
        most = Math.max(most, ++inFlight);
        try {
          return await original.apply(this, a);
        } finally {
          inFlight--;
        }
      };
    }
    try {
      const spans = Array.from({ length: 1000 }, (_, i) =>
        toolSpan({ customer: `many-${i}`, tool: 'tool_0' }),
      );
      const before = await readMetrics(tg.apiUrl!);
      await send(
        JSON.stringify(exportOf(spans, { 'service.name': 'mcp', 'service.instance.id': 'inst-many' })),
      );
      const after = await readMetrics(tg.apiUrl!);
      expect(most).toBe(SCRIPTS_IN_FLIGHT);
      expect(after.get('tollgate_redis_errors_total') ?? 0).toBe(
        before.get('tollgate_redis_errors_total') ?? 0,
      );
      const tag = customerTag('demo-mcp', 'many-999');
      expect(await tg.redis!.hget(redisKeys.day(tag, day), 'calls')).toBe('1');
      // the instance's customers (directives for an idle SDK): all 1,000, added in slices
      expect(await tg.redis!.scard(redisKeys.instance('inst-many'))).toBe(1000);
    } finally {
      for (const [name, original] of originals) redis[name] = original;
    }
  });
});

describe('enforcement scripts that fail for many customers at once', () => {
  it('are logged at most once a second, with the number that failed since the last line', async () => {
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const events = new EnforcementLog(tg.clickhouse.client, log);
    const redis = (tg.redis as Redis).duplicate();
    const enforcer = new RedisEnforcer(redis, tg.plans!, events, log, tg.metrics, { maxSpanAgeHours: 24 });
    (redis as unknown as Record<string, unknown>).tollgateEnforce = async () => {
      throw new Error('NOSCRIPT injected');
    };
    const now = Date.now();
    const rows = (from: number, n: number): RatedCall[] =>
      Array.from({ length: n }, (_, i) => ({
        ...BASE_RATED_CALL,
        eventId: `fail-${from + i}`,
        product: 'demo-mcp',
        customer: `failing-${from + i}`,
        startUnixUs: now * 1000,
        receivedAtMs: now,
        period: day.slice(0, 7),
        planVersion: tg.plans!.current.version,
      }));
    await enforcer.apply('demo-mcp', 'rec-F1', rows(0, 50));
    const failed = lines.filter((l) => l.msg === 'enforcement script failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ failures: 1, err: 'NOSCRIPT injected' });
    await new Promise((r) => setTimeout(r, 1050));
    await enforcer.apply('demo-mcp', 'rec-F2', rows(50, 1));
    expect(lines.filter((l) => l.msg === 'enforcement script failed').map((l) => l.failures)).toEqual([
      1, 50,
    ]);
    redis.disconnect();
    await events.close();
  });
});

describe('a record replayed after a failure between its chunks', () => {
  const inputs = (n: number): ClaimInput[] =>
    Array.from({ length: n }, (_, i) => ({
      call: { eventId: `replay-${String(i).padStart(6, '0')}`, tool: `tool_${i % 3}` } as ToolCall,
      period: '2026-12',
      day: '2026-12-06',
      counts: true,
    }));
  const ttl = { dedupSeconds: 3600, periodSeconds: 3600 };

  it('claims: the chunks already claimed answer their own positions, the rest are claimed once', async () => {
    const all = inputs(CLAIM_CHUNK * 2 + 100);
    // the process stopped after the record's first chunk
    const firstChunk = await claimCalls(tg.redis!, 'p', 'replayed', 'rec-A', all.slice(0, CLAIM_CHUNK), ttl);
    const scriptsBefore = await scriptCalls();
    const replay = await claimCalls(tg.redis!, 'p', 'replayed', 'rec-A', all, ttl);
    expect((await scriptCalls()) - scriptsBefore).toBe(3); // no script call holds more than CLAIM_CHUNK calls
    expect(replay.slice(0, CLAIM_CHUNK)).toEqual(firstChunk.map((r) => ({ ...r, status: CLAIM_STATUS.own })));
    expect(replay.slice(CLAIM_CHUNK).every((r) => r.status === CLAIM_STATUS.new)).toBe(true);
    expect(replay.map((r) => r.planOrdinal)).toEqual(all.map((_, i) => i + 1));
    const period = redisKeys.period(customerTag('p', 'replayed'), '2026-12');
    expect(await tg.redis!.hmget(period, 'calls', 'n')).toEqual([String(all.length), String(all.length)]);
    // the sender's retry under another record: every call a duplicate, nothing counted
    const retry = await claimCalls(tg.redis!, 'p', 'replayed', 'rec-B', all, ttl);
    expect(retry.every((r) => r.status === CLAIM_STATUS.duplicate)).toBe(true);
    expect(await tg.redis!.hmget(period, 'calls', 'n')).toEqual([String(all.length), String(all.length)]);
  });

  it('enforcement: each chunk of the record is counted once, whichever run applied it', async () => {
    const events = new EnforcementLog(tg.clickhouse.client, tg.log);
    const enforcer = new RedisEnforcer(tg.redis!, tg.plans!, events, tg.log, tg.metrics, {
      maxSpanAgeHours: 24,
    });
    const now = Date.now();
    const rows = (n: number): RatedCall[] =>
      Array.from({ length: n }, (_, i) => ({
        ...BASE_RATED_CALL,
        eventId: `enf-${String(i).padStart(6, '0')}`,
        product: 'demo-mcp',
        customer: 'replayed-enforcement',
        sessionId: '',
        startUnixUs: now * 1000,
        receivedAtMs: now,
        period: day.slice(0, 7),
        planVersion: tg.plans!.current.version,
        priceNano: 1_000_000n,
        costNano: 100_000n,
      }));
    const all = rows(ENFORCE_CHUNK * 2 + 7);
    await enforcer.apply('demo-mcp', 'rec-E', all.slice(0, ENFORCE_CHUNK)); // stopped after the first chunk
    const scriptsBefore = await scriptCalls();
    await enforcer.apply('demo-mcp', 'rec-E', all); // the replay
    expect((await scriptCalls()) - scriptsBefore).toBe(3);
    await enforcer.apply('demo-mcp', 'rec-E', all); // and another
    const tag = customerTag('demo-mcp', 'replayed-enforcement');
    expect(await tg.redis!.hget(redisKeys.day(tag, day), 'calls')).toBe(String(all.length));
    expect(await tg.redis!.hget(redisKeys.period(tag, day.slice(0, 7)), 'spend')).toBe(
      String(all.length * 1_000_000),
    );
    await events.close();
  });

  it('enforcement: a replay labels over the limit the calls its first run found over it', async () => {
    const events = new EnforcementLog(tg.clickhouse.client, tg.log);
    const enforcer = new RedisEnforcer(tg.redis!, tg.plans!, events, tg.log, tg.metrics, {
      maxSpanAgeHours: 24,
    });
    const rows = (customer: string, n: number): RatedCall[] =>
      ratedNow({ customer, n, prefix: 'over', planVersion: tg.plans!.current.version });
    const overOf = (list: RatedCall[]) => list.flatMap((r, i) => (r.decision === 'over_limit' ? [i] : []));
    // 9,000 calls, then a record of 1,000 (in one chunk) of which the last 500 pass the limit of 9,500
    await enforcer.apply('demo-mcp', 'rec-O0', rows('over-co', 9000));
    const first = rows('over-co', 1000);
    await enforcer.apply('demo-mcp', 'rec-O1', first);
    expect(overOf(first)).toEqual(Array.from({ length: 500 }, (_, i) => 500 + i));
    // the process stopped before the rows landed: the replay counts nothing and labels the same 500
    const replay = rows('over-co', 1000);
    await enforcer.apply('demo-mcp', 'rec-O1', replay);
    expect(overOf(replay)).toEqual(overOf(first));
    expect(await tg.redis!.hget(redisKeys.day(customerTag('demo-mcp', 'over-co'), day), 'calls')).toBe(
      '10000',
    );
    // a step with none over keeps no list
    const under = rows('under-co', 10);
    await enforcer.apply('demo-mcp', 'rec-U1', under);
    await enforcer.apply('demo-mcp', 'rec-U1', under);
    expect(overOf(under)).toEqual([]);
    await events.close();
  });
});
