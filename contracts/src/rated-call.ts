/**
 * The row Tollgate lands in ClickHouse for every rated tool call (table `mcp_tool_calls`). The column
 * list below is the single source of truth for the row's shape: the landing encoder writes columns in
 * this order, and a test fails when the migrations and this list drift apart.
 */
export const DECISIONS = [
  /** Priced and counted. */
  'billed',
  /** Inside the free allowance of the period: counted, priced at zero. */
  'free',
  /** A failed call under a plan that does not bill failures: cost counted, price zero. */
  'failed_not_billed',
  /** Priced while Redis was unreachable (fail-open): not checked against limits, not deduplicated in Redis. */
  'unenforced',
  /** Priced and counted, and it crossed a hard limit or the margin guard (a kill or throttle followed). */
  'over_limit',
] as const;
export type Decision = (typeof DECISIONS)[number];

export interface RatedCall {
  eventId: string;
  traceId: string;
  spanId: string;
  product: string;
  customer: string;
  agent: string;
  sessionId: string;
  tool: string;
  transport: string;
  source: string;
  status: 'ok' | 'error';
  errorType: string;
  protocolVersion: string;
  instanceId: string;
  startUnixUs: number;
  durationUs: number;
  inputTokens: number;
  outputTokens: number;
  priceNano: bigint;
  costNano: bigint;
  priceCallNano: bigint;
  priceInputNano: bigint;
  priceOutputNano: bigint;
  priceDurationNano: bigint;
  /** 1-based graduated tier of the per-call price; 0 for free or unbilled calls. */
  tier: number;
  planId: string;
  planVersion: string;
  currency: string;
  decision: Decision;
  /** Billing period, `YYYY-MM` (UTC calendar month of the call's start). */
  period: string;
  receivedAtMs: number;
  /** Which billing-session rule gave `sessionId` (contracts/src/billing-session.ts); empty without one. */
  sessionRule: string;
  /** Per-second price the call was billed at; 0 when its rate prices no seconds or it was not billed. */
  pricePerSecondNano: bigint;
  /** Tokens priced at the per-token rates: the call's less its usage lines that are subsets of them. */
  inputTokensPriced: number;
  outputTokensPriced: number;
  /**
   * The usage lines the call reported (docs/rate-plans.md#usage-lines), parallel arrays in the plan's line
   * order; `usagePriceNano` adds into `priceNano`.
   */
  usageLines: string[];
  /** Quantity × 10⁶ per line. */
  usageQuantityMicro: bigint[];
  usageUnitNano: bigint[];
  usagePriceNano: bigint[];
  usageCostNano: bigint[];
  /** The quota lease the call was taken from (not landed: settled in Redis, see ToolCall.lease). */
  lease?: { id: string; reservedNano: string };
}

/** [column name, ClickHouse type, RatedCall field] in table order. */
export const RATED_CALL_COLUMNS = [
  ['event_id', 'String', 'eventId'],
  ['trace_id', 'String', 'traceId'],
  ['span_id', 'String', 'spanId'],
  ['product', 'LowCardinality(String)', 'product'],
  ['customer', 'String', 'customer'],
  ['agent', 'String', 'agent'],
  ['session_id', 'String', 'sessionId'],
  ['tool', 'LowCardinality(String)', 'tool'],
  ['transport', 'LowCardinality(String)', 'transport'],
  ['source', 'LowCardinality(String)', 'source'],
  ['status', 'LowCardinality(String)', 'status'],
  ['error_type', 'LowCardinality(String)', 'errorType'],
  ['protocol_version', 'LowCardinality(String)', 'protocolVersion'],
  ['instance_id', 'String', 'instanceId'],
  ['started_at', "DateTime64(6, 'UTC')", 'startUnixUs'],
  ['duration_us', 'UInt64', 'durationUs'],
  ['input_tokens', 'UInt64', 'inputTokens'],
  ['output_tokens', 'UInt64', 'outputTokens'],
  ['price_nano', 'Int64', 'priceNano'],
  ['cost_nano', 'Int64', 'costNano'],
  ['price_call_nano', 'Int64', 'priceCallNano'],
  ['price_input_nano', 'Int64', 'priceInputNano'],
  ['price_output_nano', 'Int64', 'priceOutputNano'],
  ['price_duration_nano', 'Int64', 'priceDurationNano'],
  ['tier', 'UInt16', 'tier'],
  ['plan_id', 'LowCardinality(String)', 'planId'],
  ['plan_version', 'LowCardinality(String)', 'planVersion'],
  ['currency', 'LowCardinality(String)', 'currency'],
  ['decision', 'LowCardinality(String)', 'decision'],
  ['period', 'LowCardinality(String)', 'period'],
  ['received_at', "DateTime64(3, 'UTC')", 'receivedAtMs'],
  ['session_rule', 'LowCardinality(String)', 'sessionRule'],
  ['price_per_second_nano', 'Int64', 'pricePerSecondNano'],
  ['input_tokens_priced', 'UInt64', 'inputTokensPriced'],
  ['output_tokens_priced', 'UInt64', 'outputTokensPriced'],
  ['usage_lines', 'Array(LowCardinality(String))', 'usageLines'],
  ['usage_quantity_micro', 'Array(UInt64)', 'usageQuantityMicro'],
  ['usage_unit_nano', 'Array(Int64)', 'usageUnitNano'],
  ['usage_price_nano', 'Array(Int64)', 'usagePriceNano'],
  ['usage_cost_nano', 'Array(Int64)', 'usageCostNano'],
] as const satisfies ReadonlyArray<readonly [string, string, keyof RatedCall]>;

/** `YYYY-MM` of a UTC instant given in microseconds. */
export function periodOf(unixUs: number): string {
  const d = new Date(Math.floor(unixUs / 1000));
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}
