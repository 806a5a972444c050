import { createMcpHandler, McpServer } from '@modelcontextprotocol/server';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { REFUSAL_CODES } from '@tollgate/contracts';
import { afterAll, describe, expect, it } from 'vitest';
import * as z from 'zod/v4';
import { instrumentMcpServer, shutdownTollgate, tollgateRuntimes } from '../src/index.js';
import { callStateless } from './support/mcp.js';

/**
 * A killed customer on the stateless 2026-07-28 path (the 2.x SDK's `createMcpHandler`, a server per request):
 * every call is refused before the tool runs, and there is no session to close (docs/enforcement.md, "Kills,
 * per protocol version") — so a client that keeps calling gets refusals, not a "closing session" log line per
 * call (a killed client retrying in a loop would flood the server's log).
 */

const spans = new InMemorySpanExporter();
const warnings: string[] = [];
let ran = 0;

function build(): McpServer {
  const server = new McpServer({ name: 'stateless-kill', version: '1.0.0' });
  instrumentMcpServer(server, {
    billingExporter: spans,
    exportIntervalMs: 10,
    stateFile: false,
    logger: { warn: (m: string) => warnings.push(m) },
    customer: (req) => (req.headers?.['x-test-customer'] as string | undefined) ?? 'nobody',
  });
  server.registerTool('echo', { inputSchema: z.object({ text: z.string() }) }, async ({ text }) => {
    ran++;
    return { content: [{ type: 'text', text }] };
  });
  return server;
}

const handler = createMcpHandler(build);
async function call(customer: string) {
  return (await callStateless(handler, 'echo', { headers: { 'x-test-customer': customer } })).body;
}

afterAll(async () => {
  await handler.close();
  await shutdownTollgate();
});

describe('a killed customer on stateless HTTP', () => {
  it('each call is refused; no session is "closed", nothing is logged per call; other customers go on', async () => {
    expect((await call('alive-co')).result).toBeDefined(); // the runtime exists
    const rt = tollgateRuntimes()[0];
    if (!rt) throw new Error('no runtime');
    // the kill as an export answer carries it (the exporter hands it to the store)
    rt.store.apply(
      [
        {
          action: 'kill',
          scope: 'customer',
          id: 'dead-co',
          customer: 'dead-co',
          reason: 'operator:ops',
          untilUnixMs: 0,
        },
      ],
      Date.now(),
      () => true,
    );
    const before = ran;
    for (let i = 0; i < 10; i++) expect((await call('dead-co')).error?.code).toBe(REFUSAL_CODES.killed);
    await new Promise((r) => setTimeout(r, 200)); // past the close-after-refusal delay
    expect(ran).toBe(before);
    expect(rt.stats.refusedKilled).toBe(10);
    expect(rt.stats.sessionsClosed).toBe(0);
    expect(warnings.filter((w) => w.includes('closing'))).toEqual([]);
    expect((await call('alive-co')).result).toBeDefined();
    expect(ran).toBe(before + 1);
  });
});
