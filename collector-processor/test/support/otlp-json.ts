import { randomBytes } from 'node:crypto';
import type { AcceptedRecord } from '../../src/spool/spool.js';

type AnyValue =
  | { stringValue: string }
  | { intValue: string | number }
  | { doubleValue: number | string }
  | { boolValue: boolean };

export function attr(key: string, value: string | number | boolean | AnyValue) {
  if (typeof value === 'string') return { key, value: { stringValue: value } };
  if (typeof value === 'boolean') return { key, value: { boolValue: value } };
  if (typeof value === 'number')
    return { key, value: Number.isInteger(value) ? { intValue: value } : { doubleValue: value } };
  return { key, value };
}

/** An OTLP/JSON tool-call span; `attrs` override or extend the defaults (undefined removes one). */
export function toolSpan(
  over: {
    tool?: string;
    customer?: string;
    attrs?: Record<string, unknown>;
    startMs?: number;
    name?: string;
    traceId?: string;
    spanId?: string;
  } = {},
) {
  const startMs = over.startMs ?? Date.now() - 5_000;
  const base: Record<string, unknown> = {
    'mcp.method.name': 'tools/call',
    'gen_ai.tool.name': over.tool ?? 'search_docs',
    'mcp.session.id': 'sess-json',
    'tollgate.customer.id': over.customer ?? 'json-customer',
    'gen_ai.usage.input_tokens': 10,
    'gen_ai.usage.output_tokens': 20,
    ...over.attrs,
  };
  return {
    traceId: over.traceId ?? randomBytes(16).toString('hex'),
    spanId: over.spanId ?? randomBytes(8).toString('hex'),
    name: over.name ?? `tools/call ${over.tool ?? 'search_docs'}`,
    kind: 2,
    startTimeUnixNano: String(BigInt(startMs) * 1_000_000n),
    endTimeUnixNano: String(BigInt(startMs + 30) * 1_000_000n),
    attributes: Object.entries(base)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => attr(k, v as string | number | boolean | AnyValue)),
  };
}

export function exportOf(spans: unknown[], resource: Record<string, string> = { 'service.name': 'test' }) {
  return {
    resourceSpans: [
      {
        resource: { attributes: Object.entries(resource).map(([k, v]) => attr(k, v)) },
        scopeSpans: [{ scope: { name: 'test' }, spans }],
      },
    ],
  };
}

/** `exportOf(spans)` with the ids as bytes: what `ProtoRequest.fromObject` takes for a protobuf export. */
export function protoExportOf(spans: ReturnType<typeof toolSpan>[]) {
  return exportOf(
    spans.map((s) => ({
      ...s,
      traceId: Buffer.from(s.traceId, 'hex'),
      spanId: Buffer.from(s.spanId, 'hex'),
    })),
  );
}

/**
 * A spool record of an OTLP/JSON export of `spans` (product demo-mcp), as the receiver writes one: what a
 * replay reads.
 */
export function recordOf(
  rid: string,
  planVersion: string,
  spans: unknown[],
  over: Partial<AcceptedRecord> = {},
): AcceptedRecord {
  return {
    t: 'a',
    rid,
    product: 'demo-mcp',
    planVersion,
    receivedAtMs: Date.now(),
    format: 'otlp-json',
    payload: Buffer.from(JSON.stringify(exportOf(spans))),
    ...over,
  };
}
