// A direct A/B loop of the SDK's per-call CPU cost, for working on @tollgate/instrumentation: each sample is
// one process that makes N tool calls (1.x: `callTool` over `InMemoryTransport`; 2.x: through
// `createMcpHandler`'s `fetch`, the stateless 2026-07-28 protocol) either uninstrumented ("plain") or with
// Tollgate emitting its billing span to a no-op exporter, and reports CPU µs per call (process.cpuUsage:
// client and server share the process). Processes alternate plain / instrumented (the order flips every
// repeat) so a shared machine's load falls on both; the table gives medians over repeats.
//
// `--base DIR` adds a third variant: Tollgate loaded from another build of the package (e.g. a copy of
// instrumentation/dist made before a change, placed inside instrumentation/ so its imports resolve), for
// before/after rows in one run.
//
//   node bench/mcp-overhead-direct.mjs [--line 1|2] [--calls N] [--v2-calls N] [--repeat N] [--base DIR]
//   node --cpu-prof bench/mcp-overhead-direct.mjs --child tollgate 1 50000   # one profiled sample
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { median, noopExporter } from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);
const ROOT = resolve(SELF, '../..');
const WARMUP = 3000;
const ARGS = { name: 'get_forecast', arguments: { city: 'Paris' } };

async function client(line) {
  if (line === 2) {
    const { McpServer, createMcpHandler } = await import('@modelcontextprotocol/server');
    const { Client, StreamableHTTPClientTransport } = await import('@modelcontextprotocol/client');
    const z = await import('zod/v4');
    const handler = createMcpHandler(() => {
      const s = new McpServer({ name: 'bench', version: '1.0.0' });
      s.registerTool('get_forecast', { inputSchema: z.object({ city: z.string() }) }, async ({ city }) => ({
        content: [{ type: 'text', text: `Sunny in ${city}` }],
      }));
      return s;
    });
    const c = new Client(
      { name: 'bench-agent', version: '1.0.0' },
      { versionNegotiation: { mode: { pin: '2026-07-28' } } },
    );
    await c.connect(
      new StreamableHTTPClientTransport(new URL('http://bench.local/mcp'), {
        fetch: (url, init) => handler.fetch(new Request(url, init)),
      }),
    );
    return c;
  }
  const { McpServer } = await import('@modelcontextprotocol/sdk/server/mcp.js');
  const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
  const { InMemoryTransport } = await import('@modelcontextprotocol/sdk/inMemory.js');
  const { z } = await import('zod');
  const s = new McpServer({ name: 'bench', version: '1.0.0' });
  s.registerTool('get_forecast', { inputSchema: { city: z.string() } }, async ({ city }) => ({
    content: [{ type: 'text', text: `Sunny in ${city}` }],
  }));
  const [a, b] = InMemoryTransport.createLinkedPair();
  await s.connect(a);
  const c = new Client({ name: 'bench-agent', version: '1.0.0' });
  await c.connect(b);
  return c;
}

/** One sample: prints {cpuUs, spans, attributes} as a JSON line. */
async function child(variant, line, calls, base) {
  let sink;
  if (variant !== 'plain') {
    sink = noopExporter();
    const entry =
      variant === 'base'
        ? pathToFileURL(resolve(base, 'index.js')).href
        : pathToFileURL(resolve(ROOT, 'instrumentation/dist/index.js')).href;
    const { McpInstrumentation } = await import(entry);
    new McpInstrumentation({
      billingExporter: sink,
      logger: false,
      customer: () => 'bench',
    }).manuallyInstrument(
      line === 2
        ? await import('@modelcontextprotocol/server')
        : await import('@modelcontextprotocol/sdk/server/index.js'),
    );
  }
  const c = await client(line);
  for (let i = 0; i < Math.min(WARMUP, calls); i++) await c.callTool(ARGS);
  let gcMs = 0;
  const { PerformanceObserver } = await import('node:perf_hooks');
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcMs += e.duration;
  });
  obs.observe({ entryTypes: ['gc'] });
  const c0 = process.cpuUsage();
  for (let i = 0; i < calls; i++) await c.callTool(ARGS);
  const cpu = process.cpuUsage(c0);
  await new Promise((r) => setTimeout(r, 50)); // gc entries arrive asynchronously
  obs.disconnect();
  const gcAt = gcMs;
  const out = {
    cpuUs: (cpu.user + cpu.system) / calls,
    gcUs: (gcAt * 1000) / calls,
    spans: sink?.spans ?? 0,
    attributes: sink?.attributes ?? 0,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
}

function run(variant, line, calls, base) {
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, [SELF, '--child', variant, String(line), String(calls), base ?? ''], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d) => {
      out += d;
    });
    p.on('exit', (code) =>
      code === 0 ? res(JSON.parse(out.trim().split('\n').pop())) : rej(new Error(`child ${code}`)),
    );
  });
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') return child(argv[1], Number(argv[2]), Number(argv[3]), argv[4] || undefined);
  const opt = (name, d) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : d;
  };
  const lines = opt('--line') ? [Number(opt('--line'))] : [1, 2];
  const calls = { 1: Number(opt('--calls', 50_000)), 2: Number(opt('--v2-calls', 5_000)) };
  const repeat = Number(opt('--repeat', 5));
  const base = opt('--base') ? resolve(opt('--base')) : undefined;
  const variants = base ? ['plain', 'tollgate', 'base'] : ['plain', 'tollgate'];
  const { loadavg } = await import('node:os');
  console.log(
    `load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}; ${new Date().toISOString()}`,
  );
  const rows = [];
  for (const line of lines) {
    const samples = Object.fromEntries(variants.map((v) => [v, []]));
    const gc = Object.fromEntries(variants.map((v) => [v, []]));
    const spans = {};
    for (let r = 0; r < repeat; r++) {
      const order = r % 2 ? [...variants].reverse() : variants;
      for (const v of order) {
        const s = await run(v, line, calls[line], base);
        samples[v].push(s.cpuUs);
        gc[v].push(s.gcUs);
        spans[v] = s;
      }
    }
    const plain = median(samples.plain);
    for (const v of variants) {
      const m = median(samples[v]);
      rows.push({
        line: `${line}.x`,
        variant: v,
        calls: calls[line],
        'cpu µs/call (median)': m.toFixed(2),
        'min–max': `${Math.min(...samples[v]).toFixed(2)}–${Math.max(...samples[v]).toFixed(2)}`,
        'ratio to plain': (m / plain).toFixed(3),
        '+µs': (m - plain).toFixed(2),
        'gc µs/call (median)': median(gc[v]).toFixed(2),
        'attrs/span': spans[v].spans ? (spans[v].attributes / spans[v].spans).toFixed(1) : '-',
      });
    }
  }
  console.table(rows);
  console.log(
    `load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
}

await main();
