import {
  type PlanInfo,
  PricingError,
  type PricingPort,
  type QuoteRequest,
  type QuoteResult,
  type QuoteSegment,
} from '@tollgate/billing-api';
import type { ToolCall } from '@tollgate/contracts';
import {
  type CompiledPlan,
  loadPlanBook,
  type PlanBook,
  PlanFileError,
  parseKeepingNumberText,
  toolRateOf,
  USAGE_ATTR_PREFIX,
} from './plans/load.js';
import {
  amountInRange,
  countsTowardUsage,
  rateCall,
  tierSegments,
  type UsagePosition,
  type UsageTier,
} from './rating/rate.js';
import { readUsage, USAGE_MICROS } from './rating/usage.js';

/**
 * The billing API's PricingPort over the rate plans in force (hot-reloaded) and the pure rating
 * function: the quote route prices exactly as the pipeline does.
 */

function infoOf(p: CompiledPlan): PlanInfo {
  const g = p.plan.marginGuard;
  return {
    planId: p.planId,
    version: p.version,
    currency: p.currency,
    description: p.plan.description,
    freeCallsPerMonth: p.plan.freeCallsPerMonth,
    billFailedCalls: p.plan.billFailedCalls,
    guard: {
      enabled: g.enabled,
      warnBelowBps: g.warnBelow,
      throttleBelowBps: g.throttleBelow,
      killBelowBps: g.killBelow,
      minRevenueNano: g.minRevenue,
    },
  };
}

/**
 * The plan file as plain data, numbers kept as their source text (as the loader reads them), so one plan
 * can be re-validated on its own through `loadPlanBook`.
 */
function plainPlans(source: string): {
  products?: Record<string, { plans?: Record<string, unknown> }>;
} {
  const doc = parseKeepingNumberText(source);
  return (doc.toJS() ?? {}) as { products?: Record<string, { plans?: Record<string, unknown> }> };
}

/** One plan (from the file or hypothetical) compiled through the real loader and its validation. */
function compileOne(currency: string, product: string, planId: string, plan: unknown): CompiledPlan {
  const source = JSON.stringify({
    currency,
    products: { [product]: { defaultPlan: planId, plans: { [planId]: plan } } },
  });
  try {
    const compiled = loadPlanBook(source, 'quote').resolve(product, '');
    if (!compiled) throw new PricingError('invalid_plan', 'the plan did not compile');
    return compiled;
  } catch (err) {
    if (err instanceof PlanFileError) {
      throw new PricingError(
        'invalid_plan',
        err.problems.join('; ').replace(/products\.[^.]+\.plans\.[^.]+\./g, ''),
      );
    }
    throw err;
  }
}

export class PlanPricing implements PricingPort {
  private plainCache: { version: string; plans: ReturnType<typeof plainPlans> } | undefined;
  private readonly byId = new Map<string, CompiledPlan>();

  constructor(private readonly plans: { readonly current: PlanBook }) {}

  currency(): string {
    return this.plans.current.currency;
  }

  planFor(product: string, customer: string): PlanInfo | undefined {
    const p = this.plans.current.resolve(product, customer);
    return p && infoOf(p);
  }

  private planById(product: string, planId: string): CompiledPlan {
    const book = this.plans.current;
    const key = `${book.version}\0${product}\0${planId}`;
    const known = this.byId.get(key);
    if (known) return known;
    if (this.plainCache?.version !== book.version) {
      this.plainCache = { version: book.version, plans: plainPlans(book.source) };
      this.byId.clear();
    }
    const raw = this.plainCache.plans.products?.[product]?.plans;
    if (!raw || !Object.hasOwn(raw, planId)) {
      throw new PricingError('unknown_plan', `product ${product} has no plan ${planId}`);
    }
    const compiled = { ...compileOne(book.currency, product, planId, raw[planId]), version: book.version };
    this.byId.set(key, compiled);
    return compiled;
  }

  quote(req: QuoteRequest): QuoteResult {
    const book = this.plans.current;
    let plan: CompiledPlan | undefined;
    if (req.plan !== undefined)
      plan = { ...compileOne(book.currency, req.product, 'quote', req.plan), version: 'quote' };
    else if (req.planId !== undefined) plan = this.planById(req.product, req.planId);
    else plan = book.resolve(req.product, req.customer ?? '');
    if (!plan) throw new PricingError('unknown_plan', `no rate plan for product ${req.product}`);
    return quoteUnder(plan, req);
  }
}

/**
 * Rates the usage lines in order with `rateCall`. A line of n identical calls is cut into runs within
 * which the rating cannot change (same side of the free allowance, same graduated tier); each run is
 * rated once, at its first call's positions, and stands for all its calls. Equal, by construction, to
 * rating every call one by one (a test checks it).
 */
export function quoteUnder(plan: CompiledPlan, req: Pick<QuoteRequest, 'usage' | 'prior'>): QuoteResult {
  let planCalls = req.prior.planCalls;
  // Maps (and Object.fromEntries for the answer), never objects indexed by a tool name: a tool may be
  // called `hasOwnProperty` or `__proto__`, and `{}[tool]` would read, or write, Object.prototype.
  const toolCalls = new Map<string, number>(Object.entries(req.prior.toolCalls));
  // units of each usage line priced in graduated tiers, per tool (micro-units)
  const units = new Map<string, bigint>();
  for (const [tool, lines] of Object.entries(req.prior.usageUnits ?? {}))
    for (const [line, n] of Object.entries(lines)) units.set(`${tool}\0${line}`, BigInt(n) * USAGE_MICROS);
  const segments: QuoteSegment[] = [];
  req.usage.forEach((u, usageIndex) => {
    const rate = toolRateOf(plan, u.tool);
    if (!rate) throw new PricingError('unknown_tool', `plan ${plan.planId} prices no tool ${u.tool}`);
    const call: ToolCall = {
      eventId: 'quote',
      traceId: '',
      spanId: '',
      customer: '',
      agent: '',
      sessionId: '',
      sessionRule: '',
      tool: u.tool,
      transport: 'unknown',
      ok: u.ok,
      errorType: u.ok ? '' : 'tool_error',
      startUnixUs: 0,
      durationUs: u.durationUs,
      inputTokens: u.inputTokens,
      outputTokens: u.outputTokens,
      protocolVersion: '',
      source: 'event',
      instanceId: '',
    };
    if (u.quantities) {
      const usage: Record<string, number | string> = {};
      for (const [line, q] of Object.entries(u.quantities)) {
        if (!plan.usageLines.some((l) => l.name === line))
          throw new PricingError('invalid_usage', `plan ${plan.planId} declares no usage line ${line}`);
        usage[USAGE_ATTR_PREFIX + line] = q;
      }
      call.usage = usage;
    }
    const read = readUsage(call, plan.usageLines);
    if (!read.ok) throw new PricingError('invalid_usage', `usage[${usageIndex}]: ${read.detail}`);
    // the pipeline's own bound: a call it would refuse (amount_out_of_range) is not quoted a price
    if (!amountInRange(call, rate, read.quantities))
      throw new PricingError(
        'amount_out_of_range',
        `usage[${usageIndex}]: one such call could be priced or cost more than 9223372036.854775807, which the pipeline refuses (amount_out_of_range)`,
      );
    const push = (calls: number, usage: UsagePosition) => {
      const r = rateCall(call, plan, rate, usage, read.quantities);
      segments.push({
        usageIndex,
        tool: u.tool,
        calls,
        decision: r.decision,
        tier: r.tier,
        planOrdinal: usage.planOrdinal,
        toolOrdinal: usage.toolOrdinal,
        priceCallNano: r.priceCallNano,
        priceInputNano: r.priceInputNano,
        priceOutputNano: r.priceOutputNano,
        priceDurationNano: r.priceDurationNano,
        priceNano: r.priceNano,
        costNano: r.costNano,
        usage: r.usage.map((x) => ({ line: x.line, quantityMicro: x.quantityMicro, priceNano: x.priceNano })),
      });
    };
    if (!countsTowardUsage(call, plan)) {
      push(u.calls, { planOrdinal: 0, toolOrdinal: 0 });
      return;
    }
    const free = plan.plan.freeCallsPerMonth;
    const tiers = rate.price.perCallTiers ?? [];
    const tiered = read.quantities
      .map((q, index) => ({ q, index, tiers: rate.price.usageTiers?.[q.line.name] }))
      .filter((x) => x.tiers !== undefined);
    let left = u.calls;
    while (left > 0) {
      const p = planCalls + 1;
      const t = (toolCalls.get(u.tool) ?? 0) + 1;
      let run = left;
      if (p <= free) run = Math.min(run, free - p + 1);
      const tier = tiers.find((tr) => tr.upTo === undefined || t <= tr.upTo);
      if (tier?.upTo !== undefined) run = Math.min(run, tier.upTo - t + 1);
      const usageBefore: bigint[] = [];
      for (const x of tiered) {
        const before = units.get(`${u.tool}\0${x.q.line.name}`) ?? 0n;
        usageBefore[x.index] = before;
        run = Math.min(run, callsInTier(x.tiers ?? [], before, x.q.micro));
      }
      push(run, { planOrdinal: p, toolOrdinal: t, usageBefore });
      planCalls += run;
      toolCalls.set(u.tool, t - 1 + run);
      for (const x of tiered) {
        const key = `${u.tool}\0${x.q.line.name}`;
        units.set(key, (units.get(key) ?? 0n) + BigInt(run) * x.q.micro);
      }
      left -= run;
    }
  });
  const usageUnits = new Map<string, [string, number][]>();
  for (const [key, micro] of units) {
    const [tool, line] = key.split('\0') as [string, string];
    const lines = usageUnits.get(tool) ?? [];
    lines.push([line, Number(micro) / 1e6]);
    usageUnits.set(tool, lines);
  }
  return {
    plan: infoOf(plan),
    segments,
    after: {
      planCalls,
      toolCalls: Object.fromEntries(toolCalls),
      usageUnits: Object.fromEntries(
        [...usageUnits].map(([tool, lines]) => [tool, Object.fromEntries(lines)]),
      ),
    },
  };
}

/**
 * How many calls of `micro` units each, starting at `beforeMicro`, are priced alike: the calls that fit whole
 * in the tier the next one starts in (at least 1: a call that crosses into the next tier is a run of its own).
 */
function callsInTier(tiers: readonly UsageTier[], beforeMicro: bigint, micro: bigint): number {
  if (micro === 0n) return Number.MAX_SAFE_INTEGER;
  const seg = tierSegments(tiers, beforeMicro, micro);
  if (seg.length > 1) return 1;
  const upTo = tiers[(seg[0]?.tier ?? 1) - 1]?.upTo;
  if (upTo === undefined) return Number.MAX_SAFE_INTEGER;
  const room = BigInt(upTo) * USAGE_MICROS - beforeMicro;
  return Math.max(1, Number(room / micro));
}
