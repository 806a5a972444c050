/**
 * How long one piece of an export's synchronous work (decoding, selecting the calls) may hold the main thread
 * before it lets the event loop run: every other tenant's exports, Redis's replies and the API wait while it
 * runs. A 512-span export is read in about 2 ms, under one slice; 58 KB of gzip that inflated to 30 million
 * empty groups held the thread for 27 s, a 58 MB export of tiny attributes for 4 s.
 */
export const TURN_SLICE_MS = 8;

/**
 * The time budget of one turn of the event loop, shared by the steps of one export's reading. Work checks
 * `spent()` every so often (cheaply: a clock read), and when it is, awaits `next()`, which resumes it in a
 * later turn, after the I/O that came in meanwhile (setImmediate runs after the poll phase).
 */
export class Turn {
  private start = performance.now();

  constructor(private readonly sliceMs = TURN_SLICE_MS) {}

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
