import { CREDIT_REASONS, creditKeys, type RatedCall } from '@tollgate/contracts';
import type { EnforcementLog } from '../enforcement/events.js';
import type { Plan } from '../plans/schema.js';
import type { CreditLedger } from './ledger.js';

/**
 * The part of an enforce.lua call that belongs to credits.lua: two keys (wallet, outbox) appended to the
 * keys, and six arguments appended last (credits.lua reads them from the end): the two keys' indexes, hard
 * stop, overdraft, warn below, and the calls' event ids in call order. Kept here so that enforcer.ts carries
 * one line of it.
 */
export function creditArgs(
  keys: string[],
  args: (string | number | Buffer)[],
  tag: string,
  terms: Plan['credits'],
  rows: readonly RatedCall[],
): void {
  keys.push(creditKeys.wallet(tag), creditKeys.outbox(tag));
  args.push(
    keys.length - 1,
    keys.length,
    terms.hardStop ? 1 : 0,
    terms.overdraft.toString(),
    terms.warnBelow.toString(),
    rows.map((r) => r.eventId).join(','),
  );
}

/**
 * The part of a lease.lua call that belongs to credits.lua (credits_lease_headroom): the wallet key appended
 * to the keys, and three arguments appended last: its index, hard stop, overdraft.
 */
export function leaseCreditArgs(
  keys: string[],
  args: (string | number)[],
  tag: string,
  terms: Plan['credits'],
): void {
  keys.push(creditKeys.wallet(tag));
  args.push(keys.length, terms.hardStop ? 1 : 0, terms.overdraft.toString());
}

/**
 * The trailer enforce.lua appends for a customer with a wallet: balance after the export, outbox length, and
 * whether the script lifted the credits' own kill (money came back without a grant request).
 */
export function creditsOfReply(
  reply: readonly (string | number)[],
): { balanceNano: bigint; outbox: number; lifted: boolean } | undefined {
  const at = reply.length - 4;
  if (at < 0 || reply[at] !== 'credits') return undefined;
  return {
    balanceNano: BigInt(String(reply[at + 1])),
    outbox: Number(reply[at + 2]),
    lifted: Number(reply[at + 3]) === 1,
  };
}

/** After enforce.lua: drain the ledger outbox soon, audit a lift the script made. */
export function afterCreditsOfReply(
  reply: readonly (string | number)[],
  product: string,
  customer: string,
  ledger: CreditLedger | undefined,
  events: EnforcementLog,
  now: number,
): void {
  const c = creditsOfReply(reply);
  if (!c) return;
  if (c.outbox) ledger?.notify(product, customer);
  if (c.lifted)
    events.record({
      atMs: now,
      product,
      customer,
      scope: 'customer',
      subjectId: customer,
      action: 'resume',
      reason: CREDIT_REASONS.toppedUp,
      marginBps: null,
      spendNano: c.balanceNano,
      actor: 'tollgate',
      note: 'credits in force again',
    });
}
