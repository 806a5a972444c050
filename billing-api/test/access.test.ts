import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  injectApp,
  KEYS,
  type RawCall,
  rawCalls,
  type Seeded,
  startSeededTollgate,
  sumBy,
} from './support/seed.js';

/**
 * Access: tenants (products) and customer keys, through every parameter; and injection strings through
 * every parameter of every route. Routes are exercised with inject() on an app built with buildApi over
 * the seeded Tollgate's ClickHouse and plans.
 */

let s: Seeded;
let app: FastifyInstance;
let raw: RawCall[];

beforeAll(async () => {
  s = await startSeededTollgate();
  app = injectApp(s.tg);
  raw = await rawCalls(s.tg);
}, 180_000);
afterAll(async () => {
  await app?.close();
  await s?.cleanup();
});

const WIDE = 'from=2026-01-01&to=2027-01-01';
/** Wide ranges so every seeded call is in, whatever today is (the workload is the last 84 h). */
function wide(): string {
  const from = new Date(s.nowMs - 10 * 86_400_000).toISOString().slice(0, 10);
  const to = new Date(s.nowMs + 2 * 86_400_000).toISOString().slice(0, 10);
  return `from=${from}&to=${to}`;
}

async function call(
  url: string,
  key: string | undefined,
  init: { method?: 'GET' | 'POST'; body?: unknown } = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await app.inject({
    method: init.method ?? 'GET',
    url,
    headers: key ? { authorization: `Bearer ${key}` } : {},
    ...(init.body !== undefined ? { payload: init.body as Record<string, unknown> } : {}),
  });
  const text = res.body;
  return { status: res.statusCode, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

const LISTS = [
  '/analytics/mcp/revenue/by-tool',
  '/analytics/mcp/by-agent',
  '/analytics/mcp/by-customer',
  '/analytics/mcp/sessions',
  '/analytics/mcp/enforcement-events',
] as const;
const READS = [
  ...LISTS,
  '/analytics/mcp/summary',
  '/analytics/mcp/sessions/shared-1',
  '/billing/invoices/preview',
];

const acmeDemo = () => raw.filter((r) => r.product === 'demo-mcp' && r.customer === 'acme');

describe('tenants and customer keys', () => {
  it('no key or an unknown key: 401 on every route', async () => {
    for (const path of [...READS, '/me']) {
      expect((await call(path, undefined)).status, path).toBe(401);
      const bad = await call(path, 'tg_not_a_key');
      expect(bad.status, path).toBe(401);
      expect(bad.body).toEqual({
        error: { code: 'API_UNAUTHORIZED', message: 'missing or unknown API key' },
      });
    }
    expect(
      (await call('/billing/plans/quote', undefined, { method: 'POST', body: { usage: [{ tool: 'x' }] } }))
        .status,
    ).toBe(401);
  });

  it('no key: 401 before any parameter or body is read, on every route of the OpenAPI document', async () => {
    await app.ready();
    const paths = (
      app as unknown as { swagger(): { paths: Record<string, Record<string, unknown>> } }
    ).swagger().paths;
    let secured = 0;
    for (const [path, ops] of Object.entries(paths)) {
      for (const [method, op] of Object.entries(ops)) {
        if (!(op as { security?: unknown }).security) continue;
        secured++;
        // a parameter no route knows, a path parameter and a body of the wrong shape: a 400 for a keyed caller
        const url = `${path.replace(/\{[^}]+\}/g, 'x')}?no_such_parameter=1&limit=abc`;
        for (const key of [undefined, 'tg_not_a_key']) {
          const r = await call(url, key, {
            method: method.toUpperCase() as 'GET' | 'POST',
            ...(method === 'post' ? { body: { no_such_field: true } } : {}),
          });
          expect(r.status, `${method} ${url} ${key ?? 'no key'}`).toBe(401);
          expect(r.body).toEqual({
            error: { code: 'API_UNAUTHORIZED', message: 'missing or unknown API key' },
          });
        }
        // with a key the same request is refused for what it is (wrong parameters or role), never served
        const keyed = await call(url, KEYS.admin, {
          method: method.toUpperCase() as 'GET' | 'POST',
          ...(method === 'post' ? { body: { no_such_field: true } } : {}),
        });
        expect([400, 403, 404], `${method} ${url} with a key`).toContain(keyed.status);
        if (method === 'post') {
          // a body that is not JSON: still 401 without a key (the body is not read)
          const res = await app.inject({
            method: 'POST',
            url,
            headers: { 'content-type': 'application/json' },
            payload: '{"not json',
          });
          expect(res.statusCode, `${url} malformed body, no key`).toBe(401);
        }
      }
    }
    expect(secured).toBeGreaterThanOrEqual(15);
  });

  it("a customer key sees its own customer's numbers only, on every route", async () => {
    const t = sumBy(acmeDemo(), () => 'x').get('x');
    const summary = await call(`/analytics/mcp/summary?${wide()}`, KEYS.acme);
    expect(summary.status).toBe(200);
    expect(summary.body).toMatchObject({ calls: t?.calls, revenueNano: String(t?.revenue), customers: 1 });

    const byTool = await call(`/analytics/mcp/revenue/by-tool?${wide()}`, KEYS.acme);
    const rows = byTool.body.rows as { revenueNano: string; calls: number }[];
    expect(rows.reduce((a, r) => a + BigInt(r.revenueNano), 0n)).toBe(t?.revenue);

    const byAgent = await call(`/analytics/mcp/by-agent?${wide()}&bucket=day&limit=1000`, KEYS.acme);
    expect((byAgent.body.rows as { calls: number }[]).reduce((a, r) => a + r.calls, 0)).toBe(t?.calls);

    const byCustomer = await call(`/analytics/mcp/by-customer?${wide()}`, KEYS.acme);
    expect((byCustomer.body.rows as { customer: string }[]).map((r) => r.customer)).toEqual(['acme']);

    const sessions = await call(`/analytics/mcp/sessions?${wide()}`, KEYS.acme);
    expect(new Set((sessions.body.rows as { customer: string }[]).map((r) => r.customer))).toEqual(
      new Set(['acme']),
    );

    // globex and umbrella were killed; acme was not: acme's key sees no kill
    const events = await call(`/analytics/mcp/enforcement-events?${wide()}`, KEYS.acme);
    expect((events.body.rows as { customer: string }[]).every((r) => r.customer === 'acme')).toBe(true);
    const globexEvents = await call(`/analytics/mcp/enforcement-events?${wide()}`, KEYS.globex);
    const gRows = globexEvents.body.rows as { customer: string; actor: string; note: string }[];
    expect(gRows.length).toBeGreaterThan(0);
    expect(gRows.every((r) => r.customer === 'globex' && r.actor === '' && r.note === '')).toBe(true);

    // a session shared by two customers: acme's key sees acme's calls of it, nothing of globex's
    const shared = await call('/analytics/mcp/sessions/shared-1?limit=1000', KEYS.acme);
    expect(shared.status).toBe(200);
    expect((shared.body.customers as { customer: string }[]).map((c) => c.customer)).toEqual(['acme']);
    const mine = acmeDemo().filter((r) => r.session === 'shared-1');
    expect((shared.body.calls as { spanId: string; customer: string }[]).map((c) => c.spanId).sort()).toEqual(
      mine.map((r) => r.spanId).sort(),
    );

    const invoice = await call('/billing/invoices/preview', KEYS.acme);
    expect(invoice.status).toBe(200);
    expect(invoice.body.customer).toBe('acme');
  });

  it('a customer key naming another customer gets 403, on every route and in every form', async () => {
    for (const path of READS) {
      const sep = path.includes('?') ? '&' : '?';
      for (const other of ['globex', 'Globex', 'acme ', "o'hara", 'umbrella']) {
        const res = await call(`${path}${sep}customer=${encodeURIComponent(other)}`, KEYS.acme);
        expect(res.status, `${path} customer=${other}`).toBe(403);
        expect(res.body).toMatchObject({ error: { code: 'API_FORBIDDEN' } });
      }
      // two values for one parameter: refused, never read as "all"
      const twice = await call(`${path}${sep}customer=acme&customer=globex`, KEYS.acme);
      expect([400, 403], path).toContain(twice.status);
      // naming itself is fine
      expect((await call(`${path}${sep}customer=acme`, KEYS.acme)).status, path).toBe(200);
    }
  });

  it('agent, tool and session filters cannot reach another customer', async () => {
    // agent-c and run_report are used by globex and umbrella only
    for (const q of ['agent=agent-c', 'tool=run_report', 'agent=agent-c&tool=run_report']) {
      const summary = await call(`/analytics/mcp/summary?${wide()}&${q}`, KEYS.acme);
      expect(summary.status).toBe(200);
      expect(summary.body).toMatchObject({ calls: 0, revenueNano: '0', sessions: 0, customers: 0 });
      for (const path of LISTS.slice(0, 4)) {
        const res = await call(`${path}?${wide()}&${q}`, KEYS.acme);
        expect(res.status, `${path}?${q}`).toBe(200);
        expect(res.body.rows, `${path}?${q}`).toEqual([]);
      }
    }
    // another customer's session is a 404 indistinguishable from a session that does not exist
    const theirs = await call('/analytics/mcp/sessions/globex-only', KEYS.acme);
    const none = await call('/analytics/mcp/sessions/no-such-session', KEYS.acme);
    expect(theirs.status).toBe(404);
    expect(theirs.body).toEqual(none.body);
    expect((await call('/analytics/mcp/sessions/globex-only', KEYS.globex)).status).toBe(200);
    // CSV asks the same question and gets the same refusal
    expect((await call('/analytics/mcp/sessions/globex-only?format=csv', KEYS.acme)).status).toBe(404);
  });

  it('a key of one tenant never sees another tenant, even for a customer of the same name', async () => {
    for (const path of READS) {
      const sep = path.includes('?') ? '&' : '?';
      const res = await call(
        `${path}${sep}product=demo-mcp${path.includes('invoices') ? '&customer=acme' : ''}`,
        KEYS.otherAdmin,
      );
      expect(res.status, path).toBe(403);
      expect((await call(`${path}${sep}product=other-product`, KEYS.acme)).status, path).toBe(403);
      expect((await call(`${path}${sep}product=other-product`, KEYS.admin)).status, path).toBe(403);
    }
    const other = raw.filter((r) => r.product === 'other-product');
    const summary = await call(`/analytics/mcp/summary?${wide()}`, KEYS.otherAdmin);
    expect(summary.body).toMatchObject({
      product: 'other-product',
      calls: other.length,
      revenueNano: '70000000000',
    });
    const inv = await call('/billing/invoices/preview?customer=acme', KEYS.otherAdmin);
    expect(inv.status).toBe(200);
    const now = new Date(s.nowMs).toISOString().slice(0, 7);
    const acmeOther = other.filter((r) => r.customer === 'acme' && r.period === now);
    expect(inv.body.totals).toMatchObject({
      calls: acmeOther.length,
      amountNano: String(BigInt(acmeOther.length) * 7_000_000_000n),
    });
    // the shared session id exists in both tenants: each sees its own calls only
    const demoShared = await call('/analytics/mcp/sessions/shared-1?limit=1000', KEYS.admin);
    const otherShared = await call('/analytics/mcp/sessions/shared-1?limit=1000', KEYS.otherAdmin);
    expect((demoShared.body.calls as unknown[]).length).toBe(
      raw.filter((r) => r.product === 'demo-mcp' && r.session === 'shared-1').length,
    );
    expect((otherShared.body.calls as unknown[]).length).toBe(6);
    expect((otherShared.body.customers as { customer: string }[]).map((c) => c.customer)).toEqual(['acme']);
  });

  it('a key with several products must name one; roles gate quotes and admin routes', async () => {
    const res = await call('/analytics/mcp/summary', KEYS.multi);
    expect(res.status).toBe(400);
    expect((await call('/analytics/mcp/summary?product=other-product', KEYS.multi)).status).toBe(200);
    expect((await call('/analytics/mcp/summary?product=demo-mcp', KEYS.multi)).status).toBe(200);
    const quote = { usage: [{ tool: 'lookup' }] };
    expect((await call('/billing/plans/quote', KEYS.acme, { method: 'POST', body: quote })).status).toBe(403);
    expect((await call('/billing/plans/quote', KEYS.finance, { method: 'POST', body: quote })).status).toBe(
      200,
    );
    expect(
      (
        await call('/billing/plans/quote', KEYS.otherAdmin, {
          method: 'POST',
          body: { ...quote, product: 'demo-mcp' },
        })
      ).status,
    ).toBe(403);
    expect((await call('/admin/enforcement/states', KEYS.acme)).status).toBe(403);
    expect((await call('/billing/invoices/preview', KEYS.finance)).status).toBe(400); // finance must name the customer
    const me = await call('/me', KEYS.ohara);
    expect(me.body).toEqual({
      name: 'ohara-portal',
      role: 'customer',
      products: ['demo-mcp'],
      customer: "o'hara",
    });
  });
});

const EVIL = [
  "' OR '1'='1",
  "acme' OR customer != '",
  "x'); DROP TABLE mcp_tool_calls; --",
  '{product:String}',
  "acme\\' --",
  '1 UNION ALL SELECT * FROM system.tables',
  '"; SELECT 1; --',
  'acme/*',
];

describe('injection strings through every parameter', () => {
  it('ids with a quote are values, not SQL: the customer o\u2019hara is found exactly', async () => {
    const mine = raw.filter((r) => r.customer === "o'hara");
    expect(mine.length).toBe(3);
    const t = sumBy(mine, () => 'x').get('x');
    const viaAdmin = await call(
      `/analytics/mcp/summary?${wide()}&customer=${encodeURIComponent("o'hara")}`,
      KEYS.admin,
    );
    expect(viaAdmin.body).toMatchObject({ calls: 3, revenueNano: String(t?.revenue) });
    const viaOwnKey = await call(`/analytics/mcp/summary?${wide()}`, KEYS.ohara);
    expect(viaOwnKey.body).toMatchObject({ calls: 3, revenueNano: String(t?.revenue) });
    const session = await call(`/analytics/mcp/sessions/${encodeURIComponent("o'hara-s1")}`, KEYS.ohara);
    expect(session.status).toBe(200);
    expect((session.body.calls as unknown[]).length).toBe(3);
  });

  // Issue 12: Date.UTC maps years 0–99 to 1900–1999, so period=0000-01 answered January 1900 (200).
  it('every route taking a period or a date refuses one it cannot represent, with the range error', async () => {
    const ranged = [
      '/analytics/mcp/revenue/by-tool',
      '/analytics/mcp/by-agent',
      '/analytics/mcp/by-customer',
      '/analytics/mcp/sessions',
      '/analytics/mcp/enforcement-events',
      '/analytics/mcp/summary',
    ];
    const bad = [
      'period=0000-01',
      'period=0099-12',
      'period=1969-12',
      'period=9999-12',
      'from=0000-01-01',
      'from=0001-01-01T00:00:00Z&to=2026-01-01',
      'to=9999-12-31',
    ];
    for (const path of [...ranged, '/billing/invoices/preview?customer=acme']) {
      for (const q of bad) {
        if (path.includes('invoices') && !q.startsWith('period')) continue; // the invoice takes a period only
        const sep = path.includes('?') ? '&' : '?';
        const res = await call(`${path}${sep}${q}`, KEYS.admin);
        expect(res.status, `${path} ${q}`).toBe(400);
        expect(res.body.error, `${path} ${q}`).toEqual({
          code: 'API_BAD_REQUEST',
          message: expect.stringMatching(/is outside 1970-01-01 … 2149-01-01/),
        });
      }
    }
    // the same code as any other bad range
    const reversed = await call('/analytics/mcp/summary?from=2026-03-02&to=2026-03-01', KEYS.admin);
    expect(reversed.status).toBe(400);
    expect((reversed.body.error as { code: string }).code).toBe('API_BAD_REQUEST');
    // a quote takes no period: one given is refused, not silently ignored
    const quote = await call('/billing/plans/quote?period=0000-01', KEYS.admin, {
      method: 'POST',
      body: { usage: [{ tool: 'search_docs' }] },
    });
    expect(quote.status).toBe(400);
    expect((quote.body.error as { code: string }).code).toBe('API_BAD_REQUEST');
  });

  it('every parameter of every read route: a 400/403/404 or an empty answer, never data, never a 500', async () => {
    const before = raw.length;
    const params: Record<string, string[]> = {
      '/analytics/mcp/revenue/by-tool': [
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
      ],
      '/analytics/mcp/by-agent': [
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
        'bucket',
      ],
      '/analytics/mcp/by-customer': [
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
      ],
      '/analytics/mcp/sessions': [
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
      ],
      '/analytics/mcp/enforcement-events': [
        'product',
        'customer',
        'from',
        'to',
        'period',
        'format',
        'limit',
        'offset',
        'action',
      ],
      '/analytics/mcp/summary': ['product', 'customer', 'agent', 'tool', 'from', 'to', 'period', 'format'],
      '/analytics/mcp/sessions/shared-1': ['product', 'customer', 'format', 'limit', 'offset'],
      '/billing/invoices/preview?customer=acme': ['product', 'period', 'format'],
      '/billing/invoices/preview': ['customer'],
    };
    let tried = 0;
    for (const [path, names] of Object.entries(params)) {
      for (const name of names) {
        for (const evil of [...EVIL, 'x\u0001y', 'a'.repeat(300)]) {
          for (const key of [KEYS.admin, KEYS.acme]) {
            const sep = path.includes('?') ? '&' : '?';
            const res = await call(`${path}${sep}${name}=${encodeURIComponent(evil)}`, key);
            tried++;
            const label = `${path} ${name}=${evil.slice(0, 40)} (${key})`;
            expect([200, 400, 403, 404], label).toContain(res.status);
            if (res.status !== 200) {
              expect(res.body.error, label).toMatchObject({ code: expect.stringMatching(/^API_/) });
              continue;
            }
            // an injection string read as a value matches nothing
            const b = res.body;
            if (Array.isArray(b.rows)) expect(b.rows, label).toEqual([]);
            else if (Array.isArray(b.lines)) expect(b.lines, label).toEqual([]);
            else if (Array.isArray(b.calls)) throw new Error(`${label}: a session answered`);
            else expect(b.calls, label).toBe(0);
          }
        }
      }
    }
    // the session id in the path
    for (const evil of EVIL) {
      const res = await call(`/analytics/mcp/sessions/${encodeURIComponent(evil)}`, KEYS.admin);
      tried++;
      expect([400, 404], evil).toContain(res.status);
    }
    // the quote body: every string field, and the tool-calls map's keys
    const bodies = (evil: string) => [
      { product: evil, usage: [{ tool: 'lookup' }] },
      { customer: evil, usage: [{ tool: 'lookup' }] },
      { planId: evil, usage: [{ tool: 'lookup' }] },
      { usage: [{ tool: evil }] },
      { usage: [{ tool: 'lookup' }], prior: { toolCalls: { [evil]: 1 } } },
      { plan: { tools: { [evil]: { price: { perCall: evil } } } }, usage: [{ tool: 'lookup' }] },
    ];
    for (const evil of EVIL) {
      for (const body of bodies(evil)) {
        const res = await call('/billing/plans/quote', KEYS.admin, { method: 'POST', body });
        tried++;
        expect([200, 400, 403, 404], JSON.stringify(body)).toContain(res.status);
      }
    }
    expect(tried).toBeGreaterThan(1000);
    // nothing was dropped or changed
    const after = await rawCalls(s.tg);
    expect(after.length).toBe(before);
    const tables = await (
      await s.tg.clickhouse.client.query({
        query:
          "SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE 'mcp_%' ORDER BY name",
        format: 'JSONEachRow',
      })
    ).json<{ name: string }>();
    expect(tables.map((t) => t.name)).toEqual([
      'mcp_customer_daily_stats',
      'mcp_customer_daily_stats_mv',
      'mcp_customer_monthly_sessions',
      'mcp_customer_monthly_sessions_mv',
      'mcp_daily_stats',
      'mcp_daily_stats_mv',
      'mcp_session_daily',
      'mcp_session_daily_mv',
      'mcp_session_interval_snapshots',
      'mcp_session_intervals',
      'mcp_session_summary',
      'mcp_session_summary_mv',
      'mcp_tool_calls',
      'mcp_tool_daily_stats',
      'mcp_tool_daily_stats_mv',
      'mcp_usage_daily_stats',
      'mcp_usage_daily_stats_mv',
    ]);
  });

  it('validation names the parameter and uses the error catalogue', async () => {
    const cases: [string, RegExp][] = [
      ['/analytics/mcp/summary?from=2026-13-01', /from/],
      ['/analytics/mcp/summary?from=2026-02-30', /not a valid date/],
      ['/analytics/mcp/summary?from=2026-03-02&to=2026-03-01', /before/],
      ['/analytics/mcp/summary?from=2020-01-01&to=2026-01-01', /at most 400 days/],
      ['/analytics/mcp/summary?period=2026-11&from=2026-11-01', /period or from/],
      ['/analytics/mcp/revenue/by-tool?limit=0', /limit/],
      ['/analytics/mcp/revenue/by-tool?limit=10001', /limit/],
      // decimal digits only: no hex, exponent, blank or repeated value read as a number
      ['/analytics/mcp/revenue/by-tool?limit=0x10', /limit must be a whole number/],
      ['/analytics/mcp/revenue/by-tool?limit=1e3', /limit must be a whole number/],
      ['/analytics/mcp/revenue/by-tool?limit=%20', /limit must be a whole number/],
      ['/analytics/mcp/revenue/by-tool?offset=1.0', /offset must be a whole number/],
      ['/analytics/mcp/revenue/by-tool?limit=5&limit=6', /limit must be a whole number/],
      ['/analytics/mcp/revenue/by-tool?customr=acme', /additional properties: customr$/],
      ['/analytics/mcp/by-agent?bucket=hour&from=2026-01-01&to=2026-02-01', /7 days/],
      ['/analytics/mcp/enforcement-events?action=explode', /action/],
      [`/analytics/mcp/summary?${WIDE}&format=xml`, /format/],
    ];
    for (const [url, message] of cases) {
      const res = await call(url, KEYS.admin);
      expect(res.status, url).toBe(400);
      expect(res.body.error, url).toMatchObject({
        code: 'API_BAD_REQUEST',
        message: expect.stringMatching(message),
      });
    }
  });
});
