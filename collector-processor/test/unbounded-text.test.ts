import { type RatedCall, redisKeys } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { RedisEnforcer } from '../src/enforcement/enforcer.js';
import { EnforcementLog } from '../src/enforcement/events.js';
import { query, sendExport, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import { BASE_RATED_CALL } from './support/rated-call.js';

/**
 * Text a sender controls that is neither money nor identity: `error.type` and `mcp.protocol.version` were
 * landed whole (a 2 MB value in the row, in session drill-downs and CSV), and `service.instance.id` became
 * a Redis key and an entry of a map the process never emptied. Text is cut to 256 characters, an instance
 * id that is not an identifier is treated as absent, and the map forgets instances it has not seen for
 * five minutes.
 */
let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
});
afterAll(async () => {
  await tg?.cleanup();
});

const send = (spans: ReturnType<typeof toolSpan>[], resource: Record<string, string>) =>
  sendExport(tg, JSON.stringify(exportOf(spans, resource)));

describe('free text on a span', () => {
  it('a 2 MB error.type and protocol version are cut to 256 characters; the call is landed', async () => {
    const customer = 'long-text';
    // a surrogate pair straddles the cut: it is not split
    const errorType = `${'e'.repeat(255)}😀${'x'.repeat(2_000_000)}`;
    const version = 'v'.repeat(2_000_000);
    const body = await send(
      [
        toolSpan({
          customer,
          attrs: { 'error.type': errorType, 'mcp.protocol.version': version },
        }),
      ],
      { 'service.name': 'mcp' },
    );
    expect(body.partialSuccess?.rejectedSpans ?? '0').toBe('0');
    await tg.lander!.idle();
    const rows = await query(
      tg,
      `SELECT status, error_type, length(error_type) et, protocol_version pv
       FROM mcp_tool_calls WHERE customer = {c:String}`,
      { c: customer },
    );
    expect(rows).toEqual([{ status: 'error', error_type: 'e'.repeat(255), et: '255', pv: 'v'.repeat(256) }]);
  });

  it('a service.instance.id over 256 characters is not a Redis key: the call lands without one', async () => {
    const customer = 'long-instance';
    const instance = 'i'.repeat(100_000);
    await send([toolSpan({ customer })], { 'service.name': 'mcp', 'service.instance.id': instance });
    await tg.lander!.idle();
    expect(await tg.redis!.exists(redisKeys.instance(instance))).toBe(0);
    const rows = await query(tg, `SELECT instance_id FROM mcp_tool_calls WHERE customer = {c:String}`, {
      c: customer,
    });
    expect(rows).toEqual([{ instance_id: '' }]);
  });
});

describe("the enforcer's memory of SDK instances", () => {
  it('forgets instances not seen for five minutes', async () => {
    const events = new EnforcementLog(tg.clickhouse.client, tg.log);
    const enforcer = new RedisEnforcer(tg.redis!, tg.plans!, events, tg.log, tg.metrics, {
      maxSpanAgeHours: 24,
    });
    const seen = (enforcer as unknown as { instancesSeen: Map<string, number> }).instancesSeen;
    const start = Date.now();
    const row = (i: number, at: number): RatedCall => ({
      ...BASE_RATED_CALL,
      eventId: `inst-${i}-${at}`,
      product: 'demo-mcp',
      customer: 'many-instances',
      instanceId: `process-${i}`,
      startUnixUs: at * 1000,
      receivedAtMs: at,
      period: new Date(at).toISOString().slice(0, 7),
      planVersion: tg.plans!.current.version,
    });
    const clock = vi.spyOn(Date, 'now');
    try {
      // 200 short-lived SDK processes, each with a fresh instance id
      clock.mockReturnValue(start);
      await enforcer.apply(
        'demo-mcp',
        'rec-I1',
        Array.from({ length: 200 }, (_, i) => row(i, start)),
      );
      expect(seen.size).toBe(200);
      // six minutes later one of them exports again: the other 199 are forgotten
      const later = start + 6 * 60_000;
      clock.mockReturnValue(later);
      await enforcer.apply('demo-mcp', 'rec-I2', [row(0, later)]);
      expect([...seen.keys()]).toEqual([`process-0\0demo-mcp\0many-instances`]);
    } finally {
      clock.mockRestore();
      await events.close();
    }
  });
});
