import type { IncomingMessage } from 'node:http';
import { errorCodes, type FastifyRequest } from 'fastify';
import { BlockArena } from '../landing/block-arena.js';

/** A reader with nothing read for this long gives its spare chunks back (see `trimIfIdle`). */
const IDLE_TRIM_MS = 5000;

/**
 * Reads request bodies into reused memory: each body is copied, as it arrives, into a {@link BlockArena} block
 * of its declared length, and the handler gives the block back ({@link release}) once nothing reads it any
 * more: the body decoded, its spool record written, the forwarder's copy taken.
 *
 * Why: fastify's own reader (`parseAs: 'buffer'`) joins each body into a new Buffer (≈ 220 KB for 512 spans).
 * An export holds its body through its spool write and two Redis scripts, 10–100 ms at saturation, so most
 * bodies outlive the young generation and wait for a full collection to be freed, which V8 starts for external
 * memory only after 64 MiB of growth: request bodies were the largest stream of Buffers in the process
 * (docs/benchmarks.md, "Request bodies in reused memory").
 *
 * What it keeps from fastify's reader (`rawBody` in fastify 5's lib/content-type-parser.js): a declared
 * length over the limit is refused before anything is read, and so is a body that grows past it while
 * read (`FST_ERR_CTP_BODY_TOO_LARGE`); a body whose length differs from its declared one is refused
 * (`FST_ERR_CTP_INVALID_CONTENT_LENGTH`); a stream error (the client gone mid-upload) answers 400 unless it
 * carries its own status. A body with no declared length (chunked) is gathered, then copied into one block.
 *
 * A block that is never released (an export that failed after its record was made: the replay reads the
 * payload) only keeps its chunk out of reuse until the garbage collector frees it; see BlockArena.
 */
export class BodyReader {
  private readonly arena = new BlockArena();
  private readAny = false;
  private readonly trimTimer: NodeJS.Timeout;

  constructor(private readonly limit: number) {
    this.trimTimer = setInterval(() => this.trimIfIdle(), IDLE_TRIM_MS);
    this.trimTimer.unref();
  }

  /** A fastify content-type parser (the function form: it reads the request stream itself). */
  readonly parse = (
    req: FastifyRequest,
    payload: IncomingMessage,
    done: (err: Error | null, body?: Buffer) => void,
  ): void => {
    const declared = Number(req.headers['content-length']);
    if (declared > this.limit) {
      done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
      return;
    }
    this.readAny = true;
    const sized = !Number.isNaN(declared);
    const block = sized ? this.arena.alloc(declared) : undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    const stop = () => {
      payload.removeListener('data', onData);
      payload.removeListener('end', onEnd);
      payload.removeListener('error', onEnd);
    };
    const fail = (err: Error) => {
      stop();
      if (block) this.arena.release(block);
      done(err);
    };
    const onData = (chunk: Buffer | string) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const at = received;
      received += bytes.length;
      if (received > this.limit) {
        fail(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
        return;
      }
      if (block === undefined) chunks.push(bytes);
      // past the declared length nothing is copied: the end refuses the body
      else if (received <= block.length) bytes.copy(block, at);
    };
    const onEnd = (err?: Error & { statusCode?: number }) => {
      if (err != null) {
        if (!(typeof err.statusCode === 'number' && err.statusCode >= 400)) err.statusCode = 400;
        fail(err);
        return;
      }
      if (sized && received !== declared) {
        fail(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
        return;
      }
      stop();
      if (block) {
        done(null, block);
        return;
      }
      const body = this.arena.alloc(received);
      let at = 0;
      for (const c of chunks) at += c.copy(body, at);
      done(null, body);
    };
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.on('error', onEnd);
    payload.resume();
  };

  /**
   * Nothing reads `body` any more (a body from {@link parse}; anything else, or a second release, is ignored):
   * its bytes may be written over by the next request's.
   */
  release(body: unknown): void {
    if (Buffer.isBuffer(body)) this.arena.release(body);
  }

  /** Gives `body` back once `written` has settled (a spool write that reads it); now when there is none. */
  releaseAfter(body: unknown, written: Promise<unknown> | undefined): void {
    if (written === undefined) this.release(body);
    else {
      const release = () => this.release(body);
      written.then(release, release);
    }
  }

  /** Spare chunks held for the next bodies (tests). */
  get spareChunks(): number {
    return this.arena.freeChunks;
  }

  /** Called every IDLE_TRIM_MS: with no body read since the last call, all spare chunks but one go. */
  trimIfIdle(): void {
    if (!this.readAny) this.arena.trim();
    this.readAny = false;
  }

  close(): void {
    clearInterval(this.trimTimer);
  }
}
