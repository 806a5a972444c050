// What an MCP instrumentation costs per tool call: a real SDK client calls a real SDK server (in memory,
// and over stdio with the server in a child process), uninstrumented, with Tollgate, and with the other
// MCP instrumentations on npm, side by side in one run — on both SDK lines: 1.x (`@modelcontextprotocol/sdk`,
// protocol 2025-11-25) and 2.x (`@modelcontextprotocol/server` + `/client`, the stateless 2026-07-28
// protocol: every request carries its version and clientInfo in `_meta`). The peers patch only 1.x. Spans go to a no-op exporter (the network is not
// measured).
//
// Method. The machine is shared and two processes can differ by tens of percent in speed, so every
// configuration runs in its own process against an uninstrumented reference *in the same process*: the
// SDK's CommonJS build (a separate copy of every class, which no instrumentation here patches), while the
// instrumented pair uses the ESM build. Reference and instrumented calls alternate in slices; the cost is
// the median over slices of instrumented / reference. The "uninstrumented" row measures what the method
// itself shows when nothing is instrumented (the two builds do not run at exactly the same speed): the
// "net" columns divide it out.
//
//   node bench/mcp-overhead.mjs [--calls N] [--v2-calls N] [--stdio-calls N] [--repeat N] [--line 1|2]
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { median, noopExporter, table, writeResult } from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);
const require = createRequire(import.meta.url);

/** The app's own OTel SDK, as NodeSDK sets it up (global provider, context manager, batch processor). */
async function registerAppProvider() {
  const sink = noopExporter();
  const { NodeTracerProvider } = await import('@opentelemetry/sdk-trace-node');
  const { BatchSpanProcessor } = await import('@opentelemetry/sdk-trace-base');
  new NodeTracerProvider({
    spanProcessors: [new BatchSpanProcessor(sink, { scheduledDelayMillis: 200 })],
  }).register();
  return sink;
}

async function tollgate(sink, line) {
  const { McpInstrumentation } = await import('@tollgate/instrumentation');
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

/**
 * The configurations. `setup(side)` patches the ESM build before it is used, in the process of that side
 * ('client' or 'server'; in memory one process has both). It returns the sink that counts exported spans.
 */
const CONFIGS = {
  uninstrumented: { label: 'uninstrumented (method check)', setup: async () => undefined },
  tollgate: {
    label: 'Tollgate (billing span)',
    async setup(side, line) {
      const sink = noopExporter();
      if (side !== 'client') await tollgate(sink, line);
      return sink;
    },
  },
  tollgateApp: {
    label: 'Tollgate + app OTel SDK',
    async setup(side, line) {
      const sink = await registerAppProvider();
      if (side !== 'client') await tollgate(sink, line);
      return sink;
    },
  },
  otelSdk: { label: 'app OTel SDK, no MCP instr.', setup: registerAppProvider },
  arize: {
    label: '@arizeai/openinference-instr.-mcp',
    lines: [1], // patches @modelcontextprotocol/sdk's modules only
    async setup() {
      const sink = await registerAppProvider();
      const { MCPInstrumentation } = await import('@arizeai/openinference-instrumentation-mcp');
      new MCPInstrumentation().manuallyInstrument({
        clientStdioModule: await import('@modelcontextprotocol/sdk/client/stdio.js'),
        serverStdioModule: await import('@modelcontextprotocol/sdk/server/stdio.js'),
        clientSSEModule: await import('@modelcontextprotocol/sdk/client/sse.js'),
        serverSSEModule: await import('@modelcontextprotocol/sdk/server/sse.js'),
        clientStreamableHTTPModule: await import('@modelcontextprotocol/sdk/client/streamableHttp.js'),
        serverStreamableHTTPModule: await import('@modelcontextprotocol/sdk/server/streamableHttp.js'),
      });
      return sink;
    },
  },
  traceloop: {
    label: '@traceloop/instrumentation-mcp',
    lines: [1], // patches @modelcontextprotocol/sdk's modules only
    async setup() {
      const sink = await registerAppProvider();
      const { McpInstrumentation } = await import('@traceloop/instrumentation-mcp');
      const i = new McpInstrumentation();
      i.manuallyInstrument(await import('@modelcontextprotocol/sdk/client/index.js'));
      i.manuallyInstrument(await import('@modelcontextprotocol/sdk/server/index.js'));
      return sink;
    },
  },
};

/**
 * The SDK classes of one line (1 or 2) and one build: `esm` (instrumented) or `cjs` (the untouched
 * reference). 2.x ships both builds as well, each with its own copy of every class.
 */
async function sdk(build, line) {
  if (line === 2) {
    const load = build === 'cjs' ? async (m) => require(m) : (m) => import(m);
    const server = await load('@modelcontextprotocol/server');
    const client = await load('@modelcontextprotocol/client');
    return {
      line,
      McpServer: server.McpServer,
      Client: client.Client,
      createMcpHandler: server.createMcpHandler,
      StreamableHTTPClientTransport: client.StreamableHTTPClientTransport,
      StdioClientTransport: (await load('@modelcontextprotocol/client/stdio')).StdioClientTransport,
      serveStdio: (await load('@modelcontextprotocol/server/stdio')).serveStdio,
      z: await load('zod/v4'),
    };
  }
  if (build === 'cjs') {
    return {
      line,
      McpServer: require('@modelcontextprotocol/sdk/server/mcp.js').McpServer,
      Client: require('@modelcontextprotocol/sdk/client/index.js').Client,
      InMemoryTransport: require('@modelcontextprotocol/sdk/inMemory.js').InMemoryTransport,
      StdioClientTransport: require('@modelcontextprotocol/sdk/client/stdio.js').StdioClientTransport,
      StdioServerTransport: require('@modelcontextprotocol/sdk/server/stdio.js').StdioServerTransport,
      z: require('zod').z,
    };
  }
  return {
    line,
    McpServer: (await import('@modelcontextprotocol/sdk/server/mcp.js')).McpServer,
    Client: (await import('@modelcontextprotocol/sdk/client/index.js')).Client,
    InMemoryTransport: (await import('@modelcontextprotocol/sdk/inMemory.js')).InMemoryTransport,
    StdioClientTransport: (await import('@modelcontextprotocol/sdk/client/stdio.js')).StdioClientTransport,
    StdioServerTransport: (await import('@modelcontextprotocol/sdk/server/stdio.js')).StdioServerTransport,
    z: (await import('zod')).z,
  };
}

function newServer(k) {
  const server = new k.McpServer({ name: 'bench', version: '1.0.0' });
  // 2.x takes a Standard Schema object; 1.x a zod raw shape
  const shape = { city: k.z.string() };
  const inputSchema = k.line === 2 ? k.z.object(shape) : shape;
  server.registerTool('get_forecast', { inputSchema }, async ({ city }) => ({
    content: [{ type: 'text', text: `Sunny in ${city}` }],
  }));
  return server;
}

async function pair(k, build, transport, configName) {
  const client =
    k.line === 2
      ? new k.Client(
          { name: 'bench-agent', version: '1.0.0' },
          { versionNegotiation: { mode: { pin: '2026-07-28' } } },
        )
      : new k.Client({ name: 'bench-agent', version: '1.0.0' });
  if (transport === 'memory' && k.line === 2) {
    // 2026-07-28 has no in-memory pair (createLinkedPair connects 2025-era instances only): the SDK's
    // in-process path is the stateless handler's fetch, a fresh server per request, no socket.
    const handler = k.createMcpHandler(() => newServer(k));
    await client.connect(
      new k.StreamableHTTPClientTransport(new URL('http://bench.local/mcp'), {
        fetch: (url, init) => handler.fetch(new Request(url, init)),
      }),
    );
  } else if (transport === 'memory') {
    const [a, b] = k.InMemoryTransport.createLinkedPair();
    await newServer(k).connect(a);
    await client.connect(b);
  } else {
    const args = [SELF, '--server', configName, build, String(k.line)];
    await client.connect(new k.StdioClientTransport({ command: process.execPath, args, stderr: 'inherit' }));
  }
  return client;
}

const WARMUP = 2000;
const SLICES = 24;
const ARGS = { name: 'get_forecast', arguments: { city: 'Paris' } };

async function slice(client, n, lat) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await client.callTool(ARGS);
    lat?.push(performance.now() - t);
  }
  const c = process.cpuUsage(c0);
  return { wallUs: ((performance.now() - t0) * 1000) / n, cpuUs: (c.user + c.system) / n };
}

/** Child: one configuration, one transport, against the in-process reference; prints a JSON line. */
async function child(configName, transport, calls, line) {
  // The reference build is loaded before any instrumentation exists, so no module hook can patch it.
  const refKit = await sdk('cjs', line);
  const sink = await CONFIGS[configName].setup(transport === 'memory' ? 'both' : 'client', line);
  const ref = await pair(refKit, 'cjs', transport, 'uninstrumented');
  const sub = await pair(await sdk('esm', line), 'esm', transport, configName);
  for (let i = 0; i < WARMUP; i++) {
    await ref.callTool(ARGS);
    await sub.callTool(ARGS);
  }
  const n = Math.max(1, Math.floor(calls / SLICES));
  const metric = transport === 'memory' ? 'cpuUs' : 'wallUs'; // in memory one process does all the work
  const ratios = [];
  const refCost = [];
  const subCost = [];
  const lat = [];
  for (let s = 0; s < SLICES; s++) {
    // alternate which goes first, so neither always runs on a warmer cache
    const [a, b] = s % 2 ? [await slice(ref, n), await slice(sub, n, lat)] : [null, await slice(sub, n, lat)];
    const r = a ?? (await slice(ref, n));
    ratios.push(b[metric] / r[metric]);
    refCost.push(r[metric]);
    subCost.push(b[metric]);
  }
  lat.sort((x, y) => x - y);
  globalThis.gc?.();
  const mem = process.memoryUsage();
  await new Promise((res) => setTimeout(res, 400)); // let batch processors export
  const out = {
    ratio: median(ratios),
    refUs: median(refCost),
    subUs: median(subCost),
    p99Us: lat[Math.floor(lat.length * 0.99)] * 1000,
    rssMiB: mem.rss / 2 ** 20,
    heapMiB: mem.heapUsed / 2 ** 20,
    spans: sink?.spans ?? 0,
    attributes: sink?.attributes ?? 0,
    subCalls: WARMUP + n * SLICES, // the reference's calls are never instrumented
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
}

/** Grandchild (stdio): an MCP server; the ESM one carries the configuration's server side. */
async function server(configName, build, line) {
  const k = build === 'cjs' ? await sdk('cjs', line) : undefined;
  if (build === 'esm') await CONFIGS[configName].setup('server', line);
  const kit = k ?? (await sdk('esm', line));
  // 2.x: serveStdio answers the 2026-07-28 discovery and serves each request (and 2025 clients) on stdio
  if (line === 2) kit.serveStdio(() => newServer(kit));
  else await newServer(kit).connect(new kit.StdioServerTransport());
}

function runChild(configName, transport, calls, line) {
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      ['--expose-gc', SELF, '--child', configName, transport, String(calls), String(line)],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    p.stdout.on('data', (d) => {
      out += d;
    });
    p.on('exit', (code) => {
      const last = out.trim().split('\n').pop();
      if (code !== 0 || !last) reject(new Error(`${configName}/${transport} exited with ${code}`));
      else resolve(JSON.parse(last));
    });
  });
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

async function main() {
  const plan = { memory: arg('--calls', 24_000), stdio: arg('--stdio-calls', 4_800) };
  // a 2.x in-process call costs ~30× a 1.x in-memory one (a server per request, fetch Request/Response)
  const planV2 = { memory: arg('--v2-calls', 4_800), stdio: plan.stdio };
  const repeat = arg('--repeat', 3);
  const only = arg('--line', 0);
  const lines = only ? [only] : [1, 2];
  const rows = [
    [
      'SDK',
      'transport',
      'instrumentation',
      'µs/call',
      'ratio',
      'net ratio',
      'net +µs',
      'p99 µs',
      'spans/call',
      'attrs/span',
      'RSS MiB',
      'heap MiB',
    ],
  ];
  const summary = {};
  for (const line of lines) {
    const sdkName = line === 2 ? '2.x (2026-07-28)' : '1.x (2025-11-25)';
    const names = Object.keys(CONFIGS).filter((n) => (CONFIGS[n].lines ?? [1, 2]).includes(line));
    for (const transport of Object.keys(plan)) {
      const key = line === 2 ? `${transport}-v2` : transport;
      summary[key] = {};
      let check = 1;
      for (const n of names) {
        // each configuration in `repeat` fresh processes; the run with the median ratio is kept
        const runs = [];
        for (let r = 0; r < repeat; r++) {
          process.stderr.write(`\r${line}.x ${transport}: ${n} ${r + 1}/${repeat}                    `);
          runs.push(await runChild(n, transport, (line === 2 ? planV2 : plan)[transport], line));
        }
        const x = runs.find((y) => y.ratio === median(runs.map((z) => z.ratio)));
        if (n === 'uninstrumented') check = x.ratio;
        const net = x.ratio / check;
        const addedUs = (net - 1) * x.refUs;
        summary[key][n] = { ...x, netRatio: net, addedUs };
        // stdio: the server's spans are exported in the server process, not counted here
        const spansPerCall =
          transport === 'stdio' && n.startsWith('tollgate') ? 'in server' : (x.spans / x.subCalls).toFixed(2);
        rows.push([
          sdkName,
          transport,
          CONFIGS[n].label,
          x.subUs.toFixed(1),
          x.ratio.toFixed(3),
          net.toFixed(3),
          addedUs.toFixed(1),
          x.p99Us.toFixed(0),
          spansPerCall,
          x.spans ? (x.attributes / x.spans).toFixed(1) : '-',
          x.rssMiB.toFixed(1),
          x.heapMiB.toFixed(1),
        ]);
      }
    }
  }
  process.stderr.write('\n');
  console.log(table(rows));
  for (const key of ['memory', 'memory-v2']) {
    const t = summary[key]?.tollgate;
    if (!t) continue;
    console.log(
      `\n${key === 'memory' ? '1.x' : '2.x'}: Tollgate adds ${t.addedUs.toFixed(1)} µs of CPU to an in-memory round trip of ${t.refUs.toFixed(1)} µs ` +
        `(${((t.netRatio - 1) * 100).toFixed(1)}% net), emitting the full semantic-convention span for every call.`,
    );
  }
  writeResult('mcp-overhead', {
    node: process.version,
    calls: { v1: plan, v2: planV2 },
    repeat,
    method:
      'per configuration, one process: instrumented ESM-build pair vs uninstrumented CJS-build reference, alternating slices; ratio = median of slice ratios; memory: CPU time, stdio: wall time; spans to a no-op exporter',
    summary,
  });
}

if (process.argv[2] === '--child')
  await child(process.argv[3], process.argv[4], Number(process.argv[5]), Number(process.argv[6]));
else if (process.argv[2] === '--server')
  await server(process.argv[3], process.argv[4], Number(process.argv[5]));
else await main();
