import { randomBytes } from 'node:crypto';
import {
  customerTag,
  isValidIdentifier,
  LEASE_ERRORS,
  LEASE_ID_RE,
  type LeaseErrorCode,
  type LeaseExhausted,
  type LeaseGrant,
  type LeaseRequest,
  type LeaseResponseBody,
  type LeaseResult,
  MAX_LEASE_CALLS,
  MAX_LEASE_CONSUMED_CALLS,
  MAX_LEASE_MONEY_NANO,
  redisKeys,
} from '@tollgate/contracts';
import type { Logger } from 'pino';
import { leaseCreditArgs } from '../credits/enforce-args.js';
import type { Metrics } from '../metrics.js';
import { TollgateError } from '../pipeline/errors.js';
import type { RedisLike } from '../pipeline/pipeline.js';
import type { CompiledPlan } from '../plans/load.js';
import type { ToolRate } from '../plans/schema.js';
import type { PlanStore } from '../plans/store.js';
import type { IngestIdentity } from '../receiver/ingest-keys.js';
import type { EnforcementLog } from './events.js';
import { LEASE_LUA } from './lua.js';
import { dayEndMs, dayOf, periodEndMs } from './periods.js';

type LeaseCommand = (numKeys: number, ...args: (string | number)[]) => Promise<(string | number)[]>;

export interface LeaseSettings {
  /** A lease lapses this long after its last grant or renewal unless renewed; what it holds returns then. */
  ttlMs: number;
  /** Share of what a limit still leaves that one grant may take (basis points). */
  shareBps: number;
  /** Most calls one grant may add. */
  maxCalls: number;
  /** After a release, consumed calls whose spans have not arrived stay reserved this long. */
  releaseGraceMs: number;
}

/** Counter TTL of lease keys: as long as the period counters they reserve against. */
const KEY_TTL_SECONDS = 70 * 86_400;
const MAX_REQUESTS = 100;
const MAX_SUBS = 64;

class LeaseInputError extends Error {
  constructor(
    readonly code: LeaseErrorCode,
    detail?: string,
  ) {
    super(detail ? `${LEASE_ERRORS[code]}: ${detail}` : LEASE_ERRORS[code]);
  }
}

function calls(v: unknown, name: string, min: number, fallback: number, max = MAX_LEASE_CALLS): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new LeaseInputError(
      'TG_LEASE_INVALID_AMOUNT',
      `${name} must be a whole number from ${min} to ${max} (got ${JSON.stringify(v)})`,
    );
  }
  return v;
}

function money(v: unknown, name: string, min: bigint, fallback: bigint): bigint {
  if (v === undefined) return fallback;
  const text = typeof v === 'number' && Number.isSafeInteger(v) ? String(v) : v;
  if (typeof text !== 'string' || !/^-?\d{1,20}$/.test(text)) {
    throw new LeaseInputError('TG_LEASE_INVALID_AMOUNT', `${name} must be whole nano-units as decimal text`);
  }
  const n = BigInt(text);
  if (n < min || n > MAX_LEASE_MONEY_NANO) {
    throw new LeaseInputError(
      'TG_LEASE_INVALID_AMOUNT',
      `${name} must be from ${min} to ${MAX_LEASE_MONEY_NANO} nano-units (got ${text})`,
    );
  }
  return n;
}

/** The known price of one call of a tool: its per-call part; with graduated tiers, the highest tier's. */
export function knownPrice(rate: ToolRate | undefined): bigint | null {
  if (!rate) return null;
  const tiers = rate.price.perCallTiers;
  if (!tiers) return rate.price.perCall ?? 0n;
  let max = 0n;
  for (const t of tiers) if (t.perCall > max) max = t.perCall;
  return max;
}

interface Parsed {
  op: 'grant' | 'release';
  customer: string;
  plan: CompiledPlan;
  leaseId: string | undefined;
  holdOnLapse: boolean;
  wantCalls: number;
  wantMoney: bigint;
  minMoney: bigint;
  consumedCalls: number;
  consumedMoney: bigint;
  tools: { id: string; want: number; consumed: number }[];
  sessions: { id: string; want: bigint; consumed: bigint }[];
}

/**
 * `POST /v1/leases`: grants, renews and releases quota leases (lua/lease.lua, with lease-lib.lua, in the
 * customer's one atomic script). Each request of a body is answered on its own: a refused one (stable code,
 * nothing granted, audited in `enforcement_events`) does not refuse the others.
 */
export class LeaseService {
  /**
   * Counts in Redis what was billed for a customer while it failed (Pipeline.settle), before a lease is
   * granted from its counters; rejects while Redis is still failing. Unset: nothing is owed.
   */
  settleOwed: ((product: string, customer: string) => Promise<void>) | undefined;

  constructor(
    private readonly redis: RedisLike,
    private readonly plans: PlanStore,
    private readonly events: EnforcementLog,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly opts: LeaseSettings,
  ) {
    if (!('tollgateLease' in redis)) redis.defineCommand('tollgateLease', { lua: LEASE_LUA });
  }

  async handle(identity: IngestIdentity, body: unknown): Promise<LeaseResponseBody> {
    const doc = body as { instanceId?: unknown; requests?: unknown } | null;
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
      throw new TollgateError('TG_LEASE_INVALID', 'expected {"instanceId": ..., "requests": [...]}');
    const instanceId = doc.instanceId;
    if (typeof instanceId !== 'string' || !instanceId || !isValidIdentifier(instanceId))
      throw new TollgateError('TG_LEASE_INVALID', 'instanceId must be a non-empty identifier');
    if (!Array.isArray(doc.requests) || doc.requests.length === 0 || doc.requests.length > MAX_REQUESTS)
      throw new TollgateError('TG_LEASE_INVALID', `requests must be an array of 1 to ${MAX_REQUESTS}`);
    const results: LeaseResult[] = [];
    for (const raw of doc.requests) results.push(await this.one(identity, instanceId, raw));
    return { results };
  }

  /**
   * Renews the leases whose calls an export settled (piggy-backed on the export response): each is topped
   * up toward twice what this export brought of it, and its expiry moves on. One script call per lease; a
   * lease that is gone or not the sender's is skipped, and so are Kong's: its exporters never read the
   * answer, so a top-up would sit held on the node, unused, until its next renewal (allowance other holders
   * could not take meanwhile).
   */
  async renewSettled(
    identity: IngestIdentity,
    rows: readonly {
      instanceId: string;
      customer: string;
      tool: string;
      /** Where the call was metered (contracts' CallSource): `kong` for the Kong plugin. */
      source: string;
      lease?: { id: string; reservedNano: string };
    }[],
  ): Promise<LeaseGrant[]> {
    const byLease = new Map<
      string,
      { instanceId: string; customer: string; calls: number; money: bigint; max: bigint }
    >();
    for (const r of rows) {
      if (!r.lease || r.source === 'kong') continue;
      const k = `${r.instanceId}\0${r.customer}\0${r.lease.id}`;
      const reserved = BigInt(r.lease.reservedNano);
      const e = byLease.get(k);
      if (e) {
        e.calls++;
        e.money += reserved;
        if (reserved > e.max) e.max = reserved;
      } else
        byLease.set(k, {
          instanceId: r.instanceId,
          customer: r.customer,
          calls: 1,
          money: reserved,
          max: reserved,
        });
    }
    const out: LeaseGrant[] = [];
    for (const [k, e] of byLease) {
      const plan = this.plans.current.resolve(identity.product, e.customer);
      if (!plan) continue;
      const leaseId = k.split('\0')[2] as string;
      try {
        const g = await this.run(identity.product, e.instanceId, {
          op: 'grant',
          customer: e.customer,
          plan,
          leaseId,
          holdOnLapse: false, // a renewal keeps what the grant set
          wantCalls: Math.min(this.opts.maxCalls, e.calls * 2),
          wantMoney: e.money * 2n,
          minMoney: e.max,
          consumedCalls: 0,
          consumedMoney: 0n,
          tools: [],
          sessions: [],
        });
        if (!('code' in g)) {
          this.metrics.leases.inc({ op: 'renew_on_export', outcome: g.exhausted ? 'exhausted' : 'ok' });
          out.push(g);
        }
      } catch {
        // Redis unavailable: the holder renews on its own
      }
    }
    return out;
  }

  private async one(identity: IngestIdentity, instanceId: string, raw: unknown): Promise<LeaseResult> {
    let parsed: Parsed;
    try {
      parsed = this.parse(identity, raw);
    } catch (err) {
      if (!(err instanceof LeaseInputError)) throw err;
      const customer = (raw as { customer?: unknown } | null)?.customer;
      return this.refuse(identity, instanceId, typeof customer === 'string' ? customer : '', err);
    }
    if (this.settleOwed)
      await this.settleOwed(identity.product, parsed.customer).catch(() => {
        throw new TollgateError('TG_REDIS_UNAVAILABLE', 'quota leases need Redis', 1);
      });
    const out = await this.run(identity.product, instanceId, parsed);
    if ('code' in out) return this.refuse(identity, instanceId, parsed.customer, out);
    this.metrics.leases.inc({ op: parsed.op, outcome: out.exhausted ? 'exhausted' : 'ok' });
    return { ok: true, lease: out };
  }

  private refuse(
    identity: IngestIdentity,
    instanceId: string,
    customer: string,
    err: LeaseInputError,
  ): LeaseResult {
    this.metrics.leases.inc({ op: 'refused', outcome: err.code });
    this.events.record({
      atMs: Date.now(),
      product: identity.product,
      customer: customer.slice(0, 256),
      scope: 'customer',
      subjectId: customer.slice(0, 256),
      action: 'lease_refused',
      reason: err.code,
      marginBps: null,
      spendNano: 0n,
      actor: `instance:${instanceId}`,
      note: `ingest key ${identity.name}: ${err.message}`.slice(0, 1000),
    });
    return { ok: false, error: { code: err.code, message: err.message } };
  }

  private parse(identity: IngestIdentity, raw: unknown): Parsed {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
      throw new LeaseInputError('TG_LEASE_INVALID', 'a request must be an object');
    const r = raw as Record<keyof LeaseRequest, unknown>;
    if (r.op !== 'grant' && r.op !== 'release')
      throw new LeaseInputError('TG_LEASE_INVALID', 'op must be grant or release');
    if (r.customer !== undefined && (typeof r.customer !== 'string' || !isValidIdentifier(r.customer)))
      throw new LeaseInputError('TG_LEASE_INVALID', 'customer must be a non-empty identifier');
    if (r.holdOnLapse !== undefined && typeof r.holdOnLapse !== 'boolean')
      throw new LeaseInputError('TG_LEASE_INVALID', 'holdOnLapse must be true or false');
    const customer = (r.customer as string | undefined) || identity.defaultCustomer;
    if (!customer) throw new LeaseInputError('TG_LEASE_NO_CUSTOMER');
    if (identity.customer !== undefined && customer !== identity.customer)
      throw new LeaseInputError('TG_LEASE_CUSTOMER_NOT_ALLOWED', `ingest key ${identity.name}`);
    const plan = this.plans.current.resolve(identity.product, customer);
    if (!plan) throw new LeaseInputError('TG_LEASE_UNKNOWN_CUSTOMER', `product ${identity.product}`);
    if (r.currency !== undefined && r.currency !== plan.currency)
      throw new LeaseInputError(
        'TG_LEASE_WRONG_CURRENCY',
        `${String(r.currency).slice(0, 16)} is not ${plan.currency}`,
      );
    if (r.leaseId !== undefined && (typeof r.leaseId !== 'string' || !LEASE_ID_RE.test(r.leaseId)))
      throw new LeaseInputError('TG_LEASE_UNKNOWN', 'malformed lease id');
    if (r.op === 'release' && r.leaseId === undefined)
      throw new LeaseInputError('TG_LEASE_INVALID', 'a release names its leaseId');
    const subs = <T>(v: unknown, name: string, f: (s: Record<string, unknown>, i: number) => T): T[] => {
      if (v === undefined) return [];
      if (!Array.isArray(v) || v.length > MAX_SUBS)
        throw new LeaseInputError('TG_LEASE_INVALID', `${name} must be an array of at most ${MAX_SUBS}`);
      return v.map((s, i) => {
        if (
          typeof s !== 'object' ||
          s === null ||
          typeof s.id !== 'string' ||
          !s.id ||
          !isValidIdentifier(s.id)
        )
          throw new LeaseInputError('TG_LEASE_INVALID', `${name}[${i}].id must be a non-empty identifier`);
        return f(s as Record<string, unknown>, i);
      });
    };
    return {
      op: r.op,
      customer,
      plan,
      leaseId: r.leaseId as string | undefined,
      holdOnLapse: r.holdOnLapse === true,
      wantCalls: Math.min(calls(r.wantCalls, 'wantCalls', 1, 1), this.opts.maxCalls),
      wantMoney: money(r.wantMoney, 'wantMoney', 1n, 0n),
      minMoney: money(r.minMoney, 'minMoney', 0n, 0n),
      consumedCalls: calls(r.consumedCalls, 'consumedCalls', 0, 0, MAX_LEASE_CONSUMED_CALLS),
      consumedMoney: money(r.consumedMoney, 'consumedMoney', 0n, 0n),
      tools: subs(r.tools, 'tools', (s, i) => ({
        id: s.id as string,
        want: Math.min(calls(s.want, `tools[${i}].want`, 1, 1), this.opts.maxCalls),
        consumed: calls(s.consumed, `tools[${i}].consumed`, 0, 0, MAX_LEASE_CONSUMED_CALLS),
      })),
      sessions: subs(r.sessions, 'sessions', (s, i) => ({
        id: s.id as string,
        want: money(s.want, `sessions[${i}].want`, 1n, 0n),
        consumed: money(s.consumed, `sessions[${i}].consumed`, 0n, 0n),
      })),
    };
  }

  private async run(product: string, instanceId: string, q: Parsed): Promise<LeaseGrant | LeaseInputError> {
    const { limits } = q.plan.plan;
    const now = Date.now();
    const day = dayOf(now);
    const period = day.slice(0, 7);
    const tag = customerTag(product, q.customer);
    const toolLimits = limits.callsPerToolPerPeriod ?? {};
    const isNew = q.leaseId === undefined;
    const leaseId = q.leaseId ?? `ls_${randomBytes(12).toString('hex')}`;
    const sessions = limits.spendPerSession === undefined ? [] : q.sessions;
    const keys = [
      redisKeys.period(tag, period),
      redisKeys.state(tag),
      redisKeys.day(tag, day),
      ...sessions.map((s) => redisKeys.session(tag, period, s.id)),
    ];
    const args: (string | number)[] = [
      q.op,
      now,
      leaseId,
      isNew ? 1 : 0,
      instanceId,
      this.opts.ttlMs,
      dayEndMs(day),
      periodEndMs(period),
      day,
      period,
      limits.spendPerPeriod === undefined ? -1 : limits.spendPerPeriod.toString(),
      limits.callsPerDay ?? -1,
      limits.spendPerSession === undefined ? -1 : limits.spendPerSession.toString(),
      q.wantCalls,
      q.wantMoney.toString(),
      q.consumedCalls,
      q.consumedMoney.toString(),
      this.opts.shareBps,
      KEY_TTL_SECONDS,
      this.opts.releaseGraceMs,
      q.minMoney.toString(),
      q.tools.length,
      ...q.tools.flatMap((t) => [t.id, toolLimits[t.id] ?? -1, t.want, t.consumed]),
      sessions.length,
      ...sessions.flatMap((s) => [s.id, s.want.toString(), s.consumed.toString()]),
      q.holdOnLapse ? 1 : 0,
    ];
    leaseCreditArgs(keys, args, tag, q.plan.plan.credits); // the last key and arguments: credits.lua's
    let reply: (string | number)[];
    try {
      const cmd = (this.redis as unknown as { tollgateLease: LeaseCommand }).tollgateLease.bind(this.redis);
      reply = await cmd(keys.length, ...keys, ...args);
    } catch (err) {
      this.metrics.redisErrors.inc();
      this.log.warn({ err: (err as Error).message, customer: q.customer }, 'lease script failed');
      throw new TollgateError('TG_REDIS_UNAVAILABLE', 'quota leases need Redis', 1);
    }
    const status = String(reply[0]);
    if (status === 'unknown') return new LeaseInputError('TG_LEASE_UNKNOWN', leaseId);
    if (status === 'foreign') return new LeaseInputError('TG_LEASE_FOREIGN', leaseId);
    let i = 1;
    const id = String(reply[i++]);
    const expiresUnixMs = Number(reply[i++]);
    const gc = Number(reply[i++]);
    const gm = String(reply[i++]);
    const tools: Record<string, number> = {};
    for (let n = Number(reply[i++]), k = 0; k < n; k++) tools[String(reply[i++])] = Number(reply[i++]);
    const granted: Record<string, string> = {};
    for (let n = Number(reply[i++]), k = 0; k < n; k++) granted[String(reply[i++])] = String(reply[i++]);
    const exhausted: LeaseExhausted[] = [];
    for (let n = Number(reply[i++]), k = 0; k < n; k++) {
      const [scope, sid, reason, until] = reply.slice(i, i + 4).map(String) as string[];
      i += 4;
      exhausted.push({
        scope: scope as LeaseExhausted['scope'],
        id: scope === 'customer' ? q.customer : (sid as string),
        reason: reason as string,
        untilUnixMs: Number(until),
      });
    }
    const prices: Record<string, string> = {};
    for (const [tool, rate] of q.plan.tools) prices[tool] = String(knownPrice(rate));
    const def = knownPrice(q.plan.defaultTool);
    const grant: LeaseGrant = {
      // a kill refused a new lease: there is none to name
      leaseId: status === 'killed' && isNew ? '' : status === 'released' ? leaseId : id,
      customer: q.customer,
      currency: q.plan.currency,
      expiresUnixMs: status === 'killed' ? now : expiresUnixMs,
      calls: status === 'killed' ? 0 : gc < 0 ? null : gc,
      money: status === 'killed' ? '0' : gm === '-1' ? null : gm,
      tools,
      sessions: granted,
      limitedTools: Object.keys(toolLimits),
      sessionLimited: limits.spendPerSession !== undefined,
      prices,
      defaultPrice: def === null ? null : String(def),
    };
    if (exhausted.length) grant.exhausted = exhausted;
    return grant;
  }
}
