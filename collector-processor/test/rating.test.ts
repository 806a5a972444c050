import type { ToolCall } from '@tollgate/contracts';
import { describe, expect, it } from 'vitest';
import { loadPlanBook, toolRateOf } from '../src/plans/load.js';
import { durationAmount, perCallPrice, rateCall, rateInBigints, tierSegments } from '../src/rating/rate.js';
import { readUsage } from '../src/rating/usage.js';
import { seededRandom } from './support/seeded-random.js';

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

describe('rating in numbers (calls without usage lines) gives what bigint arithmetic gives', () => {
  // 2^53 − 1 nano-units is 9007199.254740991; prices at, just under and past it, next to everyday ones
  const MAX = '9007199.254740991';
  const prices = ['0', '0.000000001', '0.0001', '0.002', '1.5', '12345.678901234', '9007199.254740990', MAX];
  prices.push('9007199.254740992', '9007199.254740993', '18014398.509481984');
  const wide = loadPlanBook(`
currency: USD
products:
  p:
    defaultPlan: a
    plans:
${prices
  .map(
    (v, i) => `      p${i}:
        freeCallsPerMonth: ${i % 3}
        billFailedCalls: ${i % 2 === 0}
        tools:
          "*":
            price: { perCall: "${v}", perInputToken: "${prices[(i + 3) % prices.length]}", perOutputToken: "${prices[(i + 5) % prices.length]}", perSecond: "${prices[(i + 7) % prices.length]}" }
            cost: { perCall: "${prices[(i + 1) % prices.length]}", perInputToken: "${prices[(i + 2) % prices.length]}", perOutputToken: "${prices[(i + 4) % prices.length]}", perSecond: "${prices[(i + 6) % prices.length]}" }
          tiered:
            price:
              perCallTiers:
                - { upTo: 2, perCall: "${v}" }
                - { upTo: 4, perCall: "${prices[(i + 9) % prices.length]}" }
                - { perCall: "0.005" }
              perSecond: "${prices[(i + 2) % prices.length]}"
            cost: { perSecond: "${v}" }`,
  )
  .join('\n')}
      a: { tools: { "*": { price: { perCall: "1" } } } }
    customers:
${prices.map((_, i) => `      c${i}: { plan: p${i} }`).join('\n')}
`);
  const sizes = [0, 1, 2, 499, 500, 999_999, 1_000_000, 1_500_000, 2 ** 31, 2 ** 52, 2 ** 53 - 1, 2 ** 53];

  it('for every plan, tool, usage position, outcome and size (seeded), amount for amount', () => {
    const random = seededRandom(53);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;
    const size = () =>
      random() < 0.5 ? pick(sizes) : Math.floor(random() * 10 ** Math.floor(random() * 16));
    let fast = 0;
    for (let k = 0; k < 20_000; k++) {
      const i = Math.floor(random() * prices.length);
      const plan = wide.resolve('p', `c${i}`)!;
      const c = call({
        customer: `c${i}`,
        tool: random() < 0.3 ? 'tiered' : 'other',
        ok: random() < 0.8,
        inputTokens: size(),
        outputTokens: size(),
        durationUs: random() < 0.02 ? 1.5 : size(),
      });
      const rate = toolRateOf(plan, c.tool)!;
      const position = { toolOrdinal: 1 + Math.floor(random() * 6), planOrdinal: Math.floor(random() * 4) };
      let expected: ReturnType<typeof rateCall> | Error;
      try {
        expected = rateInBigints(c, plan, rate, position);
      } catch (err) {
        expected = err as Error; // a duration that is not a whole number of µs: BigInt() refuses it
      }
      if (expected instanceof Error) {
        expect(() => rateCall(c, plan, rate, position)).toThrow(expected.message);
        continue;
      }
      expect(rateCall(c, plan, rate, position), `case ${k}`).toEqual(expected);
      if (expected.priceNano <= BigInt(Number.MAX_SAFE_INTEGER) && expected.costNano <= 2n ** 53n) fast++;
    }
    expect(fast).toBeGreaterThan(3_000); // a fifth of the cases or more are in the numbers' range
  });

  it('amounts at 2^53 − 1, 2^53 and past it, exactly', () => {
    const at = (i: number, over: Partial<ToolCall>, planOrdinal = 10) => {
      const plan = wide.resolve('p', `c${i}`)!;
      const c = call({ customer: `c${i}`, ...over });
      return rateCall(c, plan, toolRateOf(plan, 'other')!, { toolOrdinal: 9, planOrdinal });
    };
    // plan p7: perCall 2^53 − 1 nano, so one more nano of tokens crosses 2^53
    const i = prices.indexOf(MAX);
    const inputUnit = BigInt(prices[(i + 3) % prices.length]!.replace('.', ''));
    expect(at(i, {}).priceNano).toBe(2n ** 53n - 1n);
    expect(at(i, { inputTokens: 1 }).priceNano).toBe(2n ** 53n - 1n + inputUnit);
    expect(at(i, { inputTokens: 2 ** 53 - 1 }).priceInputNano).toBe((2n ** 53n - 1n) * inputUnit);
  });
});

describe('usage lines', () => {
  const ubook = loadPlanBook(`
currency: USD
products:
  p:
    defaultPlan: llm
    plans:
      llm:
        freeCallsPerMonth: 1
        usageLines:
          cached_input_tokens:
            attributes: gen_ai.usage.cache_read.input_tokens
            subsetOf: input_tokens
          cache_write_tokens:
            attributes: [gen_ai.usage.cache_creation.input_tokens]
            subsetOf: input_tokens
          reasoning_tokens:
            attributes: [gen_ai.usage.reasoning.output_tokens, gen_ai.usage.output_tokens_details.reasoning_tokens, llm.usage.reasoning_tokens]
            subsetOf: output_tokens
          rows_scanned: {}
          gb_seconds: { integral: false }
        tools:
          "*":
            price:
              perCall: "0.001"
              perInputToken: "0.000003"
              perOutputToken: "0.000015"
              usage:
                cached_input_tokens: "0.0000003"
                cache_write_tokens: "0.00000375"
                reasoning_tokens: "0.00002"
                rows_scanned: "0.0000001"
                gb_seconds: "0.000016667"
            cost:
              perInputToken: "0.000001"
              usage: { cached_input_tokens: "0.0000001", rows_scanned: "0.00000001" }
    customers:
      vip:
        overrides:
          tools: { "*": { price: { usage: { cached_input_tokens: "0", rows_scanned: "0.00000005" } } } }
`);
  const uplan = ubook.resolve('p', 'c')!;
  const rated = (over: Partial<ToolCall>, customer = 'c', planOrdinal = 2) => {
    const pl = ubook.resolve('p', customer)!;
    const c = call({ customer, ...over });
    const r = readUsage(c, pl.usageLines);
    if (!r.ok) throw new Error(r.detail);
    return rateCall(c, pl, toolRateOf(pl, 'any')!, { toolOrdinal: planOrdinal, planOrdinal }, r.quantities);
  };

  it.each([
    // [description, call, customer, expected total nano, expected lines {line: [quantity, price nano]}, input priced, output priced]
    [
      'no usage reported: the built-in lines only',
      { inputTokens: 100, outputTokens: 10 },
      'c',
      1_000_000n + 300_000n + 150_000n,
      {},
      100,
      10,
    ],
    [
      'cached ⊂ input: the parent priced on input − cached, the subset at its own price',
      { inputTokens: 1000, outputTokens: 0, usage: { 'gen_ai.usage.cache_read.input_tokens': 800 } },
      'c',
      // 1_000_000 call + 200 × 3_000 + 800 × 300
      1_000_000n + 600_000n + 240_000n,
      { cached_input_tokens: [800n, 240_000n] },
      200,
      0,
    ],
    [
      'two subsets of the same parent',
      {
        inputTokens: 1000,
        usage: {
          'gen_ai.usage.cache_read.input_tokens': 500,
          'gen_ai.usage.cache_creation.input_tokens': 400,
        },
      },
      'c',
      // 100 × 3_000 + 400 × 3_750 + 500 × 300
      1_000_000n + 300_000n + 1_500_000n + 150_000n,
      { cache_write_tokens: [400n, 1_500_000n], cached_input_tokens: [500n, 150_000n] },
      100,
      0,
    ],
    [
      'reasoning ⊂ output, read from the second of its keys (first present wins)',
      {
        outputTokens: 50,
        usage: { 'gen_ai.usage.output_tokens_details.reasoning_tokens': 30, 'llm.usage.reasoning_tokens': 7 },
      },
      'c',
      // 20 × 15_000 + 30 × 20_000
      1_000_000n + 300_000n + 600_000n,
      { reasoning_tokens: [30n, 600_000n] },
      0,
      20,
    ],
    [
      'subset equal to its parent: the parent line is zero',
      { inputTokens: 10, usage: { 'gen_ai.usage.cache_read.input_tokens': '10' } },
      'c',
      1_000_000n + 3_000n,
      { cached_input_tokens: [10n, 3_000n] },
      0,
      0,
    ],
    [
      'a line of its own from tollgate.usage.<name> (the SDK and usage events)',
      { usage: { 'tollgate.usage.rows_scanned': 1_234_567 } },
      'c',
      1_000_000n + 123_456_700n,
      { rows_scanned: [1_234_567n, 123_456_700n] },
      0,
      0,
    ],
    [
      'a fractional line rounds half up once: 1.5 × 16_667 = 25_000.5 → 25_001',
      { usage: { 'tollgate.usage.gb_seconds': 1.5 } },
      'c',
      1_000_000n + 25_001n,
      { gb_seconds: [1.5, 25_001n] },
      0,
      0,
    ],
    [
      'customer override: a line priced at zero, another repriced; the subset still leaves the parent',
      {
        inputTokens: 1000,
        usage: { 'gen_ai.usage.cache_read.input_tokens': 800, 'tollgate.usage.rows_scanned': 10 },
      },
      'vip',
      1_000_000n + 600_000n + 0n + 500n,
      { cached_input_tokens: [800n, 0n], rows_scanned: [10n, 500n] },
      200,
      0,
    ],
    [
      'a quantity of 0 is a line with 0',
      { usage: { 'tollgate.usage.rows_scanned': 0 } },
      'c',
      1_000_000n,
      { rows_scanned: [0n, 0n] },
      0,
      0,
    ],
  ] as const)('%s', (_d, over, customer, total, lines, inPriced, outPriced) => {
    const r = rated(over as Partial<ToolCall>, customer);
    expect(r.decision).toBe('billed');
    expect(r.priceNano).toBe(total);
    const got = Object.fromEntries(
      r.usage.map((u) => [
        u.line,
        [
          u.quantityMicro % 1_000_000n === 0n ? u.quantityMicro / 1_000_000n : Number(u.quantityMicro) / 1e6,
          u.priceNano,
        ],
      ]),
    );
    expect(got).toEqual(lines);
    // the total is exactly the sum of its components
    expect(
      r.priceCallNano +
        r.priceInputNano +
        r.priceOutputNano +
        r.priceDurationNano +
        r.usage.reduce((s, u) => s + u.priceNano, 0n),
    ).toBe(r.priceNano);
    expect([r.inputTokensPriced, r.outputTokensPriced]).toEqual([inPriced, outPriced]);
  });

  it('a free call prices its lines at zero and keeps their cost', () => {
    const r = rated(
      {
        inputTokens: 1000,
        usage: { 'gen_ai.usage.cache_read.input_tokens': 800, 'tollgate.usage.rows_scanned': 100 },
      },
      'c',
      1,
    );
    expect(r.decision).toBe('free');
    expect(r.priceNano).toBe(0n);
    expect(r.usage.map((u) => u.priceNano)).toEqual([0n, 0n]);
    // cost: 200 input × 1_000 + 800 cached × 100 + 100 rows × 10
    expect(r.costNano).toBe(200_000n + 80_000n + 1_000n);
  });

  it.each([
    ['negative', { 'tollgate.usage.rows_scanned': -1 }, /rows_scanned of span s is negative/],
    ['fractional where integral', { 'tollgate.usage.rows_scanned': 1.5 }, /rows_scanned .* is fractional/],
    ['NaN', { 'tollgate.usage.rows_scanned': Number.NaN }, /is NaN/],
    ['infinite', { 'tollgate.usage.gb_seconds': Number.POSITIVE_INFINITY }, /is infinite/],
    ['absurdly large', { 'tollgate.usage.rows_scanned': 1e15 }, /is too large/],
    ['not a number', { 'tollgate.usage.rows_scanned': 'lots' }, /is not a number/],
    ['a boolean', { 'tollgate.usage.rows_scanned': true }, /is not a number/],
    // an array, map, bytes or empty value decodes as null: malformed, not absent (it billed nothing)
    ['an array', { 'tollgate.usage.rows_scanned': null }, /rows_scanned of span s is not a number/],
    [
      'subsets above their parent',
      { 'gen_ai.usage.cache_read.input_tokens': 11 },
      /subsets of input_tokens .* exceed its 10/,
    ],
  ] as const)('rejects %s', (_d, usage, message) => {
    const r = readUsage(call({ inputTokens: 10, usage }), uplan.usageLines);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.detail).toMatch(message);
  });

  it('an array on one source does not hide a number on the next', () => {
    const r = readUsage(
      call({
        inputTokens: 1000,
        usage: { 'gen_ai.usage.cache_read.input_tokens': null, 'tollgate.usage.cached_input_tokens': 5 },
      }),
      uplan.usageLines,
    );
    expect(r.ok && r.quantities.map((q) => [q.line.name, q.micro])).toEqual([
      ['cached_input_tokens', 5_000_000n],
    ]);
  });

  it('ignores attributes no line reads', () => {
    const r = readUsage(call({ usage: { 'tollgate.usage.unknown': -5 } }), uplan.usageLines);
    expect(r).toEqual({ ok: true, quantities: [] });
  });
});

describe('usage lines in graduated tiers', () => {
  const tbook = loadPlanBook(`
currency: USD
products:
  p:
    defaultPlan: t
    plans:
      t:
        freeCallsPerMonth: 1
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
          gb_seconds: { integral: false }
        tools:
          "*":
            price:
              perInputToken: "0.000003"
              usageTiers:
                cached_input_tokens:
                  - { upTo: 1000, perUnit: "0.000001" }
                  - { upTo: 5000, perUnit: "0.0000005" }
                  - { perUnit: "0.0000001" }
                gb_seconds:
                  - { upTo: 2, perUnit: "0.00002" }
                  - { perUnit: "0.00001" }
            cost: { usage: { cached_input_tokens: "0.0000002" } }
`);
  const tplan = tbook.resolve('p', 'c')!;
  const trate = toolRateOf(tplan, 'any')!;
  const tiers = trate.price.usageTiers!.cached_input_tokens!;
  const M = 1_000_000n;

  it.each([
    // [description, units before, units of the call, expected pieces [units, unit nano, tier]]
    ['inside the first tier', 0n, 10n, [[10n, 1000n, 1]]],
    ['up to the first bound exactly', 990n, 10n, [[10n, 1000n, 1]]],
    ['starting at the bound: the next tier', 1000n, 10n, [[10n, 500n, 2]]],
    [
      'straddling one bound',
      995n,
      10n,
      [
        [5n, 1000n, 1],
        [5n, 500n, 2],
      ],
    ],
    [
      'straddling every bound',
      0n,
      6000n,
      [
        [1000n, 1000n, 1],
        [4000n, 500n, 2],
        [1000n, 100n, 3],
      ],
    ],
    ['far into the open-ended tier', 1_000_000n, 7n, [[7n, 100n, 3]]],
    ['nothing reported, at a bound: one empty piece where it stands', 1000n, 0n, [[0n, 1000n, 1]]],
  ] as const)('tierSegments: %s', (_d, before, units, pieces) => {
    expect(tierSegments(tiers, before * M, units * M)).toEqual(
      pieces.map(([u, unitNano, tier]) => ({ micro: u * M, unitNano, tier })),
    );
  });

  const rateAt = (cached: number, before: bigint, planOrdinal = 2, gb?: number, gbBefore = 0n) => {
    const c = call({
      inputTokens: cached + 100,
      usage: {
        'gen_ai.usage.cache_read.input_tokens': cached,
        ...(gb === undefined ? {} : { 'tollgate.usage.gb_seconds': gb }),
      },
    });
    const r = readUsage(c, tplan.usageLines);
    if (!r.ok) throw new Error(r.detail);
    // quantities are in the plan's line order: cached_input_tokens, gb_seconds
    const usageBefore = [before * M, gbBefore];
    return rateCall(c, tplan, trate, { toolOrdinal: planOrdinal, planOrdinal, usageBefore }, r.quantities);
  };

  it('a call straddling a bound: a piece per tier, each quantity × unit = amount, the total adds up', () => {
    const r = rateAt(10, 995n);
    expect(r.usage.map((u) => [u.line, u.quantityMicro / M, u.unitNano, u.priceNano, u.costNano])).toEqual([
      ['cached_input_tokens', 5n, 1000n, 5000n, 1000n],
      ['cached_input_tokens', 5n, 500n, 2500n, 1000n],
    ]);
    // the parent is priced on input − cached: 100 × 3_000
    expect(r.priceInputNano).toBe(300_000n);
    expect(r.priceNano).toBe(300_000n + 5000n + 2500n);
    expect(r.costNano).toBe(2000n);
  });

  it('a fractional line straddles at micro-unit precision, each piece rounded half up on its own', () => {
    // 1.5 before, 1.25 reported: 0.5 at 20_000 nano and 0.75 at 10_000
    const r = rateAt(0, 0n, 2, 1.25, 1_500_000n);
    const gb = r.usage.filter((u) => u.line === 'gb_seconds');
    expect(gb.map((u) => [u.quantityMicro, u.unitNano, u.priceNano])).toEqual([
      [500_000n, 20_000n, 10_000n],
      [750_000n, 10_000n, 7_500n],
    ]);
  });

  it('a free call counts its units toward the tiers but prices them at zero, in one piece', () => {
    const r = rateAt(10, 995n, 1);
    expect(r.decision).toBe('free');
    expect(r.usage.map((u) => [u.quantityMicro / M, u.unitNano, u.priceNano])).toEqual([[10n, 0n, 0n]]);
  });

  it('rating call by call equals the graduated price of the total, whatever the call sizes', () => {
    const rnd = seededRandom(7);
    const graduated = (units: bigint) =>
      tierSegments(tiers, 0n, units * M).reduce((a, s) => a + (s.micro / M) * s.unitNano, 0n);
    for (let run = 0; run < 20; run++) {
      let before = 0n;
      let sum = 0n;
      for (let i = 0; i < 40; i++) {
        const n = Math.floor(rnd() * 400);
        const r = rateAt(n, before);
        sum += r.usage.reduce((a, u) => a + u.priceNano, 0n);
        before += BigInt(n);
      }
      expect(sum).toBe(graduated(before));
    }
  });

  it.each([
    [
      'both a flat and a tiered price for one line',
      `usage: { cached_input_tokens: "0.1" }
              usageTiers: { cached_input_tokens: [ { perUnit: "0.1" } ] }`,
      /set usage.cached_input_tokens or usageTiers.cached_input_tokens, not both/,
    ],
    [
      'a last tier with an upper bound',
      'usageTiers: { cached_input_tokens: [ { upTo: 5, perUnit: "0.1" } ] }',
      /usageTiers.cached_input_tokens\[0\].upTo: the last tier must be open-ended/,
    ],
    [
      'bounds that do not increase',
      'usageTiers: { cached_input_tokens: [ { upTo: 5, perUnit: "0.1" }, { upTo: 5, perUnit: "0.05" }, { perUnit: "0.01" } ] }',
      /usageTiers.cached_input_tokens\[1\].upTo: must be greater than the previous tier/,
    ],
    [
      'a line the plan does not declare',
      'usageTiers: { pages: [ { perUnit: "0.1" } ] }',
      /usageTiers.pages: no usage line named "pages"/,
    ],
  ])('refuses %s', (_d, terms, message) => {
    expect(() =>
      loadPlanBook(`
currency: USD
products:
  p:
    defaultPlan: t
    plans:
      t:
        usageLines: { cached_input_tokens: { subsetOf: input_tokens } }
        tools:
          "*":
            price:
              ${terms}
`),
    ).toThrow(message);
  });
});
