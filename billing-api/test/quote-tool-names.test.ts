import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quoteUnder } from '../../collector-processor/src/api-ports.js';
import { loadPlanBook } from '../../collector-processor/src/plans/load.js';
import { startTestTollgate, type TestTollgate } from '../../collector-processor/test/support/harness.js';
import type { QuoteUsage } from '../src/index.js';

/**
 * A tool is any identifier a sender or a quote names, `__proto__` and `hasOwnProperty` included. The quote
 * kept its running positions in plain objects indexed by tool name: `hasOwnProperty` read the inherited
 * function (a 500 when the answer was serialized, wrong positions before that), and a tool `__proto__`
 * with a usage line priced in tiers wrote the line's units onto Object.prototype of the whole process.
 */

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: llm
    plans:
      llm:
        freeCallsPerMonth: 2
        usageLines:
          cached_input_tokens: { attributes: [gen_ai.usage.cache_read.input_tokens], subsetOf: input_tokens }
        tools:
          "*":
            price:
              perCallTiers: [{ upTo: 3, perCall: "0.01" }, { perCall: "0.005" }]
              perInputToken: "0.000003"
              usageTiers:
                cached_input_tokens: [{ upTo: 100, perUnit: "0.000001" }, { perUnit: "0.0000005" }]
            cost: { perCall: "0.001" }
`;

const NAMES = ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf'];

const usageOf = (tool: string): QuoteUsage[] => [
  {
    tool,
    calls: 5,
    inputTokens: 40,
    outputTokens: 0,
    durationUs: 0,
    ok: true,
    quantities: { cached_input_tokens: 30 },
  },
];

describe('quotes for tools named like Object.prototype members', () => {
  const plan = loadPlanBook(PLANS).resolve('demo-mcp', 'acme');
  if (!plan) throw new Error('no plan');
  const plain = quoteUnder(plan, { usage: usageOf('plain'), prior: { planCalls: 0, toolCalls: {} } });

  it.each(NAMES)('%s is priced like any other tool, and Object.prototype stays clean', (tool) => {
    const q = quoteUnder(plan, {
      usage: usageOf(tool),
      prior: { planCalls: 0, toolCalls: { [tool]: 0 }, usageUnits: { [tool]: { cached_input_tokens: 0 } } },
    });
    expect(q.segments.map(({ tool: _t, ...s }) => s)).toEqual(plain.segments.map(({ tool: _t, ...s }) => s));
    expect(Object.entries(q.after.toolCalls)).toEqual([[tool, 5]]);
    expect(Object.entries(q.after.usageUnits)).toEqual([[tool, { cached_input_tokens: 150 }]]);
    expect(Object.prototype).not.toHaveProperty('cached_input_tokens');
    expect(Object).not.toHaveProperty('cached_input_tokens');
  });
});

describe('POST /billing/plans/quote with such tool names', () => {
  let tg: TestTollgate;
  beforeAll(async () => {
    tg = await startTestTollgate({}, PLANS);
  }, 60_000);
  afterAll(async () => {
    await tg?.cleanup();
  });

  it.each(NAMES)('%s → 200 with its positions after the calls', async (tool) => {
    const res = await fetch(`${tg.apiUrl}/billing/plans/quote`, {
      method: 'POST',
      headers: { authorization: 'Bearer tg_dev_admin', 'content-type': 'application/json' },
      body: JSON.stringify({
        usage: [{ tool, calls: 5, inputTokens: 40, quantities: { cached_input_tokens: 30 } }],
      }),
    });
    const body = (await res.json()) as { after: unknown; totals: { amount: string } };
    expect(res.status).toBe(200);
    expect(body.after).toEqual({
      planCalls: 5,
      toolCalls: { [tool]: 5 },
      usageUnits: { [tool]: { cached_input_tokens: 150 } },
    });
    expect(Object.prototype).not.toHaveProperty('cached_input_tokens');
  });
});
