import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadPlanBook, PlanFileError, toolRateOf } from '../src/plans/load.js';

const defaults = readFileSync(new URL('../defaults/plans.yaml', import.meta.url), 'utf8');

function problemsOf(source: string): string[] {
  try {
    loadPlanBook(source, 'test.yaml');
  } catch (err) {
    if (err instanceof PlanFileError) return err.problems;
    throw err;
  }
  throw new Error('expected the plan file to be rejected');
}

describe('rate-plan file', () => {
  it('loads the embedded default and parses money exactly', () => {
    const book = loadPlanBook(defaults);
    const std = book.resolve('demo-mcp', 'someone-new');
    expect(std?.planId).toBe('standard');
    expect(toolRateOf(std!, 'unlisted_tool')?.price.perCall).toBe(2_000_000n);
    expect(toolRateOf(std!, 'get_forecast')?.price.perCallTiers?.map((t) => t.perCall)).toEqual([
      10_000_000n,
      8_000_000n,
      5_000_000n,
    ]);
    expect(std?.plan.marginGuard.warnBelow).toBe(2000);
    expect(book.resolve('demo-mcp', 'acme')?.planId).toBe('enterprise');
    expect(book.resolve('nope', 'acme')).toBeUndefined();
    expect(book.version).toMatch(/^[0-9a-f]{12}$/);
  });

  it('applies customer overrides by deep merge without touching the shared plan', () => {
    const book = loadPlanBook(defaults);
    const globex = book.resolve('demo-mcp', 'globex')!;
    expect(globex.plan.freeCallsPerMonth).toBe(0);
    expect(globex.plan.limits.spendPerPeriod).toBe(5_000_000_000n);
    expect(globex.plan.limits.callsPerDay).toBe(100_000);
    const initech = book.resolve('demo-mcp', 'initech')!;
    const report = toolRateOf(initech, 'run_report')!;
    expect(report.price.perCall).toBe(10_000_000n);
    expect(report.price.perSecond).toBe(1_000_000n);
    expect(toolRateOf(book.resolve('demo-mcp', 'x')!, 'run_report')!.price.perCall).toBe(50_000_000n);
  });

  it('keeps a decimal that a float would round (0.1 + 0.2 style)', () => {
    const book = loadPlanBook(`
currency: EUR
products:
  p:
    defaultPlan: a
    plans:
      a:
        tools:
          "*": { price: { perCall: 0.000000003, perInputToken: 0.3 } }
`);
    const rate = toolRateOf(book.resolve('p', 'c')!, 'x')!;
    expect(rate.price.perCall).toBe(3n);
    expect(rate.price.perInputToken).toBe(300_000_000n);
  });

  it('names every problem by its path and line', () => {
    const problems = problemsOf(`currency: USD
products:
  p:
    defaultPlan: missing
    plans:
      a:
        freeCallsPerMonth: -1
        tools:
          t:
            price: { perCall: "abc", perCallTiers: [{ upTo: 10, perCall: "1" }, { upTo: 5, perCall: "2" }] }
            bogus: 1
    customers:
      c:
        plan: nope
`);
    const text = problems.join('\n');
    expect(text).toContain('products.p.defaultPlan: no plan named "missing" (line 4)');
    expect(text).toMatch(/products\.p\.plans\.a\.freeCallsPerMonth: must be a whole number \(line 7\)/);
    expect(text).toMatch(
      /products\.p\.plans\.a\.tools\.t\.price\.perCall: must be a non-negative decimal.*\(line 10\)/,
    );
    expect(text).toMatch(/products\.p\.plans\.a\.tools\.t: Unrecognized key: "bogus"/);
    expect(text).toContain('products.p.customers.c.plan: no plan named "nope" (line 14)');
  });

  it('refuses a file without a product (every export would be refused unknown_plan)', () => {
    expect(problemsOf('currency: USD\nproducts: {}\n')).toEqual([
      'products: must name at least one product (line 2)',
    ]);
  });

  it('rejects tiers that are not increasing or not open-ended', () => {
    const problems = problemsOf(`currency: USD
products:
  p:
    defaultPlan: a
    plans:
      a:
        tools:
          t:
            price:
              perCallTiers:
                - { upTo: 10, perCall: "1" }
                - { upTo: 5, perCall: "2" }
`);
    expect(problems.join('\n')).toContain('perCallTiers[1].upTo: must be greater than the previous tier');
    expect(problems.join('\n')).toContain('perCallTiers[1].upTo: the last tier must be open-ended');
  });

  it('reports YAML syntax errors and more than 9 decimals', () => {
    expect(problemsOf('currency: [USD\n')[0]).toMatch(/^line \d+:/);
    expect(
      problemsOf(`currency: USD
products:
  p: { defaultPlan: a, plans: { a: { tools: { t: { price: { perCall: "0.0000000001" } } } } } }
`).join(),
    ).toContain('more than 9 decimal places');
  });

  it('refuses an amount larger than a billed call can hold (2^63 - 1 nano-units), and takes the largest', () => {
    const plan = (perCall: string) => `currency: USD
products:
  p: { defaultPlan: a, plans: { a: { tools: { t: { price: { perCall: "${perCall}" } } } } } }
`;
    expect(problemsOf(plan('9223372036.854775808')).join()).toContain(
      'products.p.plans.a.tools.t.price.perCall: must be at most 9223372036.854775807',
    );
    expect(problemsOf(plan('10000000000')).join()).toContain('must be at most 9223372036.854775807');
    expect(
      toolRateOf(loadPlanBook(plan('9223372036.854775807'), 'test.yaml').resolve('p', 'c')!, 't')?.price
        .perCall,
    ).toBe((1n << 63n) - 1n);
  });

  it("a plan's own problem is reported once, not again under each customer that overrides the plan", () => {
    const problems = problemsOf(`currency: USD
products:
  p:
    defaultPlan: a
    plans:
      a: { bogus: 1, tools: { "*": { price: { perCall: "1" } } } }
    customers:
      c1: { overrides: { freeCallsPerMonth: "5" } }
      c2: { overrides: { freeCallsPerMonth: "6" } }
`);
    expect(problems).toEqual([expect.stringMatching(/^products\.p\.plans\.a: Unrecognized key: "bogus"/)]);
  });

  it("an override's own problem is reported beside its plan's, not only once the plan is fixed", () => {
    const problems = problemsOf(`currency: USD
products:
  p:
    defaultPlan: a
    plans:
      a: { bogus: 1, limits: { callsPerDay: "x" }, tools: { "*": { price: { perCall: "1" } } } }
    customers:
      c1: { overrides: { freeCallsPerMonth: "lots" } }
      c2: { overrides: { limits: { callsPerDay: "y" } } }
      c3: { overrides: { typo: 2 } }
      c4: { overrides: { limits: { callsPerDay: -3 } } }
`);
    expect(problems).toHaveLength(6);
    expect(problems[0]).toMatch(/^products\.p\.plans\.a\.limits\.callsPerDay: /);
    expect(problems[1]).toMatch(/^products\.p\.plans\.a: Unrecognized key: "bogus"/);
    // an override's own value is its own problem, also at a key its plan gets wrong (c2, c4); what it only
    // inherits (the plan's "bogus") is reported once, at the plan
    expect(problems.slice(2)).toEqual([
      expect.stringMatching(
        /^products\.p\.customers\.c1\.overrides\.freeCallsPerMonth: must be a whole number/,
      ),
      expect.stringMatching(/^products\.p\.customers\.c2\.overrides\.limits\.callsPerDay: /),
      expect.stringMatching(/^products\.p\.customers\.c3\.overrides: Unrecognized key: "typo"/),
      expect.stringMatching(/^products\.p\.customers\.c4\.overrides\.limits\.callsPerDay: /),
    ]);
  });

  it('validates customer overrides against the plan schema', () => {
    const problems = problemsOf(`currency: USD
products:
  p:
    defaultPlan: a
    plans:
      a: { tools: { "*": { price: { perCall: "1" } } } }
    customers:
      c:
        overrides: { freeCallsPerMonth: "lots" }
`);
    expect(problems.join()).toContain(
      'products.p.customers.c.overrides.freeCallsPerMonth: must be a whole number',
    );
  });
});

describe('usage lines in a plan', () => {
  const file = (plan: string) => `
currency: USD
products:
  p:
    defaultPlan: x
    plans:
      x:
${plan
  .trim()
  .split('\n')
  .map((l) => `        ${l}`)
  .join('\n')}
`;

  it('compiles lines in name order with their sources, tollgate.usage.<name> last', () => {
    const book = loadPlanBook(
      file(`
usageLines:
  reasoning_tokens: { attributes: [a.reasoning, b.reasoning], subsetOf: output_tokens }
  pages: {}
tools: { "*": { price: { usage: { pages: "0.01" } } } }`),
    );
    const plan = book.resolve('p', 'c')!;
    expect(plan.usageLines.map((l) => [l.name, l.sources, l.subsetOf, l.integral])).toEqual([
      ['pages', ['tollgate.usage.pages'], undefined, true],
      [
        'reasoning_tokens',
        ['a.reasoning', 'b.reasoning', 'tollgate.usage.reasoning_tokens'],
        'output_tokens',
        true,
      ],
    ]);
    expect(book.usageAttributes).toEqual([
      'a.reasoning',
      'b.reasoning',
      'tollgate.usage.pages',
      'tollgate.usage.reasoning_tokens',
    ]);
    expect(toolRateOf(plan, 't')?.price.usage).toEqual({ pages: 10_000_000n });
  });

  it.each([
    [
      'a price for an undeclared line',
      `tools: { "*": { price: { usage: { pages: "0.01" } } } }`,
      /tools\."\*"\.price\.usage\.pages: no usage line named "pages"/,
    ],
    [
      'a cost for an undeclared line',
      `tools: { "*": { cost: { usage: { pages: "0.01" } } } }`,
      /cost\.usage\.pages: no usage line named "pages"/,
    ],
    [
      'a fractional subset',
      `usageLines: { cached: { subsetOf: input_tokens, integral: false } }\ntools: {}`,
      /usageLines\.cached\.integral: a subset of tokens counts whole tokens/,
    ],
    [
      'a parent that is not a token line',
      `usageLines: { cached: { subsetOf: calls } }\ntools: {}`,
      /usageLines\.cached\.subsetOf/,
    ],
    [
      'a built-in token attribute as a source',
      `usageLines: { t: { attributes: gen_ai.usage.input_tokens } }\ntools: {}`,
      /usageLines\.t\.attributes: is read by the built-in token lines/,
    ],
    ['a bad line name', `usageLines: { Rows-Scanned: {} }\ntools: {}`, /usageLines\.Rows-Scanned/],
    [
      'a negative price',
      `usageLines: { pages: {} }\ntools: { "*": { price: { usage: { pages: "-1" } } } }`,
      /price\.usage\.pages: must be a non-negative decimal/,
    ],
  ])('refuses %s', (_d, plan, message) => {
    expect(problemsOf(file(plan)).join('\n')).toMatch(message);
  });
});
