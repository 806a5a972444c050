import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { instrumentMcpServer, reportUsage, shutdownTollgate } from '../src/index.js';
import { waitFor } from './support/mcp.js';

/**
 * The SDK's usage API end to end: a tool reports cached and reasoning tokens and a custom quantity with
 * `reportUsage({ quantities })`, the SDK sends them as `tollgate.usage.<line>`, a real Tollgate prices them
 * under a plan that declares those usage lines (docs/rate-plans.md#usage-lines).
 */

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: llm
    plans:
      llm:
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
          reasoning_tokens: { subsetOf: output_tokens }
          pages: {}
        tools:
          "*":
            price:
              perCall: "0.001"
              perInputToken: "0.000003"
              perOutputToken: "0.000015"
              usage: { cached_input_tokens: "0.0000003", reasoning_tokens: "0.00002", pages: "0.01" }
`;

let tg: TestTollgate;
let client: Client;

beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
  const server = new McpServer({ name: 'usage-lines', version: '1.0.0' });
  instrumentMcpServer(server, {
    endpoint: tg.otlpUrl,
    ingestKey: DEV_INGEST_KEY,
    exportIntervalMs: 50,
    stateFile: false,
    logger: false,
    customer: () => 'sdk-usage',
  });
  server.registerTool('summarize', { inputSchema: {} }, async (_args, extra) => {
    reportUsage(
      {
        inputTokens: 1000,
        outputTokens: 100,
        quantities: { cached_input_tokens: 600, reasoning_tokens: 30 },
      },
      extra,
    );
    reportUsage({ quantities: { cached_input_tokens: 200, pages: 2 } }, extra); // reports add up
    return { content: [{ type: 'text', text: 'ok' }] };
  });
  const [a, b] = InMemoryTransport.createLinkedPair();
  await server.connect(a);
  client = new Client({ name: 'agent', version: '1.0.0' });
  await client.connect(b);
});

afterAll(async () => {
  await client?.close();
  await shutdownTollgate();
  await tg?.cleanup();
});

describe('reportUsage({ quantities }) → priced usage lines', () => {
  it('lands each line with its amount; the parents are priced on parent − subsets', async () => {
    await client.callTool({ name: 'summarize', arguments: {} });
    const [row] = await waitFor('the landed call', async () => {
      await tg.lander?.idle();
      const r = await query(
        tg,
        `SELECT source, price_nano, input_tokens_priced, output_tokens_priced, usage_lines, usage_quantity_micro,
                usage_price_nano FROM mcp_tool_calls WHERE customer = 'sdk-usage'`,
      );
      return r.length ? r : undefined;
    });
    expect(row).toEqual({
      source: 'sdk',
      // 1_000_000 + 200 × 3_000 + 800 × 300 + 70 × 15_000 + 30 × 20_000 + 2 × 10_000_000
      price_nano: String(1_000_000 + 600_000 + 240_000 + 1_050_000 + 600_000 + 20_000_000),
      input_tokens_priced: '200',
      output_tokens_priced: '70',
      usage_lines: ['cached_input_tokens', 'pages', 'reasoning_tokens'],
      usage_quantity_micro: ['800000000', '2000000', '30000000'],
      usage_price_nano: ['240000', '20000000', '600000'],
    });
  });
});
