// Shared helpers of the benchmarks: start a built Tollgate as a child process, measure its memory,
// generate OTLP payloads, drive HTTP load and summarise latencies.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';

export const ROOT = new URL('..', import.meta.url).pathname;
export const CLI = join(ROOT, 'collector-processor/dist/cli/main.js');
export const DEV_INGEST_KEY = 'tg_dev_ingest_demo';
/** Headers of an OTLP/HTTP protobuf export with the embedded defaults' development ingest key. */
export const INGEST_HEADERS = {
  'content-type': 'application/x-protobuf',
  authorization: `Bearer ${DEV_INGEST_KEY}`,
};

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `tollgate start` with the given flags in a fresh data dir; resolves when /healthz answers. `cli`
 * runs another build (an A/B against a base checkout).
 */
export async function startTollgate(flags = [], env = {}, nodeArgs = [], cli = CLI) {
  const dataDir = mkdtempSync(join(tmpdir(), 'tollgate-bench-'));
  const otlpPort = await freePort();
  const apiPort = await freePort();
  // BENCH_SERVER_STDOUT=<file>: the server's stdout (V8's --trace-gc* output among it) appended there
  const stdout = process.env.BENCH_SERVER_STDOUT ? openSync(process.env.BENCH_SERVER_STDOUT, 'a') : 'ignore';
  const child = spawn(
    process.execPath,
    [
      ...nodeArgs,
      cli,
      'start',
      '--data-dir',
      dataDir,
      '--otlp-port',
      String(otlpPort),
      '--otlp-grpc',
      'false',
      '--api-port',
      String(apiPort),
      '--log-level',
      'warn',
      ...flags,
    ],
    { stdio: ['ignore', stdout, 'inherit'], env: { ...process.env, ...env } },
  );
  if (typeof stdout === 'number') closeSync(stdout); // the child has its own copy
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`tollgate exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${apiUrl}/healthz`)).ok) break;
    } catch {}
    if (i > 600) throw new Error('tollgate did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    dataDir,
    otlpUrl: `http://127.0.0.1:${otlpPort}`,
    apiUrl,
    async stop() {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Peak resident set size (VmHWM) of a process, in MiB. */
export function peakRssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

/**
 * CPU time used so far (user + system, ms) by a process — all its threads — and by its main thread alone
 * (/proc/PID/task/PID), from /proc's clock ticks (10 ms resolution: compare over seconds).
 */
export function cpuMs(pid) {
  const ticks = (path) => {
    const fields = readFileSync(path, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime, stime at 100 ticks/s
  };
  return { process: ticks(`/proc/${pid}/stat`), main: ticks(`/proc/${pid}/task/${pid}/stat`) };
}

/** Reads one counter or gauge from the Prometheus text of /metrics. */
export async function metric(apiUrl, name) {
  const text = await (await fetch(`${apiUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').pop()) : 0;
}

/** The middle value of `xs` (the upper of the two middle ones for an even count); `xs` is not reordered. */
export function median(xs) {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/**
 * Sends `bodies` (each once, in order) over keep-alive connections and returns per-request latencies (ms,
 * sorted), the wall time and the statuses.
 *
 * Closed loop (default): `concurrency` senders, each posts its next body when the previous one is answered.
 * Open loop (`ratePerSec`): body i is due at start + i / ratePerSec whatever is still in flight (as many
 * connections as needed), and its latency counts from that scheduled time, not from when the request left —
 * so a stall of the server or of this process shows as latency instead of as fewer requests
 * (coordinated omission). `lagMs` is the largest delay between a scheduled time and the actual send.
 * With `timeline`, `timeline[i]` is body i's start (scheduled time in open loop; ms since the epoch) and latency.
 */
export async function drive(url, bodies, { concurrency = 8, headers = {}, ratePerSec, timeline } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: ratePerSec ? Infinity : concurrency });
  const target = new URL(url);
  const latencies = [];
  const statuses = new Map();
  const post = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: target.hostname,
          port: target.port,
          path: target.pathname,
          method: 'POST',
          agent,
          headers: { ...headers, 'content-length': body.length },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const events = timeline ? new Array(bodies.length) : undefined;
  const record = (from, status, i) => {
    const ms = performance.now() - from;
    latencies.push(ms);
    if (events) events[i] = { startEpochMs: performance.timeOrigin + from, ms };
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
  };
  const started = performance.now();
  let lagMs = 0;
  if (ratePerSec) {
    const inFlight = [];
    for (let i = 0; i < bodies.length; i++) {
      const due = started + (i * 1000) / ratePerSec;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      lagMs = Math.max(lagMs, performance.now() - due);
      inFlight.push(post(bodies[i]).then((status) => record(due, status, i)));
    }
    await Promise.all(inFlight);
  } else {
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < bodies.length) {
          const i = next++;
          const t = performance.now();
          record(t, await post(bodies[i]), i);
        }
      }),
    );
  }
  const wallMs = performance.now() - started;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return { latencies, wallMs, statuses, lagMs, timeline: events };
}

const CUSTOMERS = Array.from({ length: 50 }, (_, i) => `customer-${i}`);
const TOOLS = ['get_forecast', 'search_docs', 'run_report', 'lookup_customer'];

/**
 * `count` OTLP protobuf export requests of `spansPerBatch` MCP tool-call spans each, every span unique,
 * shaped like the OTel JS SDK's output (resource, scope, SERVER spans with the semconv attributes).
 */
export async function protobufBatches(count, spansPerBatch) {
  const { ProtoRequest } = await import(join(ROOT, 'collector-processor/dist/otlp/proto.js'));
  const now = BigInt(Date.now() - 60_000) * 1_000_000n;
  const kv = (key, value) => ({
    key,
    value: typeof value === 'string' ? { stringValue: value } : { intValue: value },
  });
  const out = [];
  for (let b = 0; b < count; b++) {
    const customer = CUSTOMERS[b % CUSTOMERS.length];
    const spans = [];
    for (let i = 0; i < spansPerBatch; i++) {
      const tool = TOOLS[i % TOOLS.length];
      const start = now + BigInt(b * spansPerBatch + i) * 1000n;
      spans.push({
        traceId: randomBytes(16),
        spanId: randomBytes(8),
        name: `tools/call ${tool}`,
        kind: 2,
        startTimeUnixNano: start.toString(),
        endTimeUnixNano: (start + 35_000_000n).toString(),
        attributes: [
          kv('mcp.method.name', 'tools/call'),
          kv('gen_ai.tool.name', tool),
          kv('gen_ai.operation.name', 'execute_tool'),
          kv('mcp.session.id', `session-${b % 400}`),
          kv('mcp.protocol.version', '2025-06-18'),
          kv('network.transport', 'pipe'),
          kv('jsonrpc.request.id', String(i)),
          kv('tollgate.customer.id', customer),
          kv('tollgate.agent.id', `agent-${i % 5}`),
          kv('gen_ai.usage.input_tokens', 100 + (i % 50)),
          kv('gen_ai.usage.output_tokens', 400 + (i % 300)),
        ],
        status: { code: 0 },
      });
    }
    out.push(
      Buffer.from(
        ProtoRequest.encode(
          ProtoRequest.fromObject({
            resourceSpans: [
              {
                resource: {
                  attributes: [kv('service.name', 'bench-mcp'), kv('service.instance.id', `bench-${b % 8}`)],
                },
                scopeSpans: [{ scope: { name: '@modelcontextprotocol/bench', version: '1.0.0' }, spans }],
              },
            ],
          }),
        ).finish(),
      ),
    );
  }
  return out;
}

export function writeResult(name, data) {
  writeFileSync(join(ROOT, 'bench/results', `${name}.json`), `${JSON.stringify(data, null, 2)}\n`);
}

export function table(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  return rows
    .map((r) =>
      r.map((v, c) => (c === 0 ? String(v).padEnd(widths[c]) : String(v).padStart(widths[c]))).join('  '),
    )
    .join('\n');
}

const MONTH_US = 31n * 86_400n * 1_000_000n;

/**
 * One month (31 days) of `rows` calls into mcp_tool_calls, rows start…start+count: INSERT … SELECT from
 * numbers(), so they reach every view through the real MV path. 100 customers, 5 agents, 8 tools,
 * sessions of 20 calls; ~2% failed, a few free; prices and costs follow a per-call + per-token +
 * per-second plan (integer nano-units).
 */
export function seedCallsSql({ start, count, rows, period }) {
  const usPerRow = MONTH_US / BigInt(rows);
  return `INSERT INTO mcp_tool_calls
SELECT
  toString(n) AS event_id,
  concat(hex(cityHash64(n)), hex(cityHash64(n + 1))) AS trace_id,
  hex(cityHash64(n, 7)) AS span_id,
  'demo-mcp' AS product,
  concat('customer-', toString(n % 100)) AS customer,
  concat('agent-', toString(intDiv(n, 800) % 5)) AS agent,
  concat('sess-', toString(n % 100), '-', toString(intDiv(n, 2000))) AS session_id,
  ['get_forecast', 'search_docs', 'run_report', 'lookup_customer', 'send_email', 'create_ticket', 'summarize', 'translate'][intDiv(n, 100) % 8 + 1] AS tool,
  'stdio' AS transport, 'sdk' AS source,
  if(n % 50 = 0, 'error', 'ok') AS status,
  if(n % 50 = 0, 'tool_error', '') AS error_type,
  '2025-06-18' AS protocol_version, 'bench' AS instance_id,
  addMicroseconds(toDateTime64('${period}-01 00:00:00', 6, 'UTC'), n * ${usPerRow}) AS started_at,
  5000 + (n * 7919) % 2000000 AS duration_us,
  100 + n % 900 AS input_tokens,
  200 + n % 1800 AS output_tokens,
  if(decision IN ('billed'), 2000000 + input_tokens * 1000 + output_tokens * 3000 + intDiv(duration_us * 100000 + 500000, 1000000), 0) AS price_nano,
  500000 + input_tokens * 200 AS cost_nano,
  if(decision IN ('billed'), 2000000, 0) AS price_call_nano,
  if(decision IN ('billed'), input_tokens * 1000, 0) AS price_input_nano,
  if(decision IN ('billed'), output_tokens * 3000, 0) AS price_output_nano,
  if(decision IN ('billed'), intDiv(duration_us * 100000 + 500000, 1000000), 0) AS price_duration_nano,
  if(decision IN ('billed'), 1, 0) AS tier,
  'std' AS plan_id, 'bench' AS plan_version, 'USD' AS currency,
  multiIf(n % 50 = 0, 'failed_not_billed', intDiv(n, 100) % 500 = 0, 'free', 'billed') AS decision,
  '${period}' AS period,
  started_at AS received_at,
  'protocol' AS session_rule,
  if(decision IN ('billed'), 100000, 0) AS price_per_second_nano,
  -- migration 0013: no usage lines in the seeded calls (all their tokens priced at the token rates)
  input_tokens AS input_tokens_priced,
  output_tokens AS output_tokens_priced,
  CAST([], 'Array(LowCardinality(String))') AS usage_lines,
  CAST([], 'Array(UInt64)') AS usage_quantity_micro,
  CAST([], 'Array(Int64)') AS usage_unit_nano,
  CAST([], 'Array(Int64)') AS usage_price_nano,
  CAST([], 'Array(Int64)') AS usage_cost_nano
FROM (SELECT number AS n FROM numbers(${start}, ${count}))`;
}

/** A span exporter that counts spans and attributes and drops them. */
export function noopExporter() {
  const sink = {
    spans: 0,
    attributes: 0,
    export(spans, done) {
      sink.spans += spans.length;
      for (const s of spans) sink.attributes += Object.keys(s.attributes).length;
      done({ code: 0 });
    },
    shutdown: async () => {},
    forceFlush: async () => {},
  };
  return sink;
}

/** Calls per second of `fn(batch)` over `batches` batches of `perBatch` calls, `concurrency` in flight. */
export async function driveBatches(fn, { batches, perBatch, concurrency }) {
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < batches) await fn(next++);
    }),
  );
  return (batches * perBatch) / ((performance.now() - t) / 1000);
}

/**
 * The analytics endpoints bench/analytics.mjs and bench/analytics-builds.mjs time, as [name, url] pairs over the
 * seed of `rows` calls in `period` (`next`: the period after it).
 */
export function analyticsEndpoints(period, next, rows) {
  const month = `period=${period}`;
  const lastDay = `from=${period}-31&to=${next}-01`;
  return [
    ['revenue/by-tool (month, all customers)', `/analytics/mcp/revenue/by-tool?${month}`],
    ['by-agent, day buckets (month)', `/analytics/mcp/by-agent?${month}&bucket=day&limit=1000`],
    ['by-customer (month)', `/analytics/mcp/by-customer?${month}&limit=1000`],
    ['summary (month)', `/analytics/mcp/summary?${month}`],
    ['summary (month, one customer)', `/analytics/mcp/summary?${month}&customer=customer-7`],
    ['sessions (month, one customer)', `/analytics/mcp/sessions?${month}&customer=customer-7&limit=100`],
    ['sessions (month, all customers)', `/analytics/mcp/sessions?${month}&limit=100`],
    ['summary (last day, all customers)', `/analytics/mcp/summary?${lastDay}`],
    ['sessions (last day, all customers)', `/analytics/mcp/sessions?${lastDay}&limit=100`],
    [
      'sessions (a day mid-month: later calls, lifetime view)',
      `/analytics/mcp/sessions?from=${period}-10&to=${period}-11&limit=100`,
    ],
    [
      'sessions/{id} (one session, its calls)',
      `/analytics/mcp/sessions/sess-7-${Math.floor(rows / 4000)}?customer=customer-7&limit=100`,
    ],
    [
      'by-agent, hour buckets (48 h, raw by design)',
      `/analytics/mcp/by-agent?from=${period}-10&to=${period}-12&bucket=hour&limit=1000`,
    ],
  ];
}

/**
 * A billing API (`build`: some build's `buildApi`) for the analytics benches: silent, one finance key `key`
 * for product `demo-mcp`, reading `clickhouse` from `source` (`views` or `raw`); quotes are not used.
 */
export function benchAnalyticsApi(build, { key, clickhouse, source }) {
  return build({
    log: pino({ level: 'silent' }),
    readiness: async () => [],
    metrics: async () => ({ contentType: 'text/plain', body: '' }),
    apiKeys: [
      {
        name: 'bench',
        sha256: createHash('sha256').update(key).digest('hex'),
        role: 'finance',
        products: ['demo-mcp'],
      },
    ],
    analytics: {
      clickhouse,
      traceLinkTemplate: 'http://localhost:16686/trace/{traceId}',
      pricing: {
        currency: () => 'USD',
        planFor: () => undefined,
        quote: () => {
          throw new Error('not used by the analytics benches');
        },
      },
      source,
    },
  });
}
