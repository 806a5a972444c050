import { createHash } from 'node:crypto';

/**
 * Nano-units (10⁻⁹ of the currency, Tollgate's scale) → Stripe's integer minor units, and the keys and
 * units of time a push is made for. Pure functions, table-tested in collector-processor/test/stripe-money.test.ts.
 */

/** Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal). */
const ZERO_DECIMAL = new Set('bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf'.split(' '));
/** Stripe's three-decimal currencies (docs.stripe.com/currencies#three-decimal). */
const THREE_DECIMAL = new Set('bhd jod kwd omr tnd'.split(' '));

/** Digits of a currency's minor unit as Stripe counts them (USD 2: cents; JPY 0; KWD 3). */
export function minorUnitDigits(currency: string, override?: number): number {
  if (override !== undefined) return override;
  const c = currency.toLowerCase();
  if (ZERO_DECIMAL.has(c)) return 0;
  if (THREE_DECIMAL.has(c)) return 3;
  return 2;
}

/** Nano-units in one minor unit (USD: 10⁷ nano = 1 cent). */
export function nanoPerMinor(digits: number): bigint {
  return 10n ** BigInt(9 - digits);
}

/** Nano → minor units, rounded half away from zero (0.5 cent → 1 cent, −0.5 → −1). */
export function roundToMinor(nano: bigint, digits: number): bigint {
  const unit = nanoPerMinor(digits);
  const neg = nano < 0n;
  const abs = neg ? -nano : nano;
  const q = (abs + unit / 2n) / unit;
  return neg ? -q : q;
}

/**
 * The minor units to push for one unit of time when the line's running total of the period, through this
 * unit, is `cumulativeNano` and `pushedMinor` was pushed for the earlier units: round(total) − pushed.
 * The remainder below one minor unit is never dropped: it stays in the running total and is carried into
 * the next unit, so the period's pushes add up to round(period total) — within half a minor unit of
 * Tollgate's exact amount, however many days it is split into.
 */
export function amountToPush(cumulativeNano: bigint, pushedMinor: bigint, digits: number): bigint {
  return roundToMinor(cumulativeNano, digits) - pushedMinor;
}

/**
 * A credit (prepaid credits applied, a negative amount in nano-units) → minor units, rounded toward zero:
 * Stripe never gets more credit than the wallet paid (−0.9 cent → 0, −1.5 → −1). The running total is
 * rounded as for charges (push = rounded total − pushed), so the part below one minor unit is carried, not
 * lost: the period's credit pushes add up to its credits less under one minor unit.
 */
export function creditToMinor(nano: bigint, digits: number): bigint {
  return nano / nanoPerMinor(digits); // BigInt division truncates toward zero
}

/** What one push is for: a UTC day of a billing period, or the whole period. */
export interface PushUnit {
  /** `YYYY-MM-DD` or `YYYY-MM`. */
  id: string;
  period: string;
  fromMs: number;
  toMs: number;
}

const DAY_MS = 86_400_000;

/** Units of a period that have ended at least `settleMs` before `nowMs`, in order. */
export function closedUnits(
  period: string,
  range: { fromMs: number; toMs: number },
  granularity: 'day' | 'period',
  nowMs: number,
  settleMs: number,
): PushUnit[] {
  if (granularity === 'period')
    return range.toMs + settleMs <= nowMs ? [{ id: period, period, ...range }] : [];
  const units: PushUnit[] = [];
  for (let from = range.fromMs; from < range.toMs; from += DAY_MS) {
    const to = from + DAY_MS;
    if (to + settleMs > nowMs) break;
    units.push({ id: new Date(from).toISOString().slice(0, 10), period, fromMs: from, toMs: to });
  }
  return units;
}

/** Stripe keeps at most 255 characters of an Idempotency-Key. */
const MAX_KEY = 255;

/**
 * The idempotency key of one push: the same customer, line and day (or period) always give the same key,
 * so a rerun or a resumed run sends what Stripe already has under that key and is not billed again.
 */
export function idempotencyKey(product: string, customer: string, line: string, unit: string): string {
  const readable = `tollgate-v1/${encodeURIComponent(product)}/${encodeURIComponent(customer)}/${line}/${unit}`;
  if (readable.length <= MAX_KEY) return readable;
  const hash = createHash('sha256')
    .update(`${product}\u0000${customer}\u0000${line}\u0000${unit}`)
    .digest('hex');
  return `tollgate-v1/${hash}`;
}
