import type { RatedCall } from '@tollgate/contracts';
import { describe, expect, it } from 'vitest';
import { encodeTsvRow, TsvWriter } from '../src/landing/tsv.js';
import { BASE_RATED_CALL } from './support/rated-call.js';
import { seededRandom } from './support/seeded-random.js';

// TsvWriter must write exactly the bytes of encodeTsvRow (the string encoder whose output the schema test
// round-trips through ClickHouse), for every kind of value a rated call can hold.
const base = BASE_RATED_CALL;

const cases: [string, Partial<RatedCall>][] = [
  ['plain', {}],
  [
    'escapes',
    { customer: 'a\\b', agent: 'x\ty', sessionId: 'l1\nl2', instanceId: 'cr\r nul\0', errorType: '\\\\' },
  ],
  ['non-ASCII, then escapes after it', { tool: 'tööl-🔧\tz\\', customer: 'é', agent: 'ascii then ü\n' }],
  ['empty strings', { customer: '', agent: '', sessionId: '', tool: '', sessionRule: '' }],
  [
    'money at the limits of Int64 and negative',
    { priceNano: 9_223_372_036_854_775_807n, costNano: -9_223_372_036_854_775_808n, priceCallNano: -5n },
  ],
  ['just past the exact numbers', { priceNano: 9_007_199_254_740_992n, costNano: -9_007_199_254_740_993n }],
  ['zero and large counts', { durationUs: 0, inputTokens: 1_000_000_000_000, outputTokens: 0, tier: 0 }],
  [
    'instants with leading zeros in the fraction',
    { startUnixUs: 1_764_000_000_000_007, receivedAtMs: 1_764_000_000_009 },
  ],
  ['instants on the second', { startUnixUs: 1_764_000_000_000_000, receivedAtMs: 1_764_000_000_000 }],
  ['instant before 1970 (as encodeTsvRow writes it)', { startUnixUs: -1_500_000, receivedAtMs: -1 }],
  ['a fractional number (as JavaScript prints it)', { durationUs: 1.5 }],
  [
    'usage lines',
    {
      usageLines: ['cached_input_tokens', 'gb_seconds'],
      usageQuantityMicro: [1_000_000_000n, 18_446_744_073_709_551_615n],
      usageUnitNano: [300n, 0n],
      usagePriceNano: [300_000n, -1n],
      usageCostNano: [0n, 9_223_372_036_854_775_807n],
    },
  ],
  [
    'one usage line',
    {
      usageLines: ['x'],
      usageQuantityMicro: [1n],
      usageUnitNano: [2n],
      usagePriceNano: [3n],
      usageCostNano: [4n],
    },
  ],
  ['a string longer than the initial buffer', { agent: 'x'.repeat(100_000), sessionId: '\t'.repeat(40_000) }],
  ['a long non-ASCII string', { customer: 'ü'.repeat(50_000) }],
];

describe('TsvWriter', () => {
  it.each(cases)('%s: the same bytes as encodeTsvRow', (_name, patch) => {
    const row = { ...base, ...patch };
    const w = new TsvWriter();
    w.add(row);
    expect(w.take().toString('utf8')).toBe(encodeTsvRow(row));
  });

  it('many rows in one record, then the next record starts empty', () => {
    const w = new TsvWriter();
    const rows = cases.map(([, patch], i) => ({ ...base, ...patch, eventId: `id-${i}` }));
    for (const r of rows) w.add(r);
    expect(w.take().toString('utf8')).toBe(rows.map(encodeTsvRow).join(''));
    w.add(base);
    expect(w.take().toString('utf8')).toBe(encodeTsvRow(base));
  });

  it('clear drops a half-written record', () => {
    const w = new TsvWriter();
    w.add({ ...base, customer: 'abandoned' });
    w.clear();
    w.add(base);
    expect(w.take().toString('utf8')).toBe(encodeTsvRow(base));
  });

  it('random rows (seeded) match', () => {
    const rnd = seededRandom(42);
    const alphabet = 'abc\t\n\r\\\0é🔧-_ 0';
    const str = () =>
      Array.from(
        { length: Math.floor(rnd() * 12) },
        () => alphabet[Math.floor(rnd() * alphabet.length)],
      ).join('');
    const big = () => BigInt(Math.floor((rnd() - 0.5) * 2 ** 53)) * BigInt(Math.floor(rnd() * 3000) + 1);
    const w = new TsvWriter();
    let expected = '';
    for (let i = 0; i < 500; i++) {
      const row: RatedCall = {
        ...base,
        customer: str(),
        agent: str(),
        sessionId: str(),
        tool: str(),
        startUnixUs: Math.floor(rnd() * 2 ** 52),
        receivedAtMs: Math.floor(rnd() * 2 ** 42),
        durationUs: Math.floor(rnd() * 2 ** 40),
        priceNano: big(),
        costNano: big(),
        pricePerSecondNano: big(),
      };
      w.add(row);
      expected += encodeTsvRow(row);
    }
    // bytes, not strings: a lone surrogate (half of 🔧) is written as U+FFFD's bytes by both
    expect(w.take().equals(Buffer.from(expected))).toBe(true);
  });
});
