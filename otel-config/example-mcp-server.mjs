// The example upstream of the docker-compose stack: a real MCP server built with the MCP TypeScript SDK
// (McpServer + StreamableHTTPServerTransport), stateful (one session per client, Mcp-Session-Id), served
// at POST/GET/DELETE /mcp, plus GET /healthz for the container health check. Kong meters it; the server
// itself knows nothing about Tollgate.
//
// Tools (names match tools priced in collector-processor/defaults/plans.yaml):
//   get_forecast {city}   a fake forecast
//   search_docs  {query}  a fake search; query "fail" answers with isError: true (a tool error)
//
// Environment: MCP_HOST (default 127.0.0.1), MCP_PORT (default 3000).
// Run: node otel-config/example-mcp-server.mjs   (from the repository root, after npm ci)

import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import * as z from 'zod';

const HOST = process.env.MCP_HOST ?? '127.0.0.1';
const PORT = Number(process.env.MCP_PORT ?? 3000);
const MCP_PATH = '/mcp';

function buildServer() {
  const server = new McpServer({ name: 'tollgate-example-mcp', version: '1.0.0' });
  server.registerTool(
    'get_forecast',
    { description: 'Weather forecast for a city', inputSchema: { city: z.string() } },
    async ({ city }) => ({ content: [{ type: 'text', text: `${city}: 21 °C, light wind` }] }),
  );
  server.registerTool(
    'search_docs',
    { description: 'Searches the documentation; "fail" is a tool error', inputSchema: { query: z.string() } },
    async ({ query }) =>
      query === 'fail'
        ? { isError: true, content: [{ type: 'text', text: 'search backend unavailable' }] }
        : { content: [{ type: 'text', text: `3 results for "${query}"` }] },
  );
  return server;
}

/** Open sessions by Mcp-Session-Id. */
const sessions = new Map();

async function handleMcp(req, res) {
  const sid = req.headers['mcp-session-id'];
  let transport = typeof sid === 'string' ? sessions.get(sid) : undefined;
  if (!transport) {
    if (sid !== undefined) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } }),
      );
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => sessions.set(id, transport),
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    await buildServer().connect(transport);
  }
  await transport.handleRequest(req, res);
}

const http = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  if (path === '/healthz' && req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', sessions: sessions.size }));
    return;
  }
  if (path !== MCP_PATH) {
    res.writeHead(404).end();
    return;
  }
  handleMcp(req, res).catch((err) => {
    process.stderr.write(`example-mcp-server: ${err?.stack ?? err}\n`);
    if (!res.headersSent) res.writeHead(500).end();
  });
});

http.listen(PORT, HOST, () => {
  const addr = http.address();
  process.stdout.write(`example MCP server on http://${HOST}:${addr.port}${MCP_PATH}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const t of sessions.values()) t.close().catch(() => {});
    http.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
