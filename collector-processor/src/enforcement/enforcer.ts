import {
  customerTag,
  type Directive,
  type DirectiveAction,
  type DirectiveScope,
  decodeState,
  isValidIdentifier,
  type RatedCall,
  redisKeys,
  stateInForce,
} from '@tollgate/contracts';
import type { Logger } from 'pino';
import { ByteWriter, MAX_INT64, MIN_INT64 } from '../byte-writer.js';
import { afterCreditsOfReply, creditArgs } from '../credits/enforce-args.js';
import type { CreditLedger } from '../credits/ledger.js';
import { scriptLimiter } from '../meter/claim.js';
import type { Metrics } from '../metrics.js';
import type { Enforcer, RedisLike } from '../pipeline/pipeline.js';
import type { PlanStore } from '../plans/store.js';
import { type OwedItem, OwedQueue } from '../redis/owed.js';
import type { OwedEntry, OwedLog } from '../redis/owed-log.js';
import type { EnforcementLog } from './events.js';
import { ENFORCE_LUA } from './lua.js';
import { dayEndMs, dayOf, periodEndMs } from './periods.js';

type EnforceCommand = (
  numKeys: number,
  ...args: (string | number | Buffer)[]
) => Promise<(string | number)[]>;

export function defineEnforce(redis: RedisLike): void {
  if (!('tollgateEnforce' in redis)) redis.defineCommand('tollgateEnforce', { lua: ENFORCE_LUA });
}

const DAY_SECONDS = 86_400;
const US_PER_DAY = 86_400_000_000;
/** Distinct `service.instance.id`s of one export answered as a heartbeat (an SDK sends its own and ≤ 32 predecessors'). */
export const MAX_HEARTBEAT_INSTANCES = 64;

/** How long an SDK instance is remembered for heartbeats after its last export with calls. */
const INSTANCE_TTL_SECONDS = 3_600;
/** An instance's customer is added to its set again after this long (the set's TTL is refreshed with it). */
const INSTANCE_REFRESH_MS = 300_000;

interface Group {
  customer: string;
  period: string;
  day: string;
  rows: RatedCall[];
}

/** An enforcement step whose script failed: its calls are billed, and counted once Redis answers (`settle`). */
interface OwedChunk extends OwedItem {
  product: string;
  rid: string;
  marker: string;
  g: Group;
  rows: RatedCall[];
  /** When the step first ran: it is applied as of then (credits in force, kills' times). */
  now: number;
}

/** The calls of one export taken from one lease (settled in enforce.lua as one). */
interface LeasedCalls {
  id: string;
  instanceId: string;
  calls: number;
  money: bigint;
  tools: Map<string, number>;
  sessions: Map<string, bigint>;
}

function addLeased(byLease: Map<string, LeasedCalls>, row: RatedCall): void {
  const lease = row.lease as NonNullable<RatedCall['lease']>;
  const key = `${lease.id}\0${row.instanceId}`;
  let l = byLease.get(key);
  if (!l) {
    l = {
      id: lease.id,
      instanceId: row.instanceId,
      calls: 0,
      money: 0n,
      tools: new Map(),
      sessions: new Map(),
    };
    byLease.set(key, l);
  }
  const reserved = BigInt(lease.reservedNano);
  l.calls++;
  l.money += reserved;
  l.tools.set(row.tool, (l.tools.get(row.tool) ?? 0) + 1);
  if (row.sessionId) l.sessions.set(row.sessionId, (l.sessions.get(row.sessionId) ?? 0n) + reserved);
}

/** The lease argument of enforce.lua: an `L` line per lease, then its `T` (tool) and `S` (session) lines. */
export function encodeLeased(byLease: ReadonlyMap<string, LeasedCalls>): string {
  const lines: string[] = [];
  for (const l of byLease.values()) {
    lines.push(`L\t${l.id}\t${l.instanceId}\t${l.calls}\t${l.money}`);
    for (const [tool, n] of l.tools) lines.push(`T\t${tool}\t${n}`);
    for (const [sid, m] of l.sessions) lines.push(`S\t${sid}\t${m}`);
  }
  return lines.join('\n');
}

/** Parses the flat reply of enforce.lua. */
export function parseEnforceReply(
  reply: (string | number)[],
  customer: string,
): { over: number[]; directives: (Directive & { changed: boolean })[] } {
  let i = 0;
  const nOver = Number(reply[i++]);
  const over: number[] = [];
  for (let k = 0; k < nOver; k++) over.push(Number(reply[i++]));
  const nDir = Number(reply[i++]);
  const directives: (Directive & { changed: boolean })[] = [];
  for (let k = 0; k < nDir; k++) {
    const [action, scope, id, reason, margin, rate, until, changed] = reply
      .slice(i, i + 8)
      .map(String) as string[];
    i += 8;
    const d: Directive & { changed: boolean } = {
      action: action as DirectiveAction,
      scope: scope as DirectiveScope,
      id: scope === 'customer' ? customer : (id as string),
      customer,
      reason: reason as string,
      untilUnixMs: Number(until),
      changed: changed === '1',
    };
    if (margin !== '') d.marginBps = Number(margin);
    if (rate !== '') d.ratePerSecond = Number(rate);
    directives.push(d);
  }
  return { over, directives };
}

/** Bytes per call in enforce.lua's calls argument (see CallLines). */
export const CALL_BYTES = 24;

/** enforce.lua's calls, as `CallLines.take` hands them over: the binary records and the names they index. */
export interface EnforceCalls {
  /** {@link CALL_BYTES} per call: session key index (UInt32), agent and tool indexes (UInt16), price, cost (Int64). */
  calls: Buffer;
  /** The names the calls index, from 1 (0 is the empty name), one line each. */
  agents: string;
  tools: string;
  /** The session ids, by session key index from 1. */
  sessions: string;
}

/** Indexes of the distinct names of one call list, from 1 (0 is the empty name); the last one is checked first. */
class NameIndex {
  private readonly map = new Map<string, number>();
  private last = '';
  private lastIndex = 0;

  clear(): void {
    this.map.clear();
    this.last = '';
    this.lastIndex = 0;
  }

  of(name: string): number {
    // calls of one export come in runs of the same agent and tool: no map lookup for those
    if (name === this.last) return this.lastIndex;
    let i = 0;
    if (name !== '') {
      i = this.map.get(name) ?? 0;
      if (i === 0) {
        i = this.map.size + 1;
        this.map.set(name, i);
      }
    }
    this.last = name;
    this.lastIndex = i;
    return i;
  }

  /** The names in index order, one per line. */
  text(): string {
    return [...this.map.keys()].join('\n');
  }
}

/**
 * enforce.lua's calls argument: per call 24 bytes little-endian — the session's key index (UInt32, 0 = no
 * session), the agent's and the tool's index among the export's distinct names (UInt16, 0 = empty), price and
 * cost in nano-units (Int64) — written into one reused buffer and handed to Redis as one Buffer argument,
 * with the names once each. The script reads a call with one `struct.unpack` instead of a pattern with seven
 * captures and three numbers in decimal (docs/benchmarks.md, "Enforcement's calls in binary"). Money past
 * Int64 is written at its limit: the script saturates counters there anyway, and rating refuses such amounts
 * before a call is billed.
 */
export class CallLines extends ByteWriter {
  private readonly agents = new NameIndex();
  private readonly tools = new NameIndex();
  private sessions: string[] = [];

  /** Starts the argument of `calls` calls. */
  start(calls: number): this {
    this.pos = 0;
    this.agents.clear();
    this.tools.clear();
    this.sessions = [];
    this.room(calls * CALL_BYTES);
    return this;
  }

  /** One call; `sk` is its session's key index (1, 2, … in the order sessions first appear; 0 = none). */
  call(sk: number, session: string, agent: string, tool: string, price: bigint, cost: bigint): void {
    const a = this.agents.of(agent);
    const t = this.tools.of(tool);
    if (sk > 0 && this.sessions[sk - 1] === undefined) this.sessions[sk - 1] = session;
    if (a > 0xffff || t > 0xffff || sk > 0xffffffff)
      throw new RangeError(`enforce.lua: ${a} agents, ${t} tools or ${sk} sessions in one call list`);
    this.room(CALL_BYTES);
    const b = this.buf;
    const p = this.pos;
    b[p] = sk & 0xff;
    b[p + 1] = (sk >>> 8) & 0xff;
    b[p + 2] = (sk >>> 16) & 0xff;
    b[p + 3] = sk >>> 24;
    b[p + 4] = a & 0xff;
    b[p + 5] = a >>> 8;
    b[p + 6] = t & 0xff;
    b[p + 7] = t >>> 8;
    this.pos = p + 8;
    if (!this.int64(price)) this.int64(price < 0n ? MIN_INT64 : MAX_INT64);
    if (!this.int64(cost)) this.int64(cost < 0n ? MIN_INT64 : MAX_INT64);
  }

  /** The calls written since `start` (a copy: the buffer is reused, the client may hold the argument) and their names. */
  take(): EnforceCalls {
    return {
      calls: this.copyOut(),
      agents: this.agents.text(),
      tools: this.tools.text(),
      sessions: this.sessions.join('\n'),
    };
  }
}
const callLines = new CallLines();

/** Calls per enforce.lua call: bounds the time Redis spends in one script (≈ 10 ms) whatever an export holds. */
export const ENFORCE_CHUNK = 4096;

/**
 * Real-time enforcement in Redis: one atomic enforce.lua call per customer (per period and day) per
 * export, after rating. It counts spend, calls and cost, applies hard limits and the margin guard, keeps
 * kill/throttle state, and returns the directives for the export's customer, agents, sessions and tools.
 */
export class RedisEnforcer implements Enforcer {
  /**
   * When each (instance, product, customer) was last added to its instance's set in Redis; entries older
   * than the refresh interval are swept once a minute. SDK instance ids are often new at every process
   * start, so without the sweep the map grew for the life of the process.
   */
  private readonly instancesSeen = new Map<string, number>();
  private lastInstanceSweepMs = 0;
  /** Script failures since the last 'enforcement script failed' line, and when that line was written. */
  private failuresUnlogged = 0;
  private lastFailureLogMs = 0;
  /** Drains the credit ledger outboxes the script appended to (prepaid credits); unset: nobody drains. */
  creditLedger: CreditLedger | undefined;
  /** Steps whose script failed, oldest first, with their calls (copies), to be applied by `settle`. */
  private readonly owed: OwedQueue<OwedChunk>;
  /** Where owed steps are written down for the next start (unset: not written). */
  owedLog: OwedLog | undefined;

  constructor(
    private readonly redis: RedisLike,
    private readonly plans: PlanStore,
    private readonly events: EnforcementLog,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly opts: { maxSpanAgeHours: number },
  ) {
    defineEnforce(redis);
    this.owed = new OwedQueue<OwedChunk>(
      'enforce',
      metrics,
      log,
      async (o) => {
        await this.enforceChunk(o.product, o.rid, o.marker, o.g, o.rows, o.now, true);
        this.metrics.callsSettled.inc({ step: 'enforce', result: 'counted' }, o.calls);
      },
      (o) => ({ rid: o.rid, customer: o.g.customer }),
      (o) => {
        if (o.logId) this.owedLog?.done(o.logId);
      },
    );
  }

  async apply(
    product: string,
    rid: string,
    rated: readonly RatedCall[],
    now = Date.now(),
  ): Promise<Directive[]> {
    const groups = new Map<string, Group>();
    // an export's calls almost always share customer, period and day: a row like the one before joins
    // its group without building the group's key (and the day's name) again
    let last: Group | undefined;
    let lastDay = Number.NaN;
    for (const row of rated) {
      if (row.decision === 'unenforced') continue;
      const dayIndex = Math.floor(row.startUnixUs / US_PER_DAY);
      if (last && dayIndex === lastDay && row.customer === last.customer && row.period === last.period) {
        last.rows.push(row);
        continue;
      }
      const day = dayOf(Math.floor(row.startUnixUs / 1000));
      const key = `${row.customer}\0${row.period}\0${day}`;
      let g = groups.get(key);
      if (!g) {
        g = { customer: row.customer, period: row.period, day, rows: [] };
        groups.set(key, g);
      }
      g.rows.push(row);
      last = g;
      lastDay = dayIndex;
    }
    const limit = scriptLimiter(groups.size);
    const results = await Promise.all(
      [...groups.values()].map((g) => limit(() => this.enforceGroup(product, rid, g, now))),
    );
    this.rememberInstances(product, rated, now);
    // one directive per scope and id: the last group's view is the freshest
    const byScope = new Map<string, Directive>();
    for (const list of results) for (const d of list) byScope.set(`${d.scope}\0${d.id}`, d);
    return [...byScope.values()];
  }

  /**
   * One group's calls, at most {@link ENFORCE_CHUNK} per script call, in order: each later call sees the
   * counters the earlier ones left, as the calls of one script do. A chunk after the first has an
   * applied-marker of its own (`…#k`), so that a replay of the record applies each chunk once. The chunks'
   * directives come in order; apply keeps the last one per scope and id.
   */
  private async enforceGroup(product: string, rid: string, g: Group, now: number): Promise<Directive[]> {
    // the customer's steps that failed before come first (limits are judged call by call, in order); if they
    // fail again this one is likely to as well, and is then owed after them
    if (this.owed.owes(product, g.customer))
      await this.owed.settleCustomer(product, g.customer).catch(() => {});
    const marker = `${rid}|${g.period}|${g.day}`;
    if (g.rows.length <= ENFORCE_CHUNK) return this.enforceChunk(product, rid, marker, g, g.rows, now);
    const directives: Directive[] = [];
    for (let from = 0, k = 0; from < g.rows.length; from += ENFORCE_CHUNK, k++) {
      const rows = g.rows.slice(from, from + ENFORCE_CHUNK);
      directives.push(
        ...(await this.enforceChunk(product, rid, k ? `${marker}#${k}` : marker, g, rows, now)),
      );
    }
    return directives;
  }

  private async enforceChunk(
    product: string,
    rid: string,
    marker: string,
    g: Group,
    rows: readonly RatedCall[],
    now: number,
    /** A step applied again by `settle`: a failure is thrown, not owed again. */
    settling = false,
  ): Promise<Directive[]> {
    const first = rows[0] as RatedCall;
    const book = this.plans.byVersion(first.planVersion) ?? this.plans.current;
    const plan = book.resolve(product, g.customer);
    if (!plan) return [];
    const { limits, marginGuard } = plan.plan;
    const tag = customerTag(product, g.customer);
    const keys = [
      redisKeys.period(tag, g.period),
      redisKeys.state(tag),
      // keyed by the record's receipt day, so a replay on a later day finds the marker
      redisKeys.applied(tag, dayOf(first.receivedAtMs)),
      redisKeys.day(tag, g.day),
    ];
    const sessionIndex = new Map<string, number>();
    const toolLimits = Object.entries(limits.callsPerToolPerPeriod ?? {});
    const args: (string | number | Buffer)[] = [
      // applied-marker field: one per group (and chunk), since one export can hold several periods and days
      // of a customer
      marker,
      now,
      periodEndMs(g.period),
      dayEndMs(g.day),
      70 * DAY_SECONDS,
      (this.opts.maxSpanAgeHours + 48) * 3600,
      limits.spendPerPeriod === undefined ? -1 : limits.spendPerPeriod.toString(),
      limits.callsPerDay ?? -1,
      limits.spendPerSession === undefined ? -1 : limits.spendPerSession.toString(),
      marginGuard.enabled ? 1 : 0,
      marginGuard.warnBelow,
      marginGuard.throttleBelow,
      marginGuard.killBelow,
      marginGuard.minRevenue.toString(),
      marginGuard.throttleRatePerSecond,
      toolLimits.length,
      ...toolLimits.flat(),
      rows.length,
    ];
    // calls taken from a quota lease, aggregated per lease (see enforce.lua): settled before they are counted
    const leased = new Map<string, LeasedCalls>();
    const lines = callLines.start(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i] as RatedCall;
      // the instance id comes from the span's resource: one with control characters takes no lease
      if (row.lease && isValidIdentifier(row.instanceId)) addLeased(leased, row);
      let sk = 0;
      if (row.sessionId) {
        sk = sessionIndex.get(row.sessionId) ?? 0;
        if (!sk) {
          keys.push(redisKeys.session(tag, g.period, row.sessionId));
          sk = keys.length - 4;
          sessionIndex.set(row.sessionId, sk);
        }
      }
      lines.call(sk, row.sessionId, row.agent, row.tool, row.priceNano, row.costNano);
    }
    const calls = lines.take();
    args.push(calls.calls, calls.agents, calls.tools, calls.sessions, encodeLeased(leased));
    creditArgs(keys, args, tag, plan.plan.credits, rows); // the last keys and arguments: credits.lua's
    let reply: (string | number)[];
    try {
      const cmd = (this.redis as unknown as { tollgateEnforce: EnforceCommand }).tollgateEnforce.bind(
        this.redis,
      );
      reply = await cmd(keys.length, ...keys, ...args);
    } catch (err) {
      this.metrics.redisErrors.inc();
      if (settling) throw err;
      // Claims already succeeded; the calls are billed and land. They are counted against limits, leases,
      // credits and the margin guard once Redis answers again (`settle`; the marker keeps it to once even if
      // this step did run in Redis and only its reply was lost).
      const chunk: OwedChunk = {
        product,
        rid,
        marker,
        g: { customer: g.customer, period: g.period, day: g.day, rows: [] },
        rows: rows.map((r) => ({ ...r })),
        now,
        calls: rows.length,
        attempts: 0,
        lastAttemptMs: 0,
      };
      if (this.owed.push(product, g.customer, chunk))
        chunk.logId = this.owedLog?.append({
          k: 'step',
          product,
          rid,
          marker,
          g: chunk.g,
          rows: chunk.rows,
          now,
        });
      // at most one line a second: an export of thousands of customers failing at once was thousands of lines
      this.failuresUnlogged++;
      const at = Date.now();
      if (at - this.lastFailureLogMs >= 1000) {
        this.log.warn(
          { err: (err as Error).message, customer: g.customer, failures: this.failuresUnlogged },
          'enforcement script failed',
        );
        this.failuresUnlogged = 0;
        this.lastFailureLogMs = at;
      }
      return [];
    }
    const { over, directives } = parseEnforceReply(reply, g.customer);
    afterCreditsOfReply(reply, product, g.customer, this.creditLedger, this.events, now);
    for (const i of over) {
      const row = rows[i];
      if (row) row.decision = 'over_limit';
    }
    const changed = directives.filter((d) => d.changed);
    if (changed.length) {
      void this.redis.sadd(redisKeys.stateIndex(product), g.customer).catch(() => {});
      for (const d of changed) {
        this.metrics.directives.inc({ action: d.action, reason: d.reason });
        this.events.record({
          atMs: now,
          product,
          customer: g.customer,
          scope: d.scope,
          subjectId: d.id,
          action: d.action,
          reason: d.reason,
          marginBps: d.marginBps ?? null,
          spendNano: 0n,
          actor: 'tollgate',
          note: `spool record ${rid}`,
        });
      }
    }
    return directives.map(({ changed: _c, ...d }) => d);
  }

  /** Takes back an owed step an earlier process wrote down (OwedLog): applied like the others. */
  restoreOwed(e: Extract<OwedEntry, { k: 'step' }>): void {
    const g = e.g as Group;
    const rows = e.rows as RatedCall[];
    this.owed.push(
      e.product,
      g.customer,
      {
        product: e.product,
        rid: e.rid,
        marker: e.marker,
        g,
        rows,
        now: e.now,
        calls: rows.length,
        attempts: 0,
        lastAttemptMs: 0,
        logId: e.id,
      },
      true,
    );
  }

  /** Calls billed whose enforcement step failed, not yet applied. */
  get owedCount(): number {
    return this.owed.calls;
  }

  /**
   * Applies the owed steps, each customer's oldest first, each under its own applied-marker (counted once
   * whatever ran before) and as of when it first ran; rejects while Redis is still failing (see OwedQueue).
   */
  settle(): Promise<void> {
    return this.owed.settleAll();
  }

  private rememberInstances(product: string, rated: readonly RatedCall[], now: number): void {
    if (now - this.lastInstanceSweepMs >= 60_000) {
      this.lastInstanceSweepMs = now;
      for (const [k, at] of this.instancesSeen)
        if (at <= now - INSTANCE_REFRESH_MS) this.instancesSeen.delete(k);
    }
    const fresh = new Map<string, Set<string>>();
    let lastInstance = '';
    let lastCustomer = '';
    for (const row of rated) {
      if (!row.instanceId) continue;
      // rows of one instance and customer come in runs: the first of a run decides for the others
      if (row.instanceId === lastInstance && row.customer === lastCustomer) continue;
      lastInstance = row.instanceId;
      lastCustomer = row.customer;
      const k = `${row.instanceId}\0${product}\0${row.customer}`;
      if ((this.instancesSeen.get(k) ?? 0) > now - INSTANCE_REFRESH_MS) continue;
      this.instancesSeen.set(k, now);
      let set = fresh.get(row.instanceId);
      if (!set) {
        set = new Set();
        fresh.set(row.instanceId, set);
      }
      set.add(`${product}\t${row.customer}`);
    }
    for (const [instanceId, members] of fresh) {
      const key = redisKeys.instance(instanceId);
      const tx = this.redis.multi();
      // in slices: an export may name more customers than a call can spread into arguments
      const list = [...members];
      for (let i = 0; i < list.length; i += 1000) tx.sadd(key, ...list.slice(i, i + 1000));
      tx.expire(key, INSTANCE_TTL_SECONDS)
        .exec()
        .catch(() => {});
    }
  }

  /** Directives for an idle SDK instance: every state in force of the customers it exported calls for. */
  async heartbeat(product: string, instanceIds: readonly string[]): Promise<Directive[]> {
    const out: Directive[] = [];
    const now = Date.now();
    // an SDK heartbeats for itself and at most 32 predecessors: an export of 100,000 resources with ids of
    // their own is not a heartbeat, and read one by one they held the export (and Redis) for seconds
    const ids = [...new Set(instanceIds)].slice(0, MAX_HEARTBEAT_INSTANCES);
    try {
      for (const instanceId of ids) {
        const members = await this.redis.smembers(redisKeys.instance(instanceId));
        for (const m of members) {
          const [p, customer] = m.split('\t') as [string, string];
          if (p !== product) continue; // an instance's customers of another tenant are not this key's business
          out.push(...(await this.statesOf(product, customer, now)));
        }
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'heartbeat directives unavailable (Redis)');
    }
    return out;
  }

  /** Every state in force for one customer, as directives. */
  async statesOf(product: string, customer: string, now = Date.now()): Promise<Directive[]> {
    const all = await this.redis.hgetall(redisKeys.state(customerTag(product, customer)));
    const out: Directive[] = [];
    for (const [field, value] of Object.entries(all)) {
      const s = decodeState(value);
      if (!s || !stateInForce(s, now)) continue;
      const scope: DirectiveScope | undefined =
        field === 'c'
          ? 'customer'
          : ({ a: 'agent', s: 'session', t: 'tool' } as const)[field[0] as 'a' | 's' | 't'];
      const id = field === 'c' ? customer : unescapeKeyPart(field.slice(2));
      if (!scope) continue;
      const d: Directive = {
        action: s.action,
        scope,
        id,
        customer,
        reason: s.reason,
        untilUnixMs: s.untilUnixMs,
      };
      if (s.marginBps !== undefined) d.marginBps = s.marginBps;
      if (s.ratePerSecond !== undefined) d.ratePerSecond = s.ratePerSecond;
      out.push(d);
    }
    return out;
  }
}

export function unescapeKeyPart(s: string): string {
  return s.replace(/%([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(Number.parseInt(h, 16)));
}
