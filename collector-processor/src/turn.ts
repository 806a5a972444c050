/**
 * How long one piece of an export's synchronous work (decoding, selecting the calls) may hold the main thread
 * before it lets the event loop run: every other tenant's exports, Redis's replies and the API wait while it
 * runs. A 512-span export is read in about 2 ms, under one slice; 58 KB of gzip that inflated to 30 million
 * empty groups held the thread for 27 s, a 58 MB export of tiny attributes for 4 s.
 */
export const TURN_SLICE_MS = 8;

/** Work (about the bytes read) between two looks at the clock: 0.1–1 ms of decoding. */
export const CHECK_WORK = 64 * 1024;
/** What a span (decoded from JSON, or selected) or a group counts as: a look at the clock per 256 of them. */
export const SPAN_WORK = 256;
/** What a call prepared or rated counts as: a look at the clock per 1,024 of them. */
export const CALL_WORK = 64;

/**
 * The time budget of one turn of the event loop, shared by the steps of one export's reading. Work reports
 * what it did with `due(work)`, which looks at the clock once per CHECK_WORK of it; when the slice is spent,
 * the work awaits `next()`, which resumes it in a later turn, after the I/O that came in meanwhile (setImmediate
 * runs after the poll phase).
 */
export class Turn {
  private start = performance.now();
  private work = 0;

  constructor(private readonly sliceMs = TURN_SLICE_MS) {}

  /** Counts `work` done; once CHECK_WORK of it is, whether the slice is spent (then `await next()`). */
  due(work: number): boolean {
    this.work += work;
    if (this.work < CHECK_WORK) return false;
    this.work = 0;
    return this.spent();
  }

  /** Whether this turn has used its slice: the caller should `await next()` before going on. */
  spent(): boolean {
    return performance.now() - this.start >= this.sliceMs;
  }

  /** Resumes in a later turn of the event loop, with a fresh slice. */
  async next(): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.start = performance.now();
  }
}
