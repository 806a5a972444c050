import { divRoundHalfUp, type ToolCall } from '@tollgate/contracts';
import type { CompiledPlan } from '../plans/load.js';
import type { ToolRate } from '../plans/schema.js';

/** Where a call stands in the customer's usage of the period, as counted atomically in Redis. */
export interface UsagePosition {
  /** 1-based position among the customer's counted calls of this tool in the period (0 = not counted). */
  toolOrdinal: number;
  /** 1-based position among the customer's counted calls of the product in the period (0 = not counted). */
  planOrdinal: number;
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
}

const MICROS_PER_SECOND = 1_000_000n;

/** Whether a call counts toward usage (tiers, free allowance): successful calls, and failed ones if billed. */
export function countsTowardUsage(call: Pick<ToolCall, 'ok'>, plan: CompiledPlan): boolean {
  return call.ok || plan.plan.billFailedCalls;
}

/** Per-call price at a position of the tool's graduated tiers; returns [price, 1-based tier]. */
export function perCallPrice(rate: ToolRate, toolOrdinal: number): [bigint, number] {
  const tiers = rate.price.perCallTiers;
  if (!tiers) return [rate.price.perCall ?? 0n, 1];
  for (let i = 0; i < tiers.length; i++) {
    const t = tiers[i];
    if (t && (t.upTo === undefined || toolOrdinal <= t.upTo)) return [t.perCall, i + 1];
  }
  // unreachable for a validated plan: the last tier is open-ended
  throw new Error('tiers have no open-ended last tier');
}

/** Amount for a duration at a per-second rate, rounded half up to the nano-unit. */
export function durationAmount(durationUs: number, perSecond: bigint | undefined): bigint {
  if (!perSecond) return 0n;
  return divRoundHalfUp(BigInt(durationUs) * perSecond, MICROS_PER_SECOND);
}

function costOf(call: ToolCall, rate: ToolRate): bigint {
  const c = rate.cost;
  return (
    (c.perCall ?? 0n) +
    BigInt(call.inputTokens) * (c.perInputToken ?? 0n) +
    BigInt(call.outputTokens) * (c.perOutputToken ?? 0n) +
    durationAmount(call.durationUs, c.perSecond)
  );
}

/**
 * Rates one tool call. Pure: the same call, plan, rate and usage position always give the same amounts.
 * - A failed call under a plan that does not bill failures is priced at zero (its cost still counts).
 * - The first `freeCallsPerMonth` counted calls of the period are free.
 * - Otherwise: per-call price (graduated by the tool's usage), plus tokens and duration at their rates.
 * Token amounts are exact products; duration amounts round half up to the nano-unit, once per component.
 */
export function rateCall(call: ToolCall, plan: CompiledPlan, rate: ToolRate, usage: UsagePosition): Rating {
  const costNano = costOf(call, rate);
  if (!countsTowardUsage(call, plan)) return zero('failed_not_billed', costNano);
  if (usage.planOrdinal <= plan.plan.freeCallsPerMonth) return zero('free', costNano);
  const [priceCallNano, tier] = perCallPrice(rate, usage.toolOrdinal);
  const priceInputNano = BigInt(call.inputTokens) * (rate.price.perInputToken ?? 0n);
  const priceOutputNano = BigInt(call.outputTokens) * (rate.price.perOutputToken ?? 0n);
  const priceDurationNano = durationAmount(call.durationUs, rate.price.perSecond);
  return {
    decision: 'billed',
    priceNano: priceCallNano + priceInputNano + priceOutputNano + priceDurationNano,
    costNano,
    priceCallNano,
    priceInputNano,
    priceOutputNano,
    priceDurationNano,
    pricePerSecondNano: rate.price.perSecond ?? 0n,
    tier,
  };
}

function zero(decision: Rating['decision'], costNano: bigint): Rating {
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
  };
}
