import { describe, expect, it } from 'vitest';
import {
  amountToPush,
  closedUnits,
  creditToMinor,
  idempotencyKey,
  minorUnitDigits,
  roundToMinor,
} from '../src/stripe/money.js';

/** Nano-units → Stripe minor units: rounding, the carried remainder, units of time and keys. */

describe('roundToMinor', () => {
  it.each([
    // nano, digits, minor
    [0n, 2, 0n],
    [4_999_999n, 2, 0n], // 0.4999999 cent
    [5_000_000n, 2, 1n], // half a cent rounds away from zero
    [14_999_999n, 2, 1n],
    [15_000_000n, 2, 2n],
    [-5_000_000n, 2, -1n],
    [-4_999_999n, 2, 0n],
    [1_000_000_000n, 2, 100n], // one dollar
    [499_999_999n, 0, 0n], // JPY: 0.499999999 yen
    [500_000_000n, 0, 1n],
    [500_000n, 3, 1n], // KWD: half a fils
    [123_456_789_012_345_678n, 2, 12_345_678_901n],
  ])('%s nano at %s digits → %s', (nano, digits, minor) => {
    expect(roundToMinor(nano, digits)).toBe(minor);
  });
});

describe('creditToMinor: a credit is rounded toward zero, never above what was paid', () => {
  it.each([
    // nano (a credit is negative), digits, minor
    [0n, 2, 0n],
    [-9_999_999n, 2, 0n], // 0.9999999 cent of credit: nothing yet (carried)
    [-10_000_000n, 2, -1n],
    [-51_700_000n, 2, -5n], // 5.17 cents
    [-55_000_000n, 2, -5n], // 5.5 cents: 5, where half away from zero would credit 6
    [-999_999_999n, 0, 0n], // JPY
    [-1_500_000n, 3, -1n], // KWD
  ])('%s nano at %s digits → %s', (nano, digits, minor) => {
    expect(creditToMinor(nano, digits)).toBe(minor);
    expect(-minor * 10n ** BigInt(9 - digits) <= -nano).toBe(true);
  });
});

describe('amountToPush carries the remainder into the next unit', () => {
  it('three days of 0.43 cent each push 0, 1, 0 cents... and add up to round(total)', () => {
    const perDay = 4_300_000n; // 0.43 cent
    let pushed = 0n;
    const pushes: bigint[] = [];
    for (let d = 1; d <= 3; d++) {
      const p = amountToPush(perDay * BigInt(d), pushed, 2);
      pushes.push(p);
      pushed += p;
    }
    expect(pushes).toEqual([0n, 1n, 0n]); // 0.43 → 0; 0.86 → 1; 1.29 → 1
    expect(pushed).toBe(roundToMinor(perDay * 3n, 2));
  });

  it('over a month of uneven days the pushes add up to the rounded total, never more than ½ cent off', () => {
    let seed = 7;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    let cum = 0n;
    let pushed = 0n;
    for (let d = 0; d < 31; d++) {
      cum += BigInt(rnd() % 50_000_000); // up to 5 cents a day, in nano
      pushed += amountToPush(cum, pushed, 2);
      const off = cum - pushed * 10_000_000n;
      expect(off <= 5_000_000n && off > -5_000_000n).toBe(true);
    }
    expect(pushed).toBe(roundToMinor(cum, 2));
  });

  it('a late call of an already pushed day is absorbed by the next push', () => {
    const pushedDay1 = amountToPush(20_000_000n, 0n, 2); // 2 cents
    const day2 = amountToPush(20_000_000n + 7_000_000n + 30_000_000n, pushedDay1, 2); // + late 0.7 + day 2's 3
    expect([pushedDay1, day2]).toEqual([2n, 4n]); // 5.7 → 6 in all
  });
});

describe('minorUnitDigits', () => {
  it.each([
    ['USD', 2],
    ['eur', 2],
    ['JPY', 0],
    ['krw', 0],
    ['KWD', 3],
  ])('%s has %s digits', (c, d) => expect(minorUnitDigits(c)).toBe(d));
  it('the mapping may override', () => expect(minorUnitDigits('USD', 0)).toBe(0));
});

describe('closedUnits', () => {
  const march = { fromMs: Date.UTC(2026, 2, 1), toMs: Date.UTC(2026, 3, 1) };
  it('days that ended settle minutes before now, in order', () => {
    const now = Date.UTC(2026, 2, 4, 2, 0);
    expect(closedUnits('2026-03', march, 'day', now, 120 * 60_000).map((u) => u.id)).toEqual([
      '2026-03-01',
      '2026-03-02',
      '2026-03-03',
    ]);
    expect(closedUnits('2026-03', march, 'day', now - 1, 120 * 60_000).map((u) => u.id)).toEqual([
      '2026-03-01',
      '2026-03-02',
    ]);
  });
  it('the period once it is over and settled', () => {
    expect(closedUnits('2026-03', march, 'period', Date.UTC(2026, 3, 1, 1), 120 * 60_000)).toEqual([]);
    expect(closedUnits('2026-03', march, 'period', Date.UTC(2026, 3, 1, 2), 120 * 60_000)).toEqual([
      { id: '2026-03', period: '2026-03', ...march },
    ]);
  });
});

describe('idempotencyKey', () => {
  it('is derived from product, customer, line and unit only', () => {
    const k = idempotencyKey('demo', 'acme corp', 'calls', '2026-03-02');
    expect(k).toBe('tollgate-v1/demo/acme%20corp/calls/2026-03-02');
    expect(idempotencyKey('demo', 'acme corp', 'calls', '2026-03-02')).toBe(k);
    expect(idempotencyKey('demo', 'acme corp', 'calls', '2026-03-03')).not.toBe(k);
  });
  it('stays within Stripe’s 255 characters', () => {
    const k = idempotencyKey('demo', 'x'.repeat(300), 'calls', '2026-03');
    expect(k.length).toBeLessThanOrEqual(255);
    expect(k).toMatch(/^tollgate-v1\/[0-9a-f]{64}$/);
  });
});
