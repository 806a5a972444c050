import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { type ApiKeyring, requireRole, scopeFor } from './auth.js';
import { creditLedgerExistsSql, creditsAppliedSql, creditsThroughSql } from './credits-sql.js';
import { type Cell, sendCsv, wantsCsv } from './csv.js';
import { ApiError } from './errors.js';
import { big, count, microsToSeconds, money, revenueCostMargin } from './money.js';
import { type AnalyticsDeps, type PlanInfo, PricingError, type QuoteResult } from './ports.js';
import { rangeOf, rows } from './query.js';
import { periodOfMs, periodRange, type TimeRange } from './range.js';
import {
  identifier,
  moneyProps,
  querystring,
  rangeSchema,
  responses,
  revenueCostMarginProps,
  SECURITY,
} from './schemas.js';
import { invoiceLinesSql, invoiceTotalsSql } from './sql.js';

const TAGS = ['billing'];

const COMPONENTS = {
  call: { unit: 'call', label: 'calls' },
  free_call: { unit: 'call', label: 'free calls' },
  failed_call: { unit: 'call', label: 'failed calls (not billed)' },
  input_tokens: { unit: 'token', label: 'input tokens' },
  output_tokens: { unit: 'token', label: 'output tokens' },
  duration: { unit: 'second', label: 'duration' },
  /** A named usage line of the plan (docs/rate-plans.md#usage-lines): one invoice line per line and unit price. */
  usage: { unit: 'unit', label: 'usage' },
} as const;
type Component = keyof typeof COMPONENTS;

const lineProps = {
  tool: { type: 'string' },
  component: { type: 'string', enum: Object.keys(COMPONENTS) },
  line: { type: ['string', 'null'], description: 'the usage line (component `usage` only)' },
  description: { type: 'string' },
  tier: { type: ['integer', 'null'], description: 'graduated per-call tier (component `call` only)' },
  quantity: {
    type: 'string',
    description:
      'calls, tokens (those priced at the token rate), seconds, or units of a usage line (exact decimal)',
  },
  quantityUnit: { type: 'string', enum: ['call', 'token', 'second', 'unit'] },
  unitPriceNano: { type: ['string', 'null'], description: 'null for duration (rounded per call)' },
  unitPrice: { type: ['string', 'null'] },
  ...moneyProps('amount'),
} as const;

const planInfoProps = {
  planId: { type: 'string' },
  version: { type: 'string' },
  currency: { type: 'string' },
  description: { type: ['string', 'null'] },
  freeCallsPerMonth: { type: 'integer' },
  billFailedCalls: { type: 'boolean' },
  guard: {
    type: 'object',
    properties: {
      enabled: { type: 'boolean' },
      warnBelowBps: { type: 'integer' },
      throttleBelowBps: { type: 'integer' },
      killBelowBps: { type: 'integer' },
      ...moneyProps('minRevenue'),
    },
  },
} as const;

function planInfoJson(p: PlanInfo) {
  return {
    planId: p.planId,
    version: p.version,
    currency: p.currency,
    description: p.description ?? null,
    freeCallsPerMonth: p.freeCallsPerMonth,
    billFailedCalls: p.billFailedCalls,
    guard: {
      enabled: p.guard.enabled,
      warnBelowBps: p.guard.warnBelowBps,
      throttleBelowBps: p.guard.throttleBelowBps,
      killBelowBps: p.guard.killBelowBps,
      ...money('minRevenue', p.guard.minRevenueNano),
    },
  };
}

interface QuoteBody {
  product?: string;
  customer?: string;
  planId?: string;
  plan?: Record<string, unknown>;
  usage: {
    tool: string;
    calls?: number;
    inputTokens?: number;
    outputTokens?: number;
    durationMs?: number;
    failed?: boolean;
    quantities?: Record<string, number | string>;
  }[];
  prior?: {
    planCalls?: number;
    toolCalls?: Record<string, number>;
    usageUnits?: Record<string, Record<string, number>>;
  };
}

const MAX_CALLS = 1_000_000_000;

const creditsSchema = {
  type: 'object',
  description:
    'Prepaid credits applied to this period: what prepaid grants paid — their drawdowns for the period’s ' +
    'calls plus the overdraft repayments made while the period ran — and amountDue = amount − applied. ' +
    'Drawdowns from the overdraft bucket are money lent, not paid: they stay due (overdraftDrawn). The ' +
    'drawdowns are reconciled call by call with the raw rows (reconciliation). See docs/api.md#credits-on-the-invoice.',
  properties: {
    ...moneyProps('applied', 'amountDue', 'grantsDrawn', 'overdraftDrawn', 'overdraftRepaid', 'undrawn'),
    drawnCalls: { type: 'integer', description: 'calls a drawdown names' },
    undrawnCalls: {
      type: 'integer',
      description: 'priced calls no drawdown names (before the wallet, or rated while Redis was down)',
    },
    reconciliation: {
      type: 'object',
      properties: {
        drawnNano: {
          type: 'string',
          description: 'sum of the drawdowns for this period’s calls (grants and overdraft bucket)',
        },
        callsPriceNano: { type: 'string', description: 'sum(price_nano) of the landed calls drawn for' },
        mismatchedCalls: { type: 'integer', description: 'calls whose drawdowns differ from their price' },
        unlandedCalls: { type: 'integer', description: 'drawn calls whose row has not landed yet' },
        reconciled: { type: 'boolean' },
      },
    },
  },
} as const;

/**
 * The invoice's credits block from creditsAppliedSql's row. `applied` is what prepaid grants paid: their
 * drawdowns for the period's calls plus the overdraft repayments made during the period. The overdraft
 * bucket's drawdowns are not applied (nobody paid them): they stay in amountDue. A repayment is applied to
 * the period it is made in, so an overdraft already invoiced (and paid) comes back as a credit then, once.
 */
function creditsApplied(amountNano: bigint, r: Record<string, unknown>) {
  const drawn = big(r.drawn_nano ?? 0);
  const grants = big(r.grant_drawn_nano ?? 0);
  const repaid = big(r.overdraft_repaid_nano ?? 0);
  const applied = grants + repaid;
  const matched = big(r.matched_price_nano ?? 0);
  const mismatched = count(r.mismatched ?? 0);
  const unlanded = count(r.unlanded ?? 0);
  return {
    ...money('applied', applied),
    ...money('amountDue', amountNano - applied),
    ...money('grantsDrawn', grants),
    ...money('overdraftDrawn', big(r.overdraft_drawn_nano ?? 0)),
    ...money('overdraftRepaid', repaid),
    ...money('undrawn', big(r.undrawn_nano ?? 0)),
    drawnCalls: count(r.drawn_calls ?? 0),
    undrawnCalls: count(r.undrawn_calls ?? 0),
    reconciliation: {
      drawnNano: drawn.toString(),
      callsPriceNano: matched.toString(),
      mismatchedCalls: mismatched,
      unlandedCalls: unlanded,
      reconciled: mismatched === 0 && unlanded === 0 && drawn === matched,
    },
  };
}

/**
 * What prepaid grants paid for a customer's calls of `period` that started in `range` and have landed, plus
 * the overdraft repayments made in `range` — the `applied` of the invoice preview, one closed unit at a time,
 * for `tollgate billing sync stripe` (its credit line), in nano-units.
 */
export async function creditsThrough(
  d: AnalyticsDeps,
  q: { product: string; customer: string; period: string; range: TimeRange },
  log: FastifyBaseLogger,
): Promise<bigint> {
  const [r] = await rows(d, creditsThroughSql(q.product, q.customer, q.period, q.range), log);
  return big(r?.grant_drawn_nano ?? 0) + big(r?.overdraft_repaid_nano ?? 0);
}

/** Whether the customer has a wallet's ledger (any entry): credits are in play for it. */
export async function hasCreditLedger(
  d: AnalyticsDeps,
  q: { product: string; customer: string },
  log: FastifyBaseLogger,
): Promise<boolean> {
  return (await rows(d, creditLedgerExistsSql(q.product, q.customer), log)).length > 0;
}

/** The price components of an invoice line, in the order the preview lists them. */
export const INVOICE_COMPONENTS = Object.keys(COMPONENTS) as readonly Component[];
export type InvoiceComponent = Component;

/** One invoice line: a tool's price component (per tier and unit price), quantities and money exact. */
export interface InvoiceLine {
  tool: string;
  component: Component;
  /** Graduated per-call tier (component `call` only). */
  tier: number | null;
  /** The usage line (component `usage` only). */
  line: string | null;
  /** Calls, tokens, microseconds (component `duration`) or micro-units of a usage line (component `usage`). */
  quantity: bigint;
  /** Nano-units per call, token or second (duration; null for rows landed before migration 0010). */
  unitNano: bigint | null;
  amountNano: bigint;
}

/**
 * The invoice lines of a customer's calls of `period` that started inside `range` (the whole period for
 * the preview; a day of it for the Stripe sync), from the raw rated calls, with the raw totals they
 * reconcile against (`totals: false` skips that query). Used by `/billing/invoices/preview` and by
 * `tollgate billing sync stripe`.
 */
export async function invoiceLines(
  d: AnalyticsDeps,
  q: { product: string; customer: string; period: string; range: TimeRange },
  log: FastifyBaseLogger,
  opts: { totals?: boolean } = {},
): Promise<{ lines: InvoiceLine[]; totals: Record<string, unknown>; linesNano: bigint }> {
  const [raw, [t]] = await Promise.all([
    rows(d, invoiceLinesSql(q.product, q.customer, q.period, q.range), log),
    opts.totals === false
      ? Promise.resolve([])
      : rows(d, invoiceTotalsSql(q.product, q.customer, q.period, q.range), log),
  ]);
  let linesNano = 0n;
  const lines = raw.map((r): InvoiceLine => {
    const component = String(r.component) as Component;
    const amountNano = big(r.amount_nano);
    linesNano += amountNano;
    return {
      tool: String(r.tool),
      component,
      tier: component === 'call' ? count(r.tier) : null,
      line: component === 'usage' ? String(r.line) : null,
      quantity: big(r.quantity),
      // duration: the per-second price (rows landed before migration 0010 do not know it: null)
      unitNano: component === 'duration' && big(r.unit_nano) === 0n ? null : big(r.unit_nano),
      amountNano,
    };
  });
  return { lines, totals: t ?? {}, linesNano };
}

/** Invoice preview and plan quotes (`/billing/*`). */
export function registerBilling(
  app: FastifyInstance,
  keyring: ApiKeyring,
  analytics: AnalyticsDeps | undefined,
): void {
  const deps = (): AnalyticsDeps => {
    if (!analytics) throw new ApiError('API_UNAVAILABLE', 'billing is not enabled in this process');
    return analytics;
  };

  app.get<{ Querystring: { product?: string; customer?: string; period?: string; format?: 'json' | 'csv' } }>(
    '/billing/invoices/preview',
    {
      schema: {
        tags: TAGS,
        summary:
          'The invoice lines a customer would get for a period under its plan, reconciled with the raw calls',
        description:
          'Lines per tool and price component, from the raw rated calls: calls per tier and unit price, free ' +
          'calls, failed calls not billed, input and output tokens per unit price, duration. The lines add up ' +
          'exactly to the sum of `price_nano` of the raw rows (`reconciliation`).',
        security: SECURITY,
        querystring: querystring(['product', 'customer', 'period', 'format']),
        response: responses(
          {
            type: 'object',
            properties: {
              product: { type: 'string' },
              customer: { type: 'string' },
              period: { type: 'string' },
              currency: { type: 'string' },
              range: rangeSchema,
              plan: { type: ['object', 'null'], properties: planInfoProps },
              ratedUnder: {
                type: 'object',
                properties: {
                  planIds: { type: 'array', items: { type: 'string' } },
                  planVersions: { type: 'array', items: { type: 'string' } },
                },
              },
              lines: { type: 'array', items: { type: 'object', properties: lineProps } },
              totals: {
                type: 'object',
                properties: {
                  calls: { type: 'integer' },
                  billed: { type: 'integer' },
                  free: { type: 'integer' },
                  failedNotBilled: { type: 'integer' },
                  overLimit: { type: 'integer' },
                  unenforced: { type: 'integer' },
                  ...moneyProps(
                    'amount',
                    'callsAmount',
                    'inputTokensAmount',
                    'outputTokensAmount',
                    'durationAmount',
                    'usageAmount',
                  ),
                  ...revenueCostMarginProps,
                },
              },
              reconciliation: {
                type: 'object',
                properties: {
                  rawPriceNano: { type: 'string', description: 'sum(price_nano) of the raw rows' },
                  linesNano: { type: 'string', description: 'sum of the line amounts' },
                  reconciled: { type: 'boolean' },
                },
              },
              credits: creditsSchema,
            },
          },
          true,
        ),
      },
    },
    async (req, reply) => {
      const d = deps();
      const principal = keyring.authenticate(req);
      const scope = scopeFor(principal, req.query);
      if (!scope.customer) throw new ApiError('API_BAD_REQUEST', 'customer is required');
      const period = req.query.period ?? periodOfMs(Date.now());
      const range = periodRange(period);
      const [{ lines, totals, linesNano }, [cr]] = await Promise.all([
        invoiceLines(d, { product: scope.product, customer: scope.customer, period, range }, req.log),
        rows(d, creditsAppliedSql(scope.product, scope.customer, period), req.log),
      ]);
      const out = lines.map((l) => {
        const c = COMPONENTS[l.component];
        const priced =
          l.unitNano !== null &&
          (l.component === 'call' ||
            l.component.endsWith('_tokens') ||
            l.component === 'duration' ||
            l.component === 'usage');
        const per = l.component === 'duration' ? ' per second' : l.component === 'usage' ? ' per unit' : '';
        const unitText = priced ? ` at ${money('u', l.unitNano as bigint).u}${per}` : '';
        const label = l.component === 'usage' ? (l.line ?? '').replace(/_/g, ' ') : c.label;
        return {
          tool: l.tool,
          component: l.component,
          line: l.line,
          description: `${l.tool}: ${label}${l.tier ? `, tier ${l.tier}` : ''}${unitText}`,
          tier: l.tier,
          quantity:
            l.component === 'duration' || l.component === 'usage'
              ? microsToSeconds(l.quantity)
              : l.quantity.toString(),
          quantityUnit: c.unit,
          unitPriceNano: l.unitNano === null ? null : l.unitNano.toString(),
          unitPrice: l.unitNano === null ? null : money('u', l.unitNano).u,
          ...money('amount', l.amountNano),
        };
      });
      const rawPriceNano = big(totals.price_nano ?? 0);
      const plan = d.pricing.planFor(scope.product, scope.customer);
      const credits = creditsApplied(rawPriceNano, cr ?? {});
      if (wantsCsv(req)) {
        // the CSV has no totals: with prepaid credits in play, a last row takes them off, so the amount column
        // sums to what is due (the JSON answer's credits.amountDue)
        const appliedNano = BigInt(credits.appliedNano);
        const rowsOut: Record<string, Cell>[] = [...out];
        if (appliedNano !== 0n || credits.drawnCalls > 0)
          rowsOut.push({
            tool: '',
            component: 'credits',
            line: null,
            description: 'Prepaid credits applied',
            tier: null,
            quantity: '',
            quantityUnit: '',
            unitPriceNano: null,
            unitPrice: null,
            ...money('amount', -appliedNano),
          });
        return sendCsv(
          reply,
          `invoice-${scope.customer.replace(/[^\w.-]/g, '_')}-${period}`,
          Object.keys(lineProps),
          rowsOut,
        );
      }
      return {
        product: scope.product,
        customer: scope.customer,
        period,
        currency: d.pricing.currency(),
        range: rangeOf(range),
        plan: plan ? planInfoJson(plan) : null,
        ratedUnder: {
          planIds: (totals.plan_ids as string[] | undefined) ?? [],
          planVersions: (totals.plan_versions as string[] | undefined) ?? [],
        },
        lines: out,
        totals: {
          calls: count(totals.calls ?? 0),
          billed: count(totals.billed ?? 0),
          free: count(totals.free ?? 0),
          failedNotBilled: count(totals.failed_not_billed ?? 0),
          overLimit: count(totals.over_limit ?? 0),
          unenforced: count(totals.unenforced ?? 0),
          ...money('amount', rawPriceNano),
          ...money('callsAmount', big(totals.call_nano ?? 0)),
          ...money('inputTokensAmount', big(totals.input_nano ?? 0)),
          ...money('outputTokensAmount', big(totals.output_nano ?? 0)),
          ...money('durationAmount', big(totals.duration_nano ?? 0)),
          ...money('usageAmount', big(totals.usage_nano ?? 0)),
          ...revenueCostMargin(rawPriceNano, big(totals.cost_nano ?? 0)),
        },
        reconciliation: {
          rawPriceNano: rawPriceNano.toString(),
          linesNano: linesNano.toString(),
          reconciled: rawPriceNano === linesNano,
        },
        credits,
      };
    },
  );

  const count0 = (max: number) => ({ type: 'integer', minimum: 0, maximum: max }) as const;
  const segmentProps = {
    usageIndex: { type: 'integer' },
    tool: { type: 'string' },
    calls: { type: 'integer' },
    decision: { type: 'string' },
    tier: { type: 'integer' },
    planOrdinal: {
      type: 'integer',
      description: 'position of the first call of the run in the period (all tools)',
    },
    toolOrdinal: {
      type: 'integer',
      description: 'position of the first call of the run among calls of its tool',
    },
    unit: {
      type: 'object',
      description: 'price of ONE call of the run, by component',
      properties: {
        ...moneyProps('price', 'call', 'input', 'output', 'duration', 'cost'),
        usage: {
          type: 'array',
          description: 'its usage lines, in the plan’s line order',
          items: {
            type: 'object',
            properties: { line: { type: 'string' }, quantity: { type: 'string' }, ...moneyProps('price') },
          },
        },
      },
    },
    ...moneyProps('amount', 'cost'),
  } as const;
  app.post<{ Body: QuoteBody }>(
    '/billing/plans/quote',
    {
      schema: {
        tags: TAGS,
        summary: 'Price a hypothetical call or a month of usage under a plan (the real rating function)',
        description:
          'Usage lines are rated in the order given, one call after another, so the free allowance and the ' +
          'graduated tiers are consumed as they would be by calls arriving in that order. `prior` says how ' +
          'many calls the period already counted. The plan is the customer’s (with overrides), a plan of the ' +
          'product by `planId`, or a hypothetical `plan` written like one in the plan file (amounts as ' +
          'decimal strings). Identical calls in a run are priced once and multiplied.',
        security: SECURITY,
        // No query parameters: a quote has no period or date, and `?period=…` must not look honoured.
        querystring: querystring([]),
        body: {
          type: 'object',
          required: ['usage'],
          additionalProperties: false,
          properties: {
            product: identifier,
            customer: identifier,
            planId: identifier,
            plan: {
              type: 'object',
              description: 'a hypothetical plan (plan-file fields, amounts as strings)',
            },
            usage: {
              type: 'array',
              minItems: 1,
              maxItems: 1000,
              items: {
                type: 'object',
                required: ['tool'],
                additionalProperties: false,
                properties: {
                  tool: identifier,
                  calls: { type: 'integer', minimum: 1, maximum: MAX_CALLS, default: 1 },
                  inputTokens: { ...count0(1_000_000_000), default: 0, description: 'per call' },
                  outputTokens: { ...count0(1_000_000_000), default: 0, description: 'per call' },
                  durationMs: {
                    type: 'number',
                    minimum: 0,
                    maximum: 86_400_000,
                    default: 0,
                    description: 'per call',
                  },
                  failed: { type: 'boolean', default: false },
                  quantities: {
                    type: 'object',
                    description: 'per call: quantities of the plan’s usage lines, by line name',
                    maxProperties: 32,
                    propertyNames: { type: 'string', pattern: '^[a-z][a-z0-9_]{0,47}$' },
                    // a number, or decimal text as a span may carry it (exact: "0.0000015" is not rounded)
                    additionalProperties: {
                      anyOf: [
                        { type: 'number', minimum: 0, maximum: 1e12 },
                        { type: 'string', maxLength: 64, pattern: '^[0-9]+(\\.[0-9]+)?$' },
                      ],
                    },
                  },
                },
              },
            },
            prior: {
              type: 'object',
              additionalProperties: false,
              properties: {
                planCalls: { ...count0(MAX_CALLS), default: 0 },
                toolCalls: {
                  type: 'object',
                  maxProperties: 1000,
                  propertyNames: identifier,
                  additionalProperties: count0(MAX_CALLS),
                },
                usageUnits: {
                  type: 'object',
                  description:
                    'units of usage lines priced in graduated tiers already counted, by tool and line name',
                  maxProperties: 1000,
                  propertyNames: identifier,
                  additionalProperties: {
                    type: 'object',
                    maxProperties: 32,
                    propertyNames: { type: 'string', pattern: '^[a-z][a-z0-9_]{0,47}$' },
                    additionalProperties: count0(1e15),
                  },
                },
              },
            },
          },
        },
        response: responses(
          {
            type: 'object',
            properties: {
              product: { type: 'string' },
              currency: { type: 'string' },
              plan: { type: 'object', properties: planInfoProps },
              lines: { type: 'array', items: { type: 'object', properties: segmentProps } },
              totals: {
                type: 'object',
                properties: { calls: { type: 'integer' }, ...revenueCostMarginProps },
              },
              after: {
                type: 'object',
                properties: {
                  planCalls: { type: 'integer' },
                  toolCalls: { type: 'object', additionalProperties: { type: 'integer' } },
                  usageUnits: {
                    type: 'object',
                    additionalProperties: { type: 'object', additionalProperties: { type: 'number' } },
                  },
                },
              },
            },
          },
          false,
        ),
      },
    },
    async (req) => {
      const d = deps();
      const principal = keyring.authenticate(req);
      requireRole(principal, 'admin', 'finance');
      const { product } = scopeFor(principal, { product: req.body.product });
      const b = req.body;
      if (b.planId !== undefined && b.plan !== undefined) {
        throw new ApiError('API_BAD_REQUEST', 'give planId or plan, not both');
      }
      let result: QuoteResult;
      try {
        result = d.pricing.quote({
          product,
          customer: b.customer,
          planId: b.planId,
          plan: b.plan,
          usage: b.usage.map((u) => ({
            tool: u.tool,
            calls: u.calls ?? 1,
            inputTokens: u.inputTokens ?? 0,
            outputTokens: u.outputTokens ?? 0,
            durationUs: Math.round((u.durationMs ?? 0) * 1000),
            ok: !u.failed,
            ...(u.quantities ? { quantities: u.quantities } : {}),
          })),
          prior: {
            planCalls: b.prior?.planCalls ?? 0,
            toolCalls: b.prior?.toolCalls ?? {},
            usageUnits: b.prior?.usageUnits,
          },
        });
      } catch (err) {
        // by name, not instanceof: the adapter may hold another copy of this module (src vs dist)
        if (err instanceof PricingError || (err as Error)?.name === 'PricingError') {
          const reason = (err as PricingError).reason;
          const code =
            reason === 'unknown_plan'
              ? 'API_UNKNOWN_PLAN'
              : reason === 'unknown_tool'
                ? 'API_UNKNOWN_TOOL'
                : reason === 'invalid_usage' || reason === 'amount_out_of_range'
                  ? 'API_BAD_REQUEST'
                  : 'API_INVALID_PLAN';
          throw new ApiError(code, (err as Error).message);
        }
        throw err;
      }
      let amount = 0n;
      let cost = 0n;
      let calls = 0;
      const lines = result.segments.map((s) => {
        const n = BigInt(s.calls);
        amount += s.priceNano * n;
        cost += s.costNano * n;
        calls += s.calls;
        return {
          usageIndex: s.usageIndex,
          tool: s.tool,
          calls: s.calls,
          decision: s.decision,
          tier: s.tier,
          planOrdinal: s.planOrdinal,
          toolOrdinal: s.toolOrdinal,
          unit: {
            ...money('price', s.priceNano),
            ...money('call', s.priceCallNano),
            ...money('input', s.priceInputNano),
            ...money('output', s.priceOutputNano),
            ...money('duration', s.priceDurationNano),
            ...money('cost', s.costNano),
            usage: s.usage.map((x) => ({
              line: x.line,
              quantity: microsToSeconds(x.quantityMicro),
              ...money('price', x.priceNano),
            })),
          },
          ...money('amount', s.priceNano * n),
          ...money('cost', s.costNano * n),
        };
      });
      return {
        product,
        currency: result.plan.currency,
        plan: planInfoJson(result.plan),
        lines,
        totals: { calls, ...revenueCostMargin(amount, cost) },
        after: result.after,
      };
    },
  );
}
