import type { ClickHouseClient } from '@clickhouse/client';
import type { Logger } from 'pino';
import { insertSettings } from '../storage/clickhouse.js';

/** One row of `enforcement_events`: a state transition (warn, throttle, kill, resume) or an operator action. */
export interface EnforcementEvent {
  atMs: number;
  product: string;
  customer: string;
  scope: string;
  subjectId: string;
  action: string;
  reason: string;
  marginBps: number | null;
  spendNano: bigint;
  actor: string;
  note: string;
}

const MAX_QUEUED = 100_000;

/**
 * Audit trail of enforcement, written to ClickHouse off the request path in small batches (retried while
 * ClickHouse is away; transitions are rare, so the queue stays small).
 */
export class EnforcementLog {
  private queue: EnforcementEvent[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly client: ClickHouseClient,
    private readonly log: Logger,
  ) {}

  record(e: EnforcementEvent): void {
    if (this.queue.length >= MAX_QUEUED) this.queue.shift();
    this.queue.push(e);
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, 200);
  }

  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.queue.length === 0) return;
    const batch = this.queue;
    this.queue = [];
    this.flushing = (async () => {
      try {
        await this.client.insert({
          table: 'enforcement_events',
          format: 'JSONEachRow',
          clickhouse_settings: insertSettings(),
          values: batch.map((e) => ({
            at: (e.atMs / 1000).toFixed(3),
            product: e.product,
            customer: e.customer,
            scope: e.scope,
            subject_id: e.subjectId,
            action: e.action,
            reason: e.reason,
            margin_bps: e.marginBps,
            spend_nano: e.spendNano.toString(),
            actor: e.actor,
            note: e.note,
            event_key: `${e.product}|${e.customer}|${e.scope}|${e.subjectId}|${e.action}|${e.atMs}`,
          })),
        });
      } catch (err) {
        this.log.warn(
          { err: (err as Error).message, events: batch.length },
          'enforcement events not written yet; retrying',
        );
        this.queue = [...batch, ...this.queue].slice(-MAX_QUEUED);
        this.timer ??= setTimeout(() => {
          this.timer = undefined;
          void this.flush();
        }, 2000);
      }
    })();
    await this.flushing;
    this.flushing = undefined;
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }
}
