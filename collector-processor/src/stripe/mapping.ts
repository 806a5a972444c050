import { INVOICE_COMPONENTS, type InvoiceComponent } from '@tollgate/billing-api';
import { z } from 'zod';

/**
 * The `stripe:` section of the config file: which Tollgate customers go to which Stripe customers, and
 * how each Tollgate invoice line (tool × price component) is pushed. Validated once when the config is
 * loaded (docs/stripe.md).
 */

const LINE_NAME = /^[a-z0-9][a-z0-9_.-]{0,39}$/;
/** A plan's usage line name (docs/rate-plans.md#usage-lines). */
const USAGE_LINE = /^[a-z][a-z0-9_]{0,47}$/;
const UNIT: Record<InvoiceComponent, 'call' | 'token' | 'microsecond' | 'usage'> = {
  call: 'call',
  free_call: 'call',
  failed_call: 'call',
  input_tokens: 'token',
  output_tokens: 'token',
  duration: 'microsecond',
  // one named usage line (`usageLine`): its quantity is in micro-units of that line
  usage: 'usage',
};

/** Micro-units in one unit of a usage line (the invoice lines count usage in 10⁻⁶ of a unit). */
export const MICRO_PER_UNIT = 1_000_000n;

/**
 * The unit of a line's quantity: calls, tokens, or units of its usage line; undefined when the line adds
 * up different things (calls and tokens) or has no whole-unit quantity (duration).
 */
export function quantityUnit(components: readonly InvoiceComponent[]): string | undefined {
  const units = new Set(components.map((c) => UNIT[c]));
  return units.size === 1 && !units.has('microsecond') ? [...units][0] : undefined;
}

const meterSchema = z.strictObject({
  /** The meter's `event_name` (the meter events are sent under it). */
  eventName: z.string().min(1).max(100),
  /**
   * The meter's id (`mtr_…`), to read Stripe's side back (meter event summaries) for the report and to
   * refuse pushing over usage the ledger does not know. Without it the report's Stripe side is empty.
   */
  id: z
    .string()
    .regex(/^mtr_[A-Za-z0-9_]+$/, 'must be a Stripe meter id (mtr_…)')
    .optional(),
  /** The meter's `customer_mapping.event_payload_key` (Stripe's default). */
  customerKey: z.string().min(1).max(100).default('stripe_customer_id'),
  /** The meter's `value_settings.event_payload_key` (Stripe's default). */
  valueKey: z.string().min(1).max(100).default('value'),
});

const lineSchema = z
  .strictObject({
    /** Names the line in idempotency keys, metadata and the report: never rename a line that was pushed. */
    name: z.string().regex(LINE_NAME, 'must be 1-40 of a-z 0-9 _ . - (it goes into idempotency keys)'),
    /** Tools whose lines this covers; `*` is every tool. */
    tools: z.array(z.string().min(1)).min(1).default(['*']),
    components: z.array(z.enum(INVOICE_COMPONENTS as [InvoiceComponent, ...InvoiceComponent[]])).min(1),
    /** The plan's usage line this line pushes (components `[usage]`): one Stripe line per usage line. */
    usageLine: z
      .string()
      .regex(USAGE_LINE, 'must be a usage line name of the plan ([a-z][a-z0-9_]{0,47})')
      .optional(),
    /**
     * `amount`: an invoice item of the amount Tollgate rated (Tollgate's price is authoritative).
     * `quantity`: an invoice item of a Stripe price × the quantity, Stripe prices it.
     * `meter`: a billing meter event of the quantity (`POST /v1/billing/meter_events`), Stripe prices it.
     */
    push: z.enum(['amount', 'quantity', 'meter']),
    /** The Stripe price (`price_…`) of a `quantity` line. */
    price: z
      .string()
      .regex(/^price_[A-Za-z0-9]+$/, 'must be a Stripe price id (price_…)')
      .optional(),
    /** The Stripe billing meter of a `meter` line. */
    meter: meterSchema.optional(),
    /**
     * Usage lines in `quantity` or `meter` mode: Stripe's whole quantity counts 10^-quantityDecimals of a
     * unit (3: thousandths — price the Stripe price per thousandth). Default 0: whole units.
     */
    quantityDecimals: z.number().int().min(0).max(6).optional(),
    /** Text of the invoice item (default: the line name and the day or period). */
    description: z.string().min(1).max(200).optional(),
  })
  .superRefine((l, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    if (l.push === 'quantity' && !l.price) issue('price', 'a quantity line needs a Stripe price');
    if (l.push !== 'quantity' && l.price)
      issue(
        'price',
        l.push === 'amount'
          ? 'an amount line pushes Tollgate’s amount: it takes no Stripe price'
          : 'a meter line is priced by the meter’s price in Stripe: it takes no price here',
      );
    if (l.push === 'meter' && !l.meter) issue('meter', 'a meter line needs meter: { eventName }');
    if (l.push !== 'meter' && l.meter) issue('meter', 'only a meter line (push: meter) takes a meter');
    const units = new Set(l.components.map((c) => UNIT[c]));
    if (units.has('usage')) {
      if (l.components.length > 1)
        issue('components', 'a usage line goes to Stripe on its own: components must be [usage]');
      else if (!l.usageLine)
        issue(
          'usageLine',
          'name the usage line (usageLine: <name>): each usage line goes to Stripe as its own line',
        );
    } else if (l.usageLine) issue('usageLine', 'only a line of components [usage] takes a usageLine');
    if (l.quantityDecimals !== undefined && (!l.usageLine || l.push === 'amount'))
      issue(
        'quantityDecimals',
        'only a usage line pushed as a quantity or to a meter takes quantityDecimals',
      );
    if (l.push !== 'amount') {
      if (units.has('microsecond'))
        issue('components', 'duration has no whole-unit quantity: push it as an amount');
      else if (units.size > 1) issue('components', `a ${l.push} line cannot add calls and tokens together`);
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
    // A meter sums a Stripe customer's events, and its summary is what the report (and the guard against
    // pushing a meter unit twice) reads back: two Tollgate customers on one Stripe customer could not be
    // told apart there, and the second was stopped for good by the first one's usage.
    if (m.lines.some((l) => l.push === 'meter')) {
      const byStripe = new Map<string, string>();
      for (const [customer, stripeCustomer] of Object.entries(m.customers)) {
        const other = byStripe.get(stripeCustomer);
        if (other !== undefined)
          ctx.addIssue({
            code: 'custom',
            path: ['customers', customer],
            message: `${stripeCustomer} is also ${other}'s: with a meter line every Tollgate customer needs a Stripe customer of its own (a meter sums a Stripe customer's events)`,
          });
        else byStripe.set(stripeCustomer, customer);
      }
    }
    const seen = new Set<string>();
    const events = new Set<string>();
    m.lines.forEach((l, i) => {
      if (l.meter) {
        if (events.has(l.meter.eventName))
          ctx.addIssue({
            code: 'custom',
            path: ['lines', i, 'meter', 'eventName'],
            message: `meter event ${l.meter.eventName} is pushed by two lines (Stripe's side could not be told apart)`,
          });
        events.add(l.meter.eventName);
      }
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
  usageLine: string | null = null,
): StripeLine | undefined {
  return mapping.lines.find(
    (l) =>
      l.components.includes(component) &&
      (component !== 'usage' || l.usageLine === usageLine) &&
      (l.tools.includes('*') || l.tools.includes(tool)),
  );
}

/** The line's segment of an idempotency key: its name, and its usage line when it pushes one. */
export function keyLine(line: Pick<StripeLine, 'name' | 'usageLine'>): string {
  return line.usageLine ? `${line.name}:${line.usageLine}` : line.name;
}

/**
 * Whole Stripe units of a line's exact running quantity: calls and tokens as they are; a usage line's
 * micro-units × 10^quantityDecimals ÷ 10⁶, rounded half away from zero (the part below one Stripe unit
 * stays in the running total and is carried into the next push, as amounts are).
 */
export function stripeQuantity(
  line: Pick<StripeLine, 'usageLine' | 'quantityDecimals'>,
  exact: bigint,
): bigint {
  if (!line.usageLine) return exact;
  const scaled = exact * 10n ** BigInt(line.quantityDecimals ?? 0);
  const neg = scaled < 0n;
  const abs = neg ? -scaled : scaled;
  const q = (abs + MICRO_PER_UNIT / 2n) / MICRO_PER_UNIT;
  return neg ? -q : q;
}

/** Micro-units of a usage line in one Stripe unit of the line (10⁶ ÷ 10^quantityDecimals). */
export function microPerStripeUnit(line: Pick<StripeLine, 'quantityDecimals'>): bigint {
  return MICRO_PER_UNIT / 10n ** BigInt(line.quantityDecimals ?? 0);
}
