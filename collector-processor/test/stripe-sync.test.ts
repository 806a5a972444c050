import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import type { AnalyticsDeps } from '@tollgate/billing-api';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, ConfigError, loadConfig } from '../src/config/settings.js';
import { type StripeGateway, sdkGateway } from '../src/stripe/gateway.js';
import { runStripeSync } from '../src/stripe/job.js';
import { REPORT_COLUMNS, reportCsv, type SyncReport } from '../src/stripe/report.js';
import { type FakeStripe, startFakeStripe } from './support/fake-stripe.js';
import type { TestTollgate } from './support/harness.js';
import { toolSpan } from './support/otlp-json.js';
import { gatewayDying, type StripeTestbed, startStripeTestbed } from './support/stripe-testbed.js';

/**
 * `tollgate billing sync stripe` against a local fake of Stripe's invoice-item endpoints, driven through
 * the official SDK (host/port/protocol options): a sync, a rerun, a crash and a resume, a dry run, the
 * report, mapping errors and a Stripe error answer. The usage is real: spans through the OTLP receiver,
 * rated and landed in chDB; the expected pushes are computed here from the raw rows.
 */

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*":
            price: { perCall: "0.0043", perInputToken: "0.0000013", perOutputToken: "0.0000021" }
            cost: { perCall: "0.001" }
`;

const MAPPING = `
stripe:
  product: demo-mcp
  granularity: day
  settleMinutes: 120
  customers: { acme: cus_acme, globex: cus_globex }
  lines:
    - { name: calls, components: [call], push: amount, description: MCP tool calls }
    - { name: search-input-tokens, tools: [search], components: [input_tokens], push: quantity, price: price_tok }
    - { name: other-tokens, components: [input_tokens, output_tokens], push: amount }
`;

const DAYS = ['2026-03-02', '2026-03-03', '2026-03-04'];
const NOW = Date.UTC(2026, 2, 5, 3, 0); // every day of DAYS closed and settled; the 5th is not
const PERIODS = ['2026-03'];

let bed: StripeTestbed;
let tg: TestTollgate;
let dir: string;
let deps: AnalyticsDeps;
let configFile: string;
const configFor = (fake: FakeStripe, mapping = MAPPING): Config => bed.configFor(fake, mapping);
const send = (spans: unknown[]) => bed.send(spans);
const quietLog = pino({ level: 'silent' });

const span = (customer: string, tool: string, day: string, hour: number, inTok: number, outTok: number) =>
  toolSpan({
    customer,
    tool,
    startMs: Date.parse(`${day}T${String(hour).padStart(2, '0')}:00:00Z`),
    attrs: { 'gen_ai.usage.input_tokens': inTok, 'gen_ai.usage.output_tokens': outTok },
  });

interface Raw {
  customer: string;
  tool: string;
  day: string;
  callNano: bigint;
  inputNano: bigint;
  outputNano: bigint;
  inputTokens: bigint;
}

async function raw(): Promise<Raw[]> {
  const rows = await (
    await tg.clickhouse.client.query({
      query: `SELECT customer, tool, toString(toDate(started_at)) AS day, price_call_nano, price_input_nano,
        price_output_nano, input_tokens FROM mcp_tool_calls WHERE product = 'demo-mcp'`,
      format: 'JSONEachRow',
    })
  ).json<Record<string, string>>();
  return rows.map((r) => ({
    customer: String(r.customer),
    tool: String(r.tool),
    day: String(r.day),
    callNano: BigInt(r.price_call_nano as string),
    inputNano: BigInt(r.price_input_nano as string),
    outputNano: BigInt(r.price_output_nano as string),
    inputTokens: BigInt(r.input_tokens as string),
  }));
}

const roundCents = (nano: bigint) => (nano + 5_000_000n) / 10_000_000n; // amounts here are positive

/** What each push should be, from the raw rows: per customer, line and day, round(running total) − pushed. */
async function expectedPushes(): Promise<Map<string, bigint>> {
  const rows = await raw();
  const out = new Map<string, bigint>();
  for (const customer of ['acme', 'globex']) {
    const cum = { calls: 0n, other: 0n, tok: 0n };
    const pushed = { calls: 0n, other: 0n, tok: 0n };
    for (const day of ['2026-03-01', ...DAYS]) {
      for (const r of rows.filter((x) => x.customer === customer && x.day === day)) {
        cum.calls += r.callNano;
        cum.other += r.outputNano + (r.tool === 'search' ? 0n : r.inputNano);
        if (r.tool === 'search') cum.tok += r.inputTokens;
      }
      const calls = roundCents(cum.calls) - pushed.calls;
      const other = roundCents(cum.other) - pushed.other;
      const tok = cum.tok - pushed.tok;
      pushed.calls += calls;
      pushed.other += other;
      pushed.tok += tok;
      if (calls) out.set(`${customer}/calls/${day}`, calls);
      if (other) out.set(`${customer}/other-tokens/${day}`, other);
      if (tok) out.set(`${customer}/search-input-tokens/${day}`, tok);
    }
  }
  return out;
}

/** The fake's items as customer/line/unit → amount (amount lines) or quantity (quantity lines). */
function itemsAt(fake: FakeStripe): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const i of fake.items) {
    const m = i.metadata as Record<string, string>;
    const k = `${m.tollgate_customer}/${m.tollgate_line}/${m.tollgate_unit}`;
    if (out.has(k)) throw new Error(`billed twice: ${k}`);
    out.set(
      k,
      BigInt(m.tollgate_line === 'search-input-tokens' ? (i.quantity as number) : (i.amount as number)),
    );
  }
  return out;
}

const posts = (fake: FakeStripe) => fake.requests.filter((r) => r.method === 'POST');

/** What `items` (by `customer/line/unit`, as itemsAt keys them) add up to for one `customer/line`. */
const lineTotal = (items: Map<string, bigint>, line: string): bigint =>
  [...items].filter(([k]) => k.startsWith(`${line}/`)).reduce((t, [, v]) => t + v, 0n);

async function newFake(): Promise<FakeStripe> {
  return startFakeStripe({
    customers: ['cus_acme', 'cus_globex'],
    prices: [{ id: 'price_tok', currency: 'usd', unit_amount: 1, product: 'prod_tokens' }],
  });
}

const ledgerDir = () => bed.ledgerDir();

beforeAll(async () => {
  bed = await startStripeTestbed('tollgate-stripe-', PLANS);
  ({ tg, dir, deps, configFile } = bed);
  const spans = [];
  for (const [i, day] of DAYS.entries()) {
    for (let h = 0; h < 3 + i; h++) spans.push(span('acme', 'search', day, 8 + h, 100 + 7 * h, 20));
    spans.push(span('acme', 'fetch', day, 15, 50, 333));
    spans.push(span('globex', 'fetch', day, 9, 11, 0));
  }
  spans.push(span('initech', 'search', '2026-03-03', 10, 5, 5));
  await send(spans);
}, 120_000);

afterAll(async () => {
  await tg?.cleanup();
});

describe('sync', () => {
  let fake: FakeStripe;
  let report: SyncReport;
  let runDir: string;
  beforeAll(async () => {
    fake = await newFake();
    runDir = ledgerDir();
    report = await runStripeSync(configFor(fake), runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
  });
  afterAll(() => fake.close());

  it('pushes one invoice item per customer, line and day: round(running total) − already pushed', async () => {
    const want = await expectedPushes();
    expect(want.size).toBeGreaterThan(6);
    expect(itemsAt(fake)).toEqual(want);
    expect(report.pushes).toMatchObject({ created: want.size, replayed: 0, found: 0 });
    expect(report.errors).toEqual([]);
  });

  it('amount lines carry amount and currency; quantity lines a Stripe price and a quantity; every POST an idempotency key', () => {
    const calls = fake.items.find((i) => (i.metadata as Record<string, string>).tollgate_line === 'calls');
    expect(calls).toMatchObject({ currency: 'usd', pricing: null, customer: 'cus_acme' });
    expect(calls?.description).toMatch(/^MCP tool calls — 2026-03-0\d$/);
    const tok = fake.items.find(
      (i) => (i.metadata as Record<string, string>).tollgate_line === 'search-input-tokens',
    );
    expect(tok).toMatchObject({ pricing: { price_details: { price: 'price_tok' } }, currency: 'usd' });
    expect(tok?.amount).toBe(tok?.quantity); // unit_amount 1: Stripe priced it
    for (const r of posts(fake))
      expect(r.key).toMatch(/^tollgate-v1\/demo-mcp\/(acme|globex)\/[a-z-]+\/2026-03-0\d$/);
    const m = fake.items[0]?.metadata as Record<string, string>;
    expect(m.tollgate_key).toBe(posts(fake)[0]?.key);
    const p = fake.items[0]?.period as { start: number; end: number };
    expect(p.end - p.start).toBe(86_399); // the UTC day, inclusive bounds
  });

  it('reconciles per customer and line: Tollgate (rounded) = pushed = Stripe, remainder under half a cent', async () => {
    const rows = await raw();
    const acmeCalls = report.rows.find((r) => r.customer === 'acme' && r.line === 'calls');
    const nano = rows.filter((r) => r.customer === 'acme').reduce((s, r) => s + r.callNano, 0n);
    expect(acmeCalls).toMatchObject({
      status: 'reconciled',
      tollgateNano: nano.toString(),
      tollgateMinor: roundCents(nano).toString(),
      pushedMinor: roundCents(nano).toString(),
      stripeMinor: roundCents(nano).toString(),
      remainderNano: (nano - roundCents(nano) * 10_000_000n).toString(),
      lastUnit: '2026-03-04',
      unitsClosed: 4, // the 1st (no calls) to the 4th
    });
    const mapped = report.rows.filter((r) => !r.status.startsWith('unmapped') && r.stripeCustomer);
    expect(mapped.every((r) => r.status === 'reconciled')).toBe(true);
    for (const r of mapped) expect(BigInt(r.remainderNano) * 2n <= 10_000_000n).toBe(true);
    // the exact nano amounts of the lines add up to the raw rows of the mapped customers
    const acmeRaw = rows
      .filter((r) => r.customer === 'acme')
      .reduce((s, r) => s + r.callNano + r.inputNano + r.outputNano, 0n);
    const tokRow = report.rows.find((r) => r.customer === 'acme' && r.line === 'search-input-tokens');
    const otherRow = report.rows.find((r) => r.customer === 'acme' && r.line === 'other-tokens');
    expect(
      BigInt(acmeCalls?.tollgateNano ?? -1) +
        BigInt(tokRow?.tollgateNano ?? -1) +
        BigInt(otherRow?.tollgateNano ?? -1),
    ).toBe(acmeRaw);
  });

  it('lists customers with usage that the mapping does not name, unpushed', () => {
    expect(report.rows.find((r) => r.customer === 'initech')).toMatchObject({
      line: '(unmapped customer)',
      status: 'unmapped',
      stripeCustomer: null,
    });
  });

  it('writes the report as JSON and CSV next to the ledger', () => {
    const json = JSON.parse(readFileSync(join(runDir, 'stripe', 'report-latest.json'), 'utf8')) as SyncReport;
    expect(json.rows).toEqual(report.rows);
    const csv = readFileSync(join(runDir, 'stripe', 'report-latest.csv'), 'utf8')
      .trimEnd()
      .split('\r\n');
    expect(csv[0]).toBe(REPORT_COLUMNS.join(','));
    expect(csv).toHaveLength(report.rows.length + 1);
    const acme = csv.find((l) => l.startsWith('acme,cus_acme,2026-03,calls,'));
    const row = report.rows.find((r) => r.customer === 'acme' && r.line === 'calls');
    expect(acme?.split(',')).toEqual(REPORT_COLUMNS.map((c) => String(row?.[c] ?? '')));
    expect(reportCsv(report)).toBe(readFileSync(join(runDir, 'stripe', 'report-latest.csv'), 'utf8'));
  });

  it('a rerun pushes nothing: the ledger knows every push', async () => {
    const before = fake.items.length;
    const again = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(fake.items).toHaveLength(before);
    expect(again.pushes).toMatchObject({ created: 0, replayed: 0, found: 0 });
    expect(posts(fake)).toHaveLength(before);
    expect(again.rows.filter((r) => r.stripeCustomer).every((r) => r.status === 'reconciled')).toBe(true);
    // settled days are not read again, yet the report is the same, row for row
    expect(again.rows).toEqual(report.rows);
  });

  it('a rerun from an empty data directory finds the pushes at Stripe by their metadata and pushes nothing', async () => {
    const before = fake.items.length;
    fake.advanceMs(25 * 3_600_000); // and after Stripe has forgotten the idempotency keys (24 h)
    const again = await runStripeSync(configFor(fake), ledgerDir(), deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(fake.items).toHaveLength(before);
    expect(again.pushes).toMatchObject({ created: 0, found: before });
    expect(again.rows).toEqual(report.rows);
  });

  it('a new day is pushed on top, with a late call of a pushed day carried into it', async () => {
    const before = new Map(itemsAt(fake));
    await send([
      span('globex', 'fetch', '2026-03-05', 9, 0, 0),
      span('globex', 'fetch', '2026-03-03', 23, 0, 0), // late: the 3rd was pushed already
    ]);
    const later = Date.UTC(2026, 2, 6, 3, 0);
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: later,
    });
    const now = itemsAt(fake); // throws if a key was billed twice
    const added = [...now.keys()].filter((k) => !before.has(k));
    // globex's days were 0.43 cent each: 03-02 added nothing (0.43 → 0), 03-03 1 cent (0.86 → 1), 03-04
    // nothing (1.29 → 1); all three are settled. The late 0.43 of the 3rd is carried into the next unit:
    // through the 5th the running total is 2.15 → 2, so the 5th pushes 1 cent. Settled days are never redone.
    expect(added).toEqual(['globex/calls/2026-03-05']);
    expect(now.get('globex/calls/2026-03-05')).toBe(1n);
    const rows = (await raw()).filter((x) => x.customer === 'globex');
    const total = rows.reduce((sum, x) => sum + x.callNano, 0n);
    expect(total).toBe(5n * 4_300_000n);
    const globexCalls = r.rows.find((x) => x.customer === 'globex' && x.line === 'calls');
    expect(globexCalls).toMatchObject({
      status: 'reconciled',
      lastUnit: '2026-03-05',
      tollgateNano: total.toString(),
      pushedMinor: roundCents(total).toString(),
      stripeMinor: roundCents(total).toString(),
    });
  });
});

describe('granularity period', () => {
  it('pushes one item per customer and line once the month is over and settled, keyed by the period', async () => {
    const fake = await newFake();
    const config = configFor(fake, MAPPING.replace('granularity: day', 'granularity: period'));
    const runDir = ledgerDir();
    const inMonth = await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    expect(posts(fake)).toEqual([]); // March is not over on the 5th
    expect(inMonth.rows.find((r) => r.customer === 'acme' && r.line === 'calls')?.unitsClosed).toBe(0);
    const after = Date.UTC(2026, 3, 1, 2, 0); // April 1st, 02:00: the month ended 120 minutes ago
    const r = await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: after });
    const rows = await raw();
    const acmeCalls = rows.filter((x) => x.customer === 'acme').reduce((sum, x) => sum + x.callNano, 0n);
    const items = itemsAt(fake);
    expect(items.get('acme/calls/2026-03')).toBe(roundCents(acmeCalls));
    expect([...items.keys()].every((k) => k.endsWith('/2026-03'))).toBe(true);
    expect(posts(fake).map((p) => p.key)).toContain('tollgate-v1/demo-mcp/acme/calls/2026-03');
    const p = fake.items[0]?.period as { start: number; end: number };
    expect([p.start, p.end]).toEqual([Date.UTC(2026, 2, 1) / 1000, Date.UTC(2026, 3, 1) / 1000 - 1]);
    expect(r.rows.filter((x) => x.stripeCustomer).every((x) => x.status === 'reconciled')).toBe(true);
    await fake.close();
  });
});

describe('crash mid-sync, then resume', () => {
  it('a crash after Stripe took a push but before the ledger recorded it: the resume finds it at Stripe by its key, bills once', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const config = configFor(fake);
    const crashing = gatewayDying(fake, 'createInvoiceItem', 3, 'after');
    await expect(
      runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW, gateway: crashing }),
    ).rejects.toThrow('power cut');
    expect(fake.items).toHaveLength(3);
    const ledger = readFileSync(join(runDir, 'stripe', 'ledger.jsonl'), 'utf8')
      .trim()
      .split('\n');
    const entries = ledger.map((l) => JSON.parse(l) as { t: string; how?: string; key: string });
    const sent = entries.filter((e) => e.how !== 'nothing'); // units that added nothing send nothing
    expect(sent.map((e) => e.t)).toEqual(['intent', 'done', 'intent', 'done', 'intent']);
    expect(entries.at(-1)?.t).toBe('intent'); // the crashed push: an intent without an outcome

    const resumed = await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    const want = await expectedPushes();
    expect(itemsAt(fake)).toEqual(want); // throws on a double bill
    // the third push was found at Stripe by its key in the metadata before anything was resent
    expect(resumed.pushes.found).toBe(1);
    expect(resumed.pushes.created).toBe(want.size - 3);
    await fake.close();
  });

  it('an intent whose push never reached Stripe is sent on resume with the same key and body', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const config = configFor(fake);
    const dying = gatewayDying(fake, 'createInvoiceItem', 2, 'before');
    await expect(
      runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW, gateway: dying }),
    ).rejects.toThrow('killed');
    expect(fake.items).toHaveLength(1);
    const lines = readFileSync(join(runDir, 'stripe', 'ledger.jsonl'), 'utf8')
      .trim()
      .split('\n');
    const pending = JSON.parse(lines.at(-1) as string);
    expect(pending.t).toBe('intent');
    await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    expect(itemsAt(fake)).toEqual(await expectedPushes());
    const resent = posts(fake).filter((r) => r.key === pending.key);
    expect(resent).toHaveLength(1);
    const item = fake.items.find((i) => (i.metadata as Record<string, string>).tollgate_key === pending.key);
    expect(item?.amount ?? item?.quantity).toBeDefined();
    await fake.close();
  });

  it('a unit found at Stripe with another amount than its intent (another data directory pushed it): every later run counts what Stripe holds', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const config = configFor(fake);
    const real = sdkGateway({
      secretKey: fake.secretKey,
      host: fake.host,
      port: fake.port,
      protocol: 'http',
    });
    // run 1 dies before its first push leaves; "another instance" pushes that key with one cent more
    let first: { p: Parameters<StripeGateway['createInvoiceItem']>[0]; key: string } | undefined;
    const dyingFirst: StripeGateway = {
      ...real,
      createInvoiceItem: async (p, key) => {
        first ??= { p, key };
        throw new Error('killed before sending');
      },
    };
    await expect(
      runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW, gateway: dyingFirst }),
    ).rejects.toThrow('killed');
    const pushed = first as NonNullable<typeof first>;
    await real.createInvoiceItem({ ...pushed.p, amount: (pushed.p.amount as number) + 1 }, pushed.key);
    // run 2 finds it (and counts Stripe's amount), then dies before its next push; run 3 finishes
    await expect(
      runStripeSync(config, runDir, deps, quietLog, {
        periods: PERIODS,
        nowMs: NOW,
        gateway: gatewayDying(fake, 'createInvoiceItem', 1, 'before'),
      }),
    ).rejects.toThrow('killed');
    const last = await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    // per customer and line, Stripe holds the rounded total: the found cent is taken off a later push
    const m = pushed.p.metadata as Record<string, string>;
    const line = `${m.tollgate_customer}/${m.tollgate_line}`;
    expect(lineTotal(itemsAt(fake), line)).toBe(lineTotal(await expectedPushes(), line));
    expect(last.rows.filter((x) => x.stripeCustomer).every((x) => x.status === 'reconciled')).toBe(true);
    await fake.close();
  });

  it("an operator's edit of a pushed item at Stripe stays the operator's: later units do not charge it again", async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const config = configFor(fake);
    await expect(
      runStripeSync(config, runDir, deps, quietLog, {
        periods: PERIODS,
        nowMs: NOW,
        gateway: gatewayDying(fake, 'createInvoiceItem', 3, 'before'),
      }),
    ).rejects.toThrow('killed');
    // the first push, lowered by a cent by an operator at Stripe
    const edited = fake.items[0] as { amount: number; metadata: Record<string, string> };
    edited.amount -= 1;
    const line = `${edited.metadata.tollgate_customer}/${edited.metadata.tollgate_line}`;
    await runStripeSync(config, runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    expect(lineTotal(itemsAt(fake), line)).toBe(lineTotal(await expectedPushes(), line) - 1n);
    await fake.close();
  });

  it('a replay of the same key and body answers Idempotent-Replayed; other parameters under that key are refused', async () => {
    const fake = await newFake();
    const gw = sdkGateway({ secretKey: fake.secretKey, host: fake.host, port: fake.port, protocol: 'http' });
    const params = {
      customer: 'cus_acme',
      amount: 123,
      currency: 'usd',
      description: 'x',
      period: { start: 1, end: 2 },
      metadata: { tollgate_key: 'k1' },
    };
    const a = await gw.createInvoiceItem(params, 'k1');
    const b = await gw.createInvoiceItem(params, 'k1');
    expect(a.replayed).toBe(false);
    expect(b).toEqual({ ...a, replayed: true });
    await expect(gw.createInvoiceItem({ ...params, amount: 124 }, 'k1')).rejects.toThrow(
      /STRIPE_IDEMPOTENCY_CONFLICT: .*400 idempotency_error/,
    );
    expect(fake.items).toHaveLength(1);
    await fake.close();
  });
});

describe('some customers only', () => {
  it('--customer pushes those of the mapping and no other; an unmapped one is refused', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
      customers: ['globex'],
    });
    const want = [...(await expectedPushes())].filter(([k]) => k.startsWith('globex/'));
    expect(itemsAt(fake)).toEqual(new Map(want));
    expect(new Set(r.rows.map((x) => x.customer))).toEqual(new Set(['globex']));
    await expect(
      runStripeSync(configFor(fake), runDir, deps, quietLog, {
        periods: PERIODS,
        nowMs: NOW,
        customers: ['initech'],
      }),
    ).rejects.toThrow(
      'STRIPE_UNKNOWN_CUSTOMER: the customer asked for is not in the stripe: mapping: initech',
    );
    await fake.close();
  });
});

describe('one run at a time', () => {
  it('a second run on the same data directory is refused while the first runs; a crashed run’s lock is taken over', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    mkdirSync(join(runDir, 'stripe'));
    const lock = join(runDir, 'stripe', 'sync.lock');
    writeFileSync(lock, String(process.pid)); // a live process holds it
    await expect(
      runStripeSync(configFor(fake), runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW }),
    ).rejects.toThrow(/STRIPE_BUSY: .*pid \d+/);
    expect(posts(fake)).toEqual([]);
    const gone = spawnSync('true').pid; // a process that has exited
    writeFileSync(lock, String(gone));
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    expect(r.pushes.created).toBe((await expectedPushes()).size);
    expect(existsSync(lock)).toBe(false); // released
    await fake.close();
  });
});

describe('crash mid-sync, then resume, when the list does not show the crashed push', () => {
  it('the intent is sent again under its key and Stripe replays its first answer: billed once', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const config = configFor(fake);
    await expect(
      runStripeSync(config, runDir, deps, quietLog, {
        periods: PERIODS,
        nowMs: NOW,
        gateway: gatewayDying(fake, 'createInvoiceItem', 2, 'after'),
      }),
    ).rejects.toThrow('power cut');
    const real = sdkGateway({
      secretKey: fake.secretKey,
      host: fake.host,
      port: fake.port,
      protocol: 'http',
    });
    // a list that lags behind the create (or an item outside the listed range): only the key can help
    const blind: StripeGateway = {
      ...real,
      listInvoiceItems: async () => [],
    };
    const resumed = await runStripeSync(config, runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
      gateway: blind,
    });
    expect(resumed.pushes.replayed).toBe(1);
    expect(fake.requests.filter((r) => r.replayed)).toHaveLength(1);
    expect(itemsAt(fake)).toEqual(await expectedPushes()); // throws on a double bill
    await fake.close();
  });
});

describe('dry run', () => {
  it('computes the pushes, sends nothing, writes no ledger', async () => {
    const fake = await newFake();
    const runDir = ledgerDir();
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
      dryRun: true,
    });
    expect(posts(fake)).toEqual([]);
    expect(existsSync(join(runDir, 'stripe'))).toBe(false);
    expect(r.pushes.wouldPush).toBe((await expectedPushes()).size);
    expect(r.rows.filter((x) => x.stripeCustomer).every((x) => x.status === 'dry_run')).toBe(true);
    expect(r.stripeRead).toBe(true);
    await fake.close();
  });
});

describe('a Stripe error answer', () => {
  it('stops that customer with the error in the report, syncs the others; once fixed, the rerun finishes it', async () => {
    const fake = await startFakeStripe({
      customers: ['cus_acme'], // cus_globex does not exist at Stripe
      prices: [{ id: 'price_tok', currency: 'usd', unit_amount: 1, product: 'prod_tokens' }],
    });
    const runDir = ledgerDir();
    const r = await runStripeSync(configFor(fake), runDir, deps, quietLog, { periods: PERIODS, nowMs: NOW });
    expect(r.errors).toEqual([
      {
        customer: 'globex',
        code: 'STRIPE_API',
        message: expect.stringMatching(
          /400 invalid_request_error\/resource_missing: \[req_\w+\] No such customer: 'cus_globex'$/,
        ),
      },
    ]);
    expect(r.rows.filter((x) => x.customer === 'globex').every((x) => x.status === 'incomplete')).toBe(true);
    expect(r.rows.filter((x) => x.customer === 'acme').every((x) => x.status === 'reconciled')).toBe(true);
    fake.customers.add('cus_globex');
    const again = await runStripeSync(configFor(fake), runDir, deps, quietLog, {
      periods: PERIODS,
      nowMs: NOW,
    });
    expect(again.errors).toEqual([]);
    expect(itemsAt(fake)).toEqual(await expectedPushes());
    await fake.close();
  });

  it('a wrong key is Stripe’s 401, and the key is in no log line', async () => {
    const fake = await newFake();
    const lines: string[] = [];
    const log = pino(
      { level: 'debug' },
      new Writable({
        write(chunk, _enc, cb) {
          lines.push(String(chunk));
          cb();
        },
      }),
    );
    const good = configFor(fake);
    const wrongKey = 'sk_test_wrongwrongwrongwrong1234';
    const bad = loadConfig(
      {
        '--config': configFile,
        '--stripe-host': fake.host,
        '--stripe-port': String(fake.port),
        '--stripe-protocol': 'http',
      },
      { STRIPE_SECRET_KEY: wrongKey },
    );
    const r = await runStripeSync(bad, ledgerDir(), deps, log, { periods: PERIODS, nowMs: NOW });
    expect(r.errors.map((e) => e.message)).toEqual([
      expect.stringMatching(
        /401 invalid_request_error: \[req_\w+\] Invalid API Key provided: sk_test_\*+1234$/,
      ),
      expect.stringMatching(
        /401 invalid_request_error: \[req_\w+\] Invalid API Key provided: sk_test_\*+1234$/,
      ),
    ]);
    await runStripeSync(good, ledgerDir(), deps, log, { periods: PERIODS, nowMs: NOW });
    const all = lines.join('');
    expect(all).toContain('pushed to Stripe');
    expect(all).not.toContain(fake.secretKey);
    expect(all).not.toContain(wrongKey);
    await fake.close();
  });
});

describe('mapping errors', () => {
  const load = (stripe: string, env: Record<string, string> = {}, flags: Record<string, string> = {}) => {
    const f = join(dir, 'bad.yaml');
    writeFileSync(f, stripe);
    return () => loadConfig({ '--config': f, ...flags }, env);
  };
  it.each([
    [
      'a quantity line without a price',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: quantity } ] }',
      'stripe.lines.0.price: a quantity line needs a Stripe price',
    ],
    [
      'an amount line with a price',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: amount, price: price_1 } ] }',
      'stripe.lines.0.price: an amount line pushes',
    ],
    [
      'duration as a quantity',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [duration], push: quantity, price: price_1 } ] }',
      'stripe.lines.0.components: duration has no whole-unit quantity',
    ],
    [
      'usage without the usage line it pushes',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [usage], push: amount } ] }',
      'stripe.lines.0.usageLine: name the usage line (usageLine: <name>): each usage line goes to Stripe as its own line',
    ],
    [
      'a usage line added to other components',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call, usage], usageLine: rows, push: amount } ] }',
      'stripe.lines.0.components: a usage line goes to Stripe on its own: components must be [usage]',
    ],
    [
      'a usageLine on calls',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], usageLine: rows, push: amount } ] }',
      'stripe.lines.0.usageLine: only a line of components [usage] takes a usageLine',
    ],
    [
      'quantityDecimals on an amount line',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [usage], usageLine: rows, push: amount, quantityDecimals: 3 } ] }',
      'stripe.lines.0.quantityDecimals: only a usage line pushed as a quantity or to a meter takes quantityDecimals',
    ],
    [
      'a meter line without a meter',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: meter } ] }',
      'stripe.lines.0.meter: a meter line needs meter: { eventName }',
    ],
    [
      'a meter line with a price',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: meter, meter: { eventName: calls }, price: price_1 } ] }',
      'stripe.lines.0.price: a meter line is priced by the meter’s price in Stripe',
    ],
    [
      'a meter on an amount line',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: amount, meter: { eventName: calls } } ] }',
      'stripe.lines.0.meter: only a meter line (push: meter) takes a meter',
    ],
    [
      'a meter id that is not one',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: meter, meter: { eventName: calls, id: meter_1 } } ] }',
      'stripe.lines.0.meter.id: must be a Stripe meter id (mtr_…)',
    ],
    [
      'duration to a meter',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [duration], push: meter, meter: { eventName: d } } ] }',
      'stripe.lines.0.components: duration has no whole-unit quantity',
    ],
    [
      'two lines to one meter event',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: meter, meter: { eventName: e } }, { name: y, components: [input_tokens], push: meter, meter: { eventName: e } } ] }',
      'stripe.lines.1.meter.eventName: meter event e is pushed by two lines',
    ],
    [
      'two Tollgate customers on one Stripe customer, with a meter line',
      'stripe: { product: p, customers: { a: cus_1, b: cus_1 }, lines: [ { name: x, components: [call], push: meter, meter: { eventName: e } } ] }',
      "stripe.customers.b: cus_1 is also a's: with a meter line every Tollgate customer needs a Stripe customer of its own",
    ],
    [
      'calls and tokens in one quantity',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call, input_tokens], push: quantity, price: price_1 } ] }',
      'stripe.lines.0.components: a quantity line cannot add calls and tokens together',
    ],
    [
      'a customer that is not a Stripe id',
      'stripe: { product: p, customers: { a: acme }, lines: [ { name: x, components: [call], push: amount } ] }',
      'stripe.customers.a: must be a Stripe customer id (cus_…)',
    ],
    [
      'an unknown component',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [cached_tokens], push: amount } ] }',
      'stripe.lines.0.components.0: Invalid option',
    ],
    [
      'a line named twice',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: amount }, { name: x, components: [duration], push: amount } ] }',
      'stripe.lines.1.name: line x is named twice',
    ],
    [
      'an unknown key',
      'stripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: amount } ], mode: fast }',
      'stripe: Unrecognized key: "mode"',
    ],
  ])('%s', (_name, yaml, message) => {
    const f = load(yaml);
    expect(f).toThrow(ConfigError);
    expect(f).toThrow('STRIPE_MAPPING_INVALID');
    expect(f).toThrow(message);
  });

  it('the background job needs the mapping and a key', () => {
    expect(load('settings: { stripe: { sync: { enabled: true } } }')).toThrow(/has no stripe: mapping/);
    expect(
      load(
        'settings: { stripe: { sync: { enabled: true } } }\nstripe: { product: p, customers: { a: cus_1 }, lines: [ { name: x, components: [call], push: amount } ] }',
      ),
    ).toThrow(/a Stripe secret key is needed/);
  });
});

describe('the command', () => {
  const exec = promisify(execFile);
  const CLI = new URL('../dist/cli/main.js', import.meta.url).pathname;
  it('tollgate billing sync stripe: dry run, then the sync, then a rerun, with JSON and CSV reports', async () => {
    const fake = await newFake();
    const config = configFor(fake); // writes the config file with the mapping
    void config;
    await tg.stop(); // embedded chDB: one process per data directory
    const env = { ...process.env, STRIPE_SECRET_KEY: fake.secretKey, TOLLGATE_LOG_LEVEL: 'warn' };
    const args = [
      CLI,
      'billing',
      'sync',
      'stripe',
      '--config',
      configFile,
      '--data-dir',
      dir,
      '--plans',
      join(dir, 'plans.yaml'),
      '--stripe-host',
      fake.host,
      '--stripe-port',
      String(fake.port),
      '--stripe-protocol',
      'http',
      '--period',
      '2026-03',
    ];
    rmSync(join(dir, 'stripe'), { recursive: true, force: true });
    const dry = await exec('node', [...args, '--dry-run'], { env });
    expect(dry.stdout).toMatch(/^DRY RUN — nothing was sent to Stripe\./);
    expect(posts(fake)).toEqual([]);
    const json = join(dir, 'r.json');
    const csv = join(dir, 'r.csv');
    const run = await exec('node', [...args, '--report-json', json, '--report-csv', csv], { env });
    expect(run.stdout).toMatch(/pushes: \d+ created, 0 replayed/);
    expect(run.stdout).toMatch(/acme\s+2026-03\s+calls\s+\d+\s+\d+\s+\d+\s+reconciled/);
    const report = JSON.parse(readFileSync(json, 'utf8')) as SyncReport;
    expect(report.pushes.created).toBe(fake.items.length);
    expect(readFileSync(csv, 'utf8').split('\r\n')[0]).toBe(REPORT_COLUMNS.join(','));
    const rerun = await exec('node', [...args, '--json'], { env });
    expect((JSON.parse(rerun.stdout) as SyncReport).pushes).toMatchObject({ created: 0, replayed: 0 });
    expect(`${run.stderr}${rerun.stderr}${dry.stderr}`).not.toContain(fake.secretKey);
    await fake.close();
  }, 120_000);

  it.each([
    ['no outcome', 'tollgate-v1/p/c/gbs:gb_seconds/2026-03-02'],
    ['an outcome other than sent or unsent', 'tollgate-v1/p/c/gbs:gb_seconds/2026-03-02=maybe'],
    ['no key', '=sent'],
  ])('--resolve with %s exits 2 naming it, before anything is read or sent', async (_d, arg) => {
    const run = promisify(execFile)('node', [CLI, 'billing', 'sync', 'stripe', '--resolve', arg], {
      env: { ...process.env, STRIPE_SECRET_KEY: 'sk_test_unused' },
    });
    await expect(run).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringContaining(`--resolve: ${arg} is not KEY=sent or KEY=unsent`),
    });
  });
});
