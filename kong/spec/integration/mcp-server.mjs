// The upstream of the integration run: a real MCP server built with @modelcontextprotocol/sdk
// (McpServer + StreamableHTTPServerTransport), stateful (one session per client), served twice:
//   /json/mcp  answers POSTs with application/json (enableJsonResponse)
//   /sse/mcp   answers POSTs with a text/event-stream
//   /legacy/mcp (GET stream) + /legacy/messages?sessionId= (POST): the deprecated HTTP+SSE
//              transport (SSEServerTransport); the POST endpoint it announces is prefixed with
//              the X-Public-Prefix header the proxy sets
// Tools:
//   echo {text}                 returns the text; text "fail" returns isError: true
//   slow {steps, delayMs}       sends `steps` log notifications, delayMs apart, then answers
//   big  {size, fail}           returns `size` bytes of text, isError when fail
//   metered {usage, pad, steps} returns `usage` in the result's _meta["tollgate/usage"] (the key the Kong
//                               plugin reads), after `pad` bytes of text and `steps` log notifications
//                               (1.x and 2.x servers)
// A /modern/mcp request with an X-Test-Usage-Header header gets its value back as a Tollgate-Usage
// response header, as an upstream that reports usage in a header would set it.
// GET /_stats returns how many tools/call each tool has served (to prove a refused call never
// reached the upstream). Usage: node mcp-server.mjs <port>

import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import * as node2 from '@modelcontextprotocol/node';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import * as server2 from '@modelcontextprotocol/server';
import * as z from 'zod';
import * as z4 from 'zod/v4';

const port = Number(process.argv[2]);
const stats = { echo: 0, slow: 0, big: 0, metered: 0, modern_echo: 0, modern_delete: 0, modern_metered: 0 };
const USAGE_META_KEY = 'tollgate/usage';

// /modern/mcp: an MCP SDK 2.x server on the stateless 2026-07-28 protocol (createMcpHandler with the
// SDK's default options: legacy traffic served by its stateless fallback, as the SDK's examples run
// it), which validates Mcp-Method / Mcp-Name against the body of a 2026-07-28 request as the
// specification requires
const modern = node2.toNodeHandler(
  server2.createMcpHandler(
    () => {
      const s = new server2.McpServer({ name: 'tollgate-kong-upstream-2x', version: '2.0.0' });
      s.registerTool('echo', { inputSchema: z4.object({ text: z4.string() }) }, async ({ text }) => {
        stats.modern_echo++;
        // "sleep:<ms>": a tool that takes that long (a client can hang up while it runs)
        const sleep = /^sleep:(\d+)$/.exec(text);
        if (sleep) await new Promise((r) => setTimeout(r, Number(sleep[1])));
        if (text === 'fail') return { isError: true, content: [{ type: 'text', text: 'failed on purpose' }] };
        return { content: [{ type: 'text', text }] };
      });
      s.registerTool(
        'metered',
        {
          inputSchema: z4.object({
            usage: z4.record(z4.string(), z4.unknown()),
            pad: z4.number().optional(),
          }),
        },
        async ({ usage, pad }) => {
          stats.modern_metered++;
          return {
            content: [{ type: 'text', text: 'x'.repeat(pad ?? 0) || 'metered' }],
            _meta: { [USAGE_META_KEY]: usage },
          };
        },
      );
      s.registerTool('delete_everything', { inputSchema: z4.object({}) }, async () => {
        stats.modern_delete++;
        return { content: [{ type: 'text', text: 'deleted' }] };
      });
      return s;
    },
    { responseMode: 'json' },
  ),
);

function buildServer() {
  const server = new McpServer(
    { name: 'tollgate-kong-upstream', version: '1.0.0' },
    { capabilities: { logging: {} } },
  );
  server.registerTool(
    'echo',
    { description: 'Echoes the text; "fail" is a tool error', inputSchema: { text: z.string() } },
    async ({ text }) => {
      stats.echo++;
      if (text === 'fail') return { isError: true, content: [{ type: 'text', text: 'failed on purpose' }] };
      return { content: [{ type: 'text', text }] };
    },
  );
  server.registerTool(
    'slow',
    {
      description: 'Streams log notifications before answering',
      inputSchema: { steps: z.number(), delayMs: z.number() },
    },
    async ({ steps, delayMs }, extra) => {
      stats.slow++;
      for (let i = 1; i <= steps; i++) {
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', data: `step ${i}` },
        });
        await new Promise((r) => setTimeout(r, delayMs));
      }
      return { content: [{ type: 'text', text: `done after ${steps} steps` }] };
    },
  );
  server.registerTool(
    'big',
    { description: 'A large result', inputSchema: { size: z.number(), fail: z.boolean().optional() } },
    async ({ size, fail }) => {
      stats.big++;
      return { isError: fail === true, content: [{ type: 'text', text: 'x'.repeat(size) }] };
    },
  );
  server.registerTool(
    'metered',
    {
      description: 'Reports usage in the result _meta',
      inputSchema: {
        usage: z.record(z.string(), z.unknown()),
        pad: z.number().optional(),
        steps: z.number().optional(),
      },
    },
    async ({ usage, pad, steps }, extra) => {
      stats.metered++;
      for (let i = 1; i <= (steps ?? 0); i++) {
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', data: `step ${i}` },
        });
      }
      return {
        content: [{ type: 'text', text: 'x'.repeat(pad ?? 0) || 'metered' }],
        _meta: { [USAGE_META_KEY]: usage },
      };
    },
  );
  return server;
}

const sessions = { json: new Map(), sse: new Map(), legacy: new Map() };

async function handleLegacy(url, req, res, body) {
  if (req.method === 'GET' && url.pathname === '/legacy/mcp') {
    const prefix = req.headers['x-public-prefix'] ?? '';
    const transport = new SSEServerTransport(`${prefix}/legacy/messages`, res);
    sessions.legacy.set(transport.sessionId, transport);
    transport.onclose = () => sessions.legacy.delete(transport.sessionId);
    await buildServer().connect(transport);
    return;
  }
  const transport = sessions.legacy.get(url.searchParams.get('sessionId') ?? '');
  if (req.method !== 'POST' || !transport) {
    res.writeHead(404).end();
    return;
  }
  await transport.handlePostMessage(req, res, body);
}

async function handleMcp(mode, req, res, body) {
  const map = sessions[mode];
  const sid = req.headers['mcp-session-id'];
  let transport = sid ? map.get(sid) : undefined;
  if (!transport) {
    if (sid) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } }),
      );
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: mode === 'json',
      onsessioninitialized: (id) => map.set(id, transport),
    });
    transport.onclose = () => {
      if (transport.sessionId) map.delete(transport.sessionId);
    };
    await buildServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

const http = createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    try {
      const url = new URL(req.url, 'http://upstream');
      if (url.pathname === '/_stats') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(stats));
        return;
      }
      const mode = url.pathname === '/json/mcp' ? 'json' : url.pathname === '/sse/mcp' ? 'sse' : undefined;
      const legacy = url.pathname === '/legacy/mcp' || url.pathname === '/legacy/messages';
      if (url.pathname === '/modern/mcp') {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          parsed = undefined; // the SDK's entry answers the unparsable body itself
        }
        const usageHeader = req.headers['x-test-usage-header'];
        if (usageHeader) res.setHeader('Tollgate-Usage', usageHeader);
        await modern(req, res, parsed);
        return;
      }
      if (!mode && !legacy) {
        res.writeHead(404).end();
        return;
      }
      let body;
      if (req.method === 'POST') {
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          body = JSON.parse(text);
        } catch {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } }),
          );
          return;
        }
      }
      if (legacy) await handleLegacy(url, req, res, body);
      else await handleMcp(mode, req, res, body);
    } catch (err) {
      console.error(err);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  });
});

http.listen(port, '127.0.0.1', () => {
  console.log(`listening ${port}`);
});
