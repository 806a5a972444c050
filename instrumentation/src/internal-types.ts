/**
 * The parts of `@modelcontextprotocol/sdk` 1.x this instrumentation touches, typed structurally so the SDK
 * is never a runtime dependency (and so a minor SDK release that adds fields does not break the build).
 */
import type { McpAuthInfo } from './types.js';

/** A request handler as stored in `Protocol._requestHandlers`. */
export type RequestHandler = (request: JsonRpcRequestLike, extra: RequestExtraLike) => unknown;

export interface JsonRpcRequestLike {
  method: string;
  params?: {
    name?: unknown;
    arguments?: unknown;
    _meta?: Record<string, unknown>;
    protocolVersion?: unknown;
    clientInfo?: { name?: string; version?: string };
    [key: string]: unknown;
  };
}

/** `RequestHandlerExtra` of the SDK (the second argument of every handler). */
export interface RequestExtraLike {
  signal?: AbortSignal;
  sessionId?: string;
  requestId?: string | number;
  authInfo?: McpAuthInfo;
  requestInfo?: { headers?: Record<string, string | string[] | undefined> };
  _meta?: Record<string, unknown>;
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
}

/** `McpServer` wraps a `Server` in `.server`. */
export interface McpServerLike {
  server: ServerLike;
}

/** What `Server.prototype` exposes to the patch. */
export interface ServerModuleLike {
  Server?: { prototype: ServerLike };
}
