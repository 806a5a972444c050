import { type Context, propagation, ROOT_CONTEXT, type TextMapGetter } from '@opentelemetry/api';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { isValidIdentifier, type McpTransport } from '@tollgate/contracts';
import type { TransportLike } from './internal-types.js';
import type { IdentityResolver, McpRequestInfo } from './types.js';

/**
 * Server transport classes of the MCP TypeScript SDK, by constructor name: 1.x (`@modelcontextprotocol/sdk`)
 * and 2.x (`@modelcontextprotocol/server`: `serveStdio`'s channel, `createMcpHandler`'s per-request
 * transport and its legacy-stateless fallback; `@modelcontextprotocol/node`; the frozen SSE transport of
 * `@modelcontextprotocol/server-legacy`).
 */
const TRANSPORT_BY_CLASS: Record<string, McpTransport> = {
  StdioServerTransport: 'stdio',
  StdioConnectionChannel: 'stdio',
  SSEServerTransport: 'sse',
  StreamableHTTPServerTransport: 'streamable_http',
  WebStandardStreamableHTTPServerTransport: 'streamable_http',
  NodeStreamableHTTPServerTransport: 'streamable_http',
  PerRequestHTTPServerTransport: 'streamable_http',
  InMemoryTransport: 'in_memory',
};

/** The MCP transport of a server connection; a transport we cannot name that carried HTTP is `http`. */
export function transportKindOf(transport: TransportLike | undefined, hasHttpRequest: boolean): McpTransport {
  const name = (transport as { constructor?: { name?: string } } | undefined)?.constructor?.name;
  const known = name ? TRANSPORT_BY_CLASS[name] : undefined;
  if (known) return known;
  return hasHttpRequest ? 'http' : 'unknown';
}

const metaGetter: TextMapGetter<Record<string, unknown>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const v = carrier[key];
    return typeof v === 'string' ? v : undefined;
  },
};

const W3C = new CompositePropagator({
  propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
});

/**
 * The parent context a client sent in `params._meta` (`traceparent`, `tracestate`, `baggage`), through the
 * app's global propagator when it has one, else W3C trace context and baggage.
 */
export function contextFromMeta(meta: Record<string, unknown>, active: Context): Context {
  const fromGlobal = propagation.fields().length > 0;
  return (fromGlobal ? propagation : W3C).extract(active ?? ROOT_CONTEXT, meta, metaGetter);
}

/** `http://host:4318` → `http://host:4318/v1/traces`; a URL that already names a path is kept. */
export function tracesUrl(endpoint: string): string {
  const u = new URL(endpoint);
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/traces';
  return u.toString();
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** Built-in resolvers, to compose with `firstOf` in `customer` / `agent` options. */
export const resolvers = {
  /** A field of `authInfo.extra` (set by your auth middleware on HTTP transports): trusted. */
  fromAuthExtra:
    (key: string): IdentityResolver =>
    (r) =>
      str(r.authInfo?.extra?.[key]),
  /** The OAuth client id of the bearer token (`authInfo.clientId`): trusted. */
  fromAuthClientId: (): IdentityResolver => (r) => str(r.authInfo?.clientId),
  /** A key of `params._meta` (client-supplied: trust it only behind your own gateway). */
  fromMeta:
    (key: string): IdentityResolver =>
    (r) =>
      str(r.meta?.[key]),
  /** `clientInfo.name` of the client: from the request's `_meta` envelope (2026-07-28) or `initialize` (client-supplied). */
  fromClientInfo: (): IdentityResolver => (r) => str(r.clientInfo?.name),
  /**
   * An environment variable (a stdio server is started for one customer), read once when the resolver is
   * made: `process.env` lookups cost about a microsecond each, too much for every call.
   */
  fromEnv: (name: string, env: NodeJS.ProcessEnv = process.env): IdentityResolver => {
    const value = str(env[name]);
    return () => value;
  },
  /** An HTTP request header (lower case), e.g. one your gateway sets. */
  fromHeader:
    (name: string): IdentityResolver =>
    (r) => {
      const v = r.headers?.[name];
      return str(Array.isArray(v) ? v[0] : v);
    },
  /** The first resolver that knows. */
  firstOf:
    (...list: IdentityResolver[]): IdentityResolver =>
    (r) => {
      for (const f of list) {
        const v = f(r);
        if (v !== undefined) return v;
      }
      return undefined;
    },
};

/** The default customer: `authInfo.extra.customerId` (HTTP, trusted), else `TOLLGATE_CUSTOMER_ID`. */
export function defaultCustomerResolver(env: NodeJS.ProcessEnv = process.env): IdentityResolver {
  return resolvers.firstOf(
    resolvers.fromAuthExtra('customerId'),
    resolvers.fromEnv('TOLLGATE_CUSTOMER_ID', env),
  );
}

/**
 * The default agent: `authInfo.clientId` (trusted), else `TOLLGATE_AGENT_ID`, else the client's
 * `clientInfo.name` (per request on 2026-07-28, from `initialize` before it).
 */
export function defaultAgentResolver(env: NodeJS.ProcessEnv = process.env): IdentityResolver {
  return resolvers.firstOf(
    resolvers.fromAuthClientId(),
    resolvers.fromEnv('TOLLGATE_AGENT_ID', env),
    resolvers.fromClientInfo(),
  );
}

/**
 * Runs a resolver guarded: a resolver that throws or returns something Tollgate would reject (too long,
 * control characters) yields `undefined` instead of breaking the call or the span.
 */
export function resolveIdentity(
  resolver: IdentityResolver,
  request: McpRequestInfo,
  /** The value the session had (already validated): the common case skips the check. */
  previous?: string,
): string | undefined {
  let v: unknown;
  try {
    v = resolver(request);
  } catch {
    return undefined;
  }
  if (v === previous) return previous;
  return typeof v === 'string' && isValidIdentifier(v) ? v : undefined;
}

/** A non-negative integer count, or undefined. */
export function count(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.round(v) : undefined;
}
