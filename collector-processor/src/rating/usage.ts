import { MAX_COUNT, type ToolCall } from '@tollgate/contracts';
import type { CompiledUsageLine } from '../plans/load.js';

/** Quantities are kept in micro-units (10⁻⁶) so fractional lines stay exact integers. */
export const USAGE_MICROS = 1_000_000n;

/** A usage line a call reported, checked against the plan's declaration. */
export interface UsageQuantity {
  line: CompiledUsageLine;
  /** Quantity × 10⁶ (whole units × 10⁶ for integral lines). */
  micro: bigint;
}

export type UsageReading = { ok: true; quantities: UsageQuantity[] } | { ok: false; detail: string };

const DECIMAL_TEXT = /^-?\d{1,16}(\.\d{1,12})?$/;

/** Checks one raw value; a problem is returned as text. */
function quantityOf(raw: string | number | boolean, line: CompiledUsageLine): bigint | string {
  let n: number;
  if (typeof raw === 'number') n = raw;
  else if (typeof raw === 'string' && DECIMAL_TEXT.test(raw)) n = Number(raw);
  else return `is not a number (${JSON.stringify(raw).slice(0, 40)})`;
  if (Number.isNaN(n)) return 'is NaN';
  if (!Number.isFinite(n)) return 'is infinite';
  if (n < 0) return `is negative (${n})`;
  if (n > MAX_COUNT) return `is too large (${n} > ${MAX_COUNT})`;
  if (Number.isInteger(n)) return BigInt(n) * USAGE_MICROS;
  if (line.integral) return `is fractional (${n}) but the line counts whole units`;
  return BigInt(Math.round(n * 1e6));
}

/** The reading of a call without usage lines: one shared, frozen answer (this runs for every call). */
const NO_USAGE: UsageReading = Object.freeze({
  ok: true,
  quantities: Object.freeze([]) as unknown as UsageQuantity[],
});

/**
 * The quantities of the plan's usage lines a call reported: for each line, the first of its sources the
 * call carries. Lines the call does not report are left out (a quantity of 0 is kept). A bad value, or
 * subsets of a parent that add up to more than the parent, make the whole call invalid.
 */
export function readUsage(call: ToolCall, lines: readonly CompiledUsageLine[]): UsageReading {
  const raw = call.usage;
  if (!raw || lines.length === 0) return NO_USAGE;
  const quantities: UsageQuantity[] = [];
  let inSub = 0n;
  let outSub = 0n;
  for (const line of lines) {
    let v: string | number | boolean | undefined;
    let malformed = false;
    for (const s of line.sources) {
      const x = raw[s];
      if (x === null) malformed = true;
      else if (x !== undefined) {
        v = x;
        break;
      }
    }
    if (v === undefined) {
      // only an array, map, bytes or empty value (decoded as null): malformed, not absent (it would bill nothing)
      if (malformed) return { ok: false, detail: `${line.name} of ${callRef(call)} is not a number` };
      continue;
    }
    const q = quantityOf(v, line);
    if (typeof q === 'string') return { ok: false, detail: `${line.name} of ${callRef(call)} ${q}` };
    quantities.push({ line, micro: q });
    if (line.subsetOf === 'input_tokens') inSub += q;
    else if (line.subsetOf === 'output_tokens') outSub += q;
  }
  if (inSub > BigInt(call.inputTokens) * USAGE_MICROS)
    return {
      ok: false,
      detail: `subsets of input_tokens of ${callRef(call)} exceed its ${call.inputTokens}`,
    };
  if (outSub > BigInt(call.outputTokens) * USAGE_MICROS)
    return {
      ok: false,
      detail: `subsets of output_tokens of ${callRef(call)} exceed its ${call.outputTokens}`,
    };
  return { ok: true, quantities };
}

function callRef(call: ToolCall): string {
  return call.spanId ? `span ${call.spanId}` : `event ${call.eventId}`;
}
