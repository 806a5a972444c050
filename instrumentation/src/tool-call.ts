import { randomUUID } from 'node:crypto';
import {
  type Attributes,
  type Context,
  context,
  isSpanContextValid,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import {
  ATTR_TOLLGATE_LEASE_ID,
  ATTR_TOLLGATE_LEASE_RESERVED,
  ATTR_TOLLGATE_SESSION_RULE,
  boundedText,
  credentialFingerprint,
  type Directive,
  isValidIdentifier,
  type McpTransport,
  SESSION_PREFIX,
  type SessionRule,
  sessionFromEvidence,
} from '@tollgate/contracts';
import { attributeCopier, type BillingSpan, copyAttributes } from './billing-span.js';
import type { ResolvedConfig } from './config.js';
import { TollgateRefusal, UnbillableToolName } from './errors.js';
import {
  authInfoOf,
  boundedClientInfo,
  type ClientInfo,
  envelopeClientInfo,
  envelopeProtocolVersion,
  hasHttpRequest,
  headerOf,
  headersOf,
  metaOf,
  requestIdOf,
  validProtocolVersion,
} from './inbound.js';
import type {
  JsonRpcRequestLike,
  McpServerLike,
  RegisteredToolLike,
  RequestExtraLike,
  RequestHandler,
  ServerLike,
} from './internal-types.js';
import type { Ticket } from './leases.js';
import { activitySessionsFor, runtimeFor } from './registry.js';
import type { SessionInfo, TollgateRuntime } from './runtime.js';
import {
  ATTR_DIRECTIVE_ID,
  ATTR_DIRECTIVE_MARGIN_BPS,
  ATTR_DIRECTIVE_REASON,
  ATTR_DIRECTIVE_SCOPE,
  ATTR_ERROR_TYPE,
  ATTR_GEN_AI_OPERATION_NAME,
  ATTR_GEN_AI_TOOL_NAME,
  ATTR_GEN_AI_USAGE_INPUT_TOKENS,
  ATTR_GEN_AI_USAGE_OUTPUT_TOKENS,
  ATTR_JSONRPC_REQUEST_ID,
  ATTR_MCP_METHOD_NAME,
  ATTR_MCP_PROTOCOL_VERSION,
  ATTR_MCP_RESULT_TYPE,
  ATTR_MCP_SESSION_ID,
  ATTR_NETWORK_TRANSPORT,
  ATTR_PREFIX_TOLLGATE_USAGE,
  ATTR_RPC_RESPONSE_STATUS_CODE,
  ATTR_TOLLGATE_AGENT,
  ATTR_TOLLGATE_CUSTOMER,
  ATTR_TOLLGATE_TOKENS_ESTIMATED,
  ATTR_TOLLGATE_TRANSPORT,
  ERROR_TYPE_TOOL_ERROR,
  EVENT_TOLLGATE_WARN,
  GEN_AI_OPERATION_EXECUTE_TOOL,
  MCP_METHOD_TOOLS_CALL,
  NETWORK_TRANSPORT_PIPE,
  NETWORK_TRANSPORT_TCP,
} from './semconv.js';
import type { McpRequestInfo } from './types.js';
import {
  argumentsText,
  closeUsage,
  linkUsageToSpan,
  openUsage,
  resultText,
  type UsageRecord,
} from './usage.js';
import { contextFromMeta, resolveIdentity, transportKindOf } from './utils.js';

/** JSON-RPC "Internal error": what the SDK answers when a handler throws something without a code. */
const JSONRPC_INTERNAL_ERROR = -32603;

const ORIGINAL = Symbol.for('@tollgate/instrumentation:original');
const OWNER = Symbol.for('@tollgate/instrumentation:owner');

type Wrapped = RequestHandler & { [ORIGINAL]?: RequestHandler; [OWNER]?: ToolCallTracer };
type OwnedServer = ServerLike & { [OWNER]?: ToolCallTracer };

/** The methods whose handlers are wrapped: tool calls are traced and enforced, `initialize` is gated. */
const WRAPPED_METHODS = ['tools/call', 'initialize'] as const;

const sessions = new WeakMap<ServerLike, SessionInfo>();

/** The `McpServer` that owns a `Server` (when Tollgate saw it): it knows which tools exist. */
const mcpServers = new WeakMap<ServerLike, McpServerLike>();

/** Remembers `mcp` as the owner of its `Server` (it registers that server's `tools/call`). */
export function linkMcpServer(mcp: McpServerLike | undefined): void {
  const server = mcp?.server;
  if (server && typeof server === 'object') mcpServers.set(server, mcp);
}

/**
 * The tool an `McpServer` Tollgate saw registered under `tool`: `null` when the server is not one (a low-level
 * `Server` with a handler of its own decides for itself what exists), `undefined` when it has none of that name.
 */
function registeredTool(server: ServerLike, tool: string): RegisteredToolLike | null | undefined {
  const tools = mcpServers.get(server)?._registeredTools;
  if (!tools || typeof tools !== 'object') return null;
  return Object.hasOwn(tools, tool) ? tools[tool] : undefined;
}

/**
 * Whether a call of `t` runs: not for a name its `McpServer` has no tool of, or a disabled one, which the SDK
 * answers with an error without running anything (`Tool x not found` / `disabled`). Such a call is no tool
 * call: no span, no lease, nothing billed or counted toward a limit.
 */
function toolRuns(t: RegisteredToolLike | null | undefined): boolean {
  return t === null || (t !== undefined && t.enabled !== false);
}

/** Registered tools whose name was found billable (checked once per tool, not once per call). */
const billableTools = new WeakSet<object>();

/**
 * Whether Tollgate can bill a call of this name (`isValidIdentifier`, as the processor checks
 * `gen_ai.tool.name`): for a tool an `McpServer` registered (`t`), checked once; else (a low-level `Server`) per
 * call.
 */
function billableToolName(tool: string, t: RegisteredToolLike | null | undefined): boolean {
  if (t === null || t === undefined || typeof t !== 'object') return isValidIdentifier(tool);
  if (billableTools.has(t)) return true;
  if (!isValidIdentifier(tool)) return false;
  billableTools.add(t);
  return true;
}

/** Transports whose connection is the session (rule 2 of the billing session): one id per connection. */
function isConnectionTransport(kind: McpTransport): boolean {
  return kind === 'stdio' || kind === 'in_memory';
}

/** The connection a call arrived on (one per server and transport; 2.x HTTP makes a server per request). */
function sessionOf(server: ServerLike, extra: RequestExtraLike | undefined): SessionInfo {
  const transport = server.transport;
  let s = sessions.get(server);
  if (!s || s.transport !== transport) {
    const kind = transportKindOf(transport, hasHttpRequest(extra));
    const protocolId = transport?.sessionId;
    let sessionId: string | undefined;
    let sessionRule: SessionRule | undefined;
    if (protocolId) {
      sessionId = protocolId;
      sessionRule = 'protocol';
    } else if (isConnectionTransport(kind)) {
      sessionId = `${SESSION_PREFIX.connection}${randomUUID()}`;
      sessionRule = 'connection';
    }
    s = {
      server,
      transport,
      kind,
      sessionId,
      sessionRule,
      protocolVersion: undefined,
      clientInfo: undefined,
      customer: undefined,
      agent: undefined,
      closing: false,
      tracked: false,
      inFlight: 0,
      template: undefined,
    };
    sessions.set(server, s);
  }
  return s;
}

/**
 * What identity resolvers see of a request. A class, so a call allocates one object: an object literal with
 * a `headers` getter would allocate the getter and its closure per call too. The headers of a 2.x web
 * `Headers` are copied into a record only when a resolver reads them.
 */
class RequestInfo implements McpRequestInfo {
  // declared and assigned in the constructor, not class-field initializers: see `Call`
  declare private headersMemo: McpRequestInfo['headers'] | null;
  declare readonly method: McpRequestInfo['method'];
  declare readonly toolName: string | undefined;
  declare readonly arguments: unknown;
  declare readonly meta: Record<string, unknown> | undefined;
  declare readonly authInfo: McpRequestInfo['authInfo'];
  declare readonly sessionId: string;
  declare readonly transport: McpTransport;
  declare readonly clientInfo: ClientInfo | undefined;
  declare private readonly extra: RequestExtraLike | undefined;
  constructor(
    method: McpRequestInfo['method'],
    toolName: string | undefined,
    args: unknown,
    meta: Record<string, unknown> | undefined,
    authInfo: McpRequestInfo['authInfo'],
    sessionId: string,
    transport: McpTransport,
    clientInfo: ClientInfo | undefined,
    extra: RequestExtraLike | undefined,
  ) {
    this.method = method;
    this.toolName = toolName;
    this.meta = meta;
    this.authInfo = authInfo;
    this.sessionId = sessionId;
    this.transport = transport;
    this.clientInfo = clientInfo;
    this.extra = extra;
    this.headersMemo = null;
    this.arguments = args;
  }

  get headers(): McpRequestInfo['headers'] {
    if (this.headersMemo === null) this.headersMemo = headersOf(this.extra);
    return this.headersMemo;
  }
}

/** Span names by tool (`tools/call <tool>`), so a call does not build its name. Bounded. */
const spanNames = new Map<string, string>();
const MAX_SPAN_NAMES = 1024;

function spanNameOf(tool: string): string {
  let n = spanNames.get(tool);
  if (n === undefined) {
    if (spanNames.size >= MAX_SPAN_NAMES) spanNames.clear();
    n = `${MCP_METHOD_TOOLS_CALL} ${tool}`;
    spanNames.set(tool, n);
  }
  return n;
}

/** Fingerprints of bearer tokens already seen (hashing one costs more than the rest of a call). */
const fingerprints = new Map<string, string>();
const MAX_FINGERPRINTS = 1024;

/** The credential of a call for its `activity` session: a fingerprint of its token, or its OAuth client. */
function credentialOf(info: McpRequestInfo): string {
  const token = info.authInfo?.token;
  if (typeof token === 'string' && token !== '') {
    let f = fingerprints.get(token);
    if (f === undefined) {
      if (fingerprints.size >= MAX_FINGERPRINTS) fingerprints.clear();
      f = credentialFingerprint(token);
      fingerprints.set(token, f);
    }
    return f;
  }
  const clientId = info.authInfo?.clientId;
  return typeof clientId === 'string' ? `client:${clientId}` : '';
}

let lastTemplate: SessionInfo['template'];

/** The attributes every call of a session shares, rebuilt only when one of their inputs changes. */
function sessionAttributes(
  s: SessionInfo,
  sessionId: string,
  rule: SessionRule | undefined,
  customer: string | undefined,
  agent: string | undefined,
  protocolVersion: string | undefined,
): NonNullable<SessionInfo['template']> {
  // a session's own template, else the last one built: 2.x makes a session per request, whose calls mostly
  // share one billing session and identity
  const t = s.template ?? lastTemplate;
  if (
    t &&
    t.kind === s.kind &&
    t.sessionId === sessionId &&
    t.rule === rule &&
    t.customer === customer &&
    t.agent === agent &&
    t.protocolVersion === protocolVersion
  ) {
    s.template = t;
    return t;
  }
  const a: Attributes = {
    [ATTR_MCP_METHOD_NAME]: MCP_METHOD_TOOLS_CALL,
    [ATTR_GEN_AI_OPERATION_NAME]: GEN_AI_OPERATION_EXECUTE_TOOL,
    [ATTR_TOLLGATE_TRANSPORT]: s.kind,
  };
  if (sessionId) a[ATTR_MCP_SESSION_ID] = sessionId;
  if (sessionId && rule) a[ATTR_TOLLGATE_SESSION_RULE] = rule;
  if (protocolVersion) a[ATTR_MCP_PROTOCOL_VERSION] = protocolVersion;
  if (s.kind === 'stdio') a[ATTR_NETWORK_TRANSPORT] = NETWORK_TRANSPORT_PIPE;
  else if (s.kind !== 'unknown' && s.kind !== 'in_memory') a[ATTR_NETWORK_TRANSPORT] = NETWORK_TRANSPORT_TCP;
  if (customer !== undefined) a[ATTR_TOLLGATE_CUSTOMER] = customer;
  if (agent !== undefined) a[ATTR_TOLLGATE_AGENT] = agent;
  const built = {
    kind: s.kind,
    sessionId,
    rule,
    customer,
    agent,
    protocolVersion,
    attributes: a,
    copy: attributeCopier(a, [ATTR_GEN_AI_TOOL_NAME]),
    copyWithRequestId: attributeCopier(a, [ATTR_GEN_AI_TOOL_NAME, ATTR_JSONRPC_REQUEST_ID]),
  };
  s.template = built;
  lastTemplate = built;
  return built;
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof (v as { then?: unknown } | null)?.then === 'function';
}

function warnEvent(d: Directive): Attributes {
  const a: Attributes = {
    [ATTR_DIRECTIVE_SCOPE]: d.scope,
    [ATTR_DIRECTIVE_ID]: d.id,
    [ATTR_DIRECTIVE_REASON]: d.reason,
  };
  if (d.marginBps !== undefined) a[ATTR_DIRECTIVE_MARGIN_BPS] = d.marginBps;
  return a;
}

/**
 * One call in flight, from the moment it arrives: who and what it is (decided before it runs), its usage
 * record (what `reportUsage` adds to), the billing span (always recorded) and the app's span (its own
 * sampling). One object per call, of one shape.
 */
class Call implements UsageRecord {
  // Fields are declared and assigned in the constructor rather than given class-field initializers: V8
  // (Node 20) runs initializers as a separate function defining each field through a define-own-property
  // IC, which was measurable per call (callgrind) against plain stores the constructor's code inlines.
  declare inputTokens: number | undefined;
  declare outputTokens: number | undefined;
  declare quantities: Record<string, number> | undefined;
  declare open: boolean;
  /** The billing session and the rule that gave it (set by `billingSession`). */
  declare sessionId: string;
  declare rule: SessionRule;
  declare protocolVersion: string | undefined;
  declare bill: BillingSpan | undefined;
  declare app: Span | undefined;
  declare appRecording: boolean;
  /** The runtime whose session registry counts this call as running on `s`. */
  declare rt: TollgateRuntime | undefined;
  /** What the call took from its customer's quota lease (given back when the call is not billed). */
  declare ticket: Ticket | undefined;
  declare readonly s: SessionInfo;
  declare readonly info: McpRequestInfo;
  declare readonly customer: string | undefined;
  declare readonly agent: string | undefined;
  constructor(s: SessionInfo, info: McpRequestInfo, customer: string | undefined, agent: string | undefined) {
    this.s = s;
    this.info = info;
    this.customer = customer;
    this.agent = agent;
    this.inputTokens = undefined;
    this.outputTokens = undefined;
    this.quantities = undefined;
    this.open = true;
    this.sessionId = '';
    this.rule = 'activity';
    this.protocolVersion = undefined;
    this.bill = undefined;
    this.app = undefined;
    this.appRecording = false;
    this.rt = undefined;
    this.ticket = undefined;
  }
}

function setBoth(spans: Call, key: string, value: string | number | boolean): void {
  spans.bill?.setAttribute(key, value);
  if (spans.appRecording) spans.app?.setAttribute(key, value);
}

/**
 * Whether a tracer records nothing: the API's no-op tracer, or the global proxy while no SDK is registered
 * (checked per call: an SDK registered later is picked up).
 */
function isNoopTracer(tracer: Tracer): boolean {
  // The answer depends on the tracer and on the global provider's delegate: remembered for the last pair
  // seen, so a call compares two references instead of reading constructor names.
  const provider = trace.getTracerProvider() as { getDelegate?: () => object };
  const delegate = provider.getDelegate?.();
  if (tracer === noopMemo.tracer && delegate === noopMemo.delegate) return noopMemo.noop;
  const name = tracer.constructor?.name;
  const noop =
    name === 'NoopTracer' || (name === 'ProxyTracer' && delegate?.constructor?.name === 'NoopTracerProvider');
  noopMemo.tracer = tracer;
  noopMemo.delegate = delegate;
  noopMemo.noop = noop;
  return noop;
}

const noopMemo: { tracer: Tracer | undefined; delegate: object | undefined; noop: boolean } = {
  tracer: undefined,
  delegate: undefined,
  noop: false,
};

/**
 * Wraps the `tools/call` and `initialize` handlers of MCP servers. Used by the auto-instrumentation
 * (through the patched `Server.prototype.setRequestHandler`) and by `instrumentMcpServer` (per instance).
 */
export class ToolCallTracer {
  private resolved: ResolvedConfig;
  private runtime: TollgateRuntime | undefined;

  constructor(
    config: ResolvedConfig,
    private readonly appTracer: () => Tracer,
    private readonly enabled: () => boolean = () => true,
  ) {
    this.resolved = config;
    this.runtime = runtimeFor(config);
  }

  reconfigure(config: ResolvedConfig): void {
    this.resolved = config;
    this.runtime = runtimeFor(config);
  }

  get billing(): TollgateRuntime | undefined {
    return this.runtime;
  }

  /** Reports a problem through the configured logger (stderr unless silenced). */
  warn(message: string): void {
    this.resolved.logger?.warn(message);
  }

  /** Makes this tracer the one that handles `server`, even if another one wrapped it first. */
  adopt(server: ServerLike): void {
    (server as OwnedServer)[OWNER] = this;
  }

  /** The tracer that handles a server: the one that adopted it, else `fallback`. */
  static ownerOf(server: ServerLike, fallback: ToolCallTracer): ToolCallTracer {
    return (server as OwnedServer)[OWNER] ?? fallback;
  }

  /** Wraps the server's current `tools/call` and `initialize` handlers (idempotent). */
  instrumentHandlers(server: ServerLike): void {
    const handlers = server._requestHandlers;
    if (!(handlers instanceof Map)) return;
    for (const method of WRAPPED_METHODS) {
      const h = handlers.get(method) as Wrapped | undefined;
      if (!h || h[OWNER] === this) continue;
      handlers.set(method, this.wrap(server, method, h[ORIGINAL] ?? h));
    }
  }

  private wrap(
    server: ServerLike,
    method: (typeof WRAPPED_METHODS)[number],
    original: RequestHandler,
  ): Wrapped {
    const self = this;
    const wrapped: Wrapped =
      method === 'tools/call'
        ? function tollgateToolsCall(this: unknown, request, extra) {
            return self.enabled()
              ? self.toolCall(server, original, this, request, extra)
              : original.call(this, request, extra);
          }
        : function tollgateInitialize(this: unknown, request, extra) {
            return self.enabled()
              ? self.initialize(server, original, this, request, extra)
              : original.call(this, request, extra);
          };
    wrapped[ORIGINAL] = original;
    wrapped[OWNER] = this;
    return wrapped;
  }

  private requestInfo(
    method: McpRequestInfo['method'],
    s: SessionInfo,
    request: JsonRpcRequestLike,
    extra: RequestExtraLike | undefined,
    meta: Record<string, unknown> | undefined,
    clientInfo: ClientInfo | undefined,
  ): McpRequestInfo {
    const params = request.params;
    return new RequestInfo(
      method,
      typeof params?.name === 'string' ? params.name : undefined,
      params?.arguments,
      meta,
      authInfoOf(extra),
      extra?.sessionId ?? s.sessionId ?? '',
      s.kind,
      clientInfo,
      extra,
    );
  }

  /** Counts a malformed client-sent `_meta` field (the call goes on without it). */
  private malformed(field: 'traceparent' | 'clientInfo' | 'protocolVersion'): void {
    if (this.runtime) this.runtime.stats.malformedMeta[field]++;
  }

  /**
   * The client's identity for this request: the 2026-07-28 `_meta` envelope's, else what `initialize` told
   * (2025 era), else what the 2.x serving entry seeded on a per-request instance.
   */
  private clientInfoOf(
    s: SessionInfo,
    server: ServerLike,
    meta: Record<string, unknown> | undefined,
    extra: RequestExtraLike | undefined,
  ): ClientInfo | undefined {
    const fromEnvelope = envelopeClientInfo(meta, extra);
    if (fromEnvelope === null) this.malformed('clientInfo');
    else if (fromEnvelope) return fromEnvelope;
    if (s.clientInfo) return s.clientInfo;
    const seeded = boundedClientInfo(server.getClientVersion?.());
    return seeded ?? undefined;
  }

  /** The protocol revision of this request: its envelope's, else negotiated, else the HTTP header. */
  private protocolVersionOf(
    s: SessionInfo,
    server: ServerLike,
    meta: Record<string, unknown> | undefined,
    extra: RequestExtraLike | undefined,
  ): string | undefined {
    const v = envelopeProtocolVersion(meta, extra);
    if (v === null) this.malformed('protocolVersion');
    else if (v) return v;
    return (
      s.protocolVersion ??
      validProtocolVersion(server._negotiatedProtocolVersion) ??
      validProtocolVersion(headerOf(extra, 'mcp-protocol-version'))
    );
  }

  /**
   * The billing session of a call (contracts/src/billing-session.ts): the protocol session, else the stdio
   * connection, else the caller's trace from `_meta.traceparent`, else the caller's activity.
   */
  private billingSession(call: Call): void {
    const { s, info } = call;
    if (s.sessionRule === 'connection' && s.sessionId) {
      // rule 2 with no protocol session to outrank it: what sessionFromEvidence answers, without its objects
      call.sessionId = s.sessionId;
      call.rule = 'connection';
      return;
    }
    // past the return above there is no connection to bill under (rule 2), so the evidence is a protocol
    // session (rule 1) or a traceparent (rule 3); with neither (stateless HTTP without a traceparent) rule 4
    // applies, without sessionFromEvidence's object
    const protocolId = info.sessionId && s.sessionRule !== 'connection' ? info.sessionId : undefined;
    const traceparent = info.meta?.traceparent;
    if (protocolId !== undefined || traceparent !== undefined) {
      const ev = sessionFromEvidence({ protocolSessionId: protocolId, traceparent });
      if (ev.id !== undefined) {
        call.sessionId = ev.id;
        call.rule = ev.rule;
        return;
      }
      if (ev.malformed) this.malformed('traceparent');
    }
    call.sessionId = activitySessionsFor(this.resolved.sessionGapMs).sessionOf(
      call.customer ?? '',
      call.agent ?? '',
      credentialOf(info),
      Date.now(),
    );
    call.rule = 'activity';
  }

  /** A new 2025-era session: remembers who it serves, and refuses it when its customer or agent is killed. */
  private initialize(
    server: ServerLike,
    original: RequestHandler,
    thisArg: unknown,
    request: JsonRpcRequestLike,
    extra: RequestExtraLike,
  ): unknown {
    const s = sessionOf(server, extra);
    const ci = boundedClientInfo(request.params?.clientInfo);
    if (ci === null) this.malformed('clientInfo');
    s.clientInfo = ci ?? undefined;
    const run = () => {
      const out = original.call(thisArg, request, extra);
      const record = (result: unknown) => {
        const v = validProtocolVersion(
          (result as { protocolVersion?: unknown } | undefined)?.protocolVersion,
        );
        if (v) s.protocolVersion = v;
        return result;
      };
      return isThenable(out) ? Promise.resolve(out).then(record) : record(out);
    };
    const rt = this.runtime;
    if (!rt) return run();
    const info = this.requestInfo('initialize', s, request, extra, metaOf(request, extra), s.clientInfo);
    const customer = resolveIdentity(this.resolved.customer, info);
    const agent = resolveIdentity(this.resolved.agent, info);
    const gate = () => {
      const v = rt.store.check(
        { customer, agent, sessionId: info.sessionId, tool: undefined },
        Date.now(),
        'session',
      );
      if (v?.refusal) {
        rt.refused(s, v, 'session');
        return Promise.reject(v.refusal);
      }
      rt.track(s, customer, agent);
      return run();
    };
    return rt.store.hasProvisional(customer) ? rt.awaitSync().then(gate) : gate();
  }

  private toolCall(
    server: ServerLike,
    original: RequestHandler,
    thisArg: unknown,
    request: JsonRpcRequestLike,
    extra: RequestExtraLike,
  ): unknown {
    const name = request.params?.name;
    const registered = typeof name === 'string' ? registeredTool(server, name) : null;
    if (!toolRuns(registered)) return original.call(thisArg, request, extra);
    if (typeof name !== 'string' || !billableToolName(name, registered)) {
      // Tollgate would refuse its span (`invalid_identifier`): the tool would run and nobody would pay
      const rt = this.runtime;
      if (rt) {
        rt.stats.unbillableToolNames++;
        rt.log.problem(
          'tools/call refused: a client sent a tool name Tollgate cannot bill (empty, over 256 characters or with control characters)',
        );
      }
      return Promise.reject(new UnbillableToolName());
    }
    const s = sessionOf(server, extra);
    const meta = metaOf(request, extra);
    const info = this.requestInfo(
      'tools/call',
      s,
      request,
      extra,
      meta,
      this.clientInfoOf(s, server, meta, extra),
    );
    const customer = resolveIdentity(this.resolved.customer, info, s.customer);
    const agent = resolveIdentity(this.resolved.agent, info, s.agent);
    const call = new Call(s, info, customer, agent);
    this.billingSession(call);
    call.protocolVersion = this.protocolVersionOf(s, server, meta, extra);
    const rt = this.runtime;
    if (rt) {
      rt.stats.calls++;
      if (!s.tracked || s.customer !== customer || s.agent !== agent) rt.track(s, customer, agent);
      if (rt.store.size > 0) {
        if (rt.store.hasProvisional(customer)) {
          return rt.awaitSync().then(() => this.checkedCall(rt, call, original, thisArg, request, extra));
        }
        return this.checkedCall(rt, call, original, thisArg, request, extra);
      }
      if (rt.leases) return this.leased(rt, call, undefined, original, thisArg, request, extra);
    }
    return this.traced(rt, call, undefined, undefined, original, thisArg, request, extra);
  }

  /**
   * Takes the call's known price from the customer's quota lease before the tool runs (synchronously when
   * the lease covers it), and refuses it when a hard limit leaves nothing to cover it.
   */
  private leased(
    rt: TollgateRuntime,
    call: Call,
    warnings: Directive[] | undefined,
    original: RequestHandler,
    thisArg: unknown,
    request: JsonRpcRequestLike,
    extra: RequestExtraLike,
  ): unknown {
    const book = rt.leases;
    if (!book) return this.traced(rt, call, warnings, undefined, original, thisArg, request, extra);
    const t = book.take(call.customer, call.info.toolName ?? '', call.sessionId, Date.now());
    if (t instanceof TollgateRefusal) return Promise.reject(t);
    if (!(t instanceof Promise)) return this.traced(rt, call, warnings, t, original, thisArg, request, extra);
    return t.then((r) =>
      r instanceof TollgateRefusal
        ? Promise.reject(r)
        : this.traced(rt, call, warnings, r, original, thisArg, request, extra),
    );
  }

  private checkedCall(
    rt: TollgateRuntime,
    call: Call,
    original: RequestHandler,
    thisArg: unknown,
    request: JsonRpcRequestLike,
    extra: RequestExtraLike,
  ): unknown {
    const v = rt.store.check(
      { customer: call.customer, agent: call.agent, sessionId: call.sessionId, tool: call.info.toolName },
      Date.now(),
    );
    if (v?.refusal) {
      // Refused before the tool runs: no tool-call span, so nothing is billed for it.
      rt.refused(call.s, v, 'call');
      return Promise.reject(v.refusal);
    }
    if (rt.leases) return this.leased(rt, call, v?.warnings, original, thisArg, request, extra);
    return this.traced(rt, call, v?.warnings, undefined, original, thisArg, request, extra);
  }

  private traced(
    rt: TollgateRuntime | undefined,
    call: Call,
    warnings: Directive[] | undefined,
    ticket: Ticket | undefined,
    original: RequestHandler,
    thisArg: unknown,
    request: JsonRpcRequestLike,
    extra: RequestExtraLike,
  ): unknown {
    const info = call.info;
    const tool = info.toolName ?? '';
    const name = spanNameOf(tool);
    // The attributes every call of the session shares are built once per session (and identity).
    const template = sessionAttributes(
      call.s,
      call.sessionId,
      call.rule,
      call.customer,
      call.agent,
      call.protocolVersion,
    );
    // One record per call: the session's attributes copied, then the call's own; the span exports it as is.
    const requestId = requestIdOf(extra);
    const own =
      requestId !== undefined
        ? template.copyWithRequestId(template.attributes, tool, boundedText(String(requestId)))
        : template.copy(template.attributes, tool);
    if (ticket?.leaseId) {
      // what the call took from its lease: the processor settles it against the lease when the span arrives
      own[ATTR_TOLLGATE_LEASE_ID] = ticket.leaseId;
      own[ATTR_TOLLGATE_LEASE_RESERVED] = String(ticket.reserved);
    }

    const active = context.active();
    const parent: Context = info.meta?.traceparent ? contextFromMeta(info.meta, active) : active;
    const parentContext = trace.getSpanContext(parent);
    // The app's span, when the app has an OTel SDK (without one, nothing would record it).
    const tracer = this.appTracer();
    const app = isNoopTracer(tracer)
      ? undefined
      : tracer.startSpan(name, { kind: SpanKind.SERVER, attributes: copyAttributes(own) }, parent);
    const ac = app?.spanContext();
    // The app made a span of its own (recording, or sampled out): the billing span reuses its ids.
    const shared = ac && ac.spanId !== parentContext?.spanId && isSpanContextValid(ac) ? ac : undefined;
    call.app = app;
    call.appRecording = app?.isRecording() === true;
    call.bill = rt?.startSpan(name, own, parentContext, shared);
    call.ticket = ticket;
    openUsage(call, extra);
    if (rt) {
      call.rt = rt;
      call.s.inFlight++;
    }
    if (warnings) {
      for (const d of warnings) {
        const ev = warnEvent(d);
        call.bill?.addEvent(EVENT_TOLLGATE_WARN, ev);
        if (call.appRecording) app?.addEvent(EVENT_TOLLGATE_WARN, ev);
      }
    }
    // The handler runs in the app span's context: the app's child spans follow the app's sampling, never
    // the billing span's (which is always sampled): billing does not force the rest of the trace on.
    let ctx = parent;
    if (app && shared) {
      ctx = trace.setSpan(parent, app);
      linkUsageToSpan(app, call);
    }
    let out: unknown;
    try {
      // with no context to switch to (no app span, no parent from `_meta`), skip the context manager's work
      out =
        ctx === active
          ? original.call(thisArg, request, extra)
          : context.with(ctx, original, thisArg, request, extra);
    } catch (err) {
      this.end(call, extra, undefined, err);
      throw err;
    }
    if (isThenable(out)) {
      return (out as Promise<unknown>).then(
        (result) => {
          this.end(call, extra, result, undefined);
          return result;
        },
        (err: unknown) => {
          this.end(call, extra, undefined, err);
          throw err;
        },
      );
    }
    this.end(call, extra, out, undefined);
    return out;
  }

  private end(call: Call, extra: object | undefined, result: unknown, err: unknown): void {
    closeUsage(call, extra);
    call.rt?.callEnded(call.s);
    if (err === undefined && isInputRequired(result)) {
      this.notBilled(call);
      return;
    }
    const spans = call;
    const usage = call;
    const info = call.info;
    if (err !== undefined) {
      const c = (err as { code?: unknown } | null)?.code;
      const code = typeof c === 'number' && Number.isSafeInteger(c) ? c : JSONRPC_INTERNAL_ERROR;
      setBoth(spans, ATTR_ERROR_TYPE, String(code));
      setBoth(spans, ATTR_RPC_RESPONSE_STATUS_CODE, String(code));
      const status = { code: SpanStatusCode.ERROR, message: (err as Error | null)?.message ?? String(err) };
      spans.bill?.setStatus(status);
      if (spans.appRecording) spans.app?.setStatus(status);
    } else if ((result as { isError?: unknown } | null)?.isError === true) {
      setBoth(spans, ATTR_ERROR_TYPE, ERROR_TYPE_TOOL_ERROR);
      spans.bill?.setStatus({ code: SpanStatusCode.ERROR });
      if (spans.appRecording) spans.app?.setStatus({ code: SpanStatusCode.ERROR });
    }
    let { inputTokens, outputTokens } = usage;
    const countTokens = this.resolved.countTokens;
    if (countTokens && inputTokens === undefined && outputTokens === undefined && err === undefined) {
      try {
        inputTokens = countTokens(argumentsText(info.arguments));
        outputTokens = countTokens(resultText(result));
        setBoth(spans, ATTR_TOLLGATE_TOKENS_ESTIMATED, true);
      } catch {
        // an estimate is best effort: the call is billed without tokens
      }
    }
    if (inputTokens !== undefined) setBoth(spans, ATTR_GEN_AI_USAGE_INPUT_TOKENS, inputTokens);
    if (outputTokens !== undefined) setBoth(spans, ATTR_GEN_AI_USAGE_OUTPUT_TOKENS, outputTokens);
    if (usage.quantities) {
      for (const [k, v] of Object.entries(usage.quantities))
        setBoth(spans, ATTR_PREFIX_TOLLGATE_USAGE + k, v);
    }
    spans.bill?.end();
    spans.app?.end();
  }

  /**
   * A round of a multi-round-trip call (2026-07-28) that asked the client for input: not a billed call. The
   * client sends the call again with the input, and the round that completes it (a result or an error) is
   * the call's one billed span. Its billing span is dropped, what it took from a lease given back, and usage
   * it reported is not carried (rounds may run in different processes): report usage in the final round.
   */
  private notBilled(call: Call): void {
    call.bill?.discard();
    call.app?.setAttribute(ATTR_MCP_RESULT_TYPE, 'input_required');
    call.app?.end();
    const rt = call.rt;
    if (!rt) return;
    rt.stats.inputRequiredRounds++;
    if (call.ticket && call.ticket.reserved > 0)
      rt.leases?.giveBack(call.customer, call.ticket, call.info.toolName ?? '', call.sessionId);
    if (call.inputTokens !== undefined || call.outputTokens !== undefined || call.quantities)
      rt.log.problem(
        'reportUsage in a round that asked for input (input_required) is not billed: report usage in the round that completes the call',
      );
  }
}

/** Whether a tool handler's result is a 2026-07-28 `InputRequiredResult` (the call is not complete). */
function isInputRequired(result: unknown): boolean {
  return (result as { resultType?: unknown } | null | undefined)?.resultType === 'input_required';
}
