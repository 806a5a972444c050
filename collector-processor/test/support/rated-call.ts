import type { RatedCall } from '@tollgate/contracts';

/** One plain rated call, every field set: the row the landing-format tests vary one field at a time. */
export const BASE_RATED_CALL: Readonly<RatedCall> = {
  eventId: 'e'.repeat(48),
  traceId: 'a'.repeat(32),
  spanId: 'b'.repeat(16),
  product: 'prod',
  customer: 'acme',
  agent: 'agent-1',
  sessionId: 'sess-1',
  tool: 'get_forecast',
  transport: 'stdio',
  source: 'sdk',
  status: 'ok',
  errorType: '',
  protocolVersion: '2025-06-18',
  instanceId: 'inst',
  startUnixUs: 1_764_000_000_123_456,
  durationUs: 35_000,
  inputTokens: 100,
  outputTokens: 400,
  priceNano: 3_400_000n,
  costNano: 500_000n,
  priceCallNano: 2_000_000n,
  priceInputNano: 100_000n,
  priceOutputNano: 1_200_000n,
  priceDurationNano: 0n,
  tier: 1,
  planId: 'std',
  planVersion: 'v1',
  currency: 'USD',
  decision: 'billed',
  period: '2025-11',
  receivedAtMs: 1_764_000_001_004,
  sessionRule: 'protocol',
  pricePerSecondNano: 0n,
  inputTokensPriced: 100,
  outputTokensPriced: 400,
  usageLines: [],
  usageQuantityMicro: [],
  usageUnitNano: [],
  usagePriceNano: [],
  usageCostNano: [],
};

/** `n` rated calls of `customer` started now (what the enforcer is handed), ids `${prefix}-${i}`, no session. */
export function ratedNow(o: {
  customer: string;
  n: number;
  planVersion: string;
  prefix?: string;
  product?: string;
  priceNano?: bigint;
  costNano?: bigint;
}): RatedCall[] {
  const now = Date.now();
  return Array.from({ length: o.n }, (_, i) => ({
    ...BASE_RATED_CALL,
    eventId: `${o.prefix ?? o.customer}-${i}`,
    product: o.product ?? 'demo-mcp',
    customer: o.customer,
    sessionId: '',
    startUnixUs: now * 1000,
    receivedAtMs: now,
    period: new Date(now).toISOString().slice(0, 7),
    planVersion: o.planVersion,
    ...(o.priceNano !== undefined ? { priceNano: o.priceNano } : {}),
    ...(o.costNano !== undefined ? { costNano: o.costNano } : {}),
  }));
}
