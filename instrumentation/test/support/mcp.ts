import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { type InstrumentMcpServerOptions, instrumentMcpServer, reportUsage } from '../../src/index.js';
import { registerTools } from '../fixtures/tools.mjs';

export const FIXTURES = new URL('../fixtures/', import.meta.url).pathname;
export const PACKAGE_DIR = new URL('../../', import.meta.url).pathname;

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface StdioSession {
  client: Client;
  transport: StdioClientTransport;
  stderr: string[];
  pid: number;
  exited: Promise<number | null>;
}

/** Spawns a fixture MCP server on stdio (a real child process) and connects a real SDK client to it. */
export async function connectStdio(
  env: Record<string, string>,
  args: string[] = [`${FIXTURES}stdio-server.mjs`],
): Promise<StdioSession> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args,
    cwd: PACKAGE_DIR,
    env: { ...(process.env as Record<string, string>), ...env },
    stderr: 'pipe',
  });
  const stderr: string[] = [];
  transport.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()));
  const client = new Client({ name: 'test-agent', version: '1.0.0' });
  let resolveExit: (code: number | null) => void = () => {};
  const exited = new Promise<number | null>((r) => {
    resolveExit = r;
  });
  await client.connect(transport).catch((err: unknown) => {
    stderr.push(String(err));
    throw err;
  });
  const pid = transport.pid as number;
  const child = (transport as unknown as { _process?: import('node:child_process').ChildProcess })._process;
  child?.once('exit', (code) => resolveExit(code));
  return { client, transport, stderr, pid, exited };
}

export interface HttpMcp {
  url: string;
  /** Live server sessions by transport session id (Streamable HTTP and SSE). */
  sessions: Map<string, { transport: StreamableHTTPServerTransport | SSEServerTransport; server: McpServer }>;
  close(): Promise<void>;
}

async function bodyOf(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

/**
 * A real MCP server over HTTP: Streamable HTTP (stateful, one McpServer per session) at `/mcp` and the legacy
 * HTTP+SSE transport at `/sse` + `/messages`. A stand-in auth middleware turns `Authorization: Bearer
 * <customer>:<agent>` into the SDK's `req.auth` (customer in `extra.customerId`, agent as `clientId`).
 */
export async function startHttpMcp(options: InstrumentMcpServerOptions): Promise<HttpMcp> {
  const sessions: HttpMcp['sessions'] = new Map();
  const newServer = () => {
    const server = new McpServer({ name: 'fixture-http', version: '1.0.0' });
    instrumentMcpServer(server, options);
    registerTools(server, reportUsage);
    return server;
  };
  const httpServer = http.createServer(async (req, res) => {
    try {
      const auth = /^Bearer ([^:]+):(.+)$/.exec(req.headers.authorization ?? '');
      if (auth) {
        (req as http.IncomingMessage & { auth?: unknown }).auth = {
          token: `${auth[1]}:${auth[2]}`,
          clientId: auth[2],
          scopes: [],
          extra: { customerId: auth[1] },
        };
      }
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/mcp') {
        const sid = req.headers['mcp-session-id'];
        const body = req.method === 'POST' ? await bodyOf(req) : undefined;
        const existing = typeof sid === 'string' ? sessions.get(sid) : undefined;
        if (existing && existing.transport instanceof StreamableHTTPServerTransport) {
          await existing.transport.handleRequest(req, res, body);
          return;
        }
        if (!sid && req.method === 'POST' && isInitializeRequest(body)) {
          const server = newServer();
          const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            onsessioninitialized: (id) => {
              sessions.set(id, { transport, server });
            },
          });
          transport.onclose = () => {
            if (transport.sessionId) sessions.delete(transport.sessionId);
          };
          await server.connect(transport);
          await transport.handleRequest(req, res, body);
          return;
        }
        res.writeHead(404, { 'content-type': 'application/json' }).end(
          JSON.stringify({
            jsonrpc: '2.0',
            error: { code: -32001, message: 'Session not found' },
            id: null,
          }),
        );
        return;
      }
      if (url.pathname === '/sse' && req.method === 'GET') {
        const transport = new SSEServerTransport('/messages', res);
        const server = newServer();
        sessions.set(transport.sessionId, { transport, server });
        res.on('close', () => sessions.delete(transport.sessionId));
        await server.connect(transport);
        return;
      }
      if (url.pathname === '/messages' && req.method === 'POST') {
        const s = sessions.get(url.searchParams.get('sessionId') ?? '');
        if (!s || !(s.transport instanceof SSEServerTransport)) {
          res.writeHead(404).end('unknown session');
          return;
        }
        await s.transport.handlePostMessage(req, res, await bodyOf(req));
        return;
      }
      res.writeHead(404).end();
    } catch (err) {
      if (!res.headersSent) res.writeHead(500).end(String(err));
    }
  });
  await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', r));
  const { port } = httpServer.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    sessions,
    async close() {
      for (const s of sessions.values()) await s.server.close().catch(() => {});
      httpServer.closeAllConnections();
      await new Promise((r) => httpServer.close(r));
    },
  };
}

export async function connectHttp(
  kind: 'streamable_http' | 'sse',
  baseUrl: string,
  customer: string,
  agent: string,
): Promise<Client> {
  const requestInit = { headers: { authorization: `Bearer ${customer}:${agent}` } };
  const transport =
    kind === 'sse'
      ? new SSEClientTransport(new URL(`${baseUrl}/sse`), { requestInit })
      : new StreamableHTTPClientTransport(new URL(`${baseUrl}/mcp`), { requestInit });
  const client = new Client({ name: 'test-agent', version: '1.0.0' });
  await client.connect(transport);
  return client;
}

/** The 2026-07-28 `_meta` envelope of a request from `clientName`. */
export function envelope2026(clientName = 'agent'): Record<string, unknown> {
  return {
    'io.modelcontextprotocol/protocolVersion': '2026-07-28',
    'io.modelcontextprotocol/clientCapabilities': {},
    'io.modelcontextprotocol/clientInfo': { name: clientName, version: '1.0.0' },
  };
}

let statelessId = 1;

/**
 * One stateless (2026-07-28) `tools/call` through a 2.x `createMcpHandler`'s `fetch`, as the SDK's client
 * sends it (the `Mcp-Method` / `Mcp-Name` headers, the envelope in `_meta`): its status and JSON-RPC answer.
 */
export async function callStateless(
  handler: { fetch(req: Request): Promise<Response> },
  tool: string,
  o: {
    arguments?: unknown;
    meta?: Record<string, unknown>;
    headers?: Record<string, string>;
    /** The JSON-RPC id (a new number per call by default). */
    id?: string | number;
  } = {},
): Promise<{
  status: number;
  body: {
    result?: { content: unknown[] } & Record<string, unknown>;
    error?: { code: number; message: string };
  };
}> {
  const res = await handler.fetch(
    new Request('http://127.0.0.1/mcp', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2026-07-28',
        'mcp-method': 'tools/call',
        'mcp-name': tool,
        ...o.headers,
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: o.id ?? statelessId++,
        method: 'tools/call',
        params: { name: tool, arguments: o.arguments ?? { text: 'ok' }, _meta: o.meta ?? envelope2026() },
      }),
    }),
  );
  return { status: res.status, body: (await res.json()) as never };
}
