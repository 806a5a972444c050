import { type DiagLogger, DiagLogLevel, diag } from '@opentelemetry/api';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProtoRequest } from '../src/otlp/proto.js';
import { decodeExportResponse } from '../src/otlp/response.js';
import {
  DEV_INGEST_KEY,
  emitToolCall,
  otelTracer,
  startTestTollgate,
  type TestTollgate,
} from './support/harness.js';

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: p
    plans:
      p:
        tools: { "*": { price: { perCall: "1" } } }
        limits: { spendPerPeriod: "1" }
`;

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
});

describe('stock OTLP clients do not notice directives', () => {
  it.each(['protobuf', 'json'] as const)(
    'the real OTel JS %s exporter logs no warning while its customer is killed',
    async (format) => {
      const logged: string[] = [];
      const capture =
        (level: string) =>
        (msg: string, ...args: unknown[]) =>
          logged.push(`${level} ${msg} ${JSON.stringify(args)}`);
      const logger: DiagLogger = {
        error: capture('error'),
        warn: capture('warn'),
        info: () => {},
        debug: () => {},
        verbose: () => {},
      };
      diag.setLogger(logger, { logLevel: DiagLogLevel.ALL, suppressOverrideMessage: true });
      try {
        const customer = `stock-${format}`;
        const { tracer, provider } = otelTracer(tg.otlpUrl as string, format);
        // three exports: the second crosses the limit, the third is answered with the kill directive
        for (let i = 0; i < 3; i++) {
          emitToolCall(tracer, { tool: 'anything', customer });
          await provider.forceFlush();
        }
        await provider.shutdown();
        const states = await tg.admin!.states('demo-mcp', customer);
        expect(states.map((d) => d.action)).toEqual(['kill']);
        expect(logged).toEqual([]);
      } finally {
        diag.disable();
      }
    },
  );

  it('a strict decoder that knows only the upstream ExportTraceServiceResponse sees a plain success', async () => {
    // The upstream message (opentelemetry-proto), as the Collector's pdata and other SDKs know it.
    const upstream = protobuf
      .parse(`syntax = "proto3";
      message ExportTracePartialSuccess { int64 rejected_spans = 1; string error_message = 2; }
      message ExportTraceServiceResponse { ExportTracePartialSuccess partial_success = 1; }`)
      .root.lookupType('ExportTraceServiceResponse');
    const spans = Array.from({ length: 3 }, (_, i) => ({
      traceId: Buffer.alloc(16, i + 1),
      spanId: Buffer.alloc(8, i + 1),
      name: 'tools/call x',
      kind: 2,
      startTimeUnixNano: String(BigInt(Date.now() - 1000) * 1_000_000n),
      endTimeUnixNano: String(BigInt(Date.now() - 900) * 1_000_000n),
      attributes: [
        { key: 'mcp.method.name', value: { stringValue: 'tools/call' } },
        { key: 'gen_ai.tool.name', value: { stringValue: 'x' } },
        { key: 'tollgate.customer.id', value: { stringValue: 'strict-client' } },
      ],
    }));
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-protobuf', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: Buffer.from(
        ProtoRequest.encode(
          ProtoRequest.fromObject({ resourceSpans: [{ scopeSpans: [{ spans }] }] }),
        ).finish(),
      ),
    });
    expect(res.status).toBe(200);
    const bytes = new Uint8Array(await res.arrayBuffer());
    expect(decodeExportResponse(bytes).directives.map((d) => d.action)).toEqual(['kill']); // Tollgate's SDK sees it
    const seen = upstream.toObject(upstream.decode(bytes));
    expect(seen).toEqual({}); // no partial_success: a stock client sees full success
  });
});
