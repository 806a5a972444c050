import { describe, expect, it } from 'vitest';
import { BlockArena } from '../src/landing/block-arena.js';
import { seededRandom } from './support/seeded-random.js';

// The lander's blocks wait for their insert in chunks that are written again once every block in them is
// released. A block must never change while it is held, whatever the order of copies and releases, a second
// release of the same block or the release of a buffer the arena never handed out.
describe('BlockArena', () => {
  it('never writes over a held block, under random copies and releases, and reuses its chunks', () => {
    const next = seededRandom(0xa7e4);
    const arena = new BlockArena();
    const held: { block: Buffer; fill: number; n: number }[] = [];
    const chunksSeen = new Set<ArrayBufferLike>();
    let reused = 0;
    let ownBuffers = 0;
    /** The held blocks whose bytes are no longer all the value they were copied with. */
    const changed = () =>
      held.filter((h) => {
        if (h.block.length !== h.n) return true;
        for (let i = 0; i < h.n; i += 509) if (h.block[i] !== h.fill) return true;
        return h.n > 0 && h.block[h.n - 1] !== h.fill;
      });
    const src = Buffer.alloc(1 << 20);
    for (let step = 0; step < 4_000; step++) {
      const r = next();
      if (r < 0.5 || held.length === 0) {
        // sizes as records come: mostly 1–300 KB, now and then over the chunk's quarter (a buffer of its own)
        const n = next() < 0.05 ? 520_000 + Math.floor(next() * 400_000) : Math.floor(next() * 300_000);
        const fill = step % 251;
        src.fill(fill, 0, n);
        const block = arena.copy(src, 0, n);
        src.fill(255, 0, n); // the source is reused by its writer: the copy must not follow it
        if (n > 0 && block.buffer.byteLength === 2 << 20) {
          if (chunksSeen.has(block.buffer) && held.every((h) => h.block.buffer !== block.buffer)) reused++;
          chunksSeen.add(block.buffer);
        } else if (n > 0) ownBuffers++;
        held.push({ block, fill, n });
      } else {
        const i = Math.floor(next() * held.length);
        const [h] = held.splice(i, 1);
        arena.release(h?.block as Buffer);
        if (next() < 0.1) arena.release(h?.block as Buffer); // a second release does nothing
        if (next() < 0.05) arena.release(Buffer.alloc(16)); // nor does a buffer it never handed out
      }
      if (step % 7 === 0 || held.length < 3) expect(changed()).toEqual([]);
    }
    expect(changed()).toEqual([]);
    expect(reused).toBeGreaterThan(50);
    expect(ownBuffers).toBeGreaterThan(10);
    for (const h of held) arena.release(h.block);
    expect(arena.freeChunks).toBeGreaterThan(1);
    expect(arena.freeChunks).toBeLessThanOrEqual(8);
    // idle: one chunk is kept, the rest left to the collector
    arena.trim();
    expect(arena.freeChunks).toBe(1);
  });

  it('keeps a chunk out of reuse while one block in it is held', () => {
    const arena = new BlockArena();
    const src = Buffer.alloc(400_000, 7);
    const a = arena.copy(src, 0, 400_000);
    const b = arena.copy(src, 0, 400_000);
    arena.release(a);
    // the chunk is still the current one and b is held: what comes next goes after b, not over a
    const c = arena.copy(Buffer.alloc(400_000, 9), 0, 400_000);
    expect(c.buffer).toBe(a.buffer);
    expect(c.byteOffset).toBe(b.byteOffset + b.length);
    expect(b.every((x) => x === 7)).toBe(true);
    // fill the chunk; the next copy needs another one, and the first stays out of the free list while b is held
    for (let i = 0; i < 2; i++) arena.copy(src, 0, 400_000);
    const d = arena.copy(src, 0, 400_000);
    expect(d.buffer).not.toBe(a.buffer);
    expect(arena.freeChunks).toBe(0);
  });
});
