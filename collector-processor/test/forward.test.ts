import { SpanKind } from '@opentelemetry/api';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeJsonExport } from '../src/otlp/decode-json.js';
import { decodeProtobufExport } from '../src/otlp/decode-protobuf.js';
import { captureServer } from './support/capture.js';
import { DEV_INGEST_KEY, otelTracer, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

let tg: TestTollgate;
let downstream: Awaited<ReturnType<typeof captureServer>>;
beforeAll(async () => {
  downstream = await captureServer();
  tg = await startTestTollgate({
    '--forward-endpoint': `${downstream.url}/v1/traces`,
    '--forward-headers': 'Authorization=Bearer%20downstream-token,x-team=sre',
  });
});
afterAll(async () => {
  await tg?.cleanup();
  await downstream?.close();
});

async function nextForwarded(n: number) {
  const deadline = Date.now() + 10_000;
  while (downstream.bodies.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(downstream.bodies.length).toBe(n);
  return downstream.bodies[n - 1]!;
}

// The upstream Span fields our billing schema skips, to prove forwarding keeps them.
const upstream = protobuf
  .parse(`syntax = "proto3";
  message Req { repeated RS resource_spans = 1; }
  message RS { repeated SS scope_spans = 2; }
  message SS { repeated Span spans = 2; }
  message Span { bytes span_id = 2; string name = 5; repeated Event events = 11; repeated Link links = 13; }
  message Event { fixed64 time_unix_nano = 1; string name = 2; }
  message Link { bytes trace_id = 1; bytes span_id = 2; }`)
  .root.lookupType('Req');

describe('forwarding to the next OTLP hop', () => {
  it('protobuf: billed spans get price and decision; everything else arrives byte for byte', async () => {
    const { tracer, provider } = otelTracer(tg.otlpUrl as string, 'protobuf');
    const span = tracer.startSpan('tools/call search_docs', {
      kind: SpanKind.SERVER,
      attributes: {
        'mcp.method.name': 'tools/call',
        'gen_ai.tool.name': 'search_docs',
        'tollgate.customer.id': 'fwd-co',
        'gen_ai.usage.input_tokens': 10,
        'gen_ai.usage.output_tokens': 20,
      },
      links: [{ context: { traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), traceFlags: 1 } }],
    });
    span.addEvent('cache miss');
    span.end();
    tracer.startSpan('GET /health').end();
    await provider.forceFlush();
    await provider.shutdown();

    const fwd = await nextForwarded(1);
    expect(fwd.contentType).toBe('application/x-protobuf');
    expect(fwd.headers.authorization).toBe('Bearer downstream-token');
    expect(fwd.headers['x-team']).toBe('sre');
    const spans = (await decodeProtobufExport(fwd.body)).spans;
    const billed = spans.find((s) => s.name === 'tools/call search_docs')!;
    const other = spans.find((s) => s.name === 'GET /health')!;
    // TEST_PLANS: the customer's first two calls are free
    expect(billed.attributes).toMatchObject({
      'tollgate.price.nano': 0,
      'tollgate.cost.nano': 1_020_000,
      'tollgate.decision': 'free',
      'tollgate.currency': 'USD',
    });
    expect(other.attributes['tollgate.decision']).toBeUndefined();
    const raw = upstream.toObject(upstream.decode(fwd.body), { longs: String }) as {
      resourceSpans: {
        scopeSpans: { spans: { name: string; events?: { name: string }[]; links?: unknown[] }[] }[];
      }[];
    };
    const rawBilled = raw.resourceSpans[0]!.scopeSpans[0]!.spans.find(
      (s) => s.name === 'tools/call search_docs',
    )!;
    expect(rawBilled.events?.map((e) => e.name)).toEqual(['cache miss']);
    expect(rawBilled.links).toHaveLength(1);
  });

  it('JSON: the same, as OTLP/JSON', async () => {
    const billed = toolSpan({ customer: 'fwd-co' });
    const ignored = toolSpan({ customer: 'fwd-co', attrs: { 'mcp.method.name': 'tools/list' } });
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(exportOf([billed, ignored])),
    });
    expect(res.status).toBe(200);
    const fwd = await nextForwarded(2);
    const spans = (await decodeJsonExport(fwd.body)).spans;
    expect(spans.find((s) => s.spanId === billed.spanId)?.attributes).toMatchObject({
      'tollgate.decision': 'free',
      'tollgate.price.nano': 0,
    });
    expect(spans.find((s) => s.spanId === ignored.spanId)?.attributes['tollgate.decision']).toBeUndefined();
  });

  it('a downstream outage never blocks or fails ingest', async () => {
    await downstream.close();
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(exportOf([toolSpan({ customer: 'fwd-co' })])),
    });
    expect(res.status).toBe(200);
  });
});
