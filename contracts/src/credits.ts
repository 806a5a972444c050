import { escapeKeyPart, KEY_PREFIX } from './redis-keys.js';

/**
 * Prepaid credits: per-customer wallets of grants (credit blocks), drawn down by billed calls inside the
 * per-customer enforcement script, with an append-only ledger in ClickHouse (`credit_ledger`).
 *
 * Money is integer nano-units of the plan currency. Wallet arithmetic happens in Redis Lua, whose numbers
 * are doubles: exact below 2^53 nano-units (9,007,199 currency units). A grant is capped at
 * `MAX_GRANT_NANO` and a wallet's grants at `MAX_WALLET_NANO`, so grants stay plain numbers there. What no cap
 * bounds — a call's price (up to 2^63 − 1), the overdraft bucket, a drawdown's sum, the balance — credits.lua
 * keeps exact as two limbs once it reaches 2^53 (its `credits_m_*` functions), so every amount in the wallet,
 * the outbox and the replies is exact decimal text: read them as `bigint`, never as `number`.
 * The overdraft bucket stops at `OVERDRAFT_FLOOR_NANO`, so every amount fits an Int64 (the ledger's columns);
 * there the customer is killed (`credits:exhausted`) whatever `hardStop` says (docs/enforcement.md).
 */

/** Ledger entry types. Amounts are signed changes of one bucket (a grant, or the overdraft bucket). */
export const CREDIT_ENTRY_TYPES = [
  /** A grant (promotional, contractual): + amount on a new grant. */
  'grant',
  /** A paid top-up: + amount on a new grant. */
  'top_up',
  /** Billed calls drawn from a grant (or from the overdraft bucket): − amount, per call in `eventIds`. */
  'drawdown',
  /** A grant reached its expiry with money left: − what was left. */
  'expiry',
  /** An operator correction (±), or an overdraft repaid from a new grant (a − on the grant, a + on the overdraft). */
  'adjustment',
] as const;
export type CreditEntryType = (typeof CREDIT_ENTRY_TYPES)[number];

/** The bucket id of the overdraft: what calls drew beyond the grants (its balance is ≤ 0). */
export const OVERDRAFT_BUCKET = 'overdraft';

/**
 * −(2^63 − 1): the lowest the overdraft bucket goes. A call that would take it lower draws it to here; the rest
 * of its price (and later calls) is drawn from nothing and stays due, and the customer is killed.
 */
export const OVERDRAFT_FLOOR_NANO = -(2n ** 63n - 1n);

/** 1,000,000 currency units: the largest single grant or adjustment. */
export const MAX_GRANT_NANO = 1_000_000n * 1_000_000_000n;
/** 8,000,000 currency units: the most a wallet's grants may hold (below 2^53 nano-units, see above). */
export const MAX_WALLET_NANO = 8_000_000n * 1_000_000_000n;

/** Enforcement reasons of the credits (the refusal is the ordinary kill, JSON-RPC -32050). */
export const CREDIT_REASONS = {
  /** The balance reached zero (or the end of the overdraft): the customer is killed until a top-up. */
  exhausted: 'credits:exhausted',
  /** The balance is below the plan's `credits.warnBelow`. */
  lowBalance: 'credits:low_balance',
  /** A top-up lifted a `credits:exhausted` kill or a low-balance warning. */
  toppedUp: 'credits:topped_up',
} as const;

export const creditKeys = {
  /**
   * The wallet (hash): `seq` (last ledger sequence number), `gseq` (last grant number), `opened` (ms), `od`
   * (overdraft bucket, ≤ 0 and ≥ `OVERDRAFT_FLOOR_NANO`, exact decimal text), `g:<grantId>` (one grant with money left:
   * `remaining|amount|effective_ms|expires_ms|priority|kind|created_ms`, see lua/credits.lua).
   */
  wallet: (tag: string) => `${KEY_PREFIX}:${tag}:cw`,
  /**
   * Ledger entries not yet in ClickHouse (list, oldest first), appended in the same script that changes
   * the wallet; removed only once written (see the processor's CreditLedger).
   */
  outbox: (tag: string) => `${KEY_PREFIX}:${tag}:cw:out`,
  /** Idempotency keys of grant requests (hash): key → the grant id it created. */
  idempotency: (tag: string) => `${KEY_PREFIX}:${tag}:cw:idem`,
  /** Customers of a product with a wallet (set), for listing and for draining outboxes after a restart. */
  index: (product: string) => `${KEY_PREFIX}:{x:${escapeKeyPart(product)}}:wallets`,
} as const;

/** One ledger entry as the scripts write it to the outbox (tab-separated, see `decodeLedgerEntry`). */
export interface LedgerEntry {
  /** Position in the customer's ledger (1, 2, …), unique per product and customer. */
  seq: number;
  atUnixMs: number;
  type: CreditEntryType;
  /** Grant id, or `overdraft`. */
  bucket: string;
  /** Signed change of the bucket, nano-units. */
  amountNano: bigint;
  /** Drawdowns: the billing period of the calls (`YYYY-MM`); else ''. */
  period: string;
  /** Drawdowns: the calls drawn, with what each gave (their sum is `-amountNano`). */
  eventIds: string[];
  amountsNano: bigint[];
  /** Who: `tollgate` for drawdowns and expiries, the API key's name for operator entries. */
  actor: string;
  note: string;
}

/**
 * Outbox line: `seq \t at \t type \t bucket \t amount \t period \t ids(,) \t amounts(,) \t actor \t note`.
 * Ids never contain tabs or commas (event ids are hex; actors and notes are cleaned before they get here).
 */
export function decodeLedgerEntry(line: string): LedgerEntry | undefined {
  const p = line.split('\t');
  if (p.length < 10) return undefined;
  const [seq, at, type, bucket, amount, period, ids, amounts, actor, ...note] = p as string[];
  if (!(CREDIT_ENTRY_TYPES as readonly string[]).includes(type as string)) return undefined;
  return {
    seq: Number(seq),
    atUnixMs: Number(at),
    type: type as CreditEntryType,
    bucket: bucket as string,
    amountNano: BigInt(amount as string),
    period: period as string,
    eventIds: ids ? (ids as string).split(',') : [],
    amountsNano: amounts ? (amounts as string).split(',').map((a) => BigInt(a)) : [],
    actor: actor as string,
    note: note.join('\t'),
  };
}

/** The columns of ClickHouse `credit_ledger` (migration 0011) in table order; a test checks they agree. */
export const CREDIT_LEDGER_COLUMNS = [
  ['product', 'LowCardinality(String)'],
  ['customer', 'String'],
  ['seq', 'UInt64'],
  ['at', "DateTime64(3, 'UTC')"],
  ['entry_type', 'LowCardinality(String)'],
  ['bucket', 'String'],
  ['amount_nano', 'Int64'],
  ['currency', 'LowCardinality(String)'],
  ['period', 'LowCardinality(String)'],
  ['event_ids', 'Array(String)'],
  ['event_amounts_nano', 'Array(Int64)'],
  ['actor', 'String'],
  ['note', 'String'],
] as const;
export type CreditLedgerColumn = (typeof CREDIT_LEDGER_COLUMNS)[number][0];
