import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import * as serverModule from '@modelcontextprotocol/sdk/server/index.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import {
  CallToolRequestSchema,
  ErrorCode,
  LATEST_PROTOCOL_VERSION,
  ListToolsRequestSchema,
  McpError,
} from '@modelcontextprotocol/sdk/types.js';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  type InstrumentMcpServerOptions,
  instrumentMcpServer,
  McpInstrumentation,
  reportUsage,
  shutdownTollgate,
} from '../src/index.js';

/** Exact span attributes, with real SDK client and server linked in memory and an in-memory exporter. */

afterEach(async () => {
  await shutdownTollgate();
});

async function connect(server: McpServer | serverModule.Server): Promise<Client> {
  const [a, b] = InMemoryTransport.createLinkedPair();
  await server.connect(a);
  const client = new Client({ name: 'unit-agent', version: '2.0.0' });
  await client.connect(b);
  return client;
}

function newServer(options: InstrumentMcpServerOptions | undefined, billing: InMemorySpanExporter) {
  const server = new McpServer({ name: 'unit', version: '1.0.0' });
  if (options) instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, ...options });
  server.registerTool('search_docs', { inputSchema: { query: z.string() } }, async ({ query }, extra) => {
    reportUsage({ inputTokens: 100, outputTokens: 40, quantities: { rows: 3 } }, extra);
    reportUsage({ outputTokens: 2, quantities: { rows: 1 } }, extra);
    return { content: [{ type: 'text', text: `found ${query}` }] };
  });
  server.registerTool('fail', { inputSchema: {} }, async () => ({
    isError: true,
    content: [{ type: 'text', text: 'nope' }],
  }));
  server.registerTool('quiet', { inputSchema: { text: z.string() } }, async ({ text }) => ({
    content: [{ type: 'text', text: `${text} ${text}` }],
  }));
  return server;
}

async function spansOf(billing: InMemorySpanExporter, n: number): Promise<ReadableSpan[]> {
  const deadline = Date.now() + 5000;
  while (billing.getFinishedSpans().length < n && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
  }
  return billing.getFinishedSpans();
}

describe('the tools/call span', () => {
  it('is a SERVER span named `tools/call {tool}` with the MCP semantic attributes', async () => {
    const billing = new InMemorySpanExporter();
    const client = await connect(newServer({ customer: () => 'acme' }, billing));
    await client.callTool({ name: 'search_docs', arguments: { query: 'otel' } });
    const [span] = await spansOf(billing, 1);
    expect(span?.name).toBe('tools/call search_docs');
    expect(span?.kind).toBe(SpanKind.SERVER);
    expect(span?.instrumentationScope.name).toBe('@tollgate/instrumentation');
    expect(span?.status.code).toBe(SpanStatusCode.UNSET);
    expect(span?.attributes).toEqual({
      'mcp.method.name': 'tools/call',
      'gen_ai.tool.name': 'search_docs',
      'gen_ai.operation.name': 'execute_tool',
      'jsonrpc.request.id': '1',
      'mcp.session.id': expect.stringMatching(/^conn-[0-9a-f-]{36}$/), // one per connection
      'tollgate.session.rule': 'connection',
      'mcp.protocol.version': LATEST_PROTOCOL_VERSION,
      'tollgate.mcp.transport': 'in_memory', // the SDK's in-process transport: no network.transport
      'tollgate.customer.id': 'acme',
      'tollgate.agent.id': 'unit-agent', // default agent resolver: clientInfo.name
      'gen_ai.usage.input_tokens': 100,
      'gen_ai.usage.output_tokens': 42, // two reports add up
      'tollgate.usage.rows': 4,
    });
    expect(span?.resource.attributes).toMatchObject({
      'service.name': 'mcp-server',
      'service.instance.id': expect.any(String),
    });
  });

  it('isError results are `error.type=tool_error`; thrown errors carry the JSON-RPC code', async () => {
    const billing = new InMemorySpanExporter();
    const server = new serverModule.Server({ name: 'low', version: '1' }, { capabilities: { tools: {} } });
    instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, customer: () => 'acme' });
    server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: [] }));
    server.setRequestHandler(CallToolRequestSchema, async (req) => {
      if (req.params.name === 'invalid') throw new McpError(ErrorCode.InvalidParams, 'bad arguments');
      if (req.params.name === 'crash') throw new Error('boom');
      return { isError: true, content: [] };
    });
    const client = await connect(server);
    await client.callTool({ name: 'soft' });
    await expect(client.callTool({ name: 'invalid' })).rejects.toThrow('bad arguments');
    await expect(client.callTool({ name: 'crash' })).rejects.toThrow('boom');
    const spans = await spansOf(billing, 3);
    expect(
      spans.map((s) => [s.name, s.attributes['error.type'], s.attributes['rpc.response.status_code']]),
    ).toEqual([
      ['tools/call soft', 'tool_error', undefined],
      ['tools/call invalid', '-32602', '-32602'],
      ['tools/call crash', '-32603', '-32603'],
    ]);
    expect(spans.map((s) => s.status.code)).toEqual([
      SpanStatusCode.ERROR,
      SpanStatusCode.ERROR,
      SpanStatusCode.ERROR,
    ]);
    // the tools/list call is not traced: only tool calls are billable
    await client.listTools();
    expect(billing.getFinishedSpans()).toHaveLength(3);
  });

  it('a tool name Tollgate cannot bill is refused before the tool runs (a low-level server resolving names leniently)', async () => {
    const billing = new InMemorySpanExporter();
    const server = new serverModule.Server({ name: 'low', version: '1' }, { capabilities: { tools: {} } });
    instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, customer: () => 'acme' });
    const ran: string[] = [];
    server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: [] }));
    server.setRequestHandler(CallToolRequestSchema, async (req) => {
      ran.push(req.params.name);
      return { content: [{ type: 'text', text: 'ok' }] };
    });
    const client = await connect(server);
    for (const name of ['get_forecast\t', `get_forecast${' '.repeat(300)}`, '', 'a\u0000b']) {
      const err = await client.callTool({ name }).catch((e: unknown) => e);
      expect(err, JSON.stringify(name)).toMatchObject({ code: -32602 });
      expect(String((err as Error).message)).toContain('not one Tollgate can bill');
    }
    await client.callTool({ name: 'GET_FORECAST' });
    expect(ran).toEqual(['GET_FORECAST']);
    const spans = await spansOf(billing, 1);
    expect(spans.map((x) => x.attributes['gen_ai.tool.name'])).toEqual(['GET_FORECAST']);
  });

  it('a tool an McpServer registered under a name Tollgate cannot bill is refused too, every call', async () => {
    const billing = new InMemorySpanExporter();
    const server = new McpServer({ name: 'unit', version: '1.0.0' });
    instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, customer: () => 'acme' });
    let ran = 0;
    server.registerTool('tab\tname', { inputSchema: {} }, async () => {
      ran++;
      return { content: [] };
    });
    server.registerTool('fine', { inputSchema: {} }, async () => ({ content: [] }));
    const client = await connect(server);
    for (let i = 0; i < 2; i++)
      await expect(client.callTool({ name: 'tab\tname' })).rejects.toMatchObject({ code: -32602 });
    await client.callTool({ name: 'fine' });
    await client.callTool({ name: 'fine' });
    expect(ran).toBe(0);
    expect((await spansOf(billing, 2)).map((x) => x.attributes['gen_ai.tool.name'])).toEqual([
      'fine',
      'fine',
    ]);
  });

  it('reportUsage past 10^12 is refused whole (Tollgate would refuse the call); the call stays billable', async () => {
    const billing = new InMemorySpanExporter();
    const server = new McpServer({ name: 'unit', version: '1.0.0' });
    instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, customer: () => 'acme' });
    const answers: boolean[] = [];
    server.registerTool('llm', { inputSchema: {} }, async (_args, extra) => {
      answers.push(reportUsage({ inputTokens: 10, outputTokens: 5, quantities: { rows: 2 } }, extra));
      answers.push(reportUsage({ inputTokens: 1e15, outputTokens: 1 }, extra));
      answers.push(reportUsage({ quantities: { rows: 1e12 } }, extra));
      answers.push(reportUsage({ outputTokens: 1e12 - 5 }, extra));
      answers.push(reportUsage({ outputTokens: 1 }, extra));
      return { content: [] };
    });
    const client = await connect(server);
    await client.callTool({ name: 'llm' });
    expect(answers).toEqual([true, false, false, true, false]);
    const [span] = await spansOf(billing, 1);
    expect(span?.attributes['gen_ai.usage.input_tokens']).toBe(10);
    expect(span?.attributes['gen_ai.usage.output_tokens']).toBe(1e12);
    expect(span?.attributes['tollgate.usage.rows']).toBe(2);
  });

  it('a handler that throws synchronously or returns without a promise gets the same span as an async one', async () => {
    const billing = new InMemorySpanExporter();
    const server = new serverModule.Server({ name: 'low', version: '1' }, { capabilities: { tools: {} } });
    instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, customer: () => 'acme' });
    server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: [] }));
    // not async: a throw leaves the wrapped handler synchronously (the wrapper's catch path); a plain result
    // reaches the wrapper as the resolved promise the SDK's registration makes of it
    server.setRequestHandler(CallToolRequestSchema, (req) => {
      if (req.params.name === 'sync-invalid')
        throw new McpError(ErrorCode.InvalidParams, 'bad sync arguments');
      if (req.params.name === 'sync-crash') throw new Error('sync boom');
      if (req.params.name === 'sync-soft') return { isError: true, content: [] };
      return { content: [{ type: 'text', text: 'ok' }] };
    });
    const client = await connect(server);
    await expect(client.callTool({ name: 'sync-ok' })).resolves.toMatchObject({ content: [{ text: 'ok' }] });
    await client.callTool({ name: 'sync-soft' });
    await expect(client.callTool({ name: 'sync-invalid' })).rejects.toThrow('bad sync arguments');
    await expect(client.callTool({ name: 'sync-crash' })).rejects.toThrow('sync boom');
    const spans = await spansOf(billing, 4);
    expect(
      spans.map((s) => [
        s.name,
        s.status.code,
        s.status.message,
        s.attributes['error.type'],
        s.attributes['rpc.response.status_code'],
      ]),
    ).toEqual([
      ['tools/call sync-ok', SpanStatusCode.UNSET, undefined, undefined, undefined],
      ['tools/call sync-soft', SpanStatusCode.ERROR, undefined, 'tool_error', undefined],
      [
        'tools/call sync-invalid',
        SpanStatusCode.ERROR,
        expect.stringContaining('bad sync arguments'),
        '-32602',
        '-32602',
      ],
      ['tools/call sync-crash', SpanStatusCode.ERROR, 'sync boom', '-32603', '-32603'],
    ]);
    for (const s of spans) {
      expect(s.endTime[0] * 1e9 + s.endTime[1]).toBeGreaterThanOrEqual(s.startTime[0] * 1e9 + s.startTime[1]);
      expect(s.spanContext().traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(s.spanContext().spanId).toMatch(/^[0-9a-f]{16}$/);
    }
  });

  it('is parented on the traceparent the client sends in params._meta', async () => {
    const billing = new InMemorySpanExporter();
    const client = await connect(newServer({}, billing));
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parentId = '00f067aa0ba902b7';
    await client.callTool({
      name: 'quiet',
      arguments: { text: 'a' },
      _meta: { traceparent: `00-${traceId}-${parentId}-01`, tracestate: 'vendor=x' },
    });
    const [span] = await spansOf(billing, 1);
    expect(span?.spanContext().traceId).toBe(traceId);
    expect(span?.parentSpanContext?.spanId).toBe(parentId);
    expect(span?.parentSpanContext?.traceState?.get('vendor')).toBe('x');
  });

  it('estimates tokens with a real tokenizer only when asked and only when the tool reported none', async () => {
    const billing = new InMemorySpanExporter();
    const client = await connect(newServer({ estimateTokens: true }, billing));
    await client.callTool({ name: 'quiet', arguments: { text: 'the quick brown fox' } });
    await client.callTool({ name: 'search_docs', arguments: { query: 'x' } });
    const [estimated, reported] = await spansOf(billing, 2);
    expect(estimated?.attributes).toMatchObject({
      'gen_ai.usage.input_tokens': countTokens(JSON.stringify({ text: 'the quick brown fox' })),
      'gen_ai.usage.output_tokens': countTokens('the quick brown fox the quick brown fox'),
      'tollgate.tokens.estimated': true,
    });
    expect(reported?.attributes).toMatchObject({ 'gen_ai.usage.input_tokens': 100 });
    expect(reported?.attributes['tollgate.tokens.estimated']).toBeUndefined();

    const plain = new InMemorySpanExporter();
    const c2 = await connect(newServer({}, plain));
    await c2.callTool({ name: 'quiet', arguments: { text: 'x' } });
    expect((await spansOf(plain, 1))[0]?.attributes['gen_ai.usage.input_tokens']).toBeUndefined();
  });

  it('reportUsage outside a tool call does nothing', () => {
    expect(reportUsage({ inputTokens: 1 })).toBe(false);
    expect(reportUsage({ inputTokens: 1 }, {})).toBe(false);
  });
});

describe('applying the instrumentation', () => {
  it('instrumentMcpServer twice on one server still yields one span per call (the last options win)', async () => {
    const billing = new InMemorySpanExporter();
    const server = newServer({ customer: () => 'first' }, billing);
    instrumentMcpServer(server, { billingExporter: billing, exportIntervalMs: 10, customer: () => 'second' });
    const client = await connect(server);
    await client.callTool({ name: 'quiet', arguments: { text: 'x' } });
    await new Promise((r) => setTimeout(r, 100));
    const spans = await spansOf(billing, 1);
    expect(spans).toHaveLength(1);
    expect(spans[0]?.attributes['tollgate.customer.id']).toBe('second');
  });

  it('the module patch is safe to apply twice, can be disabled, and defers to an explicit instrumentMcpServer', async () => {
    const billing = new InMemorySpanExporter();
    const app = new InMemorySpanExporter();
    const instrumentation = new McpInstrumentation({
      billingExporter: billing,
      exportIntervalMs: 10,
      customer: () => 'auto',
    });
    instrumentation.setTracerProvider(
      new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(app)] }),
    );
    instrumentation.manuallyInstrument(serverModule);
    instrumentation.manuallyInstrument(serverModule); // isWrapped → _unwrap → _wrap
    const client = await connect(newServer(undefined, billing));
    await client.callTool({ name: 'quiet', arguments: { text: 'x' } });
    const spans = await spansOf(billing, 1);
    await new Promise((r) => setTimeout(r, 100));
    expect(spans).toHaveLength(1);
    expect(spans[0]?.attributes['tollgate.customer.id']).toBe('auto');
    // the app's provider got its own span of the same call, with the same ids
    expect(app.getFinishedSpans().map((s) => s.spanContext().spanId)).toEqual([
      spans[0]?.spanContext().spanId,
    ]);

    // explicit instrumentation of a server the patch already covers: its options win, still one span
    const explicitBilling = new InMemorySpanExporter();
    const explicit = newServer(undefined, billing);
    instrumentMcpServer(explicit, {
      billingExporter: explicitBilling,
      exportIntervalMs: 10,
      customer: () => 'explicit',
    });
    const c2 = await connect(explicit);
    await c2.callTool({ name: 'quiet', arguments: { text: 'x' } });
    expect((await spansOf(explicitBilling, 1)).map((s) => s.attributes['tollgate.customer.id'])).toEqual([
      'explicit',
    ]);
    expect(billing.getFinishedSpans()).toHaveLength(1);

    // disabled: handlers already wrapped pass through, new servers are not wrapped
    instrumentation.disable();
    const c3 = await connect(newServer(undefined, billing));
    await client.callTool({ name: 'quiet', arguments: { text: 'x' } });
    await c3.callTool({ name: 'quiet', arguments: { text: 'x' } });
    await new Promise((r) => setTimeout(r, 100));
    expect(billing.getFinishedSpans()).toHaveLength(1);
    expect(serverModule.Server.prototype.setRequestHandler).not.toHaveProperty('__wrapped');
  });

  it('rejects what is not an MCP server, and invalid options', () => {
    expect(() => instrumentMcpServer({})).toThrow(/expected an McpServer or a Server/);
    const server = new McpServer({ name: 'x', version: '1' });
    expect(() => instrumentMcpServer(server, { heartbeatIntervalMs: 0 })).toThrow(/heartbeatIntervalMs/);
    // a misspelt option is named, with the other problems
    expect(() =>
      instrumentMcpServer(server, { exportIntervalMS: 50, heartbeatIntervalMs: 0 } as never),
    ).toThrow(/unknown option exportIntervalMS.*|heartbeatIntervalMs.*unknown option exportIntervalMS/);
    expect(() => instrumentMcpServer(server, { bogus: 1 } as never)).toThrow(
      'instrumentMcpServer: unknown option bogus',
    );
  });
});
