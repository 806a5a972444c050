import { customerTag, type Directive, redisKeys } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { query, readMetrics, sendExport, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * Redis keeps a customer's spend in a period (and a session's) as an integer of nano-units, and HINCRBY
 * refuses to go past 2^63 − 1: 9.2 billion units of currency, a month of a large customer in a currency of
 * small units (IDR, VND). enforce.lua used to fail there ("increment or decrement would overflow"), before
 * writing the calls-per-day counter, at every later export of that customer: its calls were billed but no
 * longer counted against any limit. A money counter now saturates at 2^63 − 1 and everything else is counted.
 */
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: whale
    plans:
      whale:
        tools:
          "*": { price: { perCall: "4000000000" }, cost: { perCall: "0.001" } }
        limits:
          callsPerDay: 3
        marginGuard: { enabled: false }
`;

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
});

const INT64_MAX = '9223372036854775807';
const day = new Date().toISOString().slice(0, 10);

async function send(customer: string, n: number): Promise<Directive[]> {
  const spans = Array.from({ length: n }, () =>
    toolSpan({ customer, tool: 'transfer', attrs: { 'mcp.session.id': `${customer}-s` } }),
  );
  const answer = await sendExport(tg, JSON.stringify(exportOf(spans, { 'service.name': 'mcp' })));
  return answer.tollgate?.directives ?? [];
}

describe('a spend counter past 2^63 − 1 nano-units', () => {
  it('saturates, and the calls are still counted against the daily limit', async () => {
    const customer = 'whale';
    const before = await readMetrics(tg.apiUrl!);
    // 2 × 4e18 nano-units: 8e18, still an Int64
    expect(await send(customer, 2)).toEqual([]);
    // + 4e18 = 1.2e19: past an Int64. The third call is within the daily limit of 3.
    expect(await send(customer, 1)).toEqual([]);
    // the fourth call crosses the daily limit: a kill
    const directives = await send(customer, 1);
    expect(directives.find((d) => d.action === 'kill' && d.scope === 'customer')).toMatchObject({
      customer,
      reason: 'hard_limit:calls_per_day',
    });

    const tag = customerTag('demo-mcp', customer);
    expect(await tg.redis!.hget(redisKeys.day(tag, day), 'calls')).toBe('4');
    const period = redisKeys.period(tag, day.slice(0, 7));
    expect(await tg.redis!.hget(period, 'spend')).toBe(INT64_MAX);
    // cost is small and stays exact
    expect(await tg.redis!.hget(period, 'cost')).toBe(String(4 * 1_000_000));
    const after = await readMetrics(tg.apiUrl!);
    expect(after.get('tollgate_calls_unenforced_total') ?? 0).toBe(
      before.get('tollgate_calls_unenforced_total') ?? 0,
    );

    // every call landed at its exact price; the over-limit one is marked so
    await tg.lander!.idle();
    const rows = await query(
      tg,
      `SELECT decision, count() n, toString(sum(toInt128(price_nano))) revenue
       FROM mcp_tool_calls WHERE customer = {c:String} GROUP BY decision ORDER BY decision`,
      { c: customer },
    );
    expect(rows).toEqual([
      { decision: 'billed', n: '3', revenue: String(3n * 4_000_000_000_000_000_000n) },
      { decision: 'over_limit', n: '1', revenue: String(4_000_000_000_000_000_000n) },
    ]);
  });
});
