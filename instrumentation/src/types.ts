import type { InstrumentationConfig } from '@opentelemetry/instrumentation';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { Directive, McpTransport } from '@tollgate/contracts';

/** What a resolver knows about the request it resolves a customer or agent for. */
export interface McpRequestInfo {
  /** `tools/call`, or `initialize` when a new session is being opened. */
  method: 'tools/call' | 'initialize';
  /** The tool being called (`tools/call` only). */
  toolName: string | undefined;
  /** The tool arguments (`tools/call` only). */
  arguments: unknown;
  /** `params._meta` of the request, as sent by the client (untrusted). */
  meta: Readonly<Record<string, unknown>> | undefined;
  /** Auth info the HTTP transport attached after the server's auth middleware validated the token (trusted). */
  authInfo: McpAuthInfo | undefined;
  /**
   * The connection's session, when it has one: the protocol's session id (2025-era sessionful transports) or
   * the stdio connection id. Empty on stateless HTTP. The call's billing session (which may come from the
   * caller's trace or its activity) is decided after the customer and agent are known.
   */
  sessionId: string;
  transport: McpTransport;
  /**
   * The client's `clientInfo` (untrusted): from this request's `_meta` envelope on the 2026-07-28 revision,
   * from `initialize` before it. Bounded: a name that is not a valid identifier (over 256 characters,
   * control characters) is dropped.
   */
  clientInfo: { name?: string; version?: string } | undefined;
  /** HTTP request headers (HTTP transports only). */
  headers: Readonly<Record<string, string | string[] | undefined>> | undefined;
}

/** The fields of the MCP SDK's `AuthInfo` a resolver may read. */
export interface McpAuthInfo {
  token?: string;
  clientId?: string;
  scopes?: string[];
  extra?: Record<string, unknown>;
}

/** Returns the customer (who pays) or agent (which caller) of a request; `undefined` when it does not know. */
export type IdentityResolver = (request: McpRequestInfo) => string | undefined;

/** Usage a tool reports from inside its handler (see `reportUsage`). */
export interface ToolUsage {
  /** `gen_ai.usage.input_tokens`. */
  inputTokens?: number;
  /** `gen_ai.usage.output_tokens`. */
  outputTokens?: number;
  /** Any other quantity a plan prices, written as `tollgate.usage.<name>` (non-negative numbers). */
  quantities?: Record<string, number>;
}

/** What a directive hook may change about the default action. Absent fields keep the default. */
export interface DirectiveHookResult {
  /** `false`: do not act on this directive at all (no refusals, no closes, no warn events). */
  enforce?: boolean;
  /** kill only: close the transports of the live sessions the kill covers (default `closeSessionsOnKill`). */
  closeSessions?: boolean;
  /** kill only, stdio: end the process once its session is closed (default `exitOnStdioKill`). */
  exitProcess?: boolean;
}

/**
 * Called once for each directive that changes what the SDK enforces (a new kill, throttle, warn or resume
 * for a customer, agent, session or tool). Runs guarded: a hook that throws is logged and ignored.
 */
// biome-ignore lint/suspicious/noConfusingVoidType: a hook that returns nothing (keep the defaults) is the common case
export type DirectiveHook = (directive: Readonly<Directive>) => DirectiveHookResult | undefined | void;

export interface TollgateLogger {
  warn(message: string): void;
  info?(message: string): void;
}

/** Where billing spans go and where directives come from. */
export interface TollgateExportConfig {
  /**
   * OTLP/HTTP endpoint billing spans are sent to: Tollgate's receiver, or your own OTel Collector. A base URL
   * (`http://127.0.0.1:4318`) gets `/v1/traces` appended. Env: `TOLLGATE_OTLP_ENDPOINT`.
   */
  endpoint?: string;
  /** Ingest key, sent as `Authorization: Bearer <key>`. Env: `TOLLGATE_INGEST_KEY`. */
  ingestKey?: string;
  /** Extra HTTP headers on every export. */
  headers?: Record<string, string>;
  /**
   * When spans go through your Collector (which does not relay directives), Tollgate's own receiver:
   * heartbeats are sent there at every interval and its answers carry the directives.
   * Env: `TOLLGATE_DIRECTIVES_ENDPOINT`.
   */
  directivesEndpoint?: string;
  /** Wire format of exports (default `protobuf`). */
  format?: 'protobuf' | 'json';
  /** Compression of exports (default `none`). */
  compression?: 'gzip' | 'none';
  /** How long a finished tool-call span waits before it is exported, in ms (default 1000). */
  exportIntervalMs?: number;
  /** An idle SDK sends an empty export this often to learn of kills, in ms (default 2000). */
  heartbeatIntervalMs?: number;
  /** Timeout of one export request, in ms (default 5000). */
  timeoutMs?: number;
  /** Spans kept for retry while Tollgate is unreachable; the oldest are dropped beyond it (default 50000). */
  maxBufferedSpans?: number;
  /** While Tollgate is unreachable, one log line per this interval, in ms (default 60000). */
  logIntervalMs?: number;
  /**
   * File that remembers directives and this service's recent instance ids across restarts, so a restarted
   * stdio server refuses a killed customer before its first call. `false` disables it. Default: a file per
   * service name and endpoint under the OS temp directory.
   */
  stateFile?: string | false;
  /** How long a new session waits for the first answer from Tollgate when a remembered kill concerns it (default 1500 ms). */
  startupSyncTimeoutMs?: number;
}

/** Quota leases (reserve, then settle): see docs/enforcement.md, "Leases". */
export interface TollgateLeaseConfig {
  /** How long a call waits for a lease when the book cannot cover it, in ms (default 250). */
  timeoutMs?: number;
  /**
   * How long the first calls of a customer in this process wait for Tollgate's first answer about it, in ms
   * (default 2000; never less than `timeoutMs`). Until that answer nothing is known of the customer's limits:
   * a burst that ran fail-open at `timeoutMs` on a slow Tollgate ran past them.
   */
  firstTimeoutMs?: number;
  /**
   * When no lease can be had in time (Tollgate or its Redis unreachable): `open` runs the call without one
   * (it is still billed and enforced when its span arrives; default), `closed` refuses it (code -32052).
   */
  failMode?: 'open' | 'closed';
  /** A lease is sized to last this long at the recent call rate, in ms (default 2000). */
  windowMs?: number;
}

export interface McpInstrumentationConfig extends InstrumentationConfig, TollgateExportConfig {
  /**
   * Quota leases: every call takes its known price from a lease Tollgate granted this process before the
   * tool runs, so hard limits hold with no overage (instead of one export interval's). `true` for the
   * defaults. Needs the built-in exporter (an endpoint). Env: `TOLLGATE_LEASES=1`. Default off.
   */
  leases?: boolean | TollgateLeaseConfig;
  /** `service.name` of the billing resource (default `OTEL_SERVICE_NAME`, else `mcp-server`). */
  serviceName?: string;
  /** Extra resource attributes of the billing spans. */
  resourceAttributes?: Record<string, string>;
  /**
   * Replaces the OTLP exporter of billing spans (tests, benchmarks, custom pipelines). Directives are only
   * read by the built-in exporter.
   */
  billingExporter?: SpanExporter;
  /** Who pays for a call. Default: `authInfo.extra.customerId`, then `TOLLGATE_CUSTOMER_ID`. */
  customer?: IdentityResolver;
  /** Which caller made it. Default: `authInfo.clientId`, then `TOLLGATE_AGENT_ID`, then `clientInfo.name`. */
  agent?: IdentityResolver;
  /**
   * Inactivity gap of the `activity` billing session (calls of one customer + agent + credential with no
   * more than this between them are one session), in ms. Default 30 min. Env: `TOLLGATE_SESSION_GAP_MS`.
   */
  sessionGapMs?: number;
  /** Estimate tokens with a real tokenizer (`gpt-tokenizer`, o200k) when a handler reports none (default false). */
  estimateTokens?: boolean;
  /** Overrides the default action of each directive. */
  onDirective?: DirectiveHook;
  /** Close the transports of sessions a kill covers (default true). */
  closeSessionsOnKill?: boolean;
  /** End a stdio server process whose session was killed, after flushing its spans (default true). */
  exitOnStdioKill?: boolean;
  /** Where the SDK reports that Tollgate is unreachable and similar (default: stderr). `false` silences it. */
  logger?: TollgateLogger | false;
}
