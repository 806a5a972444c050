import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  emitToolCall,
  otelTracer,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
} from './support/harness.js';

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
});
afterAll(async () => {
  await tg?.cleanup();
});

const metrics = () => readMetrics(tg.apiUrl as string);

describe('real OTel JS exporter → Tollgate → ClickHouse', () => {
  it('times each stage of an answered export (tollgate_export_stage_seconds)', async () => {
    const STAGES = ['decode', 'spool', 'claim', 'rate', 'enforce', 'land'];
    const count = (m: Map<string, number>, stage: string) =>
      m.get(`tollgate_export_stage_seconds_count{stage="${stage}"}`) ?? 0;
    const sum = (m: Map<string, number>, stage: string) =>
      m.get(`tollgate_export_stage_seconds_sum{stage="${stage}"}`) ?? 0;
    const before = await metrics();
    const { tracer, provider } = otelTracer(tg.otlpUrl as string, 'protobuf');
    for (let i = 0; i < 3; i++) emitToolCall(tracer, { tool: 'search_docs', customer: 'stages-co' });
    await provider.forceFlush();
    await provider.shutdown();
    const after = await metrics();
    // one export, each stage once; the stages fit inside the export's own duration
    expect(STAGES.map((s) => count(after, s) - count(before, s))).toEqual(STAGES.map(() => 1));
    const stages = STAGES.reduce((t, s) => t + sum(after, s) - sum(before, s), 0);
    const exportSeconds =
      (after.get('tollgate_export_duration_seconds_sum') ?? 0) -
      (before.get('tollgate_export_duration_seconds_sum') ?? 0);
    expect(stages).toBeGreaterThan(0);
    expect(stages).toBeLessThanOrEqual(exportSeconds);
  });

  it.each(['protobuf', 'json'] as const)(
    'bills tool-call spans exported as %s with exact prices',
    async (format) => {
      const customer = `cust-${format}`;
      const revenueMetric = 'tollgate_revenue_nano_total{product="demo-mcp",currency="USD"}';
      const revenueBefore = (await metrics()).get(revenueMetric) ?? 0;
      const { tracer, provider } = otelTracer(tg.otlpUrl as string, format);
      for (let i = 0; i < 10; i++) {
        emitToolCall(tracer, {
          tool: 'search_docs',
          customer,
          session: `s-${format}`,
          inputTokens: 100,
          outputTokens: 200,
        });
      }
      // A span that is not a tool call (another instrumentation): ignored, not rejected.
      tracer.startSpan('GET /health').end();
      await provider.forceFlush();
      await provider.shutdown();
      await tg.lander?.idle();

      const [row] = await query(
        tg,
        `SELECT count() AS calls, sum(price_nano) AS revenue, sum(cost_nano) AS cost,
              countIf(decision = 'free') AS free, uniqExact(event_id) AS ids
       FROM mcp_tool_calls WHERE customer = {c:String}`,
        { c: customer },
      );
      // 2 free calls, then 8 × (0.004 + 100 × 0.000001 + 200 × 0.000003) = 8 × 0.0047
      expect(row).toEqual({
        calls: '10',
        revenue: String(8 * 4_700_000),
        cost: String(10 * 1_200_000),
        free: '2',
        ids: '10',
      });
      // the revenue counter moved by what was billed (the export is the only one in flight)
      expect(((await metrics()).get(revenueMetric) ?? 0) - revenueBefore).toBe(8 * 4_700_000);

      const [detail] = await query(
        tg,
        `SELECT tool, transport, session_id, agent, status, length(trace_id) AS tl, length(span_id) AS sl, input_tokens, output_tokens
       FROM mcp_tool_calls WHERE customer = {c:String} LIMIT 1`,
        { c: customer },
      );
      expect(detail).toEqual({
        tool: 'search_docs',
        transport: 'stdio',
        session_id: `s-${format}`,
        agent: 'agent-1',
        status: 'ok',
        tl: '32',
        sl: '16',
        input_tokens: '100',
        output_tokens: '200',
      });
    },
  );

  it("the materialized views' totals equal the raw table's", async () => {
    const [raw] = await query(
      tg,
      'SELECT count() c, sum(price_nano) r, sum(cost_nano) k, sum(input_tokens) i FROM mcp_tool_calls',
    );
    const [daily] = await query(
      tg,
      'SELECT sum(calls) c, sum(revenue_nano) r, sum(cost_nano) k, sum(input_tokens) i FROM mcp_daily_stats',
    );
    const [sessions] = await query(
      tg,
      'SELECT sum(calls) c, sum(revenue_nano) r, sum(cost_nano) k FROM mcp_session_summary',
    );
    const [toolDaily] = await query(
      tg,
      'SELECT sum(calls) c, sum(revenue_nano) r, sum(cost_nano) k, sum(input_tokens) i FROM mcp_tool_daily_stats',
    );
    const [customerDaily] = await query(
      tg,
      'SELECT sum(calls) c, sum(revenue_nano) r, sum(cost_nano) k, sum(input_tokens) i FROM mcp_customer_daily_stats',
    );
    const [sessionDaily] = await query(
      tg,
      'SELECT sum(calls) c, sum(revenue_nano) r, sum(cost_nano) k FROM mcp_session_daily',
    );
    expect(Number(raw?.c)).toBeGreaterThan(0);
    expect(daily).toEqual(raw);
    expect(sessions).toEqual({ c: raw?.c, r: raw?.r, k: raw?.k });
    expect(toolDaily).toEqual(raw);
    expect(customerDaily).toEqual(raw);
    expect(sessionDaily).toEqual({ c: raw?.c, r: raw?.r, k: raw?.k });
  });

  it("the per-day views' groups equal the raw table's, and the session sets count its sessions", async () => {
    // per (product, day, tool), per (product, day, customer) and per (product, day, customer, session): every
    // group's calls, errors and money as the raw table groups them
    const groups = async (key: string, from: string, measures = 'calls, errors, revenue_nano, cost_nano') =>
      query(
        tg,
        `SELECT ${key}, ${measures.replace(/(\w+)/g, 'toString(sum($1)) AS $1')} FROM ${from} GROUP BY ${key} ORDER BY ${key}`,
      );
    const raw = `(SELECT product, toDate(started_at) AS day, tool, customer, session_id, 1 AS calls,
      status = 'error' AS errors, price_nano AS revenue_nano, cost_nano FROM mcp_tool_calls)`;
    expect(await groups('product, day, tool', 'mcp_tool_daily_stats')).toEqual(
      await groups('product, day, tool', raw),
    );
    expect(await groups('product, day, customer', 'mcp_customer_daily_stats')).toEqual(
      await groups('product, day, customer', raw),
    );
    expect(await groups('product, day, customer, session_id', 'mcp_session_daily')).toEqual(
      await groups('product, day, customer, session_id', raw),
    );
    const [sets] = await query(
      tg,
      `SELECT (SELECT toString(sum(n)) FROM (SELECT product, day, customer, uniqExactMerge(sessions) AS n
          FROM mcp_customer_daily_stats GROUP BY product, day, customer)) AS view,
        (SELECT toString(count()) FROM (SELECT DISTINCT product, toDate(started_at), customer, session_id
          FROM mcp_tool_calls WHERE session_id != '')) AS raw`,
    );
    expect(Number(sets?.raw)).toBeGreaterThan(0);
    expect(sets?.view).toBe(sets?.raw);
    // the monthly sets (fed from the per-day ones) count each month's sessions once
    const [monthly] = await query(
      tg,
      `SELECT (SELECT toString(sum(n)) FROM (SELECT product, month, customer, uniqExactMerge(sessions) AS n
          FROM mcp_customer_monthly_sessions GROUP BY product, month, customer)) AS view,
        (SELECT toString(count()) FROM (SELECT DISTINCT product, toStartOfMonth(started_at), customer, session_id
          FROM mcp_tool_calls WHERE session_id != '')) AS raw`,
    );
    expect(Number(monthly?.raw)).toBeGreaterThan(0);
    expect(monthly?.view).toBe(monthly?.raw);
  });
});
