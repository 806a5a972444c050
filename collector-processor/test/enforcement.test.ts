import type { Directive } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { periodEndMs } from '../src/enforcement/periods.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: capped
    plans:
      capped:
        tools:
          "*": { price: { perCall: "1" }, cost: { perCall: "0.1" } }
        limits:
          spendPerPeriod: "5"
          callsPerDay: 1000
          spendPerSession: "100"
          callsPerToolPerPeriod: { scarce: 2 }
        marginGuard: { enabled: false }
      guarded:
        tools:
          cheap: { price: { perCall: "1" }, cost: { perCall: "0.1" } }
          pricey: { price: { perCall: "1" }, cost: { perCall: "3" } }
        marginGuard: { warnBelow: "0.2", throttleBelow: "0.1", killBelow: "0", minRevenue: "2", throttleRatePerSecond: 3 }
    customers:
      margin-co: { plan: guarded }
      session-co: { overrides: { limits: { spendPerSession: "2", spendPerPeriod: "1000" } } }
`;

let tg: TestTollgate;
beforeAll(async () => {
  // a long span age, so that calls of the previous month are still accepted (period rollover test)
  tg = await startTestTollgate({ '--max-span-age-hours': String(24 * 40) }, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
});

async function exportCalls(
  customer: string,
  n: number,
  over: { tool?: string; session?: string; agent?: string; startMs?: number } = {},
): Promise<Directive[]> {
  const spans = Array.from({ length: n }, () =>
    toolSpan({
      customer,
      tool: over.tool ?? 'search',
      startMs: over.startMs,
      attrs: {
        'mcp.session.id': over.session ?? `${customer}-s1`,
        'tollgate.agent.id': over.agent ?? 'agent-1',
      },
    }),
  );
  return postSpans(spans, { 'service.name': 'mcp', 'service.instance.id': `inst-${customer}` });
}

/** Exports spans (OTLP/JSON) and returns the directives of the answer. */
async function postSpans(spans: unknown[], resource?: Record<string, string>): Promise<Directive[]> {
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans, resource)),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { tollgate?: { directives: Directive[] } };
  return body.tollgate?.directives ?? [];
}

/** Polls a query until it returns `n` rows (the audit log is written off the request path). */
async function eventually(sql: string, n: number): Promise<Record<string, string>[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const rows = await query(tg, sql);
    if (rows.length >= n || Date.now() > deadline) return rows;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const kill = (ds: Directive[], scope = 'customer') =>
  ds.find((d) => d.action === 'kill' && d.scope === scope);

describe('hard limits', () => {
  it('exactly at the spend limit: no kill; one over: kill in the response to the export that crossed it', async () => {
    expect(kill(await exportCalls('at-limit', 5))).toBeUndefined(); // 5 × 1.00 = the 5.00 limit
    const d = kill(await exportCalls('at-limit', 1));
    expect(d).toMatchObject({
      scope: 'customer',
      id: 'at-limit',
      customer: 'at-limit',
      reason: 'hard_limit:spend_per_period',
    });
    expect(d?.untilUnixMs).toBe(periodEndMs(new Date().toISOString().slice(0, 7)));

    expect(kill(await exportCalls('one-over', 4))).toBeUndefined();
    const crossing = await exportCalls('one-over', 2); // 4 → 6: crosses within this export
    expect(kill(crossing)?.reason).toBe('hard_limit:spend_per_period');
    await tg.lander!.idle();
    const rows = await query(
      tg,
      "SELECT decision, count() n FROM mcp_tool_calls WHERE customer = 'one-over' GROUP BY decision ORDER BY decision",
    );
    expect(rows).toEqual([
      { decision: 'billed', n: '5' },
      { decision: 'over_limit', n: '1' },
    ]);
  });

  it('a killed customer stays killed in a new session, and on a heartbeat', async () => {
    const d = await exportCalls('at-limit', 1, { session: 'brand-new-session', agent: 'other-agent' });
    expect(kill(d)?.reason).toBe('hard_limit:spend_per_period');
    const hb = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({
        resourceSpans: [
          {
            resource: {
              attributes: [{ key: 'service.instance.id', value: { stringValue: 'inst-at-limit' } }],
            },
            scopeSpans: [],
          },
        ],
      }),
    });
    const body = (await hb.json()) as { tollgate?: { directives: Directive[] } };
    expect(kill(body.tollgate?.directives ?? [])?.customer).toBe('at-limit');

    // an export of 10,000 resources with ids of their own is answered from its first 64 distinct ids:
    // Redis is asked at most 64 times, not 10,000 times one by one
    const smembers = async () =>
      Number(/cmdstat_smembers:calls=(\d+)/.exec((await tg.redis?.info('commandstats')) ?? '')?.[1] ?? 0);
    const before = await smembers();
    const many = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({
        resourceSpans: Array.from({ length: 10_000 }, (_, i) => ({
          resource: {
            attributes: [
              {
                key: 'service.instance.id',
                value: { stringValue: i === 0 ? 'inst-at-limit' : `flood-${i}` },
              },
            ],
          },
          scopeSpans: [],
        })),
      }),
    });
    expect(many.status).toBe(200);
    const flooded = (await many.json()) as { tollgate?: { directives: Directive[] } };
    expect(kill(flooded.tollgate?.directives ?? [])?.customer).toBe('at-limit');
    expect((await smembers()) - before).toBeLessThanOrEqual(64);
  });

  it('a retry of calls already counted carries the kill they caused (its sender lost the answer that had it)', async () => {
    const post = (spans: unknown[]) => postSpans(spans);
    const attrs = { 'mcp.session.id': 'retry-s1', 'tollgate.agent.id': 'retry-agent' };
    const spans = Array.from({ length: 7 }, () => toolSpan({ customer: 'retry-co', tool: 'search', attrs }));
    expect(kill(await post(spans))?.reason).toBe('hard_limit:spend_per_period'); // 7 × 1.00 > 5.00
    // the whole export again, and one of its calls alone: nothing counted, the kill still answered
    for (const again of [spans, [spans[0]]]) {
      const ds = await post(again);
      expect(kill(ds)).toMatchObject({ customer: 'retry-co', reason: 'hard_limit:spend_per_period' });
    }
    // beside another customer's new call: each customer's states, and none of another customer's subjects
    const mixed = await post([spans[1], toolSpan({ customer: 'retry-other', tool: 'search', attrs })]);
    expect(mixed.filter((d) => d.action === 'kill').map((d) => d.customer)).toEqual(['retry-co']);
    await tg.lander!.idle();
    const rows = await query(tg, "SELECT count() n FROM mcp_tool_calls WHERE customer = 'retry-co'");
    expect(rows).toEqual([{ n: '7' }]);

    // a retried call beside a new call of the same customer: the tool kill the retried call caused, too
    const scarce = Array.from({ length: 3 }, () =>
      toolSpan({ customer: 'retry-tool-co', tool: 'scarce', attrs }),
    );
    expect(kill(await post(scarce), 'tool')).toMatchObject({
      id: 'scarce',
      reason: 'hard_limit:calls_per_tool',
    });
    const beside = await post([scarce[2], toolSpan({ customer: 'retry-tool-co', tool: 'search', attrs })]);
    expect(kill(beside, 'tool')).toMatchObject({ id: 'scarce', customer: 'retry-tool-co' });
    expect(beside.filter((d) => d.scope === 'tool' && d.id === 'scarce')).toHaveLength(1);
  });

  it('spend per session kills the session only; calls per tool block the tool only', async () => {
    expect(kill(await exportCalls('session-co', 2, { session: 'sa' }), 'session')).toBeUndefined();
    const ds = await exportCalls('session-co', 1, { session: 'sa' });
    expect(kill(ds, 'session')).toMatchObject({ id: 'sa', reason: 'hard_limit:spend_per_session' });
    expect(kill(ds)).toBeUndefined();
    expect(kill(await exportCalls('session-co', 1, { session: 'sb' }), 'session')).toBeUndefined();

    expect(kill(await exportCalls('tool-co', 2, { tool: 'scarce' }), 'tool')).toBeUndefined();
    expect(kill(await exportCalls('tool-co', 1, { tool: 'scarce' }), 'tool')).toMatchObject({
      id: 'scarce',
      reason: 'hard_limit:calls_per_tool',
    });
  });

  it('concurrent exports from many sessions never overshoot by more than the calls in flight', async () => {
    const customer = 'stampede';
    // 20 exports × 1 call in parallel against a 5.00 limit: the counter must see exactly 20 calls,
    // and exactly the 15 calls beyond the limit are marked over it.
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => exportCalls(customer, 1, { session: `s${i}` })),
    );
    expect(results.filter((ds) => kill(ds)).length).toBe(15);
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      `SELECT count() n, countIf(decision = 'over_limit') AS over_limit, sum(price_nano) spend FROM mcp_tool_calls WHERE customer = '${customer}'`,
    );
    expect(row).toEqual({ n: '20', over_limit: '15', spend: String(20 * 1_000_000_000) });
    const spend = await tg.redis!.hget(
      `tg:{demo-mcp:${customer}}:p:${new Date().toISOString().slice(0, 7)}`,
      'spend',
    );
    expect(spend).toBe(String(20 * 1_000_000_000));
  });
});

describe('margin guard', () => {
  it('walks warn → throttle → kill as cost rises, and only after the minimum revenue', async () => {
    const c = 'margin-co';
    // pricey alone: margin -200%, but revenue 1.00 < minRevenue 2.00 → not judged yet
    expect(await exportCalls(c, 1, { tool: 'pricey' })).toEqual([]);
    // + 9 cheap: revenue 10, cost 3.9 → 61% → nothing
    expect((await exportCalls(c, 9, { tool: 'cheap' })).filter((d) => d.scope === 'customer')).toEqual([]);
    // + 2 pricey: revenue 12, cost 9.9 → 17.5% → warn
    const warn = (await exportCalls(c, 2, { tool: 'pricey' })).find((d) => d.scope === 'customer');
    expect(warn).toMatchObject({ action: 'warn', reason: 'margin_guard:warn', marginBps: 1750 });
    // + 1 pricey: revenue 13, cost 12.9 → 0.76% → throttle at 3/s
    const throttle = (await exportCalls(c, 1, { tool: 'pricey' })).find((d) => d.scope === 'customer');
    expect(throttle).toMatchObject({
      action: 'throttle',
      reason: 'margin_guard:throttle',
      ratePerSecond: 3,
      marginBps: 76,
    });
    // + 1 pricey: revenue 14, cost 15.9 → -13.57% → kill
    const k = (await exportCalls(c, 1, { tool: 'pricey' })).find((d) => d.scope === 'customer');
    expect(k).toMatchObject({ action: 'kill', reason: 'margin_guard:kill', marginBps: -1358 });
    // a kill is sticky: cheap calls raising the margin do not lift it
    expect(kill(await exportCalls(c, 50, { tool: 'cheap' }))?.reason).toBe('margin_guard:kill');
    await tg.lander!.idle();
    const events = await eventually(
      `SELECT action, reason FROM enforcement_events WHERE customer = '${c}' AND scope = 'customer' ORDER BY at`,
      3,
    );
    expect(events.map((e) => `${e.action}:${e.reason}`)).toEqual([
      'warn:margin_guard:warn',
      'throttle:margin_guard:throttle',
      'kill:margin_guard:kill',
    ]);
  });
});

describe('operators', () => {
  it('lifting a kill sends resume, holds for the period, and is audited', async () => {
    const c = 'lifted-co';
    await exportCalls(c, 6);
    expect((await tg.admin!.states('demo-mcp', c)).map((d) => d.action)).toEqual(['kill']);
    const lifted = await tg.admin!.lift({
      product: 'demo-mcp',
      customer: c,
      scope: 'customer',
      actor: 'alice',
      note: 'paid invoice',
    });
    expect(lifted).toMatchObject({ action: 'resume', reason: 'operator:alice' });
    const after = await exportCalls(c, 1);
    expect(after.find((d) => d.scope === 'customer')).toMatchObject({
      action: 'resume',
      reason: 'operator:alice',
    });
    const audit = await eventually(
      `SELECT action, actor, note FROM enforcement_events WHERE customer = '${c}' ORDER BY at`,
      2,
    );
    expect(audit).toEqual([
      { action: 'kill', actor: 'tollgate', note: expect.stringContaining('spool record') },
      { action: 'lift', actor: 'alice', note: 'paid invoice' },
    ]);
    const listed = await tg.admin!.states('demo-mcp');
    expect(listed.find((d) => d.customer === c)?.action).toBe('resume');
  });

  it('an operator kill of an agent reaches the sender', async () => {
    await tg.admin!.kill({
      product: 'demo-mcp',
      customer: 'agent-co',
      scope: 'agent',
      id: 'rogue',
      actor: 'bob',
    });
    const ds = await exportCalls('agent-co', 1, { agent: 'rogue' });
    expect(kill(ds, 'agent')).toMatchObject({ id: 'rogue', reason: 'operator:bob', untilUnixMs: 0 });
    expect(kill(ds)).toBeUndefined();
  });
});

describe('billing periods', () => {
  it('a new period starts with fresh counters', async () => {
    const c = 'rollover-co';
    const lastMonth = new Date();
    lastMonth.setUTCDate(0); // last day of the previous month
    lastMonth.setUTCHours(12);
    expect(kill(await exportCalls(c, 6, { startMs: lastMonth.getTime() }))?.reason).toBe(
      'hard_limit:spend_per_period',
    );
    // calls of the new period are counted against a fresh limit; the kill of the old period has lapsed
    const now = await exportCalls(c, 3);
    expect(kill(now)).toBeUndefined();
    await tg.lander!.idle();
    const rows = await query(
      tg,
      `SELECT period, count() n, sum(price_nano) s FROM mcp_tool_calls WHERE customer = '${c}' GROUP BY period ORDER BY period`,
    );
    expect(rows.map((r) => r.n)).toEqual(['6', '3']);
  });
});

describe('one export spanning several days', () => {
  it('counts every call of every day (regression: one applied marker per export skipped the later days)', async () => {
    const c = 'multiday-co';
    const now = Date.now();
    const dayMs = 86_400_000;
    // same customer, same export, calls started on three different UTC days of this month or the last
    const spans = [0, 1, 2].flatMap((d) =>
      Array.from({ length: 2 }, () => toolSpan({ customer: c, startMs: now - d * dayMs })),
    );
    const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(exportOf(spans)),
    });
    expect(res.status).toBe(200);
    const periods = new Set([0, 1, 2].map((d) => new Date(now - d * dayMs).toISOString().slice(0, 7)));
    let spend = 0;
    for (const period of periods)
      spend += Number((await tg.redis!.hget(`tg:{demo-mcp:${c}}:p:${period}`, 'spend')) ?? 0);
    expect(spend).toBe(6 * 1_000_000_000);
    // each day's calls counted on that day (calls per day), in the order the export held them
    for (const d of [0, 1, 2]) {
      const day = new Date(now - d * dayMs).toISOString().slice(0, 10);
      expect(await tg.redis!.hget(`tg:{demo-mcp:${c}}:d:${day}`, 'calls')).toBe('2');
    }
  });
});
