import { type Attributes, RESOURCE_SERVICE_INSTANCE_ID, type SpanView } from '@tollgate/contracts';
import { type DecodedExport, DecodeError } from './decoded.js';
import { type Long, ProtoResource, ProtoScope, ProtoSpan, Reader } from './proto.js';

interface PAnyValue {
  value?: string;
  stringValue?: string;
  boolValue?: boolean;
  intValue?: Long | number;
  doubleValue?: number;
}
interface PKeyValue {
  key: string;
  value?: PAnyValue | null;
}
interface PSpan {
  traceId: Uint8Array;
  spanId: Uint8Array;
  name: string;
  kind: number;
  startTimeUnixNano: Long | number;
  endTimeUnixNano: Long | number;
  attributes: PKeyValue[];
  status?: { code: number } | null;
}

const WIRE_LEN = 2;

/** int64 to number; values beyond 2^53 lose precision, and every count we read is capped far below. */
function longToNumber(v: Long | number): number {
  return typeof v === 'number' ? v : v.high * 4_294_967_296 + (v.low >>> 0);
}

/** Nanoseconds (fixed64) to microseconds, exactly. */
function nanosToMicros(v: Long | number): number {
  if (typeof v === 'number') return Math.floor(v / 1000);
  const n = (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  return Number(n / 1000n);
}

export function attributesOf(kvs: PKeyValue[] | undefined): Attributes {
  const out: Attributes = {};
  if (!kvs) return out;
  for (const kv of kvs) {
    const v = kv.value;
    switch (v?.value) {
      case 'stringValue':
        out[kv.key] = v.stringValue as string;
        break;
      case 'intValue':
        out[kv.key] = longToNumber(v.intValue as Long | number);
        break;
      case 'doubleValue':
        out[kv.key] = v.doubleValue as number;
        break;
      case 'boolValue':
        out[kv.key] = v.boolValue as boolean;
        break;
      default:
        out[kv.key] = null;
    }
  }
  return out;
}

function hex(bytes: Uint8Array | undefined): string {
  return bytes ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex') : '';
}

/**
 * Calls `fn` with each occurrence of the length-delimited `field` in `buf`. Throws on broken framing and
 * when `field` arrives with another wire type (a message field sent as a varint is not an OTLP message).
 */
function eachField(buf: Uint8Array, field: number, fn: (bytes: Uint8Array) => void): void {
  const r = Reader.create(buf);
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === field) {
      if ((tag & 7) !== WIRE_LEN)
        throw new Error(`field ${field} has wire type ${tag & 7}, expected ${WIRE_LEN}`);
      fn(r.bytes());
    } else r.skipType(tag & 7);
  }
}

/**
 * Decodes an `ExportTraceServiceRequest`. The framing of the request, resource spans and scope spans must
 * be sound (else DecodeError → 400); each span is decoded on its own, so one malformed span is counted
 * and skipped while its siblings are kept.
 */
export function decodeProtobufExport(body: Uint8Array): DecodedExport {
  const spans: SpanView[] = [];
  const instanceIds: string[] = [];
  let malformed = 0;
  try {
    eachField(body, 1, (resourceSpans) => {
      let resource: Attributes = {};
      const scopeSpansList: Uint8Array[] = [];
      eachField(resourceSpans, 1, (res) => {
        resource = attributesOf(
          (ProtoResource.decode(res) as unknown as { attributes: PKeyValue[] }).attributes,
        );
      });
      eachField(resourceSpans, 2, (ss) => scopeSpansList.push(ss));
      const instanceId = resource[RESOURCE_SERVICE_INSTANCE_ID];
      if (typeof instanceId === 'string' && instanceId) instanceIds.push(instanceId);
      for (const scopeSpans of scopeSpansList) {
        let scopeName = '';
        eachField(scopeSpans, 1, (scope) => {
          scopeName = (ProtoScope.decode(scope) as unknown as { name: string }).name;
        });
        eachField(scopeSpans, 2, (spanBytes) => {
          let s: PSpan;
          try {
            s = ProtoSpan.decode(spanBytes) as unknown as PSpan;
          } catch {
            malformed++;
            return;
          }
          spans.push({
            traceId: hex(s.traceId),
            spanId: hex(s.spanId),
            name: s.name,
            kind: s.kind,
            startUnixUs: nanosToMicros(s.startTimeUnixNano),
            endUnixUs: nanosToMicros(s.endTimeUnixNano),
            statusCode: s.status?.code ?? 0,
            attributes: attributesOf(s.attributes),
            resource,
            scopeName,
          });
        });
      }
    });
  } catch (err) {
    throw new DecodeError(`protobuf ExportTraceServiceRequest is malformed: ${(err as Error).message}`);
  }
  return { spans, malformed, instanceIds };
}
