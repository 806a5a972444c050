import type { ClickHouseClient } from '@clickhouse/client';

/**
 * What the analytics and billing routes need from the rest of Tollgate. billing-api does not import the
 * processor (the processor depends on billing-api): the processor implements these ports
 * (`collector-processor/src/api-ports.ts`) and hands them to `buildApi`.
 */
export interface AnalyticsDeps {
  /** The ClickHouse client Tollgate lands into (chDB in process, or a server over HTTP). */
  clickhouse: ClickHouseClient;
  /** Trace link template: `{traceId}` and `{spanId}` are replaced (Jaeger, Tempo, Grafana). */
  traceLinkTemplate: string;
  pricing: PricingPort;
  /**
   * `views` (default): read the materialized views wherever they hold the answer. `raw`: scan
   * `mcp_tool_calls` for everything — only for benchmarks and cross-checks.
   */
  source?: 'views' | 'raw' | undefined;
  /**
   * A tenant-wide sessions page is first looked for among the latest `(offset + limit) × this` rows of
   * mcp_session_daily (default 4; see sessionsPageSql). Tests set 0 to make it ask again from all the rows.
   */
  sessionPageRowsPerSession?: number | undefined;
}

/** Margin-guard thresholds of a plan, in basis points of (revenue − cost) ÷ revenue. */
export interface GuardBands {
  enabled: boolean;
  warnBelowBps: number;
  throttleBelowBps: number;
  killBelowBps: number;
  /** Revenue (nano) a period must reach before the guard judges its margin. */
  minRevenueNano: bigint;
}

export interface PlanInfo {
  planId: string;
  /** Version (content hash) of the plan file the plan comes from. */
  version: string;
  currency: string;
  description: string | undefined;
  freeCallsPerMonth: number;
  billFailedCalls: boolean;
  guard: GuardBands;
}

/** Calls of one tool to price: `calls` identical calls, consumed in the order the lines are given. */
export interface QuoteUsage {
  tool: string;
  calls: number;
  inputTokens: number;
  outputTokens: number;
  durationUs: number;
  /** false: the calls failed (priced 0 unless the plan bills failed calls). */
  ok: boolean;
  /** Per call: quantities of the plan's usage lines, by line name, as numbers or decimal text (docs/rate-plans.md#usage-lines). */
  quantities?: Readonly<Record<string, number | string>>;
}

export interface QuoteRequest {
  product: string;
  /** The customer whose plan applies (with its overrides); unknown customers get the default plan. */
  customer?: string | undefined;
  /** A plan of the product by name, instead of the customer's. */
  planId?: string | undefined;
  /** A hypothetical plan (same fields as in the plan file, amounts as decimal strings). */
  plan?: unknown;
  usage: readonly QuoteUsage[];
  /**
   * Usage already counted in the period before these calls (free allowance, tier volume; `usageUnits`:
   * units of usage lines priced in graduated tiers, by tool and line).
   */
  prior: {
    planCalls: number;
    toolCalls: Readonly<Record<string, number>>;
    usageUnits?: Readonly<Record<string, Readonly<Record<string, number>>>> | undefined;
  };
}

/** A run of consecutive calls of one usage line that the rating function prices identically. */
export interface QuoteSegment {
  usageIndex: number;
  tool: string;
  calls: number;
  decision: 'billed' | 'free' | 'failed_not_billed';
  tier: number;
  /** Positions of the first call of the run (0 when the call is not counted). */
  planOrdinal: number;
  toolOrdinal: number;
  /** Amounts of ONE call of the run, nano-units. */
  priceCallNano: bigint;
  priceInputNano: bigint;
  priceOutputNano: bigint;
  priceDurationNano: bigint;
  priceNano: bigint;
  costNano: bigint;
  /** ONE call's usage lines: quantity × 10⁶ and price, in the plan's line order. */
  usage: { line: string; quantityMicro: bigint; priceNano: bigint }[];
}

export interface QuoteResult {
  plan: PlanInfo;
  segments: QuoteSegment[];
  /** Positions after the last quoted call. */
  after: {
    planCalls: number;
    toolCalls: Record<string, number>;
    usageUnits: Record<string, Record<string, number>>;
  };
}

/** Rate plans and the rating function, as the quote and invoice routes need them. */
export interface PricingPort {
  /** Currency of the plans in force (every amount of the analytics is in it). */
  currency(): string;
  /** The plan in force for a customer of a product (its own, with overrides, or the default). */
  planFor(product: string, customer: string): PlanInfo | undefined;
  /** Prices usage with the real rating function; throws PricingError for unknown plans, tools or bad plans. */
  quote(req: QuoteRequest): QuoteResult;
}

export const PRICING_ERRORS = [
  'unknown_plan',
  'unknown_tool',
  'invalid_plan',
  'invalid_usage',
  'amount_out_of_range',
] as const;

export class PricingError extends Error {
  override readonly name = 'PricingError';
  constructor(
    readonly reason: (typeof PRICING_ERRORS)[number],
    message: string,
  ) {
    super(message);
  }
}
