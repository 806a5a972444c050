import { escapeKeyPart } from './redis-keys.js';

/**
 * Enforcement state, kept by the processor in the Redis hash `redisKeys.state(tag)` and read by every
 * enforcement point (the Kong plugin in its access phase, the processor when it answers an export).
 *
 * Fields: `c` (the customer itself), `a:<agent>`, `s:<session>`, `t:<tool>` (ids escaped like key parts).
 * Value: `<action>|<reason>|<untilUnixMs>|<ratePerSecond>|<marginBps>` where action is `kill`, `throttle`,
 * `warn` or `resume`; `untilUnixMs` 0 means "until an operator lifts it"; `ratePerSecond` is set for
 * throttle; `marginBps` is empty when unknown. A field whose until time has passed is no longer in force.
 * `resume` records a lift (by an operator, or the margin guard once the margin recovered): it restricts
 * nothing, and is sent to senders as a `resume` directive until it lapses.
 */
export type StateAction = 'kill' | 'throttle' | 'warn' | 'resume';
export type StateScope = 'customer' | 'agent' | 'session' | 'tool';

export interface EnforcementState {
  action: StateAction;
  reason: string;
  untilUnixMs: number;
  ratePerSecond?: number;
  marginBps?: number;
}

export function stateField(scope: StateScope, id: string): string {
  if (scope === 'customer') return 'c';
  return `${scope === 'agent' ? 'a' : scope === 'session' ? 's' : 't'}:${escapeKeyPart(id)}`;
}

export function encodeState(s: EnforcementState): string {
  return [s.action, s.reason, String(s.untilUnixMs), s.ratePerSecond ?? '', s.marginBps ?? ''].join('|');
}

export function decodeState(value: string | null | undefined): EnforcementState | undefined {
  if (!value) return undefined;
  const [action, reason = '', until = '0', rate = '', margin = ''] = value.split('|');
  if (action !== 'kill' && action !== 'throttle' && action !== 'warn' && action !== 'resume')
    return undefined;
  const s: EnforcementState = { action, reason, untilUnixMs: Number(until) || 0 };
  if (rate !== '') s.ratePerSecond = Number(rate);
  if (margin !== '') s.marginBps = Number(margin);
  return s;
}

export function stateInForce(s: EnforcementState | undefined, nowMs: number): boolean {
  return s !== undefined && (s.untilUnixMs === 0 || s.untilUnixMs > nowMs);
}

/** Whether a state in force refuses calls (kill) or limits their rate (throttle). */
export function stateRestricts(s: EnforcementState | undefined, nowMs: number): boolean {
  return stateInForce(s, nowMs) && (s?.action === 'kill' || s?.action === 'throttle');
}
