import { readFileSync } from 'node:fs';
import { customerTag, redisKeys, type ToolCall } from '@tollgate/contracts';
import type { Cluster, Redis } from 'ioredis';
import pLimit from 'p-limit';

export const CLAIM_STATUS = { new: 0, own: 1, duplicate: 2 } as const;

/** A usage quantity of a call that its tool prices in graduated tiers: Redis counts it per period. */
export interface TieredQuantity {
  /** Index of the quantity among the call's usage quantities (where `usageBefore` puts its position). */
  index: number;
  line: string;
  /** Quantity × 10⁶. */
  micro: bigint;
  /** Whole units only: counted in units in Redis (exact far beyond micro-units' 2⁵³ limit). */
  integral: boolean;
}

export interface ClaimInput {
  call: ToolCall;
  period: string;
  day: string;
  counts: boolean;
  tiered?: readonly TieredQuantity[] | undefined;
}

export interface ClaimResult {
  status: (typeof CLAIM_STATUS)[keyof typeof CLAIM_STATUS];
  toolOrdinal: number;
  planOrdinal: number;
  /** Per usage quantity index: the customer's quantity of its line on this tool before this call, × 10⁶. */
  usageBefore?: (bigint | undefined)[];
}

const MICRO = 1_000_000n;

const CLAIM_LUA = readFileSync(new URL('../../lua/claim.lua', import.meta.url), 'utf8');

type RedisLike = Redis | Cluster;
type ClaimCommand = (numKeys: number, ...args: (string | number)[]) => Promise<number[]>;

/** Registers the claim script once per connection (EVALSHA, falling back to EVAL on NOSCRIPT). */
export function defineClaim(redis: RedisLike): void {
  if (!('tollgateClaim' in redis)) redis.defineCommand('tollgateClaim', { lua: CLAIM_LUA });
}

/**
 * Script calls of one export in Redis at once (claims of its customers, then their enforcement): enough to
 * keep Redis busy, few enough that none waits behind the others past the command timeout.
 */
export const SCRIPTS_IN_FLIGHT = 256;

/** Runs `tasks` script calls at most {@link SCRIPTS_IN_FLIGHT} at a time (no more tasks than that: each at once). */
export function scriptLimiter(tasks: number): <T>(task: () => Promise<T>) => Promise<T> {
  if (tasks <= SCRIPTS_IN_FLIGHT) return (task) => task();
  const limit = pLimit(SCRIPTS_IN_FLIGHT);
  return (task) => limit(task);
}

/** Calls per claim.lua call: bounds the time Redis spends in one script (≈ 10 ms) whatever an export holds. */
export const CLAIM_CHUNK = 4096;

/**
 * Claims one customer's calls of one export under `token` (the spool record id) and returns, per call,
 * whether it is new, a replay of this token's own claim, or a duplicate, with its usage positions.
 * At most {@link CLAIM_CHUNK} calls go to one script call, the chunks one after the other: a chunk's
 * positions follow the previous chunk's, and a replay of the record after a failure between chunks gets
 * back the positions of those already claimed (the token is the same) and claims the rest.
 */
export async function claimCalls(
  redis: RedisLike,
  product: string,
  customer: string,
  token: string,
  inputs: readonly ClaimInput[],
  ttl: { dedupSeconds: number; periodSeconds: number },
): Promise<ClaimResult[]> {
  if (inputs.length <= CLAIM_CHUNK) return claimChunk(redis, product, customer, token, inputs, ttl);
  const out: ClaimResult[] = [];
  for (let from = 0; from < inputs.length; from += CLAIM_CHUNK) {
    const chunk = inputs.slice(from, from + CLAIM_CHUNK);
    for (const r of await claimChunk(redis, product, customer, token, chunk, ttl)) out.push(r);
  }
  return out;
}

async function claimChunk(
  redis: RedisLike,
  product: string,
  customer: string,
  token: string,
  inputs: readonly ClaimInput[],
  ttl: { dedupSeconds: number; periodSeconds: number },
): Promise<ClaimResult[]> {
  const tag = customerTag(product, customer);
  const keys: string[] = [];
  const keyIndex = new Map<string, number>();
  const indexOf = (key: string): number => {
    let i = keyIndex.get(key);
    if (i === undefined) {
      keys.push(key);
      i = keys.length; // Lua arrays are 1-based
      keyIndex.set(key, i);
    }
    return i;
  };
  // The calls' event ids, concatenated, and four bytes per call: the id's length and the index of its
  // context, (day key, period key, counts, tool), each distinct context sent once as a line (see claim.lua).
  // The calls of one export share a day and a period almost always, and a handful of tools: a context is
  // looked up when it differs from the call before's.
  let ids = '';
  const meta = Buffer.allocUnsafe(inputs.length * 4);
  let contexts = '';
  let contextCount = 0;
  // context indexes per (day key, period key, counts), then per tool: one lookup by tool per call
  const contextGroups = new Map<string, Map<string, number>>();
  let byTool = new Map<string, number>();
  let day = '';
  let dayKey = 0;
  let period = '';
  let periodKey = 0;
  let groupDayKey = -1;
  let groupPeriodKey = -1;
  let groupCounts = false;
  let idsLength = 0;
  let tiered = '';
  let tieredCount = 0;
  for (let i = 0; i < inputs.length; i++) {
    const input = inputs[i] as ClaimInput;
    if (input.day !== day) {
      day = input.day;
      dayKey = indexOf(redisKeys.dedup(tag, day));
    }
    if (input.period !== period) {
      period = input.period;
      periodKey = indexOf(redisKeys.period(tag, period));
    }
    if (dayKey !== groupDayKey || periodKey !== groupPeriodKey || input.counts !== groupCounts) {
      groupDayKey = dayKey;
      groupPeriodKey = periodKey;
      groupCounts = input.counts;
      const group = `${dayKey} ${periodKey} ${input.counts ? '1' : '0'}`;
      let m = contextGroups.get(group);
      if (!m) {
        m = new Map();
        contextGroups.set(group, m);
      }
      byTool = m;
    }
    const { eventId, tool } = input.call;
    let context = byTool.get(tool);
    if (context === undefined) {
      context = contextCount++;
      byTool.set(tool, context);
      // identifiers never contain control characters, so the newline ends a context's tool name
      contexts += `${context ? '\n' : ''}${groupDayKey} ${groupPeriodKey} ${groupCounts ? '1' : '0'} ${tool}`;
    }
    // the script cuts the ids by their lengths in bytes: event ids are 48 hex characters (contracts'
    // eventIdFrom*), so characters here, checked for the whole list below
    const idLength = eventId.length;
    if (idLength === 0 || idLength > 127 || context > 0x1fffff)
      throw new Error(`claim: an event id of ${idLength} characters, or context ${context}, out of range`);
    ids += eventId;
    idsLength += idLength;
    meta[i * 4] = idLength;
    meta[i * 4 + 1] = context >>> 14;
    meta[i * 4 + 2] = (context >>> 7) & 0x7f;
    meta[i * 4 + 3] = context & 0x7f;
    // the quantities priced in graduated tiers (rare): counted in the same script, in the period hash
    if (input.tiered)
      for (const t of input.tiered) {
        tiered += `${tieredCount ? '\n' : ''}${i} ${t.integral ? t.micro / MICRO : t.micro} ${t.line}`;
        tieredCount++;
      }
  }
  if (Buffer.byteLength(ids) !== idsLength)
    for (let i = 0; i < inputs.length; i++) {
      // an id beyond ASCII: its length in bytes (UTF-8, as the argument is sent)
      const idBytes = Buffer.byteLength((inputs[i] as ClaimInput).call.eventId);
      if (idBytes > 127) throw new Error(`claim: an event id of ${idBytes} bytes is out of range`);
      meta[i * 4] = idBytes;
    }
  const args: (string | number)[] = [
    token,
    ttl.dedupSeconds,
    ttl.periodSeconds,
    inputs.length,
    ids,
    meta.toString('latin1'), // 7-bit bytes: ASCII, sent as they are with the other strings
    contexts,
    tieredCount,
    tiered,
  ];
  const cmd = (redis as unknown as { tollgateClaim: ClaimCommand }).tollgateClaim.bind(redis);
  const flat = await cmd(keys.length, ...keys, ...args);
  const out: ClaimResult[] = new Array(inputs.length);
  for (let i = 0; i < inputs.length; i++) {
    out[i] = {
      status: flat[i * 3] as ClaimResult['status'],
      toolOrdinal: flat[i * 3 + 1] as number,
      planOrdinal: flat[i * 3 + 2] as number,
    };
  }
  let j = inputs.length * 3;
  for (let i = 0; i < inputs.length; i++) {
    const tiered = inputs[i]?.tiered;
    if (!tiered?.length) continue;
    const before: (bigint | undefined)[] = [];
    for (const t of tiered) {
      const v = BigInt(flat[j++] as number);
      before[t.index] = t.integral ? v * MICRO : v;
    }
    (out[i] as ClaimResult).usageBefore = before;
  }
  return out;
}
