import { Client as ClientV2, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { createMcpHandler, McpServer as McpServerV2 } from '@modelcontextprotocol/server';
import { type Context, type Link, type SpanKind, trace } from '@opentelemetry/api';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  InMemorySpanExporter,
  ParentBasedSampler,
  type Sampler,
  type SamplingResult,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import * as z4 from 'zod/v4';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { flushTollgate, instrumentMcpServer, shutdownTollgate } from '../src/index.js';
import { waitFor } from './support/mcp.js';

/**
 * Sampling never loses money. The app's tracer provider (registered globally, as NodeSDK does) samples as
 * the app decides; the billing span of every tool call is recorded by Tollgate's own always-on pipeline and
 * billed by a real Tollgate; the app's child spans follow the app's decision, never the billing span's.
 */

/** The app's sampler, switched per scenario. */
class SwitchableSampler implements Sampler {
  current: Sampler = new AlwaysOnSampler();
  shouldSample(
    ctx: Context,
    traceId: string,
    name: string,
    kind: SpanKind,
    attrs: never,
    links: Link[],
  ): SamplingResult {
    return this.current.shouldSample(ctx, traceId, name, kind, attrs, links);
  }
  toString() {
    return 'switchable';
  }
}

const sampler = new SwitchableSampler();
const appSpans = new InMemorySpanExporter();
let tg: TestTollgate;

beforeAll(async () => {
  const provider = new NodeTracerProvider({ sampler, spanProcessors: [new SimpleSpanProcessor(appSpans)] });
  provider.register(); // global provider + AsyncLocalStorage context manager, like NodeSDK
  tg = await startTestTollgate();
});

afterAll(async () => {
  await shutdownTollgate();
  await tg?.cleanup();
});

/** An instrumented server whose tool makes a child span with the app's tracer (a DB call, say). */
async function clientFor(customer: string): Promise<Client> {
  const server = new McpServer({ name: 'sampled', version: '1.0.0' });
  instrumentMcpServer(server, {
    endpoint: tg.otlpUrl,
    ingestKey: DEV_INGEST_KEY,
    exportIntervalMs: 50,
    stateFile: false,
    logger: false,
    customer: () => customer,
  });
  server.registerTool('lookup', { inputSchema: { id: z.string() } }, async ({ id }) => {
    trace.getTracer('app').startActiveSpan('db.query', (span) => span.end());
    return { content: [{ type: 'text', text: id }] };
  });
  const [a, b] = InMemoryTransport.createLinkedPair();
  await server.connect(a);
  const client = new Client({ name: 'agent', version: '1' });
  await client.connect(b);
  return client;
}

async function billedRows(customer: string, n: number) {
  await flushTollgate();
  return waitFor(`${n} rows of ${customer}`, async () => {
    await tg.lander?.idle();
    const rows = await query<{ trace_id: string; span_id: string }>(
      tg,
      'SELECT trace_id, span_id FROM mcp_tool_calls WHERE customer = {c:String}',
      { c: customer },
    );
    return rows.length >= n ? rows : undefined;
  });
}

async function calls(client: Client, n: number, meta?: Record<string, string>) {
  for (let i = 0; i < n; i++) {
    await client.callTool({ name: 'lookup', arguments: { id: String(i) }, ...(meta ? { _meta: meta } : {}) });
  }
}

describe('sampling never loses money', () => {
  it('app sampler off: every call billed, nothing forced into the app’s trace', async () => {
    sampler.current = new AlwaysOffSampler();
    appSpans.reset();
    await calls(await clientFor('off-co'), 20);
    expect(await billedRows('off-co', 20)).toHaveLength(20);
    expect(appSpans.getFinishedSpans()).toEqual([]); // neither the tool span nor its db.query child
  });

  it('parent-based sampler and an unsampled traceparent from the client: billed, on the client’s trace', async () => {
    sampler.current = new ParentBasedSampler({ root: new AlwaysOnSampler() });
    appSpans.reset();
    const traceId = 'aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb';
    await calls(await clientFor('parent-co'), 10, { traceparent: `00-${traceId}-cccccccccccccccc-00` });
    const rows = await billedRows('parent-co', 10);
    expect(rows).toHaveLength(10);
    expect(new Set(rows.map((r) => r.trace_id))).toEqual(new Set([traceId]));
    expect(appSpans.getFinishedSpans()).toEqual([]);
  });

  it('1-in-4 ratio sampler: all calls billed; the app keeps its sampled traces whole, with the same ids', async () => {
    sampler.current = new TraceIdRatioBasedSampler(0.25);
    appSpans.reset();
    await calls(await clientFor('ratio-co'), 80);
    const rows = await billedRows('ratio-co', 80);
    expect(rows).toHaveLength(80);
    const app = appSpans.getFinishedSpans();
    const tools = app.filter((s) => s.name === 'tools/call lookup');
    const children = app.filter((s) => s.name === 'db.query');
    expect(tools.length).toBeGreaterThan(5);
    expect(tools.length).toBeLessThan(60);
    // each sampled tool span has its child; no child of an unsampled call was forced on
    expect(children.map((c) => c.parentSpanContext?.spanId).sort()).toEqual(
      tools.map((t) => t.spanContext().spanId).sort(),
    );
    // billing rows point at the very spans the app's backend holds
    const billed = new Set(rows.map((r) => `${r.trace_id}/${r.span_id}`));
    for (const t of tools)
      expect(billed.has(`${t.spanContext().traceId}/${t.spanContext().spanId}`)).toBe(true);
  });
});

/**
 * The same guarantee on SDK 2.x and the stateless 2026-07-28 protocol: a server per request from
 * `createMcpHandler`'s factory, instrumented inside it as the README says, driven by the real 2.x client
 * through the handler's `fetch` (in process, no socket).
 */
async function v2ClientFor(customer: string): Promise<ClientV2> {
  const handler = createMcpHandler(() => {
    const server = new McpServerV2({ name: 'sampled-v2', version: '1.0.0' });
    instrumentMcpServer(server, {
      endpoint: tg.otlpUrl,
      ingestKey: DEV_INGEST_KEY,
      exportIntervalMs: 50,
      stateFile: false,
      logger: false,
      customer: () => customer,
    });
    server.registerTool('lookup', { inputSchema: z4.object({ id: z4.string() }) }, async ({ id }) => {
      trace.getTracer('app').startActiveSpan('db.query', (span) => span.end());
      return { content: [{ type: 'text' as const, text: id }] };
    });
    return server;
  });
  const client = new ClientV2(
    { name: 'agent', version: '1' },
    { versionNegotiation: { mode: { pin: '2026-07-28' } } },
  );
  await client.connect(
    new StreamableHTTPClientTransport(new URL('http://sampled.local/mcp'), {
      fetch: (url, init) => handler.fetch(new Request(url, init)),
    }),
  );
  return client;
}

async function v2Calls(client: ClientV2, n: number, meta?: Record<string, string>) {
  for (let i = 0; i < n; i++) {
    await client.callTool({ name: 'lookup', arguments: { id: String(i) }, ...(meta ? { _meta: meta } : {}) });
  }
}

describe('sampling never loses money on SDK 2.x (2026-07-28, createMcpHandler)', () => {
  it('app sampler off: every call billed, nothing forced into the app’s trace', async () => {
    sampler.current = new AlwaysOffSampler();
    appSpans.reset();
    await v2Calls(await v2ClientFor('off-v2'), 20);
    expect(await billedRows('off-v2', 20)).toHaveLength(20);
    expect(appSpans.getFinishedSpans()).toEqual([]);
  });

  it('parent-based sampler and an unsampled traceparent in _meta: billed, on the client’s trace', async () => {
    sampler.current = new ParentBasedSampler({ root: new AlwaysOnSampler() });
    appSpans.reset();
    const traceId = 'dddddddddddddddd1111111111111111';
    await v2Calls(await v2ClientFor('parent-v2'), 10, { traceparent: `00-${traceId}-eeeeeeeeeeeeeeee-00` });
    const rows = await billedRows('parent-v2', 10);
    expect(rows).toHaveLength(10);
    expect(new Set(rows.map((r) => r.trace_id))).toEqual(new Set([traceId]));
    expect(appSpans.getFinishedSpans()).toEqual([]);
  });
});
