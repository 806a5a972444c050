import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
});
afterAll(async () => {
  await tg?.cleanup();
});

const send = (body: unknown, gzip = false) =>
  fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${DEV_INGEST_KEY}`,
      ...(gzip ? { 'content-encoding': 'gzip' } : {}),
    },
    body: gzip ? gzipSync(JSON.stringify(body)) : JSON.stringify(body),
  });

describe('retried exports are counted once', () => {
  it('the same batch sent three times lands once, with the same prices', async () => {
    const customer = 'retrying-exporter';
    const spans = Array.from({ length: 50 }, () => toolSpan({ customer, tool: 'search_docs' }));
    const batch = exportOf(spans);
    for (let i = 0; i < 3; i++) expect((await send(batch, i === 1)).status).toBe(200);
    // a retry re-batched differently by a Collector: a subset plus new spans
    const extra = toolSpan({ customer, tool: 'search_docs' });
    expect((await send(exportOf([...spans.slice(10, 20), extra]))).status).toBe(200);
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      `SELECT count() n, uniqExact(event_id) ids, sum(price_nano) revenue, countIf(decision = 'free') free
       FROM mcp_tool_calls WHERE customer = {c:String}`,
      { c: customer },
    );
    // 51 calls: 2 free, 49 × (0.004 + 10 × 0.000001 + 20 × 0.000003)
    expect(row).toEqual({ n: '51', ids: '51', revenue: String(49 * 4_070_000), free: '2' });
    const [views] = await query(tg, 'SELECT sum(calls) n FROM mcp_daily_stats WHERE customer = {c:String}', {
      c: customer,
    });
    expect(views).toEqual({ n: '51' });
  });

  it('concurrent duplicates of one batch still land once', async () => {
    const customer = 'racing-retries';
    const batch = exportOf(Array.from({ length: 30 }, () => toolSpan({ customer })));
    const statuses = await Promise.all(Array.from({ length: 6 }, () => send(batch).then((r) => r.status)));
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200]);
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      'SELECT count() n, uniqExact(event_id) ids FROM mcp_tool_calls WHERE customer = {c:String}',
      { c: customer },
    );
    expect(row).toEqual({ n: '30', ids: '30' });
  });
});
