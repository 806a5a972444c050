import { SpanKind } from '@opentelemetry/api';
import { extractToolCall, type SpanView } from '@tollgate/contracts';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { decodeJsonExport } from '../src/otlp/decode-json.js';
import { decodeProtobufExport } from '../src/otlp/decode-protobuf.js';
import { DecodeError, MAX_ATTRIBUTES } from '../src/otlp/decoded.js';
import { ProtoRequest, ProtoSpan, Reader } from '../src/otlp/proto.js';

const { Writer } = protobuf;

import { decodeOtlp, selectCalls } from '../src/pipeline/select.js';
import { RejectionTally } from '../src/pipeline/tally.js';
import { SDK_SCOPE_NAME } from '../src/receiver/server.js';
import { Turn } from '../src/turn.js';
import { captureServer } from './support/capture.js';
import { emitToolCall, otelTracer } from './support/harness.js';
import { exportOf as jsonExportOf, protoExportOf, toolSpan } from './support/otlp-json.js';

const xo = {
  sdkScopeName: SDK_SCOPE_NAME,
  nowUnixUs: Date.now() * 1000,
  maxAgeUs: 3_600_000_000,
  maxFutureUs: 600_000_000,
};

async function captured(format: 'protobuf' | 'json'): Promise<Buffer> {
  const cap = await captureServer();
  const { tracer, provider } = otelTracer(cap.url, format, { resource: { 'service.instance.id': 'inst-9' } });
  emitToolCall(
    tracer,
    {
      tool: 'get_forecast',
      customer: 'acme',
      agent: 'planner',
      session: 'sess-1',
      inputTokens: 12,
      outputTokens: 345,
      durationMs: 250,
    },
    1_764_000_000_000,
  );
  emitToolCall(tracer, { tool: 'get_forecast', customer: 'acme', isError: true }, 1_764_000_000_000);
  tracer.startSpan('GET /index.html').end();
  await provider.forceFlush();
  await provider.shutdown();
  await cap.close();
  expect(cap.bodies).toHaveLength(1);
  return cap.bodies[0]!.body;
}

function checkDecoded(spans: SpanView[]) {
  expect(spans).toHaveLength(3);
  const first = spans.find((s) => s.name === 'tools/call get_forecast' && !s.attributes['error.type'])!;
  expect(first.traceId).toMatch(/^[0-9a-f]{32}$/);
  expect(first.spanId).toMatch(/^[0-9a-f]{16}$/);
  expect(first.kind).toBe(2);
  expect(first.startUnixUs).toBe(1_764_000_000_000_000);
  expect(first.endUnixUs - first.startUnixUs).toBe(250_000);
  expect(first.resource['service.instance.id']).toBe('inst-9');
  const x = extractToolCall(first, { ...xo, nowUnixUs: 1_764_000_001_000_000 });
  expect(x.kind).toBe('call');
  if (x.kind !== 'call') return;
  expect(x.call).toMatchObject({
    customer: 'acme',
    agent: 'planner',
    sessionId: 'sess-1',
    tool: 'get_forecast',
    transport: 'stdio',
    ok: true,
    inputTokens: 12,
    outputTokens: 345,
    durationUs: 250_000,
    protocolVersion: '2025-06-18',
    instanceId: 'inst-9',
    source: 'otlp',
  });
  expect(x.call.eventId).toBe(first.traceId + first.spanId);
  const failed = spans.find((s) => s.attributes['error.type'] === 'tool_error')!;
  const fx = extractToolCall(failed, { ...xo, nowUnixUs: 1_764_000_001_000_000 });
  expect(fx.kind === 'call' && fx.call.ok === false && fx.call.errorType === 'tool_error').toBe(true);
  const other = spans.find((s) => s.name === 'GET /index.html')!;
  expect(extractToolCall(other, xo)).toEqual({ kind: 'ignored' });
}

describe('decoding bytes made by the real OTel JS exporter', () => {
  it('protobuf (exporter-trace-otlp-proto)', async () => {
    const d = await decodeProtobufExport(await captured('protobuf'));
    expect(d.malformed).toBe(0);
    expect(d.instanceIds).toEqual(['inst-9']);
    checkDecoded(d.spans);
  });

  it('JSON (exporter-trace-otlp-http)', async () => {
    const d = await decodeJsonExport(await captured('json'));
    expect(d.malformed).toBe(0);
    checkDecoded(d.spans);
  });

  it('JSON: a NaN double, which the exporter writes as null, is an absent value on a span or its resource (it refused the span, or the whole export)', async () => {
    const cap = await captureServer();
    const { tracer, provider } = otelTracer(cap.url, 'json', {
      resource: { 'host.load': Number.NaN } as never,
    });
    tracer
      .startSpan('tools/call get_forecast', {
        kind: SpanKind.SERVER,
        attributes: {
          'mcp.method.name': 'tools/call',
          'gen_ai.tool.name': 'get_forecast',
          'tollgate.customer.id': 'acme',
          'app.ratio': Number.NaN,
        },
        startTime: 1_764_000_000_000,
      })
      .end(1_764_000_000_020);
    await provider.forceFlush();
    await provider.shutdown();
    await cap.close();
    const body = cap.bodies[0]!.body;
    expect(body.toString('utf8').match(/"doubleValue":null/g)).toHaveLength(2);
    const d = await decodeJsonExport(body);
    expect(d.malformed).toBe(0);
    expect(d.spans[0]!.attributes['app.ratio']).toBeNull();
    expect(d.spans[0]!.resource['host.load']).toBeNull();
    expect(extractToolCall(d.spans[0]!, { ...xo, nowUnixUs: 1_764_000_001_000_000 })).toMatchObject({
      kind: 'call',
      call: { customer: 'acme', tool: 'get_forecast' },
    });
  });
});

/** A Kong-shaped export: root span `kong`, numeric attributes as doubles (as Kong's opentelemetry plugin sends). */
/** One span as an export decoded by the JSON or the protobuf decoder. */
function decodedAs(format: 'protobuf' | 'json', span: ReturnType<typeof toolSpan>) {
  return format === 'json'
    ? decodeJsonExport(Buffer.from(JSON.stringify(jsonExportOf([span]))))
    : decodeProtobufExport(ProtoRequest.encode(ProtoRequest.fromObject(protoExportOf([span]))).finish());
}

function kongExport() {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'kong' } }] },
        scopeSpans: [
          {
            scope: { name: 'kong-internal', version: '0.1.0' },
            spans: [
              {
                traceId: Buffer.from('0af7651916cd43dd8448eb211c80319c', 'hex'),
                spanId: Buffer.from('b7ad6b7169203331', 'hex'),
                name: 'kong',
                kind: 2,
                startTimeUnixNano: '1764000000000000000',
                endTimeUnixNano: '1764000000042000000',
                attributes: [
                  { key: 'http.response.status_code', value: { doubleValue: 200 } },
                  { key: 'mcp.method.name', value: { stringValue: 'tools/call' } },
                  { key: 'gen_ai.tool.name', value: { stringValue: 'get_forecast' } },
                  { key: 'gen_ai.usage.input_tokens', value: { doubleValue: 17 } },
                  { key: 'gen_ai.usage.output_tokens', value: { doubleValue: 230 } },
                  { key: 'tollgate.customer.id', value: { stringValue: 'acme' } },
                  { key: 'mcp.session.id', value: { stringValue: 'kong-sess' } },
                  { key: 'jsonrpc.request.id', value: { doubleValue: 3 } },
                ],
              },
            ],
          },
        ],
      },
    ],
  };
}

describe('Kong-shaped spans', () => {
  it('bills the root span `kong` with double-valued numbers', async () => {
    const bytes = ProtoRequest.encode(ProtoRequest.fromObject(kongExport())).finish();
    const d = await decodeProtobufExport(bytes);
    expect(d.spans).toHaveLength(1);
    const x = extractToolCall(d.spans[0]!, { ...xo, nowUnixUs: 1_764_000_001_000_000 });
    expect(x.kind).toBe('call');
    if (x.kind !== 'call') return;
    expect(x.call).toMatchObject({
      tool: 'get_forecast',
      inputTokens: 17,
      outputTokens: 230,
      source: 'kong',
      transport: 'http',
      ok: true,
      durationUs: 42_000,
    });
  });

  it('a token count sent as an array, map, bytes or bool is malformed, not absent (it billed 0 tokens); elsewhere such values are absent', async () => {
    const values = [
      { arrayValue: { values: [{ intValue: 1000 }] } },
      { kvlistValue: { values: [] } },
      { bytesValue: 'AQI=' },
      { boolValue: true },
      { doubleValue: null },
      { stringValue: null },
    ];
    for (const format of ['protobuf', 'json'] as const) {
      for (const value of values) {
        const span = toolSpan({ customer: 'acme' });
        span.attributes.push({ key: 'gen_ai.usage.output_tokens', value } as never);
        span.attributes = span.attributes.filter(
          (a, i, all) => a.key !== 'gen_ai.usage.output_tokens' || i === all.length - 1,
        );
        const d = await decodedAs(format, span);
        expect(extractToolCall(d.spans[0]!, xo), `${format} ${JSON.stringify(value)}`).toMatchObject({
          kind: 'rejected',
          reason: 'invalid_number',
        });
        // the same value on an attribute billing only reads as text is absent: the call goes on without it
        const other = toolSpan({ customer: 'acme', attrs: { 'tollgate.agent.id': undefined } });
        other.attributes.push({ key: 'tollgate.agent.id', value } as never);
        const d2 = await decodedAs(format, other);
        expect(extractToolCall(d2.spans[0]!, xo)).toMatchObject({ kind: 'call', call: { agent: '' } });
      }
    }
  });

  it('rejects fractional or negative token doubles and marks HTTP failures', async () => {
    const doc = kongExport();
    const attrs = doc.resourceSpans[0]!.scopeSpans[0]!.spans[0]!.attributes;
    attrs[3] = { key: 'gen_ai.usage.input_tokens', value: { doubleValue: 1.5 } };
    const d = await decodeProtobufExport(ProtoRequest.encode(ProtoRequest.fromObject(doc)).finish());
    expect(extractToolCall(d.spans[0]!, { ...xo, nowUnixUs: 1_764_000_001_000_000 })).toMatchObject({
      kind: 'rejected',
      reason: 'invalid_number',
    });
    attrs[3] = { key: 'gen_ai.usage.input_tokens', value: { doubleValue: 2 } };
    attrs[0] = { key: 'http.response.status_code', value: { doubleValue: 502 } };
    const d2 = await decodeProtobufExport(ProtoRequest.encode(ProtoRequest.fromObject(doc)).finish());
    expect(extractToolCall(d2.spans[0]!, { ...xo, nowUnixUs: 1_764_000_001_000_000 })).toMatchObject({
      kind: 'call',
      call: { ok: false, errorType: '502' },
    });
  });
});

describe('attributes per span and per resource', () => {
  const withAttributes = (n: number, on: 'span' | 'resource') => {
    const doc = kongExport();
    const rs = doc.resourceSpans[0]!;
    const extra = Array.from({ length: n }, (_, i) => ({ key: `k${i}`, value: { stringValue: 'v' } }));
    if (on === 'span') rs.scopeSpans[0]!.spans[0]!.attributes.push(...extra);
    else rs.resource.attributes.push(...extra);
    return doc;
  };
  const kongAttributes = kongExport().resourceSpans[0]!.scopeSpans[0]!.spans[0]!.attributes.length;

  it(`a span of more than ${MAX_ATTRIBUTES} attributes is malformed (its siblings are kept); at the bound it is read`, async () => {
    const at = withAttributes(MAX_ATTRIBUTES - kongAttributes, 'span');
    const over = withAttributes(MAX_ATTRIBUTES - kongAttributes + 1, 'span');
    const pb = (doc: unknown) =>
      decodeProtobufExport(ProtoRequest.encode(ProtoRequest.fromObject(doc as never)).finish());
    const count = async (d: Promise<{ spans: unknown[]; malformed: number }>) => {
      const { spans, malformed } = await d;
      return [spans.length, malformed];
    };
    expect(await count(pb(at))).toEqual([1, 0]);
    expect(await count(pb(over))).toEqual([0, 1]);
    const json = (doc: ReturnType<typeof kongExport>) => {
      const d = structuredClone(doc) as unknown as {
        resourceSpans: { scopeSpans: { spans: Record<string, unknown>[] }[] }[];
      };
      for (const sp of d.resourceSpans[0]!.scopeSpans[0]!.spans) {
        sp.traceId = Buffer.from(sp.traceId as Uint8Array).toString('hex');
        sp.spanId = Buffer.from(sp.spanId as Uint8Array).toString('hex');
      }
      return decodeJsonExport(Buffer.from(JSON.stringify(d)));
    };
    expect(await count(json(at))).toEqual([1, 0]);
    expect(await count(json(over))).toEqual([0, 1]);
  });

  it(`a resource of more than ${MAX_ATTRIBUTES} attributes fails its export`, async () => {
    const over = withAttributes(MAX_ATTRIBUTES + 1, 'resource');
    await expect(
      decodeProtobufExport(ProtoRequest.encode(ProtoRequest.fromObject(over)).finish()),
    ).rejects.toThrow(DecodeError);
  });
});

describe('identities', () => {
  const xoAt = { ...xo, nowUnixUs: 1_764_000_001_000_000 };
  const withCustomer = async (span: string | undefined, resource: string | undefined) => {
    const doc = kongExport();
    const rs = doc.resourceSpans[0]!;
    const attrs = rs.scopeSpans[0]!.spans[0]!.attributes.filter((a) => a.key !== 'tollgate.customer.id');
    if (span !== undefined) attrs.push({ key: 'tollgate.customer.id', value: { stringValue: span } });
    rs.scopeSpans[0]!.spans[0]!.attributes = attrs;
    if (resource !== undefined)
      rs.resource.attributes.push({ key: 'tollgate.customer.id', value: { stringValue: resource } });
    return (await decodeProtobufExport(ProtoRequest.encode(ProtoRequest.fromObject(doc)).finish())).spans[0]!;
  };

  it("an empty customer attribute names nobody: the resource's, then the key's default customer apply", async () => {
    expect(extractToolCall(await withCustomer('', 'from-resource'), xoAt)).toMatchObject({
      kind: 'call',
      call: { customer: 'from-resource' },
    });
    expect(extractToolCall(await withCustomer('', ''), { ...xoAt, defaultCustomer: 'bound' })).toMatchObject({
      kind: 'call',
      call: { customer: 'bound' },
    });
    expect(extractToolCall(await withCustomer('', undefined), xoAt)).toMatchObject({
      kind: 'rejected',
      reason: 'missing_customer',
    });
  });

  it('ids with C1 or bidirectional controls, or half a surrogate pair, are refused; other text is kept', async () => {
    for (const bad of ['a\u0085b', 'evil\u202Etxt.exe', 'a\u2066b']) {
      expect([bad, extractToolCall(await withCustomer(bad, undefined), xoAt).kind]).toEqual([
        bad,
        'rejected',
      ]);
    }
    // half a pair cannot come through protobuf (its UTF-8 decodes to U+FFFD); JSON's \ud800 escape can
    for (const bad of ['a\ud800', '\udc00b']) {
      const span = await withCustomer('placeholder', undefined);
      span.attributes['tollgate.customer.id'] = bad;
      expect([bad, extractToolCall(span, xoAt).kind]).toEqual([bad, 'rejected']);
    }
    for (const good of ['acme', 'ácme', '顧客', 'emoji-😀', 'o\u2019hara']) {
      expect(extractToolCall(await withCustomer(good, undefined), xoAt)).toMatchObject({
        kind: 'call',
        call: { customer: good },
      });
    }
  });
});

describe('malformed input', () => {
  it('truncated framing is a DecodeError; a malformed span is skipped while its sibling survives', async () => {
    const good = ProtoRequest.encode(ProtoRequest.fromObject(kongExport())).finish();
    await expect(decodeProtobufExport(good.subarray(0, good.length - 7))).rejects.toThrow(DecodeError);
    const json = JSON.stringify({
      resourceSpans: [
        {
          scopeSpans: [
            {
              spans: [
                { traceId: 5, name: 'x' },
                { traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), name: 'ok' },
              ],
            },
          ],
        },
      ],
    });
    const d = await decodeJsonExport(Buffer.from(json));
    expect(d.malformed).toBe(1);
    expect(d.spans.map((s) => s.name)).toEqual(['ok']);
    await expect(decodeJsonExport(Buffer.from('{"resourceSpans": 3}'))).rejects.toThrow(DecodeError);
    await expect(decodeJsonExport(Buffer.from('{nope'))).rejects.toThrow(DecodeError);
  });

  it('protobuf: a span whose attribute runs past its end is skipped, and its neighbours are read whole', async () => {
    // Spans are read in place with the reader bounded to each span: the bad attribute's length (40) reaches
    // into the next span's bytes, which must not be read as part of it.
    const span = (name: string, spanId: string, attrs: [string, string][]) =>
      Buffer.from(
        ProtoSpan.encode(
          ProtoSpan.fromObject({
            traceId: Buffer.from('0af7651916cd43dd8448eb211c80319c', 'hex'),
            spanId: Buffer.from(spanId, 'hex'),
            name,
            kind: 2,
            attributes: attrs.map(([key, v]) => ({ key, value: { stringValue: v } })),
          }),
        ).finish(),
      );
    const good1 = span('first', 'b7ad6b7169203331', [['gen_ai.tool.name', 'a']]);
    const bad = Buffer.concat([span('bad', 'b7ad6b7169203332', []), Buffer.from([74, 40, 0x61, 0x62, 0x63])]);
    const good2 = span('second', 'b7ad6b7169203333', [
      ['gen_ai.tool.name', 'b'],
      ['mcp.session.id', 's'],
    ]);
    const field = (n: number, bytes: Buffer) => {
      const len: number[] = [];
      for (let v = bytes.length; ; v >>>= 7) {
        if (v < 0x80) {
          len.push(v);
          break;
        }
        len.push((v & 0x7f) | 0x80);
      }
      return Buffer.concat([Buffer.from([(n << 3) | 2, ...len]), bytes]);
    };
    const scopeSpans = Buffer.concat([field(2, good1), field(2, bad), field(2, good2)]);
    const body = field(1, field(2, scopeSpans));
    const d = await decodeProtobufExport(body);
    expect(d.malformed).toBe(1);
    expect(d.spans.map((x) => [x.name, x.spanId, x.attributes])).toEqual([
      ['first', 'b7ad6b7169203331', { 'gen_ai.tool.name': 'a' }],
      ['second', 'b7ad6b7169203333', { 'gen_ai.tool.name': 'b', 'mcp.session.id': 's' }],
    ]);
    // a span frame longer than its scope is broken framing, not a malformed span
    await expect(decodeProtobufExport(field(1, field(2, field(2, good1).subarray(0, 20))))).rejects.toThrow(
      DecodeError,
    );
  });

  it('protobuf: attribute keys whose hashes collide keep their own names (the key cache compares bytes)', async () => {
    // 'Aa' and 'BB' have the same 31-based hash; decoded twice so the second pass reads from the cache
    for (let round = 0; round < 2; round++) {
      const bytes = ProtoRequest.encode(
        ProtoRequest.fromObject({
          resourceSpans: [
            {
              scopeSpans: [
                {
                  spans: [
                    {
                      traceId: Buffer.alloc(16, 1),
                      spanId: Buffer.alloc(8, 2),
                      name: 'x',
                      attributes: [
                        { key: 'Aa', value: { stringValue: '1' } },
                        { key: 'BB', value: { stringValue: '2' } },
                      ],
                    },
                  ],
                },
              ],
            },
          ],
        }),
      ).finish();
      expect((await decodeProtobufExport(bytes)).spans[0]?.attributes).toEqual({ Aa: '1', BB: '2' });
    }
  });

  it('protobuf: int64 attributes read in place give what protobufjs gives, at every length and sign', async () => {
    // values at every varint length (1–10 bytes), both signs, the int64 limits and seeded random ones; each
    // read back in place and compared with protobufjs's own int64() on the same bytes
    const values: bigint[] = [
      0n,
      1n,
      127n,
      128n,
      2n ** 53n - 1n,
      2n ** 53n,
      2n ** 63n - 1n,
      -(2n ** 63n),
      -1n,
    ];
    for (let bits = 1n; bits < 63n; bits++)
      values.push(2n ** bits - 1n, 2n ** bits, -(2n ** bits), -(2n ** bits) + 1n);
    let seed = 7n;
    for (let i = 0; i < 2000; i++) {
      seed = (seed * 6364136223846793005n + 1442695040888963407n) % 2n ** 64n;
      const v = BigInt.asIntN(64, seed >> BigInt(i % 60));
      values.push(v);
    }
    const bytes = ProtoRequest.encode(
      ProtoRequest.fromObject({
        resourceSpans: [
          {
            scopeSpans: [
              {
                spans: values.map((v, i) => ({
                  traceId: Buffer.alloc(16, 1),
                  spanId: Buffer.from(i.toString(16).padStart(16, '0'), 'hex'),
                  name: 'x',
                  attributes: [{ key: 'n', value: { intValue: v.toString() } }],
                })),
              },
            ],
          },
        ],
      }),
    ).finish();
    const decoded = await decodeProtobufExport(bytes);
    expect(decoded.malformed).toBe(0);
    expect(decoded.spans.map((s) => s.attributes.n)).toEqual(values.map((v) => Number(v)));
    // protobufjs's reader on the same varints: int64() as a Long (high, low) or a number
    const reference = values.map((v) => {
      const w = Writer.create().int64(v.toString()).finish();
      const l = Reader.create(w).int64() as unknown as number | { low: number; high: number };
      return typeof l === 'number' ? l : l.high * 4_294_967_296 + (l.low >>> 0);
    });
    expect(decoded.spans.map((s) => s.attributes.n)).toEqual(reference);
  });

  it('protobuf: a token count whose varint is cut off marks its span malformed, and its sibling is read', async () => {
    const span = (id: number, tokens: number) =>
      ProtoSpan.encode(
        ProtoSpan.fromObject({
          traceId: Buffer.alloc(16, 1),
          spanId: Buffer.alloc(8, id),
          name: 'x',
          attributes: [{ key: 'gen_ai.usage.input_tokens', value: { intValue: tokens } }],
        }),
      ).finish();
    const cut = Buffer.from(span(2, 2 ** 40));
    // the varint's last byte replaced by one that says "more follows", inside the span's own length
    cut[cut.length - 1] = 0x80;
    const scope = Buffer.concat([field(2, cut), field(2, Buffer.from(span(3, 7)))]);
    const bytes = field(1, field(2, scope));
    const decoded = await decodeProtobufExport(bytes);
    expect(decoded.malformed).toBe(1);
    expect(decoded.spans.map((s) => s.attributes['gen_ai.usage.input_tokens'])).toEqual([7]);
  });
});

describe('protobuf: the short values of billing attributes, shared between spans', () => {
  /** One export of spans, each with the given value as its name, customer id (interned) and request id (not). */
  const exportOf = (values: string[]) =>
    Buffer.from(
      ProtoRequest.encode(
        ProtoRequest.fromObject({
          resourceSpans: [
            {
              scopeSpans: [
                {
                  spans: values.map((v, i) => ({
                    traceId: Buffer.alloc(16, 1),
                    spanId: Buffer.from((i + 1).toString(16).padStart(16, '0'), 'hex'),
                    name: v,
                    attributes: [
                      { key: 'tollgate.customer.id', value: { stringValue: v } },
                      { key: 'jsonrpc.request.id', value: { stringValue: v } },
                    ],
                  })),
                },
              ],
            },
          ],
        }),
      ).finish(),
    );

  it('decode to their own text, whatever shares a slot, at every length, and repeated ones are one string', async () => {
    // 'Aa' and 'BB' hash alike (31-based), so they take the same slot in turn; 64 bytes is the longest value
    // kept, 65 goes around the cache; multi-byte UTF-8 and the empty string
    const values = [
      'Aa',
      'BB',
      'Aa',
      'AaAa',
      'BBBB',
      'AaBB',
      'BBAa',
      'x'.repeat(64),
      'y'.repeat(65),
      'añ€😀',
      '',
    ];
    for (let round = 0; round < 3; round++) {
      const spans = (await decodeProtobufExport(exportOf([...values, ...values]))).spans;
      expect(spans.map((s) => s.attributes['tollgate.customer.id'])).toEqual([...values, ...values]);
      expect(spans.map((s) => s.name)).toEqual([...values, ...values]);
      // the non-interned attribute reads the same text the plain way
      expect(spans.map((s) => s.attributes['jsonrpc.request.id'])).toEqual([...values, ...values]);
    }
    const bulk = (
      await decodeProtobufExport(exportOf(Array.from({ length: 5000 }, (_, i) => `customer-${i % 7}`)))
    ).spans;
    expect(new Set(bulk.map((s) => s.attributes['tollgate.customer.id'])).size).toBe(7);
  });

  it('bytes that are not UTF-8 decode as the plain decoder reads them, from the cache as well', async () => {
    const body = exportOf(['zq', 'zq']);
    // both spans' customer values (and their request ids) made the bytes ff fe
    for (let at = body.indexOf('zq'); at >= 0; at = body.indexOf('zq', at + 2)) body.set([0xff, 0xfe], at);
    const plain = Buffer.from([0xff, 0xfe]).toString('utf8');
    const spans = (await decodeProtobufExport(body)).spans;
    expect(spans.map((s) => s.attributes['tollgate.customer.id'])).toEqual([plain, plain]);
    expect(spans.map((s) => s.attributes['jsonrpc.request.id'])).toEqual([plain, plain]);
    expect(spans.map((s) => s.name)).toEqual([plain, plain]);
  });
});

describe('a large export is read over several turns of the event loop', () => {
  // 3,000 tool calls of 7 customers; `Turn(0)` has spent its slice at every look at the clock
  const doc = jsonExportOf(
    Array.from({ length: 3000 }, (_, i) => toolSpan({ customer: `c-${i % 7}`, tool: `tool_${i % 3}` })),
  );
  const json = Buffer.from(JSON.stringify(doc));
  const protobufBody = Buffer.from(
    ProtoRequest.encode(
      ProtoRequest.fromObject({
        resourceSpans: doc.resourceSpans.map((rs) => ({
          ...rs,
          scopeSpans: rs.scopeSpans.map((ss) => ({
            ...ss,
            spans: ss.spans.map((sp) => {
              const span = sp as { traceId: string; spanId: string };
              return {
                ...span,
                traceId: Buffer.from(span.traceId, 'hex'),
                spanId: Buffer.from(span.spanId, 'hex'),
              };
            }),
          })),
        })),
      }),
    ).finish(),
  );

  /** What `read` gives, and how many other turns of the event loop ran while it ran. */
  async function turnsDuring<T>(read: () => Promise<T>): Promise<[T, number]> {
    let turns = 0;
    let running = true;
    const tick = () => {
      if (!running) return;
      turns++;
      setImmediate(tick);
    };
    setImmediate(tick);
    const out = await read();
    running = false;
    return [out, turns];
  }

  it('decoding (protobuf, JSON) and selecting yield between slices, and read what one piece reads', async () => {
    for (const [format, body] of [
      ['otlp-protobuf', protobufBody],
      ['otlp-json', json],
    ] as const) {
      const [whole, turnsWhole] = await turnsDuring(() => decodeOtlp(format, body, new Turn(Infinity)));
      const [sliced, turnsSliced] = await turnsDuring(() => decodeOtlp(format, body, new Turn(0)));
      expect([format, turnsWhole, sliced.spans.length]).toEqual([format, 0, 3000]);
      expect(turnsSliced).toBeGreaterThan(10);
      expect(sliced).toEqual(whole);

      const [callsWhole, selectWhole] = await turnsDuring(() =>
        selectCalls(whole, xo, new RejectionTally(), new Turn(Infinity)),
      );
      const [calls, selectSliced] = await turnsDuring(() =>
        selectCalls(whole, xo, new RejectionTally(), new Turn(0)),
      );
      expect([selectWhole, calls.length]).toEqual([0, 3000]);
      expect(selectSliced).toBeGreaterThan(10);
      expect(calls).toEqual(callsWhole);
    }
  });
});

/** One length-delimited protobuf field (wire type 2) holding `body`. */
function field(no: number, body: Uint8Array): Buffer {
  const w = Writer.create();
  w.uint32((no << 3) | 2).bytes(body);
  return Buffer.from(w.finish());
}
