import { createHash } from 'node:crypto';
import { isValidTraceId } from './event-id.js';
import { isValidIdentifier } from './identifiers.js';

/**
 * The billing session: Tollgate's own notion of "one run of one caller", which session analytics,
 * per-session limits and the per-session margin guard are built on. The MCP protocol has a session only
 * on the 2025-era sessionful transports; the stateless 2026-07-28 revision has none. So the session of a
 * tool call is the first of these that exists (see docs/span-contract.md, "Billing sessions"):
 *
 * 1. `protocol`   — the protocol's own session id (`Mcp-Session-Id` of a sessionful Streamable HTTP
 *                   transport, the SSE transport's session), used as it is;
 * 2. `connection` — the stdio connection: one id per server process lifetime (`conn-<uuid>`);
 * 3. `trace`      — the caller's trace, from the W3C `traceparent` in the request's `params._meta` (or the
 *                   HTTP `traceparent` header at a gateway): one agent run (`trace-<32 hex trace id>`);
 * 4. `activity`   — derived from customer + agent identity + credential: calls of one such caller with no
 *                   more than the inactivity gap (default 30 min) between consecutive calls are one
 *                   session (`act-<16 hex>`, a hash of the caller and the session's first call time).
 *
 * The rule is applied where the call happens (the SDK inside the MCP server, the Kong plugin at the
 * gateway), in the order the calls really happen, and the result travels on the span as `mcp.session.id`
 * plus `tollgate.session.rule`. The processor only reads it, so every processor instance puts the same
 * call in the same session whatever order its spans arrive in. A span without either attribute (a plain
 * OTLP sender) gets rule 3 from its own trace when it has a parent span, else no session.
 */
export const SESSION_RULES = ['protocol', 'connection', 'trace', 'activity'] as const;
export type SessionRule = (typeof SESSION_RULES)[number];

/** Default inactivity gap of rule 4 (`activity`). */
export const DEFAULT_ACTIVITY_GAP_MS = 30 * 60 * 1000;

export const SESSION_PREFIX = {
  connection: 'conn-',
  trace: 'trace-',
  activity: 'act-',
} as const;

export function isSessionRule(v: unknown): v is SessionRule {
  return typeof v === 'string' && (SESSION_RULES as readonly string[]).includes(v);
}

// W3C trace context: version-traceid-parentid-flags, lower-case hex; version ff is invalid.
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * The trace id of a W3C `traceparent` value, or undefined when it is not one (wrong type, malformed, an
 * all-zero id, version `ff`). Longer values than the header's 55 characters are accepted only for future
 * versions (version > 00), as the specification asks.
 */
export function traceIdOfTraceparent(v: unknown): string | undefined {
  if (typeof v !== 'string' || v.length > 512) return undefined;
  const m = TRACEPARENT.exec(v.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, , rest] = m as unknown as [
    string,
    string,
    string,
    string,
    string,
    string?,
  ];
  if (version === 'ff' || spanId === '0000000000000000' || !isValidTraceId(traceId)) return undefined;
  if (version === '00' && rest !== undefined) return undefined;
  return traceId;
}

/** The session id of rule 3 for a trace id (32 lower-case hex). */
export function traceSessionId(traceId: string): string {
  return `${SESSION_PREFIX.trace}${traceId}`;
}

/**
 * The session id of rule 4: a caller (customer, agent, credential fingerprint) and the start time of the
 * session's first call (ms). Never contains the credential itself: pass a fingerprint (see
 * `credentialFingerprint`).
 */
export function activitySessionId(
  customer: string,
  agent: string,
  credential: string,
  firstCallMs: number,
): string {
  const h = createHash('sha256')
    .update(`activity\0${customer}\0${agent}\0${credential}\0${Math.floor(firstCallMs)}`)
    .digest('hex');
  return `${SESSION_PREFIX.activity}${h.slice(0, 16)}`;
}

/** A fingerprint of a secret credential (a bearer token, an API key): never the secret itself. */
export function credentialFingerprint(secret: string): string {
  return createHash('sha256').update(`credential\0${secret}`).digest('hex').slice(0, 16);
}

/**
 * Rule 4 state for one process or gateway node: the open activity session of each caller. Calls are fed in
 * the order they happen; a call more than `gapMs` after the previous one of the same caller opens a new
 * session. Bounded: callers idle longer than the gap are dropped first when `maxCallers` is reached.
 */
export class ActivitySessions {
  private readonly open = new Map<string, { id: string; lastMs: number }>();
  /**
   * The caller of the previous call and its entry (the most recently used one, last in `open`): the next
   * call of the same caller, the common case, skips building the key and reordering the map.
   */
  private last:
    | { customer: string; agent: string; credential: string; s: { id: string; lastMs: number } }
    | undefined;

  constructor(
    readonly gapMs: number = DEFAULT_ACTIVITY_GAP_MS,
    private readonly maxCallers = 100_000,
  ) {}

  get size(): number {
    return this.open.size;
  }

  /** The session of a call of this caller at `nowMs`. */
  sessionOf(customer: string, agent: string, credential: string, nowMs: number): string {
    const l = this.last;
    if (
      l !== undefined &&
      l.customer === customer &&
      l.agent === agent &&
      l.credential === credential &&
      nowMs - l.s.lastMs <= this.gapMs
    ) {
      // already the most recently used entry: nothing to reorder
      if (nowMs > l.s.lastMs) l.s.lastMs = nowMs;
      return l.s.id;
    }
    const key = `${customer}\0${agent}\0${credential}`;
    let s = this.open.get(key);
    if (s && nowMs - s.lastMs <= this.gapMs) {
      if (nowMs > s.lastMs) s.lastMs = nowMs;
    } else {
      s = { id: activitySessionId(customer, agent, credential, nowMs), lastMs: nowMs };
    }
    // most recently used last: the oldest callers are at the front when trimming
    this.open.delete(key);
    this.open.set(key, s);
    this.last = { customer, agent, credential, s };
    if (this.open.size > this.maxCallers) this.trim(nowMs);
    return s.id;
  }

  private trim(nowMs: number): void {
    for (const [k, s] of this.open) {
      if (this.open.size <= this.maxCallers && nowMs - s.lastMs <= this.gapMs) break;
      this.open.delete(k);
      if (this.last?.s === s) this.last = undefined;
    }
  }
}

/** What an enforcement point knows about a call when it picks its billing session. */
export interface SessionEvidence {
  /** The protocol's own session id (rule 1), if the transport has one. */
  protocolSessionId?: string | undefined;
  /** The id of the stdio connection (rule 2), if the call came over stdio. */
  connectionId?: string | undefined;
  /** The caller's `traceparent` (rule 3), as received: validated here. */
  traceparent?: unknown;
}

/**
 * Rules 1–3 (pure). Returns undefined when none applies: the caller then applies rule 4 with its
 * `ActivitySessions` (which needs the call order). Malformed evidence falls through to the next rule;
 * `malformed` says so, so the caller can count it.
 */
export function sessionFromEvidence(
  e: SessionEvidence,
): { id: string; rule: SessionRule } | { id: undefined; malformed: boolean } {
  let malformed = false;
  if (e.protocolSessionId !== undefined && e.protocolSessionId !== '') {
    if (isValidIdentifier(e.protocolSessionId)) return { id: e.protocolSessionId, rule: 'protocol' };
    malformed = true;
  }
  if (e.connectionId) return { id: e.connectionId, rule: 'connection' };
  if (e.traceparent !== undefined) {
    const traceId = traceIdOfTraceparent(e.traceparent);
    if (traceId) return { id: traceSessionId(traceId), rule: 'trace' };
    malformed = true;
  }
  return { id: undefined, malformed };
}
