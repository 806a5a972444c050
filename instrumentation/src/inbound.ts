import { isValidIdentifier } from '@tollgate/contracts';
import type { JsonRpcRequestLike, RequestExtraLike } from './internal-types.js';
import type { McpAuthInfo } from './types.js';

/**
 * Reads what a request handler was given — a 1.x `RequestHandlerExtra` or a 2.x request context — into the
 * few facts billing needs, so the rest of the package never branches on the SDK line. Everything a client
 * sent is untrusted: values are validated and bounded here, and what is malformed is reported (the caller
 * counts it) and treated as absent, never allowed to break the tool call.
 */

/** Reserved `_meta` envelope keys of the 2026-07-28 revision (the 2.x SDK lifts them into `ctx.mcpReq.envelope`). */
export const META_PROTOCOL_VERSION = 'io.modelcontextprotocol/protocolVersion';
export const META_CLIENT_INFO = 'io.modelcontextprotocol/clientInfo';

/** MCP protocol revisions are dates. */
const PROTOCOL_VERSION = /^\d{4}-\d{2}-\d{2}$/;

export type MalformedField = 'traceparent' | 'clientInfo' | 'protocolVersion';

export function requestIdOf(extra: RequestExtraLike | undefined): string | number | undefined {
  return extra?.requestId ?? extra?.mcpReq?.id;
}

export function authInfoOf(extra: RequestExtraLike | undefined): McpAuthInfo | undefined {
  return extra?.authInfo ?? extra?.http?.authInfo;
}

/** `params._meta` as the handler sees it (the 2.x SDK has already lifted the envelope keys out of it). */
export function metaOf(
  request: JsonRpcRequestLike,
  extra: RequestExtraLike | undefined,
): Record<string, unknown> | undefined {
  const m = request.params?._meta ?? extra?.mcpReq?._meta;
  return m !== null && typeof m === 'object' && !Array.isArray(m) ? m : undefined;
}

/** Whether the call arrived over HTTP (either SDK line). */
export function hasHttpRequest(extra: RequestExtraLike | undefined): boolean {
  return extra?.requestInfo !== undefined || extra?.http?.req !== undefined;
}

/** One request header (lower-case name), from either SDK line. */
export function headerOf(extra: RequestExtraLike | undefined, name: string): string | undefined {
  const plain = extra?.requestInfo?.headers?.[name];
  if (plain !== undefined) return Array.isArray(plain) ? plain[0] : plain;
  return extra?.http?.req?.headers?.get(name) ?? undefined;
}

/** All request headers as a plain record (for identity resolvers); built only when a resolver asks. */
export function headersOf(
  extra: RequestExtraLike | undefined,
): Readonly<Record<string, string | string[] | undefined>> | undefined {
  if (extra?.requestInfo?.headers) return extra.requestInfo.headers;
  const h = extra?.http?.req?.headers;
  if (!h) return undefined;
  const out: Record<string, string> = {};
  h.forEach((value, key) => {
    out[key] = value;
  });
  return out;
}

function envelopeValue(
  meta: Record<string, unknown> | undefined,
  extra: RequestExtraLike | undefined,
  key: string,
): unknown {
  const env = extra?.mcpReq?.envelope;
  if (env && key in env) return env[key];
  return meta?.[key];
}

/**
 * The protocol revision this request declares in its 2026-07-28 `_meta` envelope; `undefined` when it has
 * none (2025-era requests), `null` when it has a malformed one.
 */
export function envelopeProtocolVersion(
  meta: Record<string, unknown> | undefined,
  extra: RequestExtraLike | undefined,
): string | null | undefined {
  const v = envelopeValue(meta, extra, META_PROTOCOL_VERSION);
  if (v === undefined) return undefined;
  return typeof v === 'string' && PROTOCOL_VERSION.test(v) ? v : null;
}

/** A protocol version from anywhere else (`initialize`, a header): valid or undefined. */
export function validProtocolVersion(v: unknown): string | undefined {
  return typeof v === 'string' && PROTOCOL_VERSION.test(v) ? v : undefined;
}

export interface ClientInfo {
  name?: string;
  version?: string;
}

/** The last `clientInfo` bounded (what it was given and the frozen result). */
const lastClientInfo: { name: unknown; version: unknown; out: ClientInfo | undefined } = {
  name: undefined,
  version: undefined,
  out: undefined,
};

/**
 * A client's `clientInfo` (from `initialize` or a request's envelope), bounded: the name is kept only when it
 * is a valid identifier (≤ 256 characters, no control characters), the version only when short. Returns
 * `null` for one that is present but unusable.
 */
export function boundedClientInfo(v: unknown): ClientInfo | null | undefined {
  if (v === undefined) return undefined;
  if (v === null || typeof v !== 'object') return null;
  const { name, version } = v as { name?: unknown; version?: unknown };
  // 2026-07-28 requests each carry their client's identity: the same as the last one is not checked again
  const last = lastClientInfo;
  if (last.out !== undefined && name === last.name && version === last.version) return last.out;
  if (typeof name !== 'string' || !isValidIdentifier(name)) return null;
  const out: ClientInfo = { name };
  if (typeof version === 'string' && version.length <= 64 && isValidIdentifier(version))
    out.version = version;
  Object.freeze(out);
  last.name = name;
  last.version = version;
  last.out = out;
  return out;
}

/** The `clientInfo` of this request's envelope (2026-07-28), bounded as above. */
export function envelopeClientInfo(
  meta: Record<string, unknown> | undefined,
  extra: RequestExtraLike | undefined,
): ClientInfo | null | undefined {
  return boundedClientInfo(envelopeValue(meta, extra, META_CLIENT_INFO));
}
