import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { type AnalyticsDeps, invoiceLines, periodRange } from '@tollgate/billing-api';
import type { FastifyBaseLogger } from 'fastify';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../src/config/settings.js';
import { type StripeGateway, sdkGateway } from '../src/stripe/gateway.js';
import { runStripeSync } from '../src/stripe/job.js';
import { keyLine, microPerStripeUnit, stripeQuantity } from '../src/stripe/mapping.js';
import { idempotencyKey } from '../src/stripe/money.js';
import type { ReportRow, SyncReport } from '../src/stripe/report.js';
import { METER_CATCH_UP_MS, meterIdentifier } from '../src/stripe/sync.js';
import { type FakeStripe, startFakeStripe } from './support/fake-stripe.js';
import type { TestTollgate } from './support/harness.js';
import { toolSpan } from './support/otlp-json.js';
import { gatewayDying, type StripeTestbed, startStripeTestbed } from './support/stripe-testbed.js';

/**
 * Custom usage lines and billing meters in the Stripe sync: one Stripe line per usage line (an amount, a
 * Stripe price × quantity, or meter events), quantities in whole Stripe units with the fraction carried,
 * reconciliation to the nano-unit against the invoice preview's lines, and meter events that a rerun, a
 * crash or a lost ledger never count twice. Usage is real (spans → rating → chDB); Stripe is the fake
 * (test/support/fake-stripe.ts) behind the official SDK.
 */

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
          rows_scanned: {}
          gb_seconds: { integral: false }
        tools:
          "*":
            price:
              perCall: "0.001"
              perInputToken: "0.0001"
              usage: { cached_input_tokens: "0.00003", rows_scanned: "0.0000001", gb_seconds: "0.00001667" }
`;

const MAPPING = `
stripe:
  product: demo-mcp
  customers: { acme: cus_acme, globex: cus_globex }
  lines:
    - { name: calls, components: [call], push: amount }
    - { name: cached, components: [usage], usageLine: cached_input_tokens, push: amount, description: Cached input tokens }
    - { name: rows, components: [usage], usageLine: rows_scanned, push: quantity, price: price_rows }
    - name: gbs
      components: [usage]
      usageLine: gb_seconds
      push: meter
      quantityDecimals: 3
      meter: { eventName: tollgate_gb_seconds, id: mtr_gbs }
`;

const DAYS = ['2026-03-02', '2026-03-03', '2026-03-04'];
const NOW = Date.UTC(2026, 2, 5, 3, 0);
const PERIODS = ['2026-03'];
const HOUR = 3_600_000;
const LINES = { cached: 'cached_input_tokens', rows: 'rows_scanned', gbs: 'gb_seconds' } as const;

let bed: StripeTestbed;
let tg: TestTollgate;
let deps: AnalyticsDeps;
const quietLog = pino({ level: 'silent' });
const configFor = (fake: FakeStripe, mapping = MAPPING): Config => bed.configFor(fake, mapping);
const send = (spans: unknown[]) => bed.send(spans);
const ledgerDir = () => bed.ledgerDir();

function newFake(clockMs = NOW): Promise<FakeStripe> {
  return startFakeStripe({
    customers: ['cus_acme', 'cus_globex'],
    prices: [{ id: 'price_rows', currency: 'usd', unit_amount: 1, product: 'prod_rows' }],
    meters: [{ id: 'mtr_gbs', event_name: 'tollgate_gb_seconds' }],
    clockMs,
  });
}

interface UsageRaw {
  customer: string;
  day: string;
  line: string;
  micro: bigint;
  nano: bigint;
}

/** The landed usage lines of every call, one row per call and line (the raw rows, not the preview). */
async function usageRaw(): Promise<UsageRaw[]> {
  const rows = await (
    await tg.clickhouse.client.query({
      query: `SELECT customer, toString(toDate(started_at)) AS day, u_line, toString(u_q) AS q, toString(u_p) AS p
        FROM mcp_tool_calls ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_q, usage_price_nano AS u_p
        WHERE product = 'demo-mcp' ORDER BY started_at`,
      format: 'JSONEachRow',
    })
  ).json<Record<string, string>>();
  return rows.map((r) => ({
    customer: String(r.customer),
    day: String(r.day),
    line: String(r.u_line),
    micro: BigInt(r.q as string),
    nano: BigInt(r.p as string),
  }));
}

const roundHalfUp = (n: bigint, d: bigint) => (n + d / 2n) / d; // the quantities here are positive

/**
 * What each push should be, from the raw rows: per customer, usage line and day, round(running total) −
 * already pushed — cents for the amount line, rows for the quantity line, thousandths of a GB-second for
 * the meter line.
 */
async function expectedUsagePushes(): Promise<Map<string, bigint>> {
  const raw = await usageRaw();
  const out = new Map<string, bigint>();
  for (const customer of ['acme', 'globex'])
    for (const [name, line] of Object.entries(LINES)) {
      let cum = 0n;
      let pushed = 0n;
      for (const day of ['2026-03-01', ...DAYS]) {
        for (const r of raw.filter((x) => x.customer === customer && x.day === day && x.line === line))
          cum += name === 'cached' ? r.nano : r.micro;
        const target =
          name === 'cached'
            ? roundHalfUp(cum, 10_000_000n)
            : name === 'rows'
              ? roundHalfUp(cum, 1_000_000n)
              : roundHalfUp(cum * 1000n, 1_000_000n);
        if (target !== pushed) out.set(`${customer}/${name}/${day}`, target - pushed);
        pushed = target;
      }
    }
  return out;
}

/** The fake's invoice items (usage lines only) and counted meter events as customer/line/unit → value. */
function pushedAt(fake: FakeStripe): Map<string, bigint> {
  const out = new Map<string, bigint>();
  const put = (k: string, v: bigint) => {
    if (out.has(k)) throw new Error(`counted twice: ${k}`);
    out.set(k, v);
  };
  for (const i of fake.items) {
    const m = i.metadata as Record<string, string>;
    if (m.tollgate_line === 'calls') continue;
    put(
      `${m.tollgate_customer}/${m.tollgate_line}/${m.tollgate_unit}`,
      BigInt(m.tollgate_line === 'rows' ? (i.quantity as number) : (i.amount as number)),
    );
  }
  for (const e of fake.meterEvents.filter((x) => x.counted)) {
    const [, , customer, , unit] = String(e.event.identifier).split('/');
    put(`${customer}/gbs/${unit}`, BigInt(e.value));
  }
  return out;
}

const rowOf = (r: SyncReport, customer: string, line: string) =>
  r.rows.find((x) => x.customer === customer && x.line === line) as ReportRow;

beforeAll(async () => {
  bed = await startStripeTestbed('tollgate-stripe-usage-', PLANS);
  ({ tg, deps } = bed);
  const spans = [];
  for (const [i, day] of DAYS.entries())
    for (let h = 0; h < 2 + i; h++) {
      const at = Date.parse(`${day}T${String(8 + h).padStart(2, '0')}:00:00Z`);
      spans.push(
        toolSpan({
          customer: 'acme',
          tool: 'search',
          startMs: at,
          attrs: {
            'gen_ai.usage.input_tokens': 1000 + 10 * h,
            'gen_ai.usage.cache_read.input_tokens': 400 + 3 * h,
            'tollgate.usage.rows_scanned': 12_345 + 1_111 * h,
            'tollgate.usage.gb_seconds': [0.123456, 0.3745, 0.6255, 0.8765][h],
          },
        }),
      );
      spans.push(
        toolSpan({
          customer: 'globex',
          tool: 'fetch',
          startMs: at + 60_000,
          attrs: { 'tollgate.usage.rows_scanned': 499_999 + h, 'tollgate.usage.gb_seconds': 0.0004 },
        }),
      );
    }
  await send(spans);
}, 120_000);

afterAll(async () => {
  await tg?.cleanup();
});

describe('whole Stripe units of a usage line (micro-units in, integers out)', () => {
  it.each([
    // [exact micro-units, quantityDecimals, Stripe units]
    [0n, 0, 0n],
    [1_000_000n, 0, 1n],
    [12_345_000_000n, 0, 12_345n], // an integral line: exact
    [499_999n, 0, 0n], // below half a unit: carried, not pushed
    [500_000n, 0, 1n], // half a unit rounds away from zero
    [1_499_999n, 0, 1n],
    [123_456n, 3, 123n], // 0.123456 GB-s in thousandths
    [123_500n, 3, 124n],
    [123_456n, 6, 123_456n], // millionths: exact
    [-500_000n, 0, -1n],
  ] as const)('%s micro-units at %s decimals → %s', (micro, decimals, want) => {
    const line = { usageLine: 'x', quantityDecimals: decimals };
    expect(stripeQuantity(line, micro)).toBe(want);
    expect(microPerStripeUnit(line)).toBe(10n ** BigInt(6 - decimals));
  });

  it('calls and tokens are already whole: they pass as they are', () => {
    expect(stripeQuantity({ usageLine: undefined, quantityDecimals: undefined }, 12_345n)).toBe(12_345n);
  });

  it.each([
    ['calls', undefined, 'tollgate-v1/p/c/calls/2026-03-02'],
    ['gbs', 'gb_seconds', 'tollgate-v1/p/c/gbs:gb_seconds/2026-03-02'],
  ] as const)('the key of line %s names its usage line', (name, usageLine, key) => {
    expect(idempotencyKey('p', 'c', keyLine({ name, usageLine }), '2026-03-02')).toBe(key);
    expect(meterIdentifier(key)).toBe(key);
  });

  it('a meter identifier past Stripe’s 100 characters is the key’s hash, always the same', () => {
    const key = idempotencyKey('p'.repeat(60), 'c'.repeat(30), 'gbs:gb_seconds', '2026-03-02');
    expect(key.length).toBeGreaterThan(100);
    expect(meterIdentifier(key)).toMatch(/^tollgate-v1\/[0-9a-f]{64}$/);
    expect(meterIdentifier(key)).toBe(meterIdentifier(`${key}`));
  });
});

describe('one Stripe line per usage line', () => {
  let fake: FakeStripe;
  let report: SyncReport;
  let runDir: string;
  beforeAll(async () => {
    fake = await newFake();
    runDir = ledgerDir();
    report = await runStripeSync(configFor(fake), runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
  });
  afterAll(() => fake.close());

  it('pushes each usage line on its own: cents, rows and thousandths of a GB-second, the fraction carried', async () => {
    const want = await expectedUsagePushes();
    expect([...want.keys()].some((k) => k.includes('/gbs/'))).toBe(true);
    expect(pushedAt(fake)).toEqual(want);
    expect(report.errors).toEqual([]);
    expect(report.pushes.meterEvents).toBe([...want.keys()].filter((k) => k.includes('/gbs/')).length);
  });

  it('amount, quantity and meter pushes carry what Stripe documents, under keys naming the usage line', () => {
    const cached = fake.items.find((i) => (i.metadata as Record<string, string>).tollgate_line === 'cached');
    expect(cached).toMatchObject({ currency: 'usd', pricing: null });
    expect(cached?.description).toMatch(/^Cached input tokens — 2026-03-0\d$/);
    expect(cached?.metadata).toMatchObject({ tollgate_usage_line: 'cached_input_tokens' });
    const rows = fake.items.find((i) => (i.metadata as Record<string, string>).tollgate_line === 'rows');
    expect(rows).toMatchObject({ pricing: { price_details: { price: 'price_rows' } } });
    const keys = fake.requests.filter((r) => r.method === 'POST').map((r) => r.key);
    expect(keys).toContain('tollgate-v1/demo-mcp/acme/rows:rows_scanned/2026-03-02');
    expect(keys).toContain('tollgate-v1/demo-mcp/acme/gbs:gb_seconds/2026-03-02');
    const ev = fake.meterEvents.find(
      (e) => e.event.identifier === 'tollgate-v1/demo-mcp/acme/gbs:gb_seconds/2026-03-02',
    );
    expect(ev?.event).toMatchObject({
      object: 'billing.meter_event',
      event_name: 'tollgate_gb_seconds',
      payload: { stripe_customer_id: 'cus_acme', value: expect.stringMatching(/^\d+$/) },
      timestamp: Date.UTC(2026, 2, 3) / 1000 - 1, // the day's last second
    });
    // the meter event's POST carries the same key as its identifier
    expect(fake.requests.find((r) => r.key === ev?.event.identifier)?.path).toBe('/v1/billing/meter_events');
  });

  it('reports a row per usage line, reconciled to the nano-unit with the invoice preview’s lines', async () => {
    for (const customer of ['acme', 'globex']) {
      const range = periodRange('2026-03');
      const { lines } = await invoiceLines(
        deps,
        { product: 'demo-mcp', customer, period: '2026-03', range },
        quietLog as unknown as FastifyBaseLogger,
        { totals: false },
      );
      const raw = (await usageRaw()).filter((r) => r.customer === customer);
      for (const [name, usageLine] of Object.entries(LINES)) {
        const row = rowOf(report, customer, name);
        const preview = lines.filter((l) => l.component === 'usage' && l.line === usageLine);
        const nano = preview.reduce((s, l) => s + l.amountNano, 0n);
        const micro = preview.reduce((s, l) => s + l.quantity, 0n);
        // the preview's lines are the raw rows' usage, exactly
        expect(nano).toBe(raw.filter((r) => r.line === usageLine).reduce((s, r) => s + r.nano, 0n));
        expect(row).toMatchObject({
          usageLine,
          status: 'reconciled',
          tollgateNano: nano.toString(),
          tollgateQuantityMicro: micro.toString(),
        });
        if (name === 'cached') {
          expect(BigInt(row.pushedMinor) * 10_000_000n + BigInt(row.remainderNano)).toBe(nano);
          expect(row.stripeMinor).toBe(row.pushedMinor);
          expect(row.quantityRemainderMicro).toBeNull();
        } else {
          const per = name === 'rows' ? 1_000_000n : 1_000n;
          expect(row).toMatchObject({
            push: name === 'rows' ? 'quantity' : 'meter',
            pushedMinor: '0',
            tollgateQuantity: roundHalfUp(micro, per).toString(),
            pushedQuantity: roundHalfUp(micro, per).toString(),
            stripeQuantity: roundHalfUp(micro, per).toString(), // invoice items, or the meter's summary
          });
          expect(BigInt(row.pushedQuantity) * per + BigInt(row.quantityRemainderMicro as string)).toBe(micro);
          expect(2n * BigInt(row.quantityRemainderMicro as string) <= per).toBe(true);
        }
      }
    }
    // a usage line no mapping line names is reported unmapped, by name (none here: all three are mapped)
    expect(report.rows.filter((r) => r.status === 'unmapped' && r.usageLine)).toEqual([]);
  });

  it('a rerun sends nothing, and the report is the same row for row', async () => {
    const posts = fake.requests.filter((r) => r.method === 'POST').length;
    const again = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(fake.requests.filter((r) => r.method === 'POST')).toHaveLength(posts);
    expect(again.pushes).toMatchObject({ created: 0, replayed: 0, meterEvents: 0 });
    expect(again.rows).toEqual(report.rows);
  });

  it('a rerun from an empty data directory: the items are found by their metadata; the meter line refuses to push over usage its ledger does not know', async () => {
    const events = fake.meterEvents.length;
    const items = fake.items.length;
    const r = await runStripeSync(configFor(fake), ledgerDir(), deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(fake.meterEvents).toHaveLength(events);
    expect(fake.items).toHaveLength(items);
    expect(r.errors.map((e) => e.code)).toEqual(['STRIPE_METER_UNCERTAIN', 'STRIPE_METER_UNCERTAIN']);
    expect(r.errors[0]?.message).toMatch(/meter mtr_gbs already has \d+ for cus_acme in the period/);
  });
});

describe('an unmapped usage line', () => {
  it('is reported by tool and name, with its exact amount and quantity, and not pushed', async () => {
    const fake = await newFake();
    const mapping = MAPPING.replace(/ {4}- \{ name: rows[^\n]*\n/, '');
    const r = await runStripeSync(configFor(fake, mapping), ledgerDir(), deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    const raw = (await usageRaw()).filter((x) => x.customer === 'globex' && x.line === 'rows_scanned');
    expect(rowOf(r, 'globex', '(unmapped) fetch/usage:rows_scanned')).toMatchObject({
      status: 'unmapped',
      usageLine: 'rows_scanned',
      tollgateNano: raw.reduce((s, x) => s + x.nano, 0n).toString(),
      tollgateQuantityMicro: raw.reduce((s, x) => s + x.micro, 0n).toString(),
    });
    expect(fake.items.some((i) => (i.metadata as Record<string, string>).tollgate_line === 'rows')).toBe(
      false,
    );
    await fake.close();
  });
});

const counted = (fake: FakeStripe) => fake.meterEvents.filter((e) => e.counted);

/** A first run over a fresh fake and data directory that dies at the `n`-th meter event. */
async function crashedRun(n: number, when: 'after' | 'before') {
  const fake = await newFake();
  const runDir = ledgerDir();
  const config = configFor(fake);
  await expect(
    runStripeSync(config, runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
      gateway: gatewayDying(fake, 'createMeterEvent', n, when),
    }),
  ).rejects.toThrow(when === 'after' ? 'power cut' : 'killed before sending');
  return { fake, runDir, config };
}

describe('meter events never counted twice', () => {
  it('a crash after Stripe took an event: the resume resends it under the same key, Stripe replays, counted once', async () => {
    const { fake, runDir, config } = await crashedRun(2, 'after');
    expect(counted(fake)).toHaveLength(2);
    const r = await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    expect(r.pushes.replayed).toBe(1);
    const replay = fake.requests.filter((q) => q.replayed);
    expect(replay).toHaveLength(1);
    expect(replay[0]?.path).toBe('/v1/billing/meter_events');
    expect(pushedAt(fake)).toEqual(await expectedUsagePushes());
    const mapped = r.rows.filter((x) => x.stripeCustomer && x.status !== 'unmapped');
    expect(mapped.map((x) => x.status)).toEqual(mapped.map(() => 'reconciled'));
    await fake.close();
  });

  it('even when the resend reached Stripe under a fresh key, the same identifier is not counted again', async () => {
    const { fake, runDir, config } = await crashedRun(1, 'after');
    const real = sdkGateway({
      secretKey: fake.secretKey,
      host: fake.host,
      port: fake.port,
      protocol: 'http',
    });
    const freshKeys: StripeGateway = {
      ...real,
      createMeterEvent: (p, k) => real.createMeterEvent(p, `${k}#2`),
    };
    await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW, gateway: freshKeys });
    expect(fake.meterEvents.filter((e) => !e.counted)).toHaveLength(1);
    expect(pushedAt(fake)).toEqual(await expectedUsagePushes());
    await fake.close();
  });

  it('a crashed event older than Stripe’s 24 h dedup window is not resent: the customer stops with STRIPE_METER_UNCERTAIN', async () => {
    const { fake, runDir, config } = await crashedRun(1, 'after');
    fake.advanceMs(25 * HOUR);
    const acme = () => fake.meterEvents.filter((e) => e.customer === 'cus_acme');
    const before = acme().length;
    const r = await runStripeSync(config, runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW + 25 * HOUR,
    });
    expect(acme()).toHaveLength(before); // globex's events went on: its ledger is sound
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toMatchObject({
      customer: 'acme',
      code: 'STRIPE_METER_UNCERTAIN',
      message: expect.stringContaining('tollgate-v1/demo-mcp/acme/gbs:gb_seconds/2026-03-02'),
    });
    expect(rowOf(r, 'acme', 'gbs').status).toBe('incomplete');
    await fake.close();
  });

  it.each([
    ['sent', 'after', 'recorded as found, nothing sent'],
    ['unsent', 'before', 'sent once under a new identifier'],
  ] as const)('--resolve KEY=%s for an event that Stripe %s-crash: %s', async (said, when, _what) => {
    const { fake, runDir, config } = await crashedRun(1, when);
    fake.advanceMs(25 * HOUR);
    const later = NOW + 25 * HOUR;
    const unsure = await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: later });
    expect(unsure.errors.map((e) => e.code)).toEqual(['STRIPE_METER_UNCERTAIN']);
    const key = 'tollgate-v1/demo-mcp/acme/gbs:gb_seconds/2026-03-02';
    const r = await runStripeSync(config, runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: later,
      resolve: { [key]: said },
    });
    expect(r.errors).toEqual([]);
    const acme = counted(fake).filter((e) => e.customer === 'cus_acme');
    const resent = acme.filter((e) => String(e.event.identifier).startsWith(`${key}#resent-`));
    expect(resent).toHaveLength(said === 'unsent' ? 1 : 0);
    expect(pushedAt(fake).size).toBeGreaterThan(0);
    const gbs = rowOf(r, 'acme', 'gbs');
    expect(gbs.status).toBe('reconciled'); // the meter's summary = pushed = Tollgate
    expect(acme.reduce((s, e) => s + e.value, 0)).toBe(Number(gbs.pushedQuantity));
    // a resolved key is settled: resolving it again is refused
    await expect(
      runStripeSync(config, runDir, deps, quietLog, {
        periods: PERIODS,
        nowMs: later,
        resolve: { [key]: said },
      }),
    ).rejects.toThrow('STRIPE_RESOLVE_INVALID');
    await fake.close();
  });

  it('a day older than Stripe’s 35-day window is not sent: STRIPE_METER_WINDOW', async () => {
    const later = Date.UTC(2026, 3, 8, 3, 0); // April 8th: March 2nd–3rd are more than 35 days back
    const fake = await newFake(later);
    const r = await runStripeSync(configFor(fake), ledgerDir(), deps, quietLog, {
      periods: PERIODS,
      nowMs: later,
    });
    expect(fake.meterEvents).toEqual([]);
    expect(r.errors.map((e) => e.code)).toEqual(['STRIPE_METER_WINDOW', 'STRIPE_METER_WINDOW']);
    expect(r.errors[0]?.message).toMatch(/acme gbs 2026-03-02: its event would be dated 2026-03-02T23:59:59/);
    // the stopped customers' rows still say what was pushed before the stop, and what Stripe holds (they said 0)
    const held = (customer: string, line: string) =>
      fake.items
        .filter((i) => {
          const m = i.metadata as Record<string, string>;
          return m.tollgate_customer === customer && m.tollgate_line === line;
        })
        .reduce((sum, i) => sum + BigInt(i.amount as number), 0n);
    const amountRows = r.rows.filter((x) => x.push === 'amount' && x.stripeCustomer);
    expect(amountRows.length).toBeGreaterThan(0);
    expect(amountRows.some((x) => BigInt(x.pushedMinor) > 0n)).toBe(true);
    for (const row of amountRows) {
      expect(row.status).toBe('incomplete');
      expect(row.stripeMinor, `${row.customer} ${row.line}`).toBe(held(row.customer, row.line).toString());
      expect(row.pushedMinor).toBe(row.stripeMinor);
    }
    await fake.close();
  });
});

describe('the meter’s side in the report', () => {
  it('Stripe aggregating behind shows as pending, then reconciled once it caught up', async () => {
    // each customer's summary is read right after its own last event, which the lag holds back
    const fake = await newFake();
    fake.meterLag = 1;
    const runDir = ledgerDir();
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    const lagging = r.rows.filter((x) => x.line === 'gbs' && x.status === 'pending');
    expect(lagging.map((x) => x.customer)).toEqual(['acme', 'globex']);
    expect(Number(lagging[0]?.stripeQuantity)).toBeLessThan(Number(lagging[0]?.pushedQuantity));
    // an hour after the last push, a summary still behind is a mismatch (events Stripe did not count): the lag
    // now holds back the newest event of all, globex's
    const hourLater = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW + METER_CATCH_UP_MS,
    });
    expect(hourLater.rows.filter((x) => x.line === 'gbs').map((x) => x.status)).toEqual([
      'reconciled',
      'mismatch',
    ]);
    fake.meterLag = 0;
    const again = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(again.rows.filter((x) => x.line === 'gbs').map((x) => x.status)).toEqual([
      'reconciled',
      'reconciled',
    ]);
    await fake.close();
  });

  it('events Stripe accepts and then drops (a customer it does not know, found asynchronously): pending, then a mismatch', async () => {
    const fake = await startFakeStripe({
      customers: ['cus_acme'], // cus_globex does not exist at Stripe
      meters: [{ id: 'mtr_gbs', event_name: 'tollgate_gb_seconds' }],
      clockMs: NOW,
    });
    const meterOnly = `
stripe:
  product: demo-mcp
  customers: { acme: cus_acme, globex: cus_globex }
  lines:
    - { name: gbs, components: [usage], usageLine: gb_seconds, push: meter, quantityDecimals: 3, meter: { eventName: tollgate_gb_seconds, id: mtr_gbs } }
`;
    const runDir = ledgerDir();
    const r = await runStripeSync(configFor(fake, meterOnly), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(r.errors).toEqual([]);
    expect(new Set(fake.meterErrors.map((e) => e.code))).toEqual(new Set(['meter_event_customer_not_found']));
    expect(rowOf(r, 'globex', 'gbs')).toMatchObject({ status: 'pending', stripeQuantity: '0' });
    expect(rowOf(r, 'acme', 'gbs').status).toBe('reconciled');
    const later = await runStripeSync(configFor(fake, meterOnly), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW + METER_CATCH_UP_MS,
    });
    expect(rowOf(later, 'globex', 'gbs').status).toBe('mismatch');
    await fake.close();
  });

  it('without a meter id nothing is read back: stripeQuantity is empty', async () => {
    const fake = await newFake();
    const r = await runStripeSync(
      configFor(fake, MAPPING.replace(', id: mtr_gbs', '')),
      ledgerDir(),
      deps,
      quietLog,
      { periods: PERIODS, nowMs: NOW },
    );
    expect(rowOf(r, 'acme', 'gbs')).toMatchObject({ stripeQuantity: null, status: 'reconciled' });
    expect(fake.requests.some((q) => q.path.includes('event_summaries'))).toBe(false);
    await fake.close();
  });
});

describe('dry run', () => {
  it('computes the usage-line pushes and meter events, sends nothing, writes no ledger', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
      dryRun: true,
    });
    expect(fake.requests.filter((q) => q.method === 'POST')).toEqual([]);
    expect(existsSync(join(runDir, 'stripe'))).toBe(false);
    const want = await expectedUsagePushes();
    const calls = r.rows.filter((x) => x.line === 'calls').reduce((s, x) => s + x.unitsClosed, 0);
    expect(r.pushes.wouldPush).toBeGreaterThanOrEqual(want.size);
    expect(r.pushes.wouldPush).toBeLessThanOrEqual(want.size + calls);
    for (const customer of ['acme', 'globex'])
      expect(rowOf(r, customer, 'gbs')).toMatchObject({
        status: 'dry_run',
        pushedQuantity: rowOf(r, customer, 'gbs').tollgateQuantity,
      });
    await fake.close();
  });
});
