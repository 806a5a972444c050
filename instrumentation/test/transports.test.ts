import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { shutdownTollgate } from '../src/index.js';
import { connectHttp, connectStdio, type HttpMcp, startHttpMcp, waitFor } from './support/mcp.js';

/**
 * A real @modelcontextprotocol/sdk client talks to a real instrumented server over each transport; the
 * spans go to a real Tollgate (chDB + redis-server) and are billed: we read the rows back from ClickHouse.
 */

let tg: TestTollgate;
let web: HttpMcp;

beforeAll(async () => {
  tg = await startTestTollgate();
  web = await startHttpMcp({
    endpoint: tg.otlpUrl,
    ingestKey: DEV_INGEST_KEY,
    serviceName: 'fixture-http',
    exportIntervalMs: 100,
    heartbeatIntervalMs: 500,
    stateFile: false,
    logger: false,
  });
});

afterAll(async () => {
  await web?.close();
  await shutdownTollgate();
  await tg?.cleanup();
});

interface Row {
  trace_id: string;
  span_id: string;
  customer: string;
  agent: string;
  session_id: string;
  tool: string;
  transport: string;
  source: string;
  status: string;
  error_type: string;
  protocol_version: string;
  instance_id: string;
  input_tokens: string;
  output_tokens: string;
  price_nano: string;
  decision: string;
}

async function rowsOf(customer: string, n: number): Promise<Row[]> {
  return waitFor(`${n} billed calls of ${customer}`, async () => {
    await tg.lander?.idle();
    const rows = await query<Row>(
      tg,
      `SELECT trace_id, span_id, customer, agent, session_id, tool, transport, source, status, error_type,
              protocol_version, instance_id, input_tokens, output_tokens, price_nano, decision
       FROM mcp_tool_calls WHERE customer = {c:String} ORDER BY started_at`,
      { c: customer },
    );
    return rows.length >= n ? rows : undefined;
  });
}

/** The calls every transport makes: two free calls, tokens reported by the tool, a tool error. */
async function workload(call: (name: string, args: Record<string, unknown>) => Promise<unknown>) {
  await call('echo', { text: 'one' });
  await call('echo', { text: 'two' });
  await call('search_docs', { query: 'billing' });
  const failed = (await call('fail', {})) as { isError?: boolean };
  expect(failed.isError).toBe(true);
}

function expectBilled(rows: Row[], transport: string, customer: string, agent: string) {
  expect(rows.map((r) => r.tool)).toEqual(['echo', 'echo', 'search_docs', 'fail']);
  for (const r of rows) {
    expect(r).toMatchObject({
      customer,
      agent,
      transport,
      source: 'sdk',
      protocol_version: LATEST_PROTOCOL_VERSION,
    });
    expect(r.trace_id).toMatch(/^[0-9a-f]{32}$/);
    expect(r.span_id).toMatch(/^[0-9a-f]{16}$/);
    expect(r.instance_id).not.toBe('');
  }
  // one session per connection, the same for all its calls
  expect(new Set(rows.map((r) => r.session_id)).size).toBe(1);
  expect(rows[0]?.session_id).not.toBe('');
  // the first two calls of the month are free (TEST_PLANS), then search_docs is priced with its tokens:
  // 0.004 per call + 120 × 0.000001 + 480 × 0.000003 = 0.00556; the tool error is not billed (plan default)
  expect(rows.map((r) => r.decision)).toEqual(['free', 'free', 'billed', 'failed_not_billed']);
  expect(rows[2]).toMatchObject({ input_tokens: '120', output_tokens: '480', price_nano: '5560000' });
  expect(rows[3]).toMatchObject({ status: 'error', error_type: 'tool_error' });
}

describe('transports', () => {
  it('stdio: a server in a child process, customer and agent from its environment', async () => {
    const s = await connectStdio({
      TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: 'stdio-co',
      TOLLGATE_AGENT_ID: 'planner',
    });
    await workload((name, args) => s.client.callTool({ name, arguments: args }));
    // the client closes stdin: the server's last spans are flushed before the process ends
    await s.client.close();
    expect(await s.exited).toBe(0);
    expectBilled(await rowsOf('stdio-co', 4), 'stdio', 'stdio-co', 'planner');
  });

  it('Streamable HTTP: customer from the auth info, agent from the OAuth client id', async () => {
    const client = await connectHttp('streamable_http', web.url, 'http-co', 'researcher');
    await workload((name, args) => client.callTool({ name, arguments: args }));
    const rows = await rowsOf('http-co', 4);
    expectBilled(rows, 'streamable_http', 'http-co', 'researcher');
    // the session id is the transport's own (Mcp-Session-Id)
    expect(web.sessions.has(rows[0]?.session_id as string)).toBe(true);
    await client.close();
  });

  it('legacy HTTP+SSE: same attributes, session id from the SSE endpoint', async () => {
    const client = await connectHttp('sse', web.url, 'sse-co', 'support-bot');
    await workload((name, args) => client.callTool({ name, arguments: args }));
    const rows = await rowsOf('sse-co', 4);
    expectBilled(rows, 'sse', 'sse-co', 'support-bot');
    expect(web.sessions.has(rows[0]?.session_id as string)).toBe(true);
    await client.close();
  });
});
