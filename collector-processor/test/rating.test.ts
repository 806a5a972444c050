import type { ToolCall } from '@tollgate/contracts';
import { describe, expect, it } from 'vitest';
import { loadPlanBook, toolRateOf } from '../src/plans/load.js';
import { durationAmount, perCallPrice, rateCall } from '../src/rating/rate.js';

const book = loadPlanBook(`
currency: USD
products:
  p:
    defaultPlan: std
    plans:
      std:
        freeCallsPerMonth: 2
        tools:
          "*":
            price: { perCall: "0.002", perInputToken: "0.000001", perOutputToken: "0.000003", perSecond: "0.0001" }
            cost: { perCall: "0.0005", perInputToken: "0.0000002", perSecond: "0.000003" }
          tiered:
            price:
              perCallTiers:
                - { upTo: 3, perCall: "0.01" }
                - { upTo: 5, perCall: "0.008" }
                - { perCall: "0.005" }
      failures:
        billFailedCalls: true
        tools: { "*": { price: { perCall: "1" } } }
    customers:
      f: { plan: failures }
`);

const plan = book.resolve('p', 'c')!;
const call = (over: Partial<ToolCall> = {}): ToolCall => ({
  eventId: 'e',
  traceId: 't',
  spanId: 's',
  customer: 'c',
  agent: 'a',
  sessionId: 's1',
  sessionRule: 'protocol',
  tool: 'any',
  transport: 'stdio',
  ok: true,
  errorType: '',
  startUnixUs: 1_764_000_000_000_000,
  durationUs: 0,
  inputTokens: 0,
  outputTokens: 0,
  protocolVersion: '2025-06-18',
  source: 'sdk',
  instanceId: '',
  ...over,
});

describe('rateCall', () => {
  it.each([
    // [description, call overrides, planOrdinal, expected price nano, expected cost nano, decision]
    ['free allowance, first call', {}, 1, 0n, 500_000n, 'free'],
    ['free allowance, last free call', {}, 2, 0n, 500_000n, 'free'],
    ['first paid call', {}, 3, 2_000_000n, 500_000n, 'billed'],
    [
      'tokens priced exactly',
      { inputTokens: 1234, outputTokens: 5678 },
      3,
      2_000_000n + 1_234_000n + 17_034_000n,
      500_000n + 246_800n,
      'billed',
    ],
    // 1.5 s at 0.0001/s = 0.00015 → 150_000 nano; cost 1.5 s at 0.000003/s = 4_500 nano
    ['duration priced', { durationUs: 1_500_000 }, 3, 2_150_000n, 504_500n, 'billed'],
    // 1 µs at 0.0001/s = 0.1 nano → rounds to 0; cost 0.003 nano → 0
    ['sub-nano duration rounds down', { durationUs: 1 }, 3, 2_000_000n, 500_000n, 'billed'],
    // 5 µs at 0.0001/s = 0.5 nano → rounds half up to 1
    ['half nano rounds up', { durationUs: 5 }, 3, 2_000_001n, 500_000n, 'billed'],
    [
      'failed call not billed, cost kept',
      { ok: false, errorType: 'tool_error' },
      0,
      0n,
      500_000n,
      'failed_not_billed',
    ],
  ] as const)('%s', (_d, over, planOrdinal, price, cost, decision) => {
    const c = call(over);
    const r = rateCall(c, plan, toolRateOf(plan, c.tool)!, { toolOrdinal: planOrdinal, planOrdinal });
    expect(r.priceNano).toBe(price);
    expect(r.costNano).toBe(cost);
    expect(r.decision).toBe(decision);
    expect(r.priceCallNano + r.priceInputNano + r.priceOutputNano + r.priceDurationNano).toBe(r.priceNano);
  });

  it('bills failed calls when the plan says so', () => {
    const fp = book.resolve('p', 'f')!;
    const r = rateCall(call({ ok: false, customer: 'f' }), fp, toolRateOf(fp, 'x')!, {
      toolOrdinal: 1,
      planOrdinal: 1,
    });
    expect(r.decision).toBe('billed');
    expect(r.priceNano).toBe(1_000_000_000n);
  });

  it.each([
    [1, 10_000_000n, 1],
    [3, 10_000_000n, 1],
    [4, 8_000_000n, 2],
    [5, 8_000_000n, 2],
    [6, 5_000_000n, 3],
    [1_000_000, 5_000_000n, 3],
  ])('graduated tier at tool ordinal %i', (ordinal, price, tier) => {
    expect(perCallPrice(toolRateOf(plan, 'tiered')!, ordinal)).toEqual([price, tier]);
  });

  it('sums of graduated per-call prices equal the tiered invoice for any volume', () => {
    const rate = toolRateOf(plan, 'tiered')!;
    let sum = 0n;
    for (let n = 1; n <= 8; n++) sum += perCallPrice(rate, n)[0];
    // 3 × 0.01 + 2 × 0.008 + 3 × 0.005
    expect(sum).toBe(30_000_000n + 16_000_000n + 15_000_000n);
  });

  it('durationAmount rounds half up per component', () => {
    expect(durationAmount(0, 1_000n)).toBe(0n);
    expect(durationAmount(500, 1_000n)).toBe(1n); // 0.5 → 1
    expect(durationAmount(499, 1_000n)).toBe(0n);
    expect(durationAmount(1_000_000, undefined)).toBe(0n);
  });
});
