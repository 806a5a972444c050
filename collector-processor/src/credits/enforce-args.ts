import { creditKeys, type RatedCall } from '@tollgate/contracts';
import type { Plan } from '../plans/schema.js';

/**
 * The part of an enforce.lua call that belongs to credits.lua: two keys (wallet, outbox) appended to the
 * keys, and six arguments appended last (credits.lua reads them from the end): the two keys' indexes, hard
 * stop, overdraft, warn below, and the calls' event ids in call order. Kept here so that enforcer.ts carries
 * one line of it.
 */
export function creditArgs(
  keys: string[],
  args: (string | number)[],
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

/** The trailer enforce.lua appends for a customer with a wallet: balance after the export, outbox length. */
export function creditsOfReply(
  reply: readonly (string | number)[],
): { balanceNano: bigint; outbox: number } | undefined {
  const at = reply.length - 3;
  if (at < 0 || reply[at] !== 'credits') return undefined;
  return { balanceNano: BigInt(String(reply[at + 1])), outbox: Number(reply[at + 2]) };
}
