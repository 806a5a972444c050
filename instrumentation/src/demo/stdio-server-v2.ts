/**
 * The demo's stdio MCP server on `@modelcontextprotocol/server` 2.x: `serveStdio` builds one instrumented
 * `McpServer` for the connection, and serves the client whichever era it opens with (the demo's 2.x agents pin
 * the stateless 2026-07-28 revision). Configured from the environment the demo sets, like stdio-server.ts;
 * directive changes are reported on stderr (one `TOLLGATE_DIRECTIVE <json>` line each).
 */
import { instrumentMcpServer } from '../instrument-server.js';
import { DIRECTIVE_LINE, registerDemoTools } from './tools.js';

const { McpServer } = await import('@modelcontextprotocol/server');
const { serveStdio } = await import('@modelcontextprotocol/server/stdio');

serveStdio(() => {
  const server = new McpServer({ name: 'tollgate-demo-stdio-v2', version: '1.0.0' });
  instrumentMcpServer(server, {
    serviceName: 'tollgate-demo-stdio-v2',
    exportIntervalMs: 250,
    heartbeatIntervalMs: 500,
    stateFile: process.env.TOLLGATE_DEMO_STATE_FILE || false,
    onDirective: (d) => {
      process.stderr.write(`${DIRECTIVE_LINE}${JSON.stringify(d)}\n`);
    },
  });
  registerDemoTools(server as unknown as Parameters<typeof registerDemoTools>[0]);
  return server;
});
