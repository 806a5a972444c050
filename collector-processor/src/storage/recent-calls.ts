import type { ClickHouseClient } from '@clickhouse/client';
import type { RecentBatch } from '../pipeline/pipeline.js';

/** How far back the landed calls are read (by when they were received): a sender's retries come within it. */
const RECENT_WINDOW_MINUTES = 60;

/**
 * The calls landed lately — the newest `max` received in the last hour, of spans started within the span-age
 * window (which keeps the read to the partitions that can hold them) — as the process's dedup keeps them:
 * product, customer, UTC day of the start (days since the epoch, as `utcDay`) and event id, one batch per
 * product, oldest first.
 */
export async function readRecentCalls(
  client: ClickHouseClient,
  maxSpanAgeHours: number,
  max: number,
): Promise<RecentBatch[]> {
  const rs = await client.query({
    query: `SELECT product, customer, toInt32(intDiv(toUnixTimestamp64Micro(started_at), 86400000000)) AS day, event_id
FROM mcp_tool_calls
WHERE started_at >= now64(6) - toIntervalHour({age:UInt32})
  AND received_at >= now64(3) - toIntervalMinute({window:UInt32})
ORDER BY received_at DESC
LIMIT {max:UInt32}`,
    query_params: { age: maxSpanAgeHours + 1, window: RECENT_WINDOW_MINUTES, max },
    format: 'JSONCompactEachRow',
  });
  const rows = (await rs.json()) as [string, string, number, string][];
  const byProduct = new Map<string, { ids: string[]; customers: string[]; days: number[] }>();
  for (let i = rows.length - 1; i >= 0; i--) {
    const [product, customer, day, id] = rows[i] as [string, string, number, string];
    let b = byProduct.get(product);
    if (!b) {
      b = { ids: [], customers: [], days: [] };
      byProduct.set(product, b);
    }
    b.ids.push(id);
    b.customers.push(customer);
    b.days.push(Number(day));
  }
  return [...byProduct].map(([product, b]) => ({
    product,
    ids: b.ids,
    customers: b.customers,
    days: Int32Array.from(b.days),
  }));
}
