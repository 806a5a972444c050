// The Stripe sync's own cost (docs/stripe.md): one month of N seeded calls (default 200,000, 100
// customers, 8 tools) pushed as one invoice item per customer, line and day, then pushed again. Stripe
// is replaced by an in-memory gateway (the sync's StripeGateway port, with Stripe's idempotency
// semantics), so the numbers are Tollgate's side only: the ClickHouse reads of the invoice lines, the
// fsynced ledger, the report. Real Stripe adds its own latency per call and its rate limits.
//
//   node bench/stripe-sync.mjs                      (after `npm run build`)
//   BENCH_STRIPE_ROWS=1000000 node bench/stripe-sync.mjs
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { insertSettings, migrate, openClickHouse } from '../collector-processor/dist/storage/clickhouse.js';
import { Ledger } from '../collector-processor/dist/stripe/ledger.js';
import { stripeMappingSchema } from '../collector-processor/dist/stripe/mapping.js';
import { syncStripe } from '../collector-processor/dist/stripe/sync.js';
import { seedCallsSql, table, writeResult } from './lib.mjs';

const ROWS = Number(process.env.BENCH_STRIPE_ROWS ?? 200_000);
const PERIOD = '2026-03';
const NOW = Date.UTC(2026, 3, 2); // every day of March closed and settled

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-stripe-'));
const ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
const log = pino({ level: 'silent' });

const mapping = stripeMappingSchema.parse({
  product: 'demo-mcp',
  customers: Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`customer-${i}`, `cus_bench${i}`])),
  lines: [
    { name: 'calls', components: ['call'], push: 'amount' },
    { name: 'tokens', components: ['input_tokens', 'output_tokens'], push: 'amount' },
    { name: 'duration', components: ['duration'], push: 'amount' },
  ],
});

/** Stripe in memory: invoice items, and the first answer of each idempotency key. */
function memoryStripe() {
  const items = [];
  const keys = new Map();
  return {
    items,
    async createInvoiceItem(params, key) {
      const body = JSON.stringify(params);
      const seen = keys.get(key);
      if (seen) {
        if (seen.body !== body) throw new Error(`idempotency_error ${key}`);
        return { ...seen.item, replayed: true };
      }
      const item = {
        id: `ii_${randomBytes(8).toString('hex')}`,
        amount: params.amount ?? 0,
        currency: params.currency ?? 'usd',
        quantity: params.quantity ?? 1,
        metadata: params.metadata,
        customer: params.customer,
      };
      items.push(item);
      keys.set(key, { body, item });
      return { ...item, replayed: false };
    },
    async listInvoiceItems(customer) {
      return items.filter((i) => i.customer === customer);
    },
  };
}

const pricing = { currency: () => 'USD', planFor: () => undefined, quote: () => undefined };
const deps = { clickhouse: ch.client, traceLinkTemplate: '', pricing };

async function run(name, ledger, stripe) {
  const t = performance.now();
  const report = await syncStripe({
    mapping,
    deps,
    gateway: stripe,
    ledger,
    periods: [PERIOD],
    nowMs: NOW,
    dryRun: false,
    log,
  });
  const s = (performance.now() - t) / 1000;
  const bad = report.rows.filter((r) => r.status !== 'reconciled' && r.status !== 'unmapped');
  if (bad.length || report.errors.length)
    throw new Error(`${name}: not reconciled: ${JSON.stringify(bad[0] ?? report.errors[0])}`);
  return { name, seconds: s, ...report.pushes };
}

try {
  await migrate(ch.client);
  const t0 = performance.now();
  for (let start = 0; start < ROWS; start += 1_000_000) {
    await ch.client.command({
      query: seedCallsSql({ start, count: Math.min(1_000_000, ROWS - start), rows: ROWS, period: PERIOD }),
      clickhouse_settings: insertSettings(`bench-${start}`),
    });
  }
  process.stderr.write(
    `seeded ${ROWS.toLocaleString()} calls in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );
  const stripe = memoryStripe();
  const ledgerFile = join(dir, 'stripe', 'ledger.jsonl');
  const runs = [
    await run('first run (every push)', Ledger.open(ledgerFile), stripe),
    await run('rerun (ledger)', Ledger.open(ledgerFile), stripe),
    await run('rerun, empty data directory (found at Stripe)', Ledger.open(join(dir, 'other.jsonl')), stripe),
  ];
  const units = 100 * 31;
  console.log(
    `${ROWS.toLocaleString()} calls, 100 customers × 31 days × 3 lines; ${stripe.items.length} invoice items\n`,
  );
  console.log(
    table([
      ['run', 'seconds', 'ms per customer-day', 'created', 'found', 'nothing to add'],
      ...runs.map((r) => [
        r.name,
        r.seconds.toFixed(1),
        ((r.seconds * 1000) / units).toFixed(1),
        r.created,
        r.found,
        r.skippedZero,
      ]),
    ]),
  );
  writeResult('stripe-sync', { rows: ROWS, items: stripe.items.length, runs });
} finally {
  await ch.close();
  rmSync(dir, { recursive: true, force: true });
}
