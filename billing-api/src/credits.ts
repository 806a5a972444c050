import type { FastifyInstance } from 'fastify';
import { type ApiKeyring, type Principal, requireRole, scopeFor } from './auth.js';
import { ledgerSql } from './credits-sql.js';
import { type Cell, sendCsv, wantsCsv } from './csv.js';
import { ApiError, type ApiErrorCode } from './errors.js';
import { big, count, money } from './money.js';
import type { AnalyticsDeps } from './ports.js';
import { isoFromCh, pageOf, rows } from './query.js';
import { isoOf, resolveRange } from './range.js';
import { identifier, moneyProps, pageSchema, querystring, responses, SECURITY } from './schemas.js';

/**
 * Prepaid credits over the API: grants, top-ups and adjustments (admin keys, audited), a customer's wallet
 * and its ledger (a customer key sees only its own). The processor owns the wallets (Redis, the enforcement
 * script) and implements `CreditsPort`; the ledger is read from ClickHouse here.
 */

export interface CreditGrantRequest {
  product: string;
  customer: string;
  kind: 'grant' | 'top_up';
  /** Decimal text in currency units ("25", "0.5"); parsed exactly. Anything else is refused (`bad_amount`). */
  amount: unknown;
  currency: string;
  /** RFC 3339 or YYYY-MM-DD; default now. */
  effectiveAt?: string | undefined;
  /** RFC 3339 or YYYY-MM-DD; default never. */
  expiresAt?: string | undefined;
  /** Lower is drawn first (default 0). */
  priority?: number | undefined;
  note?: string | undefined;
  /** A retried request with the same key grants once and answers the first grant. */
  idempotencyKey?: string | undefined;
  actor: string;
}

export interface CreditAdjustRequest {
  product: string;
  customer: string;
  /** A grant id, or `overdraft`. */
  grantId: string;
  /** Signed decimal text ("-2.5"); anything else is refused (`bad_amount`). */
  amount: unknown;
  currency: string;
  note: string;
  /** A retried request with the same key adjusts once and answers the wallet. */
  idempotencyKey?: string | undefined;
  actor: string;
}

export interface GrantView {
  grantId: string;
  kind: 'grant' | 'top_up';
  remainingNano: bigint;
  amountNano: bigint;
  effectiveUnixMs: number;
  expiresUnixMs: number;
  priority: number;
  createdUnixMs: number;
}

export interface WalletView {
  product: string;
  customer: string;
  currency: string;
  /** Grants in force plus the overdraft bucket (negative when the overdraft is in use). */
  balanceNano: bigint;
  /** Grants not yet effective. */
  pendingNano: bigint;
  /** What calls drew beyond the grants, not yet repaid (≥ 0). */
  overdraftUsedNano: bigint;
  overdraftLimitNano: bigint;
  warnBelowNano: bigint;
  hardStop: boolean;
  /** The customer's enforcement state in force (any reason), or null. */
  state: { action: string; reason: string } | null;
  /** Grants with money left, in draw order. */
  grants: GrantView[];
  /** Ledger entries not yet written to ClickHouse. */
  ledgerBacklog: number;
}

export const CREDIT_ERRORS = {
  unknown_customer: 'API_UNKNOWN_CUSTOMER',
  bad_amount: 'API_CREDIT_AMOUNT',
  wallet_cap: 'API_CREDIT_AMOUNT',
  wrong_currency: 'API_CREDIT_CURRENCY',
  bad_dates: 'API_CREDIT_DATES',
  bad_priority: 'API_CREDIT_PRIORITY',
  bad_request: 'API_BAD_REQUEST',
  no_wallet: 'API_NO_WALLET',
  unknown_grant: 'API_UNKNOWN_GRANT',
  out_of_range: 'API_CREDIT_OUT_OF_RANGE',
  idempotency_conflict: 'API_IDEMPOTENCY_CONFLICT',
} as const satisfies Record<string, ApiErrorCode>;
export type CreditErrorReason = keyof typeof CREDIT_ERRORS;

/** A refused credit operation (nothing was granted or changed; the attempt is in the audit trail). */
export class CreditError extends Error {
  override readonly name = 'CreditError';
  constructor(
    readonly reason: CreditErrorReason,
    message: string,
  ) {
    super(message);
  }
}

/** What the processor provides for wallets (every change and every refused attempt audited by it). */
export interface CreditsPort {
  grant(r: CreditGrantRequest): Promise<{ grantId: string; replayed: boolean; wallet: WalletView }>;
  adjust(r: CreditAdjustRequest): Promise<{ wallet: WalletView; replayed: boolean }>;
  /** undefined: the customer has no wallet. */
  wallet(product: string, customer: string): Promise<WalletView | undefined>;
  wallets(product: string): Promise<WalletView[]>;
}

function rethrow(err: unknown): never {
  // by name, not instanceof: the adapter may hold another copy of this module (src vs dist)
  if (err instanceof CreditError || (err as Error)?.name === 'CreditError') {
    const reason = (err as CreditError).reason;
    throw new ApiError(CREDIT_ERRORS[reason] ?? 'API_BAD_REQUEST', (err as Error).message);
  }
  throw err;
}

const grantProps = {
  grantId: { type: 'string' },
  kind: { type: 'string', enum: ['grant', 'top_up'] },
  ...moneyProps('remaining', 'amount'),
  effectiveAt: { type: 'string' },
  expiresAt: { type: ['string', 'null'] },
  priority: { type: 'integer' },
  createdAt: { type: 'string' },
} as const;

const walletSchema = {
  type: 'object',
  properties: {
    product: { type: 'string' },
    customer: { type: 'string' },
    currency: { type: 'string' },
    ...moneyProps('balance', 'pending', 'overdraftUsed', 'overdraftLimit', 'warnBelow'),
    hardStop: { type: 'boolean' },
    state: {
      type: ['object', 'null'],
      properties: { action: { type: 'string' }, reason: { type: 'string' } },
    },
    grants: { type: 'array', items: { type: 'object', properties: grantProps } },
    ledgerBacklog: { type: 'integer', description: 'ledger entries not yet written to ClickHouse' },
  },
} as const;

function grantJson(g: GrantView) {
  return {
    grantId: g.grantId,
    kind: g.kind,
    ...money('remaining', g.remainingNano),
    ...money('amount', g.amountNano),
    effectiveAt: isoOf(g.effectiveUnixMs),
    expiresAt: g.expiresUnixMs ? isoOf(g.expiresUnixMs) : null,
    priority: g.priority,
    createdAt: isoOf(g.createdUnixMs),
  };
}

export function walletJson(w: WalletView) {
  return {
    product: w.product,
    customer: w.customer,
    currency: w.currency,
    ...money('balance', w.balanceNano),
    ...money('pending', w.pendingNano),
    ...money('overdraftUsed', w.overdraftUsedNano),
    ...money('overdraftLimit', w.overdraftLimitNano),
    ...money('warnBelow', w.warnBelowNano),
    hardStop: w.hardStop,
    state: w.state,
    grants: w.grants.map(grantJson),
    ledgerBacklog: w.ledgerBacklog,
  };
}

const WALLET_CSV = [
  'customer',
  'currency',
  'balance',
  'balanceNano',
  'grantId',
  'kind',
  'remaining',
  'remainingNano',
  'amount',
  'amountNano',
  'effectiveAt',
  'expiresAt',
  'priority',
] as const;

const LEDGER_CSV = [
  'customer',
  'seq',
  'at',
  'type',
  'grantId',
  'amount',
  'amountNano',
  'currency',
  'period',
  'calls',
  'actor',
  'note',
] as const;

const grantBody = {
  type: 'object',
  required: ['customer', 'amount', 'currency'],
  additionalProperties: false,
  properties: {
    product: identifier,
    customer: identifier,
    amount: {
      // No type here: the route's validator coerces types (a JSON number would become text and pass), so
      // the processor checks the amount itself and refuses anything but decimal text, audited.
      description:
        'decimal text in currency units, e.g. "25.00" (a JSON number is refused: floats are not money)',
    },
    currency: { type: 'string', maxLength: 16, description: 'must be the plan currency (ISO 4217)' },
    effectiveAt: { type: 'string', maxLength: 40, description: 'RFC 3339 or YYYY-MM-DD; default now' },
    expiresAt: { type: 'string', maxLength: 40, description: 'RFC 3339 or YYYY-MM-DD; default never' },
    priority: { type: 'integer', description: 'lower is drawn first; 0–1000, default 0' },
    note: { type: 'string', maxLength: 1000 },
    idempotencyKey: {
      type: 'string',
      maxLength: 128,
      description: 'a retry with the same key grants once and answers the first grant',
    },
  },
} as const;

interface GrantBody {
  product?: string;
  customer: string;
  amount: unknown;
  currency: string;
  effectiveAt?: string;
  expiresAt?: string;
  priority?: number;
  note?: string;
  idempotencyKey?: string;
}

interface AdjustBody {
  product?: string;
  customer: string;
  grantId: string;
  amount: unknown;
  currency: string;
  note: string;
  idempotencyKey?: string;
}

/** `/admin/credits/*` (admin keys) and `/billing/credits*` (every role, scoped). */
export function registerCredits(
  app: FastifyInstance,
  keyring: ApiKeyring,
  credits: CreditsPort | undefined,
  analytics: AnalyticsDeps | undefined,
): void {
  const port = () => {
    if (!credits) throw new ApiError('API_UNAVAILABLE', 'credits need enforcement (Redis) in this process');
    return credits;
  };
  const admin = (req: { body: { product?: string } }, principal: Principal) => {
    requireRole(principal, 'admin');
    return scopeFor(principal, { product: req.body.product }).product;
  };

  for (const [path, kind] of [
    ['grant', 'grant'],
    ['top-up', 'top_up'],
  ] as const) {
    app.post<{ Body: GrantBody }>(
      `/admin/credits/${path}`,
      {
        schema: {
          tags: ['admin'],
          summary:
            kind === 'grant'
              ? 'Grant prepaid credits to a customer (admin keys, audited)'
              : 'Record a paid top-up of a customer’s wallet (admin keys, audited)',
          description:
            'Adds a grant (a credit block) to the customer’s wallet, creating the wallet on first use. Billed ' +
            'calls draw grants in force by priority (lower first), then earliest expiry, then oldest. A grant ' +
            'in force first repays an overdraft in use, and lifts a `credits:exhausted` kill. Refused (nothing ' +
            'granted, the attempt audited): unknown customer, an amount that is not a positive decimal of at ' +
            'most 1,000,000 or would take the wallet over 8,000,000, a currency other than the plan’s, a date ' +
            'that does not exist or is before 1970, an expiry not after the effective date or already past, ' +
            'an idempotencyKey used before with other terms (409).',
          security: SECURITY,
          // Everything is in the body: `?customer=…` on the URL must not look honoured.
          querystring: querystring([]),
          body: grantBody,
          response: responses(
            {
              type: 'object',
              properties: {
                grantId: { type: 'string' },
                replayed: { type: 'boolean' },
                wallet: walletSchema,
              },
            },
            false,
            'the idempotencyKey was used before with other terms (API_IDEMPOTENCY_CONFLICT)',
          ),
        },
      },
      async (req) => {
        const principal = keyring.authenticate(req);
        const product = admin(req, principal);
        const b = req.body;
        try {
          const r = await port().grant({
            product,
            customer: b.customer,
            kind,
            amount: b.amount,
            currency: b.currency,
            effectiveAt: b.effectiveAt,
            expiresAt: b.expiresAt,
            priority: b.priority,
            note: b.note,
            idempotencyKey: b.idempotencyKey,
            actor: principal.name,
          });
          return { grantId: r.grantId, replayed: r.replayed, wallet: walletJson(r.wallet) };
        } catch (err) {
          rethrow(err);
        }
      },
    );
  }

  app.post<{ Body: AdjustBody }>(
    '/admin/credits/adjust',
    {
      schema: {
        tags: ['admin'],
        summary: 'Correct a grant or the overdraft bucket by a signed amount (admin keys, audited)',
        security: SECURITY,
        querystring: querystring([]),
        body: {
          type: 'object',
          required: ['customer', 'grantId', 'amount', 'currency', 'note'],
          additionalProperties: false,
          properties: {
            product: identifier,
            customer: identifier,
            grantId: { ...identifier, maxLength: 64, description: 'a grant id, or `overdraft`' },
            amount: {
              description: 'signed decimal text, e.g. "-2.50" (a JSON number is refused)',
            },
            currency: { type: 'string', maxLength: 16 },
            note: { type: 'string', minLength: 1, maxLength: 1000, description: 'why (required)' },
            idempotencyKey: {
              type: 'string',
              maxLength: 128,
              description:
                'a retry with the same key adjusts once and answers `replayed: true`; the key used with other terms is a 409',
            },
          },
        },
        response: responses(
          { type: 'object', properties: { wallet: walletSchema, replayed: { type: 'boolean' } } },
          false,
          'the adjustment would take a balance out of range (API_CREDIT_OUT_OF_RANGE)',
        ),
      },
    },
    async (req) => {
      const principal = keyring.authenticate(req);
      const product = admin(req, principal);
      const b = req.body;
      try {
        const r = await port().adjust({ ...b, product, actor: principal.name });
        return { wallet: walletJson(r.wallet), replayed: r.replayed };
      } catch (err) {
        rethrow(err);
      }
    },
  );

  app.get<{ Querystring: { product?: string; customer?: string; format?: 'json' | 'csv' } }>(
    '/billing/credits',
    {
      schema: {
        tags: ['billing'],
        summary: 'Prepaid credit wallets: balance, overdraft, grants in draw order',
        description:
          'One customer’s wallet (a customer key: its own; an empty list when it has none), or every wallet ' +
          'of the product (admin and finance keys, without `customer`). CSV: one line per grant with money left.',
        security: SECURITY,
        querystring: querystring(['product', 'customer', 'format']),
        response: responses(
          { type: 'object', properties: { wallets: { type: 'array', items: walletSchema } } },
          true,
        ),
      },
    },
    async (req, reply) => {
      const principal = keyring.authenticate(req);
      const scope = scopeFor(principal, req.query);
      let list: WalletView[];
      try {
        if (scope.customer !== undefined) {
          const w = await port().wallet(scope.product, scope.customer);
          list = w ? [w] : [];
        } else list = await port().wallets(scope.product);
      } catch (err) {
        rethrow(err);
      }
      if (wantsCsv(req)) {
        const out: Record<string, Cell>[] = [];
        for (const w of list) {
          const base = {
            customer: w.customer,
            currency: w.currency,
            ...money('balance', w.balanceNano),
          };
          if (!w.grants.length) out.push(base);
          for (const g of w.grants) out.push({ ...base, ...grantJson(g) });
        }
        return sendCsv(
          reply,
          `credits-${scope.customer ?? scope.product}`.replace(/[^\w.-]/g, '_'),
          WALLET_CSV,
          out,
        );
      }
      return { wallets: list.map(walletJson) };
    },
  );

  app.get<{
    Querystring: {
      product?: string;
      customer?: string;
      from?: string;
      to?: string;
      period?: string;
      type?: string;
      calls?: boolean;
      format?: 'json' | 'csv';
      limit?: number;
      offset?: number;
    };
  }>(
    '/billing/credits/ledger',
    {
      schema: {
        tags: ['billing'],
        summary: 'The append-only credit ledger: grants, top-ups, drawdowns, expiries, adjustments',
        description:
          'Entries in sequence order, each a signed change of one bucket (a grant, or `overdraft`). A ' +
          'drawdown names the calls it was drawn for (`calls=true` lists their event ids and amounts, which ' +
          'add up to the entry). Without from/to/period: the whole ledger.',
        security: SECURITY,
        querystring: querystring(
          ['product', 'customer', 'from', 'to', 'period', 'format', 'limit', 'offset'],
          {
            type: { type: 'string', enum: ['grant', 'top_up', 'drawdown', 'expiry', 'adjustment'] },
            calls: { type: 'boolean', default: false, description: 'list the calls of each drawdown' },
          },
        ),
        response: responses(
          {
            type: 'object',
            properties: {
              product: { type: 'string' },
              customer: { type: ['string', 'null'] },
              entries: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    customer: { type: 'string' },
                    seq: { type: 'integer' },
                    at: { type: 'string' },
                    type: { type: 'string' },
                    grantId: { type: 'string' },
                    ...moneyProps('amount'),
                    currency: { type: 'string' },
                    period: { type: 'string' },
                    calls: { type: 'integer' },
                    eventIds: { type: 'array', items: { type: 'string' } },
                    eventAmountsNano: { type: 'array', items: { type: 'string' } },
                    actor: { type: 'string' },
                    note: { type: 'string' },
                  },
                },
              },
              page: pageSchema,
            },
          },
          true,
        ),
      },
    },
    async (req, reply) => {
      if (!analytics) throw new ApiError('API_UNAVAILABLE', 'the ledger needs ClickHouse in this process');
      const principal = keyring.authenticate(req);
      const scope = scopeFor(principal, req.query);
      const q = req.query;
      const range =
        q.from !== undefined || q.to !== undefined || q.period !== undefined ? resolveRange(q) : undefined;
      const page = { limit: q.limit ?? 100, offset: q.offset ?? 0 };
      const list = await rows(
        analytics,
        ledgerSql(scope.product, scope.customer, range, q.type, page),
        req.log,
      );
      // who made an entry and why are the operators' own words (as on enforcement events): not a customer's
      const internal = principal.role !== 'customer';
      const entries = list.map((r) => {
        const e: Record<string, unknown> = {
          customer: String(r.customer),
          seq: count(r.seq),
          at: isoFromCh(r.at_text),
          type: String(r.entry_type),
          grantId: String(r.bucket),
          ...money('amount', big(r.amount_nano)),
          currency: String(r.currency),
          period: String(r.period),
          calls: count(r.calls),
          actor: internal ? String(r.actor) : '',
          note: internal ? String(r.note) : '',
        };
        if (q.calls) {
          e.eventIds = r.event_ids as string[];
          e.eventAmountsNano = (r.event_amounts_nano as unknown[]).map((a) => big(a).toString());
        }
        return e;
      });
      const pageInfo = pageOf(page, list as { total_rows?: unknown }[]);
      if (wantsCsv(req))
        return sendCsv(
          reply,
          `credit-ledger-${scope.customer ?? scope.product}`.replace(/[^\w.-]/g, '_'),
          LEDGER_CSV,
          entries as Record<string, Cell>[],
          pageInfo.nextOffset,
        );
      return { product: scope.product, customer: scope.customer ?? null, entries, page: pageInfo };
    },
  );
}
