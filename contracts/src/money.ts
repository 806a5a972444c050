/**
 * Money is an integer count of nano-units (1e-9) of the plan currency, end to end: config decimals are
 * parsed from their text (never through a float), Redis counters and ClickHouse columns are integers.
 * At this scale an Int64 holds 9.2 billion currency units, and a price of 0.000000001 per token is
 * representable.
 */
export const NANO_DIGITS = 9;
export const NANO_PER_UNIT = 1_000_000_000n;
/**
 * ±(2^53 − 1) as bigints: an amount between them is exactly a number. Module constants, because `-x` on a
 * bigint allocates a new one at every evaluation (a range check per value on the ingest path did).
 */
export const MAX_SAFE_BIGINT = BigInt(Number.MAX_SAFE_INTEGER);
export const MIN_SAFE_BIGINT = -MAX_SAFE_BIGINT;
/** Largest amount a landed column holds: ClickHouse Int64 nano-units (9.2 billion units of currency). */
export const MAX_AMOUNT_NANO = (1n << 63n) - 1n;

const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/;

export class MoneyParseError extends Error {
  override readonly name = 'MoneyParseError';
}

/** Parses a decimal amount written as text ("0.0025", "12", "-3.5") into nano-units, exactly. */
export function parseDecimalToNano(text: string): bigint {
  const m = DECIMAL.exec(text.trim());
  if (!m) throw new MoneyParseError(`"${text}" is not a decimal number`);
  const [, sign, whole = '0', frac = ''] = m;
  if (frac.length > NANO_DIGITS && /[1-9]/.test(frac.slice(NANO_DIGITS))) {
    throw new MoneyParseError(`"${text}" has more than ${NANO_DIGITS} decimal places`);
  }
  const nano = BigInt(whole) * NANO_PER_UNIT + BigInt(frac.slice(0, NANO_DIGITS).padEnd(NANO_DIGITS, '0'));
  return sign ? -nano : nano;
}

/** Formats nano-units as a decimal string with no trailing zeros beyond `minFraction` digits. */
export function formatNano(nano: bigint, minFraction = 2): string {
  const neg = nano < 0n;
  const abs = neg ? -nano : nano;
  const whole = abs / NANO_PER_UNIT;
  let frac = (abs % NANO_PER_UNIT).toString().padStart(NANO_DIGITS, '0').replace(/0+$/, '');
  if (frac.length < minFraction) frac = frac.padEnd(minFraction, '0');
  return `${neg ? '-' : ''}${whole}${frac ? `.${frac}` : ''}`;
}

/**
 * Integer division rounding half away from zero (the rounding rule of every rated amount):
 * 2.5 → 3, -2.5 → -3, 2.4999 → 2.
 */
export function divRoundHalfUp(numerator: bigint, denominator: bigint): bigint {
  if (denominator <= 0n) throw new RangeError('denominator must be positive');
  const neg = numerator < 0n;
  const abs = neg ? -numerator : numerator;
  const q = (abs * 2n + denominator) / (denominator * 2n);
  return neg ? -q : q;
}
