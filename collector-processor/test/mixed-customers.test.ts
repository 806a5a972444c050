import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  emitToolCall,
  otelTracer,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
} from './support/harness.js';

// One export whose calls belong to customers on different plans, interleaved: each call is rated under its
// own customer's plan (the pipeline looks a plan up once per run of one customer's calls, so a change of
// customer from one call to the next must look it up again).
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        freeCallsPerMonth: 2
        tools: { "*": { price: { perCall: "0.002" }, cost: { perCall: "0.001" } } }
      vip:
        freeCallsPerMonth: 0
        tools: { "*": { price: { perCall: "0.5" }, cost: { perCall: "0.001" } } }
    customers:
      vip-co: { plan: vip }
      over-co:
        plan: std
        overrides: { freeCallsPerMonth: 0, tools: { "*": { price: { perCall: "0.01" } } } }
`;

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
});

it('rates the interleaved calls of one export each under its own customer plan', async () => {
  const landed = async () =>
    (await readMetrics(tg.apiUrl as string)).get('tollgate_export_stage_seconds_count{stage="land"}') ?? 0;
  const before = await landed();
  const { tracer, provider } = otelTracer(tg.otlpUrl as string, 'protobuf');
  for (let i = 0; i < 4; i++)
    for (const customer of ['vip-co', 'std-co', 'over-co']) emitToolCall(tracer, { tool: 'any', customer });
  await provider.forceFlush();
  await provider.shutdown();
  await tg.lander?.idle();
  expect((await landed()) - before).toBe(1); // the twelve calls came in one export

  const rows = await query(
    tg,
    `SELECT customer, any(plan_id) AS plan, count() AS calls, sum(price_nano) AS price
     FROM mcp_tool_calls GROUP BY customer ORDER BY customer`,
  );
  expect(rows).toEqual([
    { customer: 'over-co', plan: 'std', calls: '4', price: String(4 * 10_000_000) },
    { customer: 'std-co', plan: 'std', calls: '4', price: String(2 * 2_000_000) }, // 2 free
    { customer: 'vip-co', plan: 'vip', calls: '4', price: String(4 * 500_000_000) },
  ]);
});
