import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { acceptedContent, createMcpHandler, inputRequired, McpServer } from '@modelcontextprotocol/server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as z from 'zod/v4';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { flushTollgate, instrumentMcpServer, shutdownTollgate, tollgateRuntimes } from '../src/index.js';

/**
 * The 2026-07-28 protocol's multi-round-trip calls: a tool answers `input_required` (here an elicitation: "are
 * you sure?"), the client asks its user and sends the call again with the answer, and the tool completes.
 * One call, two runs of the handler: it is billed once — by the round that completes it — and counted once
 * toward the customer's limits and lease. The real 2.x client drives it (it answers the elicitation and
 * retries by itself) against `createMcpHandler`, a server per request.
 */

let tg: TestTollgate;
const rounds: string[] = [];

/** Three calls a day: a round that asked for input must not count as one, or the third call is refused. */
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*":
            price: { perCall: "0.01" }
        limits:
          callsPerDay: 3
`;

beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
});
afterAll(async () => {
  await shutdownTollgate();
  await tg?.cleanup();
});

function clientFor(customer: string, leases: boolean) {
  const handler = createMcpHandler(() => {
    const server = new McpServer({ name: 'rounds', version: '1.0.0' });
    instrumentMcpServer(server, {
      endpoint: tg.otlpUrl,
      ingestKey: DEV_INGEST_KEY,
      exportIntervalMs: 50,
      stateFile: false,
      logger: false,
      leases,
      serviceName: `rounds-${leases}`,
      customer: () => customer,
    });
    const schema = z.object({ confirm: z.boolean() });
    server.registerTool(
      'delete_env',
      { inputSchema: z.object({ env: z.string() }) },
      async ({ env }, ctx) => {
        const answer = acceptedContent(ctx.mcpReq.inputResponses, 'confirm', schema);
        if (answer?.confirm !== true) {
          rounds.push(`${customer}:ask`);
          return inputRequired({
            inputRequests: {
              confirm: inputRequired.elicit({ message: `delete ${env}?`, requestedSchema: schema }),
            },
          });
        }
        rounds.push(`${customer}:done`);
        return { content: [{ type: 'text' as const, text: `deleted ${env}` }] };
      },
    );
    return server;
  });
  const client = new Client(
    { name: 'agent', version: '1' },
    { versionNegotiation: { mode: { pin: '2026-07-28' } }, capabilities: { elicitation: { form: {} } } },
  );
  client.setRequestHandler('elicitation/create', async () => ({
    action: 'accept',
    content: { confirm: true },
  }));
  return { client, handler };
}

async function billed(customer: string): Promise<{ tool: string; decision: string }[]> {
  await flushTollgate();
  await tg.lander?.idle();
  return query(tg, 'SELECT tool, decision FROM mcp_tool_calls WHERE customer = {c:String}', { c: customer });
}

describe('a multi-round-trip call (2026-07-28 input_required)', () => {
  for (const leases of [false, true]) {
    it(`is billed once, by the round that completes it${leases ? ', and takes one call from the lease' : ''}`, async () => {
      const customer = `rounds-${leases ? 'leased' : 'plain'}`;
      const { client, handler } = clientFor(customer, leases);
      await client.connect(
        new StreamableHTTPClientTransport(new URL('http://rounds.local/mcp'), {
          fetch: (url, init) => handler.fetch(new Request(url, init)),
        }),
      );
      for (const env of ['staging', 'prod', 'dev']) {
        const r = await client.callTool({ name: 'delete_env', arguments: { env } });
        expect(r.content).toEqual([{ type: 'text', text: `deleted ${env}` }]);
      }
      expect(rounds.filter((x) => x.startsWith(`${customer}:`))).toEqual(
        ['ask', 'done', 'ask', 'done', 'ask', 'done'].map((x) => `${customer}:${x}`),
      );
      const rows = await billed(customer);
      expect(rows.map((r) => r.decision)).toEqual(['billed', 'billed', 'billed']);
      const rt = tollgateRuntimes().find(
        (x) => x.stats.inputRequiredRounds > 0 && (x.leases !== undefined) === leases,
      );
      expect(rt?.stats.inputRequiredRounds).toBe(3);
      if (leases) {
        // the day's three calls are used: a fourth is refused before its first round runs
        expect(rt?.leases?.stats.givenBack).toBe(3);
        await expect(client.callTool({ name: 'delete_env', arguments: { env: 'qa' } })).rejects.toThrow(
          /calls_per_day/,
        );
        expect(rounds.filter((x) => x.startsWith(`${customer}:`))).toHaveLength(6);
      }
      await client.close();
      await handler.close();
    });
  }
});
