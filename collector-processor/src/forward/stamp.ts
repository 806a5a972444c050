import {
  ATTR_TOLLGATE_COST,
  ATTR_TOLLGATE_CURRENCY,
  ATTR_TOLLGATE_DECISION,
  ATTR_TOLLGATE_PLAN_VERSION,
  ATTR_TOLLGATE_PRICE,
  type RatedCall,
} from '@tollgate/contracts';
import protobuf from 'protobufjs';

/** What gets stamped on a billed span: its price and decision, by event id (trace id + span id, hex). */
export type Stamps = ReadonlyMap<
  string,
  Pick<RatedCall, 'priceNano' | 'costNano' | 'decision' | 'currency' | 'planVersion'>
>;

const { Reader, Writer } = protobuf;
const LEN = 2;

function stampAttributes(
  s: Stamps extends ReadonlyMap<string, infer V> ? V : never,
): [string, string | bigint][] {
  return [
    [ATTR_TOLLGATE_PRICE, s.priceNano],
    [ATTR_TOLLGATE_COST, s.costNano],
    [ATTR_TOLLGATE_CURRENCY, s.currency],
    [ATTR_TOLLGATE_DECISION, s.decision],
    [ATTR_TOLLGATE_PLAN_VERSION, s.planVersion],
  ];
}

/** KeyValue entries (span field 9) encoded on their own, ready to be appended to a span message. */
function encodeAttributes(attrs: [string, string | bigint][]): Uint8Array {
  const w = Writer.create();
  for (const [key, value] of attrs) {
    w.uint32((9 << 3) | LEN).fork();
    w.uint32((1 << 3) | LEN).string(key);
    w.uint32((2 << 3) | LEN).fork();
    if (typeof value === 'bigint') w.uint32(3 << 3).int64(value.toString() as unknown as number);
    else w.uint32((1 << 3) | LEN).string(value);
    w.ldelim().ldelim();
  }
  return w.finish();
}

/**
 * Rewrites the length-delimited occurrences of `field` in `msg` through `fn`, copying every other byte as
 * it is (unknown fields, events, links: nothing is lost).
 */
function rewrite(msg: Uint8Array, field: number, fn: (inner: Uint8Array) => Uint8Array): Uint8Array {
  const r = Reader.create(msg);
  const parts: Uint8Array[] = [];
  let copiedTo = 0;
  while (r.pos < r.len) {
    const start = r.pos;
    const tag = r.uint32();
    if (tag >>> 3 === field && (tag & 7) === LEN) {
      const inner = r.bytes();
      const out = fn(inner);
      if (out !== inner) {
        parts.push(msg.subarray(copiedTo, start));
        parts.push(Writer.create().uint32(tag).bytes(out).finish());
        copiedTo = r.pos;
      }
    } else r.skipType(tag & 7);
  }
  if (copiedTo === 0) return msg;
  parts.push(msg.subarray(copiedTo));
  return Buffer.concat(parts);
}

function spanEventId(span: Uint8Array): string {
  const r = Reader.create(span);
  let trace = '';
  let id = '';
  while (r.pos < r.len && (!trace || !id)) {
    const tag = r.uint32();
    if (tag === ((1 << 3) | LEN)) trace = Buffer.from(r.bytes()).toString('hex');
    else if (tag === ((2 << 3) | LEN)) id = Buffer.from(r.bytes()).toString('hex');
    else r.skipType(tag & 7);
  }
  return trace + id;
}

/**
 * Appends price and decision attributes to the billed spans of an OTLP protobuf export, byte for byte
 * otherwise (repeated fields may appear anywhere in a message, so appending KeyValues is valid protobuf).
 */
export function stampProtobuf(body: Uint8Array, stamps: Stamps): Uint8Array {
  if (stamps.size === 0) return body;
  return rewrite(body, 1, (resourceSpans) =>
    rewrite(resourceSpans, 2, (scopeSpans) =>
      rewrite(scopeSpans, 2, (span) => {
        const s = stamps.get(spanEventId(span));
        return s ? Buffer.concat([span, encodeAttributes(stampAttributes(s))]) : span;
      }),
    ),
  );
}

type JsonSpan = {
  traceId?: string;
  trace_id?: string;
  spanId?: string;
  span_id?: string;
  attributes?: unknown[];
};

/** The same for OTLP/JSON. */
export function stampJson(body: Uint8Array, stamps: Stamps): Uint8Array {
  if (stamps.size === 0) return body;
  const doc = JSON.parse(Buffer.from(body).toString('utf8')) as {
    resourceSpans?: { scopeSpans?: { spans?: JsonSpan[] }[] }[];
  };
  for (const rs of doc.resourceSpans ?? [])
    for (const ss of rs.scopeSpans ?? [])
      for (const span of ss.spans ?? []) {
        const id = `${String(span.traceId ?? span.trace_id ?? '').toLowerCase()}${String(span.spanId ?? span.span_id ?? '').toLowerCase()}`;
        const s = stamps.get(id);
        if (!s) continue;
        span.attributes ??= [];
        for (const [key, value] of stampAttributes(s)) {
          span.attributes.push({
            key,
            value: typeof value === 'bigint' ? { intValue: value.toString() } : { stringValue: value },
          });
        }
      }
  return Buffer.from(JSON.stringify(doc));
}
