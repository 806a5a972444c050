import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client as Client2, StreamableHTTPClientTransport as Http2 } from '@modelcontextprotocol/client';
import { StdioClientTransport as Stdio2 } from '@modelcontextprotocol/client/stdio';
import { Client as Client1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport as Stdio1 } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport as Http1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { REFUSAL_CODES } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { FIXTURES, PACKAGE_DIR, waitFor } from './support/mcp.js';

/**
 * Every cell of {SDK 1.x, 2.0.x, 2.4.x} × {2025-11-25, 2026-07-28 where the SDK speaks it} × {stdio,
 * Streamable HTTP} × {zero-code, explicit}: a real SDK client calls a real instrumented server (a child
 * process) whose spans a real Tollgate bills; then an operator kill refuses the next call before the tool runs,
 * and a lift lets calls through again. No mocks.
 */

type Line = '1.x' | '2.0' | '2.4';
type Protocol = '2025-11-25' | '2026-07-28';
type Transport = 'stdio' | 'http';
type Mode = 'explicit' | 'zero-code';

const ENTRY: Record<Line, string> = {
  '1.x': `${FIXTURES}matrix-v1.mjs`,
  '2.0': `${FIXTURES}sdk-2.0/matrix-v2.mjs`,
  '2.4': `${FIXTURES}matrix-v2.mjs`,
};

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        marginGuard: { enabled: false }
`;

interface Cell {
  line: Line;
  protocol: Protocol;
  transport: Transport;
  mode: Mode;
}

const cells: Cell[] = [];
for (const line of ['1.x', '2.0', '2.4'] as const) {
  const protocols: Protocol[] = line === '1.x' ? ['2025-11-25'] : ['2025-11-25', '2026-07-28'];
  for (const protocol of protocols)
    for (const transport of ['stdio', 'http'] as const)
      for (const mode of ['zero-code', 'explicit'] as const) cells.push({ line, protocol, transport, mode });
}

let tg: TestTollgate;
let dir: string;

beforeAll(async () => {
  // the 2.0.x fixture has its own install (scripts/setup.sh does it); a missing one is a failure, not a skip
  if (!existsSync(join(FIXTURES, 'sdk-2.0/node_modules/@modelcontextprotocol/server/package.json'))) {
    throw new Error('instrumentation/test/fixtures/sdk-2.0 is not installed: run bash scripts/setup.sh');
  }
  tg = await startTestTollgate({}, PLANS);
  dir = mkdtempSync(join(tmpdir(), 'tollgate-matrix-'));
});

afterAll(async () => {
  await tg?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Conn {
  call(tool: string, args?: Record<string, unknown>): Promise<unknown>;
  close(): Promise<void>;
  stderr: string[];
}

/** A refusal as either client line reports it. */
interface RpcError {
  code?: number;
  message?: string;
  data?: { tollgate?: { scope?: string; reason?: string; refusal?: string } };
}

function envOf(c: Cell, customer: string, ranFile: string): Record<string, string> {
  return {
    ...(process.env as Record<string, string>),
    TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
    TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
    TOLLGATE_CUSTOMER_ID: customer,
    TG_MODE: c.mode,
    TG_TRANSPORT: c.transport,
    TG_RAN_FILE: ranFile,
    OTEL_SERVICE_NAME: `matrix-${c.line}-${c.transport}-${c.mode}`,
  };
}

function nodeArgs(c: Cell): string[] {
  const entry = ENTRY[c.line];
  return c.mode === 'zero-code' ? ['--import', '@tollgate/instrumentation/register', entry] : [entry];
}

/** Starts the HTTP fixture (a child process) and resolves its URL once it listens. */
async function startHttpServer(
  c: Cell,
  env: Record<string, string>,
): Promise<{ url: URL; proc: ChildProcess }> {
  const proc = spawn(process.execPath, nodeArgs(c), {
    cwd: PACKAGE_DIR,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  const port = await new Promise<number>((resolve, reject) => {
    proc.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening (\d+)/.exec(err);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', (code) => reject(new Error(`fixture exited ${code}: ${err}`)));
  });
  return { url: new URL(`http://127.0.0.1:${port}/mcp`), proc };
}

async function connect(c: Cell, agent: string, env: Record<string, string>, url?: URL): Promise<Conn> {
  const stderr: string[] = [];
  const headers = { authorization: `Bearer ${env.TOLLGATE_CUSTOMER_ID}:token-${agent}` };
  if (c.line === '1.x') {
    const client = new Client1({ name: agent, version: '1.0.0' });
    const transport =
      c.transport === 'stdio'
        ? new Stdio1({ command: process.execPath, args: nodeArgs(c), cwd: PACKAGE_DIR, env, stderr: 'pipe' })
        : new Http1(url as URL, { requestInit: { headers } });
    if (transport instanceof Stdio1) transport.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()));
    await client.connect(transport);
    return {
      call: (name, args = {}) => client.callTool({ name, arguments: args }),
      close: () => client.close(),
      stderr,
    };
  }
  const client = new Client2(
    { name: agent, version: '1.0.0' },
    c.protocol === '2026-07-28' ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {},
  );
  const transport =
    c.transport === 'stdio'
      ? new Stdio2({ command: process.execPath, args: nodeArgs(c), cwd: PACKAGE_DIR, env, stderr: 'pipe' })
      : new Http2(url as URL, { requestInit: { headers } });
  if (transport instanceof Stdio2) transport.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()));
  await client.connect(transport);
  return {
    call: (name, args = {}) => client.callTool({ name, arguments: args }),
    close: () => client.close(),
    stderr,
  };
}

interface Row {
  session_id: string;
  session_rule: string;
  agent: string;
  transport: string;
  protocol_version: string;
  source: string;
  tool: string;
}

async function rows(customer: string, n: number): Promise<Row[]> {
  return waitFor(`${n} billed calls of ${customer}`, async () => {
    await tg.lander?.idle();
    const r = await query<Row>(
      tg,
      `SELECT session_id, session_rule, agent, transport, protocol_version, source, tool
       FROM mcp_tool_calls WHERE customer = {c:String} ORDER BY started_at`,
      { c: customer },
    );
    return r.length >= n ? r : undefined;
  });
}

function ranCount(file: string): number {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0;
}

/** Calls until the kill has reached the server; returns the refusal and how many calls ran before it. */
async function untilRefused(conn: Conn): Promise<{ refusal: RpcError; okBefore: number }> {
  let okBefore = 0;
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      await conn.call('run_report');
      okBefore++;
    } catch (err) {
      return { refusal: err as RpcError, okBefore };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the kill never reached the server');
}

describe.each(cells)('SDK $line, protocol $protocol, $transport, $mode', (c) => {
  it('bills every call with the right session, agent and transport; a kill refuses before the tool runs; a lift resumes', async () => {
    const tag = `${c.line}-${c.protocol}-${c.transport}-${c.mode}`.replace(/[^a-z0-9-]/gi, '');
    const customer = `mx-${tag}`;
    const agent = `agent-${tag}`;
    const ranFile = join(dir, `${tag}.ran`);
    const env = envOf(c, customer, ranFile);
    const server = c.transport === 'http' ? await startHttpServer(c, env) : undefined;
    let conn: Conn | undefined;
    try {
      conn = await connect(c, agent, env, server?.url);
      for (const text of ['a', 'b', 'c']) await conn.call('echo', { text });

      const billed = await rows(customer, 3);
      expect(billed).toHaveLength(3);
      const sessions = new Set(billed.map((r) => r.session_id));
      expect(sessions.size, 'one client, one billing session').toBe(1);
      const expectedRule =
        c.transport === 'stdio' ? 'connection' : c.protocol === '2026-07-28' ? 'activity' : 'protocol';
      const expectedPrefix = { connection: 'conn-', activity: 'act-', protocol: '' }[expectedRule];
      for (const r of billed) {
        expect(r.session_rule).toBe(expectedRule);
        expect(r.session_id.startsWith(expectedPrefix)).toBe(true);
        expect(r.session_id).not.toBe('');
        expect(r.agent).toBe(agent); // clientInfo.name: from _meta on 2026-07-28, from initialize before
        expect(r.transport).toBe(c.transport === 'stdio' ? 'stdio' : 'streamable_http');
        expect(r.protocol_version).toBe(c.protocol);
        expect(r.source).toBe('sdk');
      }

      // an operator kills the customer: the next call is refused before the tool runs
      await tg.admin?.kill({ product: 'demo-mcp', customer, scope: 'customer', actor: 'matrix' });
      const { refusal, okBefore } = await untilRefused(conn);
      const ranBeforeRefusal = ranCount(ranFile);
      expect(ranBeforeRefusal).toBe(3 + okBefore); // the refused call's tool never ran
      expect(refusal.code).toBe(REFUSAL_CODES.killed);
      expect(refusal.message).toContain(`customer "${customer}" is stopped by Tollgate (operator:matrix)`);
      expect(refusal.data?.tollgate).toMatchObject({
        refusal: 'killed',
        scope: 'customer',
        reason: 'operator:matrix',
      });

      // the operator lifts it: calls run again (the kill closed the killed connection — the stdio server
      // ended, the 2025-era HTTP session closed — so the client connects again)
      await tg.admin?.lift({ product: 'demo-mcp', customer, scope: 'customer', actor: 'matrix' });
      // (a new 2025-era session is itself refused until the lift has reached the server)
      await conn.close().catch(() => {});
      conn = undefined;
      conn = await waitFor('a call after the lift', async () => {
        let next: Conn | undefined;
        try {
          next = await connect(c, agent, env, server?.url);
          await next.call('echo', { text: 'after lift' });
          return next;
        } catch {
          await next?.close().catch(() => {});
          return undefined;
        }
      });
      expect(ranCount(ranFile)).toBeGreaterThan(ranBeforeRefusal);
    } finally {
      await conn?.close().catch(() => {});
      server?.proc.kill('SIGTERM');
    }
  }, 90_000);
});

describe('kills without sessions (stateless 2026-07-28 HTTP)', () => {
  it('an agent kill refuses that agent before the tool runs and names the scope and reason; other agents go on', async () => {
    const c: Cell = { line: '2.4', protocol: '2026-07-28', transport: 'http', mode: 'explicit' };
    const customer = 'mx-agent-kill';
    const ranFile = join(dir, 'agent-kill.ran');
    const env = envOf(c, customer, ranFile);
    const server = await startHttpServer(c, env);
    const killed = await connect(c, 'agent-doomed', env, server.url);
    const other = await connect(c, 'agent-fine', env, server.url);
    try {
      await killed.call('echo', { text: 'x' });
      await other.call('echo', { text: 'y' });
      await rows(customer, 2);
      await tg.admin?.kill({
        product: 'demo-mcp',
        customer,
        scope: 'agent',
        id: 'agent-doomed',
        actor: 'matrix',
      });
      const { refusal, okBefore } = await untilRefused(killed);
      expect(ranCount(ranFile)).toBe(2 + okBefore);
      expect(refusal.code).toBe(REFUSAL_CODES.killed);
      expect(refusal.message).toContain(
        `agent "agent-doomed" of customer "${customer}" is stopped by Tollgate`,
      );
      expect(refusal.data?.tollgate).toMatchObject({ scope: 'agent', reason: 'operator:matrix' });
      // the customer's other agent is not affected
      await other.call('echo', { text: 'still fine' });
      expect(ranCount(ranFile)).toBe(3 + okBefore);
    } finally {
      await killed.close().catch(() => {});
      await other.close().catch(() => {});
      server.proc.kill('SIGTERM');
    }
  }, 60_000);
});
