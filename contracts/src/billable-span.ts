import {
  ATTR_ERROR_TYPE,
  ATTR_GEN_AI_TOOL_NAME,
  ATTR_GEN_AI_USAGE_INPUT_TOKENS,
  ATTR_GEN_AI_USAGE_OUTPUT_TOKENS,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_MCP_METHOD_NAME,
  ATTR_MCP_PROTOCOL_VERSION,
  ATTR_MCP_SESSION_ID,
  ATTR_NETWORK_TRANSPORT,
  ATTR_RPC_RESPONSE_STATUS_CODE,
  ATTR_TOLLGATE_AGENT,
  ATTR_TOLLGATE_CUSTOMER,
  ATTR_TOLLGATE_SESSION_RULE,
  ATTR_TOLLGATE_TRANSPORT,
  KONG_ROOT_SPAN_NAME,
  MCP_METHOD_TOOLS_CALL,
  MCP_TRANSPORTS,
  type McpTransport,
  RESOURCE_SERVICE_INSTANCE_ID,
  SPAN_KIND_SERVER,
  STATUS_CODE_ERROR,
} from './attributes.js';
import { isSessionRule, type SessionRule, traceSessionId } from './billing-session.js';
import { eventIdFromSpan, isValidSpanId, isValidTraceId } from './event-id.js';
import { boundedText, isValidIdentifier } from './identifiers.js';
import {
  ATTR_TOLLGATE_LEASE_ID,
  ATTR_TOLLGATE_LEASE_RESERVED,
  LEASE_ID_RE,
  MAX_LEASE_MONEY_NANO,
} from './leases.js';
import type { CallSource, RejectReason, ToolCall } from './tool-call.js';

/** An attribute value as decoded from OTLP; arrays and maps are not used for billing and decode to null. */
export type AttrValue = string | number | boolean | null;
export type Attributes = Record<string, AttrValue>;

/** The parts of an OTLP span the billing contract reads. */
export interface SpanView {
  traceId: string;
  spanId: string;
  /** Hex, empty for a root span (`parent_span_id` of OTLP). */
  parentSpanId?: string;
  name: string;
  kind: number;
  startUnixUs: number;
  endUnixUs: number;
  statusCode: number;
  attributes: Attributes;
  resource: Attributes;
  scopeName: string;
}

export interface ExtractOptions {
  /** Customer bound to the ingest key, used when the span carries none. */
  defaultCustomer?: string | undefined;
  /** Name of the instrumentation scope the Tollgate SDK uses (its spans are marked source=sdk). */
  sdkScopeName: string;
  nowUnixUs: number;
  /** Oldest accepted start time, relative to now. */
  maxAgeUs: number;
  /** How far in the future a start time may lie (clock skew). */
  maxFutureUs: number;
  /**
   * Span attributes some rate plan's usage lines read (PlanBook.usageAttributes): their raw values are kept
   * on the call (`usage`) and checked against the customer's plan when it is rated.
   */
  usageAttributes?: readonly string[];
}

export type Extraction =
  | { kind: 'ignored' }
  | { kind: 'call'; call: ToolCall }
  | { kind: 'rejected'; reason: RejectReason; detail: string };

/** gRPC status code names (google.rpc.Code), the form semconv's `rpc.response.status_code` has for gRPC. */
export const GRPC_CODE_NAMES: ReadonlySet<string> = new Set([
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
]);

const INTEGER_TEXT = /^-?[0-9]{1,10}$/;

/** An integer given as an int, a whole double (Kong) or decimal integer text; anything else undefined. */
function integerOf(v: AttrValue | undefined): number | undefined {
  if (typeof v === 'number') return Number.isInteger(v) ? v : undefined;
  if (typeof v === 'string' && INTEGER_TEXT.test(v)) return Number(v);
  return undefined;
}

/**
 * `http.response.status_code`: a status 100–599 as int, whole double or decimal text ("503"). Any other
 * value is not a status and is not read (the call's outcome then comes from the other signals).
 */
export function readHttpStatus(v: AttrValue | undefined): number | undefined {
  const n = integerOf(v);
  return n !== undefined && n >= 100 && n <= 599 ? n : undefined;
}

/**
 * `rpc.response.status_code`: a JSON-RPC error code (semconv sends it as text, "-32602"; 0 is no error) or
 * a gRPC code name ("OK" is success, any other name a failure, stored as `error_type`). Anything else is not
 * a status code and is not read.
 */
export function readRpcStatus(
  v: AttrValue | undefined,
): { failed: false } | { failed: true; errorType: string } | undefined {
  const n = integerOf(v);
  if (n !== undefined) return n === 0 ? { failed: false } : { failed: true, errorType: 'jsonrpc_error' };
  if (typeof v === 'string' && GRPC_CODE_NAMES.has(v)) {
    return v === 'OK' ? { failed: false } : { failed: true, errorType: v };
  }
  return undefined;
}

/** Largest token count or duration we accept from an attribute. */
export const MAX_COUNT = 1e12;

const IGNORED: Extraction = { kind: 'ignored' };

function reject(reason: RejectReason, detail: string): Extraction {
  return { kind: 'rejected', reason, detail };
}

function str(v: AttrValue | undefined): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  return undefined;
}

/**
 * A count attribute: int or double (Kong sends doubles), non-negative, integral. Absent → 0. Present with
 * another type (a boolean, or an array, map, bytes or empty value, which decode as null) → invalid: read as
 * absent, a malformed token count would bill the call with no tokens.
 */
function count(v: AttrValue | undefined): number | undefined {
  if (v === undefined) return 0;
  if (v === null) return undefined;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > MAX_COUNT) return undefined;
  return n;
}

/**
 * The lease a call was taken from. A malformed lease attribute never rejects the call: it is counted as a
 * call without a lease (as a plain OTLP sender's).
 */
function leaseOf(a: Attributes): { id: string; reservedNano: string } | undefined {
  const id = a[ATTR_TOLLGATE_LEASE_ID];
  if (typeof id !== 'string' || !LEASE_ID_RE.test(id)) return undefined;
  const r = a[ATTR_TOLLGATE_LEASE_RESERVED];
  const text = typeof r === 'number' && Number.isSafeInteger(r) ? String(r) : r;
  if (typeof text !== 'string' || !/^\d{1,16}$/.test(text) || BigInt(text) > MAX_LEASE_MONEY_NANO)
    return undefined;
  return { id, reservedNano: text };
}

function transportOf(attrs: Attributes, isKong: boolean): McpTransport {
  const explicit = attrs[ATTR_TOLLGATE_TRANSPORT];
  if (typeof explicit === 'string' && (MCP_TRANSPORTS as readonly string[]).includes(explicit)) {
    return explicit as McpTransport;
  }
  if (isKong) return 'http';
  const net = attrs[ATTR_NETWORK_TRANSPORT];
  if (net === 'pipe') return 'stdio';
  if (net === 'tcp' || net === 'http' || net === 'quic') return 'http';
  return 'unknown';
}

/**
 * The billing session of a span (contracts/src/billing-session.ts). The Tollgate SDK and the Kong plugin
 * decide it where the call happens and send `mcp.session.id` with `tollgate.session.rule`; a plain OTLP
 * sender's `mcp.session.id` is the protocol's own. A span without one that has a parent belongs to its
 * caller's trace (rule 3); a root span without one has no session. (Two functions rather than one
 * returning a pair: this runs for every call on the ingest path.)
 */
function sessionIdOfSpan(span: SpanView): string {
  const id = str(span.attributes[ATTR_MCP_SESSION_ID]);
  if (id) return id;
  if (span.parentSpanId && isValidSpanId(span.parentSpanId) && isValidTraceId(span.traceId)) {
    return traceSessionId(span.traceId);
  }
  return '';
}

/**
 * `service.instance.id` routes directives to an SDK instance and names a lease's holder, and it becomes a
 * Redis key: one that is not an identifier (over 256 characters, control characters) is treated as absent.
 */
function instanceIdOf(resource: SpanView['resource']): string {
  const id = str(resource[RESOURCE_SERVICE_INSTANCE_ID]);
  if (id === undefined) return '';
  // the spans of an export share their resource: check each distinct id once in a row
  if (id === lastValidInstanceId) return id;
  if (!isValidIdentifier(id)) return '';
  lastValidInstanceId = id;
  return id;
}
let lastValidInstanceId = '';

function sessionRuleOfSpan(span: SpanView, sessionId: string): SessionRule | '' {
  if (sessionId === '') return '';
  if (!str(span.attributes[ATTR_MCP_SESSION_ID])) return 'trace';
  const rule = span.attributes[ATTR_TOLLGATE_SESSION_RULE];
  return isSessionRule(rule) ? rule : 'protocol';
}

/**
 * Applies the billable-span contract to one span: a span is a billable tool call when it is a SERVER span
 * (an MCP server's span, or Kong's root span) with `mcp.method.name` = `tools/call` and `gen_ai.tool.name`
 * set. The client side of the same call (a CLIENT span from an instrumented MCP client) is ignored, so a
 * call traced on both ends is billed once. Every other span is ignored (not rejected); a span that claims
 * to be a tool call but breaks the contract is rejected with a reason.
 */
export function extractToolCall(span: SpanView, opts: ExtractOptions): Extraction {
  const a = span.attributes;
  if (a[ATTR_MCP_METHOD_NAME] !== MCP_METHOD_TOOLS_CALL || span.kind !== SPAN_KIND_SERVER) return IGNORED;
  const tool = str(a[ATTR_GEN_AI_TOOL_NAME]);
  if (!tool) return reject('missing_tool_name', `span ${span.spanId}`);
  if (!isValidTraceId(span.traceId)) return reject('invalid_trace_id', `span ${span.spanId}`);
  if (!isValidSpanId(span.spanId)) return reject('invalid_span_id', `trace ${span.traceId}`);

  // an empty attribute names nobody: the next source applies (`||`, not `??`)
  const customer =
    str(a[ATTR_TOLLGATE_CUSTOMER]) || str(span.resource[ATTR_TOLLGATE_CUSTOMER]) || opts.defaultCustomer;
  if (!customer) return reject('missing_customer', `span ${span.spanId}`);
  const agent = str(a[ATTR_TOLLGATE_AGENT]) || str(span.resource[ATTR_TOLLGATE_AGENT]) || '';
  const sessionId = sessionIdOfSpan(span);
  const sessionRule = sessionRuleOfSpan(span, sessionId);
  // checked one by one, in this order (no per-call arrays on the hot path)
  if (!isValidIdentifier(customer)) return reject('invalid_identifier', `customer of span ${span.spanId}`);
  if (!isValidIdentifier(tool)) return reject('invalid_identifier', `tool of span ${span.spanId}`);
  if (agent !== '' && !isValidIdentifier(agent))
    return reject('invalid_identifier', `agent of span ${span.spanId}`);
  if (sessionId !== '' && !isValidIdentifier(sessionId))
    return reject('invalid_identifier', `session of span ${span.spanId}`);

  const inputTokens = count(a[ATTR_GEN_AI_USAGE_INPUT_TOKENS]);
  const outputTokens = count(a[ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]);
  if (inputTokens === undefined || outputTokens === undefined) {
    return reject('invalid_number', `token counts of span ${span.spanId}`);
  }

  const { startUnixUs, endUnixUs } = span;
  if (
    !Number.isFinite(startUnixUs) ||
    !Number.isFinite(endUnixUs) ||
    startUnixUs <= 0 ||
    endUnixUs < startUnixUs ||
    startUnixUs < opts.nowUnixUs - opts.maxAgeUs ||
    startUnixUs > opts.nowUnixUs + opts.maxFutureUs ||
    // a span has ended by the time it is exported; bounding the end bounds the duration (priced per second,
    // landed as an integer below 2^53 µs) by the accepted window
    endUnixUs > opts.nowUnixUs + opts.maxFutureUs
  ) {
    return reject('invalid_timestamp', `span ${span.spanId}`);
  }

  const isKong = span.name === KONG_ROOT_SPAN_NAME;
  const errorType = str(a[ATTR_ERROR_TYPE]) ?? '';
  const httpStatus = readHttpStatus(a[ATTR_HTTP_RESPONSE_STATUS_CODE]);
  const httpFailed = httpStatus !== undefined && httpStatus >= 400;
  const rpc = readRpcStatus(a[ATTR_RPC_RESPONSE_STATUS_CODE]);
  const rpcFailed = rpc?.failed === true;
  const ok = errorType === '' && span.statusCode !== STATUS_CODE_ERROR && !rpcFailed && !httpFailed;

  let source: CallSource = 'otlp';
  if (isKong) source = 'kong';
  else if (span.scopeName === opts.sdkScopeName) source = 'sdk';

  const call: ToolCall = {
    eventId: eventIdFromSpan(span.traceId, span.spanId),
    traceId: span.traceId,
    spanId: span.spanId,
    customer,
    agent,
    sessionId,
    sessionRule,
    tool,
    transport: transportOf(a, isKong),
    ok,
    errorType: ok
      ? ''
      : boundedText(errorType || (httpFailed ? String(httpStatus) : rpcFailed ? rpc.errorType : '_OTHER')),
    startUnixUs,
    durationUs: endUnixUs - startUnixUs,
    inputTokens,
    outputTokens,
    protocolVersion: boundedText(str(a[ATTR_MCP_PROTOCOL_VERSION]) ?? ''),
    source,
    instanceId: instanceIdOf(span.resource),
  };
  const lease = leaseOf(a);
  if (lease) call.lease = lease;
  const ua = opts.usageAttributes;
  if (ua) {
    let usage: Record<string, string | number | boolean | null> | undefined;
    for (let i = 0; i < ua.length; i++) {
      const name = ua[i] as string;
      const v = a[name];
      // null (an array, map, bytes or empty value) is kept: the plan's line finds it malformed, not absent
      if (v === undefined) continue;
      usage ??= {};
      usage[name] = v;
    }
    if (usage) call.usage = usage;
  }
  return { kind: 'call', call };
}
