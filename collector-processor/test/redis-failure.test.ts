import { afterEach, describe, expect, it } from 'vitest';
import { type PrivateRedis, startPrivateRedis } from '../src/redis/private-redis.js';
import {
  DEV_INGEST_KEY,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
} from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

let tg: TestTollgate | undefined;
let redis: PrivateRedis | undefined;
afterEach(async () => {
  await tg?.cleanup();
  await redis?.stop();
  tg = undefined;
  redis = undefined;
});

async function send(customer: string, n: number) {
  const spans = Array.from({ length: n }, () => toolSpan({ customer }));
  const res = await fetch(`${tg!.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans)),
  });
  await res.arrayBuffer();
  return { status: res.status, retryAfter: res.headers.get('retry-after'), ids: spans.map((s) => s.spanId) };
}

async function metric(name: string): Promise<number> {
  return (await readMetrics(tg!.apiUrl as string)).get(name) ?? 0;
}

describe('Redis stops in the middle of a load', () => {
  it('fail-open (default): calls are billed and marked unenforced, the gap is counted, enforcement resumes', async () => {
    redis = await startPrivateRedis();
    // 150 free calls a month: the outage's calls continue the positions Redis gave before it
    tg = await startTestTollgate(
      { '--redis-url': redis.url },
      `
currency: USD
products:
  demo-mcp:
    defaultPlan: free150
    plans:
      free150:
        freeCallsPerMonth: 150
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
`,
    );
    const acked: string[] = [];
    for (let i = 0; i < 5; i++) acked.push(...(await send('open-co', 20)).ids);
    await redis.stop();
    const outageIds: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await send('open-co', 20);
      expect(r.status).toBe(200);
      acked.push(...r.ids);
      outageIds.push(...r.ids);
    }
    expect(await metric('tollgate_calls_unenforced_total')).toBe(100);
    expect(await metric('tollgate_redis_errors_total')).toBeGreaterThan(0);
    const ready = (await (await fetch(`${tg.apiUrl}/readyz`)).json()) as {
      checks: { name: string; ok: boolean; detail?: string }[];
    };
    expect(ready.checks.find((c) => c.name === 'redis')).toEqual({
      name: 'redis',
      ok: true,
      detail: 'unreachable',
    });

    // Redis comes back (empty, on the same port): enforcement resumes on the next exports
    redis = await startPrivateRedis({ port: redis.port });
    let resumed = false;
    for (let i = 0; i < 50 && !resumed; i++) {
      const r = await send('open-co', 1);
      acked.push(...r.ids);
      await tg.lander!.idle();
      const [last] = await query(tg, `SELECT decision FROM mcp_tool_calls WHERE span_id = '${r.ids[0]}'`);
      resumed = last?.decision !== 'unenforced';
      if (!resumed) await new Promise((res) => setTimeout(res, 100));
    }
    expect(resumed).toBe(true);
    await tg.lander!.idle();
    const rows = await query<{ decision: string; n: string }>(
      tg,
      "SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = 'open-co' GROUP BY decision ORDER BY decision",
    );
    const byDecision = Object.fromEntries(rows.map((r) => [r.decision, Number(r.n)]));
    expect(byDecision.unenforced).toBeGreaterThanOrEqual(100);
    expect(Object.values(byDecision).reduce((a, b) => a + b, 0)).toBe(acked.length);
    // the 100 calls before the outage took positions 1–100 in Redis; the outage's 100 went on from there
    // locally (101–200), so the last 50 of them were past the free allowance
    const [outage] = await query(
      tg,
      `SELECT countIf(price_nano > 0) AS priced, countIf(price_nano = 0) AS free FROM mcp_tool_calls WHERE span_id IN (${outageIds.map((id) => `'${id}'`).join(',')})`,
    );
    expect(outage).toEqual({ priced: '50', free: '50' });
  });

  it('fail-closed: exports get a retryable 503; retried after Redis is back, every call lands once', async () => {
    redis = await startPrivateRedis();
    tg = await startTestTollgate({ '--redis-url': redis.url, '--redis-fail-mode': 'closed' });
    const batches = Array.from({ length: 10 }, () =>
      Array.from({ length: 20 }, () => toolSpan({ customer: 'closed-co' })),
    );
    const post = (spans: ReturnType<typeof toolSpan>[]) =>
      fetch(`${tg!.otlpUrl}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
        body: JSON.stringify(exportOf(spans)),
      });
    const pending: ReturnType<typeof toolSpan>[][] = [];
    for (const [i, b] of batches.entries()) {
      if (i === 4) await redis.stop();
      const res = await post(b);
      const text = await res.text();
      if (res.status !== 200) {
        expect(text).toContain('TG_REDIS_UNAVAILABLE');
        expect(res.status).toBe(503);
        expect(res.headers.get('retry-after')).toBe('2');
        pending.push(b);
      }
    }
    expect(pending.length).toBe(6);
    redis = await startPrivateRedis({ port: redis.port });
    // the exporter retries what was refused
    for (const b of pending) {
      for (let attempt = 0; ; attempt++) {
        const res = await post(b);
        await res.arrayBuffer();
        if (res.status === 200) break;
        expect(attempt).toBeLessThan(100);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await new Promise((r) => setTimeout(r, 1500)); // background completion of the refused records
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      "SELECT count() AS n, uniqExact(span_id) AS ids, countIf(decision = 'unenforced') AS unenforced FROM mcp_tool_calls WHERE customer = 'closed-co'",
    );
    expect(row).toEqual({ n: '200', ids: '200', unenforced: '0' });
  });
});
