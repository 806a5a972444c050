import type { Directive } from '@tollgate/contracts';
import { TollgateRefusal } from './errors.js';

/**
 * The directives in force in this process, keyed by scope, and the check every tool call goes through
 * before its handler runs. Pure state and arithmetic: no I/O, no timers (the runtime owns those).
 *
 * Processors repeat the states in force in every answer, so `apply` reports only real changes (a new
 * action, reason or rate for a scope), which is what hooks and session closes react to.
 */

interface Entry {
  directive: Directive;
  /** Restored from the state file and not yet confirmed by Tollgate in this process. */
  provisional: boolean;
  /** `false` when the directive hook chose not to enforce it. */
  enforced: boolean;
  /** throttle: token bucket. */
  tokens: number;
  refilledAtMs: number;
}

export interface CallSubject {
  customer: string | undefined;
  agent: string | undefined;
  sessionId: string | undefined;
  tool: string | undefined;
}

export interface Verdict {
  /** Set when the call must be refused. */
  refusal?: TollgateRefusal;
  /** The kill that refused it (sessions it covers are closed). */
  kill?: Directive;
  /** `warn` directives in force for the call (a span event each). */
  warnings?: Directive[];
}

function keyOf(scope: Directive['scope'], customer: string, id: string): string {
  return `${scope}\u0000${customer}\u0000${id}`;
}

/**
 * Every scope but the customer's is matched with its customer: a session id is not unique across customers
 * (under the `trace` rule it is the caller's trace id, which any client may send), so one customer's session
 * kill never stops another customer's calls nor shows them its customer.
 */
function directiveKey(d: Directive): string {
  if (d.scope === 'customer') return keyOf('customer', d.customer, '');
  return keyOf(d.scope, d.customer, d.id);
}

function inForce(d: Directive, nowMs: number): boolean {
  return d.untilUnixMs === 0 || d.untilUnixMs > nowMs;
}

function sameState(a: Directive, b: Directive): boolean {
  return a.action === b.action && a.reason === b.reason && a.ratePerSecond === b.ratePerSecond;
}

export class DirectiveStore {
  private readonly entries = new Map<string, Entry>();

  get size(): number {
    return this.entries.size;
  }

  /**
   * Records directives; returns those that change what is enforced. `decide` is asked (once per change)
   * whether to enforce it, so a hook can opt out before the state takes effect.
   */
  apply(
    directives: readonly Directive[],
    nowMs: number,
    decide: (d: Directive) => boolean = () => true,
    provisional = false,
  ): Directive[] {
    const changed: Directive[] = [];
    for (const d of directives) {
      const key = directiveKey(d);
      const existing = this.entries.get(key);
      if (d.action === 'resume') {
        if (existing) {
          this.entries.delete(key);
          changed.push(d);
          decide(d);
        }
        continue;
      }
      if (!inForce(d, nowMs)) continue;
      if (existing && sameState(existing.directive, d)) {
        existing.directive = d;
        if (!provisional) existing.provisional = false;
        continue;
      }
      const enforced = decide(d);
      this.entries.set(key, {
        directive: d,
        provisional,
        enforced,
        tokens: Math.max(1, d.ratePerSecond ?? 1),
        refilledAtMs: nowMs,
      });
      changed.push(d);
    }
    return changed;
  }

  /** Drops restored directives that Tollgate did not confirm (fail-open once it has answered). */
  dropUnconfirmed(): Directive[] {
    const dropped: Directive[] = [];
    for (const [key, e] of this.entries) {
      if (e.provisional) {
        this.entries.delete(key);
        dropped.push(e.directive);
      }
    }
    return dropped;
  }

  /** Whether a restored, unconfirmed kill or throttle may concern this customer. */
  hasProvisional(customer: string | undefined): boolean {
    if (this.entries.size === 0) return false;
    for (const e of this.entries.values()) {
      if (e.provisional && (customer === undefined || e.directive.customer === customer)) return true;
    }
    return false;
  }

  /** The kill and throttle states in force (what the state file keeps). */
  restrictive(nowMs: number): Directive[] {
    const out: Directive[] = [];
    for (const e of this.entries.values()) {
      const a = e.directive.action;
      if ((a === 'kill' || a === 'throttle') && inForce(e.directive, nowMs)) out.push(e.directive);
    }
    return out;
  }

  private lookup(key: string, nowMs: number): Entry | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (!inForce(e.directive, nowMs)) {
      this.entries.delete(key);
      return undefined;
    }
    return e.enforced ? e : undefined;
  }

  /**
   * Whether a call may run. A kill at any scope refuses it; otherwise each throttle in force must have a
   * token (none is consumed unless all have one); `warn` directives are returned for the span.
   * For a new session (`initialize`) only kills count: opening a session is not rate limited.
   */
  check(s: CallSubject, nowMs: number, what: 'call' | 'session' = 'call'): Verdict | undefined {
    if (this.entries.size === 0) return undefined;
    const found: Entry[] = [];
    const add = (key: string) => {
      const e = this.lookup(key, nowMs);
      if (e) found.push(e);
    };
    // broadest scope first: a refusal names the customer when the whole customer is stopped
    if (s.customer !== undefined) {
      add(keyOf('customer', s.customer, ''));
      if (s.agent) add(keyOf('agent', s.customer, s.agent));
    }
    if (s.customer !== undefined) {
      if (s.sessionId) add(keyOf('session', s.customer, s.sessionId));
      if (s.tool) add(keyOf('tool', s.customer, s.tool));
    }
    if (found.length === 0) return undefined;

    const kill = found.find((e) => e.directive.action === 'kill');
    if (kill) {
      // a tool-scope kill blocks that tool only: it never closes the session
      return { refusal: new TollgateRefusal('killed', kill.directive, what), kill: kill.directive };
    }
    if (what === 'session') return undefined;

    let waitMs = 0;
    let limiting: Directive | undefined;
    const throttles = found.filter((e) => e.directive.action === 'throttle');
    for (const e of throttles) {
      const rate = e.directive.ratePerSecond ?? 1;
      const capacity = Math.max(1, rate);
      e.tokens = Math.min(capacity, e.tokens + ((nowMs - e.refilledAtMs) * rate) / 1000);
      e.refilledAtMs = nowMs;
      if (e.tokens < 1) {
        const wait = Math.ceil(((1 - e.tokens) * 1000) / rate);
        if (wait > waitMs) {
          waitMs = wait;
          limiting = e.directive;
        }
      }
    }
    if (limiting) return { refusal: new TollgateRefusal('throttled', limiting, what, waitMs) };
    for (const e of throttles) e.tokens -= 1;

    const warnings = found.filter((e) => e.directive.action === 'warn').map((e) => e.directive);
    return warnings.length ? { warnings } : undefined;
  }
}
