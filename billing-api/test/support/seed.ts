import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { vi } from 'vitest';
import { PlanPricing } from '../../../collector-processor/src/api-ports.js';
import { sha256Hex } from '../../../collector-processor/src/receiver/ingest-keys.js';
import {
  DEV_INGEST_KEY,
  startTestTollgate,
  type TestTollgate,
  tempDir,
} from '../../../collector-processor/test/support/harness.js';
import { attr, exportOf } from '../../../collector-processor/test/support/otlp-json.js';
import { type ApiKeyConfig, buildApi } from '../../src/index.js';

/**
 * A real Tollgate (chDB + private redis-server) with two tenants, API keys of every role, and a known
 * workload sent through the real OTLP/HTTP receiver: tiers, free calls, failed calls, tokens, durations,
 * a shared session id, a hard-limit kill, a margin-guard kill and throttle, and a customer id with a quote.
 */

export const OTHER_INGEST_KEY = 'tg_test_ingest_other';
export const TRACE_TEMPLATE = 'https://tempo.example/explore?trace={traceId}&span={spanId}';

export const KEYS = {
  admin: 'tg_test_admin',
  finance: 'tg_test_finance',
  acme: 'tg_test_customer_acme',
  globex: 'tg_test_customer_globex',
  ohara: 'tg_test_customer_ohara',
  otherAdmin: 'tg_test_other_tenant_admin',
  multi: 'tg_test_finance_two_products',
} as const;

export const API_KEYS: ApiKeyConfig[] = [
  { name: 'ops-alice', sha256: sha256Hex(KEYS.admin), role: 'admin', products: ['demo-mcp'] },
  { name: 'finance-bob', sha256: sha256Hex(KEYS.finance), role: 'finance', products: ['demo-mcp'] },
  {
    name: 'acme-portal',
    sha256: sha256Hex(KEYS.acme),
    role: 'customer',
    products: ['demo-mcp'],
    customer: 'acme',
  },
  {
    name: 'globex-portal',
    sha256: sha256Hex(KEYS.globex),
    role: 'customer',
    products: ['demo-mcp'],
    customer: 'globex',
  },
  {
    name: 'ohara-portal',
    sha256: sha256Hex(KEYS.ohara),
    role: 'customer',
    products: ['demo-mcp'],
    customer: "o'hara",
  },
  { name: 'other-admin', sha256: sha256Hex(KEYS.otherAdmin), role: 'admin', products: ['other-product'] },
  {
    name: 'finance-two',
    sha256: sha256Hex(KEYS.multi),
    role: 'finance',
    products: ['demo-mcp', 'other-product'],
  },
];

export const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        description: standard
        freeCallsPerMonth: 3
        tools:
          "*":
            price: { perCall: "0.002" }
            cost: { perCall: "0.001" }
          search_docs:
            price:
              perCallTiers:
                - { upTo: 4, perCall: "0.004" }
                - { perCall: "0.003" }
              perInputToken: "0.000001"
              perOutputToken: "0.000003"
              perSecond: "0.0001"
            cost: { perCall: "0.001", perOutputToken: "0.000001", perSecond: "0.000003" }
          run_report:
            price: { perCall: "0.05", perSecond: "0.001" }
            cost: { perCall: "0.07" }
          thin:
            price: { perCall: "0.0021" }
            cost: { perCall: "0.002" }
        marginGuard: { minRevenue: "0.01" }
      enterprise:
        billFailedCalls: true
        tools:
          "*": { price: { perCall: "0.001" }, cost: { perCall: "0.0005" } }
      llm:
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
          reasoning_tokens:
            attributes: [gen_ai.usage.reasoning.output_tokens, gen_ai.usage.output_tokens_details.reasoning_tokens]
            subsetOf: output_tokens
          gb_seconds: { integral: false }
        tools:
          "*":
            price:
              perCall: "0.001"
              perInputToken: "0.000003"
              perOutputToken: "0.000015"
              usage: { cached_input_tokens: "0.0000003", reasoning_tokens: "0.00002", gb_seconds: "0.000016667" }
            cost: { perInputToken: "0.000001", usage: { cached_input_tokens: "0.0000001" } }
      volume:
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
        tools:
          "*":
            price:
              perCall: "0.001"
              usageTiers:
                cached_input_tokens:
                  - { upTo: 1000, perUnit: "0.000002" }
                  - { upTo: 3000, perUnit: "0.000001" }
                  - { perUnit: "0.0000005" }
    customers:
      initech: { plan: enterprise }
      llm-co: { plan: llm }
      volume-co: { plan: volume }
      globex: { overrides: { limits: { spendPerPeriod: "0.02" } } }
      hooli: { overrides: { freeCallsPerMonth: 0 } }
  other-product:
    defaultPlan: p
    plans:
      p:
        tools:
          "*": { price: { perCall: "7" }, cost: { perCall: "1" } }
`;

export interface SeedCall {
  product: 'demo-mcp' | 'other-product';
  customer: string;
  agent: string;
  session: string;
  tool: string;
  startMs: number;
  durationUs: number;
  inputTokens: number;
  outputTokens: number;
  isError: boolean;
  traceId: string;
  spanId: string;
}

/** Deterministic pseudo-random numbers (mulberry32), so the workload is the same every run. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const HOUR = 3_600_000;

/** The workload: calls spread over the last ~3.5 days (all accepted by the default 168 h span age). */
export function workload(nowMs: number): SeedCall[] {
  const r = rng(42);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const calls: SeedCall[] = [];
  // One UTC day's window in the last hours (enforcement judges an export's calls day by day).
  const today = Math.floor(nowMs / (24 * HOUR)) * 24 * HOUR;
  const sameDay =
    nowMs - today > 20 * 60_000
      ? { lo: Math.max(today, nowMs - 2 * HOUR), hi: nowMs - 5 * 60_000 }
      : { lo: today - 3 * HOUR, hi: today - HOUR };
  const add = (
    product: SeedCall['product'],
    customer: string,
    n: number,
    o: {
      tools: readonly string[];
      agents: readonly string[];
      sessions: readonly string[];
      errorRate?: number;
      oneDay?: boolean;
    },
  ) => {
    for (let i = 0; i < n; i++) {
      calls.push({
        product,
        customer,
        agent: pick(o.agents),
        session: pick(o.sessions),
        tool: pick(o.tools),
        // 15 min to 84 h ago (never in the future), or inside one UTC day
        startMs: o.oneDay
          ? sameDay.lo + Math.floor(r() * (sameDay.hi - sameDay.lo))
          : nowMs - 15 * 60_000 - Math.floor(r() * 84 * HOUR),
        durationUs: 1_000 + Math.floor(r() * 2_500_000),
        inputTokens: Math.floor(r() * 2_000),
        outputTokens: Math.floor(r() * 5_000),
        isError: r() < (o.errorRate ?? 0),
        traceId: randomBytes(16).toString('hex'),
        spanId: randomBytes(8).toString('hex'),
      });
    }
  };
  add('demo-mcp', 'acme', 48, {
    tools: ['search_docs', 'get_forecast', 'lookup'],
    agents: ['agent-a', 'agent-b'],
    sessions: ['acme-s1', 'acme-s2', 'acme-s3', 'shared-1'],
    errorRate: 0.1,
  });
  add('demo-mcp', 'globex', 24, {
    tools: ['get_forecast', 'search_docs'],
    agents: ['agent-a', 'agent-c'],
    sessions: ['globex-only', 'shared-1'],
  });
  add('demo-mcp', 'initech', 15, {
    tools: ['lookup', 'search_docs'],
    agents: ['agent-b'],
    sessions: ['initech-s1'],
    errorRate: 0.3,
  });
  add('demo-mcp', 'umbrella', 12, { tools: ['run_report'], agents: ['agent-c'], sessions: ['umbrella-s1'] });
  add('demo-mcp', 'hooli', 16, {
    tools: ['thin'],
    agents: ['agent-a'],
    sessions: ['hooli-s1'],
    oneDay: true,
  });
  add('demo-mcp', "o'hara", 3, { tools: ['lookup'], agents: ['agent-a'], sessions: ["o'hara-s1"] });
  add('other-product', 'acme', 6, { tools: ['lookup'], agents: ['agent-a'], sessions: ['shared-1'] });
  add('other-product', 'zeta', 4, { tools: ['lookup'], agents: ['agent-z'], sessions: ['zeta-s1'] });
  return calls;
}

function spanOf(c: SeedCall) {
  const attrs: Record<string, string | number> = {
    'mcp.method.name': 'tools/call',
    'gen_ai.tool.name': c.tool,
    'gen_ai.operation.name': 'execute_tool',
    'mcp.session.id': c.session,
    'mcp.protocol.version': '2025-06-18',
    'network.transport': 'pipe',
    'tollgate.customer.id': c.customer,
    'tollgate.agent.id': c.agent,
    'gen_ai.usage.input_tokens': c.inputTokens,
    'gen_ai.usage.output_tokens': c.outputTokens,
  };
  if (c.isError) attrs['error.type'] = 'tool_error';
  const startNs = BigInt(c.startMs) * 1_000_000n;
  return {
    traceId: c.traceId,
    spanId: c.spanId,
    name: `tools/call ${c.tool}`,
    kind: 2,
    startTimeUnixNano: String(startNs),
    endTimeUnixNano: String(startNs + BigInt(c.durationUs) * 1000n),
    attributes: Object.entries(attrs).map(([k, v]) => attr(k, v)),
  };
}

/**
 * llm-co's calls to `summarize` (plan `llm`): [input, cached input, output, reasoning, gb_seconds]. Reasoning
 * tokens come under the second attribute key on odd calls; gb_seconds is fractional and only on two calls.
 */
export const USAGE_CALLS: readonly [number, number, number, number, number | undefined][] = [
  [1000, 800, 100, 60, undefined],
  [500, 0, 40, 40, 0.25],
  [300, 100, 0, 0, 1.5],
  [2000, 2000, 500, 1, undefined],
];

/**
 * Sends usage calls (default {@link USAGE_CALLS}, llm-co's) to `summarize` as one OTLP/JSON export starting at
 * `startMs` (trace ids from `idByte`), and waits until they landed. The export must be accepted whole (no
 * partial success); returns the answer's body.
 */
export async function sendUsageCalls(
  tg: TestTollgate,
  startMs: number,
  calls: readonly (readonly [number, number, number, number, number | undefined])[] = USAGE_CALLS,
  customer = 'llm-co',
  idByte = 'ef',
): Promise<string> {
  const spans = calls.map(([inp, cached, out, reasoning, gbs], i) => {
    const startNs = BigInt(startMs + i) * 1_000_000n;
    return {
      traceId: `${idByte.repeat(15)}${String(i).padStart(2, '0')}`,
      spanId: `${'12'.repeat(7)}${String(i).padStart(2, '0')}`,
      name: 'tools/call summarize',
      kind: 2,
      startTimeUnixNano: String(startNs),
      endTimeUnixNano: String(startNs + 1000n),
      attributes: [
        attr('mcp.method.name', 'tools/call'),
        attr('gen_ai.tool.name', 'summarize'),
        attr('tollgate.customer.id', customer),
        attr('gen_ai.usage.input_tokens', inp),
        attr('gen_ai.usage.output_tokens', out),
        attr('gen_ai.usage.cache_read.input_tokens', cached),
        attr(
          i % 2
            ? 'gen_ai.usage.output_tokens_details.reasoning_tokens'
            : 'gen_ai.usage.reasoning.output_tokens',
          reasoning,
        ),
        ...(gbs === undefined ? [] : [attr('tollgate.usage.gb_seconds', { doubleValue: gbs })]),
      ],
    };
  });
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans)),
  });
  const body = await res.text();
  if (res.status !== 200 || body.includes('partialSuccess'))
    throw new Error(`usage export not accepted whole: ${res.status} ${body}`);
  await tg.lander?.idle();
  return body;
}

export interface Seeded {
  tg: TestTollgate;
  calls: SeedCall[];
  nowMs: number;
  cleanup(): Promise<void>;
}

/**
 * The moment the seeded tests live in: noon UTC on the 6th of the wall clock's month, every run. The
 * workload reaches 84 h back and the ranges checked four whole days back; what it causes depends on where its
 * calls fall against UTC days and the billing month (enforcement judges an export's calls day by day, limits
 * count per period): globex crosses its spend limit before the margin guard judges it only with the calls laid
 * out this way. On the wall clock that held on some hours of some days and not others (a month's first days,
 * the first hour after midnight), so the layout is pinned instead.
 */
export function seedNowMs(realMs: number): number {
  const d = new Date(realMs);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 6, 12);
}

/**
 * Moves this process's `Date` to {@link seedNowMs} (time keeps running from there; timers are untouched).
 * Everything in the seeded Tollgate that reads the time reads `Date` in this process: the receiver's span-age
 * window, enforcement periods and directive expiries, the API's default period. Redis keys expire by relative
 * TTLs and nothing reads ClickHouse's clock, so the moved clock is consistent end to end.
 */
function useSeedClock(): void {
  vi.useFakeTimers({ now: seedNowMs(Date.now()), toFake: ['Date'], shouldAdvanceTime: true });
}

/** Starts Tollgate with the plans and keys above and sends the workload through POST /v1/traces. */
export async function startSeededTollgate(): Promise<Seeded> {
  useSeedClock();
  const dir = tempDir('tollgate-api-test-');
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
  - { name: other, sha256: ${sha256Hex(OTHER_INGEST_KEY)}, product: other-product }
apiKeys:
${API_KEYS.map((k) => `  - ${JSON.stringify(k)}`).join('\n')}
`,
  );
  const tg = await startTestTollgate(
    {
      '--data-dir': dir,
      '--config': configFile,
      '--trace-link-template': TRACE_TEMPLATE,
      // no session snapshot: the seeded tests name the tables each answer reads, and those of a past range of
      // sessions differ once one is built (300 s in by default, which a slow run of a test file reached);
      // sessions-lifetime and sessions-snapshot-random test the snapshot's path
      '--session-snapshot-interval': '0',
    },
    PLANS,
  );
  const nowMs = Date.now();
  const calls = workload(nowMs);
  for (const product of ['demo-mcp', 'other-product'] as const) {
    const mine = calls.filter((c) => c.product === product);
    for (let i = 0; i < mine.length; i += 20) {
      const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${product === 'demo-mcp' ? DEV_INGEST_KEY : OTHER_INGEST_KEY}`,
        },
        body: JSON.stringify(exportOf(mine.slice(i, i + 20).map(spanOf))),
      });
      const body = await res.text();
      if (res.status !== 200 || body.includes('rejected'))
        throw new Error(`export failed: ${res.status} ${body}`);
    }
  }
  await tg.lander?.idle();
  // enforcement_events are written off the request path: wait for the kills the workload causes
  for (let i = 0; i < 100; i++) {
    const [row] = await (
      await tg.clickhouse.client.query({
        query: "SELECT count() AS n FROM enforcement_events WHERE action = 'kill'",
        format: 'JSONEachRow',
      })
    ).json<{ n: string }>();
    if (Number(row?.n) >= 2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    tg,
    calls,
    nowMs,
    cleanup: async () => {
      await tg.cleanup();
      vi.useRealTimers();
    },
  };
}

/** An app built with buildApi on the running Tollgate's ClickHouse and plans, for inject() tests. */
export function injectApp(
  tg: TestTollgate,
  source: 'views' | 'raw' = 'views',
  options: { sessionPageRowsPerSession?: number } = {},
) {
  return buildApi({
    log: tg.log.child({ component: 'api-test' }) as never,
    readiness: async () => [],
    metrics: async () => ({ contentType: 'text/plain', body: '' }),
    apiKeys: API_KEYS,
    analytics: {
      clickhouse: tg.clickhouse.readClient(),
      traceLinkTemplate: TRACE_TEMPLATE,
      pricing: new PlanPricing(tg.plans as NonNullable<typeof tg.plans>),
      source,
      ...options,
    },
  });
}

/** One raw row of `mcp_tool_calls`, with money as bigint: what the independent sums are computed from. */
export interface RawCall {
  product: string;
  customer: string;
  agent: string;
  session: string;
  tool: string;
  status: string;
  decision: string;
  tier: number;
  startUs: bigint;
  durationUs: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  price: bigint;
  cost: bigint;
  priceCall: bigint;
  priceInput: bigint;
  priceOutput: bigint;
  priceDuration: bigint;
  traceId: string;
  spanId: string;
  period: string;
}

export async function rawCalls(tg: TestTollgate): Promise<RawCall[]> {
  const rows = await (
    await tg.clickhouse.client.query({
      query: `SELECT product, customer, agent, session_id, tool, status, decision, tier,
        toUnixTimestamp64Micro(started_at) AS start_us, duration_us, input_tokens, output_tokens, price_nano, cost_nano,
        price_call_nano, price_input_nano, price_output_nano, price_duration_nano, trace_id, span_id, period
        FROM mcp_tool_calls`,
      format: 'JSONEachRow',
    })
  ).json<Record<string, string | number>>();
  return rows.map((r) => ({
    product: String(r.product),
    customer: String(r.customer),
    agent: String(r.agent),
    session: String(r.session_id),
    tool: String(r.tool),
    status: String(r.status),
    decision: String(r.decision),
    tier: Number(r.tier),
    startUs: BigInt(r.start_us as string),
    durationUs: BigInt(r.duration_us as string),
    inputTokens: BigInt(r.input_tokens as string),
    outputTokens: BigInt(r.output_tokens as string),
    price: BigInt(r.price_nano as string),
    cost: BigInt(r.cost_nano as string),
    priceCall: BigInt(r.price_call_nano as string),
    priceInput: BigInt(r.price_input_nano as string),
    priceOutput: BigInt(r.price_output_nano as string),
    priceDuration: BigInt(r.price_duration_nano as string),
    traceId: String(r.trace_id),
    spanId: String(r.span_id),
    period: String(r.period),
  }));
}

export interface Sums {
  calls: number;
  errors: number;
  billedCalls: number;
  freeCalls: number;
  revenue: bigint;
  cost: bigint;
  inputTokens: bigint;
  outputTokens: bigint;
  durationUs: bigint;
}

/** Sums of raw rows, grouped by `key` — plain JavaScript, no SQL: the independent side of every check. */
export function sumBy(rows: readonly RawCall[], key: (r: RawCall) => string): Map<string, Sums> {
  const out = new Map<string, Sums>();
  for (const r of rows) {
    const k = key(r);
    let s = out.get(k);
    if (!s) {
      s = {
        calls: 0,
        errors: 0,
        billedCalls: 0,
        freeCalls: 0,
        revenue: 0n,
        cost: 0n,
        inputTokens: 0n,
        outputTokens: 0n,
        durationUs: 0n,
      };
      out.set(k, s);
    }
    s.calls++;
    if (r.status === 'error') s.errors++;
    if (r.price > 0n) s.billedCalls++;
    if (r.decision === 'free') s.freeCalls++;
    s.revenue += r.price;
    s.cost += r.cost;
    s.inputTokens += r.inputTokens;
    s.outputTokens += r.outputTokens;
    s.durationUs += r.durationUs;
  }
  return out;
}

export const DAY_MS = 86_400_000;
export const startOfDay = (ms: number) => Math.floor(ms / DAY_MS) * DAY_MS;
export const inRange = (r: RawCall, fromMs: number, toMs: number) =>
  r.startUs >= BigInt(fromMs) * 1000n && r.startUs < BigInt(toMs) * 1000n;
export const iso = (ms: number) => new Date(ms).toISOString();

/** Smallest and largest of bigints. */
export function extent(xs: readonly bigint[]): [bigint, bigint] {
  let lo = xs[0] as bigint;
  let hi = lo;
  for (const x of xs) {
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  return [lo, hi];
}
