// Prepaid credits' cost on the enforcement path, on one real Redis: claim.lua + enforce.lua per customer
// batch (as bench/enforcement.mjs drives them) for customers without a wallet and for customers with one
// (the same batches draw their calls from three grants and append a drawdown to the ledger outbox), then
// how fast the outbox drains into ClickHouse (embedded chDB, migrations applied, the real CreditLedger).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { driveBatches, ROOT, table, writeResult } from './lib.mjs';

const dist = (p) => import(join(ROOT, 'collector-processor/dist', p));
const { Redis } = await import('ioredis');
const { startPrivateRedis } = await dist('redis/private-redis.js');
const { defineClaim, claimCalls } = await dist('meter/claim.js');
const { RedisEnforcer } = await dist('enforcement/enforcer.js');
const { PlanStore } = await dist('plans/store.js');
const { createMetrics } = await dist('metrics.js');
const { createLogger } = await dist('app.js');
const { CreditLedger } = await dist('credits/ledger.js');
const { CreditWallets } = await dist('credits/wallets.js');
const { openClickHouse, migrate } = await dist('storage/clickhouse.js');

const BATCHES = Number(process.env.BENCH_BATCHES ?? 400);
const PER_BATCH = 512;
const CUSTOMERS = 50;
const CONCURRENCY = 4;

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-credits-'));
const customers = Array.from({ length: CUSTOMERS }, (_, i) => `c${i}`);
writeFileSync(
  join(dir, 'plans.yaml'),
  `currency: USD
products:
  bench:
    defaultPlan: p
    plans:
      p:
        freeCallsPerMonth: 10
        tools: { "*": { price: { perCall: "0.001" }, cost: { perCall: "0.0001" } } }
        limits: { spendPerPeriod: "1000000", callsPerDay: 100000000, spendPerSession: "1000000" }
        credits: { warnBelow: "1" }
    customers:
${customers.map((c) => `      ${c}: {}`).join('\n')}
`,
);
const log = createLogger('silent');
const metrics = createMetrics();
const plans = PlanStore.open(join(dir, 'plans.yaml'), dir, log, metrics);
const noEvents = { record() {}, flush: async () => {}, close: async () => {} };

const period = new Date().toISOString().slice(0, 7);
const day = new Date().toISOString().slice(0, 10);
function batch(b) {
  const customer = `c${b % CUSTOMERS}`;
  return Array.from({ length: PER_BATCH }, (_, i) => {
    const eventId = `${b.toString(16).padStart(8, '0')}${i.toString(16).padStart(40, '0')}`;
    return {
      customer,
      call: { eventId, tool: `tool-${i % 4}`, customer },
      row: {
        eventId,
        customer,
        sessionId: `s${b % 400}`,
        agent: `a${i % 5}`,
        tool: `tool-${i % 4}`,
        priceNano: 1_000_000n,
        costNano: 100_000n,
        period,
        planVersion: plans.current.version,
        startUnixUs: Date.now() * 1000,
        receivedAtMs: Date.now(),
        decision: 'billed',
      },
    };
  });
}

/** Calls/s of `fn` over every batch, CONCURRENCY batches in flight. */
const drive = (fn) => driveBatches(fn, { batches: BATCHES, perBatch: PER_BATCH, concurrency: CONCURRENCY });

const server = await startPrivateRedis();
const redis = new Redis(server.url);
const ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
try {
  await migrate(ch.client);
  defineClaim(redis);
  const enforcer = new RedisEnforcer(redis, plans, noEvents, log, metrics, { maxSpanAgeHours: 168 });
  const batches = Array.from({ length: BATCHES }, (_, b) => batch(b));
  const ttl = { dedupSeconds: 3600, periodSeconds: 3600 };
  const run = (prefix) =>
    drive(async (b) => {
      const evs = batches[b];
      await claimCalls(
        redis,
        'bench',
        evs[0].customer,
        `${prefix}-${b}`,
        evs.map((e) => ({ call: e.call, period, day, counts: true })),
        ttl,
      );
      await enforcer.apply(
        'bench',
        `${prefix}-${b}`,
        evs.map((e) => ({ ...e.row })),
      );
    });

  // alternate the two so that neither gets the warmer Redis
  const without = [];
  const withWallet = [];
  const ledger = new CreditLedger(redis, ch.client, () => 'USD', log, 3_600_000);
  const wallets = new CreditWallets(redis, plans, ledger, noEvents, ch.client, log);
  let drainRate = 0;
  for (let round = 0; round < 2; round++) {
    await redis.flushall();
    without.push(await run(`plain${round}`));
    await redis.flushall();
    for (const c of customers)
      for (const [amount, priority] of [
        ['100', 1],
        ['200', 2],
        ['100000', 3],
      ])
        await wallets.grant({
          product: 'bench',
          customer: c,
          kind: 'grant',
          amount,
          currency: 'USD',
          priority,
          actor: 'bench',
        });
    withWallet.push(await run(`wallet${round}`));
    const outboxed = (await Promise.all(customers.map((c) => redis.llen(`tg:{bench:${c}}:cw:out`)))).reduce(
      (a, n) => a + n,
      0,
    );
    const t = performance.now();
    for (const c of customers) ledger.notify('bench', c);
    await ledger.drain();
    drainRate = Math.max(drainRate, (BATCHES * PER_BATCH) / ((performance.now() - t) / 1000));
    if (round === 0)
      console.log(`outbox after one run: ${outboxed} entries for ${BATCHES * PER_BATCH} calls`);
  }
  const best = (xs) => Math.max(...xs);
  const f = (n) => Math.round(n).toLocaleString('en-US');
  console.log(
    `\nPrepaid credits on the enforcement path: ${BATCHES} batches × ${PER_BATCH} calls, ${CUSTOMERS} customers, ${CONCURRENCY} batches in flight, one redis-server (best of 2)`,
  );
  console.log(
    table([
      ['path', 'calls/s', 'ratio to no wallet'],
      ['claim.lua + enforce.lua, no wallet', f(best(without)), '1.00'],
      [
        'claim.lua + enforce.lua, wallet of 3 grants',
        f(best(withWallet)),
        (best(withWallet) / best(without)).toFixed(2),
      ],
      ['ledger outbox → ClickHouse (calls drained/s)', f(drainRate), '—'],
    ]),
  );
  writeResult('credits', {
    at: new Date().toISOString(),
    batches: BATCHES,
    perBatch: PER_BATCH,
    withoutWallet: without,
    withWallet,
    drainCallsPerSecond: drainRate,
  });
} finally {
  redis.disconnect();
  plans.close();
  await ch.close();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
