import type { Directive, RatedCall, ToolCall } from '@tollgate/contracts';
import type { Cluster, Redis } from 'ioredis';
import type { Logger } from 'pino';
import { addCount } from '../counts.js';
import { dayOf } from '../enforcement/periods.js';
import type { Lander, RowWriter } from '../landing/lander.js';
import {
  CLAIM_STATUS,
  type ClaimInput,
  type ClaimResult,
  claimCalls,
  scriptLimiter,
  type TieredQuantity,
} from '../meter/claim.js';
import type { Metrics } from '../metrics.js';
import { DecodeError } from '../otlp/decoded.js';
import { type CompiledPlan, type PlanBook, toolRateOf } from '../plans/load.js';
import type { ToolRate } from '../plans/schema.js';
import type { PlanStore } from '../plans/store.js';
import { amountInRange, countsTowardUsage, type Rating, rateCall } from '../rating/rate.js';
import { readUsage, type UsageQuantity } from '../rating/usage.js';
import { type OwedItem, OwedQueue } from '../redis/owed.js';
import type { OwedEntry, OwedLog } from '../redis/owed-log.js';
import type { AcceptedRecord, PayloadFormat, Spool } from '../spool/spool.js';
import { CALL_WORK, Turn } from '../turn.js';
import { TollgateError } from './errors.js';
import { decodeOtlp, extractOptions, type SelectionWindow, selectCalls } from './select.js';
import { RejectionTally } from './tally.js';

export { RejectionTally };

export interface AcceptResult {
  accepted: number;
  duplicates: number;
  directives: Directive[];
  /** The newly rated calls (their price and decision are stamped on forwarded spans). */
  rated: readonly RatedCall[];
}

/** Hook for real-time enforcement (limits, margin guard); it sees every newly rated call of an export. */
export interface Enforcer {
  /**
   * Counts the calls against limits and the margin guard (as of `nowMs`, default now); may mark rows
   * `over_limit`; returns directives.
   */
  apply(product: string, rid: string, rated: readonly RatedCall[], nowMs?: number): Promise<Directive[]>;
  /** Directives for an export without calls (an idle SDK's heartbeat), by the sending instances. */
  heartbeat(product: string, instanceIds: readonly string[]): Promise<Directive[]>;
  /** Every state in force for one customer, as directives (nothing is counted). */
  statesOf?(product: string, customer: string): Promise<Directive[]>;
  /** Applies the steps `apply` could not (Redis failed them); rejects while Redis is still failing. */
  settle?(): Promise<void>;
}

export type RedisLike = Redis | Cluster;

export interface PipelineOptions extends SelectionWindow {
  failMode: 'open' | 'closed';
  maxBacklogRows: number;
  instanceId: string;
}

/** What one request hands to the pipeline: the calls selected from it and the payload they came from. */
export interface AcceptInput {
  product: string;
  defaultCustomer: string | undefined;
  /** The one customer the ingest key is bound to (its calls naming another are rejected `customer_not_allowed`). */
  customer?: string | undefined;
  receivedAtMs: number;
  calls: readonly ToolCall[];
  rejected: RejectionTally;
  /** The plans the calls were extracted under (Pipeline.currentBook); the current ones when absent. */
  book?: PlanBook;
  /** The decoded request body (OTLP) that the spool keeps; absent for usage events (their calls are kept). */
  payload?: { format: Exclude<PayloadFormat, 'calls-json'>; bytes: Buffer };
  /** This export's record, already being written (`beginRecord`): accept waits for it instead of writing one. */
  early?: EarlyRecord;
}

/**
 * An export's spool record whose write started when its body arrived, before decoding: the write (on
 * libuv's pool, O_DSYNC) and the decoding (on the main thread) overlap. Whoever holds it hands it to
 * `accept`, or to `dropRecord` when the export is refused before that.
 */
export interface EarlyRecord {
  readonly record: AcceptedRecord;
  readonly durable: Promise<void>;
}

interface Prepared {
  call: ToolCall;
  plan: CompiledPlan;
  rate: ToolRate;
  period: string;
  day: string;
  counts: boolean;
  /** The plan's usage lines the call reported, checked. */
  usage: UsageQuantity[];
  /** Those of them the tool prices in graduated tiers (Redis counts their units). */
  tiered: TieredQuantity[] | undefined;
}

/**
 * One customer's calls of one export rated fail-open (Redis unreachable): billed and landed `unenforced`, and
 * owed to Redis — claimed there under the record's token once it answers, then applied to enforcement with
 * the decisions and leases they were rated with, as of when they were rated. Owed as soon as their claim
 * failed, before they are rated: a later claim of the customer waits for them, so its positions follow theirs.
 */
interface OwedCalls extends OwedItem {
  product: string;
  customer: string;
  rid: string;
  /** The calls the export rated (not those it found duplicates of calls seen before). */
  inputs: ClaimInput[];
  /** Their rated rows, once rated (rejected: the export failed, and its record's replay counts them). */
  rows: Promise<RatedCall[]>;
  nowMs: number;
}

/**
 * How long a replayed spool record waits for Redis before it is rated fail-open: nobody waits for its answer,
 * and rated with Redis it gets exact positions (a process that restarted knows no local ones). Not a record of
 * a block the lander resumes: every later block waits for those.
 */
const REPLAY_REDIS_WAIT_MS = 5 * 60_000;

/** A spool record whose reading killed the process at too many starts (see ReplayGuard). */
class SetAside extends Error {}

/** Tries of a spool record's replay that fails with anything but Redis being down (fail-closed). */
const REPLAY_ATTEMPTS = 3;
/**
 * Rows of one landing block written at a time: a record of more is written as several blocks, between which
 * the event loop runs (120,000 rows in one go held the main thread for 0.8 s). The lander joins them again.
 */
const LAND_CHUNK_ROWS = 8_192;

/** A customer's usage positions in a period as last seen (tiered usage lines keyed `line:tool`, micro-units). */
interface LocalUsage {
  n: number;
  tools: Map<string, number>;
  units: Map<string, bigint>;
}

/** One export's newly counted calls, as RecentIds keeps them. */
export interface RecentBatch {
  product: string;
  ids: readonly string[];
  /** Their customers: one for all (the usual export), or one per id. */
  customers: string | readonly string[];
  /** Their UTC days (`utcDay`): one for all, or one per id. */
  days: number | Int32Array;
}

const US_PER_DAY = 86_400_000_000;
/** The UTC day of a call's start, in days since the epoch: Redis deduplicates a customer's calls per day. */
export const utcDay = (startUnixUs: number): number => Math.floor(startUnixUs / US_PER_DAY);

/** A call's identity in the process's dedup: product, customer, UTC day and event id, as Redis's. */
const callKey = (product: string, customer: string, day: number, id: string) =>
  `${product}\0${customer}\0${day}\0${id}`;

/**
 * Calls seen recently by this process (at least the newest `capacity`): the dedup of last resort while Redis
 * is unreachable. A call is its product, customer, UTC day and event id, as Redis deduplicates it (a set per
 * customer and day): two customers' usage events with one id, or one customer's on two days, are two calls here
 * as there. Kept per export as the arrays they came in, so the path with Redis up costs a few arrays per export
 * and no per-call hashing; the first lookup (Redis down) indexes them, and the index is kept up to date until
 * `dropIndex` (Redis back). Exports leave whole, oldest first, once the newer ones alone hold `capacity` ids.
 * Calls taken fail-open and not yet rated are held apart (`take`), so that an export of the same calls that
 * looks meanwhile finds them.
 */
export class RecentIds {
  private readonly batches: RecentBatch[] = [];
  private head = 0;
  private total = 0;
  /** `callKey` → occurrences among the kept batches; only while lookups are being made. */
  private index: Map<string, number> | undefined;
  /** `callKey` → occurrences among the calls taken fail-open and not yet added. */
  private readonly taken = new Map<string, number>();
  /** `callKey` → occurrences among the calls of spool records being replayed (`hold`). */
  private readonly held = new Map<string, number>();
  /** A replayed record's id → the keys it holds. */
  private readonly holds = new Map<string, string[]>();
  constructor(private readonly capacity: number) {}

  has(product: string, customer: string, day: number, id: string): boolean {
    if (!this.index) {
      this.index = new Map();
      for (let b = this.head; b < this.batches.length; b++) this.count(this.batches[b] as RecentBatch, 1);
    }
    const key = callKey(product, customer, day, id);
    return this.index.has(key) || this.taken.has(key) || this.held.has(key);
  }

  /**
   * The calls of a spool record that a replay will count (`rid`), held until `unhold(rid)`: a sender's retry of
   * its export that arrives fail-open meanwhile finds them, instead of billing them beside the replay.
   */
  hold(
    rid: string,
    product: string,
    calls: readonly { eventId: string; customer: string; startUnixUs: number }[],
  ): void {
    if (this.holds.has(rid) || calls.length === 0) return;
    const keys = calls.map((c) => callKey(product, c.customer, utcDay(c.startUnixUs), c.eventId));
    for (const key of keys) addCount(this.held, key, 1);
    this.holds.set(rid, keys);
  }

  /** The record counts its calls itself now (or gave up): its hold goes. */
  unhold(rid: string): void {
    const keys = this.holds.get(rid);
    if (!keys) return;
    this.holds.delete(rid);
    for (const key of keys) addCount(this.held, key, -1);
  }

  /** Calls held for replayed records (for tests). */
  get heldCalls(): number {
    return this.held.size;
  }

  /**
   * Holds a call counted fail-open until its export adds what it rated (or fails): an export of the same call
   * that looks meanwhile finds it. Returns what `release` takes.
   */
  take(product: string, customer: string, day: number, id: string): string {
    const key = callKey(product, customer, day, id);
    addCount(this.taken, key, 1);
    return key;
  }

  /** The calls `take` held, once their export has added what it rated or failed. */
  release(keys: readonly string[]): void {
    for (const key of keys) addCount(this.taken, key, -1);
  }

  /** One export's newly counted calls (of `product`). */
  addAll(
    product: string,
    calls: readonly { eventId: string; customer: string; startUnixUs: number }[],
  ): void {
    if (calls.length === 0) return;
    const ids = new Array<string>(calls.length);
    const c0 = calls[0] as { customer: string; startUnixUs: number };
    const firstCustomer = c0.customer;
    const firstDay = utcDay(c0.startUnixUs);
    let customers: string | string[] = firstCustomer;
    let days: number | Int32Array = firstDay;
    for (let i = 0; i < calls.length; i++) {
      const c = calls[i] as { eventId: string; customer: string; startUnixUs: number };
      ids[i] = c.eventId;
      if (typeof customers !== 'string') customers[i] = c.customer;
      else if (c.customer !== firstCustomer) {
        customers = new Array<string>(calls.length).fill(firstCustomer, 0, i);
        customers[i] = c.customer;
      }
      const day = utcDay(c.startUnixUs);
      if (typeof days !== 'number') days[i] = day;
      else if (day !== firstDay) {
        days = new Int32Array(calls.length).fill(firstDay, 0, i);
        days[i] = day;
      }
    }
    const batch: RecentBatch = { product, ids, customers, days };
    this.batches.push(batch);
    this.total += ids.length;
    if (this.index) this.count(batch, 1);
    for (;;) {
      const oldest = this.batches[this.head] as RecentBatch;
      if (this.total - oldest.ids.length < this.capacity) break;
      this.total -= oldest.ids.length;
      if (this.index) this.count(oldest, -1);
      this.batches[this.head++] = EMPTY_BATCH;
    }
    if (this.head > 1024 && this.head * 2 > this.batches.length) {
      this.batches.splice(0, this.head);
      this.head = 0;
    }
  }

  /**
   * Calls counted before this process (the previous run's, read back from storage): kept as older than every
   * call this process adds, so they are the first to leave.
   */
  seed(batches: readonly RecentBatch[]): void {
    const n = batches.reduce((t, b) => t + b.ids.length, 0);
    if (n === 0) return;
    this.batches.splice(this.head, 0, ...batches);
    this.total += n;
    if (this.index) for (const b of batches) this.count(b, 1);
  }

  /** Redis is back: lookups stop, so does the index. */
  dropIndex(): void {
    this.index = undefined;
  }

  private count(batch: RecentBatch, d: 1 | -1): void {
    const index = this.index as Map<string, number>;
    const { product, ids, customers, days } = batch;
    for (let i = 0; i < ids.length; i++) {
      const customer = typeof customers === 'string' ? customers : (customers[i] as string);
      const day = typeof days === 'number' ? days : (days[i] as number);
      addCount(index, callKey(product, customer, day, ids[i] as string), d);
    }
  }
}

const EMPTY_BATCH: RecentBatch = { product: '', ids: [], customers: '', days: 0 };
/** Calls the process's own dedup keeps (the newest; used while Redis is unreachable). */
const RECENT_IDS = 100_000;
/** The most the first fail-open lookup waits for storage to give back the previous run's calls. */
const RECENT_SEED_TIMEOUT_MS = 10_000;

const DAY_SECONDS = 86_400;
/** The usage columns of a call without usage lines: shared, frozen (nothing may add to them). */
const NO_NAMES = Object.freeze([]) as unknown as string[];
const NO_AMOUNTS = Object.freeze([]) as unknown as bigint[];

/**
 * The rated row of a call: what lands in ClickHouse and what enforcement judges (`decision` may still become
 * `over_limit` there). Usage-line arrays are shared frozen empties for a call without usage lines.
 */
export function ratedRow(
  product: string,
  c: ToolCall,
  plan: CompiledPlan,
  period: string,
  rating: Rating,
  decision: RatedCall['decision'],
  receivedAtMs: number,
): RatedCall {
  const noUsage = rating.usage.length === 0;
  return {
    eventId: c.eventId,
    traceId: c.traceId,
    spanId: c.spanId,
    product,
    customer: c.customer,
    agent: c.agent,
    sessionId: c.sessionId,
    tool: c.tool,
    transport: c.transport,
    source: c.source,
    status: c.ok ? 'ok' : 'error',
    errorType: c.errorType,
    protocolVersion: c.protocolVersion,
    instanceId: c.instanceId,
    startUnixUs: c.startUnixUs,
    durationUs: c.durationUs,
    inputTokens: c.inputTokens,
    outputTokens: c.outputTokens,
    priceNano: rating.priceNano,
    costNano: rating.costNano,
    priceCallNano: rating.priceCallNano,
    priceInputNano: rating.priceInputNano,
    priceOutputNano: rating.priceOutputNano,
    priceDurationNano: rating.priceDurationNano,
    tier: rating.tier,
    planId: plan.planId,
    planVersion: plan.version,
    currency: plan.currency,
    decision,
    period,
    receivedAtMs,
    sessionRule: c.sessionRule,
    pricePerSecondNano: rating.pricePerSecondNano,
    inputTokensPriced: rating.inputTokensPriced,
    outputTokensPriced: rating.outputTokensPriced,
    usageLines: noUsage ? NO_NAMES : rating.usage.map((u) => u.line),
    usageQuantityMicro: noUsage ? NO_AMOUNTS : rating.usage.map((u) => u.quantityMicro),
    usageUnitNano: noUsage ? NO_AMOUNTS : rating.usage.map((u) => u.unitNano),
    usagePriceNano: noUsage ? NO_AMOUNTS : rating.usage.map((u) => u.priceNano),
    usageCostNano: noUsage ? NO_AMOUNTS : rating.usage.map((u) => u.costNano),
  };
}

/** The call's usage quantities its tool prices in graduated tiers (their positions are counted in Redis). */
function tieredOf(quantities: readonly UsageQuantity[], rate: ToolRate): TieredQuantity[] | undefined {
  const out: TieredQuantity[] = [];
  quantities.forEach((q, index) => {
    if (rate.price.usageTiers?.[q.line.name])
      out.push({ index, line: q.line.name, micro: q.micro, integral: q.line.integral });
  });
  return out.length ? out : undefined;
}

/**
 * The billing pipeline of one export: prepare (plan, tool rate) → spool (durable) → claim in Redis
 * (dedup + usage positions) → rate (pure) → enforce → queue for ClickHouse → answer.
 */
export class Pipeline {
  private seq = 0;
  private readonly bootId = Date.now().toString(36);
  private readonly recent = new RecentIds(RECENT_IDS);
  /**
   * Reads the calls landed lately (at most `RECENT_IDS`, by product), for the dedup of last resort: a process
   * started during a Redis outage would otherwise know none of the calls its previous run counted, and bill a
   * retry of them again. Read once, at the first fail-open dedup lookup; unset: nothing is read.
   */
  recentSeed: ((max: number) => Promise<RecentBatch[]>) | undefined;
  private seeding: Promise<void> | undefined;
  /** The landing bytes of one record's rows, written synchronously below (the lander's format). */
  private readonly out: RowWriter;
  /** Last usage positions seen per customer and period, continued locally while Redis is unreachable. */
  private readonly localUsage = new Map<string, LocalUsage>();
  private redisDownSince: number | undefined;
  /** Calls rated fail-open, oldest first, to be claimed and enforced before any later call is claimed. */
  private readonly owed: OwedQueue<OwedCalls> | undefined;
  /** Where owed calls are written down for the next start (unset: not written). */
  owedLog: OwedLog | undefined;
  enforcer: Enforcer | undefined;
  /** tollgate_export_stage_seconds, one child per stage (looked up once, observed once per export). */
  private readonly stage: Record<
    'spool' | 'claim' | 'rate' | 'enforce' | 'land',
    { observe(s: number): void }
  >;

  constructor(
    private readonly spool: Spool,
    private readonly lander: Lander,
    private readonly redis: RedisLike | undefined,
    private readonly plans: PlanStore,
    private readonly opts: PipelineOptions,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    this.out = lander.createWriter();
    // no Redis at all: nothing to count fail-open calls in later
    if (redis)
      this.owed = new OwedQueue<OwedCalls>(
        'claim',
        metrics,
        log,
        (o) => this.settleOwed(redis, o),
        (o) => ({ rid: o.rid, customer: o.customer }),
        (o) => {
          if (o.logId) this.owedLog?.done(o.logId);
        },
      );
    const h = metrics.exportStageSeconds;
    this.stage = {
      spool: h.labels('spool'),
      claim: h.labels('claim'),
      rate: h.labels('rate'),
      enforce: h.labels('enforce'),
      land: h.labels('land'),
    };
  }

  /**
   * The plans in force, for a request to extract its calls with (their usage-line attributes) and then to
   * hand to `accept` as `book`, so a reload in between cannot rate calls under plans they were not
   * extracted for (the spool record names this book's version; a replay extracts under the same one).
   */
  get currentBook(): PlanBook {
    return this.plans.current;
  }

  get redisAvailable(): boolean {
    return this.redis !== undefined && this.redisDownSince === undefined;
  }

  /**
   * Starts writing an export's record before its body is decoded (see EarlyRecord); undefined when the
   * landing backlog is full (accept refuses the export then, and nothing is written).
   */
  beginRecord(
    input: Pick<AcceptInput, 'product' | 'defaultCustomer' | 'customer' | 'receivedAtMs'> & {
      book: PlanBook;
      payload: NonNullable<AcceptInput['payload']>;
    },
  ): EarlyRecord | undefined {
    if (this.backlogFull) return undefined;
    const record = this.newRecord(input.book, input, input.payload.format, input.payload.bytes);
    record.early = true;
    const durable = this.spool.appendAccepted(record);
    durable.catch(() => {}); // awaited by accept, or dropped
    return { record, durable };
  }

  /**
   * Gives up an early record of an export that is refused or holds nothing to bill: an abandon marker
   * follows the record (once it is written; a failed write left nothing to mark). If the process stops
   * first, the replay drops the record itself (see AcceptedRecord.early).
   */
  dropRecord(early: EarlyRecord): void {
    early.durable.then(
      () => this.abandonRecord(early.record.rid),
      () => {},
    );
  }

  /** Writes a record's abandon marker without waiting for it; a failed write leaves the record to the replay. */
  private abandonRecord(rid: string): void {
    this.spool.abandon(rid).catch((err: Error) => {
      this.log.warn({ rid, err: err.message }, 'spool abandon marker not written');
    });
  }

  /** Accepting more would grow the landing backlog past `maxBacklogRows`. */
  private get backlogFull(): boolean {
    return this.lander.backlogRows >= this.opts.maxBacklogRows;
  }

  /** A new spool record (its own id) of an export's payload, extracted under `book`. */
  private newRecord(
    book: PlanBook,
    input: Pick<AcceptInput, 'product' | 'defaultCustomer' | 'customer' | 'receivedAtMs'>,
    format: PayloadFormat,
    payload: Buffer,
  ): AcceptedRecord {
    return {
      t: 'a',
      rid: this.nextRid(),
      product: input.product,
      planVersion: book.version,
      receivedAtMs: input.receivedAtMs,
      defaultCustomer: input.defaultCustomer,
      customer: input.customer,
      format,
      payload,
    };
  }

  private nextRid(): string {
    return `${this.opts.instanceId}.${this.bootId}.${this.seq++}`;
  }

  /**
   * Resolves plan and tool rate for each call; calls without either are rejected. Many calls are prepared over
   * several turns of the event loop.
   */
  private async prepare(
    book: PlanBook,
    product: string,
    calls: readonly ToolCall[],
    rejected: RejectionTally,
    /** The ingest key's bound customer: a call naming another is rejected. */
    bound: string | undefined,
  ): Promise<{ prepared: Prepared[]; inBatchDuplicates: number }> {
    const turn = new Turn();
    const out: Prepared[] = [];
    // a call is its customer, UTC day and event id, as Redis deduplicates it: the first occurrence of each id,
    // and `customer\0day\0id` of ids that came again under another customer or day (two customers' usage events
    // with one id; one customer's on two days)
    const seen = new Map<string, ToolCall>();
    let seenUnder: Set<string> | undefined;
    let inBatchDuplicates = 0;
    // the calls of an export share a day almost always: its period is cut once, not once per call; and a
    // customer's plan is looked up once per run of its calls (the lookup builds a key string)
    let lastDay = '';
    let lastPeriod = '';
    let lastCustomer: string | undefined;
    let lastPlan: CompiledPlan | undefined;
    for (let i = 0; i < calls.length; i++) {
      if (turn.due(CALL_WORK)) await turn.next();
      const call = calls[i] as ToolCall;
      const first = seen.get(call.eventId);
      if (first === undefined) seen.set(call.eventId, call);
      else {
        const day = utcDay(call.startUnixUs);
        const under = `${call.customer}\0${day}\0${call.eventId}`;
        if (
          (first.customer === call.customer && utcDay(first.startUnixUs) === day) ||
          seenUnder?.has(under)
        ) {
          this.metrics.callsDuplicate.inc();
          inBatchDuplicates++;
          continue; // the same span twice in one request: one call
        }
        seenUnder ??= new Set();
        seenUnder.add(under);
      }
      if (bound !== undefined && call.customer !== bound) {
        rejected.add('customer_not_allowed', call.customer, call.eventId);
        continue;
      }
      if (call.customer !== lastCustomer) {
        lastCustomer = call.customer;
        lastPlan = book.resolve(product, call.customer);
      }
      const plan = lastPlan;
      if (!plan) {
        rejected.add('unknown_plan', `product ${product}`, call.eventId);
        continue;
      }
      const rate = toolRateOf(plan, call.tool);
      if (!rate) {
        rejected.add('unknown_tool', call.tool, call.eventId);
        continue;
      }
      const usage = readUsage(call, plan.usageLines);
      if (!usage.ok) {
        rejected.add('invalid_usage', usage.detail, call.eventId);
        continue;
      }
      if (!amountInRange(call, rate, usage.quantities)) {
        rejected.add('amount_out_of_range', `span ${call.spanId || call.eventId}`, call.eventId);
        continue;
      }
      const day = dayOf(Math.floor(call.startUnixUs / 1000));
      if (day !== lastDay) {
        lastDay = day;
        lastPeriod = day.slice(0, 7); // YYYY-MM, the billing period (same as periodOf)
      }
      const period = lastPeriod;
      out.push({
        call,
        plan,
        rate,
        period,
        day,
        counts: countsTowardUsage(call, plan),
        usage: usage.quantities,
        tiered: rate.price.usageTiers ? tieredOf(usage.quantities, rate) : undefined,
      });
    }
    return { prepared: out, inBatchDuplicates };
  }

  /** Accepts the calls of one export. Resolves once they are durable; throws TollgateError for retryable refusals. */
  async accept(input: AcceptInput): Promise<AcceptResult> {
    const { product, rejected, early } = input;
    const book = input.book ?? this.plans.current;
    let prepared: Prepared[];
    let inBatchDuplicates: number;
    try {
      if (this.backlogFull) {
        throw new TollgateError('TG_BACKLOG_FULL', `${this.lander.backlogRows} rows waiting`, 5);
      }
      ({ prepared, inBatchDuplicates } = await this.prepare(
        book,
        product,
        input.calls,
        rejected,
        input.customer,
      ));
    } catch (err) {
      if (early) this.dropRecord(early);
      throw err;
    }
    for (const [reason, { n }] of rejected.counts) this.metrics.callsRejected.inc({ reason }, n);
    if (prepared.length === 0) {
      if (early) this.dropRecord(early);
      return { accepted: 0, duplicates: inBatchDuplicates, directives: [], rated: [] };
    }

    const record =
      early?.record ??
      this.newRecord(
        book,
        input,
        input.payload?.format ?? 'calls-json',
        input.payload?.bytes ?? Buffer.from(JSON.stringify(prepared.map((p) => p.call))),
      );
    const { rid } = record;
    const spoolStart = performance.now();
    try {
      await (early ? early.durable : this.spool.appendAccepted(record));
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'spool write failed');
      throw new TollgateError('TG_SPOOL_FAILED');
    }
    this.stage.spool.observe((performance.now() - spoolStart) / 1000);
    this.metrics.callsAccepted.inc({ product }, prepared.length);
    try {
      const result = await this.meterRateLand(rid, product, prepared, input.receivedAtMs, true);
      return { ...result, duplicates: result.duplicates + inBatchDuplicates };
    } catch (err) {
      // A fail-closed refusal, or an error after some customers' calls were claimed under this record: it is
      // not abandoned but finished in the background (once Redis is back; a few tries for anything else,
      // then it is reported and left in the spool), and the sender's retry is deduplicated against it (each
      // call lands once, whichever claims it first). Before, only the fail-closed refusal was finished: after
      // any other error the retry found the claimed calls duplicates, and they waited for the next start.
      void this.replay([record]);
      throw err;
    }
  }

  /** The calls of a spool record, selected exactly as when it was accepted. */
  private async callsOf(rec: AcceptedRecord, book: PlanBook): Promise<ToolCall[]> {
    if (rec.format === 'calls-json') return JSON.parse(rec.payload.toString('utf8')) as ToolCall[];
    const opts = extractOptions(this.opts, rec.defaultCustomer, rec.receivedAtMs, book.usageAttributes);
    const turn = new Turn();
    return selectCalls(await decodeOtlp(rec.format, rec.payload, turn), opts, new RejectionTally(), turn);
  }

  /**
   * Re-processes spool records left unlanded by a previous run (in order). A record that cannot be processed
   * — its payload no longer decodes, or the same error after REPLAY_ATTEMPTS tries — is reported and left in
   * the spool (nothing is deleted), and the replay goes on with the next: one such record used to stop the
   * replay, or hold it in a loop, leaving every later record unlanded. Records of `resumed` (blocks the
   * lander must insert again before any other: it waits for them) come first, and do not wait for Redis in
   * fail-open; the others wait up to REPLAY_REDIS_WAIT_MS for it.
   */
  async replay(records: readonly AcceptedRecord[], resumed?: ReadonlySet<string>): Promise<void> {
    const ordered = resumed
      ? [...records.filter((r) => resumed.has(r.rid)), ...records.filter((r) => !resumed.has(r.rid))]
      : records;
    await this.holdReplayed(records);
    // one wait for Redis for the whole replay, not one per record (N records waited N × 5 minutes)
    const waitForRedisUntil = Date.now() + REPLAY_REDIS_WAIT_MS;
    for (const rec of ordered) {
      try {
        await this.replayOne(rec, resumed?.has(rec.rid) ? 0 : waitForRedisUntil);
      } catch (err) {
        if (err instanceof SetAside) {
          // reading it killed the process at REPLAY_CRASHES_TO_SET_ASIDE starts: the rest must land
          this.metrics.replayFailures.inc();
          this.log.error(
            { rid: rec.rid, product: rec.product },
            'spool record set aside: the process died while reading it at each of the last starts; it stays in the spool, not replayed (docs/operations.md, "A spool record set aside")',
          );
          continue;
        }
        if (rec.early && err instanceof DecodeError) {
          // written before its body was decoded, and the body does not decode: the export was refused (400)
          // and never acknowledged; the process stopped before the record's abandon marker
          this.log.info({ rid: rec.rid }, 'spool record of a refused export dropped');
          this.abandonRecord(rec.rid);
          continue;
        }
        this.metrics.replayFailures.inc();
        this.log.error(
          { rid: rec.rid, product: rec.product, err: (err as Error).message },
          'spool record not replayed: it stays in the spool; the replay goes on',
        );
      }
    }
  }

  /**
   * Holds the calls of the records about to be replayed in the dedup of last resort, newest records first, up to
   * RECENT_IDS calls: the exports a sender sends again are those it was not answered for, the newest. Without it,
   * a retry arriving fail-open while a record's replay waits for Redis was billed, and the replay billed the
   * same calls again once Redis answered (the record had claimed them before the restart). Each record is read
   * under the replay guard, as its replay reads it; one that cannot be read is left to its replay.
   */
  private async holdReplayed(records: readonly AcceptedRecord[]): Promise<void> {
    const guard = this.spool.replayGuard;
    let calls = 0;
    for (let i = records.length - 1; i >= 0 && calls < RECENT_IDS; i--) {
      const rec = records[i] as AcceptedRecord;
      if (!guard.begin(rec.rid)) continue;
      try {
        const book = this.plans.byVersion(rec.planVersion) ?? this.plans.current;
        const own = await this.callsOf(rec, book);
        this.recent.hold(rec.rid, rec.product, own);
        calls += own.length;
      } catch {
        // its replay reports it
      } finally {
        guard.leave(rec.rid);
      }
    }
  }

  private async replayOne(rec: AcceptedRecord, waitForRedisUntil: number): Promise<void> {
    try {
      await this.replayRecord(rec, waitForRedisUntil);
    } finally {
      this.recent.unhold(rec.rid);
    }
  }

  private async replayRecord(rec: AcceptedRecord, waitForRedisUntil: number): Promise<void> {
    const book = this.plans.byVersion(rec.planVersion) ?? this.plans.current;
    if (book.version !== rec.planVersion) {
      this.log.warn(
        { rid: rec.rid, planVersion: rec.planVersion },
        'plan snapshot missing; replaying under the current plans',
      );
    }
    // Reading the record (decoding, selecting, preparing) is what could kill the process (an abort no handler
    // catches): guarded, so a record that does so at every start is set aside instead of stopping every
    // start there. Waiting for Redis below is not guarded: a kill then says nothing about the record.
    const guard = this.spool.replayGuard;
    if (!guard.begin(rec.rid)) throw new SetAside();
    let prepared: Prepared[];
    try {
      prepared = (
        await this.prepare(
          book,
          rec.product,
          await this.callsOf(rec, book),
          new RejectionTally(),
          rec.customer,
        )
      ).prepared;
    } finally {
      guard.end(rec.rid);
    }
    for (let attempt = 1; ; attempt++) {
      try {
        const failClosed = this.opts.failMode === 'closed' || Date.now() < waitForRedisUntil;
        await this.meterRateLand(rec.rid, rec.product, prepared, rec.receivedAtMs, false, failClosed);
        return;
      } catch (err) {
        // Redis down: wait for it (fail-closed however long, fail-open up to REPLAY_REDIS_WAIT_MS) rather
        // than rate the replay unenforced; any other error is tried again a few times
        const redisDown = err instanceof TollgateError && err.code === 'TG_REDIS_UNAVAILABLE';
        if (!redisDown && attempt >= REPLAY_ATTEMPTS) throw err;
        this.log.warn(
          { rid: rec.rid, err: (err as Error).message },
          redisDown ? 'replay waiting for Redis' : 'replay failed; trying again',
        );
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  private async claim(
    product: string,
    customer: string,
    rid: string,
    inputs: ClaimInput[],
  ): Promise<ClaimResult[] | undefined> {
    if (!this.redis) return undefined;
    try {
      // the customer's calls billed during an outage first: this export's positions follow theirs (nothing owed,
      // the usual case: nothing awaited)
      if (this.owed?.owes(product, customer)) await this.owed.settleCustomer(product, customer);
      const res = await claimCalls(this.redis, product, customer, rid, inputs, this.claimTtl());
      this.reachable();
      return res;
    } catch (err) {
      this.metrics.redisErrors.inc();
      if (this.redisDownSince === undefined) {
        this.redisDownSince = Date.now();
        this.log.error({ err: (err as Error).message, failMode: this.opts.failMode }, 'Redis unreachable');
      }
      return undefined;
    }
  }

  private claimTtl(): { dedupSeconds: number; periodSeconds: number } {
    return {
      dedupSeconds: (this.opts.maxSpanAgeHours + 48) * 3600,
      periodSeconds: 70 * DAY_SECONDS,
    };
  }

  private reachable(): void {
    if (this.redisDownSince === undefined) return;
    this.log.warn(
      { downForMs: Date.now() - this.redisDownSince },
      'Redis reachable again; enforcement resumed',
    );
    this.redisDownSince = undefined;
    this.recent.dropIndex();
  }

  /** Takes back an owed item an earlier process wrote down (OwedLog): settled like the others. */
  restoreOwed(e: Extract<OwedEntry, { k: 'claim' }>): void {
    const inputs = e.inputs as ClaimInput[];
    // A process started while Redis is still down continues its customers' positions from those the calls were
    // given (not from 1: the free calls and tiers the outage used are not given again) — for the customers an
    // earlier process owed calls of; Redis's positions replace them once it answers.
    e.positions?.forEach((at, k) => {
      const p = inputs[k] as Prepared | undefined;
      if (p?.counts) this.remember(this.localUsageOf(e.product, p), p, at as ClaimResult);
    });
    this.owed?.push(
      e.product,
      e.customer,
      {
        product: e.product,
        customer: e.customer,
        rid: e.rid,
        inputs,
        rows: Promise.resolve(e.rows as RatedCall[]),
        nowMs: e.nowMs,
        calls: inputs.length,
        attempts: 0,
        lastAttemptMs: 0,
        logId: e.id,
      },
      true,
    );
  }

  /** Calls billed fail-open and not yet claimed in Redis. */
  get owedCount(): number {
    return this.owed?.calls ?? 0;
  }

  /**
   * Counts in Redis what was billed without it: the calls rated fail-open (claimed, then enforced), then the
   * enforcement steps that failed — every customer's, or one customer's (a lease request). Called every
   * second by the process (`startPeriodic`) and at its stop; a claim settles its own customer's first.
   * Rejects while Redis is still failing (the rest stays owed).
   */
  async settle(only?: { product: string; customer: string }): Promise<void> {
    if (only) await this.owed?.settleCustomer(only.product, only.customer);
    else await this.owed?.settleAll();
    await this.enforcer?.settle?.();
  }

  /** One owed item: its calls claimed under their record's token, then those not claimed elsewhere enforced. */
  private async settleOwed(redis: RedisLike, o: OwedCalls): Promise<void> {
    // a claim already made for it (a retry of this settling) answers `own`
    const claimed = await claimCalls(redis, o.product, o.customer, o.rid, o.inputs, this.claimTtl());
    this.reachable();
    // a call claimed meanwhile under another record (another processor took its retry while this one could
    // not reach Redis) was billed there too: it is reported, not counted again
    const elsewhere = new Set<string>();
    claimed.forEach((r, k) => {
      if (r.status === CLAIM_STATUS.duplicate) elsewhere.add((o.inputs[k] as ClaimInput).call.eventId);
    });
    if (elsewhere.size) {
      this.metrics.callsSettled.inc({ step: 'claim', result: 'duplicate' }, elsewhere.size);
      this.log.error(
        { rid: o.rid, customer: o.customer, calls: elsewhere.size },
        'calls billed during the Redis outage were also claimed under another record: billed twice',
      );
    }
    this.metrics.callsSettled.inc({ step: 'claim', result: 'counted' }, o.inputs.length - elsewhere.size);
    let rows: RatedCall[];
    try {
      rows = await o.rows;
    } catch {
      return; // the export failed before rating: its record's replay rates and enforces them (same token)
    }
    rows = rows.filter((r) => !elsewhere.has(r.eventId));
    if (this.enforcer && rows.length)
      // a step Redis fails is owed by the enforcer in turn; anything else is reported
      await this.enforcer.apply(o.product, o.rid, rows, o.nowMs).catch((err: Error) => {
        this.log.error({ rid: o.rid, err: err.message }, 'owed enforcement failed');
      });
  }

  /**
   * The states in force for an export's calls that were counted before (retries), as `apply` answers for the
   * calls it counts: their customers', and those of their agents, sessions and tools — beside what `apply`
   * answered (`answered`) for the new calls of the same export, without repeating it. Redis unreachable: none
   * (as for any export answered fail-open).
   */
  private async statesOfRetried(
    product: string,
    prepared: readonly Prepared[],
    rated: readonly RatedCall[],
    answered: readonly Directive[],
  ): Promise<Directive[]> {
    const statesOf = this.enforcer?.statesOf?.bind(this.enforcer);
    if (!statesOf) return [];
    const counted = new Set<string>();
    for (const r of rated) counted.add(r.eventId);
    const subjects = new Map<string, Set<string>>();
    for (const { call } of prepared) {
      if (counted.has(call.eventId)) continue;
      let s = subjects.get(call.customer);
      if (!s) {
        s = new Set();
        subjects.set(call.customer, s);
      }
      s.add(`agent\0${call.agent}`).add(`session\0${call.sessionId}`).add(`tool\0${call.tool}`);
    }
    if (subjects.size === 0) return [];
    const key = (d: Directive) => `${d.customer}\0${d.scope}\0${d.id}`;
    const given = new Set(answered.map(key));
    try {
      const states = await Promise.all([...subjects.keys()].map((customer) => statesOf(product, customer)));
      const out: Directive[] = [];
      [...subjects.values()].forEach((s, i) => {
        for (const d of states[i] as Directive[]) {
          if ((d.scope === 'customer' || s.has(`${d.scope}\0${d.id}`)) && !given.has(key(d))) out.push(d);
        }
      });
      return out;
    } catch {
      return [];
    }
  }

  /** The previous run's calls into the dedup of last resort, once (see `recentSeed`); never rejects. */
  private seedRecent(): Promise<void> {
    const read = this.recentSeed;
    if (!read) return Promise.resolve();
    this.seeding ??= new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.log.warn({ timeoutMs: RECENT_SEED_TIMEOUT_MS }, 'recent calls not read from storage in time');
        resolve();
      }, RECENT_SEED_TIMEOUT_MS);
      read(RECENT_IDS).then(
        (batches) => {
          clearTimeout(timer);
          this.recent.seed(batches);
          const calls = batches.reduce((t, b) => t + b.ids.length, 0);
          this.log.info({ calls }, 'deduplicating fail-open calls against the calls landed lately');
          resolve();
        },
        (err: Error) => {
          clearTimeout(timer);
          this.log.warn({ err: err.message }, 'recent calls not read from storage');
          resolve();
        },
      );
    });
    return this.seeding;
  }

  /** Usage positions continued locally from the last ones Redis gave (fail-open). */
  private localUsageOf(product: string, p: Prepared): LocalUsage {
    const key = `${product}\0${p.call.customer}\0${p.period}`;
    let u = this.localUsage.get(key);
    if (!u) {
      u = { n: 0, tools: new Map(), units: new Map() };
      this.localUsage.set(key, u);
    }
    return u;
  }

  private localPosition(product: string, p: Prepared): ClaimResult {
    const u = this.localUsageOf(product, p);
    if (!p.counts) return { status: CLAIM_STATUS.new, toolOrdinal: 0, planOrdinal: 0 };
    u.n++;
    const t = (u.tools.get(p.call.tool) ?? 0) + 1;
    u.tools.set(p.call.tool, t);
    const out: ClaimResult = { status: CLAIM_STATUS.new, toolOrdinal: t, planOrdinal: u.n };
    if (p.tiered) {
      out.usageBefore = [];
      for (const q of p.tiered) {
        const k = `${q.line}:${p.call.tool}`;
        const before = u.units.get(k) ?? 0n;
        out.usageBefore[q.index] = before;
        u.units.set(k, before + q.micro);
      }
    }
    return out;
  }

  /** Keeps the positions Redis gave a counted call (`u`: its customer's and period's local usage). */
  private remember(u: LocalUsage, p: Prepared, r: ClaimResult): void {
    if (r.planOrdinal > u.n) u.n = r.planOrdinal;
    if (r.toolOrdinal > (u.tools.get(p.call.tool) ?? 0)) u.tools.set(p.call.tool, r.toolOrdinal);
    if (p.tiered && r.usageBefore) {
      for (const q of p.tiered) {
        const k = `${q.line}:${p.call.tool}`;
        const after = (r.usageBefore[q.index] ?? 0n) + q.micro;
        if (after > (u.units.get(k) ?? 0n)) u.units.set(k, after);
      }
    }
  }

  /**
   * The landing blocks of the rows (the lander's format): one per LAND_CHUNK_ROWS rows, written over several
   * turns of the event loop when there are many (`turn`'s slices). With `before` (blocks this wrote for the
   * same rows), each is written again with its decision column anew (NativeWriter's `retake`; else whole);
   * `before` stays the caller's. Each block is added and taken in one go: the writer is shared, and another
   * export may use it between two blocks.
   */
  private async encode(
    rated: readonly RatedCall[],
    turn: Turn,
    before?: readonly Buffer[],
  ): Promise<Buffer[]> {
    const blocks: Buffer[] = [];
    try {
      for (let k = 0; k * LAND_CHUNK_ROWS < rated.length; k++) {
        if (k > 0 && turn.spent()) await turn.next();
        const rows =
          rated.length <= LAND_CHUNK_ROWS
            ? rated
            : rated.slice(k * LAND_CHUNK_ROWS, (k + 1) * LAND_CHUNK_ROWS);
        const old = before?.[k];
        if (old && this.out.retake) blocks.push(this.out.retake(old, rows));
        else {
          this.out.clear();
          for (const row of rows) this.out.add(row);
          blocks.push(this.out.take());
        }
      }
    } catch (err) {
      for (const b of blocks) this.lander.discard(b);
      throw err;
    }
    return blocks;
  }

  private async meterRateLand(
    rid: string,
    product: string,
    prepared: readonly Prepared[],
    receivedAtMs: number,
    /** An export being answered (not a replay): its stages are timed into tollgate_export_stage_seconds. */
    timed = false,
    /** Redis down: refuse (TG_REDIS_UNAVAILABLE) rather than rate fail-open. */
    failClosed = this.opts.failMode === 'closed',
  ): Promise<AcceptResult> {
    const claimStart = performance.now();
    const { rated, duplicates, unenforced, rateStart, turn } = await this.claimAndRate(
      rid,
      product,
      prepared,
      receivedAtMs,
      failClosed,
    );

    if (duplicates) this.metrics.callsDuplicate.inc(duplicates);
    if (unenforced) this.metrics.callsUnenforced.inc(unenforced);

    const enforceStart = performance.now();
    // Enforcement's script runs in Redis while this thread encodes the landing block; the block is handed to
    // the lander only once enforcement has answered (a failure lands nothing: the replay finishes the record),
    // and encoded again when enforcement marked rows over_limit, which it does once Redis has answered.
    const enforcing = this.enforcer && rated.length ? this.enforcer.apply(product, rid, rated) : undefined;
    enforcing?.catch(() => {}); // awaited below; not left unhandled if encoding throws first
    const landStart = performance.now();
    let blocks = await this.encode(rated, turn);
    let landMs = performance.now() - landStart;
    let directives: Directive[] = [];
    try {
      if (enforcing) directives = await enforcing;
    } catch (err) {
      for (const b of blocks) this.lander.discard(b);
      throw err;
    }
    // calls counted before (a retry: its sender lost the answer that counted them) get the states in force,
    // as that answer had them: a kill must reach the sender that retries
    if (duplicates > 0 && this.enforcer?.statesOf) {
      directives = directives.concat(await this.statesOfRetried(product, prepared, rated, directives));
    }
    const enforceMs = performance.now() - enforceStart - landMs;
    if (blocks.length && enforcing && rated.some((r) => r.decision === 'over_limit')) {
      const again = performance.now();
      const before = blocks;
      // the decision column written again (NativeWriter), else the whole record; then the first bytes go back
      blocks = await this.encode(rated, turn, before);
      for (const b of before) this.lander.discard(b);
      landMs += performance.now() - again;
    }
    // revenue summed per currency, one metric update per export rather than per call; summed as a float,
    // which is what the counter holds (a bigint sum allocated a bigint per call)
    let revenueCurrency = '';
    let revenue = 0;
    for (const row of rated) {
      if (row.priceNano <= 0n) continue;
      if (row.currency !== revenueCurrency && revenue > 0) {
        this.metrics.revenueNano.inc({ product, currency: revenueCurrency }, revenue);
        revenue = 0;
      }
      revenueCurrency = row.currency;
      revenue += Number(row.priceNano);
    }
    if (revenue > 0) this.metrics.revenueNano.inc({ product, currency: revenueCurrency }, revenue);
    if (blocks.length) this.lander.enqueue(rid, blocks, rated.length);
    // nothing to land: every call was a retry of one already counted. The marker is not waited for (with
    // `spool.fsync` every spool write is a synchronous one): without it a replay finds the calls duplicates again.
    else this.abandonRecord(rid);
    if (timed) {
      this.stage.claim.observe((rateStart - claimStart) / 1000);
      this.stage.rate.observe((enforceStart - rateStart) / 1000);
      this.stage.enforce.observe(enforceMs / 1000);
      this.stage.land.observe(landMs / 1000);
    }
    return {
      accepted: rated.length,
      duplicates,
      directives,
      rated,
    };
  }

  /**
   * Claims an export's calls (Redis down and fail-open: positions continued locally, the calls owed to Redis
   * from the moment their claim failed) and rates them. The owed items wait for their rated rows: a failure
   * before they are handed over tells them so (the record's replay counts those calls).
   */
  private async claimAndRate(
    rid: string,
    product: string,
    prepared: readonly Prepared[],
    receivedAtMs: number,
    failClosed: boolean,
  ): Promise<{ rated: RatedCall[]; duplicates: number; unenforced: number; rateStart: number; turn: Turn }> {
    // the rated rows of the calls owed to Redis (fail-open), by customer, for the owed items made at claim time
    let owedRows: Deferred<Map<string, RatedCall[]>> | undefined;
    // the calls counted fail-open, held in the process's dedup until they are added to it as rated
    const taken: string[] = [];
    try {
      const byCustomer = new Map<string, number[]>();
      prepared.forEach((p, i) => {
        const list = byCustomer.get(p.call.customer);
        if (list) list.push(i);
        else byCustomer.set(p.call.customer, [i]);
      });
      const results: (ClaimResult | undefined)[] = new Array(prepared.length).fill(undefined);
      const unenforced = new Set<number>();
      // at most SCRIPTS_IN_FLIGHT customers' claims at once: an export of 150,000 customers sent every claim
      // at once, and the later ones timed out waiting behind the others in Redis (taken for Redis being down)
      const limit = scriptLimiter(byCustomer.size);
      await Promise.all(
        [...byCustomer].map(([customer, idx]) =>
          limit(async () => {
            const claimed = await this.claim(
              product,
              customer,
              rid,
              idx.map((i) => prepared[i] as Prepared),
            );
            if (claimed) {
              // one customer's calls: their local usage looked up once per period, not per call
              let u: LocalUsage | undefined;
              let uPeriod = '';
              idx.forEach((i, k) => {
                const p = prepared[i] as Prepared;
                results[i] = claimed[k];
                if (!p.counts) return;
                if (!u || p.period !== uPeriod) {
                  u = this.localUsageOf(product, p);
                  uPeriod = p.period;
                }
                this.remember(u, p, claimed[k] as ClaimResult);
              });
              return;
            }
            if (failClosed) return;
            await this.seedRecent();
            // a replayed record rated fail-open counts its own calls: they are no longer held for it
            this.recent.unhold(rid);
            const inputs: ClaimInput[] = [];
            /** The positions each of `inputs` was given here (written down with them for a next start). */
            const positions: ClaimResult[] = [];
            for (const i of idx) {
              const p = prepared[i] as Prepared;
              unenforced.add(i);
              const day = utcDay(p.call.startUnixUs);
              if (this.recent.has(product, customer, day, p.call.eventId)) {
                results[i] = { status: CLAIM_STATUS.duplicate, toolOrdinal: 0, planOrdinal: 0 };
              } else {
                taken.push(this.recent.take(product, customer, day, p.call.eventId));
                const at = this.localPosition(product, p);
                results[i] = at;
                inputs.push(p);
                positions.push(at);
              }
            }
            // owed at once: a claim of this customer from now on waits until these are claimed first
            if (inputs.length && this.owed) {
              owedRows ??= deferred();
              const rows = owedRows.promise.then((byCustomer) => byCustomer.get(customer) ?? []);
              rows.catch(() => {});
              const nowMs = Date.now();
              const item: OwedCalls = {
                product,
                customer,
                rid,
                inputs,
                rows,
                nowMs,
                calls: inputs.length,
                attempts: 0,
                lastAttemptMs: 0,
              };
              const kept = this.owed.push(product, customer, item);
              // written down once rated, for a next start if this process stops before Redis answers
              if (kept && this.owedLog)
                rows.then(
                  (r) => {
                    item.logId = this.owedLog?.append({
                      k: 'claim',
                      product,
                      customer,
                      rid,
                      inputs: inputs.map(({ call, period, day, counts, tiered }) => ({
                        call,
                        period,
                        day,
                        counts,
                        tiered,
                      })),
                      rows: r,
                      nowMs,
                      positions,
                    });
                  },
                  () => {},
                );
            }
          }),
        ),
      );
      if (failClosed && results.includes(undefined)) {
        throw new TollgateError(
          'TG_REDIS_UNAVAILABLE',
          this.opts.failMode === 'closed' ? 'redis.failMode is closed' : 'a replay waits for Redis',
          2,
        );
      }

      const rateStart = performance.now();
      const turn = new Turn();
      const rated: RatedCall[] = [];
      let owed: Map<string, RatedCall[]> | undefined;
      let duplicates = 0;
      for (let i = 0; i < prepared.length; i++) {
        if (turn.due(CALL_WORK)) await turn.next();
        const p = prepared[i] as Prepared;
        const claim = results[i] as ClaimResult;
        if (claim.status === CLAIM_STATUS.duplicate) {
          duplicates++;
          continue;
        }
        const rating = rateCall(p.call, p.plan, p.rate, claim, p.usage);
        const c = p.call;
        const decision =
          unenforced.has(i) && rating.decision !== 'failed_not_billed' ? 'unenforced' : rating.decision;
        const row = ratedRow(product, c, p.plan, p.period, rating, decision, receivedAtMs);
        if (c.lease && !unenforced.has(i)) row.lease = c.lease;
        rated.push(row);
        if (unenforced.has(i) && owedRows) {
          owed ??= new Map();
          let list = owed.get(c.customer);
          if (!list) {
            list = [];
            owed.set(c.customer, list);
          }
          // counted later as rated (decision, lease), whatever it lands as now
          const due = { ...row, decision: rating.decision };
          if (c.lease) due.lease = c.lease;
          list.push(due);
        }
      }
      owedRows?.resolve(owed ?? new Map());
      // added before the calls taken are let go, in the same turn: no export looks in between
      this.recent.addAll(product, rated);
      return { rated, duplicates, unenforced: unenforced.size, rateStart, turn };
    } catch (err) {
      owedRows?.reject(err);
      throw err;
    } finally {
      this.recent.release(taken);
    }
  }
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
