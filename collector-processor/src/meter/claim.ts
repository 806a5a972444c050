import { readFileSync } from 'node:fs';
import { customerTag, redisKeys, type ToolCall } from '@tollgate/contracts';
import type { Cluster, Redis } from 'ioredis';

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
 * Claims one customer's calls of one export under `token` (the spool record id) and returns, per call,
 * whether it is new, a replay of this token's own claim, or a duplicate, with its usage positions.
 */
export async function claimCalls(
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
  let calls = '';
  // The calls of one export share a day and a period almost always: their keys' indexes are looked up
  // when the day or period changes, not built and looked up per call.
  let day = '';
  let dayKey = 0;
  let period = '';
  let periodKey = 0;
  for (const input of inputs) {
    if (input.day !== day) {
      day = input.day;
      dayKey = indexOf(redisKeys.dedup(tag, day));
    }
    if (input.period !== period) {
      period = input.period;
      periodKey = indexOf(redisKeys.period(tag, period));
    }
    // a line per call, all in one argument (see claim.lua); event ids are hex, so the space separator is
    // unambiguous, and identifiers never contain control characters, so neither is the newline
    calls += `${calls ? '\n' : ''}${input.call.eventId} ${dayKey} ${periodKey} ${input.counts ? '1' : '0'} ${input.call.tool}`;
  }
  const args: (string | number)[] = [token, ttl.dedupSeconds, ttl.periodSeconds, inputs.length, calls];
  // the quantities priced in graduated tiers (rare): counted in the same script, in the period hash
  const tieredArgs: string[] = [];
  for (let i = 0; i < inputs.length; i++) {
    const tiered = inputs[i]?.tiered;
    if (tiered)
      for (const t of tiered) tieredArgs.push(`${i} ${t.integral ? t.micro / MICRO : t.micro} ${t.line}`);
  }
  args.push(tieredArgs.length, ...tieredArgs);
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
