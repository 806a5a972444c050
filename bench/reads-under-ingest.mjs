// Finance reading while ingest runs: the latency of the API's month questions (the sessions list and the
// summary, alternating) asked at a fixed rate (open loop: a read is sent every BENCH_READ_GAP_MS whatever is
// still in flight) while 4 senders push 512-span exports at saturation into the same `tollgate start`.
// Baseline: the same build with the API reading on the lander's chDB connection (`--chdb-read-connections
// 0`, where reads queue behind landing inserts and each other) against the read connections of their own it
// has by default. Rounds alternate the two, each on a fresh server; medians of the rounds.
//
//   node bench/reads-under-ingest.mjs       (after `npm run build`)
//   BENCH_EXPORTS=1500 BENCH_ROUNDS=3 BENCH_READ_GAP_MS=250   (the defaults)
import {
  drive,
  INGEST_HEADERS as headers,
  median,
  percentile,
  protobufBatches,
  startTollgate,
  table,
  writeResult,
} from './lib.mjs';

const EXPORTS = Number(process.env.BENCH_EXPORTS ?? 1500);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const GAP_MS = Number(process.env.BENCH_READ_GAP_MS ?? 250);
const SPANS = 512;
const ADMIN_KEY = 'tg_dev_admin'; // the embedded defaults' public development key
// the spans' month (protobufBatches stamps them a minute ago)
const period = new Date(Date.now() - 60_000).toISOString().slice(0, 7);
const READS = [
  `/analytics/mcp/sessions?period=${period}&limit=100`,
  `/analytics/mcp/summary?period=${period}`,
];

async function sample(readConnections, bodies) {
  const tg = await startTollgate(['--chdb-read-connections', String(readConnections)]);
  try {
    await drive(`${tg.otlpUrl}/v1/traces`, await protobufBatches(40, SPANS), { concurrency: 4, headers });
    const latencies = [];
    const failed = [];
    const inflight = [];
    let n = 0;
    const timer = setInterval(() => {
      const url = READS[n++ % READS.length];
      inflight.push(
        (async () => {
          const t = performance.now();
          const res = await fetch(tg.apiUrl + url, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
          await res.text();
          if (res.status !== 200) failed.push(res.status);
          latencies.push(performance.now() - t);
        })(),
      );
    }, GAP_MS);
    const ingest = await drive(`${tg.otlpUrl}/v1/traces`, bodies, { concurrency: 4, headers });
    clearInterval(timer);
    await Promise.all(inflight);
    const notOk = [...ingest.statuses].filter(([s]) => s !== 200);
    if (failed.length || notOk.length)
      throw new Error(`reads failed ${JSON.stringify(failed)}; exports not 200: ${JSON.stringify(notOk)}`);
    latencies.sort((a, b) => a - b);
    return {
      reads: latencies.length,
      p50: percentile(latencies, 50),
      p90: percentile(latencies, 90),
      p99: percentile(latencies, 99),
      max: latencies.at(-1),
      spansPerSec: (bodies.length * SPANS) / (ingest.wallMs / 1000),
    };
  } finally {
    await tg.stop();
  }
}

const bodies = await protobufBatches(EXPORTS, SPANS);
const runs = { base: [], readers: [] };
for (let r = 0; r < ROUNDS; r++) {
  // fresh spans per server are not needed: each sample starts an empty Tollgate
  runs.readers.push(await sample(2, bodies));
  runs.base.push(await sample(0, bodies));
  process.stderr.write(
    `round ${r + 1}/${ROUNDS}: ${JSON.stringify(runs.readers.at(-1))} vs ${JSON.stringify(runs.base.at(-1))}\n`,
  );
}
const med = (k, key) => median(runs[k].map((x) => x[key]));
const keys = ['p50', 'p90', 'p99', 'max', 'spansPerSec'];
console.log(
  `\nAPI reads during saturating ingest: ${EXPORTS} exports × ${SPANS} spans, 4 senders; a read every ${GAP_MS} ms (month's sessions list and summary, alternating); medians of ${ROUNDS} rounds`,
);
console.log(
  table([
    ['API reads on', 'reads', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'ingest spans/s'],
    ...[
      ['the lander connection (--chdb-read-connections 0, baseline)', 'base'],
      ['read connections of their own (default 2)', 'readers'],
    ].map(([label, k]) => [
      label,
      String(med(k, 'reads')),
      ...keys.map((key) =>
        key === 'spansPerSec' ? Math.round(med(k, key)).toLocaleString() : med(k, key).toFixed(1),
      ),
    ]),
    [
      'ratio readers / baseline',
      '',
      ...keys.map((key) => (med('readers', key) / med('base', key)).toFixed(2)),
    ],
  ]),
);
writeResult('reads-under-ingest', { exports: EXPORTS, spans: SPANS, gapMs: GAP_MS, rounds: ROUNDS, runs });
