import { INVOICE_COMPONENTS, type InvoiceComponent } from '@tollgate/billing-api';
import { z } from 'zod';

/**
 * The `stripe:` section of the config file: which Tollgate customers go to which Stripe customers, and
 * how each Tollgate invoice line (tool × price component) is pushed. Validated once when the config is
 * loaded (docs/stripe.md).
 */

const LINE_NAME = /^[a-z0-9][a-z0-9_.-]{0,39}$/;
const UNIT: Record<InvoiceComponent, 'call' | 'token' | 'microsecond' | 'usage'> = {
  call: 'call',
  free_call: 'call',
  failed_call: 'call',
  input_tokens: 'token',
  output_tokens: 'token',
  duration: 'microsecond',
  // every usage line of a tool together (lines count different things: amounts only)
  usage: 'usage',
};

/** The unit of a line's quantity, or undefined when its components count different things (usage lines do). */
export function quantityUnit(components: readonly InvoiceComponent[]): string | undefined {
  const units = new Set(components.map((c) => UNIT[c]));
  return units.size === 1 && !units.has('usage') ? [...units][0] : undefined;
}

const lineSchema = z
  .strictObject({
    /** Names the line in idempotency keys, metadata and the report: never rename a line that was pushed. */
    name: z.string().regex(LINE_NAME, 'must be 1-40 of a-z 0-9 _ . - (it goes into idempotency keys)'),
    /** Tools whose lines this covers; `*` is every tool. */
    tools: z.array(z.string().min(1)).min(1).default(['*']),
    components: z.array(z.enum(INVOICE_COMPONENTS as [InvoiceComponent, ...InvoiceComponent[]])).min(1),
    /**
     * `amount`: an invoice item of the amount Tollgate rated (Tollgate's price is authoritative).
     * `quantity`: an invoice item of a Stripe price × the quantity, Stripe prices it.
     */
    push: z.enum(['amount', 'quantity']),
    /** The Stripe price (`price_…`) of a `quantity` line. */
    price: z
      .string()
      .regex(/^price_[A-Za-z0-9]+$/, 'must be a Stripe price id (price_…)')
      .optional(),
    /** Text of the invoice item (default: the line name and the day or period). */
    description: z.string().min(1).max(200).optional(),
  })
  .superRefine((l, ctx) => {
    if (l.push === 'quantity' && !l.price)
      ctx.addIssue({ code: 'custom', path: ['price'], message: 'a quantity line needs a Stripe price' });
    if (l.push === 'amount' && l.price)
      ctx.addIssue({
        code: 'custom',
        path: ['price'],
        message: 'an amount line pushes Tollgate’s amount: it takes no Stripe price',
      });
    if (l.push === 'quantity') {
      const units = new Set(l.components.map((c) => UNIT[c]));
      if (units.has('microsecond'))
        ctx.addIssue({
          code: 'custom',
          path: ['components'],
          message: 'duration has no whole-unit quantity: push it as an amount',
        });
      else if (units.has('usage'))
        ctx.addIssue({
          code: 'custom',
          path: ['components'],
          message: 'usage lines count different units: push them as an amount',
        });
      else if (units.size > 1)
        ctx.addIssue({
          code: 'custom',
          path: ['components'],
          message: 'a quantity line cannot add calls and tokens together',
        });
    }
  });

export const stripeMappingSchema = z
  .strictObject({
    /** The Tollgate product (tenant) whose customers are pushed. */
    product: z.string().min(1),
    /** `day`: one push per customer, line and UTC day; `period`: one per billing month. */
    granularity: z.enum(['day', 'period']).default('day'),
    /** A day (or period) is pushed this many minutes after it ends, so that late spans are in it. */
    settleMinutes: z
      .number()
      .int()
      .min(0)
      .max(60 * 24 * 31)
      .default(120),
    /** Digits of the currency's minor unit when Stripe's table (docs/stripe.md) should not decide. */
    minorUnitDigits: z.number().int().min(0).max(3).optional(),
    /** Tollgate customer → Stripe customer (`cus_…`). Customers not listed are not pushed (the report says so). */
    customers: z
      .record(
        z.string().min(1),
        z.string().regex(/^cus_[A-Za-z0-9]+$/, 'must be a Stripe customer id (cus_…)'),
      )
      .refine((m) => Object.keys(m).length > 0, 'map at least one customer'),
    /** In order: an invoice line goes to the first mapping line whose tools and components include it. */
    lines: z.array(lineSchema).min(1),
  })
  .superRefine((m, ctx) => {
    const seen = new Set<string>();
    m.lines.forEach((l, i) => {
      if (seen.has(l.name))
        ctx.addIssue({
          code: 'custom',
          path: ['lines', i, 'name'],
          message: `line ${l.name} is named twice`,
        });
      seen.add(l.name);
    });
  });

export type StripeMapping = z.infer<typeof stripeMappingSchema>;
export type StripeLine = StripeMapping['lines'][number];

/** Validates the `stripe:` section; the problems name their path (`stripe.lines.1.price: …`). */
export function checkStripeMapping(
  doc: unknown,
): { ok: true; mapping: StripeMapping } | { ok: false; problems: string[] } {
  const r = stripeMappingSchema.safeParse(doc);
  if (r.success) return { ok: true, mapping: r.data };
  return {
    ok: false,
    problems: r.error.issues.map((i) => `${['stripe', ...i.path].join('.')}: ${i.message}`),
  };
}

/** The mapping line an invoice line goes to (the first that covers it), or undefined (unmapped). */
export function lineFor(
  mapping: StripeMapping,
  tool: string,
  component: InvoiceComponent,
): StripeLine | undefined {
  return mapping.lines.find(
    (l) => l.components.includes(component) && (l.tools.includes('*') || l.tools.includes(tool)),
  );
}
