import type { ClickHouseClient } from '@clickhouse/client';
import {
  type CreditLedgerColumn,
  creditKeys,
  customerTag,
  decodeLedgerEntry,
  type LedgerEntry,
} from '@tollgate/contracts';
import type { Logger } from 'pino';
import type { RedisLike } from '../pipeline/pipeline.js';
import { insertSettings } from '../storage/clickhouse.js';

/** Drops outbox lines from the head up to a sequence number (never one that was not written). */
const TRIM_LUA = `
local n = 0
local upto = tonumber(ARGV[1])
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local seq = tonumber(string.match(head, '^(%d+)'))
  if not seq or seq > upto then break end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n`;

type TrimCommand = (key: string, upto: string) => Promise<number>;

const BATCH = 1000;

/**
 * Copies credit ledger entries from each wallet's Redis outbox (appended atomically with the wallet change
 * that made them) to ClickHouse `credit_ledger`, then removes them from the outbox. Exactly once by
 * ordering: insert (idempotent: the table keeps one row per product, customer and seq), then trim up to the
 * last sequence number inserted. A crash in between re-inserts the same rows; two processors draining the
 * same outbox insert the same rows and each trims only what is written.
 */
export class CreditLedger {
  private readonly pending = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly redis: RedisLike,
    private readonly client: ClickHouseClient,
    private readonly currency: () => string,
    private readonly log: Logger,
    private readonly intervalMs = 200,
  ) {
    if (!('tollgateCreditsTrim' in redis))
      redis.defineCommand('tollgateCreditsTrim', { numberOfKeys: 1, lua: TRIM_LUA });
  }

  /** A wallet's outbox has entries: drain it soon. */
  notify(product: string, customer: string): void {
    this.pending.add(`${product}\t${customer}`);
    if (!this.timer && !this.closed) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.drain();
      }, this.intervalMs);
    }
  }

  /** Every wallet of these products (after a restart, an outbox may hold what the last run did not write). */
  async sweep(products: readonly string[]): Promise<void> {
    for (const product of products) {
      try {
        for (const customer of await this.redis.smembers(creditKeys.index(product)))
          this.notify(product, customer);
      } catch (err) {
        this.log.warn({ err: (err as Error).message, product }, 'credit wallets not listed (Redis)');
      }
    }
  }

  /** Drains the outboxes noted so far (and waits for a drain in progress). */
  async drain(): Promise<void> {
    while (this.running) await this.running;
    if (this.pending.size === 0) return;
    const work = [...this.pending];
    this.pending.clear();
    this.running = (async () => {
      for (const item of work) {
        const [product, customer] = item.split('\t') as [string, string];
        try {
          await this.drainOne(product, customer);
        } catch (err) {
          this.log.warn(
            { err: (err as Error).message, product, customer },
            'credit ledger entries not written yet; retrying',
          );
          this.pending.add(item);
        }
      }
    })();
    await this.running;
    this.running = undefined;
    if (this.pending.size && !this.timer && !this.closed) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.drain();
      }, 2000);
    }
  }

  private async drainOne(product: string, customer: string): Promise<void> {
    const key = creditKeys.outbox(customerTag(product, customer));
    for (;;) {
      const lines = await this.redis.lrange(key, 0, BATCH - 1);
      if (lines.length === 0) return;
      const entries = lines.map(decodeLedgerEntry).filter((e): e is LedgerEntry => e !== undefined);
      if (entries.length) {
        const currency = this.currency();
        await this.client.insert({
          table: 'credit_ledger',
          format: 'JSONEachRow',
          clickhouse_settings: insertSettings(),
          values: entries.map(
            (e): Record<CreditLedgerColumn, unknown> => ({
              product,
              customer,
              seq: e.seq,
              at: (e.atUnixMs / 1000).toFixed(3),
              entry_type: e.type,
              bucket: e.bucket,
              amount_nano: e.amountNano.toString(),
              currency,
              period: e.period,
              event_ids: e.eventIds,
              event_amounts_nano: e.amountsNano.map(String),
              actor: e.actor,
              note: e.note,
            }),
          ),
        });
      }
      const last = lines[lines.length - 1] as string;
      const upto = /^(\d+)/.exec(last)?.[1] ?? '0';
      const trim = (this.redis as unknown as { tollgateCreditsTrim: TrimCommand }).tollgateCreditsTrim.bind(
        this.redis,
      );
      await trim(key, upto);
      if (lines.length < BATCH) return;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.drain().catch(() => {});
  }
}
