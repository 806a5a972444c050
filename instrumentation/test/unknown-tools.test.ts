import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import * as mcpModule1 from '@modelcontextprotocol/sdk/server/mcp.js';
import { McpServer as McpServer1 } from '@modelcontextprotocol/sdk/server/mcp.js';
import * as server2 from '@modelcontextprotocol/server';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import * as z4 from 'zod/v4';
import { flushTollgate, instrumentMcpServer, McpInstrumentation, shutdownTollgate } from '../src/index.js';
import { callStateless } from './support/mcp.js';

/**
 * A `tools/call` of a tool the server does not have (an agent's typo, a model's invention) or has disabled
 * is answered by the MCP SDK with an error, and nothing runs. It is no tool call: no billing span, so it is
 * neither billed, nor counted toward a call limit, nor taken from a lease. The SDK's answer is unchanged.
 * Calls of a tool that exists are billed as before, failed ones included.
 */

afterAll(async () => {
  await shutdownTollgate();
});

const OPTIONS = {
  exportIntervalMs: 10,
  stateFile: false as const,
  logger: false as const,
  customer: () => 'typo-co',
};

async function toolNames(spans: InMemorySpanExporter): Promise<unknown[]> {
  await flushTollgate();
  return spans.getFinishedSpans().map((s) => s.attributes['gen_ai.tool.name']);
}

describe('1.x: a tool the McpServer lacks or has disabled', () => {
  async function setup(instrument: (server: McpServer1, spans: InMemorySpanExporter) => void) {
    const spans = new InMemorySpanExporter();
    const server = new McpServer1({ name: 'typos', version: '1.0.0' });
    instrument(server, spans);
    server.registerTool('echo', { inputSchema: { text: z.string() } }, async ({ text }) => ({
      content: [{ type: 'text', text }],
    }));
    const off = server.registerTool('retired', { inputSchema: { text: z.string() } }, async ({ text }) => ({
      content: [{ type: 'text', text }],
    }));
    off.disable();
    const [a, b] = InMemoryTransport.createLinkedPair();
    await server.connect(a);
    const client = new Client({ name: 'agent', version: '1.0.0' });
    await client.connect(b);
    return { client, spans, server };
  }

  for (const [how, instrument] of [
    [
      'instrumentMcpServer',
      (s: McpServer1, spans: InMemorySpanExporter) =>
        instrumentMcpServer(s, { ...OPTIONS, billingExporter: spans }),
    ],
  ] as const) {
    it(`${how}: no span for them, the SDK's answer unchanged; the tool that exists is billed`, async () => {
      const { client, spans, server } = await setup(instrument);
      const missing = await client.callTool({ name: 'ehco', arguments: { text: 'x' } });
      expect(missing).toMatchObject({
        isError: true,
        content: [{ type: 'text', text: expect.stringContaining('Tool ehco not found') }],
      });
      const disabled = await client.callTool({ name: 'retired', arguments: { text: 'x' } });
      expect(disabled).toMatchObject({
        isError: true,
        content: [{ text: expect.stringContaining('disabled') }],
      });
      for (const name of ['__proto__', 'constructor', 'hasOwnProperty']) {
        expect(await client.callTool({ name, arguments: {} })).toMatchObject({ isError: true });
      }
      expect(await toolNames(spans)).toEqual([]);
      await client.callTool({ name: 'echo', arguments: { text: 'x' } });
      // arguments its schema refuses: the tool exists, the call is billed as a failed call
      await client.callTool({ name: 'echo', arguments: { text: 5 } });
      expect(await toolNames(spans)).toEqual(['echo', 'echo']);
      await server.close();
    });
  }

  it('zero code (the module hook of mcp.js, here through manuallyInstrument): no span for them', async () => {
    const spans = new InMemorySpanExporter();
    const inst = new McpInstrumentation({ ...OPTIONS, billingExporter: spans });
    inst.manuallyInstrument(await import('@modelcontextprotocol/sdk/server/index.js'));
    inst.manuallyInstrument(mcpModule1);
    try {
      const { client, server } = await setup(() => {});
      await client.callTool({ name: 'ehco', arguments: { text: 'x' } });
      await client.callTool({ name: 'retired', arguments: { text: 'x' } });
      await client.callTool({ name: 'echo', arguments: { text: 'x' } });
      expect(await toolNames(spans)).toEqual(['echo']);
      await server.close();
    } finally {
      inst.disable();
    }
  });
});

describe('2.x, stateless 2026-07-28 (createMcpHandler, a server per request)', () => {
  it('a tool the server lacks is answered by the SDK unbilled; the tool that exists is billed', async () => {
    const spans = new InMemorySpanExporter();
    let ran = 0;
    const handler = server2.createMcpHandler(() => {
      const s = new server2.McpServer({ name: 'typos', version: '1.0.0' });
      instrumentMcpServer(s, { ...OPTIONS, billingExporter: spans });
      s.registerTool('echo', { inputSchema: z4.object({ text: z4.string() }) }, async ({ text }) => {
        ran++;
        return { content: [{ type: 'text', text }] };
      });
      return s;
    });
    const call = async (name: string) => (await callStateless(handler, name)).body;
    const missing = await call('ehco');
    expect(missing.error).toMatchObject({
      code: -32602,
      message: expect.stringContaining('Tool ehco not found'),
    });
    expect(await toolNames(spans)).toEqual([]);
    expect((await call('echo')).result).toMatchObject({ content: [{ type: 'text', text: 'ok' }] });
    expect(ran).toBe(1);
    expect(await toolNames(spans)).toEqual(['echo']);
  });
});
