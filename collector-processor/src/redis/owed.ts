import type { Cluster, Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';

/**
 * Calls billed without being counted in Redis — rated fail-open while Redis was unreachable, or claimed but
 * their enforcement step failed — are kept in memory and counted once Redis answers again: claimed under their
 * spool record's token (usage positions, dedup), then applied to limits, leases, credits and the margin guard.
 * A step is given up after this many failures while Redis still answers a PING (a failure of the step itself,
 * not of Redis): logged and counted (`tollgate_calls_settled_total{result="dropped"}`).
 */
export const SETTLE_ATTEMPTS = 5;

/** Owed calls kept at most per process, claims and enforcement each (≈ 1 KiB of memory per call); past it, dropped and counted. */
export const MAX_OWED_CALLS = 200_000;

/** Whether Redis answers a PING: a failed settling step then failed for its own sake (the attempt counts). */
async function redisAnswers(redis: Redis | Cluster): Promise<boolean> {
  try {
    return (await redis.ping()) === 'PONG';
  } catch {
    return false;
  }
}

/** One owed piece of work: `calls` billed calls, and the tries of it that failed while Redis answered. */
export interface OwedItem {
  calls: number;
  attempts: number;
}

/**
 * The owed work of one step (`claim`: fail-open calls; `enforce`: failed enforcement steps), oldest first,
 * at most {@link MAX_OWED_CALLS} calls, with its gauge (`tollgate_calls_owed`) and what was given up
 * (`tollgate_calls_settled_total{result="dropped"}`).
 */
export class OwedQueue<T extends OwedItem> {
  private readonly items: T[] = [];
  private owedCalls = 0;
  private fullLogged = false;
  private settling: Promise<void> | undefined;

  constructor(
    private readonly step: 'claim' | 'enforce',
    private readonly redis: Redis | Cluster,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /** Billed calls owed. */
  get calls(): number {
    return this.owedCalls;
  }

  push(item: T): void {
    if (this.owedCalls + item.calls > MAX_OWED_CALLS) {
      this.metrics.callsSettled.inc({ step: this.step, result: 'dropped' }, item.calls);
      if (!this.fullLogged) {
        this.fullLogged = true;
        this.log.error(
          { step: this.step, owedCalls: this.owedCalls, max: MAX_OWED_CALLS },
          'too many calls owed to Redis; further ones will not be counted there',
        );
      }
      return;
    }
    this.items.push(item);
    this.owedCalls += item.calls;
    this.metrics.callsOwed.set({ step: this.step }, this.owedCalls);
  }

  /**
   * Runs `apply` on the items, oldest first, one settling at a time (the process's timer, claims and lease
   * requests wait for the same one: two would apply the same item and drop the next). Rejects at the first
   * failure while Redis does not answer, keeping that item and the rest for the next try; an item that fails
   * while Redis answers is given up after {@link SETTLE_ATTEMPTS} tries (`what` names it in the error line).
   */
  settle(apply: (item: T) => Promise<void>, what: (item: T) => Record<string, unknown>): Promise<void> {
    this.settling ??= this.settleNow(apply, what).finally(() => {
      this.settling = undefined;
    });
    return this.settling;
  }

  private async settleNow(
    apply: (item: T) => Promise<void>,
    what: (item: T) => Record<string, unknown>,
  ): Promise<void> {
    while (this.items.length) {
      const item = this.items[0] as T;
      try {
        await apply(item);
      } catch (err) {
        if (!((await redisAnswers(this.redis)) && ++item.attempts >= SETTLE_ATTEMPTS)) throw err;
        this.metrics.callsSettled.inc({ step: this.step, result: 'dropped' }, item.calls);
        this.log.error(
          { step: this.step, ...what(item), calls: item.calls, err: (err as Error).message },
          'owed calls given up: they stay billed, not counted in Redis',
        );
      }
      this.items.shift();
      this.owedCalls -= item.calls;
      this.metrics.callsOwed.set({ step: this.step }, this.owedCalls);
    }
    this.fullLogged = false;
  }
}
