import {
  ATTR_ERROR_TYPE,
  ATTR_GEN_AI_OPERATION_NAME,
  ATTR_GEN_AI_TOOL_NAME,
  ATTR_MCP_METHOD_NAME,
  ATTR_MCP_PROTOCOL_VERSION,
  ATTR_MCP_SESSION_ID,
  ATTR_NETWORK_TRANSPORT,
  ATTR_TOLLGATE_AGENT,
  ATTR_TOLLGATE_CUSTOMER,
  ATTR_TOLLGATE_SESSION_RULE,
  ATTR_TOLLGATE_TRANSPORT,
  type Attributes,
  RESOURCE_SERVICE_INSTANCE_ID,
  type SpanView,
} from '@tollgate/contracts';
import { CHECK_WORK, Turn } from '../turn.js';
import {
  type DecodedExport,
  DecodeError,
  MAX_ATTRIBUTES,
  MAX_GROUPS_PER_EXPORT,
  MAX_SPANS_PER_EXPORT,
  TooManyItemsError,
  tooManyGroups,
  tooManySpans,
} from './decoded.js';
import { Reader } from './proto.js';

/**
 * OTLP protobuf decoding with protobufjs's Reader, walking the wire format field by field (the schema is
 * proto/otlp-trace.proto). It builds only what billing reads — ids as hex, times in µs, scalar
 * attributes in one flat object — and no intermediate message objects, which keeps decoding and GC
 * cheap at tens of thousands of spans per second.
 */

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const _WIRE_FIXED32 = 5;

// tag = field << 3 | wire type
const TAG = (field: number, wire: number) => (field << 3) | wire;
const KV_KEY = TAG(1, WIRE_LEN);
const KV_VALUE = TAG(2, WIRE_LEN);
const ANY_STRING = TAG(1, WIRE_LEN);
const ANY_BOOL = TAG(2, WIRE_VARINT);
const ANY_INT = TAG(3, WIRE_VARINT);
const ANY_DOUBLE = TAG(4, WIRE_FIXED64);
const SPAN_TRACE_ID = TAG(1, WIRE_LEN);
const SPAN_SPAN_ID = TAG(2, WIRE_LEN);
const SPAN_PARENT_SPAN_ID = TAG(4, WIRE_LEN);
const SPAN_NAME = TAG(5, WIRE_LEN);
const SPAN_KIND = TAG(6, WIRE_VARINT);
const SPAN_START = TAG(7, WIRE_FIXED64);
const SPAN_END = TAG(8, WIRE_FIXED64);
const SPAN_ATTRIBUTE = TAG(9, WIRE_LEN);
const SPAN_STATUS = TAG(15, WIRE_LEN);
const STATUS_CODE = TAG(3, WIRE_VARINT);
const SCOPE_NAME = TAG(1, WIRE_LEN);
const RESOURCE_ATTRIBUTE = TAG(1, WIRE_LEN);

type R = InstanceType<typeof Reader>;

/** fixed64 nanoseconds → microseconds, exactly, without BigInt: 2^32 = 4294967 × 1000 + 296. */
function readNanosAsMicros(r: R): number {
  const low = r.fixed32();
  const high = r.fixed32();
  return high * 4_294_967 + Math.floor((high * 296 + low) / 1000);
}

const TWO_32 = 4_294_967_296;

/**
 * int64 varint as a number, read in place: the value protobufjs's `int64()` gives (two's complement; a
 * negative value takes ten bytes), exact below 2^53 in magnitude (every count we bill is capped far below),
 * correctly rounded above. `int64()` built a LongBits object, and a Long, per value: two per span in a
 * tool call's token counts.
 */
function readInt64(r: R): number {
  const b = r.buf;
  const len = r.len;
  let pos = r.pos;
  let lo = 0;
  for (let shift = 0; shift < 28; shift += 7) {
    if (pos >= len) throw new RangeError(`index out of range: ${pos} > ${len}`);
    const byte = b[pos++] as number;
    lo |= (byte & 127) << shift;
    if (byte < 128) {
      r.pos = pos;
      return lo; // below 2^28
    }
  }
  if (pos >= len) throw new RangeError(`index out of range: ${pos} > ${len}`);
  let byte = b[pos++] as number;
  lo = (lo | ((byte & 127) << 28)) >>> 0;
  let hi = (byte & 127) >> 4;
  for (let shift = 3; byte >= 128; shift += 7) {
    if (shift > 31) throw new Error('invalid varint encoding');
    if (pos >= len) throw new RangeError(`index out of range: ${pos} > ${len}`);
    byte = b[pos++] as number;
    hi = (hi | ((byte & 127) << shift)) >>> 0;
  }
  r.pos = pos;
  if (hi >>> 31) {
    // negative: the magnitude is the two's complement of hi:lo
    const mlo = (~lo + 1) >>> 0;
    const mhi = mlo === 0 ? (~hi + 1) >>> 0 : ~hi >>> 0;
    return -(mlo + mhi * TWO_32);
  }
  return lo + hi * TWO_32;
}

/** A length-delimited bytes field as hex, read in place (no slice of the body per id). */
function readHex(r: R): string {
  const len = r.uint32();
  const start = r.pos;
  const end = start + len;
  if (end > r.len) throw new RangeError('bytes length beyond the message');
  r.pos = end;
  const b = r.buf;
  return Buffer.isBuffer(b)
    ? b.toString('hex', start, end)
    : Buffer.from(b.buffer, b.byteOffset + start, len).toString('hex');
}

/** A 31-based hash of `b[start, end)`, seeded with its length: the key and value caches' slot or map key. */
function hashOf(b: Uint8Array, start: number, end: number): number {
  let h = end - start;
  for (let i = start; i < end; i++) h = (Math.imul(h, 31) + (b[i] as number)) | 0;
  return h;
}

/** Whether `a[aFrom, aFrom + len)` holds the same bytes as `b[bFrom, bFrom + len)`. */
function sameBytes(a: Uint8Array, aFrom: number, b: Uint8Array, bFrom: number, len: number): boolean {
  for (let i = 0; i < len; i++) if (a[aFrom + i] !== b[bFrom + i]) return false;
  return true;
}

/**
 * Attribute keys decoded before, by a hash of their bytes (checked byte by byte): every span repeats the
 * same dozen keys, so each is decoded once rather than once per span. Bounded: cleared when full.
 */
const KEY_CACHE_MAX = 4096;
const KEY_MAX_BYTES = 128;
const keyCache = new Map<number, { bytes: Uint8Array; key: string; intern: boolean }>();
/** Whether the key `readKey` returned last is one whose values are interned (see INTERNED), looked up once per cached key. */
let keyInterned = false;

function readKey(r: R): string {
  const at = r.pos;
  const len = r.uint32();
  const start = r.pos;
  const end = start + len;
  if (len > KEY_MAX_BYTES || end > r.len) {
    r.pos = at;
    keyInterned = false;
    return r.string();
  }
  const b = r.buf;
  const h = hashOf(b, start, end);
  const hit = keyCache.get(h);
  if (hit !== undefined && hit.bytes.length === len && sameBytes(hit.bytes, 0, b, start, len)) {
    r.pos = end;
    keyInterned = hit.intern;
    return hit.key;
  }
  r.pos = at;
  const key = r.string();
  keyInterned = INTERNED.has(key);
  if (hit === undefined) {
    if (keyCache.size >= KEY_CACHE_MAX) keyCache.clear();
    // a copy of the bytes, not a view of the body
    keyCache.set(h, { bytes: new Uint8Array(b.subarray(start, end)), key, intern: keyInterned });
  }
  return key;
}

/**
 * Short string values of the attributes a tool call is billed by, decoded before, by a hash of their bytes
 * (checked byte by byte): the spans of an export repeat the same customer, tool, agent, session and protocol
 * version, so each distinct value is decoded once per slot instead of once per span, and the spans share one
 * string instead of holding a string each until they are billed. Direct-mapped: a value replaces whatever held
 * its slot, into preallocated bytes, so nothing is allocated for the cache itself. Only the attributes in
 * INTERNED: a value seen once (a request id, a URL) would pay a hash and a copy of its bytes for nothing
 * (all-distinct values decoded 1.4–1.6× slower through the cache; docs/benchmarks.md, "Decoding: short
 * values shared"). Span names, which OTel's rules keep low-cardinality, go through it as well.
 */
const INTERNED = new Set<string>([
  ATTR_GEN_AI_TOOL_NAME,
  ATTR_TOLLGATE_CUSTOMER,
  ATTR_TOLLGATE_AGENT,
  ATTR_MCP_SESSION_ID,
  ATTR_MCP_METHOD_NAME,
  ATTR_MCP_PROTOCOL_VERSION,
  ATTR_GEN_AI_OPERATION_NAME,
  ATTR_NETWORK_TRANSPORT,
  ATTR_TOLLGATE_TRANSPORT,
  ATTR_TOLLGATE_SESSION_RULE,
  ATTR_ERROR_TYPE,
]);
const VALUE_SLOTS = 4096;
const VALUE_MAX_BYTES = 64;
const valueBytes = new Uint8Array(VALUE_SLOTS * VALUE_MAX_BYTES);
const valueLengths = new Uint8Array(VALUE_SLOTS); // 0: empty slot (the empty string is not cached)
const valueStrings: string[] = new Array<string>(VALUE_SLOTS).fill('');

function readValueString(r: R): string {
  const at = r.pos;
  const len = r.uint32();
  const start = r.pos;
  const end = start + len;
  if (len === 0 || len > VALUE_MAX_BYTES || end > r.len) {
    r.pos = at;
    return r.string();
  }
  const b = r.buf;
  const h = hashOf(b, start, end);
  const slot = (h ^ (h >>> 15)) & (VALUE_SLOTS - 1);
  const off = slot * VALUE_MAX_BYTES;
  if (valueLengths[slot] === len && sameBytes(valueBytes, off, b, start, len)) {
    r.pos = end;
    return valueStrings[slot] as string;
  }
  r.pos = at;
  const value = r.string();
  for (let i = 0; i < len; i++) valueBytes[off + i] = b[start + i] as number;
  valueLengths[slot] = len;
  valueStrings[slot] = value;
  return value;
}

/** One AnyValue: scalars are kept, arrays, maps and bytes become null (billing never reads them). */
function readAnyValue(r: R, end: number, intern: boolean): Attributes[string] {
  let value: Attributes[string] = null;
  while (r.pos < end) {
    const tag = r.uint32();
    switch (tag) {
      case ANY_STRING:
        value = intern ? readValueString(r) : r.string();
        break;
      case ANY_BOOL:
        value = r.bool();
        break;
      case ANY_INT:
        value = readInt64(r);
        break;
      case ANY_DOUBLE:
        value = r.double();
        break;
      default:
        r.skipType(tag & 7);
        value = null;
    }
  }
  return value;
}

function readKeyValue(r: R, into: Attributes): void {
  const end = r.uint32() + r.pos;
  if (end > r.len) throw new RangeError('attribute length beyond the message');
  let key: string | undefined;
  let intern = false;
  let value: Attributes[string] = null;
  while (r.pos < end) {
    const tag = r.uint32();
    if (tag === KV_KEY) {
      key = readKey(r);
      intern = keyInterned;
    } else if (tag === KV_VALUE) {
      const vEnd = r.uint32() + r.pos;
      if (vEnd > end) throw new RangeError('value length beyond the attribute');
      // the key comes first in every encoder we know; a value before its key is decoded the plain way
      value = readAnyValue(r, vEnd, intern);
    } else r.skipType(tag & 7);
  }
  if (r.pos !== end) throw new RangeError('attribute overruns its length');
  if (key !== undefined) into[key] = value;
}

function readAttributesOnly(bytes: Uint8Array, attributeTag: number): Attributes {
  const out: Attributes = {};
  const r = Reader.create(bytes);
  let n = 0;
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === attributeTag) {
      if (++n > MAX_ATTRIBUTES) throw new Error(`more than ${MAX_ATTRIBUTES} attributes`);
      readKeyValue(r, out);
    } else r.skipType(tag & 7);
  }
  return out;
}

/**
 * A span's attributes, as an instance of an empty class rather than a `{}` literal: V8 gives a class's
 * instances room for about ten properties inside the object, where a literal has four and keeps the rest in
 * a property array that it allocates again every three keys (a tool call's span has a dozen).
 */
class SpanAttributes {}

/** One span, read in place: the reader's `len` is the span's end while it runs. */
function readSpan(r: R, resource: Attributes, scopeName: string): SpanView {
  const span: SpanView = {
    traceId: '',
    spanId: '',
    parentSpanId: '',
    name: '',
    kind: 0,
    startUnixUs: 0,
    endUnixUs: 0,
    statusCode: 0,
    attributes: new SpanAttributes() as Attributes,
    resource,
    scopeName,
  };
  let attributes = 0;
  while (r.pos < r.len) {
    const tag = r.uint32();
    switch (tag) {
      case SPAN_TRACE_ID:
        span.traceId = readHex(r);
        break;
      case SPAN_SPAN_ID:
        span.spanId = readHex(r);
        break;
      case SPAN_PARENT_SPAN_ID:
        span.parentSpanId = readHex(r);
        break;
      case SPAN_NAME:
        // low-cardinality by OTel's rules ("tools/call get_forecast"): shared through the value cache too
        span.name = readValueString(r);
        break;
      case SPAN_KIND:
        span.kind = r.int32();
        break;
      case SPAN_START:
        span.startUnixUs = readNanosAsMicros(r);
        break;
      case SPAN_END:
        span.endUnixUs = readNanosAsMicros(r);
        break;
      case SPAN_ATTRIBUTE:
        if (++attributes > MAX_ATTRIBUTES) throw new RangeError(`more than ${MAX_ATTRIBUTES} attributes`);
        readKeyValue(r, span.attributes);
        break;
      case SPAN_STATUS: {
        const end = r.uint32() + r.pos;
        if (end > r.len) throw new RangeError('status length beyond the span');
        while (r.pos < end) {
          const t = r.uint32();
          if (t === STATUS_CODE) span.statusCode = r.int32();
          else r.skipType(t & 7);
        }
        break;
      }
      default:
        r.skipType(tag & 7);
    }
  }
  return span;
}

/** How many fields `nextField` skips before it hands back to its caller, which counts them as work (CHECK_WORK). */
const SKIP_SLICE = 16_384;

/**
 * The next occurrence of the length-delimited `field` in `r`'s message, its bytes a view of the body;
 * `undefined` at the message's end, and `null` after SKIP_SLICE other fields (call it again to go on).
 * Throws on broken framing and when `field` arrives with another wire type (a message field sent as a varint
 * is not an OTLP message).
 */
function nextField(r: R, field: number): Uint8Array | null | undefined {
  for (let skipped = 0; r.pos < r.len; skipped++) {
    if (skipped === SKIP_SLICE) return null;
    const tag = r.uint32();
    // field numbers start at 1: a zero tag is not protobuf (protobuf's own parsers refuse it), and a body of
    // zeros — a gzip bomb inflates to one — would otherwise be skipped two bytes at a time
    if (tag >>> 3 === 0) throw new Error(`invalid tag ${tag} (field number 0) at byte ${r.pos}`);
    if (tag >>> 3 === field) {
      if ((tag & 7) !== WIRE_LEN)
        throw new Error(`field ${field} has wire type ${tag & 7}, expected ${WIRE_LEN}`);
      return r.bytes();
    }
    r.skipType(tag & 7);
  }
  return undefined;
}

/** What a message counts as (`Turn.due`), in bytes, whatever its size: an empty one costs a loop's turn too. */
const MESSAGE_WORK = 64;

/**
 * Decodes an `ExportTraceServiceRequest`. The framing of the request, resource spans and scope spans must
 * be sound (else DecodeError → 400); each span is decoded on its own, so one malformed span is counted
 * and skipped while its siblings are kept. A large export is decoded over several turns of the event loop
 * (`turn`'s slices), so other exports and Redis's replies are served while it is read.
 */
export async function decodeProtobufExport(body: Uint8Array, turn = new Turn()): Promise<DecodedExport> {
  const spans: SpanView[] = [];
  const instanceIds: string[] = [];
  let malformed = 0;
  let groups = 0;
  try {
    const top = Reader.create(body);
    for (;;) {
      const resourceSpans = nextField(top, 1);
      if (resourceSpans === undefined) break;
      if (resourceSpans === null) {
        if (turn.due(CHECK_WORK)) await turn.next(); // SKIP_SLICE fields skipped
        continue;
      }
      if (++groups > MAX_GROUPS_PER_EXPORT) throw tooManyGroups();
      if (turn.due(MESSAGE_WORK)) await turn.next();
      // the resource (field 1) first: the spans below share it
      let resource: Attributes = {};
      const rr = Reader.create(resourceSpans);
      for (let res = nextField(rr, 1); res !== undefined; res = nextField(rr, 1)) {
        if (res !== null) resource = readAttributesOnly(res, RESOURCE_ATTRIBUTE);
        if (turn.due(res === null ? CHECK_WORK : res.length + MESSAGE_WORK)) await turn.next();
      }
      const instanceId = resource[RESOURCE_SERVICE_INSTANCE_ID];
      if (typeof instanceId === 'string' && instanceId) instanceIds.push(instanceId);
      // then each scope spans (field 2), one at a time
      rr.pos = 0;
      for (let scopeSpans = nextField(rr, 2); scopeSpans !== undefined; scopeSpans = nextField(rr, 2)) {
        if (scopeSpans === null) {
          if (turn.due(CHECK_WORK)) await turn.next();
          continue;
        }
        if (++groups > MAX_GROUPS_PER_EXPORT) throw tooManyGroups();
        if (turn.due(MESSAGE_WORK)) await turn.next();
        let scopeName = '';
        const sr = Reader.create(scopeSpans);
        for (let scope = nextField(sr, 1); scope !== undefined; scope = nextField(sr, 1)) {
          if (scope === null) {
            if (turn.due(CHECK_WORK)) await turn.next(); // the lookup skips over the spans
            continue;
          }
          const r = Reader.create(scope);
          while (r.pos < r.len) {
            const tag = r.uint32();
            if (tag === SCOPE_NAME) scopeName = r.string();
            else r.skipType(tag & 7);
          }
        }
        // the spans, each read in place with the reader bounded to it (as a reader of its own bytes would be)
        const r = Reader.create(scopeSpans);
        const len = r.len;
        while (r.pos < len) {
          const tag = r.uint32();
          if (tag >>> 3 === 0) throw new Error(`invalid tag ${tag} (field number 0) at byte ${r.pos}`);
          if (tag >>> 3 !== 2) {
            const at = r.pos;
            r.skipType(tag & 7);
            if (turn.due(r.pos - at + 8)) await turn.next();
            continue;
          }
          if ((tag & 7) !== WIRE_LEN)
            throw new Error(`field 2 has wire type ${tag & 7}, expected ${WIRE_LEN}`);
          const size = r.uint32();
          const end = r.pos + size;
          if (end > len) throw new RangeError(`index out of range: ${r.pos} + ${size} > ${len}`);
          r.len = end;
          if (spans.length + malformed >= MAX_SPANS_PER_EXPORT) throw tooManySpans();
          try {
            spans.push(readSpan(r, resource, scopeName));
          } catch {
            malformed++;
          }
          r.len = len;
          r.pos = end;
          if (turn.due(size + MESSAGE_WORK)) await turn.next();
        }
      }
    }
  } catch (err) {
    if (err instanceof TooManyItemsError) throw err;
    throw new DecodeError(`protobuf ExportTraceServiceRequest is malformed: ${(err as Error).message}`);
  }
  return { spans, malformed, instanceIds };
}
