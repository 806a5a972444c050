import { formatNano } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCsv } from './support/csv.js';
import {
  DAY_MS,
  extent,
  injectApp,
  inRange,
  iso,
  KEYS,
  type RawCall,
  rawCalls,
  type Seeded,
  startOfDay,
  startSeededTollgate,
  sumBy,
  TRACE_TEMPLATE,
} from './support/seed.js';

/**
 * Proof: a known workload goes through the real OTLP receiver; every analytics endpoint's numbers are
 * then checked against sums computed here, in plain JavaScript, from the raw rows of mcp_tool_calls
 * (and enforcement_events) — exact money, nano for nano.
 */

let s: Seeded;
let raw: RawCall[];
let demo: RawCall[];
let events: {
  at: string;
  product: string;
  customer: string;
  scope: string;
  subject_id: string;
  action: string;
  reason: string;
}[];

beforeAll(async () => {
  s = await startSeededTollgate();
  raw = await rawCalls(s.tg);
  demo = raw.filter((r) => r.product === 'demo-mcp');
  events = await (
    await s.tg.clickhouse.client.query({
      query: `SELECT toString(at) AS at, product, customer, scope, subject_id, action, reason FROM enforcement_events`,
      format: 'JSONEachRow',
    })
  ).json();
}, 180_000);
afterAll(async () => {
  await s?.cleanup();
});

async function get<T = Record<string, unknown>>(path: string, key: string = KEYS.finance): Promise<T> {
  const res = await fetch(`${s.tg.apiUrl}${path}`, { headers: { authorization: `Bearer ${key}` } });
  const body = await res.text();
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${body}`);
  return JSON.parse(body) as T;
}

const qs = (p: Record<string, string | number | undefined>) =>
  new URLSearchParams(
    Object.entries(p)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]): [string, string] => [k, String(v)]),
  ).toString();

/** The ranges every endpoint is checked over: whole days (view only), partial days (view + raw), < 1 day (raw). */
function ranges() {
  const now = s.nowMs;
  return {
    wholeDays: { from: startOfDay(now - 4 * DAY_MS), to: startOfDay(now) + DAY_MS },
    partialDays: {
      from: startOfDay(now - 3 * DAY_MS) + 5 * 3_600_000 + 17 * 60_000 + 123,
      to: now - 20 * 60_000,
    },
    underADay: { from: now - 20 * 3_600_000, to: now },
  };
}

/** Microseconds since the epoch as the API writes them (RFC 3339 with 6 fraction digits). */
const isoUs = (us: bigint) =>
  `${iso(Number(us / 1000n)).slice(0, 23)}${String(us % 1000n).padStart(3, '0')}Z`;

const money = (name: string, nano: bigint) => ({
  [`${name}Nano`]: nano.toString(),
  [name]: formatNano(nano),
});
function marginBps(revenue: bigint, cost: bigint): number | null {
  if (revenue <= 0n) return null;
  return Math.floor(Number((revenue - cost) * 10_000n) / Number(revenue));
}
const rcm = (revenue: bigint, cost: bigint) => ({
  ...money('revenue', revenue),
  ...money('cost', cost),
  ...money('margin', revenue - cost),
  marginBps: marginBps(revenue, cost),
});

/** Every answer that also comes as CSV, over the seed's whole days. */
function answersWithCsv(): string[] {
  const r = ranges().wholeDays;
  const q = qs({ from: iso(r.from), to: iso(r.to) });
  return [
    `/analytics/mcp/revenue/by-tool?${q}`,
    `/analytics/mcp/by-agent?${q}`,
    `/analytics/mcp/by-customer?${q}`,
    `/analytics/mcp/sessions?${q}`,
    `/analytics/mcp/enforcement-events?${q}`,
    '/analytics/mcp/sessions/shared-1?limit=1000',
    `/analytics/mcp/summary?${q}`,
    '/billing/invoices/preview?customer=acme',
  ];
}

describe('analytics endpoints reconcile exactly with the raw events', () => {
  it('the workload landed: every call sent is one raw row, and the money anchors hold', () => {
    expect(raw.length).toBe(s.calls.length);
    expect(new Set(raw.map((r) => r.spanId))).toEqual(new Set(s.calls.map((c) => c.spanId)));
    // initech is on the enterprise plan: every call, failed ones included, at 0.001
    const initech = demo.filter((r) => r.customer === 'initech');
    expect(initech.reduce((a, r) => a + r.price, 0n)).toBe(BigInt(initech.length) * 1_000_000n);
    // other-product's plan: 7.00 a call
    const other = raw.filter((r) => r.product === 'other-product' && r.customer === 'acme');
    expect(other.reduce((a, r) => a + r.price, 0n)).toBe(6n * 7_000_000_000n);
    // the workload exercises every decision and the second tier of search_docs
    expect(new Set(demo.map((r) => r.decision))).toEqual(
      new Set(['billed', 'free', 'failed_not_billed', 'over_limit']),
    );
    expect(demo.some((r) => r.tool === 'search_docs' && r.tier === 2)).toBe(true);
  });

  for (const name of ['wholeDays', 'partialDays', 'underADay'] as const) {
    it(`revenue/by-tool over ${name}`, async () => {
      const r = ranges()[name];
      const body = await get<{
        rows: Record<string, unknown>[];
        readFrom: string[];
        page: { total: number };
      }>(`/analytics/mcp/revenue/by-tool?${qs({ from: iso(r.from), to: iso(r.to) })}`);
      const rows = demo.filter((c) => inRange(c, r.from, r.to));
      const expected = [...sumBy(rows, (c) => c.tool)]
        .sort(([ta, a], [tb, b]) =>
          a.revenue === b.revenue ? (ta < tb ? -1 : 1) : a.revenue > b.revenue ? -1 : 1,
        )
        .map(([tool, t]) => ({
          tool,
          calls: t.calls,
          errors: t.errors,
          billedCalls: t.billedCalls,
          freeCalls: t.freeCalls,
          ...rcm(t.revenue, t.cost),
          inputTokens: Number(t.inputTokens),
          outputTokens: Number(t.outputTokens),
          avgDurationUs: Number(t.durationUs / BigInt(t.calls)),
        }));
      expect(
        body.rows.map(
          ({ durationP50Us, durationP95Us, usageLines, usageRevenue, usageRevenueNano, ...rest }) => rest,
        ),
      ).toEqual(expected);
      // the seeded plans declare no usage lines for these customers
      for (const row of body.rows) expect([row.usageLines, row.usageRevenueNano]).toEqual([[], '0']);
      expect(body.page.total).toBe(expected.length);
      // no customer or agent filter: the tenant-wide per-tool view answers the whole days (and the usage
      // lines' daily view theirs)
      expect(body.readFrom).toEqual(
        name === 'wholeDays'
          ? ['mcp_tool_daily_stats', 'mcp_usage_daily_stats']
          : name === 'partialDays'
            ? ['mcp_tool_daily_stats', 'mcp_tool_calls', 'mcp_usage_daily_stats']
            : ['mcp_tool_calls'],
      );
      // p50/p95 are t-digest estimates (centroids may average neighbouring samples): they must fall
      // between the samples two ranks below and one above the quantile's rank
      for (const row of body.rows) {
        const ds = rows
          .filter((c) => c.tool === row.tool)
          .map((c) => Number(c.durationUs))
          .sort((a, b) => a - b);
        for (const [field, q] of [
          ['durationP50Us', 0.5],
          ['durationP95Us', 0.95],
        ] as const) {
          const v = row[field] as number;
          const rank = q * ds.length;
          expect(v, `${row.tool} ${field} of ${ds}`).toBeGreaterThanOrEqual(
            ds[Math.max(0, Math.floor(rank) - 2)] as number,
          );
          expect(v, `${row.tool} ${field} of ${ds}`).toBeLessThanOrEqual(
            ds[Math.min(ds.length - 1, Math.ceil(rank) + 1)] as number,
          );
        }
      }
    });

    it(`by-agent (day buckets) over ${name}`, async () => {
      const r = ranges()[name];
      const body = await get<{ bucket: string; rows: Record<string, unknown>[] }>(
        `/analytics/mcp/by-agent?${qs({ from: iso(r.from), to: iso(r.to), bucket: 'day', limit: 1000 })}`,
      );
      expect(body.bucket).toBe('day');
      const day = (c: RawCall) => iso(Number(c.startUs / 1000n)).slice(0, 10);
      const expected = [
        ...sumBy(
          demo.filter((c) => inRange(c, r.from, r.to)),
          (c) => `${day(c)}|${c.agent}`,
        ),
      ]
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([k, t]) => {
          const [bucket, agent] = k.split('|');
          return { bucket, agent, calls: t.calls, errors: t.errors, ...rcm(t.revenue, t.cost) };
        });
      expect(body.rows).toEqual(expected);
    });

    it(`summary over ${name}`, async () => {
      const r = ranges()[name];
      const body = await get(`/analytics/mcp/summary?${qs({ from: iso(r.from), to: iso(r.to) })}`);
      const rows = demo.filter((c) => inRange(c, r.from, r.to));
      const t = sumBy(rows, () => 'all').get('all');
      expect(t).toBeDefined();
      if (!t) return;
      // sessions active in the range: first seen before its end, last seen after its start (over all their calls)
      const starts = new Map<string, bigint[]>();
      for (const c of demo) {
        if (!c.session) continue;
        const k = `${c.customer}\0${c.session}`;
        starts.set(k, [...(starts.get(k) ?? []), c.startUs]);
      }
      const sessions = [...starts.values()]
        .map(extent)
        .filter(([first, last]) => first < BigInt(r.to) * 1000n && last >= BigInt(r.from) * 1000n).length;
      const ev = events.filter((e) => {
        const at = Date.parse(`${e.at.replace(' ', 'T')}Z`);
        return e.product === 'demo-mcp' && at >= r.from && at < r.to;
      });
      // totals from the per-customer view (whole days) and the raw table (partial days); sessions from the
      // per-day views, or the lifetime view when calls follow the range (partialDays ends 20 minutes ago)
      expect(new Set(body.readFrom as string[])).toEqual(
        new Set(
          {
            wholeDays: ['mcp_customer_daily_stats', 'mcp_session_daily'],
            partialDays: [
              'mcp_customer_daily_stats',
              'mcp_tool_calls',
              'mcp_session_daily',
              'mcp_session_interval_snapshots',
              'mcp_session_summary',
            ],
            underADay: ['mcp_tool_calls', 'mcp_session_daily', 'mcp_customer_daily_stats'],
          }[name].concat('enforcement_events'),
        ),
      );
      expect(body).toMatchObject({
        product: 'demo-mcp',
        currency: 'USD',
        calls: t.calls,
        errors: t.errors,
        billedCalls: t.billedCalls,
        freeCalls: t.freeCalls,
        ...rcm(t.revenue, t.cost),
        inputTokens: Number(t.inputTokens),
        outputTokens: Number(t.outputTokens),
        customers: new Set(rows.map((c) => c.customer)).size,
        sessions,
        kills: ev.filter((e) => e.action === 'kill').length,
        throttles: ev.filter((e) => e.action === 'throttle').length,
        warns: ev.filter((e) => e.action === 'warn').length,
      });
    });
  }

  it('the workload caused a hard-limit kill, a margin kill and a throttle, and the summary counts them', async () => {
    const kills = events.filter((e) => e.action === 'kill' && e.scope === 'customer');
    expect(kills.map((e) => `${e.customer}:${e.reason}`).sort()).toEqual(
      expect.arrayContaining(['globex:hard_limit:spend_per_period', 'umbrella:margin_guard:kill']),
    );
    expect(events.some((e) => e.customer === 'hooli' && e.action === 'throttle')).toBe(true);
    const r = ranges().wholeDays;
    const body = await get<{ kills: number; throttles: number }>(
      `/analytics/mcp/summary?${qs({ from: iso(r.from), to: iso(r.to) })}`,
    );
    expect(body.kills).toBeGreaterThanOrEqual(2);
    expect(body.throttles).toBeGreaterThanOrEqual(1);
  });

  it('hour buckets for ranges up to 48 h (auto), from the raw table', async () => {
    const from = Math.floor((s.nowMs - 40 * 3_600_000) / 3_600_000) * 3_600_000;
    const to = s.nowMs;
    const body = await get<{ bucket: string; readFrom: string[]; rows: Record<string, unknown>[] }>(
      `/analytics/mcp/by-agent?${qs({ from: iso(from), to: iso(to), limit: 1000 })}`,
    );
    expect(body.bucket).toBe('hour');
    expect(body.readFrom).toEqual(['mcp_tool_calls']);
    const hour = (c: RawCall) =>
      iso(Math.floor(Number(c.startUs / 1000n) / 3_600_000) * 3_600_000).replace('.000Z', 'Z');
    const expected = [
      ...sumBy(
        demo.filter((c) => inRange(c, from, to)),
        (c) => `${hour(c)}|${c.agent}`,
      ),
    ]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, t]) => {
        const [bucket, agent] = k.split('|');
        return { bucket, agent, calls: t.calls, errors: t.errors, ...rcm(t.revenue, t.cost) };
      });
    expect(body.rows.length).toBeGreaterThan(3);
    expect(body.rows.map((r) => ({ ...r, bucket: String(r.bucket).replace('.000000Z', 'Z') }))).toEqual(
      expected,
    );
  });

  it('the default range is the current billing period', async () => {
    const d = new Date(s.nowMs);
    const from = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
    const to = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
    const body = await get<{ range: { from: string; to: string }; revenueNano: string; calls: number }>(
      '/analytics/mcp/summary',
    );
    expect(body.range).toEqual({ from: iso(from), to: iso(to) });
    const t = sumBy(
      demo.filter((c) => inRange(c, from, to)),
      () => 'x',
    ).get('x');
    expect(body.calls).toBe(t?.calls ?? 0);
    expect(body.revenueNano).toBe(String(t?.revenue ?? 0n));
    const month = d.toISOString().slice(0, 7);
    expect((await get<{ range: unknown }>(`/analytics/mcp/summary?period=${month}`)).range).toEqual(
      body.range,
    );
  });

  it('filters: customer, agent, tool (alone and together) match the raw rows', async () => {
    const r = ranges().partialDays;
    const cases: Record<string, string>[] = [
      { customer: 'acme' },
      { agent: 'agent-a' },
      { tool: 'search_docs' },
      { customer: 'acme', agent: 'agent-b', tool: 'search_docs' },
      { customer: 'nobody' },
    ];
    for (const f of cases) {
      const match = (c: RawCall) =>
        inRange(c, r.from, r.to) &&
        (!f.customer || c.customer === f.customer) &&
        (!f.agent || c.agent === f.agent) &&
        (!f.tool || c.tool === f.tool);
      const t = sumBy(demo.filter(match), () => 'x').get('x');
      const body = await get<Record<string, unknown>>(
        `/analytics/mcp/summary?${qs({ ...f, from: iso(r.from), to: iso(r.to) })}`,
      );
      expect(body, JSON.stringify(f)).toMatchObject({
        calls: t?.calls ?? 0,
        ...rcm(t?.revenue ?? 0n, t?.cost ?? 0n),
      });
      const byTool = await get<{ rows: { tool: string; revenueNano: string }[] }>(
        `/analytics/mcp/revenue/by-tool?${qs({ ...f, from: iso(r.from), to: iso(r.to) })}`,
      );
      const expected = sumBy(demo.filter(match), (c) => c.tool);
      expect(Object.fromEntries(byTool.rows.map((x) => [x.tool, x.revenueNano])), JSON.stringify(f)).toEqual(
        Object.fromEntries([...expected].map(([tool, x]) => [tool, x.revenue.toString()])),
      );
    }
  });

  it('by-customer: revenue, cost, margin and the guard band of each customer', async () => {
    const r = ranges().wholeDays;
    const body = await get<{ rows: Record<string, unknown>[]; bands: Record<string, unknown> }>(
      `/analytics/mcp/by-customer?${qs({ from: iso(r.from), to: iso(r.to) })}`,
    );
    expect(body.bands).toMatchObject({
      guardEnabled: true,
      warnBelowBps: 2000,
      throttleBelowBps: 1000,
      killBelowBps: 0,
      minRevenue: '0.01',
    });
    const sums = sumBy(
      demo.filter((c) => inRange(c, r.from, r.to)),
      (c) => c.customer,
    );
    const expected = [...sums]
      .sort(([ca, a], [cb, b]) =>
        a.revenue === b.revenue ? (ca < cb ? -1 : 1) : a.revenue > b.revenue ? -1 : 1,
      )
      .map(([customer, t]) => {
        const bps = marginBps(t.revenue, t.cost);
        const minRevenue = customer === 'initech' ? 0n : 10_000_000n;
        const band =
          bps === null || t.revenue < minRevenue
            ? 'not_judged'
            : bps < 0
              ? 'kill'
              : bps < 1000
                ? 'throttle'
                : bps < 2000
                  ? 'warn'
                  : 'ok';
        return {
          customer,
          calls: t.calls,
          errors: t.errors,
          ...rcm(t.revenue, t.cost),
          band,
          planId: customer === 'initech' ? 'enterprise' : 'std',
        };
      });
    expect(
      body.rows.map(
        ({
          customer,
          calls,
          errors,
          revenueNano,
          revenue,
          costNano,
          cost,
          marginNano,
          margin,
          marginBps,
          band,
          planId,
        }) => ({
          customer,
          calls,
          errors,
          revenueNano,
          revenue,
          costNano,
          cost,
          marginNano,
          margin,
          marginBps,
          band,
          planId,
        }),
      ),
    ).toEqual(expected);
    const bands = Object.fromEntries(body.rows.map((x) => [x.customer, x.band]));
    expect(bands).toMatchObject({ umbrella: 'kill', hooli: 'throttle', acme: 'ok' });
  });

  /** Sessions active in [from, to) over all their calls (first seen before `to`, last seen at or after `from`). */
  function activeSessions(from: number, to: number, customer?: string) {
    const bySession = new Map<string, RawCall[]>();
    for (const c of demo) {
      if (!c.session || (customer !== undefined && c.customer !== customer)) continue;
      const k = `${c.customer}\0${c.session}`;
      bySession.set(k, [...(bySession.get(k) ?? []), c]);
    }
    return [...bySession.values()]
      .map((cs) => {
        const [first, last] = extent(cs.map((c) => c.startUs));
        const t = sumBy(cs, () => 'x').get('x');
        return { cs, first, last, t };
      })
      .filter((x) => x.first < BigInt(to) * 1000n && x.last >= BigInt(from) * 1000n)
      .sort((a, b) =>
        a.last === b.last
          ? `${a.cs[0]?.customer}\0${a.cs[0]?.session}` < `${b.cs[0]?.customer}\0${b.cs[0]?.session}`
            ? -1
            : 1
          : a.last > b.last
            ? -1
            : 1,
      );
  }

  // wholeDays and underADay end after the last call: the per-day session views answer. partialDays ends
  // 20 minutes ago, before the workload's last calls: the lifetime view answers.
  for (const name of ['wholeDays', 'partialDays', 'underADay'] as const) {
    for (const customer of [undefined, 'acme']) {
      it(`sessions list over ${name}${customer ? ` for ${customer}` : ''}: active sessions with the totals of all their calls, most recent first`, async () => {
        const r = ranges()[name];
        const body = await get<{
          rows: Record<string, unknown>[];
          readFrom: string[];
          page: { total: number };
        }>(`/analytics/mcp/sessions?${qs({ from: iso(r.from), to: iso(r.to), customer, limit: 1000 })}`);
        const expected = activeSessions(r.from, r.to, customer);
        expect(expected.length).toBeGreaterThan(0);
        // the per-day views answer unless a session has a call at or after the end of the range
        const later = demo.some(
          (c) => c.session && (!customer || c.customer === customer) && c.startUs >= BigInt(r.to) * 1000n,
        );
        if (!customer) expect(later).toBe(name === 'partialDays');
        expect([...body.readFrom].sort()).toEqual(
          later
            ? ['mcp_session_daily', 'mcp_session_interval_snapshots', 'mcp_session_summary']
            : ['mcp_customer_daily_stats', 'mcp_session_daily', 'mcp_session_summary'],
        );
        expect(body.page.total).toBe(expected.length);
        expect(body.rows.map((x) => `${x.customer}/${x.sessionId}`)).toEqual(
          expected.map((x) => `${x.cs[0]?.customer}/${x.cs[0]?.session}`),
        );
        body.rows.forEach((row, i) => {
          const x = expected[i];
          expect(row).toMatchObject({
            calls: x?.t?.calls,
            errors: x?.t?.errors,
            ...rcm(x?.t?.revenue ?? 0n, x?.t?.cost ?? 0n),
            firstSeen: isoUs(x?.first ?? 0n),
            lastSeen: isoUs(x?.last ?? 0n),
          });
          expect(x?.cs.map((c) => c.agent)).toContain(row.agent);
        });
        if (name === 'underADay') {
          // sessions that began before the range: their totals include the calls before it
          expect(expected.some((x) => x.first < BigInt(r.from) * 1000n)).toBe(true);
        }
        // pages of 2 concatenated are the whole list
        const got: unknown[] = [];
        for (let offset = 0; offset < expected.length; offset += 2) {
          const p = await get<{ rows: Record<string, unknown>[]; page: { total: number } }>(
            `/analytics/mcp/sessions?${qs({ from: iso(r.from), to: iso(r.to), customer, limit: 2, offset })}`,
          );
          expect(p.page.total).toBe(expected.length);
          got.push(...p.rows);
        }
        expect(got).toEqual(body.rows);
      });
    }
  }

  it('a sessions page looked for among the latest rows equals the page from every row', async () => {
    // 0 rows per session: never enough, so every page comes from all rows; 1: often short (a session has
    // a row per day and per unmerged part), then retried from all rows
    const apps = [0, 1].map((n) => injectApp(s.tg, 'views', { sessionPageRowsPerSession: n }));
    try {
      for (const name of ['wholeDays', 'underADay'] as const) {
        const r = ranges()[name];
        for (const customer of [undefined, 'acme']) {
          for (const [limit, offset] of [
            [1, 0],
            [2, 2],
            [3, 1],
            [1000, 0],
            [5, 1000],
          ]) {
            const path = `/analytics/mcp/sessions?${qs({ from: iso(r.from), to: iso(r.to), customer, limit, offset })}`;
            const expected = await get(path);
            for (const app of apps) {
              const res = await app.inject({
                url: path,
                headers: { authorization: `Bearer ${KEYS.finance}` },
              });
              expect(res.json(), path).toEqual(expected);
            }
          }
        }
      }
    } finally {
      await Promise.all(apps.map((a) => a.close()));
    }
  });

  it('a range starting inside a day, just after a session ended, leaves that session out', async () => {
    // the session that ended first; the range starts 1 ms after its last call and runs past the workload
    const ended = activeSessions(0, s.nowMs + DAY_MS).sort((a, b) => (a.last < b.last ? -1 : 1))[0];
    expect(ended).toBeDefined();
    const from = Number((ended?.last ?? 0n) / 1000n) + 1;
    const to = s.nowMs + 3_600_000;
    expect(from % DAY_MS).not.toBe(0);
    const expected = activeSessions(from, to);
    const key = `${ended?.cs[0]?.customer}/${ended?.cs[0]?.session}`;
    expect(expected.map((x) => `${x.cs[0]?.customer}/${x.cs[0]?.session}`)).not.toContain(key);
    const summary = await get<{ sessions: number; readFrom: string[] }>(
      `/analytics/mcp/summary?${qs({ from: iso(from), to: iso(to) })}`,
    );
    expect(summary.readFrom).toContain('mcp_customer_daily_stats');
    expect(summary.sessions).toBe(expected.length);
    const list = await get<{ rows: { customer: string; sessionId: string }[]; page: { total: number } }>(
      `/analytics/mcp/sessions?${qs({ from: iso(from), to: iso(to), limit: 1000 })}`,
    );
    expect(list.page.total).toBe(expected.length);
    expect(list.rows.map((x) => `${x.customer}/${x.sessionId}`)).toEqual(
      expected.map((x) => `${x.cs[0]?.customer}/${x.cs[0]?.session}`),
    );
  });

  it('a range without calls still counts and lists the sessions with calls before and after it', async () => {
    // one second, 30 hours ago: the long-running sessions of the workload span it
    const from = s.nowMs - 30 * 3_600_000;
    const to = from + 1000;
    const spanning = activeSessions(from, to).filter(
      (x) => !x.cs.some((c) => c.startUs >= BigInt(from) * 1000n && c.startUs < BigInt(to) * 1000n),
    );
    expect(spanning.length).toBeGreaterThan(0);
    const summary = await get<{ sessions: number; calls: number }>(
      `/analytics/mcp/summary?${qs({ from: iso(from), to: iso(to) })}`,
    );
    expect(summary.sessions).toBe(activeSessions(from, to).length);
    const list = await get<{ rows: { customer: string; sessionId: string }[] }>(
      `/analytics/mcp/sessions?${qs({ from: iso(from), to: iso(to), limit: 1000 })}`,
    );
    expect(list.rows.map((x) => `${x.customer}/${x.sessionId}`)).toEqual(
      activeSessions(from, to).map((x) => `${x.cs[0]?.customer}/${x.cs[0]?.session}`),
    );
  });

  it('session drill-down: calls in order with prices, decisions, trace ids and trace links', async () => {
    const body = await get<{
      customers: { customer: string; calls: number }[];
      totals: Record<string, unknown>;
      calls: Record<string, unknown>[];
    }>('/analytics/mcp/sessions/shared-1?limit=1000');
    const mine = demo
      .filter((c) => c.session === 'shared-1')
      .sort((a, b) =>
        a.startUs === b.startUs
          ? a.customer === b.customer
            ? a.spanId < b.spanId
              ? -1
              : 1
            : a.customer < b.customer
              ? -1
              : 1
          : a.startUs < b.startUs
            ? -1
            : 1,
      );
    expect(body.customers.map((c) => c.customer)).toEqual(['acme', 'globex']);
    const t = sumBy(mine, () => 'x').get('x');
    expect(body.totals).toMatchObject({ calls: mine.length, ...rcm(t?.revenue ?? 0n, t?.cost ?? 0n) });
    expect(body.calls).toEqual(
      mine.map((c, i) =>
        expect.objectContaining({
          seq: i + 1,
          customer: c.customer,
          tool: c.tool,
          decision: c.decision,
          tier: c.tier,
          durationUs: Number(c.durationUs),
          priceNano: c.price.toString(),
          price: formatNano(c.price),
          priceCallNano: c.priceCall.toString(),
          priceInputNano: c.priceInput.toString(),
          priceOutputNano: c.priceOutput.toString(),
          priceDurationNano: c.priceDuration.toString(),
          costNano: c.cost.toString(),
          traceId: c.traceId,
          spanId: c.spanId,
          traceLink: TRACE_TEMPLATE.replace('{traceId}', c.traceId).replace('{spanId}', c.spanId),
        }),
      ),
    );
    // paging through the calls gives the same calls
    const p1 = await get<{ calls: { spanId: string }[]; page: { nextOffset: number | null; total: number } }>(
      '/analytics/mcp/sessions/shared-1?limit=5',
    );
    expect(p1.page.total).toBe(mine.length);
    expect(p1.page.nextOffset).toBe(5);
    const p2 = await get<{ calls: { spanId: string; seq: number }[] }>(
      '/analytics/mcp/sessions/shared-1?limit=5&offset=5',
    );
    expect(p2.calls[0]?.seq).toBe(6);
    expect([...p1.calls, ...p2.calls].map((c) => c.spanId)).toEqual(mine.slice(0, 10).map((c) => c.spanId));
  });

  it('enforcement events: newest first, filtered by action', async () => {
    const r = ranges().wholeDays;
    const body = await get<{ rows: Record<string, unknown>[] }>(
      `/analytics/mcp/enforcement-events?${qs({ from: iso(r.from), to: iso(r.to), action: 'kill' })}`,
      KEYS.admin,
    );
    const expected = events.filter((e) => e.product === 'demo-mcp' && e.action === 'kill');
    expect(body.rows).toHaveLength(expected.length);
    expect(body.rows.map((x) => `${x.customer}|${x.scope}|${x.subjectId}|${x.reason}`).sort()).toEqual(
      expected.map((e) => `${e.customer}|${e.scope}|${e.subject_id}|${e.reason}`).sort(),
    );
    const ats = body.rows.map((x) => String(x.at));
    expect([...ats].sort().reverse()).toEqual(ats);
  });

  it('every list pages: pages concatenated are the whole list', async () => {
    const r = ranges().wholeDays;
    const base = `/analytics/mcp/by-agent?${qs({ from: iso(r.from), to: iso(r.to), bucket: 'day' })}`;
    const all = await get<{ rows: unknown[]; page: { total: number; nextOffset: number | null } }>(
      `${base}&limit=1000`,
    );
    expect(all.page.nextOffset).toBeNull();
    const got: unknown[] = [];
    let offset: number | null = 0;
    while (offset !== null) {
      const p: { rows: unknown[]; page: { total: number; nextOffset: number | null } } = await get(
        `${base}&limit=3&offset=${offset}`,
      );
      expect(p.page.total).toBe(all.rows.length);
      got.push(...p.rows);
      offset = p.page.nextOffset;
    }
    expect(got).toEqual(all.rows);
    const past = await get<{ rows: unknown[]; page: unknown }>(`${base}&limit=3&offset=100000`);
    expect(past).toMatchObject({ rows: [], page: { total: null, nextOffset: null } });
  });

  it('a customer key reads no cost, margin or margin-guard threshold, in JSON or CSV; a finance key does', async () => {
    const vendorOnly =
      /^(cost|costNano|margin|marginNano|marginBps|band|bands|guard|guardEnabled|warnBelowBps|throttleBelowBps|killBelowBps|minRevenue|minRevenueNano)$/;
    const keysOf = (v: unknown, out = new Set<string>()): Set<string> => {
      if (Array.isArray(v)) for (const x of v) keysOf(x, out);
      else if (v && typeof v === 'object')
        for (const [k, x] of Object.entries(v)) {
          out.add(k);
          keysOf(x, out);
        }
      return out;
    };
    for (const path of answersWithCsv()) {
      const read = async (key: string, csv: boolean) => {
        const res = await fetch(`${s.tg.apiUrl}${path}${csv ? '&format=csv' : ''}`, {
          headers: { authorization: `Bearer ${key}` },
        });
        expect([path, res.status]).toEqual([path, 200]);
        return csv ? new Set((await res.text()).split('\r\n')[0]?.split(',')) : keysOf(await res.json());
      };
      for (const csv of [false, true]) {
        const customer = [...(await read(KEYS.acme, csv))].filter((k) => vendorOnly.test(k));
        expect([path, csv, customer]).toEqual([path, csv, []]);
      }
      if (!path.includes('enforcement-events') && !path.includes('by-agent')) {
        const finance = [...(await read(KEYS.finance, false))].filter((k) => vendorOnly.test(k));
        expect([path, finance.length > 0]).toEqual([path, true]);
      }
    }
  });

  it('CSV for every list, by format=csv or Accept: text/csv, with the same numbers as the JSON', async () => {
    for (const path of answersWithCsv()) {
      const json = await get<Record<string, unknown>>(path);
      const list = (
        path.includes('/summary')
          ? [{ ...json, ...(json.range as Record<string, string>) }]
          : (json.rows ?? json.calls ?? json.lines)
      ) as Record<string, unknown>[];
      for (const how of ['param', 'accept'] as const) {
        const res = await fetch(`${s.tg.apiUrl}${path}${how === 'param' ? '&format=csv' : ''}`, {
          headers: {
            authorization: `Bearer ${KEYS.finance}`,
            ...(how === 'accept' ? { accept: 'text/csv' } : {}),
          },
        });
        expect(res.status, path).toBe(200);
        expect(res.headers.get('content-type')).toMatch(/^text\/csv/);
        expect(res.headers.get('content-disposition')).toMatch(/^attachment; filename=".+\.csv"$/);
        const [header = [], ...records] = parseCsv(await res.text());
        expect(records.length, path).toBe(list.length);
        expect(records.every((r) => r.length === header.length)).toBe(true);
        for (const col of header) {
          const i = header.indexOf(col);
          const json = list.map((row) =>
            row[col] === null || row[col] === undefined ? '' : String(row[col]),
          );
          expect(
            records.map((r) => r[i]),
            `${path} ${col}`,
          ).toEqual(json);
        }
      }
    }
  });

  it('the views and a full scan of the raw table give the same answers', async () => {
    const app = injectApp(s.tg, 'raw');
    try {
      for (const [path, r] of Object.values(ranges()).flatMap((r) => {
        const q = qs({ from: iso(r.from), to: iso(r.to), limit: 1000 });
        return [
          `/analytics/mcp/revenue/by-tool?${q}`,
          `/analytics/mcp/by-agent?${q}&bucket=day`,
          `/analytics/mcp/by-customer?${q}`,
          `/analytics/mcp/summary?${qs({ from: iso(r.from), to: iso(r.to) })}`,
          `/analytics/mcp/sessions?${q}`,
          `/analytics/mcp/sessions?${q}&customer=globex`,
          `/analytics/mcp/summary?${qs({ from: iso(r.from), to: iso(r.to), customer: 'acme' })}`,
          '/analytics/mcp/sessions/shared-1',
        ].map((path): [string, typeof r] => [path, r]);
      })) {
        const fromViews = await get<Record<string, unknown>>(path);
        const res = await app.inject({ url: path, headers: { authorization: `Bearer ${KEYS.finance}` } });
        expect(res.statusCode).toBe(200);
        const fromRaw = res.json() as Record<string, unknown>;
        const strip = (b: Record<string, unknown>) =>
          JSON.parse(JSON.stringify({ ...b, readFrom: undefined }), (k, v) =>
            k === 'durationP50Us' || k === 'durationP95Us' || k === 'agent' ? undefined : v,
          );
        expect(strip(fromRaw), `${path} ${JSON.stringify(r)}`).toEqual(strip(fromViews));
      }
    } finally {
      await app.close();
    }
  });

  it('the OpenAPI document describes every route, and the docs page is served', async () => {
    const doc = await get<{
      openapi: string;
      paths: Record<string, Record<string, { parameters?: { name: string }[] }>>;
    }>('/docs/json');
    expect(doc.openapi).toBe('3.1.0');
    for (const p of [
      '/analytics/mcp/revenue/by-tool',
      '/analytics/mcp/by-agent',
      '/analytics/mcp/by-customer',
      '/analytics/mcp/summary',
      '/analytics/mcp/sessions',
      '/analytics/mcp/sessions/{id}',
      '/analytics/mcp/enforcement-events',
      '/billing/invoices/preview',
      '/billing/plans/quote',
      '/admin/enforcement/states',
      '/me',
    ]) {
      expect(doc.paths[p], p).toBeDefined();
    }
    const params = doc.paths['/analytics/mcp/revenue/by-tool']?.get?.parameters?.map((x) => x.name);
    expect(params).toEqual(
      expect.arrayContaining([
        'product',
        'customer',
        'agent',
        'tool',
        'from',
        'to',
        'period',
        'format',
        'limit',
        'offset',
      ]),
    );
    const html = await fetch(`${s.tg.apiUrl}/docs/`);
    expect(html.status).toBe(200);
    expect(await html.text()).toContain('swagger');
  });
});
