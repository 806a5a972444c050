import { formatNano, type ToolCall } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quoteUnder } from '../../collector-processor/src/api-ports.js';
import { loadPlanBook, toolRateOf } from '../../collector-processor/src/plans/load.js';
import { countsTowardUsage, rateCall } from '../../collector-processor/src/rating/rate.js';
import { DEV_INGEST_KEY } from '../../collector-processor/test/support/harness.js';
import { attr, exportOf } from '../../collector-processor/test/support/otlp-json.js';
import type { QuoteUsage } from '../src/index.js';
import {
  KEYS,
  PLANS,
  type RawCall,
  rawCalls,
  type Seeded,
  sendUsageCalls,
  startSeededTollgate,
  USAGE_CALLS,
} from './support/seed.js';

/** Invoice preview (reconciled with the raw price columns) and plan quotes (the real rating function). */

let s: Seeded;
let raw: RawCall[];
beforeAll(async () => {
  s = await startSeededTollgate();
  raw = await rawCalls(s.tg);
}, 180_000);
afterAll(async () => {
  await s?.cleanup();
});

async function api(
  path: string,
  key: string,
  body?: unknown,
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers, checked by value below
): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(`${s.tg.apiUrl}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  // biome-ignore lint/suspicious/noExplicitAny: as above
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

/** A call priced beyond the free allowance (its components are on the invoice). */
const billed = (r: RawCall) => r.decision !== 'free' && r.decision !== 'failed_not_billed';

/** The per-second price of a call's tool under its customer's plan (the plan file does not change here). */
function perSecondOf(r: RawCall): bigint {
  const plan = loadPlanBook(PLANS).resolve(r.product, r.customer);
  return (plan && toolRateOf(plan, r.tool)?.price.perSecond) || 0n;
}

const ORDER = ['call', 'free_call', 'failed_call', 'input_tokens', 'output_tokens', 'duration'];

/** The invoice lines of a customer's period, computed here from the raw rows. */
function expectedLines(rows: RawCall[]) {
  const lines = new Map<
    string,
    { tool: string; component: string; tier: number | null; unit: bigint | null; qty: bigint; amount: bigint }
  >();
  const add = (
    tool: string,
    component: string,
    tier: number | null,
    unit: bigint | null,
    qty: bigint,
    amount: bigint,
  ) => {
    const k = `${tool}|${component}|${tier}|${unit}`;
    const l = lines.get(k) ?? { tool, component, tier, unit, qty: 0n, amount: 0n };
    l.qty += qty;
    l.amount += amount;
    lines.set(k, l);
  };
  for (const r of rows) {
    if (r.decision === 'free') add(r.tool, 'free_call', null, 0n, 1n, 0n);
    else if (r.decision === 'failed_not_billed') add(r.tool, 'failed_call', null, 0n, 1n, 0n);
    else add(r.tool, 'call', r.tier, r.priceCall, 1n, r.priceCall);
    if (r.priceInput !== 0n)
      add(r.tool, 'input_tokens', null, r.priceInput / r.inputTokens, r.inputTokens, r.priceInput);
    if (r.priceOutput !== 0n)
      add(r.tool, 'output_tokens', null, r.priceOutput / r.outputTokens, r.outputTokens, r.priceOutput);
    const perSecond = billed(r) ? perSecondOf(r) : 0n;
    if (perSecond !== 0n) add(r.tool, 'duration', null, perSecond, r.durationUs, r.priceDuration);
  }
  return [...lines.values()].sort(
    (a, b) =>
      (a.tool < b.tool ? -1 : a.tool > b.tool ? 1 : 0) ||
      ORDER.indexOf(a.component) - ORDER.indexOf(b.component) ||
      (a.tier ?? 0) - (b.tier ?? 0) ||
      Number((a.unit ?? 0n) - (b.unit ?? 0n)),
  );
}

const seconds = (us: bigint) => {
  const frac = (us % 1_000_000n).toString().padStart(6, '0').replace(/0+$/, '');
  return `${us / 1_000_000n}${frac ? `.${frac}` : ''}`;
};

describe('invoice preview', () => {
  it('every customer and period: lines per tool and component, adding up exactly to the raw price columns', async () => {
    const periods = [...new Set(raw.map((r) => r.period))];
    let checked = 0;
    for (const period of periods) {
      for (const customer of ['acme', 'globex', 'initech', 'umbrella', 'hooli', "o'hara"]) {
        const rows = raw.filter(
          (r) => r.product === 'demo-mcp' && r.customer === customer && r.period === period,
        );
        const res = await api(
          `/billing/invoices/preview?customer=${encodeURIComponent(customer)}&period=${period}`,
          KEYS.finance,
        );
        expect(res.status).toBe(200);
        const inv = res.body;
        const lines = expectedLines(rows);
        expect(
          inv.lines.map((l: Record<string, string | number | null>) => ({
            tool: l.tool,
            component: l.component,
            tier: l.tier,
            unit: l.unitPriceNano,
            qty: l.quantity,
            amount: l.amountNano,
          })),
          `${customer} ${period}`,
        ).toEqual(
          lines.map((l) => ({
            tool: l.tool,
            component: l.component,
            tier: l.tier,
            unit: l.unit === null ? null : l.unit.toString(),
            qty: l.component === 'duration' ? seconds(l.qty) : l.qty.toString(),
            amount: l.amount.toString(),
          })),
        );
        // quantity × unit price = amount, exactly, on every call and token line
        for (const l of inv.lines) {
          if (l.unitPriceNano !== null && l.component !== 'duration') {
            expect(BigInt(l.quantity) * BigInt(l.unitPriceNano), l.description).toBe(BigInt(l.amountNano));
          }
          expect(l.amount).toBe(formatNano(BigInt(l.amountNano)));
        }
        const sum = (f: (r: RawCall) => bigint) => rows.reduce((a, r) => a + f(r), 0n);
        const total = sum((r) => r.price);
        expect(inv.reconciliation).toEqual({
          rawPriceNano: String(total),
          linesNano: String(total),
          reconciled: true,
        });
        expect(inv.totals).toMatchObject({
          calls: rows.length,
          free: rows.filter((r) => r.decision === 'free').length,
          failedNotBilled: rows.filter((r) => r.decision === 'failed_not_billed').length,
          overLimit: rows.filter((r) => r.decision === 'over_limit').length,
          amountNano: String(total),
          callsAmountNano: String(sum((r) => r.priceCall)),
          inputTokensAmountNano: String(sum((r) => r.priceInput)),
          outputTokensAmountNano: String(sum((r) => r.priceOutput)),
          durationAmountNano: String(sum((r) => r.priceDuration)),
          costNano: String(sum((r) => r.cost)),
        });
        checked += rows.length;
      }
    }
    expect(checked).toBe(raw.filter((r) => r.product === 'demo-mcp').length);
  });

  it('hand-checked: initech (enterprise plan, failed calls billed) pays 0.001 per call', async () => {
    const period = new Date(s.nowMs).toISOString().slice(0, 7);
    const rows = raw.filter((r) => r.customer === 'initech' && r.period === period);
    const inv = (await api(`/billing/invoices/preview?customer=initech&period=${period}`, KEYS.admin)).body;
    expect(inv.plan).toMatchObject({ planId: 'enterprise', billFailedCalls: true, freeCallsPerMonth: 0 });
    expect(inv.totals.amount).toBe(formatNano(BigInt(rows.length) * 1_000_000n));
    expect(
      inv.lines.every(
        (l: { component: string; unitPrice: string }) => l.component === 'call' && l.unitPrice === '0.001',
      ),
    ).toBe(true);
    expect(rows.some((r) => r.status === 'error')).toBe(true);
  });

  // Issue 12: the duration line left out billed calls whose duration amount rounds to 0 nano-units.
  it('the duration quantity is every billed second of the line, exact to the µs, also calls priced 0', async () => {
    const customer = 'tiny-durations';
    // search_docs at 0.0001/s is 0.1 nano per µs: 1–4 µs round to 0; the first 3 calls are free
    const durationsUs = [2, 3, 4, 4, 3, 1_000_001, 2, 250_000, 1];
    const startMs = Date.now() - 60_000;
    const spans = durationsUs.map((us, i) => {
      const startNs = BigInt(startMs + i) * 1_000_000n;
      return {
        traceId: `${'ab'.repeat(15)}${String(i).padStart(2, '0')}`,
        spanId: `${'cd'.repeat(7)}${String(i).padStart(2, '0')}`,
        name: 'tools/call search_docs',
        kind: 2,
        startTimeUnixNano: String(startNs),
        endTimeUnixNano: String(startNs + BigInt(us) * 1000n),
        attributes: [
          attr('mcp.method.name', 'tools/call'),
          attr('gen_ai.tool.name', 'search_docs'),
          attr('tollgate.customer.id', customer),
        ],
      };
    });
    const res = await fetch(`${s.tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(exportOf(spans)),
    });
    expect(res.status).toBe(200);
    await s.tg.lander?.idle();
    const rows = (await rawCalls(s.tg)).filter((r) => r.customer === customer);
    expect(rows).toHaveLength(durationsUs.length);
    const paid = rows.filter(billed);
    expect(paid.some((r) => r.priceDuration === 0n && r.durationUs > 0n)).toBe(true); // the case at stake
    const inv = await api(
      `/billing/invoices/preview?customer=${customer}&period=${rows[0]?.period}`,
      KEYS.finance,
    );
    const [line] = inv.body.lines.filter((l: { component: string }) => l.component === 'duration');
    const qtyUs = paid.reduce((a, r) => a + r.durationUs, 0n);
    const amount = paid.reduce((a, r) => a + r.priceDuration, 0n);
    expect(line).toMatchObject({
      tool: 'search_docs',
      quantity: seconds(qtyUs), // every billed µs
      amountNano: String(amount), // unchanged: the sum of what each call was charged
      unitPriceNano: '100000',
      unitPrice: '0.0001',
    });
    expect(qtyUs).toBe(1_250_011n); // the 6 billed calls: 4 + 3 + 1_000_001 + 2 + 250_000 + 1
    // amount = Σ round(µs × unit ÷ 10⁶) per call: within half a nano-unit per call of quantity × unit
    const exact = qtyUs * 100_000n;
    const diff = exact - amount * 1_000_000n;
    expect(diff < 0n ? -diff : diff).toBeLessThanOrEqual(BigInt(paid.length) * 500_000n);
  });

  it('search_docs lines show the free allowance, both tiers, and per-token and duration lines', async () => {
    const res = await api('/billing/invoices/preview?customer=acme&format=json', KEYS.acme);
    const docs = res.body.lines.filter((l: { tool: string }) => l.tool === 'search_docs');
    const components = new Set(docs.map((l: { component: string }) => l.component));
    expect(components).toEqual(
      new Set([
        'call',
        'input_tokens',
        'output_tokens',
        'duration',
        ...(components.has('free_call') ? ['free_call'] : []),
        ...(components.has('failed_call') ? ['failed_call'] : []),
      ]),
    );
    const unitOf = (c: string) =>
      docs
        .filter((l: { component: string }) => l.component === c)
        .map((l: { unitPrice: string }) => l.unitPrice);
    expect(unitOf('input_tokens')).toEqual(['0.000001']);
    expect(unitOf('output_tokens')).toEqual(['0.000003']);
  });
});

const book = loadPlanBook(PLANS);

/** Rates calls one by one with the rating function: what a quote must equal. */
function bruteForce(product: string, customer: string, usage: QuoteUsage[], prior = 0) {
  const plan = book.resolve(product, customer);
  if (!plan) throw new Error('no plan');
  let planOrd = prior;
  const toolOrd = new Map<string, number>();
  let price = 0n;
  let cost = 0n;
  const decisions = new Map<string, number>();
  for (const u of usage) {
    const rate = toolRateOf(plan, u.tool);
    if (!rate) throw new Error('no rate');
    const call = {
      ok: u.ok,
      inputTokens: u.inputTokens,
      outputTokens: u.outputTokens,
      durationUs: u.durationUs,
    } as ToolCall;
    for (let i = 0; i < u.calls; i++) {
      let pos = { planOrdinal: 0, toolOrdinal: 0 };
      if (countsTowardUsage(call, plan)) {
        planOrd++;
        toolOrd.set(u.tool, (toolOrd.get(u.tool) ?? 0) + 1);
        pos = { planOrdinal: planOrd, toolOrdinal: toolOrd.get(u.tool) as number };
      }
      const r = rateCall(call, plan, rate, pos);
      price += r.priceNano;
      cost += r.costNano;
      const k = `${r.decision}:${r.tier}`;
      decisions.set(k, (decisions.get(k) ?? 0) + 1);
    }
  }
  return { price, cost, decisions };
}

describe('plan quotes', () => {
  it('runs of identical calls priced once equal rating every call one by one', () => {
    let seed = 7;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    for (let trial = 0; trial < 40; trial++) {
      const customer = ['acme', 'initech', 'hooli'][trial % 3] as string;
      const usage: QuoteUsage[] = Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => ({
        tool: ['search_docs', 'lookup', 'run_report', 'thin'][Math.floor(rnd() * 4)] as string,
        calls: 1 + Math.floor(rnd() * 12),
        inputTokens: Math.floor(rnd() * 3000),
        outputTokens: Math.floor(rnd() * 3000),
        durationUs: Math.floor(rnd() * 3_000_000),
        ok: rnd() > 0.2,
      }));
      const prior = Math.floor(rnd() * 4);
      const plan = book.resolve('demo-mcp', customer);
      if (!plan) throw new Error('no plan');
      const q = quoteUnder(plan, { usage, prior: { planCalls: prior, toolCalls: {} } });
      const b = bruteForce('demo-mcp', customer, usage, prior);
      const decisions = new Map<string, number>();
      for (const seg of q.segments)
        decisions.set(
          `${seg.decision}:${seg.tier}`,
          (decisions.get(`${seg.decision}:${seg.tier}`) ?? 0) + seg.calls,
        );
      expect(
        q.segments.reduce((a, x) => a + x.priceNano * BigInt(x.calls), 0n),
        JSON.stringify(usage),
      ).toBe(b.price);
      expect(q.segments.reduce((a, x) => a + x.costNano * BigInt(x.calls), 0n)).toBe(b.cost);
      expect(decisions).toEqual(b.decisions);
    }
  });

  it('a hypothetical call after the free allowance, priced component by component (hand-checked)', async () => {
    const res = await api('/billing/plans/quote', KEYS.finance, {
      customer: 'acme',
      usage: [{ tool: 'search_docs', inputTokens: 1234, outputTokens: 5678, durationMs: 1500 }],
      prior: { planCalls: 3 },
    });
    expect(res.status).toBe(200);
    // 0.004 + 1234 × 0.000001 + 5678 × 0.000003 + 1.5 s × 0.0001 = 0.022418
    // cost: 0.001 + 5678 × 0.000001 + 1.5 s × 0.000003 = 0.0066825
    expect(res.body.lines).toEqual([
      expect.objectContaining({
        tool: 'search_docs',
        calls: 1,
        decision: 'billed',
        tier: 1,
        planOrdinal: 4,
        toolOrdinal: 1,
        unit: expect.objectContaining({
          priceNano: '22418000',
          callNano: '4000000',
          inputNano: '1234000',
          outputNano: '17034000',
          durationNano: '150000',
          costNano: '6682500',
        }),
        amount: '0.022418',
        cost: '0.0066825',
      }),
    ]);
    expect(res.body.totals).toMatchObject({
      calls: 1,
      revenue: '0.022418',
      cost: '0.0066825',
      margin: '0.0157355',
      marginBps: 7019,
    });
    expect(res.body.plan).toMatchObject({ planId: 'std', freeCallsPerMonth: 3 });
  });

  it('a month of usage: the free allowance, then the tiers, as runs', async () => {
    const res = await api('/billing/plans/quote', KEYS.admin, {
      usage: [{ tool: 'search_docs', calls: 10 }],
    });
    expect(
      res.body.lines.map((l: Record<string, unknown>) => [l.decision, l.tier, l.calls, l.amount]),
    ).toEqual([
      ['free', 0, 3, '0.00'],
      ['billed', 1, 1, '0.004'],
      ['billed', 2, 6, '0.018'],
    ]);
    expect(res.body.after).toEqual({ planCalls: 10, toolCalls: { search_docs: 10 }, usageUnits: {} });
    // a billion calls is a few runs, priced exactly
    const big = await api('/billing/plans/quote', KEYS.admin, {
      usage: [{ tool: 'lookup', calls: 1_000_000_000 }],
    });
    expect(big.body.totals.revenueNano).toBe(String((1_000_000_000n - 3n) * 2_000_000n));
    expect(big.body.totals.revenue).toBe('1999999.994');
  });

  it('another plan of the product by id, or a hypothetical plan; errors from the catalogue', async () => {
    const ent = await api('/billing/plans/quote', KEYS.admin, {
      planId: 'enterprise',
      usage: [{ tool: 'x', calls: 4, failed: true }],
    });
    expect(ent.body.totals.revenue).toBe('0.004');
    const hypo = await api('/billing/plans/quote', KEYS.admin, {
      plan: { freeCallsPerMonth: 1, tools: { '*': { price: { perCall: '0.5' }, cost: { perCall: '0.1' } } } },
      usage: [{ tool: 'anything', calls: 3 }],
    });
    expect(hypo.status).toBe(200);
    expect(hypo.body.totals).toMatchObject({ revenue: '1.00', cost: '0.30', marginBps: 7000 });
    const invalid = await api('/billing/plans/quote', KEYS.admin, {
      plan: { tools: { a: { price: { perCall: '-1' } } } },
      usage: [{ tool: 'a' }],
    });
    expect(invalid.status).toBe(400);
    expect(invalid.body.error).toMatchObject({
      code: 'API_INVALID_PLAN',
      message: expect.stringContaining('perCall'),
    });
    const unknownTool = await api('/billing/plans/quote', KEYS.admin, {
      plan: { tools: { a: {} } },
      usage: [{ tool: 'b' }],
    });
    expect(unknownTool.body.error).toMatchObject({ code: 'API_UNKNOWN_TOOL' });
    expect(unknownTool.status).toBe(400);
    const unknownPlan = await api('/billing/plans/quote', KEYS.admin, {
      planId: 'gold',
      usage: [{ tool: 'a' }],
    });
    expect(unknownPlan.status).toBe(404);
    expect(unknownPlan.body.error).toMatchObject({ code: 'API_UNKNOWN_PLAN' });
    const both = await api('/billing/plans/quote', KEYS.admin, {
      planId: 'std',
      plan: {},
      usage: [{ tool: 'a' }],
    });
    expect(both.status).toBe(400);
    const noUsage = await api('/billing/plans/quote', KEYS.admin, { usage: [] });
    expect(noUsage.status).toBe(400);
    const badCalls = await api('/billing/plans/quote', KEYS.admin, { usage: [{ tool: 'a', calls: 1.5 }] });
    expect(badCalls.status).toBe(400);
    // a call the pipeline refuses (amount_out_of_range) is refused here too, not priced
    const whale = await api('/billing/plans/quote', KEYS.admin, {
      plan: { tools: { tok: { price: { perInputToken: '1000' } } } },
      usage: [{ tool: 'tok', inputTokens: 1_000_000_000 }],
    });
    expect(whale.status).toBe(400);
    expect(whale.body.error).toMatchObject({
      code: 'API_BAD_REQUEST',
      message: expect.stringContaining('amount_out_of_range'),
    });
    // the largest call that lands is quoted
    const edge = await api('/billing/plans/quote', KEYS.admin, {
      plan: { tools: { tok: { price: { perInputToken: '1000' } } } },
      usage: [{ tool: 'tok', inputTokens: 9_223_372 }],
    });
    expect(edge.status).toBe(200);
    expect(edge.body.totals.revenueNano).toBe(String(9_223_372n * 1000n * 1_000_000_000n));
  });
});

describe('usage lines on the invoice and in quotes', () => {
  const customer = 'llm-co';
  const calls = USAGE_CALLS;
  let period = '';
  let dayStartMs = 0;

  beforeAll(async () => {
    const startMs = Date.now() - 120_000;
    await sendUsageCalls(s.tg, startMs);
    period = new Date(startMs).toISOString().slice(0, 7);
    dayStartMs = Math.floor(startMs / 86_400_000) * 86_400_000;
  });

  it('a line per usage line; parents priced on parent − subsets; quantity × unit = amount; reconciled', async () => {
    const inv = (await api(`/billing/invoices/preview?customer=${customer}&period=${period}`, KEYS.finance))
      .body;
    const pick = (l: Record<string, string | null>) => [
      l.component,
      l.line,
      l.quantity,
      l.unitPriceNano,
      l.amountNano,
    ];
    const sumIn = calls.reduce((a, c) => a + c[0] - c[1], 0); // 200 + 500 + 200 + 0
    const sumOut = calls.reduce((a, c) => a + c[2] - c[3], 0); // 40 + 0 + 0 + 499
    expect(inv.lines.map(pick)).toEqual([
      ['call', null, '4', '1000000', '4000000'],
      ['input_tokens', null, String(sumIn), '3000', String(sumIn * 3000)],
      ['output_tokens', null, String(sumOut), '15000', String(sumOut * 15000)],
      ['usage', 'cached_input_tokens', '2900', '300', String(2900 * 300)],
      // 0.25 × 16_667 = 4_166.75 → 4_167; 1.5 × 16_667 = 25_000.5 → 25_001 (half up, per call)
      ['usage', 'gb_seconds', '1.75', '16667', String(4_167 + 25_001)],
      ['usage', 'reasoning_tokens', '101', '20000', String(101 * 20000)],
    ]);
    for (const l of inv.lines) {
      if (l.component === 'usage' && l.line !== 'gb_seconds')
        expect(BigInt(l.quantity) * BigInt(l.unitPriceNano)).toBe(BigInt(l.amountNano));
    }
    expect(inv.lines.find((l: { line: string }) => l.line === 'cached_input_tokens').description).toBe(
      'summarize: cached input tokens at 0.0000003 per unit',
    );
    const total = 4_000_000 + sumIn * 3000 + sumOut * 15000 + 2900 * 300 + 4_167 + 25_001 + 101 * 20000;
    expect(inv.reconciliation).toEqual({
      rawPriceNano: String(total),
      linesNano: String(total),
      reconciled: true,
    });
    expect(inv.totals.usageAmountNano).toBe(String(2900 * 300 + 4_167 + 25_001 + 101 * 20000));
    // cost: input tokens priced at cost on parent − cached, cached at its own cost
    expect(inv.totals.costNano).toBe(String(sumIn * 1000 + 2900 * 100));
  });

  it('revenue by tool lists the usage lines, the same from the daily view and from the raw rows', async () => {
    const iso = (ms: number) => new Date(ms).toISOString();
    const byTool = async (from: number, to: number) => {
      const res = await api(
        `/analytics/mcp/revenue/by-tool?customer=${customer}&from=${iso(from)}&to=${iso(to)}`,
        KEYS.finance,
      );
      expect(res.status).toBe(200);
      return res.body;
    };
    const wholeDay = await byTool(dayStartMs, dayStartMs + 86_400_000); // a whole day: the view
    const partial = await byTool(dayStartMs + 1, dayStartMs + 86_400_000); // a partial day: the raw rows
    expect(wholeDay.readFrom).toContain('mcp_usage_daily_stats');
    expect(partial.readFrom).not.toContain('mcp_usage_daily_stats');
    const expected = [
      {
        line: 'cached_input_tokens',
        calls: 4,
        quantity: '2900',
        revenueNano: String(2900 * 300),
        costNano: String(2900 * 100),
      },
      { line: 'gb_seconds', calls: 2, quantity: '1.75', revenueNano: String(4_167 + 25_001), costNano: '0' },
      {
        line: 'reasoning_tokens',
        calls: 4,
        quantity: '101',
        revenueNano: String(101 * 20000),
        costNano: '0',
      },
    ];
    for (const body of [wholeDay, partial]) {
      const [row] = body.rows;
      expect(row.tool).toBe('summarize');
      expect(
        row.usageLines.map((l: Record<string, unknown>) => ({ ...l, revenue: undefined, cost: undefined })),
      ).toEqual(expected.map((l) => ({ ...l, revenue: undefined, cost: undefined })));
      expect(row.usageRevenueNano).toBe(String(2900 * 300 + 4_167 + 25_001 + 101 * 20000));
    }
    const csv = await (
      await fetch(`${s.tg.apiUrl}/analytics/mcp/revenue/by-tool?customer=${customer}&format=csv`, {
        headers: { authorization: `Bearer ${KEYS.finance}` },
      })
    ).text();
    expect(csv.split('\r\n')[0]).toContain('usageRevenueNano');
    expect(csv).not.toContain('usageLines');
  });

  it('the CSV has a line column', async () => {
    const res = await fetch(
      `${s.tg.apiUrl}/billing/invoices/preview?customer=${customer}&period=${period}&format=csv`,
      { headers: { authorization: `Bearer ${KEYS.finance}` } },
    );
    const csv = await res.text();
    const [head, ...rest] = csv.trim().split('\n');
    expect(head?.split(',').slice(0, 3)).toEqual(['tool', 'component', 'line']);
    expect(rest.some((r) => r.startsWith('summarize,usage,reasoning_tokens,'))).toBe(true);
  });

  it('a quote prices usage lines with the real rating function', async () => {
    const res = await api('/billing/plans/quote', KEYS.finance, {
      customer,
      usage: [
        {
          tool: 'summarize',
          calls: 3,
          inputTokens: 1000,
          outputTokens: 100,
          quantities: { cached_input_tokens: 800, reasoning_tokens: 60 },
        },
      ],
    });
    expect(res.status).toBe(200);
    const [line] = res.body.lines;
    // 1_000_000 + 200 × 3_000 + 800 × 300 + 40 × 15_000 + 60 × 20_000
    const one = 1_000_000 + 600_000 + 240_000 + 600_000 + 1_200_000;
    expect(line.unit.priceNano).toBe(String(one));
    expect(line.unit.usage).toEqual([
      { line: 'cached_input_tokens', quantity: '800', priceNano: '240000', price: '0.00024' },
      { line: 'reasoning_tokens', quantity: '60', priceNano: '1200000', price: '0.0012' },
    ]);
    expect(line.amountNano).toBe(String(3 * one));
    // the same call rated directly
    const plan = book.resolve('demo-mcp', customer)!;
    const direct = rateCall(
      { ok: true, inputTokens: 1000, outputTokens: 100, durationUs: 0 } as ToolCall,
      plan,
      toolRateOf(plan, 'summarize')!,
      { planOrdinal: 1, toolOrdinal: 1 },
      [
        { line: plan.usageLines.find((l) => l.name === 'cached_input_tokens')!, micro: 800_000_000n },
        { line: plan.usageLines.find((l) => l.name === 'reasoning_tokens')!, micro: 60_000_000n },
      ],
    );
    expect(String(direct.priceNano)).toBe(line.unit.priceNano);
  });

  it('a quote takes quantities as decimal text too, as spans carry them, to the same price', async () => {
    const quote = async (quantities: Record<string, number | string>) =>
      api('/billing/plans/quote', KEYS.finance, {
        customer,
        usage: [{ tool: 'summarize', calls: 3, inputTokens: 1000, outputTokens: 100, quantities }],
      });
    const asNumbers = await quote({ cached_input_tokens: 800, reasoning_tokens: 60 });
    const asText = await quote({ cached_input_tokens: '800', reasoning_tokens: '60.0' });
    expect(asText.status, JSON.stringify(asText.body)).toBe(200);
    expect(asText.body.lines).toEqual(asNumbers.body.lines);
    const fractional = await quote({ cached_input_tokens: '1.5' });
    expect(fractional.status).toBe(400);
    expect(fractional.body.error.message).toMatch(/cached_input_tokens .* is fractional/);
    expect((await quote({ cached_input_tokens: '1e3' })).status).toBe(400);
  });

  it.each([
    [{ cached_input_tokens: 1001 }, /subsets of input_tokens .* exceed its 1000/],
    [{ cached_input_tokens: 1.5 }, /cached_input_tokens .* is fractional/],
    [{ pages: 1 }, /declares no usage line pages/],
  ])('a bad quote quantity is a 400 with a reason: %o', async (quantities, message) => {
    const res = await api('/billing/plans/quote', KEYS.finance, {
      customer,
      usage: [{ tool: 'summarize', inputTokens: 1000, quantities }],
    });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({
      code: 'API_BAD_REQUEST',
      message: expect.stringMatching(message),
    });
  });
});

describe('usage lines in graduated tiers, end to end', () => {
  const customer = 'volume-co';
  // the `volume` plan: cached input tokens at 0.000002 up to 1,000 a month, 0.000001 up to 3,000, then 0.0000005
  const tiers: [number | undefined, bigint][] = [
    [1000, 2000n],
    [3000, 1000n],
    [undefined, 500n],
  ];
  // units of the call per call: the 3rd straddles 1,000, the 5th straddles 3,000
  const cached = [400, 500, 300, 1500, 800, 2000];
  const calls = cached.map((c) => [c + 50, c, 0, 0, undefined] as const);
  /** Graduated price of `units` units starting at `before`, tier by tier (independent of the rating code). */
  const graduated = (before: number, units: number) => {
    let nano = 0n;
    let pos = before;
    let left = units;
    let floor = 0;
    for (const [upTo, unit] of tiers) {
      const top = upTo ?? Number.POSITIVE_INFINITY;
      const take = Math.max(0, Math.min(left, top - Math.max(pos, floor)));
      if (pos < top && take > 0) {
        nano += BigInt(take) * unit;
        pos += take;
        left -= take;
      }
      floor = top;
    }
    return nano;
  };
  let period = '';
  let dayStartMs = 0;

  beforeAll(async () => {
    const startMs = Date.now() - 90_000;
    await sendUsageCalls(s.tg, startMs, calls, customer, 'ab');
    // the same export again (a sender's retry): every call is a duplicate, no unit counted twice
    const again = await sendUsageCalls(s.tg, startMs, calls, customer, 'ab');
    expect(again).not.toContain('rejected');
    period = new Date(startMs).toISOString().slice(0, 7);
    dayStartMs = Math.floor(startMs / 86_400_000) * 86_400_000;
  });

  it('a line per tier on the invoice: quantity × unit = amount, the total the graduated price of the month', async () => {
    const inv = (await api(`/billing/invoices/preview?customer=${customer}&period=${period}`, KEYS.finance))
      .body;
    const usage = inv.lines.filter((l: { component: string }) => l.component === 'usage');
    const total = cached.reduce((a, b) => a + b, 0); // 5,500
    expect(
      usage.map((l: Record<string, string>) => [l.line, l.quantity, l.unitPriceNano, l.amountNano]),
    ).toEqual([
      ['cached_input_tokens', '2500', '500', String(2500 * 500)],
      ['cached_input_tokens', '2000', '1000', String(2000 * 1000)],
      ['cached_input_tokens', '1000', '2000', String(1000 * 2000)],
    ]);
    expect(usage.reduce((a: bigint, l: { amountNano: string }) => a + BigInt(l.amountNano), 0n)).toBe(
      graduated(0, total),
    );
    expect(inv.reconciliation.reconciled).toBe(true);
    // call by call, as landed: each call's pieces are the graduated price of its own units where it stood
    const rows = await s.tg.clickhouse.client.query({
      query: `SELECT usage_quantity_micro AS q, usage_price_nano AS p FROM mcp_tool_calls
        WHERE customer = {c:String} ORDER BY started_at`,
      query_params: { c: customer },
      format: 'JSONEachRow',
    });
    const landed = (await rows.json()) as { q: string[]; p: string[] }[];
    expect(landed).toHaveLength(cached.length);
    let before = 0;
    landed.forEach((r, i) => {
      const units = r.q.reduce((a, q) => a + Number(q) / 1e6, 0);
      expect(units).toBe(cached[i]);
      expect(r.p.reduce((a, p) => a + BigInt(p), 0n)).toBe(graduated(before, units));
      before += units;
    });
    expect(landed.map((r) => r.q.length)).toEqual([1, 1, 2, 1, 2, 1]);
  });

  it('revenue by tool counts each call once per line, from the daily view and from the raw rows', async () => {
    const iso = (ms: number) => new Date(ms).toISOString();
    for (const from of [dayStartMs, dayStartMs + 1]) {
      const res = await api(
        `/analytics/mcp/revenue/by-tool?customer=${customer}&from=${iso(from)}&to=${iso(dayStartMs + 86_400_000)}`,
        KEYS.finance,
      );
      expect(res.status).toBe(200);
      const [row] = res.body.rows;
      expect(
        row.usageLines.map((l: Record<string, unknown>) => [l.line, l.calls, l.quantity, l.revenueNano]),
      ).toEqual([['cached_input_tokens', cached.length, '5500', String(graduated(0, 5500))]]);
    }
  });

  it('a quote cuts runs at the tier bounds and equals rating call by call; prior and after carry the units', async () => {
    const res = await api('/billing/plans/quote', KEYS.finance, {
      customer,
      usage: [{ tool: 'summarize', calls: 10, inputTokens: 300, quantities: { cached_input_tokens: 250 } }],
      prior: { usageUnits: { summarize: { cached_input_tokens: 900 } } },
    });
    expect(res.status).toBe(200);
    // 900 before: the 1st call straddles 1,000, calls 2–8 stay in tier 2 (to 2,900), the 9th straddles 3,000
    expect(res.body.lines.map((l: { calls: number }) => l.calls)).toEqual([1, 7, 1, 1]);
    const usageNano = res.body.lines.reduce(
      (a: bigint, l: { calls: number; unit: { usage: { priceNano: string }[] } }) =>
        a + BigInt(l.calls) * l.unit.usage.reduce((b, u) => b + BigInt(u.priceNano), 0n),
      0n,
    );
    expect(usageNano).toBe(graduated(900, 2500));
    expect(res.body.after.usageUnits).toEqual({ summarize: { cached_input_tokens: 3400 } });
  });
});
