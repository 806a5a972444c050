import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Directive, LeaseGrant } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import { startRedisCluster } from './support/redis-cluster.js';

const execFileAsync = promisify(execFile);
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: p
    plans:
      p:
        freeCallsPerMonth: 1
        tools: { "*": { price: { perCall: "1" }, cost: { perCall: "0.5" } } }
        limits: { spendPerPeriod: "3" }
`;

let cluster: Awaited<ReturnType<typeof startRedisCluster>>;
let tg: TestTollgate;
beforeAll(async () => {
  cluster = await startRedisCluster();
  tg = await startTestTollgate({ '--redis-cluster': cluster.seeds }, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
  await cluster?.stop();
});

async function send(spans: ReturnType<typeof toolSpan>[]) {
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans)),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { tollgate?: { directives: Directive[] } }).tollgate?.directives ?? [];
}

describe('the same scripts on Redis Cluster (3 masters)', () => {
  it('dedups, positions, enforces and kills per customer, with each customer on its own slot', async () => {
    const customers = Array.from({ length: 12 }, (_, i) => `cluster-co-${i}`);
    for (const c of customers) {
      const spans = Array.from({ length: 3 }, () => toolSpan({ customer: c }));
      expect(await send(spans)).toEqual([]); // 1 free + 2 × 1.00 = 2.00 ≤ 3.00
      expect(await send(spans)).toEqual([]); // a retry: duplicates, nothing counted
      const ds = await send([toolSpan({ customer: c }), toolSpan({ customer: c })]); // 4.00 > 3.00
      expect(ds.find((d) => d.scope === 'customer')).toMatchObject({
        action: 'kill',
        reason: 'hard_limit:spend_per_period',
      });
    }
    // the customers' keys are spread over the masters
    const owners = new Set<string>();
    for (const c of customers) {
      const { stdout } = await execFileAsync('redis-cli', [
        '-p',
        String(cluster.nodes[0]!.port),
        'cluster',
        'keyslot',
        `{demo-mcp:${c}}`,
      ]);
      owners.add(String(Math.floor(Number(stdout.trim()) / 5462)));
    }
    expect(owners.size).toBeGreaterThan(1);
    await tg.lander!.idle();
    const [row] = await query(
      tg,
      "SELECT count() n, sum(price_nano) revenue, countIf(decision = 'over_limit') AS over_limit FROM mcp_tool_calls WHERE customer LIKE 'cluster-co-%'",
    );
    expect(row).toEqual({ n: String(12 * 5), revenue: String(12 * 4 * 1_000_000_000), over_limit: '12' });
  });

  it('prepaid credits: grants, drawdown, the hard stop and the ledger outbox, each wallet on its customer slot', async () => {
    const customers = Array.from({ length: 6 }, (_, i) => `wallet-co-${i}`);
    const credits = tg.credits!;
    for (const c of customers) {
      expect(await send([toolSpan({ customer: c })])).toEqual([]); // the free call: the customer is known
      await credits.grant({
        product: 'demo-mcp',
        customer: c,
        kind: 'grant',
        amount: '2',
        currency: 'USD',
        actor: 'test',
      });
      const ds = await send([1, 2, 3].map(() => toolSpan({ customer: c }))); // 3.00 against 2.00
      expect(ds.find((d) => d.scope === 'customer')).toMatchObject({
        action: 'kill',
        reason: 'credits:exhausted',
      });
      const top = await credits.grant({
        product: 'demo-mcp',
        customer: c,
        kind: 'top_up',
        amount: '5',
        currency: 'USD',
        actor: 'test',
      });
      expect(top.wallet).toMatchObject({
        balanceNano: 4_000_000_000n,
        state: { action: 'resume', reason: 'credits:topped_up' },
      });
    }
    await tg.lander!.idle();
    const rows = await query(
      tg,
      "SELECT customer, sum(amount_nano) AS balance, count() AS entries FROM credit_ledger FINAL WHERE customer LIKE 'wallet-co-%' GROUP BY customer ORDER BY customer",
    );
    // grant, drawdown (grant), drawdown (overdraft), top-up, two repayment entries
    expect(rows).toEqual(customers.map((customer) => ({ customer, balance: '4000000000', entries: '6' })));
  });
});

describe('quota leases on Redis Cluster', () => {
  it('grant, settle, release and expiry run in each customer slot', async () => {
    const customers = Array.from({ length: 6 }, (_, i) => `lease-co-${i}`);
    for (const c of customers) {
      const post = async (requests: unknown[]) => {
        const res = await fetch(`${tg.otlpUrl}/v1/leases`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
          body: JSON.stringify({ instanceId: `inst-${c}`, requests }),
        });
        expect(res.status).toBe(200);
        return ((await res.json()) as { results: { ok: boolean; lease: LeaseGrant }[] }).results[0];
      };
      // 3.00 at 1.00 a call (the first call is free, but a lease reserves the known price): half of the limit,
      // 1.50, in whole calls
      const g = await post([{ op: 'grant', customer: c, wantMoney: '3000000000', minMoney: '1000000000' }]);
      expect(g?.lease.money).toBe('1000000000');
      const spans = [
        toolSpan({
          customer: c,
          attrs: { 'tollgate.lease.id': g?.lease.leaseId, 'tollgate.lease.reserved_nano': '1000000000' },
        }),
      ];
      const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
        body: JSON.stringify(exportOf(spans, { 'service.name': 'mcp', 'service.instance.id': `inst-${c}` })),
      });
      expect(res.status).toBe(200);
      const rel = await post([
        {
          op: 'release',
          customer: c,
          leaseId: g?.lease.leaseId,
          consumedCalls: 1,
          consumedMoney: '1000000000',
        },
      ]);
      expect(rel?.ok).toBe(true);
      // everything settled or returned: nothing is held back any more
      const held = await tg.redis?.hget(
        `tg:{demo-mcp:${c}}:p:${new Date().toISOString().slice(0, 7)}`,
        'lrm',
      );
      expect(held).toBe('0');
    }
  });
});
