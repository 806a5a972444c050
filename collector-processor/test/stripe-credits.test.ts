import type { AnalyticsDeps } from '@tollgate/billing-api';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreditLedger } from '../src/credits/ledger.js';
import { type StripeGateway, sdkGateway } from '../src/stripe/gateway.js';
import { runStripeSync } from '../src/stripe/job.js';
import type { SyncReport } from '../src/stripe/report.js';
import { type FakeStripe, startFakeStripe } from './support/fake-stripe.js';
import { toolSpan } from './support/otlp-json.js';
import {
  creditApiKeys,
  type StripeTestbed,
  startStripeTestbed,
  walletPlans,
} from './support/stripe-testbed.js';

/**
 * Prepaid credits in the Stripe hand-off. A customer whose calls were paid from its wallet must not be
 * charged for them again in Stripe: the sync pushes, per closed unit, a negative invoice item "Prepaid
 * credits applied — <day>" of what the grants paid (the invoice preview's `credits.applied`), so that
 * Stripe's total for the customer is the preview's `amountDue`. Drawdowns from the overdraft bucket are
 * money lent, not paid: they stay due, in the preview as in Stripe; a later grant that repays them is a
 * credit of the period it is made in. Real pipeline: spans through the OTLP receiver, enforce.lua drawing
 * the wallet in a real redis-server, the ledger copied to chDB; Stripe is the fake, through the SDK. The
 * expected amounts are computed here from the raw rows and the raw ledger, not from the sync.
 */

const PLANS = walletPlans(['walt', 'latey'], { cost: true, others: ['plain'] });
const KEYS = { admin: 'tg_test_admin', finance: 'tg_test_finance', namesake: 'tg_test_namesake' };
const API_KEYS = creditApiKeys(KEYS, { tollgate: KEYS.namesake });

const MAPPING = `
stripe:
  product: demo-mcp
  granularity: day
  settleMinutes: 120
  customers: { walt: cus_walt, latey: cus_latey, plain: cus_plain }
  lines:
    - { name: calls, components: [call], push: amount, description: MCP tool calls }
    - { name: tokens, components: [input_tokens, output_tokens], push: amount }
`;

const DAYS = ['2026-03-02', '2026-03-03', '2026-03-04'];
const NOW = Date.UTC(2026, 2, 5, 3, 0); // the three days closed and settled
const PERIOD = '2026-03';
const CENT = 10_000_000n;
const quiet = pino({ level: 'silent' });

let bed: StripeTestbed;
let deps: AnalyticsDeps;
let ledger: CreditLedger;

const api = (path: string, key: string, init: RequestInit = {}) =>
  fetch(`${bed.tg.apiUrl}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...init.headers },
  });

async function topUp(customer: string, amount: string): Promise<void> {
  const res = await api('/admin/credits/top-up', KEYS.admin, {
    method: 'POST',
    body: JSON.stringify({ customer, amount, currency: 'USD', note: 'paid by card' }),
  });
  expect(res.status).toBe(200);
  await ledger.drain();
}

interface Credits {
  appliedNano: string;
  amountDueNano: string;
  grantsDrawnNano: string;
  overdraftDrawnNano: string;
  overdraftRepaidNano: string;
  reconciliation: { drawnNano: string; reconciled: boolean };
}
async function preview(customer: string, period: string): Promise<{ amountNano: bigint; credits: Credits }> {
  const res = await api(`/billing/invoices/preview?customer=${customer}&period=${period}`, KEYS.finance);
  expect(res.status).toBe(200);
  const body = (await res.json()) as { totals: { amountNano: string }; credits: Credits };
  return { amountNano: BigInt(body.totals.amountNano), credits: body.credits };
}

const span = (customer: string, day: string, hour: number, minute = 0, inTok = 100 + 7 * hour) =>
  toolSpan({
    customer,
    tool: 'search',
    startMs: Date.parse(`${day}T${String(hour).padStart(2, '0')}:${String(minute).padStart(2, '0')}:00Z`),
    attrs: { 'gen_ai.usage.input_tokens': inTok, 'gen_ai.usage.output_tokens': 20 + minute },
  });

/** Every call of the customer in the period: day, event id, price. */
async function calls(customer: string): Promise<{ day: string; id: string; price: bigint }[]> {
  const rs = await bed.tg.clickhouse.client.query({
    query: `SELECT toString(toDate(started_at)) AS day, event_id, price_nano FROM mcp_tool_calls
      WHERE product = 'demo-mcp' AND customer = {c:String} AND period = {p:String}`,
    query_params: { c: customer, p: PERIOD },
    format: 'JSONEachRow',
  });
  return (await rs.json<Record<string, string>>()).map((r) => ({
    day: String(r.day),
    id: String(r.event_id),
    price: BigInt(r.price_nano as string),
  }));
}

/** The raw drawdowns of the customer's calls of the period: event id → { grants, overdraft }. */
async function drawdowns(customer: string): Promise<Map<string, { grants: bigint; overdraft: bigint }>> {
  const rs = await bed.tg.clickhouse.client.query({
    query: `SELECT bucket, event_ids, event_amounts_nano FROM credit_ledger FINAL
      WHERE product = 'demo-mcp' AND customer = {c:String} AND period = {p:String} AND entry_type = 'drawdown'`,
    query_params: { c: customer, p: PERIOD },
    format: 'JSONEachRow',
  });
  const out = new Map<string, { grants: bigint; overdraft: bigint }>();
  for (const r of await rs.json<{ bucket: string; event_ids: string[]; event_amounts_nano: string[] }>())
    r.event_ids.forEach((id, i) => {
      const d = out.get(id) ?? { grants: 0n, overdraft: 0n };
      const a = BigInt(r.event_amounts_nano[i] as string);
      if (r.bucket === 'overdraft') d.overdraft += a;
      else d.grants += a;
      out.set(id, d);
    });
  return out;
}

/** What the credit pushes must be, per day: −floor(grants' running total ÷ 1 cent) − what was pushed before. */
async function expectedCredits(customer: string): Promise<Map<string, bigint>> {
  const [cs, dd] = await Promise.all([calls(customer), drawdowns(customer)]);
  const out = new Map<string, bigint>();
  let cum = 0n;
  let pushed = 0n;
  for (const day of ['2026-03-01', ...DAYS]) {
    for (const c of cs.filter((x) => x.day === day)) cum += dd.get(c.id)?.grants ?? 0n;
    const push = -(cum / CENT) - pushed;
    pushed += push;
    if (push) out.set(day, push);
  }
  return out;
}

const itemsOf = (fake: FakeStripe, customer: string) =>
  fake.items.filter((i) => (i.metadata as Record<string, string>).tollgate_customer === customer);
const meta = (i: Record<string, unknown>) => i.metadata as Record<string, string>;
const stripeTotal = (fake: FakeStripe, customer: string) =>
  itemsOf(fake, customer).reduce((s, i) => s + BigInt(i.amount as number), 0n);
const posts = (fake: FakeStripe) => fake.requests.filter((r) => r.method === 'POST');
const newFake = () => startFakeStripe({ customers: ['cus_walt', 'cus_latey', 'cus_plain'] });

beforeAll(async () => {
  bed = await startStripeTestbed('tollgate-stripe-credits-', PLANS, API_KEYS);
  deps = bed.deps;
  // the processor's copier of the wallets' ledger (Redis outbox → ClickHouse), to wait for it or hold it
  ledger = (bed.tg.credits as unknown as { ledger: CreditLedger }).ledger;
  // walt's top-up covers some 11 of its 15 calls; the rest is drawn from the overdraft bucket (no hard stop)
  await topUp('walt', '0.0517');
  await topUp('latey', '1');
  const spans = [];
  for (const day of DAYS)
    for (let h = 0; h < 5; h++) {
      spans.push(span('walt', day, 8 + h, 7 * h));
      spans.push(span('plain', day, 8 + h, 3 * h));
    }
  spans.push(span('latey', '2026-03-02', 10, 0, 10_000));
  await bed.send(spans);
  await ledger.drain();
}, 120_000);

afterAll(async () => {
  await bed?.tg.cleanup();
});

describe('a wallet customer in Stripe', () => {
  let fake: FakeStripe;
  let runDir: string;
  let report: SyncReport;
  beforeAll(async () => {
    fake = await newFake();
    runDir = bed.ledgerDir();
    report = await runStripeSync(bed.configFor(fake, MAPPING), runDir, deps, quiet, {
      periods: [PERIOD],
      nowMs: NOW,
      customers: ['walt', 'plain'],
    });
  });
  afterAll(() => fake.close());

  it('the preview applies only what the top-up paid: the overdraft bucket’s drawdowns stay due', async () => {
    const [cs, dd] = await Promise.all([calls('walt'), drawdowns('walt')]);
    expect(cs).toHaveLength(15);
    const amount = cs.reduce((s, c) => s + c.price, 0n);
    const grants = [...dd.values()].reduce((s, d) => s + d.grants, 0n);
    const overdraft = [...dd.values()].reduce((s, d) => s + d.overdraft, 0n);
    expect(grants).toBe(51_700_000n); // the whole top-up
    expect(overdraft).toBeGreaterThan(0n); // the calls it could not cover
    expect(grants + overdraft).toBe(amount); // every call drawn in full
    const p = await preview('walt', PERIOD);
    expect(p.amountNano).toBe(amount);
    expect(p.credits).toMatchObject({
      appliedNano: String(grants),
      grantsDrawnNano: String(grants),
      overdraftDrawnNano: String(overdraft),
      overdraftRepaidNano: '0',
      amountDueNano: String(amount - grants),
      reconciliation: { drawnNano: String(amount), reconciled: true },
    });
  });

  it('pushes one negative item a day of what the grants paid for that day’s calls, rounded toward zero', async () => {
    const credits = itemsOf(fake, 'walt').filter((i) => meta(i).tollgate_line === '@credits');
    const want = await expectedCredits('walt');
    expect(want.size).toBeGreaterThanOrEqual(2); // the top-up ran out on a later day than it started
    expect(new Map(credits.map((i) => [meta(i).tollgate_unit, BigInt(i.amount as number)]))).toEqual(want);
    for (const i of credits) {
      expect(i).toMatchObject({ currency: 'usd', customer: 'cus_walt', discountable: false });
      expect(i.description).toBe(`Prepaid credits applied — ${meta(i).tollgate_unit}`);
      expect(meta(i).tollgate_key).toBe(`tollgate-v1/demo-mcp/walt/@credits/${meta(i).tollgate_unit}`);
    }
  });

  it('Stripe’s total for the customer is the preview’s amount due (to the carried remainders, never over-credited)', async () => {
    const p = await preview('walt', PERIOD);
    const rows = report.rows.filter((r) => r.customer === 'walt');
    const credit = rows.find((r) => r.line === '@credits');
    const applied = BigInt(p.credits.appliedNano);
    expect(credit).toMatchObject({
      status: 'reconciled',
      push: 'amount',
      tollgateNano: String(-applied),
      tollgateMinor: String(-(applied / CENT)), // 5.17 cents applied: 5 credited, never 6
      pushedMinor: String(-(applied / CENT)),
      stripeMinor: String(-(applied / CENT)),
      remainderNano: String(-(applied % CENT)),
      lastUnit: '2026-03-04',
    });
    expect(rows.every((r) => r.status === 'reconciled')).toBe(true);
    // the rows add up to the amount due to the nano-unit, and Stripe holds the rounded rows
    const nano = rows.reduce((s, r) => s + BigInt(r.tollgateNano), 0n);
    expect(nano).toBe(BigInt(p.credits.amountDueNano));
    const remainders = rows.reduce((s, r) => s + BigInt(r.remainderNano), 0n);
    expect(stripeTotal(fake, 'walt') * CENT + remainders).toBe(BigInt(p.credits.amountDueNano));
    expect(stripeTotal(fake, 'walt')).toBe(rows.reduce((s, r) => s + BigInt(r.stripeMinor ?? 'x'), 0n));
    // within a cent per line of the exact amount due, and the credit never above what was paid
    expect(-BigInt(credit?.pushedMinor ?? 0) * CENT <= applied).toBe(true);
  });

  it('a customer without a wallet gets no credit line and no credit item', () => {
    expect(report.rows.filter((r) => r.customer === 'plain').map((r) => r.line)).toEqual(['calls', 'tokens']);
    expect(itemsOf(fake, 'plain').some((i) => meta(i).tollgate_line === '@credits')).toBe(false);
    expect(itemsOf(fake, 'plain').length).toBeGreaterThan(0);
  });

  it('a rerun pushes nothing new, and neither does one from an empty data directory', async () => {
    const before = posts(fake).length;
    const again = await runStripeSync(bed.configFor(fake, MAPPING), runDir, deps, quiet, {
      periods: [PERIOD],
      nowMs: NOW,
      customers: ['walt', 'plain'],
    });
    expect(posts(fake)).toHaveLength(before);
    expect(again.pushes).toMatchObject({ created: 0, replayed: 0, found: 0 });
    expect(again.rows).toEqual(report.rows);
    fake.advanceMs(25 * 3_600_000); // Stripe has forgotten the idempotency keys: its items are found by metadata
    const fresh = await runStripeSync(bed.configFor(fake, MAPPING), bed.ledgerDir(), deps, quiet, {
      periods: [PERIOD],
      nowMs: NOW,
      customers: ['walt', 'plain'],
    });
    expect(posts(fake)).toHaveLength(before);
    expect(fresh.pushes.created).toBe(0);
    expect(fresh.rows).toEqual(report.rows);
  });
});

describe('a crash between a credit push and its ledger line', () => {
  it('the rerun finds the credit at Stripe by its key (or resends it under that key): nothing is credited twice', async () => {
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const config = bed.configFor(fake, MAPPING);
    const real = sdkGateway({
      secretKey: fake.secretKey,
      host: fake.host,
      port: fake.port,
      protocol: 'http',
    });
    let cut = false;
    const dying: StripeGateway = {
      ...real,
      async createInvoiceItem(p, key) {
        const r = await real.createInvoiceItem(p, key);
        if (!cut && p.metadata.tollgate_line === '@credits') {
          cut = true;
          throw new Error('power cut'); // Stripe has the credit; the ledger has its intent only
        }
        return r;
      },
    };
    const opts = { periods: [PERIOD], customers: ['walt'], nowMs: NOW };
    const crashed = await runStripeSync(config, runDir, deps, quiet, { ...opts, gateway: dying }).catch(
      (e: Error) => e,
    );
    expect(String(crashed)).toMatch(/power cut/);
    const credited = () => itemsOf(fake, 'walt').filter((i) => meta(i).tollgate_line === '@credits');
    expect(credited()).toHaveLength(1);
    const r = await runStripeSync(config, runDir, deps, quiet, opts);
    // found at Stripe by its key (the listing before the pushes), or replayed by Stripe: not created again
    expect(r.pushes.found + r.pushes.replayed).toBe(1);
    const units = credited().map((i) => meta(i).tollgate_unit);
    expect(new Set(units).size).toBe(units.length); // one credit per day
    expect(new Map(credited().map((i) => [meta(i).tollgate_unit, BigInt(i.amount as number)]))).toEqual(
      await expectedCredits('walt'),
    );
    expect(r.rows.filter((x) => x.customer === 'walt').every((x) => x.status === 'reconciled')).toBe(true);
    await fake.close();
  });
});

describe('granularity period', () => {
  it('one credit item for the month, once it is over and settled; Stripe’s total is the amount due', async () => {
    const fake = await newFake();
    const config = bed.configFor(fake, MAPPING.replace('granularity: day', 'granularity: period'));
    const opts = { periods: [PERIOD], customers: ['walt'], nowMs: Date.UTC(2026, 3, 1, 2, 0) };
    const r = await runStripeSync(config, bed.ledgerDir(), deps, quiet, opts);
    const p = await preview('walt', PERIOD);
    const applied = BigInt(p.credits.appliedNano);
    const credits = itemsOf(fake, 'walt').filter((i) => meta(i).tollgate_line === '@credits');
    expect(credits.map((i) => [meta(i).tollgate_unit, i.amount])).toEqual([
      [PERIOD, Number(-(applied / CENT))],
    ]);
    const rows = r.rows.filter((x) => x.customer === 'walt');
    expect(rows.every((x) => x.status === 'reconciled')).toBe(true);
    const remainders = rows.reduce((s, x) => s + BigInt(x.remainderNano), 0n);
    expect(stripeTotal(fake, 'walt') * CENT + remainders).toBe(BigInt(p.credits.amountDueNano));
    await fake.close();
  });
});

describe('late drawdowns and repayments', () => {
  it('drawdowns copied to the ledger after their day was pushed are credited in the next unit', async () => {
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const config = bed.configFor(fake, MAPPING);
    const opts = { periods: [PERIOD], customers: ['latey'] };
    // the 2nd is pushed (one call, paid by the top-up: charged, and credited to the cent below)
    await runStripeSync(config, runDir, deps, quiet, { ...opts, nowMs: Date.UTC(2026, 2, 3, 3, 0) });
    const dayTwo = itemsOf(fake, 'latey').map((i) => [meta(i).tollgate_line, meta(i).tollgate_unit]);
    expect(dayTwo).toContainEqual(['@credits', '2026-03-02']);
    // late calls of the 2nd land, and their drawdowns stay in Redis's outbox for a while (the copy to
    // ClickHouse is held back, as when ClickHouse was down)
    const notify = ledger.notify;
    ledger.notify = () => {};
    try {
      await bed.send([
        span('latey', '2026-03-02', 20, 1, 10_000),
        span('latey', '2026-03-02', 21, 2, 10_000),
      ]);
    } finally {
      ledger.notify = notify;
    }
    const r2 = await runStripeSync(config, runDir, deps, quiet, {
      ...opts,
      nowMs: Date.UTC(2026, 2, 4, 3, 0),
    });
    // the late calls are charged on the 3rd; their credit is not known yet (Stripe is above the amount due)
    const dayThree = itemsOf(fake, 'latey').filter((i) => meta(i).tollgate_unit === '2026-03-03');
    expect(dayThree.map((i) => meta(i).tollgate_line)).toEqual(['calls', 'tokens']);
    expect(stripeTotal(fake, 'latey')).toBeGreaterThan(1n);
    expect(r2.rows.find((r) => r.line === '@credits')?.status).toBe('reconciled'); // the ledger it can see
    // the copy arrives; the next unit credits the difference
    ledger.notify('demo-mcp', 'latey');
    await ledger.drain();
    const r3 = await runStripeSync(config, runDir, deps, quiet, { ...opts, nowMs: NOW });
    const dayFour = itemsOf(fake, 'latey').filter((i) => meta(i).tollgate_unit === '2026-03-04');
    expect(dayFour.map((i) => meta(i).tollgate_line)).toEqual(['@credits']);
    const p = await preview('latey', PERIOD);
    expect(p.credits.amountDueNano).toBe('0'); // the top-up paid every call
    expect(BigInt(p.credits.appliedNano)).toBe(p.amountNano);
    const rows = r3.rows.filter((r) => r.customer === 'latey');
    expect(rows.every((r) => r.status === 'reconciled')).toBe(true);
    const remainders = rows.reduce((s, r) => s + BigInt(r.remainderNano), 0n);
    expect(stripeTotal(fake, 'latey') * CENT + remainders).toBe(0n);
    expect(stripeTotal(fake, 'latey')).toBeLessThanOrEqual(1n); // the charges rounded, the credit not over
    await fake.close();
  });

  it('a top-up that repays an overdraft already invoiced is a credit of the period it is made in, once', async () => {
    const before = await preview('walt', PERIOD);
    const lent = BigInt(before.credits.overdraftDrawnNano);
    expect(lent).toBeGreaterThan(0n);
    await topUp('walt', '1'); // repays the overdraft first (two "overdraft repaid" adjustments)
    const now = new Date();
    const thisPeriod = now.toISOString().slice(0, 7);
    // March is unchanged: what was lent there stays due there
    const march = await preview('walt', PERIOD);
    expect(march.credits).toEqual(before.credits);
    // the repayment is grant money spent on calls already invoiced: applied to this period
    const p = await preview('walt', thisPeriod);
    expect(p.credits).toMatchObject({
      overdraftRepaidNano: String(lent),
      appliedNano: String(lent),
      grantsDrawnNano: '0',
      amountDueNano: String(p.amountNano - lent),
    });
    // and in Stripe: a credit item on the day of the repayment, once however often the sync runs
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const config = bed.configFor(fake, MAPPING);
    const later = Date.now() + 2 * 86_400_000; // today closed and settled
    const opts = { periods: [thisPeriod], customers: ['walt'], nowMs: later };
    const r = await runStripeSync(config, runDir, deps, quiet, opts);
    const credits = itemsOf(fake, 'walt').filter((i) => meta(i).tollgate_line === '@credits');
    expect(credits.map((i) => [meta(i).tollgate_unit, i.amount])).toEqual([
      [now.toISOString().slice(0, 10), Number(-(lent / CENT))],
    ]);
    expect(r.rows.find((x) => x.line === '@credits')).toMatchObject({
      status: 'reconciled',
      tollgateNano: String(-lent),
      stripeMinor: String(-(lent / CENT)),
    });
    const n = posts(fake).length;
    await runStripeSync(config, runDir, deps, quiet, opts);
    expect(posts(fake)).toHaveLength(n);
    await fake.close();
  });

  it('an operator’s adjustment is not a repayment, even under the name and note the wallet uses', async () => {
    const w = (await (await api('/billing/credits?customer=walt', KEYS.finance)).json()) as {
      wallets: { grants: { grantId: string }[] }[];
    };
    const grantId = w.wallets[0]?.grants[0]?.grantId;
    const before = await preview('walt', new Date().toISOString().slice(0, 7));
    const res = await api('/admin/credits/adjust', KEYS.namesake, {
      method: 'POST',
      body: JSON.stringify({
        customer: 'walt',
        grantId,
        amount: '-0.01',
        currency: 'USD',
        note: 'overdraft repaid',
      }),
    });
    expect(res.status).toBe(200);
    await ledger.drain();
    const after = await preview('walt', new Date().toISOString().slice(0, 7));
    expect(after.credits).toEqual(before.credits); // a refund of grant money pays no call
  });
});
