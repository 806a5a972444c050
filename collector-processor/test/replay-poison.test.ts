import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AcceptedRecord } from '../src/spool/spool.js';
import {
  DEV_INGEST_KEY,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
} from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * A spool record the replay cannot process (its payload no longer decodes) used to stop the replay at start:
 * every record after it stayed unlanded until a restart, which stopped at the same record again. Now it is
 * reported and left in the spool, and the replay goes on.
 */
let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
});
afterAll(async () => {
  await tg?.cleanup();
});

const record = (rid: string, format: AcceptedRecord['format'], payload: Buffer): AcceptedRecord => ({
  t: 'a',
  rid,
  product: 'demo-mcp',
  planVersion: tg.plans!.current.version,
  receivedAtMs: Date.now(),
  format,
  payload,
});

describe('a spool replay past a record it cannot process', () => {
  it('reports the record and lands the ones after it', async () => {
    const customer = 'after-poison';
    const spans = Array.from({ length: 3 }, () => toolSpan({ customer, tool: 'lookup' }));
    // a length-delimited field 1 whose length runs past the body: the framing of the request is broken
    const broken = record('poison-1', 'otlp-protobuf', Buffer.from([0x0a, 0xff, 0x01]));
    const good = record('after-1', 'otlp-json', Buffer.from(JSON.stringify(exportOf(spans))));
    const before = (await readMetrics(tg.apiUrl!)).get('tollgate_spool_replay_failures_total') ?? 0;
    await tg.pipeline!.replay([broken, good]);
    expect((await readMetrics(tg.apiUrl!)).get('tollgate_spool_replay_failures_total')).toBe(before + 1);
    await tg.lander!.idle();
    const rows = await query(
      tg,
      'SELECT span_id FROM mcp_tool_calls WHERE customer = {c:String} ORDER BY span_id',
      {
        c: customer,
      },
    );
    expect(rows.map((r) => r.span_id)).toEqual(spans.map((s) => s.spanId).sort());
  });
});

describe('an export that fails after its calls were claimed', () => {
  it("is finished in the background: its calls land once, and the sender's retry finds them counted", async () => {
    const customer = 'failed-after-claim';
    const spans = Array.from({ length: 4 }, () => toolSpan({ customer, tool: 'lookup' }));
    const body = JSON.stringify(exportOf(spans));
    const send = () =>
      fetch(`${tg.otlpUrl}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
        body,
      });
    // the hand-off to the lander fails once, after claims, rating and enforcement (as an encoder error would)
    const lander = tg.lander as unknown as { enqueue: (...a: unknown[]) => void };
    const enqueue = lander.enqueue;
    let failures = 0;
    lander.enqueue = function (this: unknown, ...a: unknown[]) {
      if (failures++ === 0) throw new Error('injected: hand-off failed');
      return enqueue.apply(this, a);
    };
    try {
      expect((await send()).status).toBe(503); // TG_INTERNAL, retryable
      // the background replay lands the record's calls (the sender's retry alone would find them claimed)
      const landed = async () =>
        (
          await query(tg, 'SELECT count() n FROM mcp_tool_calls WHERE customer = {c:String}', { c: customer })
        )[0]?.n;
      const deadline = Date.now() + 10_000;
      while ((await landed()) !== '4' && Date.now() < deadline) {
        await tg.lander!.idle();
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(await landed()).toBe('4');
      expect((await send()).status).toBe(200); // the retry
      await tg.lander!.idle();
      expect(await landed()).toBe('4');
    } finally {
      lander.enqueue = enqueue;
    }
  });
});
