/**
 * Redis key builders shared by the processor (TypeScript) and the Kong plugin (Lua, which builds the same
 * strings; a config test checks both agree). Every key of one customer carries the same hash tag
 * `{product:customer}`, so one Lua script can touch all of them on a single Redis or on Redis Cluster.
 *
 * Key parts are escaped so that no id can forge a separator or a hash-tag brace: `%`, `{`, `}`, `:` and
 * bytes below 0x21 are written as `%XX` (uppercase hex).
 */
export const KEY_PREFIX = 'tg';

export function escapeKeyPart(part: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters must be escaped
  return part.replace(/[%{}:\u0000-\u0020]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
}

/** `{product:customer}` — the hash tag of every key of one customer. */
export function customerTag(product: string, customer: string): string {
  return `{${escapeKeyPart(product)}:${escapeKeyPart(customer)}}`;
}

export const redisKeys = {
  /** Dedup claim of one event: value is `token|toolOrdinal|planOrdinal`, with a TTL. */
  dedup: (tag: string, eventId: string) => `${KEY_PREFIX}:${tag}:dd:${eventId}`,
  /** Period counters (hash): `calls`, `billable`, `tool:<name>`, `spend`, `cost`, ... */
  period: (tag: string, period: string) => `${KEY_PREFIX}:${tag}:p:${period}`,
  /** Daily counters (hash), for per-day limits. */
  day: (tag: string, day: string) => `${KEY_PREFIX}:${tag}:d:${day}`,
  /** Session counters (hash). */
  session: (tag: string, period: string, sessionId: string) =>
    `${KEY_PREFIX}:${tag}:s:${period}:${escapeKeyPart(sessionId)}`,
  /** Enforcement state (hash): field `c` for the customer, `a:<agent>` and `s:<session>`. */
  state: (tag: string) => `${KEY_PREFIX}:${tag}:state`,
} as const;
