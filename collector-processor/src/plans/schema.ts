import { MAX_AMOUNT_NANO, MAX_GRANT_NANO, parseDecimalToNano } from '@tollgate/contracts';
import { z } from 'zod';

/**
 * The rate-plan file. Every number in it is read from its YAML source text (see load.ts), so money
 * decimals reach `parseDecimalToNano` exactly as written and never pass through a float.
 */

const DECIMAL_RE = /^\d+(\.\d+)?$/;

/**
 * A non-negative decimal amount of the plan currency ("0.0025"), parsed to nano-units. At most what one
 * landed amount can hold (MAX_AMOUNT_NANO): the pipeline refuses a call priced above it, so a plan with such
 * a price would bill nothing.
 */
export const money = z
  .string({ error: 'must be a decimal amount such as "0.002"' })
  .regex(DECIMAL_RE, 'must be a non-negative decimal amount such as "0.002"')
  .transform((s, ctx) => {
    try {
      const nano = parseDecimalToNano(s);
      if (nano > MAX_AMOUNT_NANO) {
        ctx.addIssue({
          code: 'custom',
          message: `must be at most 9223372036.854775807 (the largest amount a call can be billed); got ${s}`,
        });
        return z.NEVER;
      }
      return nano;
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

const count = z
  .string({ error: 'must be a whole number' })
  .regex(/^\d+$/, 'must be a whole number')
  .transform(Number)
  .pipe(z.number().max(Number.MAX_SAFE_INTEGER));

/** A share written as a decimal between 0 and 1 ("0.2" = 20%), kept in basis points. */
const ratio = z
  .string({ error: 'must be a decimal between 0 and 1 such as "0.2"' })
  .regex(/^(0(\.\d{1,4})?|1(\.0{1,4})?)$/, 'must be a decimal between 0 and 1 with at most 4 places')
  .transform((s) => Math.round(Number.parseFloat(s) * 10_000));

const tier = z.strictObject({
  /** Calls of this tool in the period up to and including which this tier applies; omit on the last tier. */
  upTo: count.optional(),
  perCall: money,
});

const usageTier = z.strictObject({
  /** Units of the line (this tool, this customer, the period) up to and including which this tier applies; omit on the last tier. */
  upTo: count.optional(),
  perUnit: money,
});

const priceTerms = z.strictObject({
  perCall: money.optional(),
  /** Graduated per-call price by the customer's calls of this tool in the period (replaces perCall). */
  perCallTiers: z.array(tier).min(1).optional(),
  perInputToken: money.optional(),
  perOutputToken: money.optional(),
  perSecond: money.optional(),
  /** Per-unit price of each named usage line the plan declares under `usageLines`. */
  usage: z.record(z.string(), money).optional(),
  /**
   * Graduated per-unit price of a usage line by the customer's units of it on this tool in the period
   * (replaces `usage.<line>`).
   */
  usageTiers: z.record(z.string(), z.array(usageTier).min(1).max(32)).optional(),
});

const costTerms = z.strictObject({
  perCall: money.optional(),
  perInputToken: money.optional(),
  perOutputToken: money.optional(),
  perSecond: money.optional(),
  /** Per-unit cost of each named usage line. */
  usage: z.record(z.string(), money).optional(),
});

/** Name of a usage line: lower-case, as in `tollgate.usage.<name>` and the landed `usage_lines` column. */
export const USAGE_LINE_NAME_RE = /^[a-z][a-z0-9_]{0,47}$/;
/** Lines a usage line may be a subset of (its units are then taken out of the parent's). */
export const USAGE_PARENTS = ['input_tokens', 'output_tokens'] as const;
export type UsageParent = (typeof USAGE_PARENTS)[number];
/** Attribute names the built-in lines read (not allowed as a usage line's source). */
const RESERVED_ATTRIBUTES = new Set(['gen_ai.usage.input_tokens', 'gen_ai.usage.output_tokens']);

const attributeName = z
  .string()
  .regex(
    /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/,
    'must be an attribute name such as gen_ai.usage.cache_read.input_tokens',
  )
  .refine((a) => !RESERVED_ATTRIBUTES.has(a), 'is read by the built-in token lines');

/**
 * A named usage line: a quantity a call reports (a span attribute, a plain usage event's `metadata`
 * field, the SDK's `reportUsage({ quantities })`), priced per unit by `price.usage.<name>`.
 */
const usageLine = z.strictObject({
  /**
   * Span attributes holding the quantity, first present wins (reasoning tokens come under more than one
   * key). `tollgate.usage.<name>` is always read last (the SDK's usage API and usage events set it).
   */
  attributes: z.union([attributeName, z.array(attributeName).min(1).max(8)]).optional(),
  /** Units of this line are part of input or output tokens: the parent is priced on parent − subsets. */
  subsetOf: z.enum(USAGE_PARENTS).optional(),
  /** Whole units only (tokens, rows, pages); a fractional quantity is rejected. Default true. */
  integral: z.boolean().default(true),
  /** Shown on invoices; defaults to the line name. */
  label: z.string().max(80).optional(),
});

const toolRate = z
  .strictObject({
    price: priceTerms.default({}),
    /** Cost of goods of one call, in the same terms as the price (used by margin analytics and the guard). */
    cost: costTerms.default({}),
  })
  .superRefine((t, ctx) => {
    if (t.price.perCall !== undefined && t.price.perCallTiers) {
      ctx.addIssue({ code: 'custom', path: ['price'], message: 'set perCall or perCallTiers, not both' });
    }
    checkTiers(t.price.perCallTiers ?? [], ['price', 'perCallTiers'], ctx);
    for (const [line, tiers] of Object.entries(t.price.usageTiers ?? {})) {
      checkTiers(tiers, ['price', 'usageTiers', line], ctx);
      if (t.price.usage?.[line] !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['price', 'usageTiers', line],
          message: `set usage.${line} or usageTiers.${line}, not both`,
        });
      }
    }
  });

/** Graduated tiers: `upTo` on every tier but the last, increasing; the last one open-ended. */
function checkTiers(
  tiers: readonly { upTo?: number | undefined }[],
  path: (string | number)[],
  ctx: z.RefinementCtx,
): void {
  let prev = 0;
  tiers.forEach((tr, i) => {
    const last = i === tiers.length - 1;
    if (!last && tr.upTo === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: [...path, i, 'upTo'],
        message: 'required on every tier but the last',
      });
    }
    if (last && tr.upTo !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: [...path, i, 'upTo'],
        message: 'the last tier must be open-ended (no upTo)',
      });
    }
    if (tr.upTo !== undefined) {
      if (tr.upTo <= prev) {
        ctx.addIssue({
          code: 'custom',
          path: [...path, i, 'upTo'],
          message: 'must be greater than the previous tier',
        });
      }
      prev = tr.upTo;
    }
  });
}

/** Hard limits (enforced in Redis). Omitted limits do not apply. */
const limits = z.strictObject({
  spendPerPeriod: money.optional(),
  callsPerDay: count.optional(),
  spendPerSession: money.optional(),
  callsPerToolPerPeriod: z.record(z.string(), count).optional(),
});

const marginGuard = z.strictObject({
  enabled: z.boolean().default(true),
  warnBelow: ratio.default(2000),
  throttleBelow: ratio.default(1000),
  killBelow: ratio.default(0),
  /** Revenue the period (or session) must reach before the guard judges its margin. */
  minRevenue: money.default(0n),
  /** Calls per second allowed while throttled. */
  throttleRatePerSecond: z
    .string()
    .regex(DECIMAL_RE)
    .transform(Number)
    .pipe(z.number().positive())
    .default(1),
});

/**
 * Prepaid credits, for customers with a wallet (a grant or top-up made one; without one, credits are not in
 * play). Billed calls draw the wallet down in the enforcement script.
 */
/** At most the largest grant (1,000,000): the wallet script's sums stay exact (contracts/src/credits.ts). */
const creditAmount = money.refine((v) => v <= MAX_GRANT_NANO, 'must be at most 1000000');

const credits = z.strictObject({
  /** Kill the customer (reason `credits:exhausted`) when the balance reaches −overdraft. */
  hardStop: z.boolean().default(true),
  /** How far below zero the balance may go before the hard stop; repaid from the next grant. */
  overdraft: creditAmount.default(0n),
  /** Send `warn` (reason `credits:low_balance`) while the balance is below this; 0 = never. */
  warnBelow: creditAmount.default(0n),
});

export const planSchema = z
  .strictObject({
    description: z.string().optional(),
    billFailedCalls: z.boolean().default(false),
    /** Calls per customer per period (all tools of the product) that are free. */
    freeCallsPerMonth: count.default(0),
    /** Per-tool rates; `"*"` is the default for tools not listed. */
    tools: z.record(z.string().min(1), toolRate),
    limits: limits.default({}),
    /** Named usage lines priced by the tools' `price.usage` / `cost.usage` (see docs/rate-plans.md). */
    usageLines: z
      .record(z.string().regex(USAGE_LINE_NAME_RE, 'must match [a-z][a-z0-9_]{0,47}'), usageLine)
      .default({}),
    marginGuard: marginGuard.default({
      enabled: true,
      warnBelow: 2000,
      throttleBelow: 1000,
      killBelow: 0,
      minRevenue: 0n,
      throttleRatePerSecond: 1,
    }),
    credits: credits.default({ hardStop: true, overdraft: 0n, warnBelow: 0n }),
  })
  .superRefine((p, ctx) => {
    for (const [name, l] of Object.entries(p.usageLines)) {
      if (l.subsetOf && !l.integral) {
        ctx.addIssue({
          code: 'custom',
          path: ['usageLines', name, 'integral'],
          message: 'a subset of tokens counts whole tokens (integral: true)',
        });
      }
    }
    for (const [tool, t] of Object.entries(p.tools)) {
      for (const [side, key] of [
        ['price', 'usage'],
        ['price', 'usageTiers'],
        ['cost', 'usage'],
      ] as const) {
        const terms = t[side] as { usage?: object; usageTiers?: object };
        for (const line of Object.keys(terms[key] ?? {})) {
          if (!Object.hasOwn(p.usageLines, line)) {
            ctx.addIssue({
              code: 'custom',
              path: ['tools', tool, side, key, line],
              message: `no usage line named "${line}" under usageLines`,
            });
          }
        }
      }
    }
  });

const customer = z.strictObject({
  plan: z.string().min(1).optional(),
  /** Deep-merged over the plan for this customer (objects merge, scalars and lists replace). */
  overrides: z.record(z.string(), z.unknown()).optional(),
});

const product = z.strictObject({
  defaultPlan: z.string().min(1),
  plans: z.record(z.string().min(1), z.unknown()),
  customers: z.record(z.string().min(1), customer).default({}),
});

export const planFileSchema = z.strictObject({
  currency: z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 code such as USD'),
  // a file without a product would refuse every export (`unknown_plan`): refused itself, as rate-plans.md says
  products: z
    .record(z.string().min(1), product)
    .refine((p) => Object.keys(p).length > 0, 'must name at least one product'),
});

export type PlanInput = z.input<typeof planSchema>;
export type Plan = z.output<typeof planSchema>;
export type ToolRate = z.output<typeof toolRate>;
export type PlanFile = z.output<typeof planFileSchema>;
export type UsageLine = z.output<typeof usageLine>;
