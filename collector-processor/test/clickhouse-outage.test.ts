import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate({ '--landing-max-backlog': '6000' });
});
afterAll(async () => {
  await tg?.cleanup();
});

const send = (body: string) =>
  fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body,
  });

/**
 * A real ClickHouse failure: with parts_to_throw_insert = 1 the engine refuses every insert into a
 * partition that already has a part ("Too many parts", what an overloaded server answers).
 */
async function breakInserts(on: boolean) {
  await tg.clickhouse.client.command({
    query: on
      ? 'ALTER TABLE mcp_tool_calls MODIFY SETTING parts_to_throw_insert = 1, parts_to_delay_insert = 1, max_delay_to_insert = 0'
      : 'ALTER TABLE mcp_tool_calls MODIFY SETTING parts_to_throw_insert = 3000, parts_to_delay_insert = 1000',
  });
}

describe('ClickHouse unavailable for a while under load', () => {
  it('acknowledges into the spool, refuses with 503 past the backlog limit, and lands everything once after recovery', async () => {
    // one part in this month's partition, so the next insert hits the limit
    expect((await send(JSON.stringify(exportOf([toolSpan({ customer: 'outage' })])))).status).toBe(200);
    await tg.lander!.idle();
    await breakInserts(true);

    const acked: string[] = [];
    let refused = 0;
    let retryAfter: string | null = null;
    for (let b = 0; b < 40; b++) {
      const spans = Array.from({ length: 200 }, () => toolSpan({ customer: 'outage' }));
      const res = await send(JSON.stringify(exportOf(spans)));
      await res.arrayBuffer();
      if (res.status === 200) acked.push(...spans.map((s) => s.spanId));
      else {
        expect(res.status).toBe(503);
        retryAfter = res.headers.get('retry-after');
        refused++;
      }
    }
    // The backlog limit (6000 rows) is reached after 30 batches; the rest are refused as retryable.
    expect(acked.length).toBe(6000);
    expect(refused).toBe(10);
    expect(retryAfter).toBe('5');
    expect(tg.lander!.lastError?.message).toMatch(/Too many parts/);
    const ready = await fetch(`${tg.apiUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(JSON.stringify(await ready.json())).toContain('Too many parts');

    await breakInserts(false);
    await tg.lander!.idle(60_000);
    const rows = await query<{ span_id: string; n: string }>(
      tg,
      "SELECT span_id, count() AS n FROM mcp_tool_calls WHERE customer = 'outage' GROUP BY span_id",
    );
    expect(rows.length).toBe(6001);
    expect(rows.every((r) => r.n === '1')).toBe(true);
    const landed = new Set(rows.map((r) => r.span_id));
    expect(acked.every((id) => landed.has(id))).toBe(true);
    expect((await fetch(`${tg.apiUrl}/readyz`)).status).toBe(200);
    const [mv] = await query(tg, "SELECT sum(calls) AS c FROM mcp_daily_stats WHERE customer = 'outage'");
    expect(mv).toEqual({ c: '6001' });
  });
});
