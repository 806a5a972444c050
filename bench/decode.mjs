// The main thread's per-span work on the ingest path, one stage at a time: CPU µs per span and bytes
// allocated per span, for six workloads:
//   - e2e: the exports of bench/e2e.mjs (512 MCP tool-call spans, 11 attributes, repeated customer, tools,
//     agents and sessions), decoded and selected as the receiver does;
//   - distinct: 512 spans of 10 string attributes whose every value is new (none of them a billing
//     attribute), decoded only: the worst case for anything that remembers values;
//   - rate: the calls of e2e's exports (decoded once, before the rounds) rated under the embedded default
//     plans (collector-processor/defaults/plans.yaml, product demo-mcp) at usage positions that run on
//     from call to call, as Redis's claim would give them: rating alone;
//   - lines, native, tsv: those calls' rated rows (built once, before the rounds) written per export by the
//     encoders: enforce.lua's call lines (CallLines), the landing's Native block (NativeWriter, the default)
//     and its TabSeparated text (TsvWriter);
//   - over_limit: the Native block of a customer past its hard limit: written, then written again once
//     enforcement has marked every call over_limit (NativeWriter's `retake` where the build has one, else the
//     whole block encoded a second time, as the pipeline did before).
// Each sample is its own process (`node --trace-gc-nvp`): 5 rounds of warm-up, then 20 measured rounds over
// 100 exports; CPU from process.cpuUsage, allocation as the sum of V8's `allocated=` over the collections of
// the measured rounds. BENCH_BASE=<a built checkout> alternates base and this build BENCH_REPEAT (5) times and
// prints the medians and their ratio; without it, this build alone. BENCH_WORKLOADS=lines,native picks
// workloads; BENCH_CHILD_ROUNDS (20) sets the measured rounds of a sample, whose process can also be run
// alone: `node bench/decode.mjs --child <collector-processor/dist of a build> <workload>`.
//   node bench/decode.mjs
//   BENCH_BASE=/tmp/base node bench/decode.mjs
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { median, protobufBatches, ROOT, table, writeResult } from './lib.mjs';

const ROUNDS = Number(process.env.BENCH_CHILD_ROUNDS ?? 20);
const WARMUP_ROUNDS = 5;
const ALL_WORKLOADS = ['e2e', 'distinct', 'rate', 'lines', 'native', 'tsv', 'over_limit'];
const WORKLOADS = process.env.BENCH_WORKLOADS?.split(',') ?? ALL_WORKLOADS;
for (const w of WORKLOADS)
  if (!ALL_WORKLOADS.includes(w)) throw new Error(`BENCH_WORKLOADS: no workload ${w}`);

async function child(dist, workload) {
  const load = (p) => import(pathToFileURL(join(dist, p)).href);
  const { decodeOtlp, extractOptions, selectCalls } = await load('pipeline/select.js');
  const { RejectionTally } = await load('pipeline/tally.js');
  const { ProtoRequest } = await import(
    pathToFileURL(join(ROOT, 'collector-processor/dist/otlp/proto.js')).href
  );
  if (workload === 'rate') return rateChild(load, decodeOtlp, extractOptions, selectCalls, RejectionTally);
  if (workload === 'lines' || workload === 'native' || workload === 'tsv' || workload === 'over_limit')
    return encodeChild(workload, load, decodeOtlp, extractOptions, selectCalls, RejectionTally);
  let bodies;
  if (workload === 'e2e') bodies = await protobufBatches(100, 512);
  else {
    bodies = [];
    const kv = (key, value) => ({ key, value: { stringValue: value } });
    const keys = ['a.b.c', 'd.e.f', 'g.h', 'i.j.k', 'l.m', 'n.o.p', 'q.r', 's.t', 'u.v', 'w.x'];
    for (let b = 0; b < 100; b++) {
      const spans = [];
      for (let i = 0; i < 512; i++) {
        const u = () => randomBytes(12).toString('hex');
        spans.push({
          traceId: randomBytes(16),
          spanId: randomBytes(8),
          name: `span ${u()}`,
          kind: 2,
          startTimeUnixNano: '1',
          endTimeUnixNano: '2',
          attributes: keys.map((k) => kv(k, u())),
        });
      }
      const doc = { resourceSpans: [{ scopeSpans: [{ spans }] }] };
      bodies.push(Buffer.from(ProtoRequest.encode(ProtoRequest.fromObject(doc)).finish()));
    }
  }
  const win = { maxSpanAgeHours: 24, maxFutureSeconds: 300 };
  await measure(async () => {
    let spans = 0;
    for (const body of bodies) {
      // awaited: a build's decoding is a promise since it reads large exports over several turns (plain
      // values before; `await` takes either)
      const decoded = await decodeOtlp('otlp-protobuf', body);
      if (workload === 'e2e')
        await selectCalls(decoded, extractOptions(win, undefined, Date.now(), []), new RejectionTally());
      spans += decoded.spans.length;
    }
    return spans;
  });
}

/**
 * WARMUP_ROUNDS of `round` (which returns the spans it handled), then ROUNDS measured between the MARK lines
 * the parent reads V8's GC trace by; prints the CPU µs per span of the measured rounds (and `extra()`).
 */
async function measure(round, extra = () => ({})) {
  for (let i = 0; i < WARMUP_ROUNDS; i++) await round();
  let spans = 0;
  console.log('MARK start');
  const c0 = process.cpuUsage();
  for (let i = 0; i < ROUNDS; i++) spans += await round();
  const c = process.cpuUsage(c0);
  console.log('MARK end');
  console.log(`RESULT ${JSON.stringify({ cpuUsPerSpan: (c.user + c.system) / spans, spans, ...extra() })}`);
}

/** e2e's calls with their plan and tool rate, as `prepare` resolves them. */
async function e2eJobs(load, decodeOtlp, extractOptions, selectCalls, RejectionTally) {
  const { loadPlanBook, toolRateOf } = await load('plans/load.js');
  const book = loadPlanBook(readFileSync(join(ROOT, 'collector-processor/defaults/plans.yaml'), 'utf8'));
  const opts = extractOptions({ maxSpanAgeHours: 24, maxFutureSeconds: 300 }, undefined, Date.now(), []);
  const calls = [];
  for (const body of await protobufBatches(100, 512))
    calls.push(...(await selectCalls(await decodeOtlp('otlp-protobuf', body), opts, new RejectionTally())));
  return calls.map((call) => {
    const plan = book.resolve('demo-mcp', call.customer);
    return { call, plan, rate: toolRateOf(plan, call.tool) };
  });
}

/** The `rate` workload: rateCall over e2e's calls, each at the next usage position of its customer. */
async function rateChild(load, ...decoding) {
  const { rateCall } = await load('rating/rate.js');
  const jobs = await e2eJobs(load, ...decoding);
  const positions = new Map(); // customer → calls counted so far (tool ordinals share it: one bench tool each)
  let sink = 0n; // printed, so the ratings are used
  await measure(
    () => {
      for (const j of jobs) {
        const n = (positions.get(j.call.customer) ?? 0) + 1;
        positions.set(j.call.customer, n);
        sink += rateCall(j.call, j.plan, j.rate, { toolOrdinal: n, planOrdinal: n }).priceNano;
      }
      return jobs.length;
    },
    () => ({ sink: String(sink) }),
  );
}

/** The `lines`, `native` and `tsv` workloads: e2e's rated rows through one encoder, 512 rows per export. */
async function encodeChild(workload, load, ...decoding) {
  const { rateCall } = await load('rating/rate.js');
  // the rows are the input, built by this checkout's pipeline whatever build is measured
  const { ratedRow } = await import(
    pathToFileURL(join(ROOT, 'collector-processor/dist/pipeline/pipeline.js')).href
  );
  const jobs = await e2eJobs(load, ...decoding);
  const positions = new Map();
  const sessions = new Map(); // session id → enforce.lua's session key index (1-based within the bench)
  const rows = jobs.map(({ call: c, plan, rate }) => {
    const n = (positions.get(c.customer) ?? 0) + 1;
    positions.set(c.customer, n);
    const r = rateCall(c, plan, rate, { toolOrdinal: n, planOrdinal: n });
    if (c.sessionId && !sessions.has(c.sessionId)) sessions.set(c.sessionId, sessions.size + 1);
    return ratedRow('demo-mcp', c, plan, '2026-12', r, r.decision, Date.now());
  });
  const exports = [];
  for (let i = 0; i < rows.length; i += 512) exports.push(rows.slice(i, i + 512));
  let bytes = 0; // printed, so the encodings are used
  let round;
  if (workload === 'lines') {
    const { CallLines } = await load('enforcement/enforcer.js');
    const lines = new CallLines();
    round = () => {
      for (const e of exports) {
        lines.start(e.length);
        for (const r of e)
          lines.call(sessions.get(r.sessionId) ?? 0, r.sessionId, r.agent, r.tool, r.priceNano, r.costNano);
        const t = lines.take(); // a Buffer of call lines before 2026-12-07, binary calls and their names since
        bytes += Buffer.isBuffer(t)
          ? t.length
          : t.calls.length + t.agents.length + t.tools.length + t.sessions.length;
      }
      return rows.length;
    };
  } else if (workload === 'over_limit') {
    const writer = new (await load('landing/native.js')).NativeWriter();
    const marked = exports.map((e) => e.map((r) => ({ ...r, decision: 'over_limit' })));
    round = () => {
      for (let i = 0; i < exports.length; i++) {
        for (const r of exports[i]) writer.add(r);
        const first = writer.take();
        if (writer.retake) bytes += writer.retake(first, marked[i]).length;
        else {
          for (const r of marked[i]) writer.add(r);
          bytes += writer.take().length;
        }
      }
      return rows.length;
    };
  } else {
    const writer =
      workload === 'native'
        ? new (await load('landing/native.js')).NativeWriter()
        : new (await load('landing/tsv.js')).TsvWriter();
    round = () => {
      for (const e of exports) {
        for (const r of e) writer.add(r);
        bytes += writer.take().length;
      }
      return rows.length;
    };
  }
  await measure(round, () => ({ bytes }));
}

/** One sample: a process with V8's GC trace; CPU µs and allocated bytes per span of the measured rounds. */
function sample(dist, workload) {
  const r = spawnSync(
    process.execPath,
    ['--trace-gc-nvp', join(ROOT, 'bench/decode.mjs'), '--child', dist, workload],
    { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
  );
  if (r.status !== 0) throw new Error(`decode sample failed: ${r.stderr}`);
  let on = false;
  let allocated = 0;
  let result;
  for (const line of r.stdout.split('\n')) {
    if (line === 'MARK start') on = true;
    else if (line === 'MARK end') on = false;
    else if (line.startsWith('RESULT ')) result = JSON.parse(line.slice(7));
    else if (on && line.includes(' gc=')) allocated += Number(/ allocated=(\d+)/.exec(line)?.[1] ?? 0);
  }
  return { cpuUsPerSpan: result.cpuUsPerSpan, bytesPerSpan: allocated / result.spans };
}

if (process.argv[2] === '--child') {
  await child(process.argv[3], process.argv[4]);
} else {
  const base = process.env.BENCH_BASE;
  const repeat = Number(process.env.BENCH_REPEAT ?? 5);
  const builds = [['this build', join(ROOT, 'collector-processor/dist')]];
  if (base) builds.unshift(['base', join(base, 'collector-processor/dist')]);
  const samples = {};
  for (let i = 0; i < repeat; i++)
    for (const workload of WORKLOADS)
      for (const [name, dist] of i % 2 ? [...builds].reverse() : builds) {
        const key = `${workload}\0${name}`;
        samples[key] = [...(samples[key] ?? []), sample(dist, workload)];
      }
  const rows = [['workload', 'build', 'CPU µs/span', 'allocated B/span', 'CPU min–max']];
  const out = {};
  for (const workload of WORKLOADS) {
    const m = {};
    for (const [name] of builds) {
      const s = samples[`${workload}\0${name}`];
      const cpus = s.map((x) => x.cpuUsPerSpan);
      m[name] = { cpu: median(cpus), bytes: median(s.map((x) => x.bytesPerSpan)) };
      rows.push([
        workload,
        name,
        m[name].cpu.toFixed(2),
        m[name].bytes.toFixed(0),
        `${Math.min(...cpus).toFixed(2)}–${Math.max(...cpus).toFixed(2)}`,
      ]);
    }
    if (base) {
      const r = (k) => (m['this build'][k] / m.base[k]).toFixed(2);
      rows.push([workload, 'ratio this / base', r('cpu'), r('bytes'), '']);
    }
    out[workload] = m;
  }
  console.log(
    `decode + select (e2e, distinct), rating (rate), encoders (lines, native, tsv, over_limit), ${repeat} samples per build${base ? `, base ${base}` : ''} (medians)`,
  );
  console.log(table(rows));
  writeResult('decode', out);
}
