import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../collector-processor/src/receiver/ingest-keys.js';
import {
  DEV_INGEST_KEY,
  startTestTollgate,
  type TestTollgate,
  tempDir,
} from '../../collector-processor/test/support/harness.js';
import { exportOf, toolSpan } from '../../collector-processor/test/support/otlp-json.js';
import { CLI } from '../../collector-processor/test/support/process.js';

const execFileAsync = promisify(execFile);
const KEYS = {
  admin: 'tg_test_admin',
  finance: 'tg_test_finance',
  acme: 'tg_test_acme',
  other: 'tg_test_other_tenant',
};
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: p
    plans: { p: { tools: { "*": { price: { perCall: "1" } } }, limits: { spendPerPeriod: "1" } } }
  other-product:
    defaultPlan: p
    plans: { p: { tools: { "*": { price: { perCall: "1" } } } } }
`;

let tg: TestTollgate;
beforeAll(async () => {
  const dir = tempDir();
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
apiKeys:
  - { name: ops-alice, sha256: ${sha256Hex(KEYS.admin)}, role: admin, products: [demo-mcp] }
  - { name: finance, sha256: ${sha256Hex(KEYS.finance)}, role: finance, products: [demo-mcp] }
  - { name: acme-portal, sha256: ${sha256Hex(KEYS.acme)}, role: customer, products: [demo-mcp], customer: acme }
  - { name: other-admin, sha256: ${sha256Hex(KEYS.other)}, role: admin, products: [other-product] }
`,
  );
  tg = await startTestTollgate({ '--data-dir': dir, '--config': configFile }, PLANS);
  // drive acme over its limit
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf([toolSpan({ customer: 'acme' }), toolSpan({ customer: 'acme' })])),
  });
  expect(res.status).toBe(200);
});
afterAll(async () => {
  await tg?.cleanup();
});

const api = (path: string, key: string | undefined, init: RequestInit = {}) =>
  fetch(`${tg.apiUrl}${path}`, {
    ...init,
    headers: {
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      'content-type': 'application/json',
      ...init.headers,
    },
  });

describe('enforcement admin API', () => {
  it('admin and finance see who is killed; a customer key and another tenant cannot', async () => {
    for (const key of [KEYS.admin, KEYS.finance]) {
      const res = await api('/admin/enforcement/states', key);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { states: { customer: string; action: string; reason: string }[] };
      expect(body.states).toEqual([
        expect.objectContaining({ customer: 'acme', action: 'kill', reason: 'hard_limit:spend_per_period' }),
      ]);
    }
    expect((await api('/admin/enforcement/states', KEYS.acme)).status).toBe(403);
    expect((await api('/admin/enforcement/states?product=demo-mcp', KEYS.other)).status).toBe(403);
    const other = (await (await api('/admin/enforcement/states', KEYS.other)).json()) as {
      states: unknown[];
    };
    expect(other.states).toEqual([]);
    expect((await api('/admin/enforcement/states', undefined)).status).toBe(401);
    expect((await api('/admin/enforcement/states', 'nope')).status).toBe(401);
  });

  it('only admins act; bad bodies are 400 with a stable code', async () => {
    const body = JSON.stringify({ customer: 'acme', scope: 'customer' });
    expect((await api('/admin/enforcement/lift', KEYS.finance, { method: 'POST', body })).status).toBe(403);
    expect(
      (
        await api('/admin/enforcement/lift', KEYS.other, {
          method: 'POST',
          body: JSON.stringify({ customer: 'acme', scope: 'customer', product: 'demo-mcp' }),
        })
      ).status,
    ).toBe(403);
    const bad = await api('/admin/enforcement/lift', KEYS.admin, {
      method: 'POST',
      body: JSON.stringify({ customer: 'acme', scope: 'galaxy' }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('API_BAD_REQUEST');
    const noId = await api('/admin/enforcement/kill', KEYS.admin, {
      method: 'POST',
      body: JSON.stringify({ customer: 'acme', scope: 'session' }),
    });
    expect(noId.status).toBe(400);
    // ids with control characters, and an id the customer scope would drop: refused, nothing killed
    for (const b of [
      { customer: 'a\u0000b\nc', scope: 'customer' },
      { customer: 'acme', scope: 'agent', id: 'a\r\nb' },
      { customer: 'acme', scope: 'customer', id: 'other' },
      { customer: '', scope: 'customer' },
      { customer: 'x'.repeat(257), scope: 'customer' },
    ]) {
      const r = await api('/admin/enforcement/kill', KEYS.admin, { method: 'POST', body: JSON.stringify(b) });
      expect([JSON.stringify(b), r.status]).toEqual([JSON.stringify(b), 400]);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('API_BAD_REQUEST');
    }
    const states = (await (await api('/admin/enforcement/states', KEYS.admin)).json()) as {
      states: { customer: string; id?: string }[];
    };
    const control = (t: string) => [...t].some((ch) => ch.charCodeAt(0) < 0x20);
    expect(states.states.filter((s) => control(`${s.customer}${s.id ?? ''}`))).toEqual([]);
    expect(states.states.filter((s) => s.id === 'other')).toEqual([]);
    // the admin actions take everything from the body: a query string is refused, not silently ignored
    for (const [path, b] of [
      ['/admin/enforcement/kill?customer=acme', { customer: 'zeta', scope: 'customer' }],
      ['/admin/enforcement/lift?x=1', { customer: 'zeta', scope: 'customer' }],
      [
        '/admin/credits/grant?product=other-product',
        { customer: 'zeta', amount: '1', currency: 'USD', idempotencyKey: 'q1' },
      ],
      ['/admin/credits/top-up?customer=acme', { customer: 'zeta', amount: '1', currency: 'USD' }],
      [
        '/admin/credits/adjust?customer=acme',
        { customer: 'zeta', grantId: 'g1', amount: '-1', currency: 'USD', note: 'n' },
      ],
    ] as const) {
      const r = await api(path, KEYS.admin, { method: 'POST', body: JSON.stringify(b) });
      const err = ((await r.json()) as { error?: { code?: string; message?: string } }).error;
      expect([path, r.status, err?.code]).toEqual([path, 400, 'API_BAD_REQUEST']);
    }
    const after = (await (await api('/admin/enforcement/states', KEYS.admin)).json()) as {
      states: { customer: string }[];
    };
    expect(after.states.filter((s) => s.customer === 'zeta')).toEqual([]);
  });

  it('the CLI lifts through the API, as the key holder, audited', async () => {
    const { stdout } = await execFileAsync(
      process.execPath,
      [
        CLI,
        'admin',
        'lift',
        '--customer',
        'acme',
        '--note',
        'invoice paid',
        '--api-url',
        tg.apiUrl as string,
      ],
      {
        env: { ...process.env, TOLLGATE_API_KEY: KEYS.admin },
      },
    );
    expect(JSON.parse(stdout)).toMatchObject({
      directive: { action: 'resume', scope: 'customer', id: 'acme', reason: 'operator:ops-alice' },
    });
    const states = (await (await api('/admin/enforcement/states', KEYS.admin)).json()) as {
      states: { action: string }[];
    };
    expect(states.states.map((s) => s.action)).toEqual(['resume']);
    const rows = await (
      await tg.clickhouse.client.query({
        query: "SELECT action, actor, note FROM enforcement_events WHERE customer = 'acme' ORDER BY at",
        format: 'JSONEachRow',
      })
    ).json();
    expect(rows).toEqual([
      { action: 'kill', actor: 'tollgate', note: expect.any(String) },
      { action: 'lift', actor: 'ops-alice', note: 'invoice paid' },
    ]);
  });
});

describe('input the API refuses, and what a customer key reads of an operator', () => {
  const code = async (r: Response) => [
    r.status,
    ((await r.json()) as { error?: { code?: string } }).error?.code,
  ];

  it('a customer filter with a control character, or a query with a malformed percent-escape: 400', async () => {
    expect(await code(await api('/admin/enforcement/states?customer=%00', KEYS.admin))).toEqual([
      400,
      'API_BAD_REQUEST',
    ]);
    for (const bad of ['%FF%FE', '%ED%A0%80', 'a%2']) {
      expect([bad, ...(await code(await api(`/analytics/mcp/summary?customer=${bad}`, KEYS.admin)))]).toEqual(
        [bad, 400, 'API_BAD_REQUEST'],
      );
    }
    expect((await api('/analytics/mcp/summary?customer=%C3%A1cme', KEYS.admin)).status).toBe(200);
  });

  it('a quote body nested 5,000 deep is a 400, not a 500; values of another JSON type are not converted', async () => {
    const quote = (body: unknown) =>
      api('/billing/plans/quote', KEYS.admin, {
        method: 'POST',
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
    const deep = `{"plan":${'{"a":'.repeat(5000)}1${'}'.repeat(5000)},"usage":[{"tool":"x"}]}`;
    expect(await code(await quote(deep))).toEqual([400, 'API_BAD_REQUEST']);
    for (const usage of [
      { calls: '5' },
      { calls: true },
      { calls: [3] },
      { failed: 'true' },
      { inputTokens: '0x10' },
    ]) {
      expect([
        usage,
        ...(await code(await quote({ customer: 'acme', usage: [{ tool: 'x', ...usage }] }))),
      ]).toEqual([usage, 400, 'API_BAD_REQUEST']);
    }
    expect(
      await code(await quote({ customer: 'acme', prior: { planCalls: '9' }, usage: [{ tool: 'x' }] })),
    ).toEqual([400, 'API_BAD_REQUEST']);
    expect((await quote({ customer: 'acme', usage: [{ tool: 'x', calls: 5 }] })).status).toBe(200);
  });

  it("a customer key reads an operator's action as `operator`, without the key's name", async () => {
    const read = async (key: string) => {
      const r = await api('/analytics/mcp/enforcement-events', key);
      return ((await r.json()) as { rows: { action: string; reason: string }[] }).rows;
    };
    // the lift above (by ops-alice) lands in ClickHouse within the events' flush
    for (let i = 0; i < 50 && !(await read(KEYS.admin)).some((e) => e.action === 'lift'); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await read(KEYS.admin)).find((e) => e.action === 'lift')?.reason).toBe('operator:ops-alice');
    expect((await read(KEYS.acme)).find((e) => e.action === 'lift')?.reason).toBe('operator');
  });

  it('enforcement events page in a total order when many share a millisecond (concurrent credit actions)', async () => {
    const at = new Date().toISOString().replace('T', ' ').replace('Z', '');
    const rows = Array.from({ length: 23 }, (_, i) => ({
      at,
      product: 'demo-mcp',
      customer: i % 2 ? 'tie-a' : 'tie-b',
      scope: 'customer',
      subject_id: i % 2 ? 'tie-a' : 'tie-b',
      action: i % 3 ? 'credit_top_up' : 'credit_grant',
      reason: 'operator:ops-alice',
      margin_bps: null,
      spend_nano: String(1000 + (i % 4)),
      actor: 'ops-alice',
      note: `g${(i * 7) % 23}`,
      event_key: `tie|${i}`,
    }));
    await tg.clickhouse.client.insert({ table: 'enforcement_events', values: rows, format: 'JSONEachRow' });
    type Page = { rows: { customer: string; note: string }[]; page: { nextOffset: number | null } };
    const q = '/analytics/mcp/enforcement-events?customer=';
    for (const customer of ['tie-a', 'tie-b']) {
      const all = (await (await api(`${q}${customer}&limit=1000`, KEYS.admin)).json()) as Page;
      expect(all.rows).toHaveLength(customer === 'tie-a' ? 11 : 12);
      for (const limit of [1, 2, 5]) {
        const got: Page['rows'] = [];
        let offset: number | null = 0;
        while (offset !== null) {
          const p = (await (
            await api(`${q}${customer}&limit=${limit}&offset=${offset}`, KEYS.admin)
          ).json()) as Page;
          got.push(...p.rows);
          offset = p.page.nextOffset;
        }
        expect(got, `limit ${limit}`).toEqual(all.rows);
        expect(new Set(got.map((r) => r.note)).size).toBe(all.rows.length);
      }
    }
  });
});
