import { formatNano } from '@tollgate/contracts';

/**
 * Money in API answers: every amount is given twice, exactly — `<name>Nano`, the integer count of
 * nano-units (10⁻⁹ of the currency) as a decimal string, and `<name>`, the same amount in currency units
 * as a decimal string ("0.0047", "12.00"). Neither ever passes through a float.
 */
export type Money<K extends string> = { [P in K | `${K}Nano`]: string };

export function money<K extends string>(name: K, nano: bigint): Money<K> {
  return { [`${name}Nano`]: nano.toString(), [name]: formatNano(nano) } as Money<K>;
}

/** A ClickHouse Int64/UInt64 as it arrives in JSON (a string, see output_format_json_quote_64bit_integers). */
export function big(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') return BigInt(v);
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return BigInt(v);
  throw new TypeError(`not an integer: ${String(v)}`);
}

/** A count as a JSON number (counts stay far below 2^53). */
export function count(v: unknown): number {
  return Number(big(v));
}

/** Margin in basis points of revenue, rounded down (as the margin guard judges it); null without revenue. */
export function marginBps(revenueNano: bigint, costNano: bigint): number | null {
  if (revenueNano <= 0n) return null;
  const num = (revenueNano - costNano) * 10_000n;
  const q = num / revenueNano;
  return Number(num < 0n && q * revenueNano !== num ? q - 1n : q);
}

/** Revenue, cost, margin (nano and decimal) and margin in basis points. */
export function revenueCostMargin(revenueNano: bigint, costNano: bigint) {
  return {
    ...money('revenue', revenueNano),
    ...money('cost', costNano),
    ...money('margin', revenueNano - costNano),
    marginBps: marginBps(revenueNano, costNano),
  };
}

/** Microseconds as decimal seconds, exactly ("1.5", "0.000005"). */
export function microsToSeconds(us: bigint): string {
  const whole = us / 1_000_000n;
  const frac = (us % 1_000_000n).toString().padStart(6, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : whole.toString();
}
