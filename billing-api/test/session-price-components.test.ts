import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ClickHouseHandle,
  insertSettings,
  migrate,
  openClickHouse,
} from '../../collector-processor/src/storage/clickhouse.js';
import { financeApi } from './support/finance-api.js';

/**
 * A session's drill-down gives each call's price and its components. A call with usage lines (cached input
 * tokens, reasoning tokens, …) has part of its price in them: price_nano = call + input + output + duration +
 * sum(usage_price_nano) (migration 0013). Before this test the components shown stopped at duration, so for
 * such a call they fell short of the price by the usage amount, and finance could not reconcile the call.
 * The row is the shape the pipeline lands for the rate-plans.md example: 1,234 input tokens of which 1,000
 * cached (priced on 234 at 0.000001 and 1,000 at 0.0000003), 30 ms at 0.0001 per second, 0.002 per call.
 */

const KEY = 'tg_test_components_key';
const P = 'components-mcp';
const dir = mkdtempSync(join(tmpdir(), 'tollgate-components-'));
let ch: ClickHouseHandle;

beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  await migrate(ch.client);
  await ch.client.command({
    query: `INSERT INTO mcp_tool_calls (event_id, product, customer, agent, session_id, tool, status, started_at,
        period, currency, decision, tier, duration_us, input_tokens, output_tokens, input_tokens_priced,
        price_nano, price_call_nano, price_input_nano, price_output_nano, price_duration_nano, cost_nano,
        usage_lines, usage_quantity_micro, usage_unit_nano, usage_price_nano, usage_cost_nano)
      VALUES ('e1', '${P}', 'acme', 'a1', 's1', 'search_docs', 'ok', toDateTime64('2026-03-10 10:00:00', 6, 'UTC'),
        '2026-03', 'USD', 'billed', 1, 30000, 1234, 0, 234,
        2537000, 2000000, 234000, 0, 3000, 546800,
        ['cached_input_tokens'], [1000000000], [300], [300000], [0])`,
    clickhouse_settings: insertSettings('components-1'),
  });
}, 120_000);
afterAll(async () => {
  await ch?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('session drill-down: price components', () => {
  it('add up to the price, usage lines included, in JSON and CSV', async () => {
    const app = financeApi(ch.readClient(), KEY, P, 'views');
    try {
      const res = await app.inject({
        url: `/analytics/mcp/sessions/s1?product=${P}`,
        headers: { authorization: `Bearer ${KEY}` },
      });
      expect(res.statusCode, res.body).toBe(200);
      const [call] = res.json<{ calls: Record<string, string>[] }>().calls;
      expect(call).toMatchObject({
        priceNano: '2537000',
        priceCallNano: '2000000',
        priceInputNano: '234000',
        priceOutputNano: '0',
        priceDurationNano: '3000',
        priceUsageNano: '300000',
      });
      const parts = [
        'priceCallNano',
        'priceInputNano',
        'priceOutputNano',
        'priceDurationNano',
        'priceUsageNano',
      ];
      expect(parts.reduce((a, k) => a + BigInt(call?.[k] ?? 'x'), 0n)).toBe(BigInt(call?.priceNano ?? 'x'));

      const csv = await app.inject({
        url: `/analytics/mcp/sessions/s1?product=${P}&format=csv`,
        headers: { authorization: `Bearer ${KEY}` },
      });
      const [head, row] = csv.body.split('\r\n').map((l) => l.split(','));
      const at = (name: string) => row?.[head?.indexOf(name) ?? -1];
      expect([at('priceNano'), at('priceUsageNano')]).toEqual(['2537000', '300000']);
    } finally {
      await app.close();
    }
  });
});
