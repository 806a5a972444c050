/**
 * Quota leases (reserve, then settle): the wire contract between the processor's `POST /v1/leases` and an
 * enforcement point (the Tollgate SDK). See docs/enforcement.md, "Leases".
 *
 * A lease is held by one sender instance for one customer. It reserves, out of what the customer's hard
 * limits leave, a number of calls (against `callsPerDay`), an amount of money (against `spendPerPeriod`),
 * calls of single tools (against `callsPerToolPerPeriod`) and money of single sessions (against
 * `spendPerSession`). Amounts are cumulative over the lease's life: the holder may take what was granted
 * minus what it has consumed; a renewal raises the granted amounts, never lowers them. Money is integer
 * nano-units, written as decimal strings on the wire.
 *
 * The holder stamps each call it took from a lease with the lease id and the amount it took
 * (`ATTR_TOLLGATE_LEASE_ID`, `ATTR_TOLLGATE_LEASE_RESERVED`); when the span arrives the processor settles it:
 * the reservation moves to the real counters, and the real price replaces the reserved one.
 */

/** Span attribute: the lease a call was taken from. */
export const ATTR_TOLLGATE_LEASE_ID = 'tollgate.lease.id';
/** Span attribute: nano-units the call took from the lease before it ran (its known price), decimal text. */
export const ATTR_TOLLGATE_LEASE_RESERVED = 'tollgate.lease.reserved_nano';

/** Lease ids are made by the processor: `ls_` and 24 hex digits. */
export const LEASE_ID_RE = /^ls_[0-9a-f]{24}$/;

/** Largest money amount (nano-units) a lease request may name: Lua compares exactly below 2^53. */
export const MAX_LEASE_MONEY_NANO = 9_007_199_254_740_991n;
/** Largest call count a lease request may ask for. */
export const MAX_LEASE_CALLS = 1_000_000;
/** Largest consumed count a holder may report (cumulative over a lease's life: a busy lease lives long). */
export const MAX_LEASE_CONSUMED_CALLS = Number.MAX_SAFE_INTEGER;

/** A sub-allowance asked for: calls of one tool, or money of one billing session. */
export interface LeaseSubRequest {
  /** Tool name (tools) or billing session id (sessions). */
  id: string;
  /** What the holder would like to be able to take from now on (calls for a tool, nano text for a session). */
  want: number | string;
  /** What it has taken from this sub-allowance since the lease began (same unit). */
  consumed: number | string;
}

export interface LeaseRequest {
  /** `grant`: a new lease (no `leaseId`) or the renewal of one; `release`: give back what is not consumed. */
  op: 'grant' | 'release';
  /** Who pays; absent: the ingest key's default customer. */
  customer?: string;
  leaseId?: string;
  /** Plan currency the holder expects (ISO 4217); a mismatch is refused. */
  currency?: string;
  /** Calls the holder would like to be able to take from now on (its recent rate times the renewal window). */
  wantCalls?: number;
  /** Money (nano text) it would like to be able to take from now on. */
  wantMoney?: string;
  /**
   * The least money (nano text) worth holding: the known price of the call waiting for this answer. A limit
   * that leaves less is reported exhausted; one that leaves more grants at least this much.
   */
  minMoney?: string;
  /** Calls taken from the lease since it began (cumulative). */
  consumedCalls?: number;
  /** Money (nano text) taken from the lease since it began (cumulative). */
  consumedMoney?: string;
  tools?: LeaseSubRequest[];
  sessions?: LeaseSubRequest[];
  /**
   * What the lease holds stays held, not returned, when it lapses (it was neither renewed nor released): the
   * holder stopped without a word, and calls it took may have run whose spans never come. For a holder that
   * releases what it does not use (the SDK: when idle, and when it stops). Kept from the grant that set it.
   */
  holdOnLapse?: boolean;
}

export interface LeaseRequestBody {
  /** `service.instance.id` of the holder: the same id its spans carry. */
  instanceId: string;
  requests: LeaseRequest[];
}

/** Why a lease could not grow: the limit that is exhausted (or the kill in force). */
export interface LeaseExhausted {
  scope: 'customer' | 'tool' | 'session';
  id: string;
  /** `hard_limit:calls_per_day`, `hard_limit:spend_per_period`, `hard_limit:calls_per_tool`, `hard_limit:spend_per_session`, or a kill's reason. */
  reason: string;
  /** When the limit resets (end of the day or billing period); 0 when only an operator can lift it. */
  untilUnixMs: number;
}

export interface LeaseGrant {
  leaseId: string;
  customer: string;
  currency: string;
  /** When the lease lapses unless renewed; what it holds back returns to the customer then. */
  expiresUnixMs: number;
  /** Calls granted since the lease began (cumulative); null when no call limit applies. */
  calls: number | null;
  /** Money granted (nano text, cumulative); null when no money limit applies. */
  money: string | null;
  /** Tools with a per-tool call limit: a call of one needs its own allowance here (cumulative calls). */
  tools: Record<string, number>;
  /** Per-session money allowances (nano text, cumulative); only when the plan limits spend per session. */
  sessions: Record<string, string>;
  /** Tools of this customer that have a per-tool call limit. */
  limitedTools: string[];
  /** Whether the plan limits spend per session (a call then needs a session allowance). */
  sessionLimited: boolean;
  /** Known price of one call (its per-call part, the highest tier's), nano text, by tool. */
  prices: Record<string, string>;
  /** Known price of a tool not in `prices` (the plan's `"*"`); null when such a tool is not priced. */
  defaultPrice: string | null;
  /** Set when the lease could not grow as asked, naming the limit (the holder refuses calls it cannot cover). */
  exhausted?: LeaseExhausted[];
}

export type LeaseResult =
  | { ok: true; lease: LeaseGrant }
  | { ok: false; error: { code: LeaseErrorCode; message: string } };

export interface LeaseResponseBody {
  results: LeaseResult[];
}

/** Stable error codes of a lease request that was refused (nothing granted; the attempt is audited). */
export const LEASE_ERRORS = {
  TG_LEASE_INVALID: 'the lease request does not match the schema',
  TG_LEASE_NO_CUSTOMER: 'no customer: name one or bind a default customer to the ingest key',
  TG_LEASE_UNKNOWN_CUSTOMER: 'no rate plan for this product and customer',
  TG_LEASE_CUSTOMER_NOT_ALLOWED: 'the ingest key is bound to another customer',
  TG_LEASE_INVALID_AMOUNT: 'an amount is negative, zero where it must be positive, fractional or too large',
  TG_LEASE_WRONG_CURRENCY: 'the currency is not the plan currency of this customer',
  TG_LEASE_UNKNOWN: 'no such lease (never granted, released, or expired)',
  TG_LEASE_FOREIGN: 'the lease belongs to another instance',
} as const;
export type LeaseErrorCode = keyof typeof LEASE_ERRORS;
