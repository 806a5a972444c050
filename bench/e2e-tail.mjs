// Where the half-load tail comes from: e2e's half-load phase alone, against `tollgate start` with
// bench/loop-trace.cjs preloaded, then each of the slowest exports next to the garbage collection pauses and
// the long event-loop turns of the server that overlapped it. A diagnostic (what docs/benchmarks.md, "chDB's
// threads at a lower priority", was found with), not one of `npm run bench`'s benchmarks.
//
//   node bench/e2e-tail.mjs                        (after `npm run build`)
//   BENCH_FLAGS="--chdb-thread-nice 0" BENCH_NODE_ARGS=--max-semi-space-size=64 node bench/e2e-tail.mjs
//
// BENCH_BATCHES (380) saturating exports first (8 closed-loop senders, as e2e: the data, merges and heap
// the half-load phase meets), then BENCH_LATENCY_BATCHES (190) exports open loop at BENCH_RATE exports/s
// (default: half the saturating rate just measured). BENCH_SLOWEST (8) exports are listed.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  drive,
  INGEST_HEADERS as headers,
  metric,
  percentile,
  protobufBatches,
  ROOT,
  startTollgate,
} from './lib.mjs';

const SPANS = 512;
const BATCHES = Number(process.env.BENCH_BATCHES ?? 380);
const HALF = Number(process.env.BENCH_LATENCY_BATCHES ?? 190);
const SLOWEST = Number(process.env.BENCH_SLOWEST ?? 8);
const FLAGS = (process.env.BENCH_FLAGS ?? '').split(' ').filter(Boolean);
const NODE_ARGS = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
// V8's GC kinds as perf_hooks reports them
const KIND = {
  1: 'scavenge',
  2: 'minor mark-sweep',
  4: 'mark-compact',
  8: 'incremental',
  16: 'weak callbacks',
};

const traceFile = join(ROOT, `.e2e-tail-${process.pid}`);
const tg = await startTollgate(FLAGS, { LOOP_TRACE_OUT: traceFile }, [
  '--require',
  join(ROOT, 'bench/loop-trace.cjs'),
  ...NODE_ARGS,
]);
const pid = tg.child.pid;
const url = `${tg.otlpUrl}/v1/traces`;
let half;
let rate;
try {
  const landed = async () => {
    while ((await metric(tg.apiUrl, 'tollgate_landing_backlog_rows')) > 0)
      await new Promise((r) => setTimeout(r, 100));
  };
  await drive(url, await protobufBatches(20, SPANS), { concurrency: 8, headers }); // warm-up, as e2e
  const batches = await protobufBatches(BATCHES, SPANS);
  const t = performance.now();
  await drive(url, batches, { concurrency: 8, headers });
  const saturated = (BATCHES * SPANS) / ((performance.now() - t) / 1000);
  await landed();
  rate = Number(process.env.BENCH_RATE ?? saturated / SPANS / 2);
  const bodies = await protobufBatches(HALF, SPANS);
  const started = performance.timeOrigin + performance.now();
  const r = await drive(url, bodies, { headers, ratePerSec: rate, timeline: true });
  half = { started, r, saturated };
  await landed();
} finally {
  await tg.stop();
}

const { gcs, turns } = JSON.parse(readFileSync(`${traceFile}.${pid}`, 'utf8'));
rmSync(`${traceFile}.${pid}`, { force: true });
const { started, r, saturated } = half;
const end = started + (HALF * 1000) / rate + 1000;
const within = ([at, ms]) => at + ms >= started && at <= end;
const phaseGcs = gcs.filter(within);
const phaseTurns = turns.filter(within);
const sorted = [...r.latencies].sort((a, b) => a - b);
console.log(
  `half load: ${HALF} exports × ${SPANS} spans at ${rate.toFixed(1)} exports/s (${Math.round(rate * SPANS).toLocaleString()} spans/s; saturation was ${Math.round(saturated).toLocaleString()}): p50 ${percentile(sorted, 50).toFixed(1)} ms, p99 ${percentile(sorted, 99).toFixed(1)} ms, max ${sorted.at(-1).toFixed(1)} ms`,
);
const byKind = new Map();
for (const [, ms, kind] of phaseGcs) {
  const k = KIND[kind] ?? `kind ${kind}`;
  const v = byKind.get(k) ?? { n: 0, ms: 0, max: 0 };
  v.n++;
  v.ms += ms;
  v.max = Math.max(v.max, ms);
  byKind.set(k, v);
}
console.log(
  `server GC during the phase: ${[...byKind].map(([k, v]) => `${v.n} ${k} (${v.ms.toFixed(0)} ms, max ${v.max.toFixed(1)})`).join(', ') || 'none'}`,
);
console.log(
  `server event-loop turns > 7 ms during the phase: ${phaseTurns.length} (${phaseTurns.reduce((s, [, ms]) => s + ms, 0).toFixed(0)} ms)`,
);
console.log(`\nslowest exports (ms from the phase start): latency; GC pauses and long turns overlapping it`);
const slow = r.timeline
  .map((e, i) => ({ i, at: e.startEpochMs, ms: e.ms }))
  .sort((a, b) => b.ms - a.ms)
  .slice(0, SLOWEST);
for (const e of slow) {
  const over = ([at, ms]) => at + ms >= e.at && at <= e.at + e.ms;
  const g = phaseGcs.filter(over).map(([, ms, kind]) => `${KIND[kind] ?? kind} ${ms.toFixed(1)}`);
  const l = phaseTurns.filter(over).map(([, ms]) => ms.toFixed(0));
  console.log(
    `#${String(e.i).padEnd(4)} at ${String(Math.round(e.at - started)).padStart(5)}: ${e.ms.toFixed(1).padStart(6)} ms; GC [${g.join(', ')}]; turns [${l.join(' ')}]`,
  );
}
