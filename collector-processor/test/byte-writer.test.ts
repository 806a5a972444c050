import { describe, expect, it } from 'vitest';
import { ByteWriter } from '../src/byte-writer.js';
import { CallLines } from '../src/enforcement/enforcer.js';
import { seededRandom } from './support/seeded-random.js';

// The buffer that enforcement's call lines and the landing's TabSeparated and Native writers share: its
// digits must be what JavaScript prints, and a buffer grown for one large write must not stay that large.
class Probe extends ByteWriter {
  get capacity(): number {
    return this.buf.length;
  }
  uint(v: number): this {
    this.room(17);
    this.digits(v);
    this.buf[this.pos++] = 32;
    return this;
  }
  big(v: bigint): this {
    this.bigint(v);
    this.buf[this.pos++] = 32;
    return this;
  }
  filler(bytes: number): this {
    this.room(bytes);
    this.buf.fill(120, this.pos, this.pos + bytes);
    this.pos += bytes;
    return this;
  }
  take(): Buffer {
    return this.copyOut();
  }
}

describe('ByteWriter', () => {
  it('writes integers and bigints of every magnitude as String() does', () => {
    const next = seededRandom(0x7011);
    const ints: number[] = [0, -0, 1, 9, 10, 99, 100, 2 ** 31, 2 ** 32, Number.MAX_SAFE_INTEGER];
    for (let i = 0; i < 5000; i++) {
      const digits = 1 + Math.floor(next() * 16);
      const v = Math.floor(next() * 10 ** digits);
      if (Number.isSafeInteger(v)) ints.push(v);
    }
    const bigs: bigint[] = [
      0n,
      -1n,
      2n ** 53n - 1n,
      2n ** 53n,
      -(2n ** 53n),
      2n ** 63n - 1n,
      -(2n ** 63n),
      10n ** 30n,
    ];
    for (const v of ints) bigs.push(BigInt(v) * 1_000_003n, BigInt(v), -BigInt(v), -BigInt(v) * 1_000_003n);
    const w = new Probe();
    for (const v of ints) w.uint(v);
    expect(w.take().toString('latin1')).toBe(ints.map((v) => `${v} `).join(''));
    for (const v of bigs) w.big(v);
    expect(w.take().toString('latin1')).toBe(bigs.map((v) => `${v} `).join(''));
  });

  it('keeps a buffer of up to 1 MiB, and gives back a larger one once a write uses under a quarter of it', () => {
    const w = new Probe();
    expect(w.capacity).toBe(1 << 16);
    w.filler(900_000).take();
    expect(w.capacity).toBe(900_000); // grown to what the write needed, kept: not over 1 MiB
    expect(w.filler(10).take().length).toBe(10);
    expect(w.capacity).toBe(900_000);

    const big = w.filler(9_000_000).take();
    expect(big.length).toBe(9_000_000);
    expect(w.capacity).toBe(9_000_000);
    w.filler(4_000_000).take(); // a quarter or more: kept
    expect(w.capacity).toBe(9_000_000);
    const small = w.filler(300_000).take();
    expect(small.length).toBe(300_000);
    expect(w.capacity).toBe(1 << 19); // the smallest power of two from 64 KiB up that held the write
    expect(big.every((b) => b === 120)).toBe(true); // a copy taken earlier is the caller's
    expect(w.uint(42).take().toString('latin1')).toBe('42 ');
  });

  it("keeps enforcement's calls at 24 bytes each, long identifiers or not: each name goes once, beside them", () => {
    const lines = new CallLines();
    const capacity = () => (lines as unknown as { buf: Buffer }).buf.length;
    const long = 'é'.repeat(1000);
    lines.start(4096);
    for (let i = 0; i < 4096; i++) lines.call(1 + (i % 3), `${long}${i % 3}`, long, long, BigInt(i), 1n);
    const first = lines.take();
    expect(first.calls.length).toBe(4096 * 24);
    expect([first.agents, first.tools]).toEqual([long, long]);
    expect(first.sessions.split('\n')).toEqual([`${long}0`, `${long}1`, `${long}2`]);
    // before, the identifiers went into the buffer with every call: ≈ 24 MB for this export
    expect(capacity()).toBeLessThanOrEqual(1 << 17);
  });
});
