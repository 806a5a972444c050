import type { ClickHouseSettings } from '@clickhouse/client';
import type { RatedCall } from '@tollgate/contracts';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';
import type { IntentRecord, Spool } from '../spool/spool.js';
import { insertSettings, type LandingFormat, type LandingInserter } from '../storage/clickhouse.js';
import { BlockArena } from './block-arena.js';
import { NATIVE_COLUMNS, NativeWriter, nativeBlockPieces } from './native.js';
import { TSV_COLUMNS, TsvWriter } from './tsv.js';

export const RAW_TABLE = 'mcp_tool_calls';

/** How long the lander waits with nothing queued before its arena gives back its spare chunks. */
const IDLE_TRIM_MS = 5_000;

/**
 * The settings of a landing insert: the block id as dedup token (insertSettings), and one parsing thread.
 * ClickHouse's parallel parsing starts a pool and cuts the input into segments for every insert; on blocks of a
 * few MiB that cost more CPU than it saved (about a quarter of the insert's CPU per row; bench/landing.mjs).
 */
export function landingSettings(blockId: string): ClickHouseSettings {
  return { ...insertSettings(blockId), input_format_parallel_parsing: 0 };
}

/** Encodes the rated calls of one record for the lander (TsvWriter or NativeWriter). */
export interface RowWriter {
  add(r: RatedCall): void;
  /** The record's bytes; the writer starts empty again. */
  take(): Buffer;
  /** Drops what was added since the last take. */
  clear(): void;
  /**
   * A record's bytes (from `take`) with the rows' decision written again, when the writer can do that for
   * less than encoding them again (NativeWriter); the earlier bytes stay the caller's.
   */
  retake?(bytes: Buffer, rows: readonly RatedCall[]): Buffer;
}

export interface LanderOptions {
  batchRows: number;
  flushIntervalMs: number;
  /** Prefix of block ids: unique per process lifetime (instance id + boot id). */
  blockPrefix: string;
}

interface Queued {
  /** The record's rows as one or more blocks of the writer's format (a large record is written in pieces). */
  bytes: readonly Buffer[];
  rows: number;
}

/**
 * Moves rated calls from memory to ClickHouse in large blocks, off the request path. Exactly-once by
 * ordering: intent (fsynced) → insert with insert_deduplication_token = block id → done marker. A block
 * whose outcome is unknown after a crash is re-sent with the same token and lands once.
 * While ClickHouse is unreachable the same block is retried with backoff; exports keep being accepted
 * into the spool until the backlog limit, then get 503.
 */
export class Lander {
  private readonly queue = new Map<string, Queued>();
  /** Where the writers of `createWriter` put the records' bytes; released once their block has landed. */
  private readonly arena = new BlockArena();
  /** When the last record was queued (monotonic ms): the arena gives back its spare chunks after a quiet spell. */
  private lastEnqueued = 0;
  private readonly forced: IntentRecord[] = [];
  private backlog = 0;
  private seq = 0;
  private running = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private lastErrorLog = Number.NEGATIVE_INFINITY;
  private landedTotal = 0;
  /** Set while a block is being retried after a ClickHouse error. */
  lastError: Error | undefined;
  /** The format of the bytes `enqueue` takes: the ClickHouse handle's, fixed for the lander's life. */
  readonly format: LandingFormat;

  constructor(
    private readonly clickhouse: LandingInserter,
    private readonly spool: Spool,
    private readonly opts: LanderOptions,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    this.format =
      clickhouse.landingFormat === 'Native' && clickhouse.insertNative ? 'Native' : 'TabSeparated';
  }

  /**
   * A writer of the bytes `enqueue` takes (one per caller: writers are not reentrant). Its bytes live in the
   * lander's arena: give them to `enqueue`, or to `discard` when they will not be.
   */
  createWriter(): RowWriter {
    return this.format === 'Native' ? new NativeWriter(this.arena) : new TsvWriter(this.arena);
  }

  /** Bytes of a `createWriter` writer that will not be enqueued (a record encoded again): their room is reused. */
  discard(bytes: Buffer): void {
    this.arena.release(bytes);
  }

  /** Spare chunks the lander's arena keeps for the next records (diagnostics and tests). */
  get spareChunks(): number {
    return this.arena.freeChunks;
  }

  get backlogRows(): number {
    return this.backlog;
  }

  get landedRows(): number {
    return this.landedTotal;
  }

  /**
   * Queues the rated rows of one spool record, as written by a {@link createWriter} writer: one block, or the
   * blocks of its rows in order (each `take`n on its own).
   */
  enqueue(rid: string, bytes: Buffer | readonly Buffer[], rows: number): void {
    this.queue.set(rid, { bytes: Buffer.isBuffer(bytes) ? [bytes] : bytes, rows });
    this.lastEnqueued = performance.now();
    this.backlog += rows;
    this.metrics.landingBacklog.set(this.backlog);
    if (this.backlog >= this.opts.batchRows || this.forced.length) this.wake?.();
  }

  /** Blocks found unfinished in the spool at start: sent first, exactly as they were, once their rows are queued. */
  resume(intents: readonly IntentRecord[]): void {
    this.forced.push(...intents);
  }

  /**
   * Replay of the spool is over: a resumed block whose records produced no rows this time (nothing left
   * to land for them) is sent with the rows that did come back, under its original token.
   */
  replayFinished(): void {
    for (let i = 0; i < this.forced.length; i++) {
      const it = this.forced[i] as IntentRecord;
      const present = it.rids.filter((rid) => this.queue.has(rid));
      if (present.length === it.rids.length) continue;
      this.log.warn(
        { block: it.bid, missing: it.rids.length - present.length },
        'resumed block lost records on replay',
      );
      if (present.length) this.forced[i] = { ...it, rids: present };
      else this.forced.splice(i--, 1);
    }
    this.wake?.();
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = undefined;
        resolve();
      };
    });
  }

  private nextBlock(drainAll: boolean): IntentRecord | undefined {
    const forced = this.forced[0];
    if (forced) {
      if (!forced.rids.every((rid) => this.queue.has(rid))) return undefined;
      this.forced.shift();
      return forced;
    }
    if (this.queue.size === 0) return undefined;
    if (!drainAll && this.backlog < this.opts.batchRows && !this.flushDue) return undefined;
    const rids: string[] = [];
    let rows = 0;
    for (const [rid, q] of this.queue) {
      if (rows > 0 && rows + q.rows > this.opts.batchRows) break;
      rids.push(rid);
      rows += q.rows;
    }
    return { t: 'i', bid: `${this.opts.blockPrefix}.${this.seq++}`, rids };
  }

  private flushDue = false;

  // Intervals and deadlines below are on the monotonic clock (performance.now()): on the wall clock, a step
  // back (NTP, a VM resumed, an operator's `date`) made the next flush wait for the size of the step, and a
  // step of more than 24.8 days made it retry every millisecond (Node clamps such a timer to 1 ms).

  private async run(): Promise<void> {
    let lastFlush = performance.now();
    while (this.running || this.queue.size > 0) {
      if (!this.running && this.stopDeadline && performance.now() > this.stopDeadline) break;
      this.flushDue = performance.now() - lastFlush >= this.opts.flushIntervalMs;
      const block = this.nextBlock(!this.running);
      if (!block) {
        if (!this.running && this.forced.length === 0 && this.queue.size === 0) break;
        // nothing queued for a while: an idle process does not keep a burst's chunks (under load, and between
        // one sender's exports, they are reused instead of allocated and faulted in again)
        if (this.queue.size === 0 && performance.now() - this.lastEnqueued > IDLE_TRIM_MS) this.arena.trim();
        if (!this.running && this.forced.length > 0) {
          // stopping with a resumed block whose rows never arrived: leave it to the next start
          break;
        }
        await this.sleep(Math.max(5, this.opts.flushIntervalMs - (performance.now() - lastFlush)));
        continue;
      }
      lastFlush = performance.now();
      await this.land(block);
    }
  }

  private async land(block: IntentRecord): Promise<void> {
    const parts: Buffer[] = [];
    let rows = 0;
    for (const rid of block.rids) {
      const q = this.queue.get(rid) as Queued;
      parts.push(...q.bytes);
      rows += q.rows;
    }
    const spoolWriteFailed = (what: string) =>
      `spool write of a landing ${what} failed; retrying (calls stay in the spool)`;
    const intent = () => this.spool.appendIntent(block);
    if (!(await this.retried(block, intent, 'error', spoolWriteFailed('intent')))) return;
    // Native: the block as views of the records' bytes, written to the insert's file in one writev
    const body = this.format === 'Native' ? nativeBlockPieces(parts) : Buffer.concat(parts);
    const inserted = await this.retried(
      block,
      async () => {
        const started = performance.now();
        if (rows > 0) {
          if (!Buffer.isBuffer(body))
            await this.clickhouse.insertNative?.(RAW_TABLE, NATIVE_COLUMNS, body, landingSettings(block.bid));
          else await this.clickhouse.insertTsv(RAW_TABLE, TSV_COLUMNS, body, landingSettings(block.bid));
        }
        this.metrics.landingInsertSeconds.observe((performance.now() - started) / 1000);
      },
      'warn',
      'ClickHouse insert failed; retrying (calls stay in the spool)',
      (err) => {
        this.lastError = err;
      },
    );
    if (!inserted) return;
    if (this.lastError) this.log.info({ block: block.bid }, 'ClickHouse reachable again; landing resumed');
    this.lastError = undefined;
    // the block is in ClickHouse: without its done marker a later start sends it again, under its token
    const done = () => this.spool.appendDone(block.bid, block.rids);
    if (!(await this.retried(block, done, 'error', spoolWriteFailed('done marker')))) return;
    for (const rid of block.rids) {
      // the block's records are read by no one now (their insert is over): their room in the arena is reused
      const q = this.queue.get(rid);
      this.queue.delete(rid);
      if (q) for (const b of q.bytes) this.arena.release(b);
    }
    this.backlog -= rows;
    this.landedTotal += rows;
    this.metrics.landingBacklog.set(this.backlog);
    this.metrics.landedRows.inc(rows);
  }

  private stopDeadline: number | undefined;

  /**
   * `attempt` until it succeeds, again after 100 ms doubling to 5 s: a block's ClickHouse insert, or its intent or
   * done marker in the spool (a full disk rejected those, and with them the landing loop: the process died at
   * every start while the disk stayed full). A failure is counted and logged at most every 10 s. False when the
   * lander is stopping past its deadline (the spool keeps what is not marked; the next start lands it).
   */
  private async retried(
    block: IntentRecord,
    attempt: () => Promise<void>,
    level: 'warn' | 'error',
    message: string,
    onError?: (err: Error) => void,
  ): Promise<boolean> {
    let delay = 100;
    for (;;) {
      try {
        await attempt();
        return true;
      } catch (err) {
        onError?.(err as Error);
        this.metrics.landingErrors.inc();
        if (performance.now() - this.lastErrorLog > 10_000) {
          this.lastErrorLog = performance.now();
          this.log[level](
            { err: (err as Error).message, block: block.bid, backlogRows: this.backlog },
            message,
          );
        }
        if (!this.running && this.stopDeadline && performance.now() > this.stopDeadline) return false;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5_000);
      }
    }
  }

  /** Lands everything queued (up to the deadline), then stops. What is left stays in the spool. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopDeadline = performance.now() + timeoutMs;
    this.running = false;
    this.wake?.();
    const timer = new Promise<void>((r) => setTimeout(r, timeoutMs).unref());
    await Promise.race([this.loop, timer]);
  }

  /** Resolves when nothing is queued (tests and the demo use it to wait for landing). */
  async idle(timeoutMs = 60_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.backlog > 0 || this.queue.size > 0) {
      if (performance.now() > deadline)
        throw new Error(`landing backlog still ${this.backlog} rows after ${timeoutMs} ms`);
      this.wake?.();
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
