import { MAX_SAFE_BIGINT, MIN_SAFE_BIGINT } from '@tollgate/contracts';
import type { BlockArena } from './landing/block-arena.js';

/** Bytes a writer starts with, and gives back to once a large write is over. */
const INITIAL_BYTES = 1 << 16;
/** A buffer up to this size is kept whatever the last write used. */
const KEEP_BYTES = 1 << 20;
/** 2^32: the high word of an integer written as two 32-bit halves. */
export const TWO_32 = 4_294_967_296;
/** The Int64 range, what `int64` writes. */
export const MIN_INT64 = -(1n << 63n);
export const MAX_INT64 = (1n << 63n) - 1n;

/**
 * A reused buffer that the hot encoders write into — enforcement's calls (enforcer.ts), the landing's
 * TabSeparated rows (tsv.ts) and Native blocks (native.ts) — with the pieces they share: room on demand,
 * integers as decimal digits without a string or as 8 bytes little-endian, and the copy handed out. A writer
 * that writes strings copies their ASCII itself: a shared method for it was not inlined into the TSV and
 * Native loops and cost about 25 instructions per string (callgrind, docs/benchmarks.md "One writer under
 * three encoders").
 *
 * The buffer grows by doubling (or to what one write needs) and is not kept past what recent writes need: once it is over 1 MiB, a copy
 * that used under a quarter of it puts a smaller one in its place (an export of very long identifiers
 * would otherwise hold up to ≈ 10 MB for the life of the process).
 */
export class ByteWriter {
  protected buf: Buffer = Buffer.allocUnsafe(INITIAL_BYTES);
  protected pos = 0;

  /** Makes room for `bytes` more bytes at `pos` (small, so that V8 inlines it where it is called). */
  protected room(bytes: number): void {
    if (this.pos + bytes > this.buf.length) this.grow(bytes);
  }

  private grow(bytes: number): void {
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + bytes));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /**
   * A copy of the bytes written (the buffer is reused; the caller may hold the copy), in `arena` when one is
   * given (the caller releases it there); the writer starts empty again.
   */
  protected copyOut(arena?: BlockArena): Buffer {
    const n = this.pos;
    const out = arena ? arena.copy(this.buf, 0, n) : Buffer.from(this.buf.subarray(0, n));
    this.pos = 0;
    if (this.buf.length > KEEP_BYTES && n < this.buf.length >>> 2) {
      let size = INITIAL_BYTES;
      while (size < n) size *= 2;
      this.buf = Buffer.allocUnsafe(size);
    }
    return out;
  }

  /** The decimal digits of an integer in [0, 2^53); room already made (16 bytes). */
  protected digits(v: number): void {
    let count = 1;
    for (let t = v; t >= 10; t = Math.floor(t / 10)) count++;
    let p = this.pos + count;
    this.pos = p;
    const b = this.buf;
    do {
      const q = Math.floor(v / 10);
      b[--p] = 48 + (v - q * 10);
      v = q;
    } while (v > 0);
  }

  /**
   * A bigint in decimal: through a number when it is one exactly (no string), else its decimal string. Room
   * is made for it and for one byte after it (the caller's separator).
   */
  protected bigint(v: bigint): void {
    if (v <= MAX_SAFE_BIGINT && v >= MIN_SAFE_BIGINT) {
      this.room(18);
      let n = Number(v);
      if (n < 0) {
        this.buf[this.pos++] = 45; // '-'
        n = -n;
      }
      this.digits(n);
      return;
    }
    const s = v.toString();
    this.room(s.length + 1);
    this.pos += this.buf.write(s, this.pos, 'latin1');
  }

  /** 8 bytes little-endian of an integer in [-2^53, 2^53] (two's complement below zero); room already made. */
  protected exact(v: number): void {
    const b = this.buf;
    const p = this.pos;
    let lo: number;
    let hi: number;
    if (v >= 0) {
      lo = v % TWO_32;
      hi = (v - lo) / TWO_32;
    } else {
      const m = -v;
      const mlo = m % TWO_32;
      const mhi = (m - mlo) / TWO_32;
      lo = mlo === 0 ? 0 : TWO_32 - mlo;
      hi = mlo === 0 ? (TWO_32 - mhi) % TWO_32 : TWO_32 - 1 - mhi;
    }
    b[p] = lo & 0xff;
    b[p + 1] = (lo >>> 8) & 0xff;
    b[p + 2] = (lo >>> 16) & 0xff;
    b[p + 3] = lo >>> 24;
    b[p + 4] = hi & 0xff;
    b[p + 5] = (hi >>> 8) & 0xff;
    b[p + 6] = (hi >>> 16) & 0xff;
    b[p + 7] = hi >>> 24;
    this.pos = p + 8;
  }

  /**
   * A bigint as Int64, 8 bytes little-endian, exactly (through a number when it is one); room already made.
   * False, and nothing written, when it does not fit: the writer decides what that means.
   */
  protected int64(v: bigint): boolean {
    if (v <= MAX_SAFE_BIGINT && v >= MIN_SAFE_BIGINT) this.exact(Number(v));
    else if (v < MIN_INT64 || v > MAX_INT64) return false;
    else this.pos = this.buf.writeBigInt64LE(v, this.pos);
    return true;
  }
}
