import { type Attributes, RESOURCE_SERVICE_INSTANCE_ID, type SpanView } from '@tollgate/contracts';
import { SPAN_WORK, Turn } from '../turn.js';
import {
  checkJsonContainers,
  type DecodedExport,
  DecodeError,
  MAX_ATTRIBUTES,
  MAX_SPANS_PER_EXPORT,
  tooManySpans,
} from './decoded.js';

/**
 * OTLP/JSON (the protobuf JSON mapping with OTLP's exceptions: hex trace/span ids, integer enums, int64
 * as string or number). Both lowerCamelCase and the original snake_case field names are accepted, as the
 * protobuf JSON mapping requires of parsers.
 */
type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function field(o: Obj, camel: string, snake: string): unknown {
  return o[camel] ?? o[snake];
}

function list(o: Obj, camel: string, snake: string, where: string): unknown[] {
  const v = field(o, camel, snake);
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new DecodeError(`${where}.${camel} must be an array`);
  return v;
}

class SpanError extends Error {}

/** int64/fixed64 as JSON number or decimal string. */
function int64(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
  return undefined;
}

function nanosToMicros(v: unknown): number {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'string' && /^\d+$/.test(v)) return Number(BigInt(v) / 1000n);
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return Math.floor(v / 1000);
  throw new SpanError('timestamp is not an unsigned integer');
}

/**
 * One attribute's value. A member that is `null` is absent: the proto3 JSON mapping reads `null` as the field's
 * default, and for a member of AnyValue's oneof that is "not set" (protobuf's own JSON parsers skip it). The
 * OTel JS exporter writes a NaN double so (`JSON.stringify(NaN)` is `null`). A value with no member set is
 * `null` here, as arrays, maps and bytes are: what reads a billing attribute refuses it, the rest ignore it.
 */
function anyValue(v: unknown): Attributes[string] {
  if (!isObj(v)) throw new SpanError('attribute value is not an object');
  const s = field(v, 'stringValue', 'string_value');
  if (s !== undefined && s !== null) {
    if (typeof s !== 'string') throw new SpanError('stringValue is not a string');
    return s;
  }
  const i = field(v, 'intValue', 'int_value');
  if (i !== undefined && i !== null) {
    const n = int64(i);
    if (n === undefined) throw new SpanError('intValue is not an integer');
    return n;
  }
  const d = field(v, 'doubleValue', 'double_value');
  if (d !== undefined && d !== null) {
    // The JSON mapping writes non-finite doubles as strings.
    if (typeof d === 'number') return d;
    if (d === 'NaN' || d === 'Infinity' || d === '-Infinity') return Number(d);
    throw new SpanError('doubleValue is not a number');
  }
  const b = field(v, 'boolValue', 'bool_value');
  if (b !== undefined && b !== null) {
    if (typeof b !== 'boolean') throw new SpanError('boolValue is not a boolean');
    return b;
  }
  return null;
}

function attributes(v: unknown): Attributes {
  const out: Attributes = {};
  if (v === undefined || v === null) return out;
  if (!Array.isArray(v)) throw new SpanError('attributes is not an array');
  if (v.length > MAX_ATTRIBUTES) throw new SpanError(`more than ${MAX_ATTRIBUTES} attributes`);
  for (const kv of v) {
    if (!isObj(kv) || typeof kv.key !== 'string') throw new SpanError('attribute without a string key');
    out[kv.key] = kv.value === undefined || kv.value === null ? null : anyValue(kv.value);
  }
  return out;
}

function idHex(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw new SpanError('id is not a hex string');
  return v.toLowerCase();
}

function span(s: unknown, resource: Attributes, scopeName: string): SpanView {
  if (!isObj(s)) throw new SpanError('span is not an object');
  const kind = field(s, 'kind', 'kind') ?? 0;
  if (typeof kind !== 'number') throw new SpanError('kind is not an integer');
  const name = s.name ?? '';
  if (typeof name !== 'string') throw new SpanError('name is not a string');
  const status = s.status;
  let statusCode = 0;
  if (isObj(status) && status.code !== undefined) {
    if (typeof status.code !== 'number') throw new SpanError('status.code is not an integer');
    statusCode = status.code;
  }
  return {
    traceId: idHex(field(s, 'traceId', 'trace_id')),
    spanId: idHex(field(s, 'spanId', 'span_id')),
    parentSpanId: idHex(field(s, 'parentSpanId', 'parent_span_id')),
    name,
    kind,
    startUnixUs: nanosToMicros(field(s, 'startTimeUnixNano', 'start_time_unix_nano')),
    endUnixUs: nanosToMicros(field(s, 'endTimeUnixNano', 'end_time_unix_nano')),
    statusCode,
    attributes: attributes(s.attributes),
    resource,
    scopeName,
  };
}

/**
 * Decodes an OTLP/JSON export. `JSON.parse` reads the body in one piece (bounded by checkJsonContainers); the
 * spans are then converted over several turns of the event loop (`turn`'s slices) when there are many.
 */
export async function decodeJsonExport(body: Uint8Array, turn = new Turn()): Promise<DecodedExport> {
  checkJsonContainers(body, 'the export');
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
  } catch (err) {
    throw new DecodeError(`body is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObj(doc)) throw new DecodeError('body is not an ExportTraceServiceRequest object');
  const spans: SpanView[] = [];
  const instanceIds: string[] = [];
  let malformed = 0;
  for (const [i, rs] of list(doc, 'resourceSpans', 'resource_spans', 'request').entries()) {
    if (turn.due(SPAN_WORK)) await turn.next();
    if (!isObj(rs)) throw new DecodeError(`resourceSpans[${i}] is not an object`);
    let resource: Attributes;
    try {
      resource = isObj(rs.resource) ? attributes(rs.resource.attributes) : {};
    } catch (err) {
      throw new DecodeError(`resourceSpans[${i}].resource: ${(err as Error).message}`);
    }
    const instanceId = resource[RESOURCE_SERVICE_INSTANCE_ID];
    if (typeof instanceId === 'string' && instanceId) instanceIds.push(instanceId);
    for (const [j, ss] of list(rs, 'scopeSpans', 'scope_spans', `resourceSpans[${i}]`).entries()) {
      if (turn.due(SPAN_WORK)) await turn.next();
      if (!isObj(ss)) throw new DecodeError(`resourceSpans[${i}].scopeSpans[${j}] is not an object`);
      const scopeName = isObj(ss.scope) && typeof ss.scope.name === 'string' ? ss.scope.name : '';
      const listed = list(ss, 'spans', 'spans', `resourceSpans[${i}].scopeSpans[${j}]`);
      if (spans.length + malformed + listed.length > MAX_SPANS_PER_EXPORT) throw tooManySpans();
      for (const s of listed) {
        if (turn.due(SPAN_WORK)) await turn.next();
        try {
          spans.push(span(s, resource, scopeName));
        } catch (err) {
          if (!(err instanceof SpanError)) throw err;
          malformed++;
        }
      }
    }
  }
  return { spans, malformed, instanceIds };
}
