/**
 * The demo's stdio MCP server: a child process per session, as an MCP client starts it. Instrumented with
 * `instrumentMcpServer`, configured from the environment the demo sets (TOLLGATE_OTLP_ENDPOINT,
 * TOLLGATE_INGEST_KEY, TOLLGATE_CUSTOMER_ID, TOLLGATE_AGENT_ID). Directive changes are reported on stderr
 * (one `TOLLGATE_DIRECTIVE <json>` line each) so the demo can show them.
 */
import { instrumentMcpServer } from '../instrument-server.js';
import { DIRECTIVE_LINE, registerDemoTools } from './tools.js';

const { McpServer } = await import('@modelcontextprotocol/sdk/server/mcp.js');
const { StdioServerTransport } = await import('@modelcontextprotocol/sdk/server/stdio.js');

const server = new McpServer({ name: 'tollgate-demo-stdio', version: '1.0.0' });
instrumentMcpServer(server, {
  serviceName: 'tollgate-demo-stdio',
  exportIntervalMs: 250,
  heartbeatIntervalMs: 500,
  stateFile: process.env.TOLLGATE_DEMO_STATE_FILE || false,
  onDirective: (d) => {
    process.stderr.write(`${DIRECTIVE_LINE}${JSON.stringify(d)}\n`);
  },
});
registerDemoTools(server);
await server.connect(new StdioServerTransport());
