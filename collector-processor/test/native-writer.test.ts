import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RatedCall } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockArena } from '../src/landing/block-arena.js';
import {
  joinNativeBlocks,
  LandingEncodeError,
  NATIVE_COLUMNS,
  NativeWriter,
  nativeBlockPieces,
} from '../src/landing/native.js';
import { TSV_COLUMNS, TsvWriter } from '../src/landing/tsv.js';
import { type ClickHouseHandle, insertSettings, migrate, openClickHouse } from '../src/storage/clickhouse.js';
import { BASE_RATED_CALL } from './support/rated-call.js';
import { seededRandom } from './support/seeded-random.js';

// NativeWriter's blocks must land exactly the rows TsvWriter's text lands: the same rated calls are inserted
// both ways into two copies of mcp_tool_calls (TabSeparated inline, Native through a file, as the lander
// does) and the tables compared with EXCEPT both ways, every column — strings with tabs, newlines,
// backslashes, NUL and non-ASCII, Int64 money at its limits, UInt64 arrays, both DateTime64 columns.
const dir = mkdtempSync(join(tmpdir(), 'tollgate-native-writer-'));
let ch: ClickHouseHandle;
beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  await migrate(ch.client);
});
afterAll(async () => {
  await ch?.close();
});

const base = BASE_RATED_CALL;

const awkward: Partial<RatedCall>[] = [
  {},
  { customer: 'a\\b', agent: 'x\ty', sessionId: 'l1\nl2', instanceId: 'cr\r nul\0', errorType: '\\\\' },
  { tool: 'tööl-🔧\tz\\', customer: 'é', agent: 'ascii then ü\n', product: 'prödüct\n\n' },
  { customer: '', agent: '', sessionId: '', tool: '', sessionRule: '', errorType: '' },
  { priceNano: 9_223_372_036_854_775_807n, costNano: -9_223_372_036_854_775_808n, priceCallNano: -5n },
  {
    priceNano: 9_007_199_254_740_992n,
    costNano: -9_007_199_254_740_993n,
    priceInputNano: -9_007_199_254_740_991n,
    priceOutputNano: -4_294_967_296n,
    priceDurationNano: -4_294_967_297n,
    pricePerSecondNano: 2_570n, // 0x0A0A: an empty line inside the bytes
  },
  { durationUs: 0, inputTokens: 1_000_000_000_000, outputTokens: 0, tier: 0 },
  { inputTokensPriced: Number.MAX_SAFE_INTEGER, outputTokensPriced: 2_570, tier: 65_535 },
  { startUnixUs: 1_764_000_000_000_007, receivedAtMs: 1_764_000_000_009 },
  { startUnixUs: 1_764_000_000_000_000, receivedAtMs: 1_764_000_000_000 },
  {
    usageLines: ['cached_input_tokens', 'gb_seconds'],
    usageQuantityMicro: [1_000_000_000n, 18_446_744_073_709_551_615n],
    usageUnitNano: [300n, 0n],
    usagePriceNano: [300_000n, -1n],
    usageCostNano: [0n, 9_223_372_036_854_775_807n],
  },
  {
    usageLines: ['x'],
    usageQuantityMicro: [1n],
    usageUnitNano: [2n],
    usagePriceNano: [3n],
    usageCostNano: [4n],
  },
  {
    agent: 'x'.repeat(100_000),
    sessionId: '\t'.repeat(40_000),
    instanceId: 'y'.repeat(127),
    spanId: 'z'.repeat(128),
  },
  { customer: 'ü'.repeat(50_000), traceId: 'ü'.repeat(63), product: 'ü'.repeat(64) },
];

/** Seeded rows with random strings over an alphabet of what text formats escape, and random money. */
function randomRows(n: number): RatedCall[] {
  const rnd = seededRandom(7);
  const alphabet = 'abc\t\n\r\\\0é🔧-_ 0\'"';
  const str = () =>
    Array.from({ length: Math.floor(rnd() * 140) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join(
      '',
    );
  const big = () => BigInt(Math.floor((rnd() - 0.5) * 2 ** 53)) * BigInt(Math.floor(rnd() * 1000) + 1);
  return Array.from({ length: n }, (_, i) => {
    const usage = i % 3 === 0;
    return {
      ...base,
      eventId: `rnd-${i}`,
      customer: str(),
      agent: str(),
      sessionId: str(),
      tool: str(),
      errorType: str(),
      startUnixUs: 1_764_000_000_000_000 + Math.floor(rnd() * 2 ** 42),
      receivedAtMs: 1_764_000_000_000 + Math.floor(rnd() * 2 ** 32),
      durationUs: Math.floor(rnd() * 2 ** 40),
      priceNano: big(),
      costNano: big(),
      pricePerSecondNano: big(),
      usageLines: usage ? ['a', 'b_c'] : [],
      usageQuantityMicro: usage ? [BigInt(i), 2n ** 60n + BigInt(i)] : [],
      usageUnitNano: usage ? [big(), big()] : [],
      usagePriceNano: usage ? [big(), -big()] : [],
      usageCostNano: usage ? [big(), 1n] : [],
    };
  });
}

/** Records of `size` rows each, encoded one by one (as the pipeline does). */
function records(writer: TsvWriter | NativeWriter, rows: readonly RatedCall[], size: number): Buffer[] {
  const parts: Buffer[] = [];
  for (let i = 0; i < rows.length; i += size) {
    for (const r of rows.slice(i, i + size)) writer.add(r);
    parts.push(writer.take());
  }
  return parts;
}
const encode = (writer: TsvWriter | NativeWriter, rows: readonly RatedCall[], size: number): Buffer =>
  Buffer.concat(records(writer, rows, size));

async function rows<T>(query: string): Promise<T[]> {
  return (await ch.client.query({ query, format: 'JSONEachRow' })).json<T>();
}

describe('NativeWriter', () => {
  it('lands exactly the rows TabSeparated lands, awkward values and random rows, in records of any size', async () => {
    const all = [...awkward.map((p, i) => ({ ...base, ...p, eventId: `case-${i}` })), ...randomRows(1_500)];
    await ch.client.command({ query: 'CREATE TABLE calls_tsv AS mcp_tool_calls' });
    await ch.client.command({ query: 'CREATE TABLE calls_native AS mcp_tool_calls' });
    await ch.client.command({ query: 'CREATE TABLE calls_native_stream AS mcp_tool_calls' });
    await ch.client.command({ query: 'CREATE TABLE calls_native_pieces AS mcp_tool_calls' });
    ch.chdbInsert = 'raw';
    await ch.insertTsv('calls_tsv', TSV_COLUMNS, encode(new TsvWriter(), all, 512), insertSettings('rt.tsv'));
    // as the lander sends them: the records joined into one block
    const joined = joinNativeBlocks(records(new NativeWriter(), all, 97));
    // one block of every row: the column count, then the row count as a two-byte LEB128
    expect([joined[0], joined[1], joined[2]]).toEqual([
      NATIVE_COLUMNS.length,
      (all.length & 0x7f) | 0x80,
      all.length >> 7,
    ]);
    await ch.insertNative?.('calls_native', NATIVE_COLUMNS, joined, insertSettings('rt.n'));
    // and as a stream of the records' own blocks
    const stream = encode(new NativeWriter(), all, 97);
    await ch.insertNative?.('calls_native_stream', NATIVE_COLUMNS, stream, insertSettings('rt.s'));
    // as the lander sends them now: records written into its arena, the block as views of them, written to
    // the file in one writev of more pieces than one system call takes (IOV_MAX, 1,024)
    const pieces = nativeBlockPieces(records(new NativeWriter(new BlockArena()), all, 1));
    expect(pieces.length).toBeGreaterThan(10 * 1024);
    await ch.insertNative?.('calls_native_pieces', NATIVE_COLUMNS, pieces, insertSettings('rt.p'));
    for (const table of ['calls_native', 'calls_native_stream', 'calls_native_pieces']) {
      const [cmp] = await rows<Record<string, string>>(`SELECT
        (SELECT count() FROM calls_tsv) AS tsv,
        (SELECT count() FROM ${table}) AS native,
        (SELECT count() FROM (SELECT * FROM calls_tsv EXCEPT SELECT * FROM ${table})) AS only_tsv,
        (SELECT count() FROM (SELECT * FROM ${table} EXCEPT SELECT * FROM calls_tsv)) AS only_native`);
      const n = String(all.length);
      expect(cmp, table).toEqual({ tsv: n, native: n, only_tsv: '0', only_native: '0' });
    }
    // and the values themselves, not only the agreement of the two paths
    const [limits] = await rows<Record<string, unknown>>(
      "SELECT price_nano, cost_nano, toUnixTimestamp64Micro(started_at) AS us, toUnixTimestamp64Milli(received_at) AS ms FROM calls_native WHERE event_id = 'case-4'",
    );
    expect(limits).toEqual({
      price_nano: '9223372036854775807',
      cost_nano: '-9223372036854775808',
      us: '1764000000123456',
      ms: '1764000001004',
    });
    const [usage] = await rows<Record<string, unknown>>(
      "SELECT usage_lines, usage_quantity_micro, usage_price_nano, usage_cost_nano FROM calls_native WHERE event_id = 'case-10'",
    );
    expect(usage).toEqual({
      usage_lines: ['cached_input_tokens', 'gb_seconds'],
      usage_quantity_micro: ['1000000000', '18446744073709551615'],
      usage_price_nano: ['300000', '-1'],
      usage_cost_nano: ['0', '9223372036854775807'],
    });
    const [strings] = await rows<Record<string, unknown>>(
      "SELECT customer, agent, instance_id, product, length(customer) AS n FROM calls_native WHERE event_id IN ('case-1', 'case-2') ORDER BY event_id",
    );
    expect(strings).toEqual({
      customer: 'a\\b',
      agent: 'x\ty',
      instance_id: 'cr\r nul\0',
      product: 'prod',
      n: '3',
    });
  });

  it('writes a Native block: column count, row count, then each column with its name and type', () => {
    const w = new NativeWriter();
    expect(w.take().length).toBe(0);
    w.add(base);
    w.add(base);
    const b = w.take();
    expect([b[0], b[1]]).toEqual([NATIVE_COLUMNS.length, 2]);
    expect(b.subarray(3, 3 + 8).toString()).toBe('event_id');
    expect(b.includes(Buffer.from("\x0astarted_at\x14DateTime64(6, 'UTC')", 'latin1'))).toBe(true);
    expect(b.includes(Buffer.from('\x08customer\x06String', 'latin1'))).toBe(true);
    expect(b.includes(Buffer.from('\x04tool\x06String', 'latin1'))).toBe(true); // LowCardinality travels as String
    expect(w.take().length).toBe(0); // taken: the writer starts empty
    w.add({ ...base, customer: 'abandoned' });
    w.clear();
    w.add(base);
    expect(w.take().equals(encodeOne(base))).toBe(true);
  });

  it('joins blocks only when it knows their layout; one block or none is returned as it is', () => {
    const w = new NativeWriter();
    w.add(base);
    const one = w.take();
    expect(joinNativeBlocks([one])).toBe(one);
    expect(joinNativeBlocks([]).length).toBe(0);
    const copy = Buffer.from(one); // not written by a NativeWriter: no layout, so concatenated as it is
    expect(joinNativeBlocks([one, copy]).equals(Buffer.concat([one, copy]))).toBe(true);
    const usage = {
      ...base,
      usageLines: ['a', 'b'],
      usageQuantityMicro: [1n, 2n],
      usageUnitNano: [3n, -4n],
      usagePriceNano: [5n, 6n],
      usageCostNano: [7n, 8n],
    };
    const oneLine = {
      ...usage,
      usageLines: ['c'],
      usageQuantityMicro: [9n],
      usageUnitNano: [0n],
      usagePriceNano: [0n],
      usageCostNano: [0n],
    };
    w.add(usage);
    w.add(base);
    const two = w.take();
    w.add(oneLine);
    const three = w.take();
    const joined = joinNativeBlocks([one, Buffer.alloc(0), two, three]);
    for (const r of [base, usage, base, oneLine]) w.add(r);
    // the same bytes as the four rows written as one record (array offsets moved past the earlier records)
    expect(joined.equals(w.take())).toBe(true);
  });

  it('writes a record again with its decisions changed: the same bytes as encoding it again, and it joins', () => {
    const next = seededRandom(0xdec1);
    const all = [...awkward.map((p, i) => ({ ...base, ...p, eventId: `case-${i}` })), ...randomRows(700)];
    const arena = new BlockArena();
    for (const [writer, size] of [
      [new NativeWriter(), 512],
      [new NativeWriter(arena), 97],
      [new NativeWriter(arena), 1],
    ] as const) {
      const parts: Buffer[] = [];
      const expected: Buffer[] = [];
      for (let i = 0; i < all.length; i += size) {
        const rows = all.slice(i, i + size).map((r) => ({ ...r }));
        for (const r of rows) writer.add(r);
        const block = writer.take();
        // enforcement marks some calls over the limit (none, some or all of a record), after encoding
        const share = next();
        for (const r of rows) if (next() < share) r.decision = 'over_limit';
        const again = writer.retake(block, rows);
        arena.release(block);
        const fresh = new NativeWriter();
        for (const r of rows) fresh.add(r);
        const whole = fresh.take();
        expect(again.equals(whole), `record at ${i} of ${size}`).toBe(true);
        parts.push(again);
        expected.push(whole);
      }
      // the rewritten records' layout is right: joined into one landing block, the same bytes as fresh ones
      expect(joinNativeBlocks(parts).equals(joinNativeBlocks(expected))).toBe(true);
    }
    // a block it did not write (no layout known) is encoded again whole
    const rows: RatedCall[] = [{ ...base, decision: 'over_limit' }];
    const foreign = Buffer.from(encodeOne(base));
    expect(new NativeWriter().retake(foreign, rows).equals(encodeOne(rows[0] as RatedCall))).toBe(true);
  });

  it.each<[string, Partial<RatedCall>]>([
    ['money past Int64', { priceNano: 1n << 63n }],
    ['money below Int64', { costNano: -(1n << 63n) - 1n }],
    [
      'a negative usage quantity (UInt64)',
      {
        usageLines: ['x'],
        usageQuantityMicro: [-1n],
        usageUnitNano: [0n],
        usagePriceNano: [0n],
        usageCostNano: [0n],
      },
    ],
    ['a fractional count', { durationUs: 1.5 }],
    ['a negative count', { inputTokens: -1 }],
    ['a tier past UInt16', { tier: 70_000 }],
    ['an instant that is not a number', { startUnixUs: Number.NaN }],
  ])('refuses %s with a stable code, and starts the next record clean', (_name, patch) => {
    const w = new NativeWriter();
    w.add(base);
    w.add({ ...base, ...patch });
    let err: unknown;
    try {
      w.take();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LandingEncodeError);
    expect((err as LandingEncodeError).code).toBe('landing_value_out_of_range');
    w.add(base);
    expect(w.take().equals(encodeOne(base))).toBe(true);
  });
});

function encodeOne(r: RatedCall): Buffer {
  const w = new NativeWriter();
  w.add(r);
  return w.take();
}
