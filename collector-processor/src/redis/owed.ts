import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';

/**
 * Calls billed without being counted in Redis — rated fail-open while Redis was unreachable, or claimed but
 * their enforcement step failed — are kept in memory and counted once Redis answers again: claimed under their
 * spool record's token (usage positions, dedup), then applied to limits, leases, credits and the margin guard.
 * An item that Redis itself refuses for its own sake (a script error, not a refusal to write) is given up
 * after this many tries, at least a second apart: logged and counted (`tollgate_calls_settled_total{result=
 * "dropped"}`).
 */
export const SETTLE_ATTEMPTS = 5;

/** Owed calls kept at most per process, claims and enforcement each (2–4 KiB of memory per call); past it, dropped and counted. */
export const MAX_OWED_CALLS = 100_000;

/** Customers whose owed items are settled at once by `settleAll` (each customer's own in order). */
const SETTLE_CONCURRENCY = 64;

/**
 * Redis answered, but refuses writes for now (out of memory, a failed save, a replica after a failover, a
 * script running, loading, a cluster reconfiguring): the item waits like for a Redis that does not answer.
 */
const REDIS_REFUSES_FOR_NOW =
  /^(OOM|MISCONF|READONLY|NOREPLICAS|BUSY|LOADING|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|MOVED|ASK|NOSCRIPT)\b/;

/**
 * An error about the item itself — a script error Redis answered, or an item that cannot be sent at all (a
 * damaged one restored from the owed-calls file): trying again will not help.
 */
function itemRefused(err: unknown): boolean {
  if (err instanceof TypeError || err instanceof RangeError) return true;
  const e = err as { name?: string; message?: string } | null;
  return e?.name === 'ReplyError' && !REDIS_REFUSES_FOR_NOW.test(e.message ?? '');
}

/** The queue's key of a customer's items. */
const keyOf = (product: string, customer: string) => `${product}\0${customer}`;

/** One owed piece of work: `calls` billed calls, and the tries of it that Redis refused for its own sake. */
export interface OwedItem {
  calls: number;
  attempts: number;
  lastAttemptMs: number;
  /** Its line in the owed-calls file (OwedLog), once written there. */
  logId?: string | undefined;
}

/**
 * The owed work of one step (`claim`: fail-open calls; `enforce`: failed enforcement steps), per customer
 * (`product\0customer`), each customer's items oldest first, at most {@link MAX_OWED_CALLS} calls, with its
 * gauge (`tollgate_calls_owed`) and what was given up (`tollgate_calls_settled_total{result="dropped"}`).
 * Positions and limits are per customer: a customer's next claim or step waits for its own owed items only.
 */
export class OwedQueue<T extends OwedItem> {
  private readonly byKey = new Map<string, T[]>();
  private owedCalls = 0;
  private settledUnlogged = 0;
  private fullLogged = false;
  /** The settling under way per customer: claims, steps, lease requests and the timer wait for the same one. */
  private readonly settling = new Map<string, Promise<void>>();

  constructor(
    private readonly step: 'claim' | 'enforce',
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly apply: (item: T) => Promise<void>,
    private readonly describe: (item: T) => Record<string, unknown>,
    /** An item settled or given up (its line in the owed-calls file is marked done). */
    private readonly done: (item: T) => void = () => {},
  ) {}

  /** Billed calls owed. */
  get calls(): number {
    return this.owedCalls;
  }

  /** Whether the customer has owed items. */
  owes(product: string, customer: string): boolean {
    return this.byKey.has(keyOf(product, customer));
  }

  /**
   * Keeps the customer's `item` (true), or counts it dropped when MAX_OWED_CALLS are owed already (false).
   * `restored`: an item an earlier process left (the owed-calls file, itself bounded), kept whatever is owed.
   */
  push(product: string, customer: string, item: T, restored = false): boolean {
    const key = keyOf(product, customer);
    if (!restored && this.owedCalls + item.calls > MAX_OWED_CALLS) {
      this.metrics.callsSettled.inc({ step: this.step, result: 'dropped' }, item.calls);
      if (!this.fullLogged) {
        this.fullLogged = true;
        this.log.error(
          { step: this.step, owedCalls: this.owedCalls, max: MAX_OWED_CALLS },
          'too many calls owed to Redis; further ones will not be counted there',
        );
      }
      return false;
    }
    const list = this.byKey.get(key);
    if (list) list.push(item);
    else this.byKey.set(key, [item]);
    this.owedCalls += item.calls;
    this.metrics.callsOwed.set({ step: this.step }, this.owedCalls);
    return true;
  }

  /**
   * Applies the customer's owed items in order, if it has any, before its next claim, step or lease: one
   * settling at a time (two would apply the same item and drop the next). Rejects at the first failure,
   * keeping that item and the rest for the next try.
   */
  settleCustomer(product: string, customer: string): Promise<void> {
    const key = keyOf(product, customer);
    return this.byKey.has(key) ? this.settleKey(key) : Promise.resolve();
  }

  private settleKey(key: string): Promise<void> {
    let p = this.settling.get(key);
    if (!p) {
      p = this.settleNow(key).finally(() => this.settling.delete(key));
      this.settling.set(key, p);
    }
    return p;
  }

  /** Applies every customer's owed items, {@link SETTLE_CONCURRENCY} customers at a time; rejects if any failed. */
  async settleAll(): Promise<void> {
    const keys = [...this.byKey.keys()];
    let failed: unknown;
    let next = 0;
    const worker = async () => {
      while (next < keys.length) {
        const key = keys[next++] as string;
        await this.settleKey(key).catch((err) => {
          failed ??= err;
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(SETTLE_CONCURRENCY, keys.length) }, worker));
    if (this.settledUnlogged) {
      this.log.info({ step: this.step, calls: this.settledUnlogged }, 'owed calls counted in Redis');
      this.settledUnlogged = 0;
    }
    if (failed !== undefined) throw failed;
    if (this.owedCalls === 0) this.fullLogged = false;
  }

  private async settleNow(key: string): Promise<void> {
    for (;;) {
      const list = this.byKey.get(key);
      const item = list?.[0];
      if (!list || !item) return;
      try {
        await this.apply(item);
        this.settledUnlogged += item.calls;
      } catch (err) {
        const now = Date.now();
        if (!itemRefused(err)) throw err;
        // tries a second apart at least: a burst of exports must not use them up at once
        if (now - item.lastAttemptMs >= 1000) {
          item.lastAttemptMs = now;
          item.attempts++;
        }
        if (item.attempts < SETTLE_ATTEMPTS) throw err;
        this.metrics.callsSettled.inc({ step: this.step, result: 'dropped' }, item.calls);
        this.log.error(
          { step: this.step, ...this.describe(item), calls: item.calls, err: (err as Error).message },
          'owed calls given up: they stay billed, not counted in Redis',
        );
      }
      list.shift();
      if (list.length === 0) this.byKey.delete(key);
      this.done(item);
      this.owedCalls -= item.calls;
      this.metrics.callsOwed.set({ step: this.step }, this.owedCalls);
    }
  }
}
