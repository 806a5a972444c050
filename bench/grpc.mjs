// OTLP/gRPC against OTLP/HTTP on the same Tollgate: the same protobuf exports of 512 MCP tool-call spans
// (unique span ids) sent to TraceService/Export on otlp.grpcPort (a grpc-js client: one HTTP/2 connection, as
// the Collector's otlp exporter keeps) and to POST /v1/traces (keep-alive HTTP/1.1 sockets), one transport after
// the other, alternating which goes first, each on fresh spans; 8 closed-loop senders, then one sender. Two
// servers: the full pipeline (fsync'd spool, private Redis, chDB) and decode-and-discard (`--pipeline-mode
// decode-only`), where the transport is most of what is left. Prints acked spans/s and latency per export, and
// the ratio gRPC / HTTP.
//
//   node bench/grpc.mjs            BENCH_GRPC_BATCHES (200) exports per saturation run, BENCH_GRPC_ONE (60)
//                                  one-sender exports, BENCH_REPEAT (2) rounds per server, BENCH_NODE_ARGS the
//                                  server's Node flags
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  cpuMs,
  DEV_INGEST_KEY,
  drive,
  freePort,
  INGEST_HEADERS,
  median,
  percentile,
  protobufBatches,
  ROOT,
  startTollgate,
} from './lib.mjs';

const { credentials, Metadata, makeGenericClientConstructor } = await import('@grpc/grpc-js');
const { TRACE_SERVICE } = await import(join(ROOT, 'collector-processor/dist/receiver/grpc.js'));

const BATCHES = Number(process.env.BENCH_GRPC_BATCHES ?? 200);
const ONE = Number(process.env.BENCH_GRPC_ONE ?? 60);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 2);
const SPANS = 512;
const CONCURRENCY = 8;
/** Node flags of the server (`--require file.cjs`, `--cpu-prof`…). */
const NODE_ARGS = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);

const Client = makeGenericClientConstructor(TRACE_SERVICE, 'TraceService');

/** Sends each body once over one gRPC channel, `concurrency` at a time; latencies (ms, sorted) and wall time. */
async function driveGrpc(address, bodies, concurrency) {
  const client = new Client(address, credentials.createInsecure());
  const md = new Metadata();
  md.set('authorization', `Bearer ${DEV_INGEST_KEY}`);
  const call = (body) =>
    new Promise((resolve, reject) =>
      client.Export(body, md, (err) => (err ? reject(new Error(`${err.code} ${err.details}`)) : resolve())),
    );
  await call(bodies[0]); // the connection is made before the clock starts (HTTP's agent connects on its first)
  const latencies = [];
  let next = 1;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < bodies.length) {
        const i = next++;
        const t = performance.now();
        await call(bodies[i]);
        latencies.push(performance.now() - t);
      }
    }),
  );
  const wallMs = performance.now() - started;
  client.close();
  latencies.sort((a, b) => a - b);
  return { latencies, wallMs, sent: bodies.length - 1 };
}

async function driveHttp(url, bodies, concurrency) {
  const headers = INGEST_HEADERS;
  await drive(url, [bodies[0]], { concurrency: 1, headers });
  const r = await drive(url, bodies.slice(1), { concurrency, headers });
  const bad = [...r.statuses].filter(([s]) => s !== 200);
  if (bad.length) throw new Error(`HTTP statuses ${JSON.stringify(bad)}`);
  return { latencies: r.latencies, wallMs: r.wallMs, sent: bodies.length - 1 };
}

const results = { full: { grpc: [], http: [] }, floor: { grpc: [], http: [] } };
for (const [server, flags] of [
  ['full', []],
  ['floor', ['--pipeline-mode', 'decode-only']],
]) {
  const grpcPort = await freePort();
  const tg = await startTollgate(
    [...flags, '--otlp-grpc', 'true', '--otlp-grpc-port', String(grpcPort)],
    {},
    NODE_ARGS,
  );
  const address = `127.0.0.1:${grpcPort}`;
  try {
    // warm-up on both transports
    await driveHttp(`${tg.otlpUrl}/v1/traces`, await protobufBatches(20, SPANS), CONCURRENCY);
    await driveGrpc(address, await protobufBatches(20, SPANS), CONCURRENCY);
    for (let round = 0; round < REPEAT; round++) {
      const order = round % 2 === 0 ? ['grpc', 'http'] : ['http', 'grpc'];
      for (const transport of order) {
        const sat = await protobufBatches(BATCHES + 1, SPANS);
        const one = await protobufBatches(ONE + 1, SPANS);
        const run = (bodies, c) =>
          transport === 'grpc'
            ? driveGrpc(address, bodies, c)
            : driveHttp(`${tg.otlpUrl}/v1/traces`, bodies, c);
        const before = cpuMs(tg.child.pid);
        const s = await run(sat, CONCURRENCY);
        const after = cpuMs(tg.child.pid);
        const o = await run(one, 1);
        results[server][transport].push({
          ackedPerSec: (s.sent * SPANS) / (s.wallMs / 1000),
          // the server's CPU per span at saturation, µs: main thread and whole process
          mainUs: ((after.main - before.main) * 1000) / (s.sent * SPANS),
          processUs: ((after.process - before.process) * 1000) / (s.sent * SPANS),
          satP50: percentile(s.latencies, 50),
          satP99: percentile(s.latencies, 99),
          oneP50: percentile(o.latencies, 50),
          oneP99: percentile(o.latencies, 99),
        });
      }
    }
  } finally {
    await tg.stop();
  }
}

const med = (rows, k) => median(rows.map((r) => r[k]));
const f = (n) => Math.round(n).toLocaleString('en-US');
const ms = (n) => n.toFixed(1);
const cpu = (rows) => `${med(rows, 'mainUs').toFixed(2)} / ${med(rows, 'processUs').toFixed(2)}`;
const table = [
  [
    'server',
    'transport',
    'acked spans/s',
    'server CPU µs/span (main / process)',
    'p50 ms (8 senders)',
    'p99 ms (8 senders)',
    'p50 ms (1 sender)',
    'p99 ms (1 sender)',
  ],
];
for (const server of ['full', 'floor']) {
  const g = results[server].grpc;
  const h = results[server].http;
  const row = (name, rows) => [
    server,
    name,
    f(med(rows, 'ackedPerSec')),
    cpu(rows),
    ms(med(rows, 'satP50')),
    ms(med(rows, 'satP99')),
    ms(med(rows, 'oneP50')),
    ms(med(rows, 'oneP99')),
  ];
  table.push(row('OTLP/HTTP', h), row('OTLP/gRPC', g));
  const r = (k) => (med(g, k) / med(h, k)).toFixed(2);
  table.push([
    server,
    'ratio gRPC / HTTP',
    r('ackedPerSec'),
    `${r('mainUs')} / ${r('processUs')}`,
    r('satP50'),
    r('satP99'),
    r('oneP50'),
    r('oneP99'),
  ]);
}
console.log(
  `OTLP/gRPC against OTLP/HTTP: ${BATCHES} exports × ${SPANS} spans at ${CONCURRENCY} senders, ${ONE} with one sender, medians of ${REPEAT} rounds per transport`,
);
for (const row of table) console.log(`| ${row.join(' | ')} |`);
writeFileSync(
  join(ROOT, 'bench/results/grpc.json'),
  `${JSON.stringify({ at: new Date().toISOString(), results }, null, 2)}\n`,
);
