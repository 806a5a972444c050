import { divRoundHalfUp, MAX_AMOUNT_NANO, type ToolCall } from '@tollgate/contracts';
import type { CompiledPlan } from '../plans/load.js';
import type { ToolRate } from '../plans/schema.js';
import { USAGE_MICROS, type UsageQuantity } from './usage.js';

/** What one usage line of a call came to. */
export interface UsageAmount {
  line: string;
  /** Quantity × 10⁶. */
  quantityMicro: bigint;
  /** Nano-units per unit it was priced at (0 when not billed or the tool does not price the line). */
  unitNano: bigint;
  priceNano: bigint;
  costNano: bigint;
}

/** Where a call stands in the customer's usage of the period, as counted atomically in Redis. */
export interface UsagePosition {
  /** 1-based position among the customer's counted calls of this tool in the period (0 = not counted). */
  toolOrdinal: number;
  /** 1-based position among the customer's counted calls of the product in the period (0 = not counted). */
  planOrdinal: number;
  /**
   * For each of the call's usage quantities (same order) whose line the tool prices in graduated tiers:
   * the customer's units of that line on this tool in the period before this call, × 10⁶.
   */
  usageBefore?: readonly (bigint | undefined)[];
}

export interface Rating {
  decision: 'billed' | 'free' | 'failed_not_billed';
  priceNano: bigint;
  costNano: bigint;
  priceCallNano: bigint;
  priceInputNano: bigint;
  priceOutputNano: bigint;
  priceDurationNano: bigint;
  /** The per-second price the call was billed at (0 when not billed or its rate prices no seconds). */
  pricePerSecondNano: bigint;
  /** 1-based tier of the per-call price; 0 when the call is free or not billed. */
  tier: number;
  /** Input and output tokens priced at the token rates: the call's, less its usage lines that are subsets. */
  inputTokensPriced: number;
  outputTokensPriced: number;
  /** One entry per usage line the call reported, in the plan's line order; `priceNano` adds up into the total. */
  usage: UsageAmount[];
}

const MICROS_PER_SECOND = 1_000_000n;
/** The usage of a call without usage lines, shared (frozen: nothing may add to it). */
const NO_LINES = Object.freeze([]) as unknown as UsageAmount[];

/** Whether a call counts toward usage (tiers, free allowance): successful calls, and failed ones if billed. */
export function countsTowardUsage(call: Pick<ToolCall, 'ok'>, plan: CompiledPlan): boolean {
  return call.ok || plan.plan.billFailedCalls;
}

/** A call's decision: failed and not billed, free (within the period's free calls), or billed. */
function decisionOf(call: ToolCall, plan: CompiledPlan, usage: UsagePosition): Rating['decision'] {
  if (!countsTowardUsage(call, plan)) return 'failed_not_billed';
  return usage.planOrdinal > plan.plan.freeCallsPerMonth ? 'billed' : 'free';
}

/** Per-call price at a position of the tool's graduated tiers; returns [price, 1-based tier]. */
export function perCallPrice(rate: ToolRate, toolOrdinal: number): [bigint, number] {
  const tier = perCallTier(rate, toolOrdinal);
  return [perCallAt(rate, tier), tier === 0 ? 1 : tier];
}

/** The per-call price of a tier perCallTier gave (0: the rate's flat per-call price). */
function perCallAt(rate: ToolRate, tier: number): bigint {
  const tiers = rate.price.perCallTiers;
  if (tier === 0 || !tiers) return rate.price.perCall ?? 0n;
  return (tiers[tier - 1] as { perCall: bigint }).perCall;
}

/** The 1-based graduated tier of the per-call price at a position; 0 when the rate has no tiers. */
function perCallTier(rate: ToolRate, toolOrdinal: number): number {
  const tiers = rate.price.perCallTiers;
  if (!tiers) return 0;
  for (let i = 0; i < tiers.length; i++) {
    const t = tiers[i];
    if (t && (t.upTo === undefined || toolOrdinal <= t.upTo)) return i + 1;
  }
  // unreachable for a validated plan: the last tier is open-ended
  throw new Error('tiers have no open-ended last tier');
}

/** A usage tier as compiled: units up to and including which it applies (none on the last), per-unit price. */
export interface UsageTier {
  upTo?: number | undefined;
  perUnit: bigint;
}

/**
 * Cuts a quantity of a usage line (micro-units) starting at `beforeMicro` units of the period into the
 * graduated tiers it falls in: one piece per tier touched, in order (a quantity of 0 is one piece at the
 * tier its position is in).
 */
export function tierSegments(
  tiers: readonly UsageTier[],
  beforeMicro: bigint,
  micro: bigint,
): { micro: bigint; unitNano: bigint; tier: number }[] {
  const out: { micro: bigint; unitNano: bigint; tier: number }[] = [];
  let pos = beforeMicro;
  let left = micro;
  for (let i = 0; i < tiers.length; i++) {
    const t = tiers[i] as UsageTier;
    const upper = t.upTo === undefined ? undefined : BigInt(t.upTo) * USAGE_MICROS;
    // a position at the tier's upper bound has used it up, unless nothing is left to place
    if (upper !== undefined && (pos > upper || (pos === upper && left > 0n))) continue;
    const take = upper === undefined || left <= upper - pos ? left : upper - pos;
    if (take > 0n || out.length === 0) out.push({ micro: take, unitNano: t.perUnit, tier: i + 1 });
    pos += take;
    left -= take;
    if (left === 0n) break;
  }
  return out;
}

/** One priced piece of a usage line: a quantity (micro-units) at one unit price and its unit cost. */
function usagePiece(
  line: string,
  micro: bigint,
  unitNano: bigint,
  costUnit: bigint | undefined,
): UsageAmount {
  return {
    line,
    quantityMicro: micro,
    unitNano,
    priceNano: usageAmount(micro, unitNano),
    costNano: usageAmount(micro, costUnit),
  };
}

/** Amount for a duration at a per-second rate, rounded half up to the nano-unit. */
export function durationAmount(durationUs: number, perSecond: bigint | undefined): bigint {
  if (!perSecond) return 0n;
  return divRoundHalfUp(BigInt(durationUs) * perSecond, MICROS_PER_SECOND);
}

/** Amount for a usage quantity (micro-units) at a per-unit rate: exact for whole units, else half up. */
export function usageAmount(quantityMicro: bigint, perUnit: bigint | undefined): bigint {
  if (!perUnit) return 0n;
  return divRoundHalfUp(quantityMicro * perUnit, USAGE_MICROS);
}

/** Tokens of the call priced at the token rates: reported tokens less their subset usage lines. */
function pricedTokens(call: ToolCall, usage: readonly UsageQuantity[]): [number, number] {
  let inSub = 0n;
  let outSub = 0n;
  for (const u of usage) {
    if (u.line.subsetOf === 'input_tokens') inSub += u.micro;
    else if (u.line.subsetOf === 'output_tokens') outSub += u.micro;
  }
  // subsets are integral and checked not to exceed their parent (readUsage)
  return [call.inputTokens - Number(inSub / USAGE_MICROS), call.outputTokens - Number(outSub / USAGE_MICROS)];
}

function costOf(call: ToolCall, rate: ToolRate, inTok: number, outTok: number, usageCost: bigint): bigint {
  const c = rate.cost;
  return (
    (c.perCall ?? 0n) +
    BigInt(inTok) * (c.perInputToken ?? 0n) +
    BigInt(outTok) * (c.perOutputToken ?? 0n) +
    durationAmount(call.durationUs, c.perSecond) +
    usageCost
  );
}

/** The per-call price of the rate's dearest tier (its flat per-call price without tiers). */
function dearestPerCall(p: ToolRate['price']): bigint {
  let perCall = p.perCall ?? 0n;
  for (const t of p.perCallTiers ?? []) if (t.perCall > perCall) perCall = t.perCall;
  return perCall;
}

export { MAX_AMOUNT_NANO };

/**
 * The most the call can be priced, or cost, under the rate at any usage position: its per-call price at the
 * dearest tier, its tokens, seconds and usage lines at their dearest unit prices. Every amount rateCall gives
 * the call (total, component, usage piece, cost) is at most this, so a call under MAX_AMOUNT_NANO lands;
 * one over it must be refused before it is spooled and claimed, since only then can it be refused whole.
 */
export function amountBoundNano(
  call: ToolCall,
  rate: ToolRate,
  quantities: readonly UsageQuantity[],
): bigint {
  const p = rate.price;
  let price =
    dearestPerCall(p) +
    BigInt(call.inputTokens) * (p.perInputToken ?? 0n) +
    BigInt(call.outputTokens) * (p.perOutputToken ?? 0n) +
    durationAmount(call.durationUs, p.perSecond);
  let usageCost = 0n;
  for (const q of quantities) {
    let unit = p.usage?.[q.line.name] ?? 0n;
    for (const t of p.usageTiers?.[q.line.name] ?? []) if (t.perUnit > unit) unit = t.perUnit;
    price += usageAmount(q.micro, unit);
    usageCost += usageAmount(q.micro, rate.cost.usage?.[q.line.name]);
  }
  const cost = costOf(call, rate, call.inputTokens, call.outputTokens, usageCost);
  return price > cost ? price : cost;
}

/** Below this a float estimate of the bound decides alone: its rounding is far smaller than the margin. */
const FAST_BOUND = 2 ** 62;

/** A rate's unit prices and costs as numbers (dearest per-call tier), for the float estimate: once per rate. */
interface RateNumbers {
  perCall: number;
  perInputToken: number;
  perOutputToken: number;
  perSecond: number;
  costPerCall: number;
  costPerInputToken: number;
  costPerOutputToken: number;
  costPerSecond: number;
}
const rateNumbers = new WeakMap<ToolRate, RateNumbers>();

function numbersOf(rate: ToolRate): RateNumbers {
  let n = rateNumbers.get(rate);
  if (!n) {
    const p = rate.price;
    const c = rate.cost;
    n = {
      perCall: Number(dearestPerCall(p)),
      perInputToken: Number(p.perInputToken ?? 0n),
      perOutputToken: Number(p.perOutputToken ?? 0n),
      perSecond: Number(p.perSecond ?? 0n),
      costPerCall: Number(c.perCall ?? 0n),
      costPerInputToken: Number(c.perInputToken ?? 0n),
      costPerOutputToken: Number(c.perOutputToken ?? 0n),
      costPerSecond: Number(c.perSecond ?? 0n),
    };
    rateNumbers.set(rate, n);
  }
  return n;
}

/**
 * Whether every amount rateCall can give the call fits MAX_AMOUNT_NANO (see amountBoundNano). A call
 * without usage lines is decided by a float estimate of the same bound when it is far below the limit (it
 * always is, but for hostile token counts or durations): no bigint arithmetic per call on the ingest path.
 */
export function amountInRange(call: ToolCall, rate: ToolRate, quantities: readonly UsageQuantity[]): boolean {
  if (quantities.length === 0) {
    const n = numbersOf(rate);
    const seconds = call.durationUs / 1e6 + 1; // + 1: rounding half up, with room to spare
    const price =
      n.perCall +
      call.inputTokens * n.perInputToken +
      call.outputTokens * n.perOutputToken +
      seconds * n.perSecond;
    const cost =
      n.costPerCall +
      call.inputTokens * n.costPerInputToken +
      call.outputTokens * n.costPerOutputToken +
      seconds * n.costPerSecond;
    if (price < FAST_BOUND && cost < FAST_BOUND) return true;
  }
  return amountBoundNano(call, rate, quantities) <= MAX_AMOUNT_NANO;
}

/** A whole number of nano-units below 2^53 as a bigint; zero as the shared literal (no allocation). */
function nano(v: number): bigint {
  return v === 0 ? 0n : BigInt(v);
}

/**
 * `durationAmount` in numbers: micro-seconds × a per-second rate, rounded half up to the nano-unit, for a
 * product of at most 2^53 − 1 (the caller checks it): the remainder and the quotient of an integer below
 * 2^53 by 10⁶ are exact in floating point.
 */
function durationInNumbers(product: number): number {
  const rest = product % 1_000_000;
  return (product - rest) / 1_000_000 + (rest >= 500_000 ? 1 : 0);
}

/**
 * rateCall for a call without usage lines, in numbers instead of bigints: the same amounts, exactly, with no
 * bigint arithmetic (which allocates a heap object per operation) on the ingest path. Every term is a
 * non-negative integer, so when a sum is at most 2^53 − 1 in floating point every term and partial sum was
 * exact (rounding is monotonic: a true value at or over 2^53 never rounds below it). That covers the rate's
 * prices too: one past 2^53 nano-units converts to a number at or over 2^53, so a sum it enters fails the check
 * (and one multiplied by zero tokens or µs is exactly zero). Anything outside that (hostile token counts or
 * durations, such prices, a duration that is not a whole number) returns undefined, and rateCall goes the
 * bigint way.
 */
function rateInNumbers(
  call: ToolCall,
  plan: CompiledPlan,
  rate: ToolRate,
  usage: UsagePosition,
): Rating | undefined {
  const n = numbersOf(rate);
  const inTok = call.inputTokens;
  const outTok = call.outputTokens;
  const us = call.durationUs;
  if (!(inTok >= 0 && outTok >= 0 && us >= 0 && Number.isSafeInteger(us))) return undefined;
  const costSeconds = us * n.costPerSecond;
  const cost =
    n.costPerCall +
    inTok * n.costPerInputToken +
    outTok * n.costPerOutputToken +
    durationInNumbers(costSeconds);
  if (!(cost <= Number.MAX_SAFE_INTEGER && costSeconds <= Number.MAX_SAFE_INTEGER)) return undefined;
  const decision = decisionOf(call, plan, usage);
  if (decision !== 'billed') return zero(decision, nano(cost), inTok, outTok, NO_LINES);
  const p = rate.price;
  const tier = perCallTier(rate, usage.toolOrdinal);
  const callNano = perCallAt(rate, tier);
  const priceSeconds = us * n.perSecond;
  const input = inTok * n.perInputToken;
  const output = outTok * n.perOutputToken;
  const seconds = durationInNumbers(priceSeconds);
  const price = Number(callNano) + input + output + seconds;
  if (!(price <= Number.MAX_SAFE_INTEGER && priceSeconds <= Number.MAX_SAFE_INTEGER)) return undefined;
  return {
    decision: 'billed',
    priceNano: nano(price),
    costNano: nano(cost),
    priceCallNano: callNano,
    priceInputNano: nano(input),
    priceOutputNano: nano(output),
    priceDurationNano: nano(seconds),
    pricePerSecondNano: p.perSecond ?? 0n,
    tier: tier === 0 ? 1 : tier,
    inputTokensPriced: inTok,
    outputTokensPriced: outTok,
    usage: NO_LINES,
  };
}

/**
 * Rates one tool call. Pure: the same call, plan, rate and usage position always give the same amounts.
 * - A failed call under a plan that does not bill failures is priced at zero (its cost still counts).
 * - The first `freeCallsPerMonth` counted calls of the period are free.
 * - Otherwise: per-call price (graduated by the tool's usage), plus tokens and duration at their rates.
 * - Usage lines (checked by readUsage) at their per-unit prices; a line that is a subset of input or output
 *   tokens takes its units out of the parent, which is priced on the rest (no token is priced twice).
 * Token and whole-unit amounts are exact products; duration and fractional usage amounts round half up to
 * the nano-unit, once per component.
 */
export function rateCall(
  call: ToolCall,
  plan: CompiledPlan,
  rate: ToolRate,
  usage: UsagePosition,
  quantities: readonly UsageQuantity[] = [],
): Rating {
  return (
    (quantities.length === 0 && rateInNumbers(call, plan, rate, usage)) ||
    rateInBigints(call, plan, rate, usage, quantities)
  );
}

/** rateCall in bigint arithmetic, for every call (exported for the test that holds rateInNumbers to it). */
export function rateInBigints(
  call: ToolCall,
  plan: CompiledPlan,
  rate: ToolRate,
  usage: UsagePosition,
  quantities: readonly UsageQuantity[] = [],
): Rating {
  let inTok = call.inputTokens;
  let outTok = call.outputTokens;
  if (quantities.length > 0) [inTok, outTok] = pricedTokens(call, quantities);
  const decision = decisionOf(call, plan, usage);
  const billed = decision === 'billed';
  let usageCost = 0n;
  let usagePrice = 0n;
  const lines: UsageAmount[] = quantities.length === 0 ? NO_LINES : [];
  for (let i = 0; i < quantities.length; i++) {
    const q = quantities[i] as UsageQuantity;
    const costUnit = rate.cost.usage?.[q.line.name];
    const tiers = billed ? rate.price.usageTiers?.[q.line.name] : undefined;
    if (tiers) {
      for (const seg of tierSegments(tiers, usage.usageBefore?.[i] ?? 0n, q.micro))
        lines.push(usagePiece(q.line.name, seg.micro, seg.unitNano, costUnit));
    } else {
      const unitNano = billed ? (rate.price.usage?.[q.line.name] ?? 0n) : 0n;
      lines.push(usagePiece(q.line.name, q.micro, unitNano, costUnit));
    }
  }
  for (const u of lines) {
    usagePrice += u.priceNano;
    usageCost += u.costNano;
  }
  const costNano = costOf(call, rate, inTok, outTok, usageCost);
  if (!billed) return zero(decision, costNano, inTok, outTok, lines);
  const [priceCallNano, tier] = perCallPrice(rate, usage.toolOrdinal);
  const priceInputNano = BigInt(inTok) * (rate.price.perInputToken ?? 0n);
  const priceOutputNano = BigInt(outTok) * (rate.price.perOutputToken ?? 0n);
  const priceDurationNano = durationAmount(call.durationUs, rate.price.perSecond);
  return {
    decision: 'billed',
    priceNano: priceCallNano + priceInputNano + priceOutputNano + priceDurationNano + usagePrice,
    costNano,
    priceCallNano,
    priceInputNano,
    priceOutputNano,
    priceDurationNano,
    pricePerSecondNano: rate.price.perSecond ?? 0n,
    tier,
    inputTokensPriced: inTok,
    outputTokensPriced: outTok,
    usage: lines,
  };
}

function zero(
  decision: Rating['decision'],
  costNano: bigint,
  inTok: number,
  outTok: number,
  usage: UsageAmount[],
): Rating {
  return {
    decision,
    priceNano: 0n,
    costNano,
    priceCallNano: 0n,
    priceInputNano: 0n,
    priceOutputNano: 0n,
    priceDurationNano: 0n,
    pricePerSecondNano: 0n,
    tier: 0,
    inputTokensPriced: inTok,
    outputTokensPriced: outTok,
    usage,
  };
}
