// One tenant's large export against everyone else's latency: while a steady sender posts 512-span exports
// every 25 ms (20k spans/s, open loop: latency counts from each export's scheduled time), one large export
// arrives 2 s in. Three kinds of large export, each within the default body limits:
//   - attrs:    5,000 non-billable spans of 1,000 tiny int attributes (58 MB, 0.47 MB of gzip);
//   - scopes:   30 million empty scope spans (60 MB, 58 KB of gzip);
//   - billable: 120,000 tool-call spans (55 MB, 5.2 MB of gzip).
// Printed per kind: the large export's status and time, the steady sender's p50/p99/max, and the largest
// delay of the server's event loop over the run (prom-client's nodejs_eventloop_lag_max_seconds, reset by a
// scrape before the run) — how long the main thread was held at once.
//   node bench/large-exports.mjs                     this build
//   BENCH_BASE=/tmp/base node bench/large-exports.mjs   base (built checkout) and this build, ratios
//   BENCH_KINDS=attrs,scopes BENCH_REPEAT=2 …
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  CLI,
  INGEST_HEADERS,
  median,
  percentile,
  protobufBatches,
  ROOT,
  startTollgate,
  table,
  writeResult,
} from './lib.mjs';

const KINDS = (process.env.BENCH_KINDS ?? 'attrs,scopes,billable').split(',');
const REPEAT = Number(process.env.BENCH_REPEAT ?? 1);
const BASE = process.env.BENCH_BASE;
const { ProtoRequest } = await import(join(ROOT, 'collector-processor/dist/otlp/proto.js'));

function varintLength(n) {
  const v = [];
  for (; n >= 128; n = Math.floor(n / 128)) v.push((n % 128) | 128);
  v.push(n);
  return Buffer.from(v);
}

async function largeExport(kind) {
  if (kind === 'attrs') {
    const attributes = Array.from({ length: 1000 }, (_, i) => ({
      key: `k${i % 50}`,
      value: { intValue: i },
    }));
    const spans = Array.from({ length: 5000 }, (_, s) => ({
      traceId: Buffer.alloc(16, 1),
      spanId: Buffer.alloc(8, s % 255),
      name: 'x',
      attributes,
    }));
    return Buffer.from(
      ProtoRequest.encode(ProtoRequest.fromObject({ resourceSpans: [{ scopeSpans: [{ spans }] }] })).finish(),
    );
  }
  if (kind === 'scopes') {
    const n = 30_000_000;
    const scopes = Buffer.alloc(2 * n);
    for (let i = 0; i < n; i++) scopes[2 * i] = 0x12; // ScopeSpans, length 0
    return Buffer.concat([Buffer.from([0x0a]), varintLength(scopes.length), scopes]);
  }
  return (await protobufBatches(1, 120_000))[0];
}

async function run(cli, kind, attack, steady) {
  const tg = await startTollgate([], {}, [], cli);
  try {
    await (await fetch(`${tg.apiUrl}/metrics`)).text(); // resets the event loop's lag histogram
    const latencies = [];
    const t0 = performance.now();
    const sends = [];
    let i = 0;
    const timer = setInterval(() => {
      if (i >= steady.length) return;
      const due = performance.now();
      const body = steady[i++];
      sends.push(
        fetch(`${tg.otlpUrl}/v1/traces`, { method: 'POST', headers: INGEST_HEADERS, body }).then(
          async (r) => {
            await r.arrayBuffer();
            latencies.push(performance.now() - due);
          },
        ),
      );
    }, 25);
    await new Promise((r) => setTimeout(r, 2000));
    const a0 = performance.now();
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { ...INGEST_HEADERS, 'content-encoding': 'gzip' },
      body: attack,
    });
    await res.arrayBuffer();
    const attackMs = performance.now() - a0;
    await new Promise((r) => setTimeout(r, 3000));
    clearInterval(timer);
    await Promise.all(sends);
    const metrics = await (await fetch(`${tg.apiUrl}/metrics`)).text();
    const lag = metrics
      .split('\n')
      .find((l) => l.startsWith('tollgate_process_nodejs_eventloop_lag_max_seconds'));
    const sorted = latencies.sort((a, b) => a - b);
    return {
      kind,
      status: res.status,
      attackMs,
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      max: sorted.at(-1) ?? 0,
      lagMaxMs: Number(lag?.split(' ')[1] ?? 0) * 1000,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await tg.stop();
  }
}

const steady = await protobufBatches(400, 512);
const builds = BASE
  ? [
      ['base', join(BASE, 'collector-processor/dist/cli/main.js')],
      ['this', CLI],
    ]
  : [['this', CLI]];
const results = [];
for (const kind of KINDS) {
  const attack = gzipSync(await largeExport(kind));
  for (let r = 0; r < REPEAT; r++) {
    for (const [build, cli] of builds) {
      const out = await run(cli, kind, attack, steady);
      results.push({ build, ...out });
      console.log(JSON.stringify({ build, ...out }));
    }
  }
}

const f = (x) => x.toFixed(0);
const rows = [
  ['kind', 'build', 'large export', 'its ms', 'steady p50 ms', 'p99 ms', 'max ms', 'event-loop lag max ms'],
];
for (const kind of KINDS) {
  const med = {};
  for (const [build] of builds) {
    const rs = results.filter((x) => x.kind === kind && x.build === build);
    med[build] = Object.fromEntries(
      ['attackMs', 'p50', 'p99', 'max', 'lagMaxMs'].map((k) => [k, median(rs.map((x) => x[k]))]),
    );
    rows.push([
      kind,
      build,
      rs.map((x) => x.status).join('/'),
      f(med[build].attackMs),
      f(med[build].p50),
      f(med[build].p99),
      f(med[build].max),
      f(med[build].lagMaxMs),
    ]);
  }
  if (BASE) {
    const ratio = (k) => (med.this[k] / med.base[k]).toFixed(2);
    rows.push([
      kind,
      'this / base',
      '',
      ratio('attackMs'),
      ratio('p50'),
      ratio('p99'),
      ratio('max'),
      ratio('lagMaxMs'),
    ]);
  }
}
console.log(`\nlarge exports beside a steady sender (medians of ${REPEAT})${BASE ? `, base ${BASE}` : ''}`);
console.log(table(rows));
writeResult('large-exports', { base: BASE ?? null, repeat: REPEAT, results });
