import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Directive } from '@tollgate/contracts';
import { REFUSALS } from '../errors.js';
import { instrumentMcpServer } from '../instrument-server.js';
import { shutdownTollgate } from '../registry.js';
import { DEMO_TOOLS, DIRECTIVE_LINE, registerDemoTools } from './tools.js';

/**
 * The Tollgate demo with real parts, on the MCP that ships today: MCP SDK 2.x servers on the stateless
 * 2026-07-28 protocol — on stdio (`serveStdio`, a child process per agent) and on Streamable HTTP
 * (`createMcpHandler`, a fresh server per request, in this process) — next to an MCP SDK 1.x server on stdio
 * (2025-11-25), all instrumented with this SDK and exporting to the given Tollgate; agent loops (real MCP SDK
 * clients of the matching line) call their tools for several customers; `initech`, whose `run_report` is
 * priced below its cost in the embedded plans, is driven through the margin guard (warn → throttle → kill):
 * its stdio server refuses the next call and exits, and a new session it opens is refused.
 *
 * Needs `@modelcontextprotocol/server`, `@modelcontextprotocol/client` and `@modelcontextprotocol/node` 2.x and
 * `@modelcontextprotocol/sdk` 1.x installed (loaded at run time, never by the SDK proper).
 */
export interface McpDemoOptions {
  /** Tollgate's OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318`. */
  otlpUrl: string;
  /** Tollgate's HTTP API, e.g. `http://127.0.0.1:8080` (printed with the analytics URL). */
  apiUrl: string;
  /** Ingest key bound to the demo product (`tg_dev_ingest_demo` on the embedded defaults). */
  ingestKey: string;
  /** Product of the ingest key (default `demo-mcp`). */
  product?: string;
  /** How long the agents run at most, in seconds (default 25; the demo ends earlier once initech is stopped). */
  durationSeconds?: number;
  /** Where the live progress and the summary go (default stdout). */
  out?: NodeJS.WritableStream;
  /**
   * Revenue, cost and margin per customer, for the live view: supply it from ClickHouse in the CLI, or give
   * `apiKey` and the demo reads `GET {apiUrl}/analytics/mcp/by-customer`. Without either, money shows `…`.
   */
  totals?: () => Promise<CustomerTotals[]>;
  /** An API key of role admin or finance for the billing API (used when `totals` is not given). */
  apiKey?: string;
}

export interface CustomerTotals {
  customer: string;
  /** Decimal strings in the plan currency, e.g. "0.123". */
  revenue: string;
  cost: string;
  /** Margin in basis points (10000 = 100%); null before any revenue. */
  marginBps: number | null;
}

/** Which MCP SDK line and protocol revision an agent and its server speak. */
export type DemoSdk = '2.x' | '1.x';

export interface McpDemoAgentSummary {
  customer: string;
  agent: string;
  transport: 'stdio' | 'streamable_http';
  sdk: DemoSdk;
  /** The protocol revision the connection negotiated. */
  protocol: '2026-07-28' | '2025-11-25';
  calls: number;
  refused: { killed: number; throttled: number };
  /** Directive changes seen for this customer, in order. */
  directives: Directive[];
  /** stdio only: exit code of the (last) server process. */
  serverExitCode?: number | null;
  /** Whether a new session opened after the kill was refused. */
  newSessionRefused?: boolean;
  stoppedBy?: string;
}

export interface McpDemoSummary {
  seconds: number;
  agents: McpDemoAgentSummary[];
  totals: CustomerTotals[];
  analyticsUrl: string;
}

interface AgentSpec {
  customer: string;
  agent: string;
  transport: 'stdio' | 'streamable_http';
  sdk: DemoSdk;
  /** Which tool the agent calls next (i = calls made so far). */
  pick(i: number): string;
  /** Pause after call i. */
  paceMs(i: number): number;
}

const TOOL_NAMES = DEMO_TOOLS.map((t) => t.name);
const rnd = (xs: readonly string[]) => xs[Math.floor(Math.random() * xs.length)] as string;

/**
 * Who calls what. Margins follow the embedded plans: acme is on the enterprise plan, globex pays from its
 * first call, umbrella and hooli use cheap default-priced tools (their first 20 calls of the month are
 * free). initech earns ~70% on forecasts, then calls only run_report, which its plan prices below cost:
 * one call per export interval, so the margin guard walks through warn (< 20%), throttle (< 10%), kill (< 0).
 * Four agents speak 2.x on the stateless 2026-07-28 revision; hooli's server is a 1.x one (2025-11-25).
 */
const AGENTS: AgentSpec[] = [
  {
    customer: 'acme',
    agent: 'planner',
    transport: 'stdio',
    sdk: '2.x',
    pick: () => rnd(TOOL_NAMES),
    paceMs: () => 180,
  },
  {
    customer: 'initech',
    agent: 'report-bot',
    transport: 'stdio',
    sdk: '2.x',
    pick: (i) => (i < 30 ? 'get_forecast' : 'run_report'),
    paceMs: (i) => (i < 30 ? 120 : 450),
  },
  {
    customer: 'globex',
    agent: 'researcher',
    transport: 'streamable_http',
    sdk: '2.x',
    pick: () => rnd(['search_docs', 'get_forecast']),
    paceMs: () => 200,
  },
  {
    customer: 'umbrella',
    agent: 'support-bot',
    transport: 'streamable_http',
    sdk: '2.x',
    pick: () => 'lookup_customer',
    paceMs: () => 150,
  },
  {
    customer: 'hooli',
    agent: 'crm-sync',
    transport: 'stdio',
    sdk: '1.x',
    pick: () => 'lookup_customer',
    paceMs: () => 220,
  },
];

const PROTOCOL: Record<DemoSdk, McpDemoAgentSummary['protocol']> = {
  '2.x': '2026-07-28',
  '1.x': '2025-11-25',
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The stdio server script of an SDK line: next to this module once built (run from source, the built one). */
function stdioServerScript(sdk: DemoSdk): string {
  const file = sdk === '2.x' ? 'stdio-server-v2.js' : 'stdio-server.js';
  const beside = fileURLToPath(new URL(`./${file}`, import.meta.url));
  return existsSync(beside) ? beside : fileURLToPath(new URL(`../../dist/demo/${file}`, import.meta.url));
}

/**
 * The HTTP side, on 2.x: the SDK's stateless `createMcpHandler` (a fresh instrumented `McpServer` per request,
 * 2026-07-28), mounted on node:http with `toNodeHandler`; bearer `customer:agent` stands in for an auth
 * middleware (it sets `authInfo`). Billing sessions come from each agent's activity (no protocol session).
 */
async function startHttpServer(
  options: McpDemoOptions,
  onDirective: (d: Directive) => void,
): Promise<{ url: string; close(): Promise<void> }> {
  const { createMcpHandler, McpServer } = await import('@modelcontextprotocol/server');
  const { toNodeHandler } = await import('@modelcontextprotocol/node');
  const handler = createMcpHandler(
    () => {
      const server = new McpServer({ name: 'tollgate-demo-http', version: '1.0.0' });
      instrumentMcpServer(server, {
        endpoint: options.otlpUrl,
        ingestKey: options.ingestKey,
        serviceName: 'tollgate-demo-http',
        exportIntervalMs: 250,
        heartbeatIntervalMs: 500,
        stateFile: false,
        logger: false,
        onDirective,
      });
      registerDemoTools(server as unknown as Parameters<typeof registerDemoTools>[0]);
      return server;
    },
    { legacy: 'reject' },
  );
  const nodeHandler = toNodeHandler(handler);
  const httpServer = http.createServer((req, res) => {
    const auth = /^Bearer ([^:\s]+):(\S+)$/.exec(req.headers.authorization ?? '');
    if (auth) {
      // what an auth middleware would attach after validating a token: customer and OAuth client
      Object.assign(req, {
        auth: { token: `demo-${auth[2]}`, clientId: auth[2], scopes: [], extra: { customerId: auth[1] } },
      });
    }
    nodeHandler(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(err));
    });
  });
  await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}/mcp`,
    async close() {
      await handler.close().catch(() => {});
      httpServer.closeAllConnections();
      await new Promise((r) => httpServer.close(r));
    },
  };
}

/** What the demo does with a connected client of either SDK line. */
interface DemoClient {
  callTool(name: string): Promise<unknown>;
  close(): Promise<void>;
}

interface AgentState extends McpDemoAgentSummary {
  running: boolean;
}

async function connect(
  spec: AgentSpec,
  options: McpDemoOptions,
  httpUrl: string,
  stateFile: string,
  state: AgentState,
  seen: (customer: string, d: Directive) => void,
): Promise<DemoClient> {
  const stdioParams = {
    command: process.execPath,
    args: [stdioServerScript(spec.sdk)],
    env: {
      ...(process.env as Record<string, string>),
      TOLLGATE_OTLP_ENDPOINT: options.otlpUrl,
      TOLLGATE_INGEST_KEY: options.ingestKey,
      TOLLGATE_CUSTOMER_ID: spec.customer,
      TOLLGATE_AGENT_ID: spec.agent,
      TOLLGATE_DEMO_STATE_FILE: stateFile,
    },
    stderr: 'pipe' as const,
  };
  const watch = (transport: { stderr?: import('node:stream').Stream | null }) => {
    let buf = '';
    transport.stderr?.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith(DIRECTIVE_LINE))
          seen(spec.customer, JSON.parse(line.slice(DIRECTIVE_LINE.length)));
      }
    });
  };
  const onExit = (transport: object) => {
    const proc = (transport as { _process?: import('node:child_process').ChildProcess })._process;
    proc?.once('exit', (code) => {
      state.serverExitCode = code;
    });
  };
  const headers = { authorization: `Bearer ${spec.customer}:${spec.agent}` };
  if (spec.sdk === '2.x') {
    const { Client, StreamableHTTPClientTransport } = await import('@modelcontextprotocol/client');
    // the stateless 2026-07-28 revision: no initialize, identity and version in every request's _meta
    const client = new Client(
      { name: spec.agent, version: '1.0.0' },
      { versionNegotiation: { mode: { pin: '2026-07-28' } } },
    );
    if (spec.transport === 'stdio') {
      const { StdioClientTransport } = await import('@modelcontextprotocol/client/stdio');
      const transport = new StdioClientTransport(stdioParams);
      watch(transport);
      await client.connect(transport);
      onExit(transport);
    } else {
      await client.connect(new StreamableHTTPClientTransport(new URL(httpUrl), { requestInit: { headers } }));
    }
    return { callTool: (name) => client.callTool({ name, arguments: {} }), close: () => client.close() };
  }
  const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
  const client = new Client({ name: spec.agent, version: '1.0.0' });
  if (spec.transport === 'stdio') {
    const { StdioClientTransport } = await import('@modelcontextprotocol/sdk/client/stdio.js');
    const transport = new StdioClientTransport(stdioParams);
    watch(transport);
    await client.connect(transport);
    onExit(transport);
  } else {
    const { StreamableHTTPClientTransport } = await import(
      '@modelcontextprotocol/sdk/client/streamableHttp.js'
    );
    await client.connect(new StreamableHTTPClientTransport(new URL(httpUrl), { requestInit: { headers } }));
  }
  return { callTool: (name) => client.callTool({ name, arguments: {} }), close: () => client.close() };
}

/** One agent: calls tools until the time is up or Tollgate stops it; honours throttle retry-after. */
async function runAgent(
  spec: AgentSpec,
  client: DemoClient,
  state: AgentState,
  deadline: number,
): Promise<void> {
  while (Date.now() < deadline && state.running) {
    try {
      await client.callTool(spec.pick(state.calls));
      await sleep(spec.paceMs(state.calls++));
    } catch (err) {
      const e = err as { code?: number; message?: string; data?: { tollgate?: { retryAfterMs?: number } } };
      if (e.code === REFUSALS.throttled.code) {
        state.refused.throttled++;
        await sleep(e.data?.tollgate?.retryAfterMs ?? 500);
        continue;
      }
      if (e.code === REFUSALS.killed.code) state.refused.killed++;
      state.stoppedBy = e.message ?? String(err);
      state.running = false;
    }
  }
}

function money(v: string | undefined): string {
  if (v === undefined) return '…';
  const n = Number(v);
  return Number.isFinite(n) ? n.toFixed(4) : v;
}

function marginText(bps: number | null | undefined): string {
  return bps === null || bps === undefined ? '…' : `${(bps / 100).toFixed(1)}%`;
}

/** Revenue/cost/margin from the billing API (`/analytics/mcp/by-customer`), when a key is given. */
function apiTotals(options: McpDemoOptions, product: string): (() => Promise<CustomerTotals[]>) | undefined {
  if (!options.apiKey) return undefined;
  return async () => {
    const res = await fetch(
      `${options.apiUrl}/analytics/mcp/by-customer?product=${encodeURIComponent(product)}`,
      {
        headers: { authorization: `Bearer ${options.apiKey}` },
      },
    );
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = (await res.json()) as { rows?: Record<string, unknown>[] };
    return (body.rows ?? []).map((r) => ({
      customer: String(r.customer),
      revenue: String(r.revenue ?? ''),
      cost: String(r.cost ?? ''),
      marginBps: typeof r.marginBps === 'number' ? r.marginBps : null,
    }));
  };
}

function render(states: AgentState[], totals: CustomerTotals[], elapsedS: number, httpUrl: string): string {
  const rows = [
    [
      'customer',
      'sdk',
      'protocol',
      'transport',
      'agent',
      'calls',
      'refused',
      'revenue',
      'cost',
      'margin',
      'directives',
    ],
  ];
  for (const s of states) {
    const t = totals.find((x) => x.customer === s.customer);
    const refused = s.refused.killed + s.refused.throttled;
    rows.push([
      s.customer,
      s.sdk,
      s.protocol,
      s.transport,
      s.agent,
      String(s.calls),
      String(refused),
      money(t?.revenue),
      money(t?.cost),
      marginText(t?.marginBps),
      s.directives.map((d) => d.action).join(' → ') || '-',
    ]);
  }
  const widths = (rows[0] as string[]).map((_, c) => Math.max(...rows.map((r) => (r[c] as string).length)));
  const lines = rows.map((r) => r.map((v, c) => v.padEnd(widths[c] as number)).join('  '));
  return [
    `Tollgate MCP demo — ${elapsedS.toFixed(1)} s — stdio servers are child processes, HTTP at ${httpUrl}`,
    ...lines,
  ].join('\n');
}

/** Runs the demo; resolves with a summary once every agent has stopped and every span is exported. */
export async function runMcpDemo(options: McpDemoOptions): Promise<McpDemoSummary> {
  const out = options.out ?? process.stdout;
  const product = options.product ?? 'demo-mcp';
  const totalsOf = options.totals ?? apiTotals(options, product);
  const started = Date.now();
  const deadline = started + (options.durationSeconds ?? 25) * 1000;
  const stateDir = mkdtempSync(join(tmpdir(), 'tollgate-demo-'));
  const states: AgentState[] = AGENTS.map((a) => ({
    customer: a.customer,
    agent: a.agent,
    transport: a.transport,
    sdk: a.sdk,
    protocol: PROTOCOL[a.sdk],
    calls: 0,
    refused: { killed: 0, throttled: 0 },
    directives: [],
    running: true,
  }));
  // The customer-scope changes tell the story (session and agent states follow the same margin).
  const seen = (customer: string, d: Directive) => {
    if (d.scope !== 'customer') return;
    for (const s of states) {
      if (s.customer === customer && s.directives.at(-1)?.action !== d.action) s.directives.push(d);
    }
  };
  const http = await startHttpServer(options, (d) => seen(d.customer, d));
  let totals: CustomerTotals[] = [];
  let drawn = 0;
  const tty = (out as NodeJS.WriteStream).isTTY === true;
  const draw = (final = false) => {
    const text = render(states, totals, (Date.now() - started) / 1000, http.url);
    if (tty) {
      if (drawn) out.write(`\u001b[${drawn}A\u001b[0J`);
      out.write(`${text}\n`);
      drawn = text.split('\n').length;
    } else if (final || Math.round((Date.now() - started) / 500) % 4 === 0) out.write(`${text}\n\n`);
  };
  const refresh = async () => {
    if (!totalsOf) return;
    try {
      totals = await totalsOf();
    } catch {
      // live money is best effort: the summary tries again
    }
  };
  const ticker = setInterval(() => {
    void refresh();
    draw();
  }, 500);

  try {
    await Promise.all(
      AGENTS.map(async (spec, i) => {
        const state = states[i] as AgentState;
        const stateFile = join(stateDir, `${spec.customer}.json`);
        const client = await connect(spec, options, http.url, stateFile, state, seen);
        await runAgent(spec, client, state, deadline);
        await client.close().catch(() => {});
        if (state.refused.killed && spec.transport === 'stdio') {
          await sleep(300);
          // the agent's host starts the server again: the killed customer's new session is refused — at
          // `initialize` on the 2025 era, at its first call on the stateless 2026-07-28 revision (which has no
          // handshake; the server remembers the kill in its state file and checks with Tollgate first)
          let again: DemoClient | undefined;
          try {
            again = await connect(spec, options, http.url, stateFile, state, seen);
            await again.callTool(spec.pick(state.calls));
            state.newSessionRefused = false;
          } catch (err) {
            state.newSessionRefused = (err as { code?: number }).code === REFUSALS.killed.code;
          }
          await again?.close().catch(() => {});
        }
        // once the margin guard has stopped initech, the others wind down a few seconds later
        if (spec.customer === 'initech') {
          setTimeout(() => {
            for (const s of states) s.running = false;
          }, 3000);
        }
      }),
    );
  } finally {
    clearInterval(ticker);
    await shutdownTollgate(); // flushes the HTTP servers' spans
    await http.close();
    rmSync(stateDir, { recursive: true, force: true });
  }
  await sleep(1500); // the landing of the last calls
  await refresh();
  draw(true);

  const analyticsUrl = `${options.apiUrl}/analytics/mcp/by-customer?product=${encodeURIComponent(product)}`;
  const summary: McpDemoSummary = {
    seconds: (Date.now() - started) / 1000,
    agents: states.map(({ running: _r, ...s }) => s),
    totals,
    analyticsUrl,
  };
  const initech = summary.agents.find((a) => a.customer === 'initech');
  const lines = ['', 'Summary'];
  for (const a of summary.agents) {
    const t = totals.find((x) => x.customer === a.customer);
    lines.push(
      `  ${a.customer.padEnd(9)} ${String(a.calls).padStart(4)} calls, SDK ${a.sdk} ${a.protocol} over ${a.transport.padEnd(15)}` +
        (t ? ` revenue ${money(t.revenue)}  cost ${money(t.cost)}  margin ${marginText(t.marginBps)}` : ''),
    );
  }
  if (initech?.stoppedBy) {
    const kill = initech.directives.find((d) => d.action === 'kill');
    lines.push(
      '',
      `  initech was stopped by the margin guard after ${initech.calls} calls: ` +
        `${initech.directives.map((d) => d.action).join(' → ')}` +
        (kill?.marginBps !== undefined ? ` (margin ${marginText(kill.marginBps)})` : ''),
      `  its last call was refused before the tool ran: ${initech.stoppedBy}`,
      `  its stdio server exited with code ${initech.serverExitCode ?? '?'}; a new session ${
        initech.newSessionRefused ? 'was refused' : 'was NOT refused'
      }`,
    );
  }
  lines.push('', `  Analytics: ${analyticsUrl}`, '');
  out.write(`${lines.join('\n')}\n`);
  return summary;
}
