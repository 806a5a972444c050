import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ClickHouseHandle,
  insertSettings,
  migrate,
  openClickHouse,
  readMigrations,
} from '../../collector-processor/src/storage/clickhouse.js';
import { financeApi } from './support/finance-api.js';

/**
 * Every call's price fits an Int64 of nano-units (the pipeline rejects one that could not:
 * `amount_out_of_range`), but a sum of them need not: 9.2 billion units of currency is a month of a large
 * customer in a currency of small units (IDR, VND), or of a tenant over many customers and months. ClickHouse
 * sums an Int64 column as an Int64 and wraps past 2^63 − 1 without an error, so before this test the API
 * answered a negative revenue (−8,446,744,073.709551616 for two calls of 5,000,000,000) and an invoice preview
 * whose lines "reconciled" with the same wrapped sum. CALLS sit in different rows of every daily view (one per
 * customer, day, agent and session), so only the sums across rows exceed an Int64 (the readers sum in Int128);
 * ONE_ROW's two calls share one row of every view, which holds more than an Int64 after migration 0017 (the
 * first call landed before it, then the views are merged). Answers must be exact, from the views and the raw
 * table alike.
 */

const KEY = 'tg_test_int64_sums_key';
const P = 'huge-mcp';
const dir = mkdtempSync(join(tmpdir(), 'tollgate-int64-sums-'));
let ch: ClickHouseHandle;

const FIVE = 5_000_000_000_000_000_000n; // 5,000,000,000 units of currency
const FOUR = 4_000_000_000_000_000_000n;
// [customer, agent, session, started_at, price_nano]
const CALLS: [string, string, string, string, bigint][] = [
  ['c1', 'a1', 's1', '2026-03-10 10:00:00', FIVE],
  ['c1', 'a2', 's2', '2026-03-11 10:00:00', FIVE],
  ['c2', 'a1', 's3', '2026-03-12 10:00:00', FIVE],
  ['c1', 'a1', 's4', '2026-03-13 10:00:00', FOUR],
];

const apps = {
  views: () => financeApi(ch.readClient(), KEY, P, 'views'),
  raw: () => financeApi(ch.readClient(), KEY, P, 'raw'),
};

/** Both in one row of every view (same customer, day, agent, tool and session): the first lands before 0017. */
const ONE_ROW = 'one-row-mcp';

beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  await migrate(
    ch.client,
    readMigrations().filter((m) => m.version < 17),
  );
  const oneRow = async (i: number) =>
    ch.client.command({
      query: `INSERT INTO mcp_tool_calls (event_id, product, customer, agent, session_id, tool, status, started_at,
          period, currency, decision, tier, price_nano, price_call_nano, cost_nano)
        VALUES ('one${i}', '${ONE_ROW}', 'c1', 'a1', 's1', 'huge', 'ok',
          toDateTime64('2026-03-10 1${i}:00:00', 6, 'UTC'), '2026-03', 'USD', 'billed', 1, ${FIVE}, ${FIVE}, 1)`,
      clickhouse_settings: insertSettings(`int64-one-row-${i}`),
    });
  await oneRow(0);
  await migrate(ch.client);
  await oneRow(1);
  for (const [i, [customer, agent, session, at, price]] of CALLS.entries()) {
    await ch.client.command({
      query: `INSERT INTO mcp_tool_calls (event_id, product, customer, agent, session_id, tool, status, started_at,
          period, currency, decision, tier, price_nano, price_call_nano, cost_nano)
        VALUES ('e${i}', '${P}', '${customer}', '${agent}', '${session}', 'huge', 'ok',
          toDateTime64('${at}', 6, 'UTC'), '2026-03', 'USD', 'billed', 1, ${price}, ${price}, 1)`,
      clickhouse_settings: insertSettings(`int64-sums-${i}`),
    });
  }
}, 120_000);
afterAll(async () => {
  await ch?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function get<T = Record<string, unknown>>(source: 'views' | 'raw', url: string): Promise<T> {
  const app = apps[source]();
  try {
    const res = await app.inject({ url, headers: { authorization: `Bearer ${KEY}` } });
    expect(res.statusCode, res.body).toBe(200);
    return res.json<T>();
  } finally {
    await app.close();
  }
}

type Row = Record<string, unknown>;
const money = (nano: bigint) => expect.objectContaining({ revenueNano: nano.toString() });

describe('sums past Int64 nano-units', () => {
  for (const source of ['views', 'raw'] as const) {
    for (const range of ['period=2026-03', 'from=2026-03-10T05:00:00Z&to=2026-03-13T12:00:00Z']) {
      it(`${source}, ${range}: summary, by-customer, by-tool and the CSV are exact`, async () => {
        const q = `product=${P}&${range}`;
        const summary = await get<Row>(source, `/analytics/mcp/summary?${q}`);
        expect(summary).toMatchObject({
          revenueNano: '19000000000000000000',
          revenue: '19000000000.00',
          costNano: '4',
          marginNano: '18999999999999999996',
          margin: '18999999999.999999996',
          marginBps: 9999,
          calls: 4,
        });
        const byCustomer = await get<{ rows: Row[] }>(source, `/analytics/mcp/by-customer?${q}`);
        expect(byCustomer.rows).toEqual([
          expect.objectContaining({
            customer: 'c1',
            revenueNano: '14000000000000000000',
            revenue: '14000000000.00',
          }),
          expect.objectContaining({ customer: 'c2', revenueNano: '5000000000000000000' }),
        ]);
        const byTool = await get<{ rows: Row[] }>(source, `/analytics/mcp/revenue/by-tool?${q}`);
        expect(byTool.rows).toEqual([money(19_000_000_000_000_000_000n)]);
        const byAgent = await get<{ rows: Row[] }>(source, `/analytics/mcp/by-agent?${q}&bucket=day`);
        expect(byAgent.rows.map((r) => r.revenueNano)).toEqual(CALLS.map((c) => c[4].toString()));
        const app = apps[source]();
        try {
          const csv = await app.inject({
            url: `/analytics/mcp/summary?${q}&format=csv`,
            headers: { authorization: `Bearer ${KEY}` },
          });
          expect(csv.body).toContain(',19000000000000000000,19000000000.00,');
        } finally {
          await app.close();
        }
      });
    }
  }

  it('two calls in one row of every view, merged, the first landed before migration 0017: exact', async () => {
    for (const view of [
      'mcp_daily_stats',
      'mcp_tool_daily_stats',
      'mcp_customer_daily_stats',
      'mcp_session_daily',
      'mcp_session_summary',
    ])
      await ch.client.command({ query: `OPTIMIZE TABLE ${view} FINAL` });
    const TEN = '10000000000000000000';
    const apiOf = (source: 'views' | 'raw') => financeApi(ch.readClient(), KEY, ONE_ROW, source);
    for (const source of ['views', 'raw'] as const) {
      const app = apiOf(source);
      const get1 = async <T = Row>(url: string): Promise<T> => {
        const res = await app.inject({ url, headers: { authorization: `Bearer ${KEY}` } });
        expect(res.statusCode, res.body).toBe(200);
        return res.json<T>();
      };
      try {
        const q = `product=${ONE_ROW}&period=2026-03`;
        expect(await get1(`/analytics/mcp/summary?${q}`)).toMatchObject({ revenueNano: TEN, sessions: 1 });
        for (const path of ['by-customer', 'revenue/by-tool', 'by-agent', 'sessions'])
          expect((await get1<{ rows: Row[] }>(`/analytics/mcp/${path}?${q}`)).rows, path).toEqual([
            expect.objectContaining({ revenueNano: TEN, revenue: '10000000000.00', costNano: '2' }),
          ]);
        expect(
          (await get1<{ totals: Row }>(`/analytics/mcp/sessions/s1?product=${ONE_ROW}`)).totals,
        ).toMatchObject({ revenueNano: TEN, calls: 2 });
        // a past range (calls follow it): the sessions come from the lifetime view
        const past = await get1<{ rows: Row[] }>(
          `/analytics/mcp/sessions?product=${ONE_ROW}&from=2026-03-10T10:00:00Z&to=2026-03-10T10:30:00Z`,
        );
        expect(past.rows).toEqual([expect.objectContaining({ revenueNano: TEN })]);
      } finally {
        await app.close();
      }
    }
  });

  it('the invoice preview: lines, totals and reconciliation exact', async () => {
    const inv = await get<{
      lines: Row[];
      totals: Row;
      reconciliation: Row;
    }>('views', `/billing/invoices/preview?product=${P}&customer=c1&period=2026-03`);
    expect(inv.lines).toEqual([
      expect.objectContaining({
        component: 'call',
        unitPriceNano: String(FOUR),
        quantity: '1',
        amountNano: String(FOUR),
      }),
      expect.objectContaining({
        component: 'call',
        unitPriceNano: String(FIVE),
        quantity: '2',
        amountNano: '10000000000000000000',
        amount: '10000000000.00',
      }),
    ]);
    expect(inv.totals).toMatchObject({
      amountNano: '14000000000000000000',
      callsAmountNano: '14000000000000000000',
      revenueNano: '14000000000000000000',
      marginNano: '13999999999999999997',
    });
    expect(inv.reconciliation).toEqual({
      rawPriceNano: '14000000000000000000',
      linesNano: '14000000000000000000',
      reconciled: true,
    });
  });
});
