import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  TEST_PLANS,
  type TestTollgate,
} from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
});
afterAll(async () => {
  await tg?.cleanup();
});

const send = (customer: string, n = 1) =>
  fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(
      exportOf(Array.from({ length: n }, () => toolSpan({ customer, tool: 'other_tool' }))),
    ),
  });

async function waitFor(cond: () => boolean, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('rate-plan hot reload', () => {
  it('a valid edit takes effect; a bad edit keeps the old plans and says why', async () => {
    const file = join(tg.dataDir, 'plans.yaml');
    const v1 = tg.plans!.current.version;
    await send('reload-customer', 3); // 2 free + 1 at 0.002
    writeFileSync(file, TEST_PLANS.replace('perCall: "0.002"', 'perCall: "0.003"'));
    await waitFor(() => tg.plans!.current.version !== v1);
    const v2 = tg.plans!.current.version;
    await send('reload-customer');

    writeFileSync(
      file,
      TEST_PLANS.replace('perCall: "0.003"', 'perCall: "-1"').replace(
        'freeCallsPerMonth: 2',
        'freeCallsPerMonth: lots',
      ),
    );
    await waitFor(() => tg.plans!.lastError !== undefined);
    expect(tg.plans!.current.version).toBe(v2);
    expect(tg.plans!.lastError).toContain('freeCallsPerMonth: must be a whole number');
    const ready = (await (await fetch(`${tg.apiUrl}/readyz`)).json()) as {
      checks: { name: string; detail: string }[];
    };
    expect(ready.checks.find((c) => c.name === 'plans')?.detail).toContain('last reload rejected');
    await send('reload-customer');

    await tg.lander!.idle();
    const rows = await query(
      tg,
      "SELECT plan_version, price_nano FROM mcp_tool_calls WHERE customer = 'reload-customer' ORDER BY received_at, price_nano",
    );
    expect(rows).toEqual([
      { plan_version: v1, price_nano: '0' },
      { plan_version: v1, price_nano: '0' },
      { plan_version: v1, price_nano: '2000000' },
      { plan_version: v2, price_nano: '3000000' },
      { plan_version: v2, price_nano: '3000000' },
    ]);
  });
});

describe('graceful shutdown', () => {
  it('finishes in-flight exports, refuses new ones, and lands everything acknowledged', async () => {
    const inflight = Array.from({ length: 12 }, () =>
      send('shutdown-customer', 100)
        .then(async (r) => ({ status: r.status, body: await r.text() }))
        .catch(() => ({ status: 0, body: '' })),
    );
    // stop while exports are inside the pipeline
    const deadline = Date.now() + 5000;
    while (((await tg.metrics.inFlight.get()).values[0]?.value ?? 0) === 0 && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
    }
    expect((await tg.metrics.inFlight.get()).values[0]?.value).toBeGreaterThan(0);
    const stopping = tg.stop();
    const late = await send('shutdown-customer', 1)
      .then((r) => r.status)
      .catch(() => 0);
    expect([0, 503]).toContain(late);
    const results = await Promise.all(inflight);
    await stopping;
    const ok = results.filter((r) => r.status === 200).length;
    expect(ok).toBeGreaterThan(0);
    for (const r of results) expect([0, 200, 503]).toContain(r.status);

    // reopen the same data directory: everything acknowledged is there, once
    const again = await startTestTollgate({ '--data-dir': tg.dataDir });
    tg = again;
    await again.lander!.idle();
    const [row] = await query(
      again,
      "SELECT count() AS n, uniqExact(span_id) AS ids FROM mcp_tool_calls WHERE customer = 'shutdown-customer'",
    );
    expect(Number(row?.n)).toBe(ok * 100);
    expect(row?.ids).toBe(row?.n);
  });
});
