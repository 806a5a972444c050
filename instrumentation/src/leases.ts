import http from 'node:http';
import https from 'node:https';
import type {
  Directive,
  LeaseErrorCode,
  LeaseExhausted,
  LeaseGrant,
  LeaseRequest,
  LeaseResult,
} from '@tollgate/contracts';
import { TollgateRefusal } from './errors.js';

/**
 * The SDK's side of quota leases (docs/enforcement.md, "Leases"): a book of the leases this process holds,
 * one per customer, from which every tool call takes its known price before the tool runs. A call the book
 * covers costs a few map lookups and subtractions (no I/O); a book running low renews in the background;
 * an empty one renews synchronously, bounded by `timeoutMs`, then follows `failMode`.
 */

export interface LeaseOptions {
  /** Full URL of Tollgate's `POST /v1/leases`. */
  url: string;
  headers: Record<string, string>;
  /** How long a call waits for a lease when none covers it (ms). */
  timeoutMs: number;
  /**
   * How long a call waits for the first answer about its customer (ms; default `timeoutMs`, the SDK's
   * configuration 2000): before it nothing is known of the limits, and a slow first answer otherwise let a
   * whole burst run fail-open past them. A Tollgate that refuses the connection still fails at once.
   */
  firstTimeoutMs?: number;
  /** No lease in time (Tollgate or its Redis unreachable): run the call unleased, or refuse it. */
  failMode: 'open' | 'closed';
  /** A lease is sized to last this long at the instance's recent rate (ms). */
  windowMs: number;
  /** A lease is not used closer than this to its expiry, so the spans of its calls settle in time (ms). */
  safetyMs: number;
  /** Timeout of a background renewal or a release (ms). */
  requestTimeoutMs: number;
}

/** What a call took from a lease (stamped on its billing span), or nothing when no limit applies. */
export interface Ticket {
  leaseId: string;
  reserved: number;
}
const NO_LEASE: Ticket = Object.freeze({ leaseId: '', reserved: 0 });

/** A call's lease outcome: a ticket, a refusal, or a renewal to wait for. */
export type Take = Ticket | TollgateRefusal | Promise<Ticket | TollgateRefusal>;

interface Sub {
  granted: number;
  used: number;
}

/** After a failed renewal, calls that need a lease follow the fail mode at once for this long. */
const FAILURE_BACKOFF_MS = 1000;
/** A refusal for an exhausted limit is repeated without asking Tollgate again for this long. */
export const DENIAL_CACHE_MS = 500;
const MAX_SESSIONS = 256;
/** A Tollgate that answered 404 to a lease request is asked again after this long. */
const NOT_OFFERED_RETRY_MS = 60_000;
const MAX_WANT_CALLS = 10_000;
/** Failed releases kept to be tried again (the oldest dropped beyond: they stay held at Tollgate). */
const MAX_UNRELEASED = 1000;
/** Answers a call's wait may take, each in time, before the call follows the fail mode (see waitFor). */
const MAX_WAIT_ANSWERS = 4;
/** A lease-wait timer firing this much late says the process itself was stalled (not Tollgate slow). */
const STALL_MS = 20;

/** One customer's lease and what this process took from it (amounts are cumulative over the lease). */
class Held {
  leaseId = '';
  /** Local time after which the lease is not used (its expiry minus the safety margin). */
  usableUntilMs = 0;
  /** Local time after which a background renewal is started. */
  renewAtMs = 0;
  known = false;
  /** A wait for the first answer ran out: later waits take `timeoutMs` (a hung Tollgate costs one long wait). */
  firstWaitSpent = false;
  calls = Number.POSITIVE_INFINITY;
  money = Number.POSITIVE_INFINITY;
  callsUsed = 0;
  moneyUsed = 0;
  readonly tools = new Map<string, Sub>();
  readonly sessions = new Map<string, Sub>();
  limitedTools: ReadonlySet<string> = new Set();
  sessionLimited = false;
  prices = new Map<string, number>();
  defaultPrice = 0;
  currency = '';
  exhausted: LeaseExhausted[] = [];
  deniedUntilMs = 0;
  failedUntilMs = 0;
  renewing: Promise<void> | undefined;
  /** Answers applied so far (a refusal needs an answer given after the call began waiting). */
  answers = 0;
  /** Calls waiting for a renewal (added to the next request's size). */
  waiting = 0;
  /** Calls and money taken since the last grant (sizes the next one). */
  sinceCalls = 0;
  sinceMoney = 0;
  sinceMs = 0;
  /** When a call was last taken from the lease. */
  lastTakeMs = 0;

  constructor(readonly customer: string | undefined) {}

  /** No lease needed: no limit applies to this customer's calls of `tool`. */
  unlimited(tool: string): boolean {
    return (
      this.leaseId === '' &&
      !this.sessionLimited &&
      !this.limitedTools.has(tool) &&
      this.calls === Number.POSITIVE_INFINITY &&
      this.money === Number.POSITIVE_INFINITY
    );
  }

  priceOf(tool: string): number {
    const p = this.prices.get(tool);
    return p === undefined ? this.defaultPrice : p;
  }

  /** Which allowance cannot cover one more call of `tool` in `session` at `price` (undefined: all can). */
  short(
    tool: string,
    session: string,
    price: number,
  ): LeaseExhausted['scope'] | 'calls' | 'money' | undefined {
    if (this.calls - this.callsUsed < 1) return 'calls';
    if (this.money - this.moneyUsed < price) return 'money';
    if (this.limitedTools.size > 0 && this.limitedTools.has(tool)) {
      const t = this.tools.get(tool);
      if (!t || t.granted - t.used < 1) return 'tool';
    }
    if (this.sessionLimited && session) {
      const s = this.sessions.get(session);
      if (!s || s.granted - s.used < price) return 'session';
    }
    return undefined;
  }

  /** Whether the last answer said the limit behind this allowance is exhausted (or a kill is in force). */
  exhaustedFor(short: string, tool: string, session: string): boolean {
    return this.exhausted.some((e) => exhausts(e, short, tool, session));
  }

  /**
   * A limit the last answer named as exhausted that a call of `tool` in `session` at `price` falls under,
   * while its window lasts (the day's or period's end; a kill, or credits, until Tollgate answers otherwise).
   */
  stillExhausted(tool: string, session: string, price: number, nowMs: number): LeaseExhausted | undefined {
    return this.exhausted.find((e) => {
      if (e.untilUnixMs !== 0 && e.untilUnixMs <= nowMs) return false;
      switch (e.reason) {
        case 'hard_limit:calls_per_day':
          return true;
        case 'hard_limit:spend_per_period':
        case 'credits:exhausted':
          return price > 0;
        case 'hard_limit:calls_per_tool':
          return e.scope === 'tool' && e.id === tool;
        case 'hard_limit:spend_per_session':
          return e.scope === 'session' && e.id === session && price > 0;
        default:
          return e.scope === 'customer'; // a kill in force
      }
    });
  }

  /**
   * The customer-wide stop the last answer named, when it leaves this customer nothing to take: a kill in
   * force whatever its reason (lease.lua answers `killed`: nothing granted, expiring at once — a kill left
   * by a crossed hard limit names that limit), or a customer limit the lease cannot cover the call under.
   */
  customerStop(nowMs: number, short: string | undefined): LeaseExhausted | undefined {
    if (nowMs < this.usableUntilMs && short === undefined) return undefined;
    return this.exhausted.find((e) => e.scope === 'customer');
  }

  /** Gives back what `consume` took, for a call that turned out not to be billed. */
  unconsume(tool: string, session: string, price: number): void {
    this.callsUsed--;
    this.moneyUsed -= price;
    // the sizing counters restart at each grant: a ticket taken before the last one is not in them
    if (this.sinceCalls > 0) this.sinceCalls--;
    this.sinceMoney = Math.max(0, this.sinceMoney - price);
    if (this.limitedTools.size > 0 && this.limitedTools.has(tool)) (this.tools.get(tool) as Sub).used--;
    if (this.sessionLimited && session) (this.sessions.get(session) as Sub).used -= price;
  }

  consume(tool: string, session: string, price: number): void {
    this.lastTakeMs = Date.now();
    this.callsUsed++;
    this.moneyUsed += price;
    this.sinceCalls++;
    this.sinceMoney += price;
    if (this.limitedTools.size > 0 && this.limitedTools.has(tool)) (this.tools.get(tool) as Sub).used++;
    if (this.sessionLimited && session) (this.sessions.get(session) as Sub).used += price;
  }

  /** Whether the lease runs low: under half of what the last grants covered, or near its expiry. */
  low(nowMs: number): boolean {
    if (nowMs >= this.renewAtMs) return true;
    const want = Math.max(1, this.sinceCalls);
    return this.calls - this.callsUsed < want || this.money - this.moneyUsed < this.sinceMoney;
  }

  reset(): void {
    this.leaseId = '';
    this.calls = Number.POSITIVE_INFINITY;
    this.money = Number.POSITIVE_INFINITY;
    this.callsUsed = 0;
    this.moneyUsed = 0;
    this.tools.clear();
    this.sessions.clear();
  }
}

export interface LeaseStats {
  /** Calls taken from a lease (or passed by a lease answer that found no limit). */
  taken: number;
  /** Lease requests sent (grants and renewals; each is one Redis script call at Tollgate). */
  requests: number;
  /** Calls that waited for a renewal (the book could not cover them). */
  syncRenewals: number;
  /** Renewals started ahead of exhaustion, off the call path. */
  backgroundRenewals: number;
  /** Renewals that came with an export's answer (no request of their own). */
  exportRenewals: number;
  /** Calls refused because a limit is exhausted (code `killed`, reason `hard_limit:*`). */
  refused: number;
  /** Calls run without a lease because none could be had in time (fail-open). */
  failOpen: number;
  /** Calls refused because none could be had in time (fail-closed, code `unavailable`). */
  failClosed: number;
  /** Renewals that failed or did not answer within the timeout. */
  failures: number;
  released: number;
  /** Tickets given back: calls not billed after all (a round of a multi-round-trip call that asked for input). */
  givenBack: number;
}

/** Whether an exhausted limit is the one behind the allowance that fell short (a kill is behind every one). */
function exhausts(e: LeaseExhausted, short: string, tool: string, session: string): boolean {
  if (!e.reason.startsWith('hard_limit:')) return true;
  if (short === 'calls') return e.reason === 'hard_limit:calls_per_day';
  if (short === 'money') return e.reason === 'hard_limit:spend_per_period';
  if (short === 'tool') return e.scope === 'tool' && e.id === tool;
  return e.scope === 'session' && e.id === session;
}

function num(v: string | null | undefined): number {
  return v === null || v === undefined ? Number.POSITIVE_INFINITY : Number(v);
}

function refusalFor(
  h: Held,
  scope: string,
  tool: string,
  session: string,
  stop?: LeaseExhausted,
): TollgateRefusal {
  const x = stop ?? h.exhausted.find((e) => exhausts(e, scope, tool, session));
  const reason =
    x?.reason ??
    (scope === 'calls'
      ? 'hard_limit:calls_per_day'
      : scope === 'money'
        ? 'hard_limit:spend_per_period'
        : scope === 'tool'
          ? 'hard_limit:calls_per_tool'
          : 'hard_limit:spend_per_session');
  const killed = x !== undefined && !x.reason.startsWith('hard_limit:');
  const s: Directive['scope'] = killed || (scope !== 'tool' && scope !== 'session') ? 'customer' : scope;
  const customer = h.customer ?? '';
  const d: Directive = {
    action: 'kill',
    scope: s,
    id: s === 'tool' ? tool : s === 'session' ? session : customer,
    customer,
    reason,
    untilUnixMs: x?.untilUnixMs ?? 0,
  };
  return new TollgateRefusal('killed', d);
}

export class LeaseBook {
  private readonly held = new Map<string | undefined, Held>();
  /** Releases not sent yet (see sendReleases). */
  private readonly unreleased: LeaseRequest[] = [];
  private readonly agent: http.Agent;
  readonly stats: LeaseStats = {
    taken: 0,
    requests: 0,
    syncRenewals: 0,
    backgroundRenewals: 0,
    exportRenewals: 0,
    refused: 0,
    failOpen: 0,
    failClosed: 0,
    failures: 0,
    released: 0,
    givenBack: 0,
  };

  constructor(
    private readonly o: LeaseOptions,
    private readonly instanceId: string,
    private readonly onProblem: (message: string) => void,
  ) {
    const Agent = o.url.startsWith('https:') ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: 4 });
  }

  /**
   * Gives back a ticket of a call that is not billed after all (a multi-round-trip call's round that asked
   * for input): Tollgate never sees its span, so the lease's own count must not keep it. A ticket of a lease
   * since replaced is left (that lease is gone, and with it what it counted).
   */
  giveBack(customer: string | undefined, ticket: Ticket, tool: string, session: string): void {
    const h = this.held.get(customer);
    if (!h || !ticket.leaseId || h.leaseId !== ticket.leaseId) return;
    h.unconsume(tool, session, ticket.reserved);
    this.stats.givenBack++;
  }

  /**
   * Takes one call of `tool` (in billing session `session`) for `customer` from its lease. Synchronous when
   * the lease covers it; a promise when a renewal must be waited for.
   */
  take(customer: string | undefined, tool: string, session: string, nowMs: number): Take {
    let h = this.held.get(customer);
    if (h === undefined) {
      h = new Held(customer);
      this.held.set(customer, h);
    }
    if (h.known && nowMs < h.usableUntilMs) {
      if (h.unlimited(tool)) {
        // Tollgate found no limit to hold back for this customer (and tool)
        this.stats.taken++;
        if (h.renewing === undefined && nowMs >= h.renewAtMs) void this.renew(h, tool, session, 0, nowMs);
        return NO_LEASE;
      }
      const price = h.priceOf(tool);
      const short = h.short(tool, session, price);
      if (short === undefined) {
        h.consume(tool, session, price);
        this.stats.taken++;
        if (h.renewing === undefined && h.low(nowMs)) {
          this.stats.backgroundRenewals++;
          void this.renew(h, tool, session, price, nowMs);
        }
        return { leaseId: h.leaseId, reserved: price };
      }
      if (nowMs < h.deniedUntilMs && h.exhaustedFor(short, tool, session)) {
        this.stats.refused++;
        return refusalFor(h, short, tool, session);
      }
    }
    if (h.known && nowMs < h.deniedUntilMs) {
      // a recent answer said the customer is stopped: refused from it, without asking again at once
      const stop = h.customerStop(nowMs, 'calls');
      if (stop) {
        this.stats.refused++;
        return refusalFor(h, 'calls', tool, session, stop);
      }
    }
    if (nowMs < h.failedUntilMs) return this.failed(h, tool, session, nowMs);
    return this.waitFor(h, tool, session, nowMs);
  }

  /**
   * No lease could be had (Tollgate unreachable or late): refused when Tollgate's last answer named a limit
   * this call falls under as exhausted and its window has not ended, else the fail mode. Without the first
   * rule, a customer refused at its limit ran every call unleased (fail-open) as soon as Tollgate could not
   * be asked, for as long as it could not — a limit Tollgate had already reported, forgotten.
   */
  private failed(h: Held, tool: string, session: string, nowMs: number): Ticket | TollgateRefusal {
    const known = h.known ? h.stillExhausted(tool, session, h.priceOf(tool), nowMs) : undefined;
    if (known) {
      this.stats.refused++;
      return refusalFor(h, known.scope === 'customer' ? 'calls' : known.scope, tool, session, known);
    }
    if (this.o.failMode === 'open') {
      this.stats.failOpen++;
      return NO_LEASE;
    }
    this.stats.failClosed++;
    const customer = h.customer ?? '';
    return new TollgateRefusal(
      'unavailable',
      {
        action: 'throttle',
        scope: 'customer',
        id: customer,
        customer,
        reason: 'lease_unavailable',
        untilUnixMs: 0,
      },
      'call',
      FAILURE_BACKOFF_MS,
    );
  }

  /**
   * A call the book cannot cover waits (bounded by `timeoutMs`) for renewals: it takes as soon as one covers
   * it, is refused when an answer given after it arrived says the limit is exhausted, and follows the fail
   * mode when Tollgate does not answer in time (or answers with an error).
   */
  private async waitFor(
    h: Held,
    tool: string,
    session: string,
    nowMs: number,
  ): Promise<Ticket | TollgateRefusal> {
    this.stats.syncRenewals++;
    // the first answer about a customer bounds what a burst may take: it is worth a longer wait
    const first = !h.known && !h.firstWaitSpent;
    const timeout = first ? Math.max(this.o.timeoutMs, this.o.firstTimeoutMs ?? 0) : this.o.timeoutMs;
    let deadline = nowMs + timeout;
    // a burst may need several answers (a grant takes a share of what is left): each answer in time earns
    // the wait another `timeout`, up to this in all
    const lastDeadline = nowMs + timeout * MAX_WAIT_ANSWERS;
    let readPending = false;
    const seenAnswers = h.answers;
    h.waiting++;
    try {
      for (;;) {
        const now = Date.now();
        // an answer given while this call waited says a kill is in force: refused, whatever the lease holds
        // (a killed customer's answer grants nothing and expires at once, so it is never "usable")
        if (
          h.known &&
          h.answers > seenAnswers &&
          h.exhausted.some((e) => !e.reason.startsWith('hard_limit:'))
        ) {
          h.deniedUntilMs = now + DENIAL_CACHE_MS;
          this.stats.refused++;
          return refusalFor(h, 'calls', tool, session);
        }
        // an answer that grants nothing usable and names a customer-wide stop: a kill left by a crossed hard
        // limit (lease.lua's `killed`, which expires at once). Asking again would get the same answer until
        // timeoutMs, and then the fail mode would run the call of a stopped customer.
        if (h.known && h.answers > seenAnswers && now >= h.usableUntilMs) {
          const stop = h.customerStop(now, 'calls');
          if (stop) {
            h.deniedUntilMs = now + DENIAL_CACHE_MS;
            this.stats.refused++;
            return refusalFor(h, 'calls', tool, session, stop);
          }
        }
        if (h.known && now < h.usableUntilMs) {
          if (h.unlimited(tool)) {
            this.stats.taken++;
            return NO_LEASE;
          }
          const p = h.priceOf(tool);
          const short = h.short(tool, session, p);
          if (short === undefined) {
            h.consume(tool, session, p);
            this.stats.taken++;
            return { leaseId: h.leaseId, reserved: p };
          }
          if (h.answers > seenAnswers) {
            // the answer to this wait cannot cover the call: refused when it names the limit behind the
            // allowance that fell short, or a customer-wide one (a kill with a hard limit's reason grants
            // no calls and no money, so the call falls short on calls whichever limit was crossed)
            const stop = h.exhaustedFor(short, tool, session) ? undefined : h.customerStop(now, short);
            if (stop || h.exhaustedFor(short, tool, session)) {
              h.deniedUntilMs = now + DENIAL_CACHE_MS;
              this.stats.refused++;
              return refusalFor(h, short, tool, session, stop);
            }
          }
        }
        if (now >= deadline && h.renewing && !readPending) {
          // The deadline timer runs before I/O in the event loop's turn: an answer that arrived while this
          // process was busy may be waiting in the socket. Read it (one turn of I/O) before failing.
          readPending = true;
          await new Promise<void>((r) => setImmediate(r));
          continue;
        }
        if (now >= deadline || now < h.failedUntilMs) {
          if (now >= deadline) {
            this.stats.failures++;
            if (first) h.firstWaitSpent = true;
          }
          h.failedUntilMs = Math.max(h.failedUntilMs, now + FAILURE_BACKOFF_MS);
          return this.failed(h, tool, session, now);
        }
        let timer: NodeJS.Timeout | undefined;
        let late = 0;
        const answersBefore = h.answers;
        const wait = Math.max(1, deadline - now);
        await Promise.race([
          this.renew(h, tool, session, h.known ? h.priceOf(tool) : 0, now),
          new Promise<void>((r) => {
            timer = setTimeout(() => {
              late = Date.now() - (now + wait);
              r();
            }, wait);
          }),
        ]);
        clearTimeout(timer);
        // A timer that fired late means this process was too busy to run it — and so to send the request and
        // read Tollgate's answer, which the timer phase precedes. That stall is not Tollgate's lateness: the
        // wait starts over, so `timeoutMs` bounds the time Tollgate had, not our own. Bounded all the same: a
        // renewal that fails or times out (`requestTimeoutMs`) ends the wait through `failedUntilMs`.
        if (late > STALL_MS) deadline = Date.now() + timeout;
        else if (h.answers > answersBefore) deadline = Math.min(lastDeadline, Date.now() + timeout);
      }
    } finally {
      h.waiting--;
    }
  }

  /** One renewal per customer at a time; a call that needs one while it runs waits for the same one. */
  private renew(h: Held, tool: string, session: string, price: number, nowMs: number): Promise<void> {
    if (h.renewing) return h.renewing;
    const p = this.grant(h, tool, session, price, nowMs).finally(() => {
      h.renewing = undefined;
    });
    h.renewing = p;
    return p;
  }

  private request(h: Held, tool: string, session: string, price: number, nowMs: number): LeaseRequest {
    // size: what the recent rate needs over the window, at least twice what went since the last grant
    const elapsed = Math.max(1, nowMs - h.sinceMs);
    const rate = (h.sinceCalls * 1000) / elapsed;
    const wantCalls = Math.min(
      MAX_WANT_CALLS,
      Math.max(1, Math.ceil((rate * this.o.windowMs) / 1000), h.sinceCalls * 2) + h.waiting,
    );
    const perCall = h.sinceCalls > 0 ? h.sinceMoney / h.sinceCalls : price;
    // Lua compares money exactly below 2^53 nano-units: a wish is never larger
    const wantMoney = Math.min(Number.MAX_SAFE_INTEGER, Math.ceil(Math.max(price, perCall) * wantCalls));
    // what this process lets lapse stays held at Tollgate: it releases what it does not use (releaseIdle,
    // releaseAll), so a lease lapses only when the process was killed or cut off
    const r: LeaseRequest = { op: 'grant', wantCalls, holdOnLapse: true };
    if (h.customer !== undefined) r.customer = h.customer;
    if (wantMoney > 0) r.wantMoney = String(wantMoney);
    if (price > 0) r.minMoney = String(price);
    if (h.leaseId) {
      r.leaseId = h.leaseId;
      r.consumedCalls = h.callsUsed;
      if (h.moneyUsed > 0) r.consumedMoney = String(h.moneyUsed);
    }
    if (h.limitedTools.has(tool) || h.tools.size > 0) {
      const ids = new Set([...h.tools.keys(), ...(h.limitedTools.has(tool) ? [tool] : [])]);
      r.tools = [...ids].map((id) => ({ id, want: wantCalls, consumed: h.tools.get(id)?.used ?? 0 }));
    }
    if (h.sessionLimited && session) {
      if (!h.sessions.has(session) && h.sessions.size >= MAX_SESSIONS) {
        // the oldest session's allowance is given back with the rest on the next release
        const oldest = h.sessions.keys().next().value as string;
        h.sessions.delete(oldest);
      }
      const ids = new Set([session, ...h.sessions.keys()]);
      r.sessions = [...ids].slice(0, 64).map((id) => ({
        id,
        want: String(Math.max(1, wantMoney)),
        consumed: String(h.sessions.get(id)?.used ?? 0),
      }));
    }
    return r;
  }

  private async grant(h: Held, tool: string, session: string, price: number, nowMs: number): Promise<void> {
    const req = this.request(h, tool, session, price, nowMs);
    let result: LeaseResult | undefined;
    try {
      result = (await this.post([req], this.o.requestTimeoutMs))[0];
    } catch (err) {
      if ((err as { status?: number }).status === 404) {
        // a Tollgate that offers no leases (enforcement off, or an older version): nothing to hold back
        this.onProblem(
          `Tollgate at ${this.o.url} offers no quota leases (404): calls are enforced per export`,
        );
        this.notOffered(h);
        return;
      }
      this.stats.failures++;
      h.failedUntilMs = Date.now() + FAILURE_BACKOFF_MS;
      this.onProblem(`quota lease renewal failed (${(err as Error).message})`);
      return;
    }
    if (!result) return;
    if (!result.ok) {
      const code: LeaseErrorCode = result.error.code;
      if ((code === 'TG_LEASE_UNKNOWN' || code === 'TG_LEASE_FOREIGN') && h.leaseId) {
        // expired or released meanwhile: start a new lease at once
        h.reset();
        return this.grant(h, tool, session, price, nowMs);
      }
      this.stats.failures++;
      h.failedUntilMs = Date.now() + FAILURE_BACKOFF_MS;
      this.onProblem(`quota lease refused: ${code}: ${result.error.message}`);
      return;
    }
    this.apply(h, result.lease);
  }

  /** No leases offered: calls of this customer run as without leases; asked again after a while. */
  private notOffered(h: Held): void {
    const now = Date.now();
    h.reset();
    h.known = true;
    h.limitedTools = new Set();
    h.sessionLimited = false;
    h.exhausted = [];
    h.usableUntilMs = now + NOT_OFFERED_RETRY_MS;
    h.renewAtMs = now + NOT_OFFERED_RETRY_MS;
    h.answers++;
  }

  private apply(h: Held, g: LeaseGrant): void {
    const now = Date.now();
    const same = g.leaseId === h.leaseId && g.leaseId !== '';
    if (!same) h.reset();
    h.leaseId = g.leaseId;
    h.known = true;
    const ttl = Math.max(0, g.expiresUnixMs - now);
    h.usableUntilMs = now + Math.max(0, ttl - Math.min(this.o.safetyMs, ttl / 2));
    h.renewAtMs = now + ttl / 3;
    // cumulative amounts only grow: an answer that crossed a newer one never lowers them — except an answer
    // that says a kill is in force: Tollgate has cut the lease back to what was consumed (lease.lua), and
    // what it held no longer covers anything
    const calls = g.calls === null ? Number.POSITIVE_INFINITY : g.calls;
    const money = num(g.money);
    const cut = (g.exhausted ?? []).some((e) => !e.reason.startsWith('hard_limit:'));
    h.calls = same && !cut ? Math.max(h.calls, calls) : calls;
    h.money = same && !cut ? Math.max(h.money, money) : money;
    if (cut) {
      for (const t of h.tools.values()) t.granted = 0;
      for (const x of h.sessions.values()) x.granted = 0;
    }
    for (const [id, n] of Object.entries(g.tools)) {
      const t = h.tools.get(id);
      if (t) t.granted = Math.max(t.granted, n);
      else h.tools.set(id, { granted: n, used: 0 });
    }
    for (const [id, m] of Object.entries(g.sessions)) {
      const s = h.sessions.get(id);
      if (s) s.granted = Math.max(s.granted, Number(m));
      else h.sessions.set(id, { granted: Number(m), used: 0 });
    }
    h.limitedTools = new Set(g.limitedTools);
    h.sessionLimited = g.sessionLimited;
    h.prices = new Map(Object.entries(g.prices).map(([k, v]) => [k, Number(v)]));
    h.defaultPrice = g.defaultPrice === null ? 0 : Number(g.defaultPrice);
    h.currency = g.currency;
    h.exhausted = g.exhausted ?? [];
    h.answers++;
    h.deniedUntilMs = 0;
    h.failedUntilMs = 0;
    h.sinceCalls = 0;
    h.sinceMoney = 0;
    h.sinceMs = now;
  }

  /** Leases Tollgate renewed with an export's answer: applied to the lease they name, if this book holds it. */
  renewed(grants: unknown[]): void {
    for (const raw of grants) {
      const g = raw as Partial<LeaseGrant> | null;
      if (!g || typeof g.leaseId !== 'string' || !g.leaseId || typeof g.expiresUnixMs !== 'number') continue;
      for (const h of this.held.values()) {
        if (h.leaseId === g.leaseId) {
          this.stats.exportRenewals++;
          this.apply(h, g as LeaseGrant);
        }
      }
    }
  }

  /** What this process may still take from a customer's lease without asking (for inspection and tests). */
  remaining(customer: string | undefined): { calls: number; money: number; leaseId: string } | undefined {
    const h = this.held.get(customer);
    if (!h?.known) return undefined;
    return { calls: h.calls - h.callsUsed, money: h.money - h.moneyUsed, leaseId: h.leaseId };
  }

  /** Gives back what the leases hold beyond what this process consumed (after its spans were flushed). */
  async releaseAll(): Promise<void> {
    await this.release([...this.held.values()].filter((h) => h.leaseId));
  }

  /**
   * Gives back the leases of customers with no call for a third of their TTL (run by the runtime's timer):
   * an idle lease is released, not left to lapse, since a lease that lapses stays held at Tollgate (a killed
   * process's calls may have run unreported). The next call of such a customer asks for a new lease.
   */
  async releaseIdle(nowMs: number): Promise<void> {
    if (this.unreleased.length > 0) await this.sendReleases(this.unreleased.splice(0));
    const idle = [...this.held.values()].filter(
      (h) =>
        h.leaseId &&
        h.renewing === undefined &&
        h.waiting === 0 &&
        nowMs - Math.max(h.lastTakeMs, h.sinceMs) >= h.renewAtMs - h.sinceMs,
    );
    if (idle.length) await this.release(idle);
  }

  private async release(holders: Held[]): Promise<void> {
    const reqs: LeaseRequest[] = [];
    for (const h of holders) {
      const r: LeaseRequest = {
        op: 'release',
        leaseId: h.leaseId,
        consumedCalls: h.callsUsed,
        tools: [...h.tools].map(([id, t]) => ({ id, want: 1, consumed: t.used })),
        sessions: [...h.sessions].map(([id, s]) => ({ id, want: '1', consumed: String(s.used) })),
      };
      if (h.customer !== undefined) r.customer = h.customer;
      if (h.moneyUsed > 0) r.consumedMoney = String(h.moneyUsed);
      reqs.push(r);
      h.reset();
      h.known = false;
    }
    await this.sendReleases(reqs);
  }

  /**
   * Sends releases, 100 per request. Those that fail (Tollgate down, restarting, late) are kept and sent again
   * at the next tick (`releaseIdle`): a lease that lapses stays held at Tollgate, so one failed release
   * stranded what an honest process did not use for the rest of the day. Tollgate takes the release of a
   * lapsed lease from its holder. At most MAX_UNRELEASED are kept.
   */
  private async sendReleases(reqs: LeaseRequest[]): Promise<void> {
    for (let i = 0; i < reqs.length; i += 100) {
      const batch = reqs.slice(i, i + 100);
      try {
        await this.post(batch, this.o.requestTimeoutMs);
        this.stats.released += batch.length;
      } catch (err) {
        this.unreleased.push(...batch);
        this.unreleased.splice(0, Math.max(0, this.unreleased.length - MAX_UNRELEASED));
        this.onProblem(
          `quota leases not released yet (tried again at the next tick): ${(err as Error).message}`,
        );
      }
    }
  }

  close(): void {
    this.agent.destroy();
  }

  private post(requests: LeaseRequest[], timeoutMs: number): Promise<LeaseResult[]> {
    this.stats.requests += requests.length;
    const body = Buffer.from(JSON.stringify({ instanceId: this.instanceId, requests }));
    const target = new URL(this.o.url);
    const mod = target.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(
        target,
        {
          method: 'POST',
          agent: this.agent,
          timeout: timeoutMs,
          headers: {
            ...this.o.headers,
            'content-type': 'application/json',
            'content-length': String(body.length),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            if (res.statusCode !== 200) {
              reject(
                Object.assign(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`), {
                  status: res.statusCode,
                }),
              );
              return;
            }
            try {
              const doc = JSON.parse(text) as { results?: LeaseResult[] };
              if (!Array.isArray(doc.results)) throw new Error('no results');
              resolve(doc.results);
            } catch (err) {
              reject(new Error(`unreadable lease answer: ${(err as Error).message}`));
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      req.end(body);
    });
  }
}
