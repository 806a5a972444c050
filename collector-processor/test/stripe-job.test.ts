import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import type { SyncReport } from '../src/stripe/report.js';
import { type FakeStripe, startFakeStripe } from './support/fake-stripe.js';
import { DEV_INGEST_KEY, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * The Stripe sync as a background job of `tollgate start` (stripe.sync.enabled): it pushes closed days of
 * the previous and current periods on its own, writes its report, and its reruns push nothing more.
 */

const DAY = 86_400_000;
let tg: TestTollgate;
let fake: FakeStripe;
let dir: string;

beforeAll(async () => {
  fake = await startFakeStripe({ customers: ['cus_acme'] });
  dir = tempDir('tollgate-stripe-job-');
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: dev, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
stripe:
  product: demo-mcp
  customers: { acme: cus_acme }
  lines:
    - { name: usage, components: [call, input_tokens, output_tokens], push: amount }
`,
  );
  tg = await startTestTollgate({
    '--data-dir': dir,
    '--config': configFile,
    '--stripe-sync': 'true',
    '--stripe-sync-interval': '1',
    '--stripe-secret-key': fake.secretKey,
    '--stripe-host': fake.host,
    '--stripe-port': String(fake.port),
    '--stripe-protocol': 'http',
  });
  // Three days ago, midday: closed and settled, in the previous or the current period whatever today is.
  const startMs = Math.floor((Date.now() - 3 * DAY) / DAY) * DAY + 12 * 3_600_000;
  const spans = Array.from({ length: 5 }, (_, i) =>
    toolSpan({ customer: 'acme', startMs: startMs + i * 1000 }),
  );
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans)),
  });
  expect(res.status).toBe(200);
  await tg.lander?.idle();
}, 120_000);

afterAll(async () => {
  await tg?.cleanup();
  await fake?.close();
});

describe('the background job', () => {
  it('pushes the closed day without being asked, reports it reconciled, and its next runs push nothing', async () => {
    const reportFile = join(dir, 'stripe', 'report-latest.json');
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && fake.items.length === 0) await new Promise((r) => setTimeout(r, 200));
    expect(fake.items).toHaveLength(1);
    const [row] = (await (
      await tg.clickhouse.client.query({
        query: "SELECT sum(price_nano) AS nano FROM mcp_tool_calls WHERE customer = 'acme'",
        format: 'JSONEachRow',
      })
    ).json()) as { nano: string }[];
    const nano = BigInt(row?.nano ?? '-1');
    expect(nano).toBeGreaterThan(0n);
    expect(fake.items[0]?.amount).toBe(Number((nano + 5_000_000n) / 10_000_000n));
    // let a few more runs go by: the ledger keeps them from pushing again
    const runsBefore = fake.requests.filter((r) => r.method === 'GET').length;
    while (fake.requests.filter((r) => r.method === 'GET').length < runsBefore + 4)
      await new Promise((r) => setTimeout(r, 200));
    expect(fake.requests.filter((r) => r.method === 'POST')).toHaveLength(1);
    expect(existsSync(reportFile)).toBe(true);
    const report = JSON.parse(readFileSync(reportFile, 'utf8')) as SyncReport;
    const usage = report.rows.filter((r) => r.line === 'usage' && r.tollgateNano !== '0');
    expect(usage).toHaveLength(1);
    // calls and tokens in one amount line: no quantity to show (they count different things)
    expect(usage[0]).toMatchObject({
      status: 'reconciled',
      tollgateNano: nano.toString(),
      tollgateQuantity: null,
    });
  }, 60_000);
});
