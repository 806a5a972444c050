import {
  DIRECTIVE_ACTIONS,
  DIRECTIVE_SCOPES,
  DIRECTIVES_JSON_KEY,
  DIRECTIVES_PROTO_FIELD,
  type Directive,
  type DirectiveAction,
  type DirectiveScope,
  RESOURCE_SERVICE_INSTANCE_ID,
  RESOURCE_SERVICE_NAME,
} from '@tollgate/contracts';

/**
 * The two pieces of OTLP wire format the exporter writes or reads by hand: the directives in an
 * `ExportTraceServiceResponse` (protobuf field 1000 `TollgateDirectives`, or the JSON key `tollgate`), and
 * the empty export a heartbeat sends. Spans themselves are serialised by @opentelemetry/otlp-transformer.
 */

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

class Reader {
  pos = 0;
  constructor(
    private readonly buf: Uint8Array,
    private readonly end = buf.length,
  ) {}

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint as a JS number (exact up to 2^53, which covers every field we read). */
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++] as number;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw new Error('varint too long');
  }

  bytes(): Uint8Array {
    const len = this.varint();
    const start = this.pos;
    this.pos += len;
    if (this.pos > this.end) throw new Error('truncated field');
    return this.buf.subarray(start, this.pos);
  }

  double(): number {
    if (this.pos + 8 > this.end) throw new Error('truncated double');
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8).getFloat64(0, true);
    this.pos += 8;
    return v;
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint();
    else if (wire === WIRE_FIXED64) this.pos += 8;
    else if (wire === WIRE_LEN) this.bytes();
    else if (wire === WIRE_FIXED32) this.pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
    if (this.pos > this.end) throw new Error('truncated field');
  }
}

const decoder = new TextDecoder();

function decodeDirective(bytes: Uint8Array): Directive | undefined {
  const r = new Reader(bytes);
  const d: Partial<Directive> = { untilUnixMs: 0 };
  while (!r.done) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 1 && wire === WIRE_LEN) d.action = decoder.decode(r.bytes()) as DirectiveAction;
    else if (field === 2 && wire === WIRE_LEN) d.scope = decoder.decode(r.bytes()) as DirectiveScope;
    else if (field === 3 && wire === WIRE_LEN) d.id = decoder.decode(r.bytes());
    else if (field === 4 && wire === WIRE_LEN) d.reason = decoder.decode(r.bytes());
    else if (field === 5 && wire === WIRE_VARINT) {
      const z = r.varint(); // sint64, zigzag
      d.marginBps = z % 2 === 0 ? z / 2 : -(z + 1) / 2;
    } else if (field === 6 && wire === WIRE_FIXED64) d.ratePerSecond = r.double();
    else if (field === 7 && wire === WIRE_LEN) d.customer = decoder.decode(r.bytes());
    else if (field === 8 && wire === WIRE_VARINT) d.untilUnixMs = r.varint();
    else r.skip(wire);
  }
  return validDirective(d);
}

/** Keeps a decoded directive only when it is one this SDK understands. */
export function validDirective(d: Partial<Directive>): Directive | undefined {
  if (!d.action || !(DIRECTIVE_ACTIONS as readonly string[]).includes(d.action)) return undefined;
  if (!d.scope || !(DIRECTIVE_SCOPES as readonly string[]).includes(d.scope)) return undefined;
  if (typeof d.id !== 'string' || typeof d.customer !== 'string' || !d.customer) return undefined;
  const out: Directive = {
    action: d.action,
    scope: d.scope,
    id: d.id || (d.scope === 'customer' ? d.customer : ''),
    customer: d.customer,
    reason: typeof d.reason === 'string' ? d.reason : '',
    untilUnixMs: Number(d.untilUnixMs) || 0,
  };
  if (!out.id) return undefined;
  if (typeof d.marginBps === 'number' && Number.isFinite(d.marginBps)) out.marginBps = d.marginBps;
  if (typeof d.ratePerSecond === 'number' && d.ratePerSecond > 0) out.ratePerSecond = d.ratePerSecond;
  return out;
}

/** Directives in a protobuf `ExportTraceServiceResponse` (field 1000); other fields are skipped. */
export function directivesFromProtobuf(body: Uint8Array): Directive[] {
  const out: Directive[] = [];
  const r = new Reader(body);
  while (!r.done) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === DIRECTIVES_PROTO_FIELD && wire === WIRE_LEN) {
      const inner = new Reader(r.bytes());
      while (!inner.done) {
        const t = inner.varint();
        if (Math.floor(t / 8) === 1 && (t & 7) === WIRE_LEN) {
          const d = decodeDirective(inner.bytes());
          if (d) out.push(d);
        } else inner.skip(t & 7);
      }
    } else r.skip(wire);
  }
  return out;
}

/**
 * Quota leases renewed with an export (`TollgateDirectives.leases`, field 2 of field 1000, each a LeaseGrant
 * as JSON text; in JSON responses `tollgate.leases`). Unreadable entries are skipped.
 */
export function leasesFromResponse(body: Uint8Array, json: boolean): unknown[] {
  if (body.length === 0) return [];
  if (json) {
    const doc = JSON.parse(decoder.decode(body)) as Record<string, unknown> | null;
    const list = (doc?.[DIRECTIVES_JSON_KEY] as { leases?: unknown } | undefined)?.leases;
    return Array.isArray(list) ? list : [];
  }
  const out: unknown[] = [];
  const r = new Reader(body);
  while (!r.done) {
    const tag = r.varint();
    const wire = tag & 7;
    if (Math.floor(tag / 8) === DIRECTIVES_PROTO_FIELD && wire === WIRE_LEN) {
      const inner = new Reader(r.bytes());
      while (!inner.done) {
        const t = inner.varint();
        if (Math.floor(t / 8) === 2 && (t & 7) === WIRE_LEN) {
          try {
            out.push(JSON.parse(decoder.decode(inner.bytes())));
          } catch {
            // skipped
          }
        } else inner.skip(t & 7);
      }
    } else r.skip(wire);
  }
  return out;
}

/**
 * The `partial_success` of an `ExportTraceServiceResponse` (field 1: `rejected_spans` int64 = 1,
 * `error_message` = 2; in JSON `partialSuccess`), when it rejected spans: those calls are not billed.
 */
export function rejectedOf(body: Uint8Array, json: boolean): { spans: number; message: string } | undefined {
  if (body.length === 0) return undefined;
  let spans = 0;
  let message = '';
  if (json) {
    const doc = JSON.parse(decoder.decode(body)) as Record<string, unknown> | null;
    const p = doc?.partialSuccess as { rejectedSpans?: unknown; errorMessage?: unknown } | undefined;
    spans = Number(p?.rejectedSpans ?? 0);
    message = typeof p?.errorMessage === 'string' ? p.errorMessage : '';
  } else {
    const r = new Reader(body);
    while (!r.done) {
      const tag = r.varint();
      const wire = tag & 7;
      if (Math.floor(tag / 8) === 1 && wire === WIRE_LEN) {
        const inner = new Reader(r.bytes());
        while (!inner.done) {
          const t = inner.varint();
          if (t === 8) spans = inner.varint();
          else if (t === 18) message = decoder.decode(inner.bytes());
          else inner.skip(t & 7);
        }
      } else r.skip(wire);
    }
  }
  return Number.isFinite(spans) && spans > 0 ? { spans, message } : undefined;
}

/** Directives in a JSON `ExportTraceServiceResponse` (key `tollgate`). */
export function directivesFromJson(body: Uint8Array): Directive[] {
  if (body.length === 0) return [];
  const doc = JSON.parse(decoder.decode(body)) as Record<string, unknown> | null;
  const list = (doc?.[DIRECTIVES_JSON_KEY] as { directives?: unknown } | undefined)?.directives;
  if (!Array.isArray(list)) return [];
  const out: Directive[] = [];
  for (const raw of list) {
    if (typeof raw !== 'object' || raw === null) continue;
    const d = validDirective(raw as Partial<Directive>);
    if (d) out.push(d);
  }
  return out;
}

const encoder = new TextEncoder();

function varintBytes(n: number): number[] {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

function lenField(field: number, payload: Uint8Array): Uint8Array {
  const head = [...varintBytes(field * 8 + WIRE_LEN), ...varintBytes(payload.length)];
  const out = new Uint8Array(head.length + payload.length);
  out.set(head, 0);
  out.set(payload, head.length);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function keyValue(key: string, value: string): Uint8Array {
  // KeyValue { string key = 1; AnyValue value = 2 }, AnyValue { string string_value = 1 }
  return concat([lenField(1, encoder.encode(key)), lenField(2, lenField(1, encoder.encode(value)))]);
}

/**
 * A heartbeat: an `ExportTraceServiceRequest` with one `ResourceSpans` per instance id and no spans. The
 * processor answers it with the directives of the customers those instances exported calls for.
 */
export function heartbeatRequest(
  format: 'protobuf' | 'json',
  serviceName: string,
  instanceIds: readonly string[],
): Uint8Array {
  if (format === 'json') {
    return encoder.encode(
      JSON.stringify({
        resourceSpans: instanceIds.map((id) => ({
          resource: {
            attributes: [
              { key: RESOURCE_SERVICE_NAME, value: { stringValue: serviceName } },
              { key: RESOURCE_SERVICE_INSTANCE_ID, value: { stringValue: id } },
            ],
          },
          scopeSpans: [],
        })),
      }),
    );
  }
  return concat(
    instanceIds.map((id) =>
      // ResourceSpans { Resource resource = 1 }, Resource { repeated KeyValue attributes = 1 }
      lenField(
        1,
        lenField(
          1,
          concat([
            lenField(1, keyValue(RESOURCE_SERVICE_NAME, serviceName)),
            lenField(1, keyValue(RESOURCE_SERVICE_INSTANCE_ID, id)),
          ]),
        ),
      ),
    ),
  );
}
