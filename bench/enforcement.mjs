// Enforcement throughput on one real Redis: billable calls per second through Tollgate's two atomic
// scripts (claim.lua: dedup + usage positions; enforce.lua: counters, limits, margin guard, directives),
// batched per customer as the pipeline calls them, against the floor of a plain INCRBY pipeline that only
// adds each call's price to a counter (no dedup, no limits) — same batches, same Redis, same concurrency.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { driveBatches, median, ROOT, table, writeResult } from './lib.mjs';

//
// A/B of the scripts: BENCH_BASE=<a built checkout> runs base and this build (each its own scripts and
// callers, each on its own redis-server), one batch at a time, alternating BENCH_REPEAT (8) rounds of
// BENCH_AB_BATCHES (60) batches, and prints the median µs Redis spent per call in claim.lua and enforce.lua
// (INFO commandstats, read around each script call) and redis-server's CPU per call — CPU time, which
// other work on the machine disturbs far less than throughput.

const dist = (p) => import(join(ROOT, 'collector-processor/dist', p));
const { Redis } = await import('ioredis');
const { startPrivateRedis } = await dist('redis/private-redis.js');
const { defineClaim, claimCalls } = await dist('meter/claim.js');
const { RedisEnforcer } = await dist('enforcement/enforcer.js');
const BASE = process.env.BENCH_BASE;
const { LeaseService } = await dist('enforcement/leases.js');
const { PlanStore } = await dist('plans/store.js');
const { createMetrics } = await dist('metrics.js');
const { createLogger } = await dist('app.js');

const BATCHES = Number(process.env.BENCH_BATCHES ?? 400);
const PER_BATCH = 512;
const CUSTOMERS = 50;
const CONCURRENCY = 4;

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-enf-'));
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
`,
);
const log = createLogger('silent');
const metrics = createMetrics();
const plans = PlanStore.open(join(dir, 'plans.yaml'), dir, log, metrics);
const noEvents = { record() {}, flush: async () => {}, close: async () => {} }; // nothing crosses a limit here

const period = new Date().toISOString().slice(0, 7);
const day = new Date().toISOString().slice(0, 10);
function batch(b) {
  const customer = `c${b % CUSTOMERS}`;
  return Array.from({ length: PER_BATCH }, (_, i) => ({
    customer,
    call: {
      eventId: `${b.toString(16).padStart(8, '0')}${i.toString(16).padStart(40, '0')}`,
      tool: `tool-${i % 4}`,
      customer,
    },
    row: {
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
  }));
}

/** Microseconds Redis spent in scripts since the last reset (INFO commandstats), per call of the batches. */
async function scriptUsPerCall(redis) {
  return (await redisSpent(redis)).scripts / (BATCHES * PER_BATCH);
}

/** Calls/s of `fn` over every batch, CONCURRENCY batches in flight. */
const drive = (fn) => driveBatches(fn, { batches: BATCHES, perBatch: PER_BATCH, concurrency: CONCURRENCY });

/** µs Redis spent in scripts so far (INFO commandstats) and its CPU time in µs (INFO cpu). */
async function redisSpent(redis) {
  const [stats, cpu] = await Promise.all([redis.info('commandstats'), redis.info('cpu')]);
  const num = (re) => Number(re.exec(cpu)?.[1] ?? 0);
  return {
    scripts: [...stats.matchAll(/cmdstat_eval(?:sha)?:calls=\d+,usec=(\d+)/g)].reduce(
      (n, m) => n + Number(m[1]),
      0,
    ),
    cpu: (num(/used_cpu_user:([\d.]+)/) + num(/used_cpu_sys:([\d.]+)/)) * 1e6,
  };
}

/** BENCH_BASE: claim.lua and enforce.lua of base and this build, per call, alternating (see the top). */
async function scriptsAB() {
  const rounds = Number(process.env.BENCH_REPEAT ?? 8);
  const perRound = Number(process.env.BENCH_AB_BATCHES ?? 60);
  const builds = [];
  for (const [name, root] of [
    ['base', BASE],
    ['this build', ROOT],
  ]) {
    const d = (p) => import(join(root, 'collector-processor/dist', p));
    const server = await startPrivateRedis();
    const r = new Redis(server.url);
    const claim = await d('meter/claim.js');
    claim.defineClaim(r);
    const { RedisEnforcer: E } = await d('enforcement/enforcer.js');
    const enforcer = new E(r, plans, noEvents, log, metrics, { maxSpanAgeHours: 168 });
    builds.push({
      name,
      server,
      redis: r,
      claimCalls: claim.claimCalls,
      enforcer,
      claim: [],
      enforce: [],
      cpu: [],
    });
  }
  const ttl = { dedupSeconds: 3600, periodSeconds: 3600 };
  let b = 0;
  for (let round = 0; round < rounds; round++) {
    const list = Array.from({ length: perRound }, () => batch(b++));
    for (const x of round % 2 ? [...builds].reverse() : builds) {
      let claimUs = 0;
      let enforceUs = 0;
      const start = await redisSpent(x.redis);
      for (const [k, evs] of list.entries()) {
        const rid = `rid-${round}-${k}`;
        const a = await redisSpent(x.redis);
        await x.claimCalls(
          x.redis,
          'bench',
          evs[0].customer,
          rid,
          evs.map((e) => ({ call: e.call, period, day, counts: true })),
          ttl,
        );
        const m = await redisSpent(x.redis);
        await x.enforcer.apply(
          'bench',
          rid,
          evs.map((e) => e.row),
        );
        const z = await redisSpent(x.redis);
        claimUs += m.scripts - a.scripts;
        enforceUs += z.scripts - m.scripts;
      }
      const end = await redisSpent(x.redis);
      const calls = perRound * PER_BATCH;
      x.claim.push(claimUs / calls);
      x.enforce.push(enforceUs / calls);
      // the INFO calls around each script are counted too, alike for both builds
      x.cpu.push((end.cpu - start.cpu) / calls);
    }
  }
  const [base, now] = builds;
  const row = (label, key) => [
    label,
    median(base[key]).toFixed(2),
    median(now[key]).toFixed(2),
    (median(now[key]) / median(base[key])).toFixed(2),
  ];
  console.log(
    `\nScripts A/B: ${rounds} rounds × ${perRound} batches × ${PER_BATCH} calls, one batch at a time; base ${BASE}`,
  );
  console.log(
    table([
      ['µs per call (medians)', 'base', 'this build', 'ratio'],
      row('claim.lua in Redis', 'claim'),
      row('enforce.lua in Redis', 'enforce'),
      row('redis-server CPU', 'cpu'),
    ]),
  );
  for (const x of builds) {
    x.redis.disconnect();
    await x.server.stop();
  }
  plans.close();
}

if (BASE) {
  await scriptsAB();
  process.exit(0);
}

const server = await startPrivateRedis();
const redis = new Redis(server.url);
try {
  defineClaim(redis);
  const enforcer = new RedisEnforcer(redis, plans, noEvents, log, metrics, { maxSpanAgeHours: 168 });
  const batches = Array.from({ length: BATCHES }, (_, b) => batch(b));
  const ttl = { dedupSeconds: 3600, periodSeconds: 3600 };

  const floor = await drive(async (b) => {
    const p = redis.pipeline();
    for (const e of batches[b]) p.incrby(`floor:{bench:${e.customer}}:spend`, 1_000_000);
    await p.exec();
  });
  await redis.flushall();
  /** Claims batch `b` of `list` the way the pipeline does (one customer's calls under the record's id). */
  const claim = (list, b) =>
    claimCalls(
      redis,
      'bench',
      list[b][0].customer,
      `rid-${b}`,
      list[b].map((e) => ({ call: e.call, period, day, counts: true })),
      ttl,
    );
  /** Claims then enforces batch `b` of `list`, as the pipeline does. */
  const claimThenEnforce = (list) => async (b) => {
    await claim(list, b);
    await enforcer.apply(
      'bench',
      `rid-${b}`,
      list[b].map((e) => e.row),
    );
  };

  const claimOnly = await drive((b) => claim(batches, b));
  await redis.flushall();
  await redis.config('RESETSTAT');
  const both = await drive(claimThenEnforce(batches));
  const bothUs = await scriptUsPerCall(redis);
  // the same, every call taken from a quota lease of its customer: enforce.lua settles it first
  await redis.flushall();
  const leases = new LeaseService(redis, plans, noEvents, log, metrics, {
    ttlMs: 600_000,
    shareBps: 10_000,
    maxCalls: 1_000_000,
    releaseGraceMs: 10_000,
  });
  const leaseOf = new Map();
  for (let c = 0; c < CUSTOMERS; c++) {
    const { results } = await leases.handle(
      { name: 'bench', product: 'bench', defaultCustomer: undefined },
      {
        instanceId: 'bench-sdk',
        requests: [{ op: 'grant', customer: `c${c}`, wantCalls: 100_000, wantMoney: '100000000000' }],
      },
    );
    leaseOf.set(`c${c}`, results[0].lease.leaseId);
  }
  const leasedBatches = batches.map((evs) =>
    evs.map((e) => ({
      ...e,
      row: {
        ...e.row,
        instanceId: 'bench-sdk',
        lease: { id: leaseOf.get(e.customer), reservedNano: '1000000' },
      },
    })),
  );
  await redis.config('RESETSTAT');
  const leased = await drive(claimThenEnforce(leasedBatches));
  const leasedUs = await scriptUsPerCall(redis);
  const f = (n) => Math.round(n).toLocaleString('en-US');
  console.log(
    `\nEnforcement in Redis: ${BATCHES} batches × ${PER_BATCH} calls, ${CUSTOMERS} customers, ${CONCURRENCY} batches in flight, one redis-server`,
  );
  console.log(
    table([
      ['path', 'calls/s', 'ratio to INCRBY floor', 'µs in Redis scripts per call'],
      ['INCRBY pipeline (floor)', f(floor), '1.00', ''],
      ['claim.lua (dedup + positions)', f(claimOnly), (claimOnly / floor).toFixed(2), ''],
      ['claim.lua + enforce.lua (full)', f(both), (both / floor).toFixed(2), bothUs.toFixed(2)],
      [
        'full, every call settled against a quota lease',
        f(leased),
        (leased / floor).toFixed(2),
        leasedUs.toFixed(2),
      ],
    ]),
  );
  writeResult('enforcement', {
    at: new Date().toISOString(),
    batches: BATCHES,
    perBatch: PER_BATCH,
    floor,
    claimOnly,
    both,
    leased,
    scriptUsPerCall: { both: bothUs, leased: leasedUs },
  });
} finally {
  redis.disconnect();
  plans.close();
  await server.stop();
}
