import { toCsv } from '@tollgate/billing-api';
import type { StripeSyncErrorCode } from './errors.js';

/**
 * The reconciliation report of a sync: per customer, period and mapping line, Tollgate's total (exact
 * nano-units and rounded to Stripe's minor unit), what the ledger says was pushed, and what Stripe
 * answers when its invoice items are listed. Amounts are integer strings, never floats.
 */
export interface ReportRow {
  customer: string;
  stripeCustomer: string | null;
  period: string;
  /** The mapping line, or `(unmapped) tool/component` (`tool/usage:name`), or `(unmapped customer)`. */
  line: string;
  /** The plan's usage line the row is about (one row per usage line), else null. */
  usageLine: string | null;
  push: 'amount' | 'quantity' | 'meter';
  /** Days (or the period) closed and considered, and the last of them. */
  unitsClosed: number;
  lastUnit: string | null;
  /** Tollgate's rated amount of the line through the last closed unit, nano-units. */
  tollgateNano: string;
  /** The same, rounded half away from zero to minor units: what the pushes add up to when reconciled. */
  tollgateMinor: string;
  /**
   * Calls or tokens; for a usage line its units in Stripe's whole units (× 10^quantityDecimals, rounded
   * half away from zero: what the pushes add up to); null when the line adds up different units.
   */
  tollgateQuantity: string | null;
  /** A usage line's exact quantity, micro-units (10⁻⁶ of a unit); null for other lines. */
  tollgateQuantityMicro: string | null;
  pushedMinor: string;
  pushedQuantity: string;
  /**
   * Sum over Stripe's invoice items of this line and period, or (meter lines) the meter's event summary of
   * the customer over the closed units (null: Stripe not read, not that mode, or a meter without `id`).
   */
  stripeMinor: string | null;
  stripeQuantity: string | null;
  /** tollgateNano − pushedMinor × nano per minor unit: the part below one minor unit, carried forward. */
  remainderNano: string;
  /** A usage line pushed as a quantity: tollgateQuantityMicro − pushed × micro-units per Stripe unit, carried forward. */
  quantityRemainderMicro: string | null;
  /**
   * `reconciled`: Tollgate (rounded) = pushed = Stripe. `mismatch`: they differ. `dry_run`: pushes were
   * only computed. `incomplete`: the customer's sync stopped on an error. `unmapped`: not pushed.
   * `pending` (meter lines): Tollgate = pushed, and the meter's summary shows less than pushed — Stripe
   * aggregates meter events asynchronously; a later run's report shows it caught up (or a mismatch).
   */
  status: 'reconciled' | 'mismatch' | 'dry_run' | 'incomplete' | 'unmapped' | 'pending';
}

export interface SyncReport {
  generatedAt: string;
  product: string;
  currency: string;
  minorUnitDigits: number;
  granularity: 'day' | 'period';
  dryRun: boolean;
  /** Whether Stripe's invoice items were read (a dry run without a key does not read them). */
  stripeRead: boolean;
  /** Invoice items and meter events alike (`meterEvents` counts the meter events created or replayed). */
  pushes: {
    created: number;
    replayed: number;
    found: number;
    wouldPush: number;
    skippedZero: number;
    meterEvents: number;
  };
  rows: ReportRow[];
  errors: { customer: string; code: StripeSyncErrorCode; message: string }[];
}

export const REPORT_COLUMNS = [
  'customer',
  'stripeCustomer',
  'period',
  'line',
  'usageLine',
  'push',
  'unitsClosed',
  'lastUnit',
  'tollgateNano',
  'tollgateMinor',
  'tollgateQuantity',
  'tollgateQuantityMicro',
  'pushedMinor',
  'pushedQuantity',
  'stripeMinor',
  'stripeQuantity',
  'remainderNano',
  'quantityRemainderMicro',
  'status',
] as const satisfies readonly (keyof ReportRow)[];

export function reportJson(r: SyncReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}

/** One CSV row per report row (RFC 4180, the API's CSV writer). */
export function reportCsv(r: SyncReport): string {
  return toCsv(REPORT_COLUMNS, r.rows as unknown as Record<string, string | number | null>[]);
}
