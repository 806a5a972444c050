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
  let out = '';
  for (const ch of part) {
    const code = ch.charCodeAt(0);
    out +=
      code <= 0x20 || ch === '%' || ch === '{' || ch === '}' || ch === ':'
        ? `%${code.toString(16).toUpperCase().padStart(2, '0')}`
        : ch;
  }
  return out;
}

/** `{product:customer}` — the hash tag of every key of one customer. */
export function customerTag(product: string, customer: string): string {
  return `{${escapeKeyPart(product)}:${escapeKeyPart(customer)}}`;
}

export const redisKeys = {
  /**
   * Dedup claims of the calls that started on one UTC day (hash): field = event id, value =
   * `token|toolOrdinal|planOrdinal`. Kept for the accepted span age plus 48 hours, so every accepted call's
   * claim outlives its acceptance window.
   */
  dedup: (tag: string, day: string) => `${KEY_PREFIX}:${tag}:dd:${day}`,
  /**
   * Period counters (hash): `calls` (all), `n` (counted calls: plan position), `t:<tool>` (counted calls of a
   * tool: tier position), `spend`, `cost`, `c:<tool>` (all calls of a tool, for its limit).
   */
  period: (tag: string, period: string) => `${KEY_PREFIX}:${tag}:p:${period}`,
  /** Daily counters (hash), for per-day limits. */
  day: (tag: string, day: string) => `${KEY_PREFIX}:${tag}:d:${day}`,
  /** Session counters (hash). */
  session: (tag: string, period: string, sessionId: string) =>
    `${KEY_PREFIX}:${tag}:s:${period}:${escapeKeyPart(sessionId)}`,
  /** Enforcement state (hash): field `c` for the customer, `a:<agent>`, `s:<session>`, `t:<tool>`. */
  state: (tag: string) => `${KEY_PREFIX}:${tag}:state`,
  /** Spool records whose calls were applied to the counters (hash rid → time), per receipt day. */
  applied: (tag: string, day: string) => `${KEY_PREFIX}:${tag}:ap:${day}`,
  /**
   * One quota lease (hash): `inst`, `day`, `period`, `exp`, granted/settled calls `gc`/`sc` and money
   * `gm`/`sm`, per tool `t:<tool>`/`ts:<tool>`, per session `s:<id>`/`ss:<id>`/`sk:<id>` (its counter key).
   * Reservations outstanding (granted − settled) are totalled in the counters they hold back from: `lr` in
   * the day hash (calls), `lrm` in the period hash (money), `lrc:<tool>` in the period hash, `lrm` in a
   * session hash. See collector-processor/lua/lease-lib.lua.
   */
  lease: (tag: string, leaseId: string) => `${KEY_PREFIX}:${tag}:ls:${leaseId}`,
  /** Leases of a customer by expiry (sorted set lease id → expiry ms): expired ones are reaped first. */
  leaseExpiry: (tag: string) => `${KEY_PREFIX}:${tag}:lz`,
  /** Customers seen from one SDK instance (set of `product\tcustomer`), for heartbeats. */
  instance: (instanceId: string) => `${KEY_PREFIX}:{i:${escapeKeyPart(instanceId)}}:customers`,
  /** Customers of a product with enforcement state (set), for listing. */
  stateIndex: (product: string) => `${KEY_PREFIX}:{x:${escapeKeyPart(product)}}:stateful`,
} as const;
