import { describe, expect, it } from 'vitest';
import { RecentIds } from '../src/pipeline/pipeline.js';

// The dedup of last resort while Redis is unreachable: at least the newest `capacity` calls (product, customer,
// event id), kept per export and evicted a whole export at a time, oldest first.
const DAY = 20_430; // a UTC day (days since the epoch)
const US = DAY * 86_400_000_000 + 3_600_000_000; // 01:00 that day, µs
const calls = (ids: readonly string[], customer = 'c', startUnixUs = US) =>
  ids.map((eventId) => ({ eventId, customer, startUnixUs }));

describe('RecentIds', () => {
  it('keeps the newest exports that hold the capacity and evicts the oldest first', () => {
    const r = new RecentIds(3);
    r.addAll('p', calls(['a', 'b']));
    r.addAll('p', calls(['c']));
    r.addAll('p', calls(['d']));
    // c, d hold 2 < 3 ids: a, b stay; then e: c, d, e hold 3, so a, b leave together
    expect(['a', 'b', 'c', 'd'].map((id) => r.has('p', 'c', DAY, id))).toEqual([true, true, true, true]);
    r.addAll('p', calls(['e']));
    expect(['a', 'b', 'c', 'd', 'e'].map((id) => r.has('p', 'c', DAY, id))).toEqual([
      false,
      false,
      true,
      true,
      true,
    ]);
  });

  it('an id in two kept exports stays until both have left', () => {
    const r = new RecentIds(2);
    r.has('p', 'c', DAY, 'x'); // lookups start: the index is kept up to date from here
    r.addAll('p', calls(['a']));
    r.addAll('p', calls(['a', 'b'])); // a replayed record brings a again
    r.addAll('p', calls(['c'])); // the first export leaves; a is still in the second
    expect(r.has('p', 'c', DAY, 'a')).toBe(true);
    r.addAll('p', calls(['d'])); // the second leaves
    expect(['a', 'b', 'c', 'd'].map((id) => r.has('p', 'c', DAY, id))).toEqual([false, false, true, true]);
  });

  it('gives the same answers whether lookups started before the ids came or after', () => {
    const ids = Array.from({ length: 10_500 }, (_, i) => `id-${i}`);
    const early = new RecentIds(1000);
    early.has('p', 'c', DAY, 'warm');
    const late = new RecentIds(1000);
    for (let i = 0; i < ids.length; i += 7) {
      early.addAll('p', calls(ids.slice(i, i + 7)));
      late.addAll('p', calls(ids.slice(i, i + 7)));
    }
    for (const r of [early, late]) {
      expect(r.has('p', 'c', DAY, 'id-9492')).toBe(false);
      expect(r.has('p', 'c', DAY, 'id-9500')).toBe(true);
      expect(r.has('p', 'c', DAY, 'id-10499')).toBe(true);
    }
    // once Redis is back the index goes; a later lookup rebuilds it from what is kept
    late.dropIndex();
    late.addAll('p', calls(['new']));
    expect([
      late.has('p', 'c', DAY, 'new'),
      late.has('p', 'c', DAY, 'id-10499'),
      late.has('p', 'c', DAY, 'id-9492'),
    ]).toEqual([true, true, false]);
  });

  it('a call is its product, customer and event id, as Redis counts it', () => {
    const r = new RecentIds(1000);
    r.addAll('p', [
      { eventId: 'x', customer: 'a', startUnixUs: US },
      { eventId: 'y', customer: 'b', startUnixUs: US },
    ]);
    r.addAll('q', calls(['z'], 'a'));
    expect([r.has('p', 'a', DAY, 'x'), r.has('p', 'b', DAY, 'y'), r.has('q', 'a', DAY, 'z')]).toEqual([
      true,
      true,
      true,
    ]);
    expect([
      r.has('p', 'b', DAY, 'x'),
      r.has('p', 'a', DAY, 'y'),
      r.has('p', 'a', DAY, 'z'),
      r.has('q', 'b', DAY, 'z'),
    ]).toEqual([false, false, false, false]);
  });

  it("a call is also its UTC day (Redis's dedup is per customer and day); a call taken fail-open is found until released", () => {
    const r = new RecentIds(1000);
    r.addAll('p', [
      { eventId: 'x', customer: 'a', startUnixUs: US },
      { eventId: 'y', customer: 'a', startUnixUs: US - 2 * 3_600_000_000 }, // 23:00 the day before
    ]);
    expect([r.has('p', 'a', DAY, 'x'), r.has('p', 'a', DAY - 1, 'x')]).toEqual([true, false]);
    expect([r.has('p', 'a', DAY - 1, 'y'), r.has('p', 'a', DAY, 'y')]).toEqual([true, false]);
    const held = [r.take('p', 'a', DAY, 'z'), r.take('p', 'a', DAY, 'z')];
    expect(r.has('p', 'a', DAY, 'z')).toBe(true);
    r.release(held.slice(0, 1));
    expect(r.has('p', 'a', DAY, 'z')).toBe(true);
    r.release(held.slice(1));
    expect(r.has('p', 'a', DAY, 'z')).toBe(false);
  });

  it('stays bounded over many rounds', () => {
    const r = new RecentIds(1000);
    r.has('p', 'c', DAY, 'warm');
    for (let i = 0; i < 200_000; i += 10)
      r.addAll('p', calls(Array.from({ length: 10 }, (_, k) => `id-${i + k}`)));
    expect(r.has('p', 'c', DAY, 'id-198999')).toBe(false);
    expect(r.has('p', 'c', DAY, 'id-199000')).toBe(true);
  });
});
