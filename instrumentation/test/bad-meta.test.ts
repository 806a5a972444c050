import { createMcpHandler, InMemoryTransport, McpServer } from '@modelcontextprotocol/server';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { afterAll, describe, expect, it } from 'vitest';
import * as z from 'zod/v4';
import { instrumentMcpServer, shutdownTollgate, tollgateRuntimes } from '../src/index.js';
import { callStateless, envelope2026 } from './support/mcp.js';

/**
 * Hostile or broken `_meta` from clients, on a real 2.x server: the stateless 2026-07-28 path through the
 * SDK's own `createMcpHandler` (driven with web `Request`s, as any runtime would), and a 2025-era connection.
 * The tool call is never broken, the session falls to the next rule, the attribute is bounded or dropped,
 * and the runtime counts it.
 */

const spans = new InMemorySpanExporter();
const options = {
  billingExporter: spans,
  exportIntervalMs: 10,
  stateFile: false as const,
  logger: false as const,
  customer: () => 'meta-co',
};

function build(): McpServer {
  const server = new McpServer({ name: 'bad-meta', version: '1.0.0' });
  instrumentMcpServer(server, options);
  server.registerTool('echo', { inputSchema: z.object({ text: z.string() }) }, async ({ text }) => ({
    content: [{ type: 'text', text }],
  }));
  return server;
}

const handler = createMcpHandler(build);

const ENVELOPE = envelope2026('meta-agent');

function call2026(meta: Record<string, unknown>, authorization?: string) {
  return callStateless(handler, 'echo', { meta, headers: authorization ? { authorization } : {} });
}

async function lastSpan() {
  await Promise.all(tollgateRuntimes().map((rt) => rt.forceFlush()));
  const all = spans.getFinishedSpans();
  return all[all.length - 1];
}

const malformed = () => tollgateRuntimes()[0]?.stats.malformedMeta;

afterAll(async () => {
  await handler.close();
  await shutdownTollgate();
});

describe('malformed _meta on the stateless 2026-07-28 path', () => {
  it('a valid traceparent makes the caller trace the session (rule 3)', async () => {
    const r = await call2026({
      ...ENVELOPE,
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    expect(r.status).toBe(200);
    const span = await lastSpan();
    expect(span?.attributes).toMatchObject({
      'mcp.session.id': 'trace-0af7651916cd43dd8448eb211c80319c',
      'tollgate.session.rule': 'trace',
      'tollgate.agent.id': 'meta-agent',
      'mcp.protocol.version': '2026-07-28',
      'tollgate.mcp.transport': 'streamable_http',
    });
    // the billing span joins the caller's trace
    expect(span?.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c');
  });

  it.each([
    ['a number', 42],
    ['an object', { traceId: 'x' }],
    ['garbage text', 'not-a-traceparent'],
    ['an all-zero trace id', '00-00000000000000000000000000000000-b7ad6b7169203331-01'],
    ['a 10 kB string', `00-${'a'.repeat(10_000)}`],
  ])(
    'a traceparent that is %s: the call runs, the session falls to activity, it is counted',
    async (_, tp) => {
      const before = malformed()?.traceparent ?? 0;
      const r = await call2026({ ...ENVELOPE, traceparent: tp });
      expect(r.status).toBe(200);
      expect(r.body.result?.content).toEqual([{ type: 'text', text: 'ok' }]);
      const span = await lastSpan();
      expect(span?.attributes['tollgate.session.rule']).toBe('activity');
      expect(String(span?.attributes['mcp.session.id'])).toMatch(/^act-[0-9a-f]{16}$/);
      expect(malformed()?.traceparent).toBe(before + 1);
    },
  );

  it('a 10 kB clientInfo.name is dropped (not the agent, not on the span), the call runs, it is counted', async () => {
    const before = malformed()?.clientInfo ?? 0;
    const r = await call2026({
      ...ENVELOPE,
      'io.modelcontextprotocol/clientInfo': { name: 'x'.repeat(10_000), version: '1' },
    });
    expect(r.status).toBe(200);
    const span = await lastSpan();
    expect(span?.attributes['tollgate.agent.id']).toBeUndefined();
    expect(JSON.stringify(span?.attributes).length).toBeLessThan(2_000);
    expect(malformed()?.clientInfo).toBe(before + 1);
  });

  it('activity sessions: one caller is one session; another credential or agent is another', async () => {
    const a1 = await call2026(ENVELOPE, 'Bearer token-one');
    const s1 = (await lastSpan())?.attributes['mcp.session.id'];
    const a2 = await call2026(ENVELOPE, 'Bearer token-one');
    const s2 = (await lastSpan())?.attributes['mcp.session.id'];
    expect([a1.status, a2.status]).toEqual([200, 200]);
    expect(s2).toBe(s1);
    await call2026({
      ...ENVELOPE,
      'io.modelcontextprotocol/clientInfo': { name: 'other-agent', version: '1' },
    });
    expect((await lastSpan())?.attributes['mcp.session.id']).not.toBe(s1);
  });
});

describe('malformed _meta on a 2025-era connection', () => {
  it('an envelope protocol version that is not a revision date is dropped and counted; the negotiated one is kept', async () => {
    const server = build();
    const [client, serverSide] = InMemoryTransport.createLinkedPair();
    const answers = new Map<number, unknown>();
    client.onmessage = (m) => {
      const id = (m as { id?: number }).id;
      if (typeof id === 'number') answers.set(id, m);
    };
    await server.connect(serverSide);
    await client.start();
    const ask = async (id: number, method: string, params: object) => {
      await client.send({ jsonrpc: '2.0', id, method, params } as never);
      for (let i = 0; i < 200 && !answers.has(id); i++) await new Promise((r) => setTimeout(r, 5));
      return answers.get(id) as { result?: unknown; error?: unknown };
    };
    await ask(1, 'initialize', {
      protocolVersion: '2025-11-25',
      capabilities: {},
      clientInfo: { name: 'legacy-agent', version: '1' },
    });
    await client.send({ jsonrpc: '2.0', method: 'notifications/initialized' } as never);
    const before = malformed()?.protocolVersion ?? 0;
    const r = await ask(2, 'tools/call', {
      name: 'echo',
      arguments: { text: 'ok' },
      _meta: { 'io.modelcontextprotocol/protocolVersion': { evil: true } },
    });
    expect(r.result).toBeDefined();
    const span = await lastSpan();
    expect(span?.attributes).toMatchObject({
      'mcp.protocol.version': '2025-11-25',
      'tollgate.agent.id': 'legacy-agent',
      'tollgate.session.rule': 'connection',
    });
    expect(malformed()?.protocolVersion).toBe(before + 1);
    // no _meta at all is the normal 2025 case: nothing counted
    const still = malformed()?.protocolVersion;
    expect((await ask(3, 'tools/call', { name: 'echo', arguments: { text: 'ok' } })).result).toBeDefined();
    expect(malformed()?.protocolVersion).toBe(still);
    await server.close();
  });
});
