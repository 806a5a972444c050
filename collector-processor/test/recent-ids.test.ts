import { describe, expect, it } from 'vitest';
import { RecentIds } from '../src/pipeline/pipeline.js';

// The dedup of last resort while Redis is unreachable: at least the newest `capacity` event ids, kept per
// export and evicted a whole export at a time, oldest first.
describe('RecentIds', () => {
  it('keeps the newest exports that hold the capacity and evicts the oldest first', () => {
    const r = new RecentIds(3);
    r.addAll(['a', 'b']);
    r.addAll(['c']);
    r.addAll(['d']);
    // c, d hold 2 < 3 ids: a, b stay; then e: c, d, e hold 3, so a, b leave together
    expect(['a', 'b', 'c', 'd'].map((id) => r.has(id))).toEqual([true, true, true, true]);
    r.addAll(['e']);
    expect(['a', 'b', 'c', 'd', 'e'].map((id) => r.has(id))).toEqual([false, false, true, true, true]);
  });

  it('an id in two kept exports stays until both have left', () => {
    const r = new RecentIds(2);
    r.has('x'); // lookups start: the index is kept up to date from here
    r.addAll(['a']);
    r.addAll(['a', 'b']); // a replayed record brings a again
    r.addAll(['c']); // the first export leaves; a is still in the second
    expect(r.has('a')).toBe(true);
    r.addAll(['d']); // the second leaves
    expect(['a', 'b', 'c', 'd'].map((id) => r.has(id))).toEqual([false, false, true, true]);
  });

  it('gives the same answers whether lookups started before the ids came or after', () => {
    const ids = Array.from({ length: 10_500 }, (_, i) => `id-${i}`);
    const early = new RecentIds(1000);
    early.has('warm');
    const late = new RecentIds(1000);
    for (let i = 0; i < ids.length; i += 7) {
      early.addAll(ids.slice(i, i + 7));
      late.addAll(ids.slice(i, i + 7));
    }
    for (const r of [early, late]) {
      expect(r.has('id-9492')).toBe(false);
      expect(r.has('id-9500')).toBe(true);
      expect(r.has('id-10499')).toBe(true);
    }
    // once Redis is back the index goes; a later lookup rebuilds it from what is kept
    late.dropIndex();
    late.addAll(['new']);
    expect([late.has('new'), late.has('id-10499'), late.has('id-9492')]).toEqual([true, true, false]);
  });

  it('stays bounded over many rounds', () => {
    const r = new RecentIds(1000);
    r.has('warm');
    for (let i = 0; i < 200_000; i += 10) r.addAll(Array.from({ length: 10 }, (_, k) => `id-${i + k}`));
    expect(r.has('id-198999')).toBe(false);
    expect(r.has('id-199000')).toBe(true);
  });
});
