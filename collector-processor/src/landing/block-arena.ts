/** Bytes of one chunk: room for about ten 512-call records of the e2e load (≈ 180 KB each in Native). */
const CHUNK_BYTES = 2 << 20;
/** A block larger than this gets a buffer of its own (not reused), so a chunk never holds one block alone. */
const OWN_BUFFER_BYTES = CHUNK_BYTES >>> 2;
/** Free chunks kept for reuse under load; chunks freed beyond it are left to the garbage collector. */
const KEEP_FREE = 8;
/** Free chunks kept once nothing waits (`trim`): an idle process does not hold a burst's chunks. */
const KEEP_IDLE = 1;

interface Chunk {
  readonly bytes: Buffer;
  /** Bytes handed out so far. */
  used: number;
  /** Blocks handed out of it and not yet released. */
  live: number;
}

/**
 * Where the lander's blocks wait for their insert, in chunks that are used again once every block copied into
 * them is released, instead of one new Buffer per record.
 *
 * Why: a record's block lives from its encoding until its landing block is inserted, 0.5–1 s at saturation, so
 * it outlives the young generation and its bytes are freed only by a full collection. V8 starts one when the
 * external memory has grown by 64 MiB since the last, so about that much of landed blocks (≈ 28 MB/s at 80k
 * calls/s) was always waiting to be freed, and it counted in the process's peak RSS (docs/benchmarks.md,
 * "The landing's buffers").
 *
 * Safety: a chunk is written again only when every block copied into it has been released, and a block is
 * released at most once (the arena forgets it then). A block that is dropped without being released (an export
 * that failed after encoding) keeps its chunk out of reuse; the garbage collector frees that chunk once nothing
 * refers to it.
 */
export class BlockArena {
  private current: Chunk | undefined;
  private readonly free: Chunk[] = [];
  /** The chunk each block handed out (and not yet released) was copied into. */
  private readonly owner = new WeakMap<Buffer, Chunk>();

  /** A copy of `src[start, end)` that stays valid until it is {@link release}d. */
  copy(src: Buffer, start: number, end: number): Buffer {
    const out = this.alloc(end - start);
    src.copy(out, 0, start, end);
    return out;
  }

  /** Room for a block of `n` bytes, for the caller to fill, valid until it is {@link release}d. */
  alloc(n: number): Buffer {
    if (n > OWN_BUFFER_BYTES || n === 0) return Buffer.allocUnsafe(n);
    let c = this.current;
    if (c === undefined || c.used + n > CHUNK_BYTES) {
      if (c !== undefined) this.retire(c);
      c = this.free.pop() ?? { bytes: Buffer.allocUnsafe(CHUNK_BYTES), used: 0, live: 0 };
      c.used = 0;
      this.current = c;
    }
    const out = c.bytes.subarray(c.used, c.used + n);
    c.used += n;
    c.live++;
    this.owner.set(out, c);
    return out;
  }

  /** The block is no longer read by anyone: its bytes may be written over. A second release does nothing. */
  release(block: Buffer): void {
    const c = this.owner.get(block);
    if (c === undefined) return;
    this.owner.delete(block);
    c.live--;
    if (c.live === 0 && c !== this.current) this.retire(c);
  }

  /** Nothing waits for an insert: free chunks beyond one are left to the garbage collector. */
  trim(): void {
    if (this.free.length > KEEP_IDLE) this.free.length = KEEP_IDLE;
  }

  /** Chunks ready for reuse (tests). */
  get freeChunks(): number {
    return this.free.length;
  }

  /** A chunk that takes no more blocks: back to the free list once nothing in it is live. */
  private retire(c: Chunk): void {
    if (c === this.current) this.current = undefined;
    if (c.live === 0 && this.free.length < KEEP_FREE) this.free.push(c);
  }
}
