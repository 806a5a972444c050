import { describe, expect, it } from 'vitest';
import { RecentIds } from '../src/pipeline/pipeline.js';

// The dedup of last resort while Redis is unreachable: the newest `capacity` event ids, oldest evicted first.
describe('RecentIds', () => {
  it('keeps the newest ids and evicts the oldest first', () => {
    const r = new RecentIds(3);
    for (const id of ['a', 'b', 'c', 'd']) r.add(id);
    expect(['a', 'b', 'c', 'd'].map((id) => r.has(id))).toEqual([false, true, true, true]);
    r.add('e');
    expect(['b', 'c', 'd', 'e'].map((id) => r.has(id))).toEqual([false, true, true, true]);
  });

  it('an id added again keeps its first place in line (as a Set keeps insertion order)', () => {
    const r = new RecentIds(3);
    for (const id of ['a', 'b', 'c', 'a', 'a']) r.add(id);
    r.add('d'); // evicts a, the oldest, although it was added again since
    expect(['a', 'b', 'c', 'd'].map((id) => r.has(id))).toEqual([false, true, true, true]);
  });

  it('stays at its capacity over many rounds of the ring', () => {
    const r = new RecentIds(1000);
    for (let i = 0; i < 10_500; i++) r.add(`id-${i}`);
    expect(r.has('id-9499')).toBe(false);
    expect(r.has('id-9500')).toBe(true);
    expect(r.has('id-10499')).toBe(true);
  });
});
