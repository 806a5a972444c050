import { createHash } from 'node:crypto';
import {
  type AnalyticsDeps,
  creditsThrough,
  hasCreditLedger,
  type InvoiceComponent,
  type InvoiceLine,
  invoiceLines,
  periodRange,
} from '@tollgate/billing-api';
import { MAX_SAFE_BIGINT, MIN_SAFE_BIGINT } from '@tollgate/contracts';
import type { FastifyBaseLogger } from 'fastify';
import type { Logger } from 'pino';
import { StripeSyncError } from './errors.js';
import type { InvoiceItemParams, InvoiceItemSeen, MeterEventParams, StripeGateway } from './gateway.js';
import type { Ledger } from './ledger.js';
import {
  keyLine,
  lineFor,
  microPerStripeUnit,
  quantityUnit,
  type StripeLine,
  type StripeMapping,
  stripeQuantity,
} from './mapping.js';
import {
  amountToPush,
  closedUnits,
  creditToMinor,
  idempotencyKey,
  minorUnitDigits,
  nanoPerMinor,
  type PushUnit,
  roundToMinor,
} from './money.js';
import type { ReportRow, SyncReport } from './report.js';

/**
 * `tollgate billing sync stripe` and its background job: for every mapped customer, every billing period
 * asked for, every closed day (or the closed period) and every mapping line, push what Tollgate rated
 * since the last push of that line — one invoice item (or billing meter event) per customer, line and
 * unit, under an idempotency key derived from them — and report Tollgate's total, what was pushed and
 * what Stripe holds. A usage line of the plan is a mapping line of its own: one Stripe line per usage line.
 * The invoice lines are the invoice preview's (`invoiceLines` of billing-api), never recomputed here.
 */

export interface SyncOptions {
  mapping: StripeMapping;
  deps: AnalyticsDeps;
  /** Absent in a dry run without a key: Stripe is then not read either. */
  gateway: StripeGateway | undefined;
  ledger: Ledger;
  /** Billing periods (`YYYY-MM`) to sync, oldest first. */
  periods: readonly string[];
  /** Only these mapped customers (default: every one; the unmapped ones are then not listed). */
  customers?: readonly string[] | undefined;
  nowMs: number;
  dryRun: boolean;
  log: Logger;
  /**
   * Meter events left unsure (STRIPE_METER_UNCERTAIN), settled by the operator after looking at the meter:
   * `sent` records the event as found at Stripe; `unsent` sends it again under a new identifier.
   */
  resolve?: Readonly<Record<string, 'sent' | 'unsent'>> | undefined;
  /** Called after each push is recorded; tests throw from it to crash a run mid-sync. */
  afterPush?: (key: string) => void;
}

/**
 * The credit line of a customer with a wallet: what prepaid grants paid for its calls (the invoice preview's
 * `credits.applied`), pushed as a negative invoice item per unit. Its name is not a valid mapping line name
 * (`@`), so its keys and metadata never collide with a mapping line's.
 */
export const CREDIT_LINE: StripeLine = {
  name: '@credits',
  tools: [],
  components: [],
  push: 'amount',
  description: 'Prepaid credits applied',
  quantityDecimals: 0,
};

const isCredit = (line: Pick<StripeLine, 'name'>) => line.name === CREDIT_LINE.name;

/** Stripe takes meter events of the past 35 calendar days (docs: `timestamp` of POST /v1/billing/meter_events). */
const METER_PAST_S = 35 * 86_400;
/**
 * How long after a meter line's last push its summary may lag behind (report `pending`): Stripe aggregates meter
 * events asynchronously, within minutes. Past it the shortfall is a `mismatch`.
 */
export const METER_CATCH_UP_MS = 60 * 60_000;
/** Stripe keeps an Idempotency-Key's answer for 24 hours, and an event `identifier` unique for at least 24 hours. */
const DEDUP_WINDOW_MS = 24 * 3_600_000;
/** Stripe's limit on a meter event's `identifier`. */
const MAX_IDENTIFIER = 100;

/** The meter event's identifier: the idempotency key when it fits in Stripe's 100 characters, else its hash. */
export function meterIdentifier(key: string): string {
  return key.length <= MAX_IDENTIFIER ? key : `tollgate-v1/${createHash('sha256').update(key).digest('hex')}`;
}

interface Running {
  minor: bigint;
  quantity: bigint;
}

/** What a settled unit of a line added: minor units (amount lines) or Stripe units (quantity and meter lines). */
type Settled = Running;

const sec = (ms: number) => Math.floor(ms / 1000);

/** The sums of the invoice lines per mapping line, and the lines no mapping line covers. */
function group(mapping: StripeMapping, lines: readonly InvoiceLine[]) {
  const byLine = new Map<string, { nano: bigint; quantity: bigint }>();
  const unmapped = new Map<
    string,
    { tool: string; component: InvoiceComponent; usageLine: string | null; nano: bigint; quantity: bigint }
  >();
  for (const l of lines) {
    const m = lineFor(mapping, l.tool, l.component, l.line);
    if (m) {
      const g = byLine.get(m.name) ?? { nano: 0n, quantity: 0n };
      g.nano += l.amountNano;
      g.quantity += l.quantity;
      byLine.set(m.name, g);
    } else {
      const k = `${l.tool}|${l.component}|${l.line ?? ''}`;
      const u = unmapped.get(k) ?? {
        tool: l.tool,
        component: l.component,
        usageLine: l.line,
        nano: 0n,
        quantity: 0n,
      };
      u.nano += l.amountNano;
      u.quantity += l.quantity;
      unmapped.set(k, u);
    }
  }
  return { byLine, unmapped };
}

/** Customers with calls in the period that the mapping does not name (the report lists them, unpushed). */
async function unmappedCustomers(
  deps: AnalyticsDeps,
  mapping: StripeMapping,
  period: string,
): Promise<{ customer: string; nano: bigint }[]> {
  const rs = await deps.clickhouse.query({
    query:
      'SELECT customer, sum(toInt128(price_nano)) AS nano FROM mcp_tool_calls WHERE product = {product:String} AND period = {period:String} GROUP BY customer ORDER BY customer',
    query_params: { product: mapping.product, period },
    format: 'JSONEachRow',
  });
  const rows = await rs.json<{ customer: string; nano: string }>();
  return rows
    .filter((r) => !(r.customer in mapping.customers))
    .map((r) => ({ customer: r.customer, nano: BigInt(r.nano) }));
}

function emptyRow(
  customer: string,
  stripeCustomer: string | null,
  period: string,
  line: Pick<StripeLine, 'name' | 'push'> & {
    components?: readonly InvoiceComponent[];
    usageLine?: string | null | undefined;
  },
): ReportRow {
  const usage = line.usageLine ?? null;
  return {
    customer,
    stripeCustomer,
    period,
    line: line.name,
    usageLine: usage,
    push: line.push,
    unitsClosed: 0,
    lastUnit: null,
    tollgateNano: '0',
    tollgateMinor: '0',
    tollgateQuantity: line.components && quantityUnit(line.components) ? '0' : null,
    tollgateQuantityMicro: usage ? '0' : null,
    pushedMinor: '0',
    pushedQuantity: '0',
    stripeMinor: null,
    stripeQuantity: null,
    remainderNano: '0',
    quantityRemainderMicro: usage && line.push !== 'amount' ? '0' : null,
    status: 'reconciled',
  };
}

/** The body of one push: Tollgate's amount, or Stripe's price × the quantity; the unit; the metadata. */
function paramsFor(
  a: { product: string; customer: string; stripeCustomer: string; currency: string; key: string },
  line: StripeLine,
  unit: PushUnit,
  amountMinor: bigint,
  quantity: bigint,
  cumulativeNano: bigint,
): InvoiceItemParams {
  return {
    customer: a.stripeCustomer,
    ...(line.push === 'amount'
      ? { amount: Number(amountMinor), currency: a.currency }
      : { pricing: { price: line.price as string }, quantity: Number(quantity) }),
    description: `${line.description ?? line.name} — ${unit.id}`,
    period: { start: sec(unit.fromMs), end: sec(unit.toMs) - 1 },
    metadata: {
      tollgate_key: a.key,
      tollgate_product: a.product,
      tollgate_customer: a.customer,
      tollgate_line: line.name,
      ...(line.usageLine ? { tollgate_usage_line: line.usageLine } : {}),
      tollgate_period: unit.period,
      tollgate_unit: unit.id,
      tollgate_cumulative_nano: cumulativeNano.toString(),
    },
  };
}

/**
 * The meter event of one push: the quantity the unit adds, at the unit's last second (so it falls in the
 * day or period it is for), under an identifier derived from the idempotency key.
 */
function meterParamsFor(
  a: { stripeCustomer: string; key: string },
  line: StripeLine,
  unit: PushUnit,
  quantity: bigint,
): MeterEventParams {
  const meter = line.meter as NonNullable<StripeLine['meter']>;
  return {
    event_name: meter.eventName,
    payload: { [meter.customerKey]: a.stripeCustomer, [meter.valueKey]: quantity.toString() },
    identifier: meterIdentifier(a.key),
    timestamp: sec(unit.toMs) - 1,
  };
}

export async function syncStripe(o: SyncOptions): Promise<SyncReport> {
  const { mapping, deps, ledger, log } = o;
  const settleMs = mapping.settleMinutes * 60_000;
  const currency = deps.pricing.currency().toLowerCase();
  const digits = minorUnitDigits(currency, mapping.minorUnitDigits);
  const perMinor = nanoPerMinor(digits);
  const report: SyncReport = {
    generatedAt: new Date(o.nowMs).toISOString(),
    product: mapping.product,
    currency,
    minorUnitDigits: digits,
    granularity: mapping.granularity,
    dryRun: o.dryRun,
    stripeRead: o.gateway !== undefined,
    pushes: { created: 0, replayed: 0, found: 0, wouldPush: 0, skippedZero: 0, meterEvents: 0 },
    rows: [],
    errors: [],
  };
  const firstFromMs = Math.min(...o.periods.map((p) => periodRange(p).fromMs));
  const chLog = log as unknown as FastifyBaseLogger;

  if (o.customers)
    for (const c of o.customers)
      if (!(c in mapping.customers)) throw new StripeSyncError('STRIPE_UNKNOWN_CUSTOMER', c);
  const customers = Object.entries(mapping.customers).filter(
    ([c]) => !o.customers || o.customers.includes(c),
  );
  for (const [customer, stripeCustomer] of customers) {
    const rows = new Map<string, ReportRow>();
    const rowOf = (period: string, line: StripeLine): ReportRow => {
      const k = `${period}|${line.name}`;
      const r = rows.get(k) ?? emptyRow(customer, stripeCustomer, period, line);
      rows.set(k, r);
      return r;
    };
    /** Stripe's items of this customer made by this sync, by idempotency key (filled below). */
    const byKey = new Map<string, InvoiceItemSeen>();
    /**
     * What a unit's line already added, when it is settled: an outcome in the ledger, or an item at Stripe
     * carrying its key (an earlier run whose ledger line is missing: a crash, or another data directory).
     */
    const settled = (key: string, line: StripeLine): Settled | undefined => {
      const known = ledger.intent(key);
      const outcome = ledger.outcome(key);
      if (outcome) {
        // what was at Stripe when it was found, when that is recorded: it may differ from the intent (another
        // data directory pushed the key), and counting the intent charged the difference again on a later unit.
        // Not what Stripe holds now: an operator's later edit of the item stays the operator's.
        if (outcome.how === 'found' && outcome.foundMinor !== undefined)
          return { minor: BigInt(outcome.foundMinor), quantity: BigInt(outcome.foundQuantity ?? 0) };
        return { minor: BigInt(known?.amountMinor ?? 0), quantity: BigInt(known?.quantity ?? 0) };
      }
      const atStripe = byKey.get(key);
      if (!atStripe) return undefined;
      const held = {
        minor: line.push === 'amount' ? BigInt(atStripe.amount) : 0n,
        quantity: line.push === 'amount' ? 0n : BigInt(atStripe.quantity),
      };
      report.pushes.found++;
      if (!o.dryRun && known) ledger.writeOutcome(key, atStripe.id, 'found', held);
      return held;
    };
    // Stripe's answer: the items this product's sync made for this customer (found by their metadata).
    const ours = (items: InvoiceItemSeen[]) =>
      items.filter(
        (i) => i.metadata.tollgate_product === mapping.product && i.metadata.tollgate_customer === customer,
      );
    let pushesItems = mapping.lines.some((l) => l.push !== 'meter');
    /** Stripe's answer after the pushes, per period and line (also for a customer stopped on an error). */
    const readBack = async (): Promise<void> => {
      if (o.gateway) {
        const after = pushesItems
          ? ours(await o.gateway.listInvoiceItems(stripeCustomer, sec(firstFromMs)))
          : [];
        for (const r of rows.values()) {
          if (r.status === 'unmapped') continue;
          if (r.push === 'meter') {
            // The meter's summary of this customer over the period's closed units (its events only if the
            // meter is fed by this sync alone); Stripe aggregates asynchronously.
            const meterId = mapping.lines.find((l) => l.name === r.line)?.meter?.id;
            if (!meterId || !r.lastUnit) continue;
            const range = periodRange(r.period);
            const end = Math.min(range.toMs, closedUnitEnd(r.lastUnit, range.toMs));
            r.stripeQuantity = String(
              await o.gateway.meterEventSummary(meterId, stripeCustomer, sec(range.fromMs), sec(end)),
            );
            continue;
          }
          const mine = after.filter(
            (i) => i.metadata.tollgate_period === r.period && i.metadata.tollgate_line === r.line,
          );
          r.stripeMinor =
            r.push === 'amount' ? mine.reduce((s, i) => s + BigInt(i.amount), 0n).toString() : null;
          r.stripeQuantity =
            r.push === 'quantity' ? mine.reduce((s, i) => s + BigInt(i.quantity), 0n).toString() : null;
        }
      }
    };
    try {
      // A customer with a wallet gets one more line: the credits its prepaid grants paid (a negative item).
      const wallet =
        o.periods.length > 0 && (await hasCreditLedger(deps, { product: mapping.product, customer }, chLog));
      const lines = wallet ? [...mapping.lines, CREDIT_LINE] : mapping.lines;
      pushesItems = lines.some((l) => l.push !== 'meter');
      if (o.gateway && pushesItems)
        for (const item of ours(await o.gateway.listInvoiceItems(stripeCustomer, sec(firstFromMs))))
          byKey.set(item.metadata.tollgate_key as string, item);

      for (const period of o.periods) {
        const range = periodRange(period);
        // A period keeps the granularity it was first pushed with: its units' ids (a day, or the month) are in
        // the keys, so a period pushed by day and then by month (or the other way) would be pushed again in
        // full — every charge and credit twice. A mapping switched mid-period goes on by the old granularity
        // until the period ends; the next period takes the new one. Pushes of both kinds in one period (two
        // data directories with different mappings) stop the customer.
        const pushedUnits = new Set([
          ...ledger.unitsWithIntent(customer, period),
          ...[...byKey.values()]
            .filter((i) => i.metadata.tollgate_period === period)
            .map((i) => String(i.metadata.tollgate_unit)),
        ]);
        const byDay = [...pushedUnits].some((u) => u.length === 10);
        const byPeriod = pushedUnits.has(period);
        if (byDay && byPeriod)
          throw new StripeSyncError(
            'STRIPE_GRANULARITY_CHANGED',
            `${customer} ${period}: pushed both by day and as a whole (${[...pushedUnits].sort().join(', ')}); nothing pushed`,
          );
        const granularity = byDay ? 'day' : byPeriod ? 'period' : mapping.granularity;
        if (granularity !== mapping.granularity)
          log.warn(
            { customer, period, granularity, mapping: mapping.granularity },
            'Stripe sync: the period was pushed with the other granularity and goes on with it',
          );
        const units = closedUnits(period, range, granularity, o.nowMs, settleMs);
        const running = new Map<string, Running>(lines.map((l) => [l.name, { minor: 0n, quantity: 0n }]));
        for (const line of lines) rowOf(period, line);
        const keyOf = (line: StripeLine, unitId: string) =>
          idempotencyKey(mapping.product, customer, keyLine(line), unitId);
        /**
         * Meter lines whose pushes of this period this ledger knows nothing of (as the run starts): before the
         * first push of one, Stripe's meter must show none of this customer's usage in the period — else the
         * usage was pushed from another data directory (or the ledger was lost) and Stripe, which keeps event
         * identifiers unique for about 24 hours only, would count it twice.
         */
        const unknownToLedger = new Set(
          mapping.lines
            .filter((l) => l.push === 'meter' && l.meter?.id)
            .filter((l) =>
              units.every((u) => !ledger.intent(keyOf(l, u.id)) && !ledger.outcome(keyOf(l, u.id))),
            )
            .map((l) => l.name),
        );
        const guardMeter = async (line: StripeLine, unit: PushUnit) => {
          if (!o.gateway || !unknownToLedger.has(line.name)) return;
          unknownToLedger.delete(line.name);
          const meterId = (line.meter as NonNullable<StripeLine['meter']>).id as string;
          const atStripe = await o.gateway.meterEventSummary(
            meterId,
            stripeCustomer,
            sec(range.fromMs),
            sec(unit.toMs),
          );
          if (atStripe !== 0)
            throw new StripeSyncError(
              'STRIPE_METER_UNCERTAIN',
              `${customer} ${line.name} ${period}: meter ${meterId} already has ${atStripe} for ${stripeCustomer} in the period, and this data directory's ledger has no push of it (restore the ledger of the runs that pushed it)`,
            );
        };
        let lastUnmapped: ReturnType<typeof group>['unmapped'] = new Map();
        // what the period's rows say is filled in however the loop ends: a customer stopped on an error reports
        // what it pushed before the stop (it said 0)
        try {
          for (const [u, unit] of units.entries()) {
            const keys = lines.map((l) => keyOf(l, unit.id));
            const done = lines.map((l, i) => settled(keys[i] as string, l));
            const addUnit = (line: StripeLine, minor: bigint, quantity: bigint) => {
              const run = running.get(line.name) as Running;
              run.minor += minor;
              run.quantity += quantity;
              const row = rowOf(period, line);
              row.unitsClosed++;
              row.lastUnit = unit.id;
            };
            if (u < units.length - 1 && done.every((d) => d !== undefined)) {
              // Settled in full by an earlier run: only the running totals move (no ClickHouse query).
              lines.forEach((line, i) => {
                const d = done[i] as Settled;
                addUnit(line, d.minor, d.quantity);
              });
              continue;
            }
            // The period's lines from its start through this unit: late calls of earlier days are in them.
            const through = { fromMs: range.fromMs, toMs: unit.toMs };
            const read = await invoiceLines(
              deps,
              { product: mapping.product, customer, period, range: through },
              chLog,
              { totals: false },
            );
            const { byLine, unmapped } = group(mapping, read.lines);
            if (wallet) {
              // What the grants paid for these calls (and overdraft repayments made meanwhile): a credit.
              const applied = await creditsThrough(
                deps,
                { product: mapping.product, customer, period, range: through },
                chLog,
              );
              byLine.set(CREDIT_LINE.name, { nano: -applied, quantity: 0n });
            }
            lastUnmapped = unmapped;
            for (const [i, line] of lines.entries()) {
              const cum = byLine.get(line.name) ?? { nano: 0n, quantity: 0n };
              const row = rowOf(period, line);
              row.tollgateNano = cum.nano.toString();
              row.tollgateQuantity = quantityUnit(line.components)
                ? stripeQuantity(line, cum.quantity).toString()
                : null;
              if (line.usageLine) row.tollgateQuantityMicro = cum.quantity.toString();
              const d = done[i];
              if (d) {
                addUnit(line, d.minor, d.quantity);
                continue;
              }
              const run = running.get(line.name) as Running;
              const key = keys[i] as string;
              const pushed = (minor: bigint, quantity: bigint) => addUnit(line, minor, quantity);
              const known = ledger.intent(key);
              let intent = known;
              if (!intent) {
                const amountMinor =
                  line.push !== 'amount'
                    ? 0n
                    : isCredit(line)
                      ? creditToMinor(cum.nano, digits) - run.minor
                      : amountToPush(cum.nano, run.minor, digits);
                if (amountMinor > 0n && isCredit(line))
                  throw new StripeSyncError(
                    'STRIPE_CREDITS_DECREASED',
                    `${customer} ${unit.id}: ${-cum.nano} nano applied through this unit, ${-run.minor} minor units already credited`,
                  );
                // Stripe's whole units through this unit − those pushed: a usage line's fraction is carried.
                const quantity =
                  line.push === 'amount' ? 0n : stripeQuantity(line, cum.quantity) - run.quantity;
                if (quantity < 0n)
                  throw new StripeSyncError(
                    'STRIPE_NEGATIVE_QUANTITY',
                    `${customer} ${line.name} ${unit.id}: ${cum.quantity} < ${run.quantity} already pushed`,
                  );
                const big = (n: bigint) => n > MAX_SAFE_BIGINT || n < MIN_SAFE_BIGINT;
                if (big(amountMinor) || big(quantity))
                  throw new StripeSyncError(
                    'STRIPE_API',
                    `${customer} ${line.name} ${unit.id}: ${amountMinor || quantity} is beyond what the API takes as an integer`,
                  );
                if (amountMinor === 0n && quantity === 0n) {
                  // Nothing to add (the running total is carried into the next unit): settled, nothing sent.
                  report.pushes.skippedZero++;
                  if (!o.dryRun) ledger.writeOutcome(key, '', 'nothing');
                  pushed(0n, 0n);
                  continue;
                }
                let params: InvoiceItemParams | MeterEventParams;
                if (line.push === 'meter') {
                  const oldest = sec(o.nowMs) - METER_PAST_S;
                  if (sec(unit.toMs) - 1 < oldest)
                    throw new StripeSyncError(
                      'STRIPE_METER_WINDOW',
                      `${customer} ${line.name} ${unit.id}: its event would be dated ${new Date(unit.toMs - 1000).toISOString()}, more than 35 days ago`,
                    );
                  await guardMeter(line, unit);
                  params = meterParamsFor({ stripeCustomer, key }, line, unit, quantity);
                } else
                  params = paramsFor(
                    { product: mapping.product, customer, stripeCustomer, currency, key },
                    line,
                    unit,
                    amountMinor,
                    quantity,
                    cum.nano,
                  );
                const fields = {
                  key,
                  customer,
                  line: line.name,
                  period,
                  unit: unit.id,
                  cumulativeNano: cum.nano.toString(),
                  cumulativeQuantity: cum.quantity.toString(),
                  amountMinor: amountMinor.toString(),
                  quantity: quantity.toString(),
                  kind: line.push === 'meter' ? ('meter_event' as const) : ('invoice_item' as const),
                  params,
                };
                if (o.dryRun) {
                  report.pushes.wouldPush++;
                  row.status = 'dry_run';
                  pushed(amountMinor, quantity);
                  continue;
                }
                intent = ledger.writeIntent(fields, o.nowMs);
              }
              if (o.dryRun) {
                // An intent left by an interrupted run: the next real run sends it as it is.
                report.pushes.wouldPush++;
                row.status = 'dry_run';
                pushed(BigInt(intent.amountMinor), BigInt(intent.quantity));
                continue;
              }
              if (!o.gateway) throw new StripeSyncError('STRIPE_NOT_CONFIGURED', 'no Stripe connection');
              let res: { id: string; replayed: boolean };
              if (intent.kind === 'meter_event') {
                let params = intent.params as MeterEventParams;
                // An interrupted run's event: resent under the same key and identifier while Stripe still
                // deduplicates them; past that, a resend could be counted twice, so it is not sent — unless
                // the operator looked at the meter and said whether it is there (--resolve).
                if (known && o.nowMs - Date.parse(intent.at) >= DEDUP_WINDOW_MS) {
                  const said = o.resolve?.[key];
                  if (said === 'sent') {
                    report.pushes.found++;
                    ledger.writeOutcome(key, params.identifier, 'found');
                    pushed(BigInt(intent.amountMinor), BigInt(intent.quantity));
                    continue;
                  }
                  if (said !== 'unsent')
                    throw new StripeSyncError(
                      'STRIPE_METER_UNCERTAIN',
                      `${customer} ${line.name} ${unit.id}: the meter event ${params.identifier} (key ${key}) of ${intent.at} may or may not have reached Stripe, and Stripe deduplicates identifiers for about 24 hours (see docs/stripe.md#meter-events-left-unsure)`,
                    );
                  // Not at Stripe: the same event under a new identifier (the old one may still be remembered).
                  params = { ...params, identifier: meterIdentifier(`${key}#resent-${sec(o.nowMs)}`) };
                  intent = ledger.writeIntent({ ...intent, params }, o.nowMs);
                }
                // The identifier doubles as the Idempotency-Key: a new identifier is a new request.
                const ev = await o.gateway.createMeterEvent(params, params.identifier);
                res = { id: ev.identifier, replayed: ev.replayed };
                report.pushes.meterEvents++;
              } else res = await o.gateway.createInvoiceItem(intent.params as InvoiceItemParams, key);
              ledger.writeOutcome(key, res.id, res.replayed ? 'replayed' : 'created');
              if (res.replayed) report.pushes.replayed++;
              else report.pushes.created++;
              log.info(
                { customer, line: line.name, unit: unit.id, key, stripeId: res.id, replayed: res.replayed },
                'pushed to Stripe',
              );
              pushed(BigInt(intent.amountMinor), BigInt(intent.quantity));
              o.afterPush?.(key);
            }
          }
        } finally {
          for (const line of lines) {
            const row = rowOf(period, line);
            const run = running.get(line.name) as Running;
            const tollgateNano = BigInt(row.tollgateNano);
            row.tollgateMinor = (
              isCredit(line) ? creditToMinor(tollgateNano, digits) : roundToMinor(tollgateNano, digits)
            ).toString();
            row.pushedMinor = run.minor.toString();
            row.pushedQuantity = run.quantity.toString();
            row.remainderNano =
              line.push === 'amount' ? (tollgateNano - run.minor * perMinor).toString() : '0';
            if (line.usageLine && line.push !== 'amount')
              row.quantityRemainderMicro = (
                BigInt(row.tollgateQuantityMicro ?? '0') -
                run.quantity * microPerStripeUnit(line)
              ).toString();
          }
        }
        for (const u of lastUnmapped.values()) {
          if (u.nano === 0n && u.quantity === 0n) continue;
          const r = rowOf(period, {
            name: `(unmapped) ${u.tool}/${u.component}${u.usageLine ? `:${u.usageLine}` : ''}`,
            push: 'amount',
            components: [u.component],
            tools: [u.tool],
            usageLine: u.usageLine ?? undefined,
          });
          r.tollgateNano = u.nano.toString();
          r.tollgateMinor = roundToMinor(u.nano, digits).toString();
          r.tollgateQuantity = u.usageLine
            ? stripeQuantity({ usageLine: u.usageLine }, u.quantity).toString()
            : u.quantity.toString();
          if (u.usageLine) r.tollgateQuantityMicro = u.quantity.toString();
          r.remainderNano = u.nano.toString();
          r.status = 'unmapped';
        }
      }
      await readBack();
      for (const r of rows.values()) {
        if (r.status !== 'reconciled') continue;
        if (o.dryRun) {
          r.status = 'dry_run'; // pushed* are what would have been pushed: nothing is reconciled yet
          continue;
        }
        const want = r.push === 'amount' ? r.tollgateMinor : r.tollgateQuantity;
        const pushed = r.push === 'amount' ? r.pushedMinor : r.pushedQuantity;
        const atStripe = r.push === 'amount' ? r.stripeMinor : r.stripeQuantity;
        if (want !== pushed) r.status = 'mismatch';
        else if (atStripe !== null && Number(atStripe) !== Number(pushed)) {
          // a meter's summary behind what was pushed: Stripe still aggregating, for a while after the last
          // push; past that, events Stripe did not count (it validates them asynchronously) are a mismatch
          const last = r.push === 'meter' ? ledger.lastIntentAtMs(customer, r.period, r.line) : undefined;
          const catchingUp =
            Number(atStripe) < Number(pushed) && last !== undefined && o.nowMs - last < METER_CATCH_UP_MS;
          r.status = catchingUp ? 'pending' : 'mismatch';
        }
      }
    } catch (err) {
      const code = err instanceof StripeSyncError ? err.code : 'STRIPE_API';
      report.errors.push({ customer, code, message: (err as Error).message });
      for (const r of rows.values()) if (r.status === 'reconciled') r.status = 'incomplete';
      log.error({ customer, code, err: (err as Error).message }, 'Stripe sync of a customer stopped');
      // the rows still say what Stripe holds, when Stripe answers (a stop of ours, not Stripe's)
      if (err instanceof StripeSyncError && !o.dryRun)
        await readBack().catch((e: Error) =>
          log.warn({ customer, err: e.message }, 'Stripe sync: Stripe not read back after the stop'),
        );
      if (!(err instanceof StripeSyncError)) {
        report.rows.push(...rows.values());
        throw err;
      }
    }
    report.rows.push(...rows.values());
  }
  for (const period of o.customers ? [] : o.periods)
    for (const u of await unmappedCustomers(deps, mapping, period))
      report.rows.push({
        ...emptyRow(u.customer, null, period, { name: '(unmapped customer)', push: 'amount' }),
        tollgateNano: u.nano.toString(),
        tollgateMinor: roundToMinor(u.nano, digits).toString(),
        remainderNano: u.nano.toString(),
        status: 'unmapped',
      });
  return report;
}

/** The end (ms) of a closed unit given its id: a `YYYY-MM-DD` day, or `YYYY-MM` (the period's end). */
function closedUnitEnd(unitId: string, periodEndMs: number): number {
  return unitId.length === 10 ? Date.parse(`${unitId}T00:00:00Z`) + 86_400_000 : periodEndMs;
}
