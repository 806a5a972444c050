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
  gatewayDying,
  type StripeTestbed,
  startStripeTestbed,
  walletPlans,
} from './support/stripe-testbed.js';

/**
 * An audit of the credits on the invoice and in Stripe (stripe-credits.test.ts is the feature's own test):
 * for every wallet customer and period, checked to the nano-unit against the raw ledger and the raw rows —
 * - the preview: applied = grant drawdowns for the period's calls + the wallet's "overdraft repaid" pairs
 *   made in the period (from the raw `credit_ledger`), amountDue = amount − applied, and over all periods
 *   applied ≤ what the grants lost (drawdowns, repayments and expiries of grant buckets);
 * - Stripe (the fake, through the SDK): Σ items of the period × nano per minor unit + Σ the report's
 *   remainders = the preview's amountDue, the credit never above applied, no key twice;
 * at a month's edge (a call in the last microsecond of March, one at April's first instant), a wallet
 * opened mid-period after days were pushed, a grant expiring mid-period, an operator's fee charged to the
 * overdraft bucket, minor units of 0 and 3 digits, granularity day and period, reruns, crashes after each
 * credit push, an empty data directory a day later. Real pipeline: OTLP receiver, enforce.lua on a real
 * redis-server, chDB.
 */

const PLANS = walletPlans(['edge', 'newbie', 'expy', 'feey']);
const KEYS = { admin: 'tg_test_admin', finance: 'tg_test_finance' };
const API_KEYS = creditApiKeys(KEYS);
const CUSTOMERS = ['edge', 'newbie', 'expy', 'feey'];
const mappingOf = (granularity: 'day' | 'period', digits?: number) => `
stripe:
  product: demo-mcp
  granularity: ${granularity}
  settleMinutes: 120
${digits === undefined ? '' : `  minorUnitDigits: ${digits}\n`}  customers: { ${CUSTOMERS.map((c) => `${c}: cus_${c}`).join(', ')} }
  lines:
    - { name: calls, components: [call], push: amount, description: MCP tool calls }
    - { name: tokens, components: [input_tokens, output_tokens], push: amount }
`;
const PERIODS = ['2026-03', '2026-04'];
const NOW = Date.UTC(2026, 3, 3, 3, 0); // April 1st and 2nd closed and settled
const quiet = pino({ level: 'silent' });

let bed: StripeTestbed;
let deps: AnalyticsDeps;
let ledger: CreditLedger;
const THIS_PERIOD = new Date().toISOString().slice(0, 7);

const api = (path: string, key: string, init: RequestInit = {}) =>
  fetch(`${bed.tg.apiUrl}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...init.headers },
  });

async function post(path: string, body: Record<string, unknown>): Promise<void> {
  const res = await api(path, KEYS.admin, { method: 'POST', body: JSON.stringify(body) });
  expect(res.status, await res.clone().text()).toBe(200);
  await ledger.drain();
}

interface Preview {
  amountNano: bigint;
  credits: Record<string, unknown> & { appliedNano: string; amountDueNano: string };
}
async function preview(customer: string, period: string): Promise<Preview> {
  const res = await api(`/billing/invoices/preview?customer=${customer}&period=${period}`, KEYS.finance);
  expect(res.status).toBe(200);
  const body = (await res.json()) as { totals: { amountNano: string }; credits: Preview['credits'] };
  return { amountNano: BigInt(body.totals.amountNano), credits: body.credits };
}

/** A call of `customer` starting at `startNs` (ns since the epoch, so the last microsecond can be hit). */
const spanAt = (customer: string, startNs: bigint) => {
  const s = toolSpan({ customer, tool: 'search', startMs: Number(startNs / 1_000_000n) });
  return { ...s, startTimeUnixNano: String(startNs), endTimeUnixNano: String(startNs + 30_000_000n) };
};
const at = (iso: string) => BigInt(Date.parse(iso)) * 1_000_000n;

interface Entry {
  seq: number;
  atMs: number;
  type: string;
  bucket: string;
  amount: bigint;
  period: string;
  ids: string[];
  amounts: bigint[];
  actor: string;
  note: string;
}
async function entries(customer: string): Promise<Entry[]> {
  const rs = await bed.tg.clickhouse.client.query({
    query: `SELECT seq, toUnixTimestamp64Milli(at) AS at_ms, entry_type, bucket, amount_nano, period, event_ids,
        event_amounts_nano, actor, note
      FROM credit_ledger FINAL WHERE product = 'demo-mcp' AND customer = {c:String} ORDER BY seq`,
    query_params: { c: customer },
    format: 'JSONEachRow',
  });
  return (await rs.json<Record<string, unknown>>()).map((r) => ({
    seq: Number(r.seq),
    atMs: Number(r.at_ms),
    type: String(r.entry_type),
    bucket: String(r.bucket),
    amount: BigInt(r.amount_nano as string),
    period: String(r.period),
    ids: r.event_ids as string[],
    amounts: (r.event_amounts_nano as string[]).map((x) => BigInt(x)),
    actor: String(r.actor),
    note: String(r.note),
  }));
}
const periodBounds = (p: string) => {
  const [y, m] = p.split('-').map(Number) as [number, number];
  return [Date.UTC(y, m - 1, 1), Date.UTC(y, m, 1)] as const;
};

/** What the grants paid for a period, from the raw ledger: drawdowns for its calls + repayments made in it. */
function appliedFromLedger(es: Entry[], period: string): bigint {
  const [from, to] = periodBounds(period);
  let grants = 0n;
  for (const e of es)
    if (e.type === 'drawdown' && e.period === period && e.bucket !== 'overdraft')
      for (const a of e.amounts) grants += a;
  let repaid = 0n;
  for (const [i, g] of es.entries()) {
    const o = es[i + 1];
    if (
      g.type === 'adjustment' &&
      g.bucket !== 'overdraft' &&
      g.note === 'overdraft repaid' &&
      g.actor === 'tollgate' &&
      o?.seq === g.seq + 1 &&
      o.bucket === 'overdraft' &&
      o.amount === -g.amount &&
      g.atMs >= from &&
      g.atMs < to
    )
      repaid -= g.amount;
  }
  return grants + repaid;
}
/** Everything the grant buckets lost: drawdowns, repayments, expiries, operators' debits. */
const grantsLost = (es: Entry[]) =>
  es.filter((e) => e.bucket !== 'overdraft' && e.amount < 0n).reduce((s, e) => s - e.amount, 0n);

const meta = (i: Record<string, unknown>) => i.metadata as Record<string, string>;
const itemsOf = (fake: FakeStripe, customer: string, period?: string) =>
  fake.items.filter(
    (i) =>
      meta(i).tollgate_customer === customer && (period === undefined || meta(i).tollgate_period === period),
  );
const posts = (fake: FakeStripe) => fake.requests.filter((r) => r.method === 'POST');
const newFake = () => startFakeStripe({ customers: CUSTOMERS.map((c) => `cus_${c}`) });

/** The audit's invariants for every customer and period the report covers. */
async function audit(fake: FakeStripe, report: SyncReport, periods: string[]): Promise<void> {
  const perMinor = 10n ** BigInt(9 - report.minorUnitDigits);
  expect(report.errors).toEqual([]);
  const keys = fake.items.map((i) => meta(i).tollgate_key);
  expect(new Set(keys).size).toBe(keys.length); // nothing pushed twice
  for (const customer of CUSTOMERS) {
    const es = await entries(customer);
    let appliedAll = 0n;
    for (const period of periods) {
      const p = await preview(customer, period);
      const applied = BigInt(p.credits.appliedNano);
      const want = appliedFromLedger(es, period);
      const where = `${customer} ${period}`;
      expect(applied, where).toBe(want);
      expect(BigInt(p.credits.amountDueNano), where).toBe(p.amountNano - applied);
      appliedAll += applied;
      const rows = report.rows.filter((r) => r.customer === customer && r.period === period);
      expect(
        rows.filter((r) => r.status !== 'reconciled').map((r) => [r.line, r.status]),
        where,
      ).toEqual([]);
      const stripe = itemsOf(fake, customer, period).reduce((s, i) => s + BigInt(i.amount as number), 0n);
      const remainders = rows.reduce((s, r) => s + BigInt(r.remainderNano), 0n);
      expect(stripe * perMinor + remainders, where).toBe(BigInt(p.credits.amountDueNano));
      const credited = itemsOf(fake, customer, period)
        .filter((i) => meta(i).tollgate_line === '@credits')
        .reduce((s, i) => s + BigInt(i.amount as number), 0n);
      expect(credited <= 0n && -credited * perMinor <= applied, where).toBe(true);
      expect(applied - -credited * perMinor < perMinor, where).toBe(true); // and less than a unit below
    }
    expect(appliedAll <= grantsLost(es), customer).toBe(true);
  }
}

beforeAll(async () => {
  bed = await startStripeTestbed('tollgate-stripe-credits-audit-', PLANS, API_KEYS);
  deps = bed.deps;
  ledger = (bed.tg.credits as unknown as { ledger: CreditLedger }).ledger;

  // edge: a wallet paying the first calls; a call in March's last microsecond and one at April's first instant
  await post('/admin/credits/top-up', { customer: 'edge', amount: '0.0131', currency: 'USD' });
  await bed.send([
    spanAt('edge', at('2026-03-31T20:00:00Z')),
    spanAt('edge', at('2026-03-31T20:30:00Z')),
    spanAt('edge', at('2026-03-31T23:59:59.999Z') + 999_999n),
    spanAt('edge', at('2026-04-01T00:00:00Z')),
    spanAt('edge', at('2026-04-01T00:00:00Z') + 1_000n),
    spanAt('edge', at('2026-04-02T23:59:59.999Z')),
  ]);

  // newbie: calls of March 30th before it has a wallet (due), pushed; then a top-up pays the 31st's calls
  await bed.send([
    spanAt('newbie', at('2026-03-30T10:00:00Z')),
    spanAt('newbie', at('2026-03-30T11:00:00Z')),
  ]);

  // expy: a grant that expires a few seconds from now pays the 10th; the 11th's calls go to the overdraft
  await post('/admin/credits/grant', {
    customer: 'expy',
    amount: '0.02',
    currency: 'USD',
    expiresAt: new Date(Date.now() + 2_500).toISOString(),
  });
  await bed.send([1, 2, 3].map((h) => spanAt('expy', at(`2026-03-10T0${h}:00:00Z`))));
  await new Promise((r) => setTimeout(r, 3_000));
  await bed.send([1, 2].map((h) => spanAt('expy', at(`2026-03-11T0${h}:00:00Z`))));

  // feey: a top-up, calls, then an operator charges a fee to the overdraft bucket (repaid at once by the grant)
  await post('/admin/credits/top-up', { customer: 'feey', amount: '0.05', currency: 'USD' });
  await bed.send([spanAt('feey', at('2026-03-15T12:00:00Z'))]);
  await ledger.drain();
}, 120_000);

afterAll(async () => {
  await bed?.tg.cleanup();
});

const CALL = 4_355_000n; // 0.0043 + 10 input tokens × 0.0000013 + 20 output tokens × 0.0000021

describe('the audit', () => {
  it('a wallet opened mid-period after days were pushed: credits only what its grants paid, once', async () => {
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const config = bed.configFor(fake, mappingOf('day'));
    // March 30th pushed while newbie has no wallet
    const first = await runStripeSync(config, runDir, deps, quiet, {
      periods: ['2026-03'],
      customers: ['newbie'],
      nowMs: Date.UTC(2026, 2, 31, 3, 0),
    });
    expect(first.rows.map((r) => r.line)).toEqual(['calls', 'tokens']);
    await post('/admin/credits/top-up', { customer: 'newbie', amount: '0.0231', currency: 'USD' });
    await bed.send([1, 2, 3, 4, 5, 6].map((h) => spanAt('newbie', at(`2026-03-31T1${h}:00:00Z`))));
    await ledger.drain();
    await runStripeSync(config, runDir, deps, quiet, { periods: PERIODS, customers: ['newbie'], nowMs: NOW });
    const credits = itemsOf(fake, 'newbie').filter((i) => meta(i).tollgate_line === '@credits');
    expect(credits.map((i) => [meta(i).tollgate_unit, i.amount])).toEqual([['2026-03-31', -2]]);
    const p = await preview('newbie', '2026-03');
    expect(p.credits).toMatchObject({
      undrawnCalls: 2,
      undrawnNano: String(2n * CALL),
      appliedNano: '23100000',
      overdraftDrawnNano: String(6n * CALL - 23_100_000n),
    });
  });

  it('a grant expiring mid-period: only its drawdowns are applied, the expiry is lost, the rest stays due', async () => {
    const es = await entries('expy');
    expect(es.map((e) => [e.type, e.bucket === 'overdraft' ? 'od' : 'g'])).toEqual([
      ['grant', 'g'],
      ['drawdown', 'g'],
      ['expiry', 'g'],
      ['drawdown', 'od'],
    ]);
    const p = await preview('expy', '2026-03');
    expect(p.amountNano).toBe(5n * CALL);
    expect(p.credits).toMatchObject({
      appliedNano: String(3n * CALL),
      grantsDrawnNano: String(3n * CALL),
      overdraftDrawnNano: String(2n * CALL),
      amountDueNano: String(2n * CALL),
    });
    expect(es[2]?.amount).toBe(-(20_000_000n - 3n * CALL));
  });

  it('granularity day, minor units of 2 digits: every invariant, reruns and an empty data directory push nothing', async () => {
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const config = bed.configFor(fake, mappingOf('day'));
    const r = await runStripeSync(config, runDir, deps, quiet, { periods: PERIODS, nowMs: NOW });
    await audit(fake, r, PERIODS);
    // the month's edge: the call of March's last microsecond is March's, credited on the 31st
    const edge = itemsOf(fake, 'edge').filter((i) => meta(i).tollgate_line === '@credits');
    expect(edge.map((i) => [meta(i).tollgate_unit, i.amount])).toEqual([['2026-03-31', -1]]);
    const n = posts(fake).length;
    const again = await runStripeSync(config, runDir, deps, quiet, { periods: PERIODS, nowMs: NOW });
    expect(posts(fake)).toHaveLength(n);
    expect(again.rows).toEqual(r.rows);
    fake.advanceMs(25 * 3_600_000);
    const fresh = await runStripeSync(config, bed.ledgerDir(), deps, quiet, { periods: PERIODS, nowMs: NOW });
    expect(posts(fake)).toHaveLength(n);
    await audit(fake, fresh, PERIODS);
    await fake.close();
  });

  it('a crash after each credit push in turn: the reruns credit nothing twice', async () => {
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const config = bed.configFor(fake, mappingOf('day'));
    for (let n = 1; n < 40; n++) {
      const r = await runStripeSync(config, runDir, deps, quiet, {
        periods: PERIODS,
        nowMs: NOW,
        gateway: gatewayDying(fake, 'createInvoiceItem', 1, 'after'),
      }).catch((e: Error) => e);
      if (!(r instanceof Error)) break;
    }
    const r = await runStripeSync(config, runDir, deps, quiet, { periods: PERIODS, nowMs: NOW });
    await audit(fake, r, PERIODS);
    await fake.close();
  });

  for (const [granularity, digits] of [
    ['period', 3],
    ['day', 0],
    ['period', 0],
  ] as const)
    it(`granularity ${granularity}, minor units of ${digits} digits: every invariant`, async () => {
      const fake = await newFake();
      const config = bed.configFor(fake, mappingOf(granularity, digits));
      const r = await runStripeSync(config, bed.ledgerDir(), deps, quiet, {
        periods: PERIODS,
        nowMs: Date.UTC(2026, 4, 1, 3, 0),
      });
      expect(r.minorUnitDigits).toBe(digits);
      await audit(fake, r, PERIODS);
      await fake.close();
    });

  it('an operator’s fee charged to the overdraft bucket is repaid at once by the grant, and that repayment is applied', async () => {
    const before = await preview('feey', THIS_PERIOD);
    await post('/admin/credits/adjust', {
      customer: 'feey',
      grantId: 'overdraft',
      amount: '-0.02',
      currency: 'USD',
      note: 'late fee',
    });
    const after = await preview('feey', THIS_PERIOD);
    expect(
      (await entries('feey'))
        .slice(-3)
        .map((e) => [e.bucket === 'overdraft' ? 'od' : 'g', e.amount, e.actor]),
    ).toEqual([
      ['od', -20_000_000n, 'ops'],
      ['g', -20_000_000n, 'tollgate'],
      ['od', 20_000_000n, 'tollgate'],
    ]);
    // the wallet paid the fee, and the invoice credits what the grant paid: the fee is collected only if it is
    // also charged in Stripe (docs/enforcement.md "On the invoice": mirror the overdraft bucket's adjustments)
    expect(
      BigInt(after.credits.overdraftRepaidNano as string) -
        BigInt(before.credits.overdraftRepaidNano as string),
    ).toBe(20_000_000n);
    expect(BigInt(before.credits.amountDueNano) - BigInt(after.credits.amountDueNano)).toBe(20_000_000n);
  });

  it('repayments a millisecond either side of a month’s end: each applied to its own period, once', async () => {
    const { vi } = await import('vitest');
    const es = await entries('edge');
    const owed = -es.filter((e) => e.bucket === 'overdraft').reduce((s, e) => s + e.amount, 0n);
    expect(owed).toBeGreaterThan(1_000n);
    const half = owed / 2n;
    const topUpAt = async (ms: number, nano: bigint) => {
      vi.useFakeTimers({ toFake: ['Date'], now: ms });
      try {
        await post('/admin/credits/top-up', {
          customer: 'edge',
          amount: (Number(nano) / 1e9).toFixed(9),
          currency: 'USD',
        });
      } finally {
        vi.useRealTimers();
      }
    };
    await topUpAt(Date.UTC(2026, 4, 1) - 1, half); // April 30th, 23:59:59.999
    await topUpAt(Date.UTC(2026, 4, 1), 1_000_000_000n); // May 1st, 00:00:00.000: repays the rest
    const april = await preview('edge', '2026-04');
    const may = await preview('edge', '2026-05');
    expect(BigInt(april.credits.overdraftRepaidNano as string)).toBe(half);
    expect(BigInt(may.credits.overdraftRepaidNano as string)).toBe(owed - half);
    const fake = await newFake();
    const periods = [...PERIODS, '2026-05'];
    const opts = { periods, nowMs: Date.UTC(2026, 4, 3, 3, 0) };
    const r = await runStripeSync(bed.configFor(fake, mappingOf('day')), bed.ledgerDir(), deps, quiet, opts);
    await audit(fake, r, periods);
    const row = (period: string) =>
      r.rows.find((x) => x.customer === 'edge' && x.period === period && x.line === '@credits');
    // below a cent each: nothing pushed yet, carried in the row's remainder (as the audit summed)
    expect(row('2026-05')).toMatchObject({
      tollgateNano: String(half - owed),
      remainderNano: String(half - owed),
    });
    await fake.close();
  });

  it('a switch of granularity within a period pushes nothing twice: the period goes on as it was pushed', async () => {
    const fake = await newFake();
    const runDir = bed.ledgerDir();
    const day = await runStripeSync(bed.configFor(fake, mappingOf('day')), runDir, deps, quiet, {
      periods: PERIODS,
      nowMs: Date.UTC(2026, 4, 3, 3, 0), // March and April over (the audit compares whole periods)
    });
    await audit(fake, day, PERIODS);
    const n = posts(fake).length;
    const before = fake.items.map((i) => i.id);
    // the operator switches to one push a month while March and April were pushed day by day (before the
    // fix the switch pushed both months again, in full: 6 more items, every charge and credit twice)
    await bed.send([10, 11, 12].map((h) => spanAt('newbie', at(`2026-05-10T${h}:00:00Z`))));
    const periods = [...PERIODS, '2026-05'];
    const opts = { periods, nowMs: Date.UTC(2026, 5, 2, 3, 0) };
    for (const dir of [runDir, bed.ledgerDir()]) {
      const r = await runStripeSync(bed.configFor(fake, mappingOf('period')), dir, deps, quiet, opts);
      expect(r.errors).toEqual([]);
      // March and April: nothing new; May (not pushed before) by the new granularity, once
      expect(fake.items.slice(0, before.length).map((i) => i.id)).toEqual(before);
      const added = fake.items
        .slice(before.length)
        .map((i) => [meta(i).tollgate_customer, meta(i).tollgate_unit]);
      expect(added.length).toBeGreaterThan(0);
      expect(added.every(([c, u]) => c === 'newbie' && u === '2026-05')).toBe(true);
      expect(posts(fake).length).toBe(n + added.length);
      await audit(fake, r, periods);
    }
    await fake.close();
    // three syncs and three audits: 22 s in CI alone, past the default 60 s beside two busy loops
  }, 180_000);

  it('a mapping whose product no plan prices is refused before anything is read or pushed', async () => {
    const fake = await newFake();
    const config = bed.configFor(fake, mappingOf('day').replace('product: demo-mcp', 'product: weather-mcp'));
    for (const dryRun of [true, false]) {
      await expect(
        runStripeSync(config, bed.ledgerDir(), deps, quiet, { periods: PERIODS, nowMs: NOW, dryRun }),
      ).rejects.toMatchObject({
        code: 'STRIPE_MAPPING_INVALID',
        message: expect.stringContaining('weather-mcp is not a product of the rate-plan file'),
      });
    }
    expect(posts(fake)).toHaveLength(0);
    await fake.close();
  });

  it('a period pushed both by day and as a whole (two data directories, two mappings) stops its customer', async () => {
    const fake = await newFake();
    const dirA = bed.ledgerDir();
    const opts = { periods: ['2026-03'], customers: ['expy'], nowMs: Date.UTC(2026, 3, 2, 3, 0) };
    await runStripeSync(bed.configFor(fake, mappingOf('day')), dirA, deps, quiet, opts);
    // another data directory with a monthly mapping, whose listing of Stripe's items came back empty
    const real = sdkGateway({
      secretKey: fake.secretKey,
      host: fake.host,
      port: fake.port,
      protocol: 'http',
    });
    const blind: StripeGateway = { ...real, listInvoiceItems: async () => [] };
    await runStripeSync(bed.configFor(fake, mappingOf('period')), bed.ledgerDir(), deps, quiet, {
      ...opts,
      gateway: blind,
    });
    const units = itemsOf(fake, 'expy').map((i) => meta(i).tollgate_unit);
    expect(units).toContain('2026-03');
    expect(units).toContain('2026-03-10');
    const n = posts(fake).length;
    const r = await runStripeSync(bed.configFor(fake, mappingOf('day')), dirA, deps, quiet, opts);
    expect(r.errors.map((e) => [e.customer, e.code])).toEqual([['expy', 'STRIPE_GRANULARITY_CHANGED']]);
    expect(posts(fake)).toHaveLength(n);
    await fake.close();
  });
});
