/**
 * The parts of the MCP TypeScript SDK this instrumentation touches, typed structurally so the SDK is never a
 * runtime dependency (and so a minor SDK release that adds fields does not break the build). Two lines:
 * 1.x (`@modelcontextprotocol/sdk`) and 2.x (`@modelcontextprotocol/server`); both keep request handlers in
 * `Protocol._requestHandlers` and register them through `setRequestHandler`, but the second argument of a
 * handler differs (1.x `RequestHandlerExtra`, 2.x the request context `ctx`).
 */
import type { McpAuthInfo } from './types.js';

/** A request handler as stored in `Protocol._requestHandlers` (either line). */
export type RequestHandler = (request: JsonRpcRequestLike, extra: RequestExtraLike) => unknown;

export interface JsonRpcRequestLike {
  method: string;
  params?: {
    name?: unknown;
    arguments?: unknown;
    _meta?: Record<string, unknown>;
    protocolVersion?: unknown;
    clientInfo?: unknown;
    [key: string]: unknown;
  };
}

/** Headers as a 2.x handler sees them (a web-standard `Headers` of the inbound `Request`). */
export interface WebHeadersLike {
  get(name: string): string | null;
  forEach(cb: (value: string, key: string) => void): void;
}

/**
 * The second argument of a handler: 1.x `RequestHandlerExtra` (`sessionId`, `requestId`, `authInfo`,
 * `requestInfo.headers`, `signal`) or 2.x `ServerContext` (`sessionId`, `mcpReq.{id,_meta,envelope,signal}`,
 * `http.{authInfo,req}`). Both shapes are read through `readInbound`.
 */
export interface RequestExtraLike {
  signal?: AbortSignal;
  sessionId?: string;
  requestId?: string | number;
  authInfo?: McpAuthInfo;
  requestInfo?: { headers?: Record<string, string | string[] | undefined> };
  _meta?: Record<string, unknown>;
  mcpReq?: {
    id?: string | number;
    _meta?: Record<string, unknown>;
    /** 2026-07-28: the request's `_meta` envelope (protocol version, clientInfo, client capabilities). */
    envelope?: Record<string, unknown>;
    signal?: AbortSignal;
  };
  http?: { authInfo?: McpAuthInfo; req?: { headers?: WebHeadersLike } };
}

/** A transport as seen by the server (`Protocol.transport`). */
export interface TransportLike {
  sessionId?: string;
  close(): Promise<void>;
}

/** The low-level `Server` (and `Protocol`): what we read and patch on it. */
export interface ServerLike {
  _requestHandlers: Map<string, RequestHandler>;
  setRequestHandler(...args: unknown[]): unknown;
  readonly transport?: TransportLike | undefined;
  close(): Promise<void>;
  getClientVersion?(): { name?: string; version?: string } | undefined;
  /** 2.x: the protocol revision the instance serves (set by the serving entry or `initialize`). */
  _negotiatedProtocolVersion?: string;
}

/** A tool an `McpServer` registered (what billing reads of it). */
export interface RegisteredToolLike {
  enabled?: boolean;
}

/** `McpServer` wraps a `Server` in `.server`, and keeps its tools by name (both lines). */
export interface McpServerLike {
  server: ServerLike;
  _registeredTools?: Record<string, RegisteredToolLike | undefined>;
  /** Registers `tools/list` and `tools/call` on `.server` (called at the first tool, both lines). */
  setToolRequestHandlers?(...args: unknown[]): unknown;
}

/** What `Server.prototype` (and, where the module has it, `McpServer.prototype`) exposes to the patch. */
export interface ServerModuleLike {
  Server?: { prototype: ServerLike };
  McpServer?: { prototype: McpServerLike };
}
