// End-to-end ingest benchmark: billable spans/s through the full pipeline (decode → spool with fsync →
// Redis claim script → rating → chDB landing) versus the same server in decode-and-discard mode (the floor),
// then latency per export at half the saturating load and with one sender.
//
// Per server, in order:
//   1. saturation: 512-span OTLP protobuf exports from BENCH_CONCURRENCY (8) closed-loop keep-alive senders;
//      acked spans/s, landed spans/s (until every span is in ClickHouse);
//   2. half load: open loop at half the full pipeline's saturating rate (fixed schedule, latency from each
//      export's scheduled send time, so queueing shows; see `drive` in lib.mjs) — p50/p99/max per export;
//   3. one sender: one export at a time — p50/p99/max per export.
// Each phase sends fresh, unique spans and starts after the previous one has landed.
// BENCH_SERVERS=full,off,floor picks servers; BENCH_PROFILE_DIR=/tmp/prof writes a --cpu-prof of the
// full-pipeline server (see docs/operations.md).
// A/B: BENCH_BASE=/path/to/other/checkout (built) runs only the full pipeline, base and this build
// alternating BENCH_REPEAT (3) times, and prints each sample and the medians. BENCH_NODE_ARGS and
// BENCH_BASE_NODE_ARGS add node flags to this build's and the base's server; BENCH_FLAGS and BENCH_BASE_FLAGS
// add tollgate flags (e.g. BENCH_FLAGS="--chdb-insert file").

import { loadavg } from 'node:os';
import { join } from 'node:path';
import {
  cpuMs,
  drive,
  INGEST_HEADERS as headers,
  metric,
  peakRssMiB,
  percentile,
  protobufBatches,
  startTollgate,
  table,
  writeResult,
} from './lib.mjs';

const BATCHES = Number(process.env.BENCH_BATCHES ?? 400);
const LATENCY_BATCHES = Number(process.env.BENCH_LATENCY_BATCHES ?? Math.max(100, Math.round(BATCHES / 2)));
const ONE_SENDER_BATCHES = Number(process.env.BENCH_ONE_SENDER_BATCHES ?? 100);
const SPANS = 512;
const WARMUP = 20;
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);
const SERVERS = (process.env.BENCH_SERVERS ?? 'full,off,floor').split(',');
const PROFILE_DIR = process.env.BENCH_PROFILE_DIR;
const BASE = process.env.BENCH_BASE;
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
// node flags for the server of this build and of the base (e.g. an A/B of a V8 flag on one build:
// BENCH_BASE=. BENCH_NODE_ARGS=--max-semi-space-size=64)
const NODE_ARGS = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
const BASE_NODE_ARGS = (process.env.BENCH_BASE_NODE_ARGS ?? '').split(' ').filter(Boolean);
const FLAGS = (process.env.BENCH_FLAGS ?? '').split(' ').filter(Boolean);
const BASE_FLAGS = (process.env.BENCH_BASE_FLAGS ?? '').split(' ').filter(Boolean);

/** Server CPU per span over a phase (µs; main thread and whole process), from cpuMs() before and after. */
const cpuOf = (before, after, spans) => ({
  mainUsPerSpan: ((after.main - before.main) * 1000) / spans,
  processUsPerSpan: ((after.process - before.process) * 1000) / spans,
});

const latencyOf = (r, spans) => ({
  spans,
  ok: r.statuses.get(200) ?? 0,
  requests: spans / SPANS,
  p50: percentile(r.latencies, 50),
  p99: percentile(r.latencies, 99),
  max: r.latencies.at(-1) ?? 0,
  senderLagMs: r.lagMs,
});

const STAGES = ['decode', 'spool', 'claim', 'rate', 'enforce', 'land'];
/**
 * Sum (s), count and cumulative bucket counts (`le` in s → exports) of tollgate_export_stage_seconds per stage,
 * and of tollgate_export_duration_seconds (receipt to response) as stage `server` (empty for a build without
 * them).
 */
async function stageTotals(apiUrl) {
  const text = await (await fetch(`${apiUrl}/metrics`)).text();
  const out = {};
  const at = (stage) => {
    out[stage] ??= { sum: 0, count: 0, le: {} };
    return out[stage];
  };
  for (const m of text.matchAll(/^tollgate_export_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$/gm))
    at(m[2])[m[1]] = Number(m[3]);
  for (const m of text.matchAll(
    /^tollgate_export_stage_seconds_bucket\{le="([^"]+)",stage="(\w+)"\} (\S+)$/gm,
  ))
    at(m[2]).le[m[1]] = Number(m[3]);
  for (const m of text.matchAll(/^tollgate_export_duration_seconds_(sum|count)(?:\{\})? (\S+)$/gm))
    at('server')[m[1]] = Number(m[2]);
  for (const m of text.matchAll(/^tollgate_export_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$/gm))
    at('server').le[m[1]] = Number(m[2]);
  // the main thread's pauses: V8's collections (prom-client's default metrics, by kind) as stage `gc:<kind>`
  for (const m of text.matchAll(
    /^tollgate_process_nodejs_gc_duration_seconds_(sum|count)\{kind="(\w+)"\} (\S+)$/gm,
  ))
    at(`gc:${m[2]}`)[m[1]] = Number(m[3]);
  for (const m of text.matchAll(
    /^tollgate_process_nodejs_gc_duration_seconds_bucket\{le="([^"]+)",kind="(\w+)"\} (\S+)$/gm,
  ))
    at(`gc:${m[2]}`).le[m[1]] = Number(m[3]);
  return out;
}

/**
 * Kill directives issued so far (every reason). Under the embedded plans e2e's 50 customers pass their 100 USD
 * spend limit from the half-load phase on: from then on their calls are marked over_limit, so the later exports
 * measure the path of customers past their hard limit (docs/benchmarks.md, "A record of a customer past its
 * limit").
 */
async function killsSoFar(apiUrl) {
  const text = await (await fetch(`${apiUrl}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(/^tollgate_directives_total\{action="kill"[^}]*\} (\S+)$/gm))
    n += Number(m[1]);
  return n;
}

/** Per stage between two stageTotals: exports that spent more than 10 and 25 ms in it (from the buckets). */
function stageTails(a, b) {
  const out = {};
  for (const [stage, tb] of Object.entries(b)) {
    const ta = a[stage] ?? { count: 0, le: {} };
    const n = tb.count - ta.count;
    if (!(n > 0)) continue;
    const within = (le) => (tb.le[le] ?? 0) - (ta.le[le] ?? 0);
    out[stage] = {
      exports: n,
      over10ms: n - within('0.01'),
      over25ms: n - within('0.025'),
      sumMs: (tb.sum - (ta.sum ?? 0)) * 1000,
    };
  }
  return out;
}

/**
 * Mean ms per export in each stage (tollgate_export_stage_seconds) between two readings, and from receipt
 * to answer ('server'); undefined where the server reports no stages (an older build).
 */
function stageMeans(before, after) {
  const out = {};
  for (const st of [...STAGES, 'server']) {
    const a = before[st] ?? { sum: 0, count: 0 };
    const b = after[st];
    if (b && b.count > a.count) out[st] = ((b.sum - a.sum) / (b.count - a.count)) * 1000;
  }
  return Object.keys(out).length ? out : undefined;
}

/** Saturation, then half load (at `halfRate` exports/s, or half of this server's own rate), then one sender. */
async function run(
  name,
  mode,
  extraFlags,
  { halfRate, phases = ['saturation', 'halfLoad', 'oneSender'], cli } = {},
) {
  const nodeArgs = [
    ...(PROFILE_DIR && name === 'full' ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : []),
    ...(cli ? BASE_NODE_ARGS : NODE_ARGS),
  ];
  const tg = await startTollgate(['--pipeline-mode', mode, ...extraFlags], {}, nodeArgs, cli);
  const url = `${tg.otlpUrl}/v1/traces`;
  let landedTarget = await metric(tg.apiUrl, 'tollgate_landed_rows_total');
  /** Waits until every span sent so far has landed; returns the ms it waited. */
  const landed = async (sent) => {
    const t0 = performance.now();
    if (mode === 'decode-only') return 0;
    landedTarget += sent;
    while ((await metric(tg.apiUrl, 'tollgate_landed_rows_total')) < landedTarget) {
      await new Promise((res) => setTimeout(res, 20));
      if (performance.now() - t0 > 120_000) throw new Error('landing did not finish');
    }
    return performance.now() - t0;
  };
  const out = { name, mode };
  try {
    // warm-up on distinct spans, not counted
    await drive(url, await protobufBatches(WARMUP, SPANS), { concurrency: CONCURRENCY, headers });
    await landed(WARMUP * SPANS);
    if (phases.includes('saturation')) {
      const bodies = await protobufBatches(BATCHES - WARMUP, SPANS);
      const cpu0 = cpuMs(tg.child.pid);
      const stages0 = await stageTotals(tg.apiUrl);
      const r = await drive(url, bodies, { concurrency: CONCURRENCY, headers });
      const stages1 = await stageTotals(tg.apiUrl);
      const spans = bodies.length * SPANS;
      const landedMs = r.wallMs + (await landed(spans));
      out.saturation = {
        ...latencyOf(r, spans),
        ...cpuOf(cpu0, cpuMs(tg.child.pid), spans),
        ackedPerSec: spans / (r.wallMs / 1000),
        landedPerSec: spans / (landedMs / 1000),
      };
      const stageMs = stageMeans(stages0, stages1);
      if (stageMs) out.saturation.stageMs = stageMs;
      out.saturation.killsBy = await killsSoFar(tg.apiUrl);
    }
    if (phases.includes('halfLoad')) {
      const rate = halfRate ?? out.saturation.ackedPerSec / SPANS / 2;
      const bodies = await protobufBatches(LATENCY_BATCHES, SPANS);
      const cpu0 = cpuMs(tg.child.pid);
      const stages0 = await stageTotals(tg.apiUrl);
      const r = await drive(url, bodies, { headers, ratePerSec: rate });
      const stages1 = await stageTotals(tg.apiUrl);
      await landed(bodies.length * SPANS);
      out.halfLoad = {
        offeredSpansPerSec: rate * SPANS,
        ...latencyOf(r, bodies.length * SPANS),
        ...cpuOf(cpu0, cpuMs(tg.child.pid), bodies.length * SPANS),
        stageTails: stageTails(stages0, stages1),
        killsBy: await killsSoFar(tg.apiUrl),
      };
    }
    if (phases.includes('oneSender')) {
      const bodies = await protobufBatches(ONE_SENDER_BATCHES, SPANS);
      const cpu0 = cpuMs(tg.child.pid);
      const stages0 = await stageTotals(tg.apiUrl);
      const r = await drive(url, bodies, { concurrency: 1, headers });
      const stages1 = await stageTotals(tg.apiUrl);
      await landed(bodies.length * SPANS);
      out.oneSender = {
        ...latencyOf(r, bodies.length * SPANS),
        ...cpuOf(cpu0, cpuMs(tg.child.pid), bodies.length * SPANS),
      };
      const stageMs = stageMeans(stages0, stages1);
      if (stageMs) out.oneSender.stageMs = stageMs;
      out.oneSender.killsBy = await killsSoFar(tg.apiUrl);
    }
    out.rssMiB = peakRssMiB(tg.child.pid);
    return out;
  } finally {
    await tg.stop();
  }
}

const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
const f = (n) => Math.round(n).toLocaleString('en-US');
const ms = (n) => n.toFixed(1);
const x = (a, b) => (a / b).toFixed(2);

if (BASE) {
  const baseCli = join(BASE, 'collector-processor/dist/cli/main.js');
  const loadBefore = load();
  const samples = { base: [], branch: [] };
  const us = (n) => n.toFixed(1);
  const cols = (r) => [
    us(r.saturation.mainUsPerSpan),
    us(r.saturation.processUsPerSpan),
    us(r.halfLoad.mainUsPerSpan),
    us(r.halfLoad.processUsPerSpan),
    f(r.saturation.ackedPerSec),
    f(r.saturation.landedPerSec),
    ms(r.halfLoad.p50),
    ms(r.halfLoad.p99),
    ms(r.oneSender.p50),
    ms(r.oneSender.p99),
    r.rssMiB.toFixed(0),
  ];
  const rows = [
    [
      'A/B full pipeline',
      'saturation main µs/span',
      'process µs/span',
      'half-load main µs/span',
      'process µs/span',
      'acked spans/s',
      'landed spans/s',
      'half-load p50',
      'p99',
      'one-sender p50',
      'p99',
      'peak RSS MiB',
    ],
  ];
  for (let i = 0; i < REPEAT; i++) {
    for (const which of i % 2 ? ['branch', 'base'] : ['base', 'branch']) {
      // the same offered load for every sample: half the first base sample's saturating rate
      const halfRate = samples.base[0] ? samples.base[0].saturation.ackedPerSec / SPANS / 2 : undefined;
      const r = await run('full', 'full', which === 'base' ? BASE_FLAGS : FLAGS, {
        cli: which === 'base' ? baseCli : undefined,
        halfRate,
      });
      samples[which].push(r);
      rows.push([`${which} #${i + 1}`, ...cols(r)]);
    }
  }
  const median = (list) => {
    const pick = (get) => {
      const v = list.map(get).sort((a, b) => a - b);
      return v[Math.floor(v.length / 2)];
    };
    return {
      saturation: {
        mainUsPerSpan: pick((r) => r.saturation.mainUsPerSpan),
        processUsPerSpan: pick((r) => r.saturation.processUsPerSpan),
        ackedPerSec: pick((r) => r.saturation.ackedPerSec),
        landedPerSec: pick((r) => r.saturation.landedPerSec),
      },
      halfLoad: {
        mainUsPerSpan: pick((r) => r.halfLoad.mainUsPerSpan),
        processUsPerSpan: pick((r) => r.halfLoad.processUsPerSpan),
        p50: pick((r) => r.halfLoad.p50),
        p99: pick((r) => r.halfLoad.p99),
      },
      oneSender: { p50: pick((r) => r.oneSender.p50), p99: pick((r) => r.oneSender.p99) },
      rssMiB: pick((r) => r.rssMiB),
    };
  };
  const mb = median(samples.base);
  const mn = median(samples.branch);
  rows.push(['median base', ...cols(mb)], ['median branch', ...cols(mn)]);
  rows.push([
    'ratio branch / base',
    x(mn.saturation.mainUsPerSpan, mb.saturation.mainUsPerSpan),
    x(mn.saturation.processUsPerSpan, mb.saturation.processUsPerSpan),
    x(mn.halfLoad.mainUsPerSpan, mb.halfLoad.mainUsPerSpan),
    x(mn.halfLoad.processUsPerSpan, mb.halfLoad.processUsPerSpan),
    x(mn.saturation.ackedPerSec, mb.saturation.ackedPerSec),
    x(mn.saturation.landedPerSec, mb.saturation.landedPerSec),
    x(mn.halfLoad.p50, mb.halfLoad.p50),
    x(mn.halfLoad.p99, mb.halfLoad.p99),
    x(mn.oneSender.p50, mb.oneSender.p50),
    x(mn.oneSender.p99, mb.oneSender.p99),
    x(mn.rssMiB, mb.rssMiB),
  ]);
  console.log(
    `\nA/B ${BASE}${BASE_FLAGS.length ? ` (${BASE_FLAGS.join(' ')})` : ''} vs this build${FLAGS.length ? ` (${FLAGS.join(' ')})` : ''}, ${REPEAT}× each, alternating (load average ${loadBefore} → ${load()})`,
  );
  console.log(table(rows));
  writeResult('e2e-ab', {
    at: new Date().toISOString(),
    base: BASE,
    baseFlags: BASE_FLAGS,
    flags: FLAGS,
    samples,
    medianBase: mb,
    medianBranch: mn,
  });
  process.exit(0);
}

const loadBefore = load();
const results = {};
if (SERVERS.includes('full')) results.full = await run('full', 'full', []);
const halfRate = results.full ? results.full.saturation.ackedPerSec / SPANS / 2 : undefined;
if (SERVERS.includes('off'))
  results.enforcementOff = await run('off', 'full', ['--enforcement', 'false'], { phases: ['saturation'] });
if (SERVERS.includes('floor')) results.floor = await run('floor', 'decode-only', [], { halfRate });
const loadAfter = load();
for (const r of Object.values(results))
  for (const phase of ['saturation', 'halfLoad', 'oneSender'])
    if (r[phase] && r[phase].ok !== r[phase].requests)
      throw new Error(`${r.name} ${phase}: ${r[phase].requests - r[phase].ok} exports failed`);

const { full, enforcementOff: off, floor } = results;

console.log(
  `\nEnd-to-end ingest: ${BATCHES - WARMUP} exports × ${SPANS} billable spans, ${CONCURRENCY} concurrent senders, OTLP/HTTP protobuf (load average ${loadBefore} → ${loadAfter})`,
);
const satRow = (name, r, landedCol = true) => [
  name,
  f(r.saturation.ackedPerSec),
  landedCol ? f(r.saturation.landedPerSec) : '—',
  ms(r.saturation.p50),
  ms(r.saturation.p99),
  r.rssMiB.toFixed(0),
];
const satRatio = (name, a, b) => [
  name,
  x(a.saturation.ackedPerSec, b.saturation.ackedPerSec),
  x(a.saturation.landedPerSec, b.saturation.ackedPerSec),
  x(a.saturation.p50, b.saturation.p50),
  x(a.saturation.p99, b.saturation.p99),
  x(a.rssMiB, b.rssMiB),
];
const sat = [['saturation', 'acked spans/s', 'landed spans/s', 'p50 ms', 'p99 ms', 'peak RSS MiB']];
if (full) sat.push(satRow('full pipeline (enforcement on)', full));
if (off) sat.push(satRow('full pipeline, enforcement off', off));
if (floor) sat.push(satRow('decode-and-discard (floor)', floor, false));
if (full && off) sat.push(satRatio('ratio enforcement on / off', full, off));
if (full && floor) sat.push(satRatio('ratio full / floor', full, floor));
console.log(table(sat));

const lat = [['latency per 512-span export', 'offered spans/s', 'p50 ms', 'p99 ms', 'max ms']];
const latRow = (name, p) => [
  name,
  p.offeredSpansPerSec ? f(p.offeredSpansPerSec) : '—',
  ms(p.p50),
  ms(p.p99),
  ms(p.max),
];
const latRatio = (name, a, b) => [name, '', x(a.p50, b.p50), x(a.p99, b.p99), x(a.max, b.max)];
if (full) lat.push(latRow('full pipeline, half load (open loop)', full.halfLoad));
if (floor) lat.push(latRow('floor, same offered load', floor.halfLoad));
if (full && floor) lat.push(latRatio('ratio full / floor, half load', full.halfLoad, floor.halfLoad));
if (full) lat.push(latRow('full pipeline, one sender', full.oneSender));
if (floor) lat.push(latRow('floor, one sender', floor.oneSender));
if (full && floor) lat.push(latRatio('ratio full / floor, one sender', full.oneSender, floor.oneSender));
console.log(`\n${table(lat)}`);
if (full) {
  console.log(
    `\naim p99 ≤ 50 ms at half load: ${ms(full.halfLoad.p99)} ms (${full.halfLoad.p99 <= 50 ? 'met' : 'not met'}); ` +
      `largest sender lag ${ms(full.halfLoad.senderLagMs)} ms`,
  );
  const tails = full.halfLoad.stageTails;
  if (tails && Object.keys(tails).length)
    console.log(
      `half load, exports over 10 / 25 ms by stage ('server': receipt to answer): ${[...STAGES, 'server']
        .filter((k) => k in tails)
        .map((k) => `${k} ${tails[k].over10ms} / ${tails[k].over25ms}`)
        .join(' · ')} (of ${tails.server?.exports ?? tails.decode?.exports} exports); ` +
        `V8 collections: ${Object.keys(tails)
          .filter((k) => k.startsWith('gc:'))
          .map(
            (k) =>
              `${k.slice(3)} ${tails[k].exports} (${tails[k].over10ms} over 10 ms, ${ms(tails[k].sumMs)} ms in all)`,
          )
          .join(' · ')}`,
    );
  for (const [phase, st] of [
    ['saturation', full.saturation?.stageMs],
    ['one sender', full.oneSender.stageMs],
  ])
    if (st)
      console.log(
        `${phase}, mean ms per export by stage: ${[...STAGES, 'server']
          .filter((k) => k in st)
          .map((k) => `${k} ${st[k].toFixed(2)}`)
          .join(' · ')}`,
      );
  console.log(
    `kill directives by the end of each phase (customers past a hard limit: their calls are over_limit): ${[
      ['saturation', full.saturation?.killsBy],
      ['half load', full.halfLoad?.killsBy],
      ['one sender', full.oneSender?.killsBy],
    ]
      .filter(([, k]) => k !== undefined)
      .map(([p, k]) => `${p} ${k}`)
      .join(' · ')}`,
  );
  if (floor)
    console.log(
      `aim p50 ≤ 2× the floor's with one sender: ${x(full.oneSender.p50, floor.oneSender.p50)}× (${full.oneSender.p50 <= 2 * floor.oneSender.p50 ? 'met' : 'not met'})`,
    );
}
writeResult('e2e', {
  at: new Date().toISOString(),
  loadAverage: { before: loadBefore, after: loadAfter },
  batches: BATCHES - WARMUP,
  latencyBatches: LATENCY_BATCHES,
  oneSenderBatches: ONE_SENDER_BATCHES,
  spansPerBatch: SPANS,
  concurrency: CONCURRENCY,
  ...results,
});
