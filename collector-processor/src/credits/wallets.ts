import { readFileSync } from 'node:fs';
import type { ClickHouseClient } from '@clickhouse/client';
import {
  ApiError,
  type CreditAdjustRequest,
  CreditError,
  type CreditErrorReason,
  type CreditGrantRequest,
  type CreditsPort,
  type GrantView,
  type WalletView,
} from '@tollgate/billing-api';
import {
  creditKeys,
  customerTag,
  EARLIEST_INSTANT_MS,
  INSTANT_BOUNDS_TEXT,
  LATEST_INSTANT_MS,
  MAX_GRANT_NANO,
  MAX_WALLET_NANO,
  MoneyParseError,
  OVERDRAFT_BUCKET,
  parseDecimalToNano,
  parseInstantMs,
  redisKeys,
} from '@tollgate/contracts';
import type { Logger } from 'pino';
import type { EnforcementLog } from '../enforcement/events.js';
import type { RedisLike } from '../pipeline/pipeline.js';
import type { PlanStore } from '../plans/store.js';
import type { CreditLedger } from './ledger.js';

/** credits.lua (the wallet, shared with enforce.lua) in front of credits-admin.lua: one script. */
export const CREDITS_LUA = readFileSync(new URL('../../lua/credits.lua', import.meta.url), 'utf8');
const ADMIN_LUA = `${CREDITS_LUA}\n${readFileSync(new URL('../../lua/credits-admin.lua', import.meta.url), 'utf8')}`;

type CreditsCommand = (...args: (string | number)[]) => Promise<(string | number)[]>;

/** Largest priority (lower is drawn first). */
const MAX_PRIORITY = 1000;
/** Effective dates and expiries further out than this are typos, not plans. */
const MAX_FUTURE_MS = 100 * 365 * 86_400_000;
const IDEMPOTENCY_KEY = /^[\w.:-]{1,128}$/;

/** A grant's, top-up's or adjustment's `idempotencyKey`, when given, is 1–128 of `IDEMPOTENCY_KEY`'s characters. */
function checkIdempotencyKey(key: string | undefined): void {
  if (key !== undefined && !IDEMPOTENCY_KEY.test(key))
    throw new CreditError('bad_request', 'idempotencyKey: 1–128 letters, digits, . : _ -');
}

/** The plan's credits block of a customer, as the scripts take it. */
export interface CreditTerms {
  hardStop: boolean;
  overdraftNano: bigint;
  warnBelowNano: bigint;
}

export function creditTermsOf(plans: PlanStore, product: string, customer: string): CreditTerms {
  const c = plans.current.resolve(product, customer)?.plan.credits;
  return {
    hardStop: c?.hardStop ?? true,
    overdraftNano: c?.overdraft ?? 0n,
    warnBelowNano: c?.warnBelow ?? 0n,
  };
}

/** Text that goes into the tab-separated outbox: no control characters. */
function clean(s: string | undefined): string {
  let out = '';
  for (const ch of s ?? '') {
    const code = ch.charCodeAt(0);
    out += code < 0x20 || code === 0x7f ? ' ' : ch;
  }
  return out;
}

/**
 * A grant's date: a real calendar instant (`parseInstantMs`: 2027-02-30 and T24:00 are refused, not rolled
 * over) from the Unix epoch on. The scripts keep dates as unsigned milliseconds, so a date before 1970 would be
 * granted and then never read again.
 */
function instant(text: string | undefined, name: string): number | undefined {
  if (text === undefined) return undefined;
  const ms = parseInstantMs(text);
  if (ms === undefined)
    throw new CreditError('bad_dates', `${name}: "${text}" is not a date (RFC 3339 or YYYY-MM-DD)`);
  if (ms < EARLIEST_INSTANT_MS || ms >= LATEST_INSTANT_MS)
    throw new CreditError('bad_dates', `${name}: "${text}" is outside ${INSTANT_BOUNDS_TEXT}`);
  return ms;
}

/** A backing store that fails is a 503 (retry later), not an internal error; nothing was granted. */
async function unavailableOnError<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof CreditError) throw err;
    throw new ApiError('API_UNAVAILABLE', `${what}: ${(err as Error).message}`);
  }
}

/**
 * Prepaid credit wallets for the API and the CLI: grants, top-ups, adjustments and reads, each one atomic
 * script run on the customer's keys (credits-admin.lua). Every attempt is audited in `enforcement_events`,
 * refused ones included (action `credit_refused`, reason the error); every change of a wallet is in the
 * ledger, written by the same script.
 */
export class CreditWallets implements CreditsPort {
  constructor(
    private readonly redis: RedisLike,
    private readonly plans: PlanStore,
    private readonly ledger: CreditLedger,
    private readonly events: EnforcementLog,
    private readonly clickhouse: ClickHouseClient,
    private readonly log: Logger,
  ) {
    if (!('tollgateCredits' in redis))
      redis.defineCommand('tollgateCredits', { numberOfKeys: 4, lua: ADMIN_LUA });
  }

  private keys(product: string, customer: string): string[] {
    const tag = customerTag(product, customer);
    return [
      creditKeys.wallet(tag),
      creditKeys.outbox(tag),
      creditKeys.idempotency(tag),
      redisKeys.state(tag),
    ];
  }

  private async run(
    product: string,
    customer: string,
    args: (string | number)[],
  ): Promise<(string | number)[]> {
    const t = creditTermsOf(this.plans, product, customer);
    const cmd = (this.redis as unknown as { tollgateCredits: CreditsCommand }).tollgateCredits.bind(
      this.redis,
    );
    return unavailableOnError('Redis', () =>
      cmd(
        ...this.keys(product, customer),
        args[0] as string,
        Date.now(),
        t.hardStop ? 1 : 0,
        t.overdraftNano.toString(),
        t.warnBelowNano.toString(),
        MAX_WALLET_NANO.toString(),
        ...args.slice(1),
      ),
    );
  }

  private view(product: string, customer: string, reply: (string | number)[]): WalletView {
    const t = creditTermsOf(this.plans, product, customer);
    const [, , , action, reason, balance, pending, od, backlog] = reply.map(String) as string[];
    const grants: GrantView[] = [];
    for (let i = 9; i + 7 < reply.length; i += 8) {
      const [id, rem, amt, eff, exp, prio, kind, created] = reply.slice(i, i + 8).map(String) as string[];
      grants.push({
        grantId: id as string,
        kind: kind === 'top_up' ? 'top_up' : 'grant',
        remainingNano: BigInt(rem as string),
        amountNano: BigInt(amt as string),
        effectiveUnixMs: Number(eff),
        expiresUnixMs: Number(exp),
        priority: Number(prio),
        createdUnixMs: Number(created),
      });
    }
    return {
      product,
      customer,
      currency: this.plans.current.currency,
      balanceNano: BigInt(balance ?? '0'),
      pendingNano: BigInt(pending ?? '0'),
      overdraftUsedNano: -BigInt(od ?? '0'),
      overdraftLimitNano: t.overdraftNano,
      warnBelowNano: t.warnBelowNano,
      hardStop: t.hardStop,
      state: action ? { action, reason: reason ?? '' } : null,
      grants,
      ledgerBacklog: Number(backlog ?? 0),
    };
  }

  /** A customer Tollgate knows: named in the plan file, with a wallet, or with billed calls. */
  private known(product: string, customer: string): Promise<boolean> {
    return unavailableOnError('Redis or ClickHouse', () => this.knownTo(product, customer));
  }

  /**
   * Where a new wallet's numbering starts: after the last sequence number and grant number the ledger in
   * ClickHouse holds for the customer. Zero while the wallet exists in Redis (the script ignores it then) or
   * the customer never had one. A wallet re-created after its Redis keys were lost (a Redis without its data)
   * used to start again at 1, and its entries replaced the old ones in the ledger table, whose key is
   * (product, customer, seq): the financial record of the lost wallet would have been overwritten.
   */
  private async ledgerBase(product: string, customer: string): Promise<{ seq: string; grant: string }> {
    const tag = customerTag(product, customer);
    if (await unavailableOnError('Redis', () => this.redis.exists(creditKeys.wallet(tag))))
      return { seq: '0', grant: '0' };
    return unavailableOnError('ClickHouse', async () => {
      const rs = await this.clickhouse.query({
        query: `SELECT toString(max(seq)) AS seq,
            toString(max(if(match(bucket, '^g[0-9]+$'), toUInt64OrZero(substring(bucket, 2)), 0))) AS grant
          FROM credit_ledger WHERE product = {product:String} AND customer = {customer:String}`,
        query_params: { product, customer },
        format: 'JSONEachRow',
      });
      const [row] = await rs.json<{ seq: string; grant: string }>();
      return { seq: row?.seq ?? '0', grant: row?.grant ?? '0' };
    });
  }

  private async knownTo(product: string, customer: string): Promise<boolean> {
    const book = this.plans.current;
    if (!book.products().includes(product)) return false;
    if (book.listsCustomer(product, customer)) return true;
    const tag = customerTag(product, customer);
    if (await this.redis.exists(creditKeys.wallet(tag))) return true;
    const now = new Date();
    const periods = [now, new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1))].map((d) =>
      d.toISOString().slice(0, 7),
    );
    for (const p of periods) if (await this.redis.exists(redisKeys.period(tag, p))) return true;
    const rs = await this.clickhouse.query({
      query:
        'SELECT 1 AS x FROM mcp_customer_daily_stats WHERE product = {product:String} AND customer = {customer:String} LIMIT 1',
      query_params: { product, customer },
      format: 'JSONEachRow',
    });
    return (await rs.json()).length > 0;
  }

  private async audit(
    product: string,
    customer: string,
    action: string,
    reason: string,
    amountNano: bigint,
    actor: string,
    note: string,
  ): Promise<void> {
    this.events.record({
      atMs: Date.now(),
      product,
      customer,
      scope: 'customer',
      subjectId: customer,
      action,
      reason,
      marginBps: null,
      spendNano: amountNano,
      actor,
      note,
    });
    await this.events.flush();
  }

  /** Refuses (audited): throws the CreditError after recording the attempt. */
  private async refuse(
    r: {
      product: string;
      customer: string;
      actor: string;
      amount?: unknown;
      note?: string | undefined;
    },
    op: string,
    reason: CreditErrorReason,
    message: string,
  ): Promise<never> {
    this.log.info(
      { product: r.product, customer: r.customer, op, reason, actor: r.actor },
      'credit operation refused',
    );
    let amount = 0n;
    try {
      amount = typeof r.amount === 'string' ? parseDecimalToNano(r.amount) : 0n;
    } catch {
      // not a number: recorded as 0, the text is in the note
    }
    await this.audit(
      r.product,
      r.customer,
      'credit_refused',
      `credits:${reason}`,
      amount,
      clean(r.actor),
      clean(`${op} refused: ${message}${r.note ? ` — ${r.note}` : ''}`).slice(0, 2000),
    );
    throw new CreditError(reason, message);
  }

  private parseAmount(text: unknown, signed: boolean): bigint {
    if (typeof text === 'number')
      throw new CreditError(
        'bad_amount',
        `give the amount as decimal text such as "${text}" (a JSON number is a float)`,
      );
    if (typeof text !== 'string')
      throw new CreditError('bad_amount', 'the amount must be decimal text such as "25.00"');
    if (text.length > 40) throw new CreditError('bad_amount', 'the amount is longer than 40 characters');
    let nano: bigint;
    try {
      nano = parseDecimalToNano(text);
    } catch (err) {
      if (err instanceof MoneyParseError) throw new CreditError('bad_amount', err.message);
      throw err;
    }
    if (nano === 0n) throw new CreditError('bad_amount', 'the amount must not be zero');
    if (!signed && nano < 0n) throw new CreditError('bad_amount', `"${text}" is negative`);
    const abs = nano < 0n ? -nano : nano;
    if (abs > MAX_GRANT_NANO)
      throw new CreditError('bad_amount', `"${text}" is more than the largest grant (1000000)`);
    return nano;
  }

  private checkCurrency(currency: string): void {
    const want = this.plans.current.currency;
    if (currency !== want)
      throw new CreditError('wrong_currency', `"${currency}" is not the plan currency ${want}`);
  }

  private async afterChange(
    product: string,
    customer: string,
    v: WalletView,
    changed: boolean,
  ): Promise<void> {
    this.ledger.notify(product, customer);
    await this.ledger.drain();
    if (changed && v.state) {
      await this.redis.sadd(redisKeys.stateIndex(product), customer).catch(() => 0);
      this.events.record({
        atMs: Date.now(),
        product,
        customer,
        scope: 'customer',
        subjectId: customer,
        action: v.state.action,
        reason: v.state.reason,
        marginBps: null,
        spendNano: v.balanceNano,
        actor: 'tollgate',
        note: 'credit balance changed',
      });
    }
  }

  async grant(r: CreditGrantRequest): Promise<{ grantId: string; replayed: boolean; wallet: WalletView }> {
    const op = r.kind === 'top_up' ? 'top-up' : 'grant';
    let amount: bigint;
    let eff: number;
    let exp: number;
    const now = Date.now();
    try {
      if (!(await this.known(r.product, r.customer)))
        throw new CreditError('unknown_customer', `product ${r.product} has no customer ${r.customer}`);
      amount = this.parseAmount(r.amount, false);
      this.checkCurrency(r.currency);
      eff = instant(r.effectiveAt, 'effectiveAt') ?? now;
      exp = instant(r.expiresAt, 'expiresAt') ?? 0;
      if (eff > now + MAX_FUTURE_MS)
        throw new CreditError('bad_dates', 'effectiveAt is more than 100 years away');
      if (exp !== 0 && exp <= eff) throw new CreditError('bad_dates', 'expiresAt must be after effectiveAt');
      if (exp !== 0 && exp <= now) throw new CreditError('bad_dates', 'expiresAt is in the past');
      if (exp > now + MAX_FUTURE_MS)
        throw new CreditError('bad_dates', 'expiresAt is more than 100 years away');
      const prio = r.priority ?? 0;
      if (!Number.isInteger(prio) || prio < 0 || prio > MAX_PRIORITY)
        throw new CreditError('bad_priority', `priority must be a whole number from 0 to ${MAX_PRIORITY}`);
      checkIdempotencyKey(r.idempotencyKey);
    } catch (err) {
      if (err instanceof CreditError) return this.refuse(r, op, err.reason, err.message);
      throw err;
    }
    await unavailableOnError('Redis', () => this.redis.sadd(creditKeys.index(r.product), r.customer));
    const base = await this.ledgerBase(r.product, r.customer);
    const reply = await this.run(r.product, r.customer, [
      'grant',
      r.kind,
      amount.toString(),
      eff,
      exp,
      r.priority ?? 0,
      clean(r.actor),
      clean(r.note).slice(0, 1000),
      r.idempotencyKey ?? '',
      base.seq,
      base.grant,
      // what was asked, as given (not `eff`, which defaults to now): a retry must ask for the same
      JSON.stringify([
        r.kind,
        amount.toString(),
        r.effectiveAt ?? null,
        r.expiresAt ?? null,
        r.priority ?? 0,
        r.note ?? '',
      ]),
    ]);
    const status = String(reply[0]);
    const wallet = this.view(r.product, r.customer, reply);
    if (status === 'wallet_cap') {
      return this.refuse(
        r,
        op,
        'wallet_cap',
        `the wallet would hold more than ${MAX_WALLET_NANO / 1_000_000_000n} (it holds ${wallet.balanceNano} nano-units)`,
      );
    }
    if (status === 'conflict') {
      return this.refuse(
        r,
        op,
        'idempotency_conflict',
        `idempotencyKey ${r.idempotencyKey} was used for grant ${String(reply[1])} with other terms (kind, amount, dates, priority or note)`,
      );
    }
    if (status !== 'ok' && status !== 'replayed') throw new Error(`credits script: ${status}`);
    const grantId = String(reply[1]);
    await this.audit(
      r.product,
      r.customer,
      status === 'replayed' ? 'credit_replayed' : `credit_${r.kind}`,
      `credits:${r.kind}`,
      amount,
      clean(r.actor),
      clean(`${grantId}${r.note ? ` — ${r.note}` : ''}`).slice(0, 2000),
    );
    await this.afterChange(r.product, r.customer, wallet, reply[2] === 1 || reply[2] === '1');
    return { grantId, replayed: status === 'replayed', wallet };
  }

  async adjust(r: CreditAdjustRequest): Promise<{ wallet: WalletView; replayed: boolean }> {
    let amount: bigint;
    try {
      if (!(await this.known(r.product, r.customer)))
        throw new CreditError('unknown_customer', `product ${r.product} has no customer ${r.customer}`);
      amount = this.parseAmount(r.amount, true);
      this.checkCurrency(r.currency);
      checkIdempotencyKey(r.idempotencyKey);
    } catch (err) {
      if (err instanceof CreditError) return this.refuse(r, 'adjustment', err.reason, err.message);
      throw err;
    }
    const bucket = r.grantId === OVERDRAFT_BUCKET ? OVERDRAFT_BUCKET : r.grantId;
    const reply = await this.run(r.product, r.customer, [
      'adjust',
      bucket,
      amount.toString(),
      clean(r.actor),
      clean(r.note).slice(0, 1000),
      r.idempotencyKey ?? '',
      // what was asked, as given: a retry must ask for the same
      JSON.stringify([bucket, amount.toString(), r.note ?? '']),
    ]);
    const status = String(reply[0]);
    if (status === 'conflict')
      return this.refuse(
        r,
        'adjustment',
        'idempotency_conflict',
        `idempotencyKey ${r.idempotencyKey} was used before with other terms (a grant, or another bucket, amount or note)`,
      );
    if (status === 'no_wallet')
      return this.refuse(r, 'adjustment', 'no_wallet', `customer ${r.customer} has no credit wallet`);
    const wallet = this.view(r.product, r.customer, reply);
    if (status === 'unknown_grant')
      return this.refuse(r, 'adjustment', 'unknown_grant', `no grant ${bucket} with money left`);
    if (status === 'out_of_range')
      return this.refuse(
        r,
        'adjustment',
        'out_of_range',
        bucket === OVERDRAFT_BUCKET
          ? `the overdraft bucket holds ${reply[1]} nano-units; adjusted, it must stay between minus the wallet cap and zero (a deeper bucket is repaid by a grant)`
          : `grant ${bucket} holds ${reply[1]} nano-units; it cannot go below zero or the wallet over its cap`,
      );
    if (status !== 'ok' && status !== 'replayed') throw new Error(`credits script: ${status}`);
    await this.audit(
      r.product,
      r.customer,
      status === 'replayed' ? 'credit_replayed' : 'credit_adjustment',
      'credits:adjustment',
      amount,
      clean(r.actor),
      clean(`${bucket} — ${r.note}`).slice(0, 2000),
    );
    await this.afterChange(r.product, r.customer, wallet, reply[2] === 1 || reply[2] === '1');
    return { wallet, replayed: status === 'replayed' };
  }

  async wallet(product: string, customer: string): Promise<WalletView | undefined> {
    const reply = await this.run(product, customer, ['read']);
    if (String(reply[0]) === 'no_wallet') return undefined;
    const w = this.view(product, customer, reply);
    if (w.ledgerBacklog) this.ledger.notify(product, customer);
    return w;
  }

  async wallets(product: string): Promise<WalletView[]> {
    const customers = (
      await unavailableOnError('Redis', () => this.redis.smembers(creditKeys.index(product)))
    ).sort();
    const out: WalletView[] = [];
    for (const c of customers) {
      const w = await this.wallet(product, c);
      if (w) out.push(w);
    }
    return out;
  }
}
