// End-to-end ingest benchmark: billable spans/s through the full pipeline (decode → spool with fsync →
// Redis claim script → rating → chDB landing) versus the same server in decode-and-discard mode (the floor).
// Load: 512-span OTLP protobuf exports from 8 concurrent keep-alive senders in this process.
import {
  DEV_INGEST_KEY,
  drive,
  metric,
  peakRssMiB,
  percentile,
  protobufBatches,
  startTollgate,
  table,
  writeResult,
} from './lib.mjs';

const BATCHES = Number(process.env.BENCH_BATCHES ?? 400);
const SPANS = 512;
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);
const headers = { 'content-type': 'application/x-protobuf', authorization: `Bearer ${DEV_INGEST_KEY}` };

async function run(mode, bodies, extraFlags = []) {
  const tg = await startTollgate(['--pipeline-mode', mode, ...extraFlags]);
  try {
    // warm-up on distinct spans, not counted
    await drive(`${tg.otlpUrl}/v1/traces`, bodies.slice(0, 20), { concurrency: CONCURRENCY, headers });
    const landedBefore = await metric(tg.apiUrl, 'tollgate_landed_rows_total');
    const measured = bodies.slice(20);
    const r = await drive(`${tg.otlpUrl}/v1/traces`, measured, { concurrency: CONCURRENCY, headers });
    const spans = measured.length * SPANS;
    let landedMs = r.wallMs;
    if (mode !== 'decode-only') {
      const t0 = performance.now();
      while ((await metric(tg.apiUrl, 'tollgate_landed_rows_total')) - landedBefore < spans) {
        await new Promise((res) => setTimeout(res, 20));
        if (performance.now() - t0 > 120_000) throw new Error('landing did not finish');
      }
      landedMs = r.wallMs + (performance.now() - t0);
    }
    return {
      mode,
      spans,
      ok: r.statuses.get(200) ?? 0,
      requests: measured.length,
      ackedPerSec: spans / (r.wallMs / 1000),
      landedPerSec: spans / (landedMs / 1000),
      p50: percentile(r.latencies, 50),
      p99: percentile(r.latencies, 99),
      rssMiB: peakRssMiB(tg.child.pid),
    };
  } finally {
    await tg.stop();
  }
}

const full = await run('full', await protobufBatches(BATCHES, SPANS));
const off = await run('full', await protobufBatches(BATCHES, SPANS), ['--enforcement', 'false']);
const floor = await run('decode-only', await protobufBatches(BATCHES, SPANS));
for (const r of [full, off, floor])
  if (r.ok !== r.requests) throw new Error(`${r.mode}: ${r.requests - r.ok} exports failed`);

const f = (n) => Math.round(n).toLocaleString('en-US');
const row = (name, r, landed = true) => [
  name,
  f(r.ackedPerSec),
  landed ? f(r.landedPerSec) : '—',
  r.p50.toFixed(1),
  r.p99.toFixed(1),
  r.rssMiB.toFixed(0),
];
const ratio = (name, a, b) => [
  name,
  (a.ackedPerSec / b.ackedPerSec).toFixed(2),
  (a.landedPerSec / b.ackedPerSec).toFixed(2),
  (a.p50 / b.p50).toFixed(2),
  (a.p99 / b.p99).toFixed(2),
  (a.rssMiB / b.rssMiB).toFixed(2),
];
console.log(
  `\nEnd-to-end ingest: ${BATCHES - 20} exports × ${SPANS} billable spans, ${CONCURRENCY} concurrent senders, OTLP/HTTP protobuf`,
);
console.log(
  table([
    ['server', 'acked spans/s', 'landed spans/s', 'p50 ms', 'p99 ms', 'peak RSS MiB'],
    row('full pipeline (enforcement on)', full),
    row('full pipeline, enforcement off', off),
    row('decode-and-discard (floor)', floor, false),
    ratio('ratio enforcement on / off', full, off),
    ratio('ratio full / floor', full, floor),
  ]),
);
writeResult('e2e', {
  at: new Date().toISOString(),
  batches: BATCHES - 20,
  spansPerBatch: SPANS,
  concurrency: CONCURRENCY,
  full,
  enforcementOff: off,
  floor,
});
