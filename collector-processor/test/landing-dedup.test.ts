import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RatedCall } from '@tollgate/contracts';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../src/app.js';
import { Lander, RAW_TABLE } from '../src/landing/lander.js';
import { NATIVE_COLUMNS, NativeWriter } from '../src/landing/native.js';
import { TSV_COLUMNS, TsvWriter } from '../src/landing/tsv.js';
import { createMetrics } from '../src/metrics.js';
import { Spool } from '../src/spool/spool.js';
import {
  type ClickHouseHandle,
  insertSettings,
  type LandingInserter,
  migrate,
  openClickHouse,
} from '../src/storage/clickhouse.js';

// The lander's exactly-once step on chDB's raw insert (the bytes as a Buffer, the block id as
// insert_deduplication_token in the INSERT's own SETTINGS): a block whose insert succeeded but whose answer
// was lost is sent again with the same token and counted once — in the raw table and in every view fed
// from it.
const dir = mkdtempSync(join(tmpdir(), 'tollgate-landing-dedup-'));
let ch: ClickHouseHandle;
beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  await migrate(ch.client);
});
afterAll(async () => {
  await ch?.close();
});

function call(i: number, customer: string): RatedCall {
  const usage = i % 3 === 0;
  return {
    eventId: `${customer}-${i}`.padEnd(48, '0'),
    traceId: i.toString(16).padStart(32, '0'),
    spanId: i.toString(16).padStart(16, '0'),
    product: 'dedup-prod',
    customer,
    agent: `agent-${i % 2}`,
    sessionId: `sess-${i % 5}`,
    tool: i % 2 ? 'search' : 'fetch',
    transport: 'stdio',
    source: 'sdk',
    status: i % 7 === 0 ? 'error' : 'ok',
    errorType: i % 7 === 0 ? 'tool_error' : '',
    protocolVersion: '2025-06-18',
    instanceId: 'inst',
    startUnixUs: 1_764_000_000_000_000 + i * 1_000,
    durationUs: 1_000 + i,
    inputTokens: 10,
    outputTokens: 20,
    priceNano: 1_000n + BigInt(i),
    costNano: 100n,
    priceCallNano: 1_000n + BigInt(i),
    priceInputNano: 0n,
    priceOutputNano: 0n,
    priceDurationNano: 0n,
    tier: 1,
    planId: 'std',
    planVersion: 'v',
    currency: 'USD',
    decision: 'billed',
    period: '2025-11',
    receivedAtMs: 1_764_000_000_000,
    sessionRule: 'protocol',
    pricePerSecondNano: 0n,
    inputTokensPriced: 10,
    outputTokensPriced: 20,
    usageLines: usage ? ['gb_seconds'] : [],
    usageQuantityMicro: usage ? [2_000_000n] : [],
    usageUnitNano: usage ? [5n] : [],
    usagePriceNano: usage ? [0n] : [],
    usageCostNano: usage ? [1n] : [],
  };
}

async function totals(customer: string): Promise<Record<string, string>> {
  const q = `SELECT
    (SELECT count() FROM mcp_tool_calls WHERE customer = {c:String}) AS raw,
    (SELECT sum(price_nano) FROM mcp_tool_calls WHERE customer = {c:String}) AS raw_revenue,
    (SELECT sum(calls) FROM mcp_daily_stats WHERE customer = {c:String}) AS daily,
    (SELECT sum(revenue_nano) FROM mcp_daily_stats WHERE customer = {c:String}) AS daily_revenue,
    (SELECT sum(calls) FROM mcp_tool_daily_stats WHERE product = 'dedup-prod') AS tool_daily,
    (SELECT sum(calls) FROM mcp_customer_daily_stats WHERE customer = {c:String}) AS customer_daily,
    (SELECT sum(calls) FROM mcp_session_summary WHERE customer = {c:String}) AS sessions,
    (SELECT sum(calls) FROM mcp_session_daily WHERE customer = {c:String}) AS session_daily,
    (SELECT sum(calls) FROM mcp_usage_daily_stats WHERE customer = {c:String}) AS usage_lines,
    (SELECT uniqExactMerge(sessions) FROM mcp_customer_monthly_sessions WHERE customer = {c:String}) AS month_sessions`;
  const [row] = await (
    await ch.client.query({ query: q, query_params: { c: customer }, format: 'JSONEachRow' })
  ).json<Record<string, string>>();
  return row as Record<string, string>;
}

/** The spool's record of an accepted export, which the lander's intent and done markers refer to. */
function accept(spool: Spool, rid: string): Promise<void> {
  return spool.appendAccepted({
    t: 'a',
    rid,
    product: 'dedup-prod',
    planVersion: 'v',
    receivedAtMs: 0,
    format: 'calls-json',
    payload: Buffer.from('[]'),
  });
}

/** One record of `n` calls as TsvWriter writes it. */
function tsvBlock(customer: string, n: number): Buffer {
  const w = new TsvWriter();
  for (let i = 0; i < n; i++) w.add(call(i, customer));
  return w.take();
}

/** Records of 7 calls, each one Native block (as the pipeline writes them), concatenated (as the lander sends them). */
function nativeBlock(customer: string, n: number): Buffer {
  const w = new NativeWriter();
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i += 7) {
    for (let k = i; k < Math.min(n, i + 7); k++) w.add(call(k, customer));
    parts.push(w.take());
  }
  return Buffer.concat(parts);
}

/**
 * A block of 60 calls inserted, then sent again with its token: it lands once in the raw table and every
 * view; the next block, under another token, lands too (the token was that insert's only: a SETTINGS
 * clause, not a session SET).
 */
async function blockSentAgainLandsOnce(
  customer: string,
  encode: (customer: string, n: number) => Buffer,
  insert: (body: Buffer, token: string) => Promise<void>,
) {
  const body = encode(customer, 60);
  await insert(body, `blk.${customer}.1`);
  const once = await totals(customer);
  expect(once).toMatchObject({
    raw: '60',
    daily: '60',
    customer_daily: '60',
    sessions: '60',
    session_daily: '60',
    usage_lines: '20',
    month_sessions: '5',
  });
  await insert(body, `blk.${customer}.1`);
  expect(await totals(customer)).toEqual(once);
  await insert(encode(`${customer}-2`, 10), `blk.${customer}.2`);
  expect((await totals(`${customer}-2`)).raw).toBe('10');
}

it('a block sent again with its token lands once in the raw table and every view; another token lands', () =>
  blockSentAgainLandsOnce('direct', tsvBlock, (body, token) =>
    ch.insertTsv(RAW_TABLE, TSV_COLUMNS, body, insertSettings(token)),
  ));

it('Native: a block of several records sent again with its token lands once in the raw table and every view', () =>
  blockSentAgainLandsOnce('native', nativeBlock, async (body, token) => {
    if (!ch.insertNative) throw new Error('chDB handle without insertNative');
    await ch.insertNative(RAW_TABLE, NATIVE_COLUMNS, body, insertSettings(token));
  }));

/**
 * A lander on `ch` as `chdbInsert` sets it up, whose first insert lands but whose answer is lost: it sends the
 * block again with the same token, and the 50 calls of its two records count once in the table and the views.
 */
async function lossyLanderCountsOnce(customer: string, chdbInsert: 'raw' | 'file') {
  const before = ch.chdbInsert;
  ch.chdbInsert = chdbInsert;
  try {
    const format = ch.landingFormat;
    const { spool } = await Spool.open({
      dir: join(dir, `spool-${customer}`),
      fsync: false,
      segmentBytes: 1 << 20,
    });
    let calls = 0;
    const answerLost = () => {
      if (++calls === 1) throw new Error('connection reset after the insert (test)');
    };
    const lossy: LandingInserter = {
      landingFormat: format,
      async insertTsv(...args: Parameters<ClickHouseHandle['insertTsv']>) {
        if (format === 'Native') throw new Error('the lander must not send text on the file path (test)');
        await ch.insertTsv(...args);
        answerLost();
      },
      async insertNative(...args: Parameters<NonNullable<ClickHouseHandle['insertNative']>>) {
        await ch.insertNative?.(...args);
        answerLost();
      },
    };
    const lander = new Lander(
      lossy,
      spool,
      { batchRows: 1_000, flushIntervalMs: 10, blockPrefix: customer },
      createLogger('silent'),
      createMetrics(),
    );
    expect(lander.format).toBe(chdbInsert === 'file' ? 'Native' : 'TabSeparated');
    lander.start();
    for (const rid of [`${customer}-1`, `${customer}-2`]) {
      await accept(spool, rid);
    }
    const w = lander.createWriter();
    for (let i = 0; i < 30; i++) w.add(call(i, customer));
    lander.enqueue(`${customer}-1`, w.take(), 30);
    for (let i = 30; i < 50; i++) w.add(call(i, customer));
    lander.enqueue(`${customer}-2`, w.take(), 20);
    await lander.idle(20_000);
    await lander.stop(1_000);
    expect(calls).toBeGreaterThanOrEqual(2);
    const t = await totals(customer);
    expect(t).toMatchObject({
      raw: '50',
      daily: '50',
      customer_daily: '50',
      sessions: '50',
      session_daily: '50',
      usage_lines: '17',
    });
    expect(t.daily_revenue).toBe(t.raw_revenue);
    expect(t.raw_revenue).toBe(
      String(Array.from({ length: 50 }, (_, i) => 1_000 + i).reduce((a, b) => a + b)),
    );
  } finally {
    ch.chdbInsert = before;
  }
}

it('the lander re-sends a block whose insert landed but whose answer was lost, and it counts once', () =>
  lossyLanderCountsOnce('lossy', 'raw'));

it('Native: the lander (file path) re-sends a block whose answer was lost, and it counts once', () =>
  lossyLanderCountsOnce('lossy-native', 'file'));

/** The row count of a Native block: the second of the two LEB128 numbers it starts with (columns, rows). */
function nativeRows(head: Buffer): number {
  let at = 0;
  const varint = (): number => {
    let v = 0;
    for (let shift = 0; ; shift += 7) {
      const b = head[at++] as number;
      v += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return v;
    }
  };
  varint();
  return varint();
}

it('Native: records written into the room of records landed before land every call once, with its own values', async () => {
  const before = ch.chdbInsert;
  ch.chdbInsert = 'file';
  const customer = 'arena-reuse';
  try {
    const { spool } = await Spool.open({
      dir: join(dir, 'spool-arena'),
      fsync: false,
      segmentBytes: 4 << 20,
    });
    // each insert starts 80 ms late (longer than new records take to fill a chunk): room given back too early
    // would be written over before the insert reads it
    let rowsSent = 0; // rows of the inserts begun so far (a Native block starts with its column and row counts)
    const begun = new WeakSet<object>(); // a retried insert is counted once
    const insertErrors: Error[] = [];
    const late: LandingInserter = {
      landingFormat: 'Native',
      insertTsv: () => Promise.reject(new Error('the lander must not send text on the file path (test)')),
      async insertNative(...args: Parameters<NonNullable<ClickHouseHandle['insertNative']>>) {
        const body = args[2];
        if (!begun.has(body)) {
          begun.add(body);
          rowsSent += nativeRows(Buffer.isBuffer(body) ? body : (body[0] as Buffer));
        }
        await new Promise((resolve) => setTimeout(resolve, 80));
        try {
          await ch.insertNative?.(...args);
        } catch (err) {
          insertErrors.push(err as Error);
          throw err;
        }
      },
    };
    const lander = new Lander(
      late,
      spool,
      { batchRows: 8_192, flushIntervalMs: 10, blockPrefix: customer },
      createLogger('silent'),
      createMetrics(),
    );
    expect(lander.format).toBe('Native');
    lander.start();
    const w = lander.createWriter();
    const chunks = new Set<ArrayBufferLike>();
    let bytesTaken = 0;
    let n = 0;
    // records keep coming while earlier ones land (a landing every 10 ms), as under load; at most six records
    // wait for an insert to begin, so that chunks are given back and reused however slow the machine (a loaded
    // run made all 120 records before the inserts caught up, and no chunk was reused), while new records are
    // still written during the 80 ms an insert reads its records
    for (let r = 0; r < 120; r++) {
      while (rowsSent < (r - 6) * 512) {
        // a block the engine could not read (its bytes written over): fail now, not at the test's timeout
        if (insertErrors.length) {
          await lander.stop(1_000);
          throw insertErrors[0];
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      const rid = `${customer}-${r}`;
      await accept(spool, rid);
      for (let i = 0; i < 512; i++) w.add(call(n++, customer));
      const bytes = w.take();
      chunks.add(bytes.buffer);
      bytesTaken += bytes.length;
      lander.enqueue(rid, bytes, 512);
      // a record encoded again (enforcement marked calls over the limit): the first bytes are given back
      if (r % 5 === 1) {
        for (let i = 0; i < 512; i++) w.add(call(1_000_000 + i, customer));
        const again = w.take();
        chunks.add(again.buffer);
        bytesTaken += again.length;
        lander.discard(again);
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await lander.idle(20_000);
    await lander.stop(1_000);
    // the room of landed records was written again (fewer chunks than the bytes would fill), yet every call
    // landed once with its own values
    expect(chunks.size).toBeLessThan(bytesTaken / (2 << 20) - 1);
    const t = await totals(customer);
    expect(t).toMatchObject({
      raw: String(n),
      daily: String(n),
      customer_daily: String(n),
      sessions: String(n),
    });
    expect(t.raw_revenue).toBe(String((n * (n - 1)) / 2 + 1_000 * n));
    expect(t.daily_revenue).toBe(t.raw_revenue);
    const [ids] = await (
      await ch.client.query({
        query: `SELECT uniqExact(trace_id) AS ids, uniqExact(span_id) AS spans, max(duration_us) AS longest
          FROM mcp_tool_calls WHERE customer = {c:String}`,
        query_params: { c: customer },
        format: 'JSONEachRow',
      })
    ).json<Record<string, string>>();
    expect(ids).toEqual({ ids: String(n), spans: String(n), longest: String(1_000 + n - 1) });
  } finally {
    ch.chdbInsert = before;
  }
});
