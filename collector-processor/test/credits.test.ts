import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Directive } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCsv } from '../../billing-api/test/support/csv.js';
import { waitFor } from '../../instrumentation/test/support/mcp.js';
import { loadPlanBook } from '../src/plans/load.js';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { creditLedger, type LedgerRow, landed } from './support/credit-ledger.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import { CLI } from './support/process.js';

/**
 * Prepaid credits end to end against a real Tollgate (chDB, a private redis-server): grants and top-ups
 * through the admin API and the CLI, drawdown by billed calls in enforce.lua, the hard stop, the overdraft,
 * the low-balance warning, expiry, priorities, the ledger in ClickHouse reconciled with the billed calls,
 * the invoice preview, scoping of customer keys, and bad input.
 */

const execFileAsync = promisify(execFile);
const KEYS = { admin: 'tg_test_admin', finance: 'tg_test_finance', acme: 'tg_test_acme' };
// 0.333333333 a call: sums that a float would round show up as an inexact nano-unit
const PRICE = 333_333_333n;
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: p
    plans:
      p:
        tools:
          "*": { price: { perCall: "0.333333333" }, cost: { perCall: "0.1" } }
        marginGuard: { enabled: false }
    customers:
      acme: {}
      globex: {}
      stopper: {}
      overdraft-co: { overrides: { credits: { overdraft: "1" } } }
      warn-co: { overrides: { credits: { warnBelow: "1" } } }
      order-co: {}
      expiry-co: {}
      race-co: {}
      bad-co: {}
      postpaid-co: { overrides: { credits: { hardStop: false } } }
      lifted-co: {}
      pending-co: {}
      adjust-co: {}
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
`,
  );
  tg = await startTestTollgate({ '--data-dir': dir, '--config': configFile }, PLANS);
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

interface Wallet {
  balanceNano: string;
  balance: string;
  pendingNano: string;
  overdraftUsedNano: string;
  state: { action: string; reason: string } | null;
  grants: {
    grantId: string;
    kind: string;
    remainingNano: string;
    priority: number;
    expiresAt: string | null;
  }[];
  ledgerBacklog: number;
}

async function grant(
  customer: string,
  amount: string,
  extra: Record<string, unknown> = {},
  kind: 'grant' | 'top-up' = 'grant',
): Promise<{
  status: number;
  body: { grantId: string; replayed: boolean; wallet: Wallet; error?: { code: string; message: string } };
}> {
  const res = await api(`/admin/credits/${kind}`, KEYS.admin, {
    method: 'POST',
    body: JSON.stringify({ customer, amount, currency: 'USD', ...extra }),
  });
  return { status: res.status, body: (await res.json()) as never };
}

async function wallet(customer: string, key = KEYS.admin): Promise<Wallet> {
  const res = await api(`/billing/credits?customer=${customer}`, key);
  expect(res.status).toBe(200);
  return ((await res.json()) as { wallets: Wallet[] }).wallets[0] as Wallet;
}

async function exportCalls(customer: string, n: number): Promise<{ directives: Directive[]; ids: string[] }> {
  const spans = Array.from({ length: n }, () => toolSpan({ customer, tool: 'search' }));
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(
      exportOf(spans, { 'service.name': 'mcp', 'service.instance.id': `inst-${customer}` }),
    ),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { tollgate?: { directives: Directive[] } };
  return { directives: body.tollgate?.directives ?? [], ids: spans.map((s) => `${s.traceId}${s.spanId}`) };
}

const ledger = (customer: string) => creditLedger(tg, customer);

const sum = (xs: readonly (string | bigint)[]) => xs.reduce<bigint>((a, x) => a + BigInt(x), 0n);

describe('prepaid credits', () => {
  it('a grant is drawn down by billed calls to the nano-unit, and the ledger reconciles call by call', async () => {
    const g = await grant('acme', '10', { note: 'welcome credit' });
    expect(g.status).toBe(200);
    expect(g.body.wallet).toMatchObject({ balanceNano: '10000000000', balance: '10.00', state: null });
    const { ids } = await exportCalls('acme', 7);
    await landed(tg, 'acme', 7);
    const w = await wallet('acme');
    expect(BigInt(w.balanceNano)).toBe(10_000_000_000n - 7n * PRICE);
    expect(w.balance).toBe('7.666666669');

    const rows = await ledger('acme');
    expect(rows.map((r) => [r.entry_type, r.bucket, r.amount_nano])).toEqual([
      ['grant', g.body.grantId, '10000000000'],
      ['drawdown', g.body.grantId, String(-7n * PRICE)],
    ]);
    const draw = rows[1] as LedgerRow;
    expect([...draw.event_ids].sort()).toEqual([...ids].sort());
    expect(draw.event_amounts_nano).toEqual(Array(7).fill(String(PRICE)));
    expect(rows[0]?.actor).toBe('ops-alice');
    // the ledger sums to the balance
    expect(sum(rows.map((r) => r.amount_nano))).toBe(BigInt(w.balanceNano));

    const inv = await api('/billing/invoices/preview?customer=acme', KEYS.admin);
    const invoice = (await inv.json()) as {
      totals: { amountNano: string };
      credits: {
        appliedNano: string;
        amountDueNano: string;
        drawnCalls: number;
        reconciliation: { reconciled: boolean; mismatchedCalls: number };
      };
    };
    expect(invoice.totals.amountNano).toBe(String(7n * PRICE));
    expect(invoice.credits).toMatchObject({
      appliedNano: String(7n * PRICE),
      amountDueNano: '0',
      drawnCalls: 7,
      reconciliation: { reconciled: true, mismatchedCalls: 0 },
    });
    // the CSV has no totals: its last row takes the credits off, so its amounts sum to what is due
    const csv = parseCsv(
      await (await api('/billing/invoices/preview?customer=acme&format=csv', KEYS.admin)).text(),
    );
    const [head = [], ...lines] = csv;
    const col = (name: string) => head.indexOf(name);
    expect(lines.at(-1)?.[col('component')]).toBe('credits');
    expect(lines.at(-1)?.[col('amountNano')]).toBe(String(-7n * PRICE));
    expect(sum(lines.map((l) => l[col('amountNano')] as string))).toBe(BigInt(invoice.credits.amountDueNano));
  });

  it('stops the customer at zero (kill, credits:exhausted); a top-up repays what was drawn beyond and resumes', async () => {
    await grant('stopper', '1'); // three calls' worth (0.999999999), a nano-unit short of a fourth
    const first = await exportCalls('stopper', 3);
    expect(first.directives.find((d) => d.scope === 'customer')).toBeUndefined();
    const second = await exportCalls('stopper', 2);
    expect(second.directives).toContainEqual(
      expect.objectContaining({
        action: 'kill',
        scope: 'customer',
        id: 'stopper',
        reason: 'credits:exhausted',
        untilUnixMs: 0,
      }),
    );
    await landed(tg, 'stopper', 5);
    // the calls happened and are billed; the two beyond the balance drew the overdraft bucket and are over the limit
    const decisions = await query(
      tg,
      "SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = 'stopper' GROUP BY decision ORDER BY decision",
    );
    expect(decisions).toEqual([
      { decision: 'billed', n: '3' },
      { decision: 'over_limit', n: '2' },
    ]);
    let w = await wallet('stopper');
    expect(BigInt(w.balanceNano)).toBe(1_000_000_000n - 5n * PRICE);
    expect(BigInt(w.overdraftUsedNano)).toBe(5n * PRICE - 1_000_000_000n);
    expect(w.state).toEqual({ action: 'kill', reason: 'credits:exhausted' });
    // Kong and the SDK read the same state: a heartbeat carries the kill
    const states = (await (await api('/admin/enforcement/states?customer=stopper', KEYS.admin)).json()) as {
      states: Directive[];
    };
    expect(states.states).toEqual([expect.objectContaining({ action: 'kill', reason: 'credits:exhausted' })]);

    const top = await grant('stopper', '5', { note: 'card payment' }, 'top-up');
    expect(top.status).toBe(200);
    w = top.body.wallet;
    expect(BigInt(w.balanceNano)).toBe(6_000_000_000n - 5n * PRICE);
    expect(w.overdraftUsedNano).toBe('0');
    expect(w.state).toEqual({ action: 'resume', reason: 'credits:topped_up' });
    const after = await exportCalls('stopper', 1);
    expect(after.directives).toContainEqual(
      expect.objectContaining({ action: 'resume', scope: 'customer', reason: 'credits:topped_up' }),
    );
    const rows = await ledger('stopper');
    expect(rows.map((r) => r.entry_type)).toEqual([
      'grant',
      'drawdown',
      'drawdown',
      'drawdown',
      'top_up',
      'adjustment',
      'adjustment',
      'drawdown',
    ]);
    expect(rows[5]).toMatchObject({ bucket: top.body.grantId, note: 'overdraft repaid' });
    expect(rows[6]).toMatchObject({ bucket: 'overdraft', note: 'overdraft repaid' });
    expect(sum(rows.map((r) => r.amount_nano))).toBe(BigInt((await wallet('stopper')).balanceNano));
    const audit = await query(
      tg,
      "SELECT action, reason, actor FROM enforcement_events WHERE customer = 'stopper' ORDER BY at",
    );
    expect(audit).toContainEqual({ action: 'kill', reason: 'credits:exhausted', actor: 'tollgate' });
    expect(audit).toContainEqual({ action: 'credit_top_up', reason: 'credits:top_up', actor: 'ops-alice' });
  });

  it('an overdraft lets the balance go that far below zero before the hard stop', async () => {
    await grant('overdraft-co', '1');
    const a = await exportCalls('overdraft-co', 5); // 1.666666665: 0.666666665 into a 1.00 overdraft
    expect(a.directives.find((d) => d.scope === 'customer')).toBeUndefined();
    const b = await exportCalls('overdraft-co', 1); // 0.999999998 into it: still above −1
    expect(b.directives.find((d) => d.scope === 'customer')).toBeUndefined();
    const c = await exportCalls('overdraft-co', 1); // beyond −1: killed, and that call is over the limit
    expect(c.directives).toContainEqual(
      expect.objectContaining({ action: 'kill', reason: 'credits:exhausted' }),
    );
    await landed(tg, 'overdraft-co', 7);
    const over = await query(
      tg,
      "SELECT count() AS n FROM mcp_tool_calls WHERE customer = 'overdraft-co' AND decision = 'over_limit'",
    );
    expect(over).toEqual([{ n: '1' }]);
    const w = await wallet('overdraft-co');
    expect(BigInt(w.balanceNano)).toBe(1_000_000_000n - 7n * PRICE);
  });

  it("an operator's lift holds over the credits stop until the period ends; the wallet keeps paying", async () => {
    await grant('lifted-co', '0.5');
    const d = await exportCalls('lifted-co', 2);
    expect(d.directives).toContainEqual(
      expect.objectContaining({ action: 'kill', reason: 'credits:exhausted' }),
    );
    const lift = await api('/admin/enforcement/lift', KEYS.admin, {
      method: 'POST',
      body: JSON.stringify({ customer: 'lifted-co', scope: 'customer', note: 'pays by invoice this month' }),
    });
    expect(lift.status).toBe(200);
    const after = await exportCalls('lifted-co', 3);
    expect(after.directives.find((x) => x.scope === 'customer')).toMatchObject({
      action: 'resume',
      reason: 'operator:ops-alice',
    });
    expect(BigInt((await wallet('lifted-co')).balanceNano)).toBe(500_000_000n - 5n * PRICE);
    // a grant does not replace the operator's decision either
    const top = await grant('lifted-co', '0.1', {}, 'top-up');
    expect(top.body.wallet.state).toEqual({ action: 'resume', reason: 'operator:ops-alice' });
  });

  it('a grant that becomes effective later lifts the stop on the next export, audited', async () => {
    await grant('pending-co', '1', { effectiveAt: new Date(Date.now() + 1500).toISOString() });
    const early = await exportCalls('pending-co', 1); // nothing in force yet: the call draws the overdraft
    expect(early.directives).toContainEqual(
      expect.objectContaining({ action: 'kill', reason: 'credits:exhausted' }),
    );
    await new Promise((r) => setTimeout(r, 1600));
    const later = await exportCalls('pending-co', 1);
    expect(later.directives).toContainEqual(
      expect.objectContaining({ action: 'resume', scope: 'customer', reason: 'credits:topped_up' }),
    );
    const w = await wallet('pending-co');
    expect(BigInt(w.balanceNano)).toBe(1_000_000_000n - 2n * PRICE);
    expect(w.overdraftUsedNano).toBe('0'); // repaid from the grant once it was in force
    await tg.credits?.wallet('demo-mcp', 'pending-co');
    const deadline = Date.now() + 5000;
    let audit: Record<string, string>[] = [];
    while (Date.now() < deadline) {
      audit = await query(
        tg,
        "SELECT action, reason FROM enforcement_events WHERE customer = 'pending-co' AND actor = 'tollgate' ORDER BY at",
      );
      if (audit.length >= 2) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(audit).toEqual([
      { action: 'kill', reason: 'credits:exhausted' },
      { action: 'resume', reason: 'credits:topped_up' },
    ]);
  });

  it('without a hard stop the wallet only pays: calls continue into the overdraft', async () => {
    await grant('postpaid-co', '0.5');
    await exportCalls('postpaid-co', 2);
    const d = await exportCalls('postpaid-co', 2);
    expect(d.directives.find((x) => x.scope === 'customer')).toBeUndefined();
    expect(BigInt((await wallet('postpaid-co')).balanceNano)).toBe(500_000_000n - 4n * PRICE);
  });

  it('warns below the configured threshold, and a top-up lifts the warning', async () => {
    await grant('warn-co', '2');
    expect((await exportCalls('warn-co', 2)).directives.find((d) => d.scope === 'customer')).toBeUndefined();
    const low = await exportCalls('warn-co', 1); // 2 − 3 × 0.333333333 = 1.000000001: not below 1 yet
    expect(low.directives.find((d) => d.scope === 'customer')).toBeUndefined();
    const lower = await exportCalls('warn-co', 1);
    expect(lower.directives).toContainEqual(
      expect.objectContaining({ action: 'warn', scope: 'customer', reason: 'credits:low_balance' }),
    );
    const top = await grant('warn-co', '3', {}, 'top-up');
    expect(top.body.wallet.state).toEqual({ action: 'resume', reason: 'credits:topped_up' });
  });

  it('draws by priority, then earliest expiry; a future grant waits; an expired one is written off', async () => {
    const late = await grant('order-co', '1', { priority: 5 });
    const soon = await grant('order-co', '1', {
      priority: 5,
      expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
    });
    const first = await grant('order-co', '0.5', { priority: 1 });
    const future = await grant('order-co', '100', {
      effectiveAt: new Date(Date.now() + 86_400_000 * 3).toISOString(),
    });
    let w = await wallet('order-co');
    expect(w.pendingNano).toBe('100000000000');
    expect(w.balanceNano).toBe('2500000000');
    await exportCalls('order-co', 2); // 0.666666666: 0.5 from `first`, 0.166666666 from `soon`
    w = await wallet('order-co');
    const rem = Object.fromEntries(w.grants.map((g) => [g.grantId, g.remainingNano]));
    expect(rem).toEqual({
      [soon.body.grantId]: String(1_000_000_000n - (2n * PRICE - 500_000_000n)),
      [late.body.grantId]: '1000000000',
      [future.body.grantId]: '100000000000',
    });
    expect(rem[first.body.grantId]).toBeUndefined();

    // `short` expires 3 s after its grant: the call must be billed before that (a run beside two busy loops
    // took over 1.5 s, the window before, to export it, and the call drew on the other grant)
    const short = await grant('expiry-co', '2', { expiresAt: new Date(Date.now() + 3000).toISOString() });
    await grant('expiry-co', '1');
    await exportCalls('expiry-co', 1);
    w = await wallet('expiry-co');
    expect(Object.fromEntries(w.grants.map((g) => [g.grantId, g.remainingNano]))[short.body.grantId]).toBe(
      String(2_000_000_000n - PRICE),
    );
    // then its rest is written off once it has expired
    w = await waitFor('the expired grant written off', async () => {
      const now = await wallet('expiry-co');
      return now.balanceNano === '1000000000' ? now : undefined;
    });
    expect(w.balanceNano).toBe('1000000000');
    const rows = await ledger('expiry-co');
    expect(rows.find((r) => r.entry_type === 'expiry')).toMatchObject({
      bucket: short.body.grantId,
      amount_nano: String(-(2_000_000_000n - PRICE)),
    });
    expect(sum(rows.map((r) => r.amount_nano))).toBe(1_000_000_000n);
  });

  it('bad input: a clear error with a stable code, nothing granted, the attempt audited', async () => {
    const cases: [string, Record<string, unknown>, number, string][] = [
      ['nobody-we-know', { amount: '5' }, 404, 'API_UNKNOWN_CUSTOMER'],
      ['bad-co', { amount: '0' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '-5' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: 'five' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '1e9' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '0.0000000001' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '1000000.000000001' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '99999999999999999999999' }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: 5 }, 400, 'API_CREDIT_AMOUNT'], // a JSON number is a float, not money
      ['bad-co', { amount: 0.1 }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: null }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '1'.repeat(41) }, 400, 'API_CREDIT_AMOUNT'],
      ['bad-co', { amount: '5', currency: 'EUR' }, 400, 'API_CREDIT_CURRENCY'],
      ['bad-co', { amount: '5', currency: 'usd' }, 400, 'API_CREDIT_CURRENCY'],
      ['bad-co', { amount: '5', expiresAt: '2020-01-01' }, 400, 'API_CREDIT_DATES'],
      ['bad-co', { amount: '5', expiresAt: 'tomorrow' }, 400, 'API_CREDIT_DATES'],
      // a date before the epoch: the wallet keeps unsigned times, so it would be granted and never read again
      ['bad-co', { amount: '5', effectiveAt: '1969-12-31' }, 400, 'API_CREDIT_DATES'],
      ['bad-co', { amount: '5', effectiveAt: '1969-12-31T23:59:59Z' }, 400, 'API_CREDIT_DATES'],
      // days that do not exist and ISO's 24:00 are refused, not rolled over (as the analytics routes do)
      ['bad-co', { amount: '5', effectiveAt: '2027-02-30' }, 400, 'API_CREDIT_DATES'],
      ['bad-co', { amount: '5', expiresAt: '2099-04-31T00:00:00Z' }, 400, 'API_CREDIT_DATES'],
      ['bad-co', { amount: '5', expiresAt: '2099-01-01T24:00:00Z' }, 400, 'API_CREDIT_DATES'],
      [
        'bad-co',
        { amount: '5', effectiveAt: '2030-01-02', expiresAt: '2030-01-01' },
        400,
        'API_CREDIT_DATES',
      ],
      ['bad-co', { amount: '5', priority: -1 }, 400, 'API_CREDIT_PRIORITY'],
    ];
    for (const [customer, body, status, code] of cases) {
      const res = await api('/admin/credits/grant', KEYS.admin, {
        method: 'POST',
        body: JSON.stringify({ customer, currency: 'USD', ...body }),
      });
      const out = (await res.json()) as { error: { code: string; message: string } };
      expect([customer, body, res.status, out.error?.code]).toEqual([customer, body, status, code]);
      expect(out.error.message.length).toBeGreaterThan(10);
    }
    // nothing granted: no wallet came into being
    for (const c of ['bad-co', 'nobody-we-know']) {
      const res = await api(`/billing/credits?customer=${c}`, KEYS.admin);
      expect([res.status, await res.json()]).toEqual([200, { wallets: [] }]);
    }
    const audit = await query(
      tg,
      "SELECT customer, reason FROM enforcement_events WHERE action = 'credit_refused' AND customer IN ('bad-co', 'nobody-we-know') ORDER BY at",
    );
    expect(audit.map((a) => a.reason).sort()).toEqual(
      cases
        .map(
          ([, , , code]) =>
            ({
              API_UNKNOWN_CUSTOMER: 'credits:unknown_customer',
              API_CREDIT_AMOUNT: 'credits:bad_amount',
              API_CREDIT_CURRENCY: 'credits:wrong_currency',
              API_CREDIT_DATES: 'credits:bad_dates',
              API_CREDIT_PRIORITY: 'credits:bad_priority',
            })[code],
        )
        .sort(),
    );

    // a wallet over its cap: refused, the wallet unchanged
    await grant('bad-co', '1000000');
    const capped = [];
    for (let i = 0; i < 8; i++) capped.push((await grant('bad-co', '1000000')).status);
    expect(capped).toEqual([200, 200, 200, 200, 200, 200, 200, 400]);
    expect((await wallet('bad-co')).balanceNano).toBe(String(8_000_000n * 1_000_000_000n));

    // adjustments: unknown grant, below zero, not a wallet
    const adj = (body: Record<string, unknown>) =>
      api('/admin/credits/adjust', KEYS.admin, {
        method: 'POST',
        body: JSON.stringify({ customer: 'bad-co', currency: 'USD', note: 'fix', ...body }),
      });
    const e1 = await adj({ grantId: 'g999', amount: '-1' });
    expect([e1.status, ((await e1.json()) as { error: { code: string } }).error.code]).toEqual([
      404,
      'API_UNKNOWN_GRANT',
    ]);
    const g1 = (await wallet('bad-co')).grants[0]?.grantId;
    const e2 = await adj({ grantId: g1, amount: '-1000000.000000001' });
    expect(e2.status).toBe(400); // beyond the largest amount
    const e3 = await adj({ grantId: 'overdraft', amount: '1' });
    expect([e3.status, ((await e3.json()) as { error: { code: string } }).error.code]).toEqual([
      409,
      'API_CREDIT_OUT_OF_RANGE',
    ]);
    const ok = await adj({ grantId: g1, amount: '-0.25' });
    expect(ok.status).toBe(200);
    expect((await wallet('bad-co')).balanceNano).toBe(String(8_000_000n * 1_000_000_000n - 250_000_000n));
    const noWallet = await api('/admin/credits/adjust', KEYS.admin, {
      method: 'POST',
      body: JSON.stringify({ customer: 'globex', grantId: 'g1', amount: '1', currency: 'USD', note: 'x' }),
    });
    expect([noWallet.status, ((await noWallet.json()) as { error: { code: string } }).error.code]).toEqual([
      404,
      'API_NO_WALLET',
    ]);
  });

  it('the plan file caps the credit terms so the wallet script stays exact', () => {
    const plan = (credits: string) =>
      `currency: USD\nproducts:\n  p:\n    defaultPlan: a\n    plans:\n      a: { tools: { "*": {} }, credits: ${credits} }\n`;
    expect(
      loadPlanBook(plan('{ overdraft: "1000000", warnBelow: "2.5" }')).resolve('p', 'x')?.plan.credits,
    ).toEqual({
      hardStop: true,
      overdraft: 1_000_000_000_000_000n,
      warnBelow: 2_500_000_000n,
    });
    expect(() => loadPlanBook(plan('{ overdraft: "1000000.000000001" }'))).toThrow(
      /credits.overdraft: must be at most 1000000/,
    );
    expect(() => loadPlanBook(plan('{ overdraft: "-1" }'))).toThrow(/credits.overdraft/);
    expect(() => loadPlanBook(plan('{ hardstop: false }'))).toThrow(/credits/);
  });

  it('only admin keys grant; a customer key sees only its own wallet and ledger', async () => {
    const body = JSON.stringify({ customer: 'acme', amount: '1', currency: 'USD' });
    expect((await api('/admin/credits/grant', KEYS.finance, { method: 'POST', body })).status).toBe(403);
    expect((await api('/admin/credits/top-up', KEYS.acme, { method: 'POST', body })).status).toBe(403);
    expect((await api('/admin/credits/grant', undefined, { method: 'POST', body })).status).toBe(401);

    const own = (await (await api('/billing/credits', KEYS.acme)).json()) as { wallets: Wallet[] };
    expect(own.wallets.map((w) => (w as unknown as { customer: string }).customer)).toEqual(['acme']);
    expect((await api('/billing/credits?customer=stopper', KEYS.acme)).status).toBe(403);
    expect((await api('/billing/credits/ledger?customer=stopper', KEYS.acme)).status).toBe(403);
    const led = (await (await api('/billing/credits/ledger', KEYS.acme)).json()) as {
      entries: { customer: string }[];
    };
    expect(new Set(led.entries.map((e) => e.customer))).toEqual(new Set(['acme']));
    // an operator's name and note are theirs: blank for the customer, as on enforcement events
    const noted = await grant('acme', '0.5', { note: 'INTERNAL: goodwill, ticket 123' });
    expect(noted.status).toBe(200);
    await ledger('acme'); // its entry is in ClickHouse
    const mine = (await (await api('/billing/credits/ledger', KEYS.acme)).json()) as {
      entries: { grantId: string; actor: string; note: string }[];
    };
    const entry = mine.entries.find((e) => e.grantId === noted.body.grantId);
    expect(entry).toMatchObject({ actor: '', note: '' });
    const csvText = await (await api('/billing/credits/ledger?format=csv', KEYS.acme)).text();
    expect(csvText).not.toMatch(/INTERNAL|ops-alice/);
    const theirs = (await (await api('/billing/credits/ledger?customer=acme', KEYS.finance)).json()) as {
      entries: { grantId: string; actor: string; note: string }[];
    };
    expect(theirs.entries.find((e) => e.grantId === noted.body.grantId)).toMatchObject({
      actor: 'ops-alice',
      note: 'INTERNAL: goodwill, ticket 123',
    });
    // finance sees every wallet of the product
    const all = (await (await api('/billing/credits', KEYS.finance)).json()) as {
      wallets: { customer: string }[];
    };
    expect(all.wallets.map((w) => w.customer)).toEqual(
      expect.arrayContaining(['acme', 'stopper', 'warn-co']),
    );
  });

  it('balances and the ledger as CSV; a retried grant with the same idempotency key grants once', async () => {
    const a = await grant('globex', '2.5', { idempotencyKey: 'invoice-77' }, 'top-up');
    const b = await grant('globex', '2.5', { idempotencyKey: 'invoice-77' }, 'top-up');
    expect(b.body).toMatchObject({ grantId: a.body.grantId, replayed: true });
    expect(b.body.wallet.balanceNano).toBe('2500000000');
    // the same key asking for something else is a conflict, not the first grant answered again
    for (const [amount, extra, kind] of [
      ['250', {}, 'top-up'],
      ['2.5', {}, 'grant'],
      ['2.5', { priority: 5 }, 'top-up'],
      ['2.5', { expiresAt: '2099-01-01' }, 'top-up'],
    ] as const) {
      const c = await grant('globex', amount, { idempotencyKey: 'invoice-77', ...extra }, kind);
      expect([amount, extra, kind, c.status, c.body.error?.code]).toEqual([
        amount,
        extra,
        kind,
        409,
        'API_IDEMPOTENCY_CONFLICT',
      ]);
    }
    expect((await wallet('globex')).balanceNano).toBe('2500000000');

    const csv = await api('/billing/credits?customer=globex&format=csv', KEYS.finance);
    expect(csv.headers.get('content-type')).toMatch(/^text\/csv/);
    const lines = (await csv.text()).trim().split('\r\n');
    expect(lines[0]).toBe(
      'customer,currency,balance,balanceNano,grantId,kind,remaining,remainingNano,amount,amountNano,effectiveAt,expiresAt,priority',
    );
    expect(lines[1]).toMatch(
      new RegExp(`^globex,USD,2.50,2500000000,${a.body.grantId},top_up,2.50,2500000000,`),
    );
    const led = await api('/billing/credits/ledger?customer=globex', KEYS.finance, {
      headers: { accept: 'text/csv' },
    });
    const rows = (await led.text()).trim().split('\r\n');
    expect(rows).toHaveLength(2);
    expect(rows[1]).toMatch(/^globex,1,\S+,top_up,g1,2.50,2500000000,USD,,0,ops-alice,$/);
  });

  it('a retried adjustment with the same idempotency key adjusts once, also sent 8 times at once', async () => {
    const g = await grant('adjust-co', '10');
    const adjust = async (
      amount: string,
      idempotencyKey: string,
      grantId = g.body.grantId,
      note = 'refund',
    ) => {
      const res = await api('/admin/credits/adjust', KEYS.admin, {
        method: 'POST',
        body: JSON.stringify({
          customer: 'adjust-co',
          grantId,
          amount,
          currency: 'USD',
          note,
          idempotencyKey,
        }),
      });
      return {
        status: res.status,
        body: (await res.json()) as { replayed?: boolean; wallet?: Wallet; error?: { code: string } },
      };
    };
    const first = await adjust('-2.50', 'credit-note-9');
    expect(first).toMatchObject({ status: 200, body: { replayed: false } });
    expect((await adjust('-2.50', 'credit-note-9')).body).toMatchObject({ replayed: true });
    const burst = await Promise.all(Array.from({ length: 8 }, () => adjust('-1', 'credit-note-10')));
    expect(burst.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(burst.filter((r) => r.body.replayed === false)).toHaveLength(1);
    expect((await wallet('adjust-co')).balanceNano).toBe('6500000000');
    // the key asking for something else (another amount, bucket or note; a grant's key) is a conflict
    for (const [amount, key, grantId, note] of [
      ['-2.49', 'credit-note-9', g.body.grantId, 'refund'],
      ['-2.50', 'credit-note-9', 'overdraft', 'refund'],
      ['-2.50', 'credit-note-9', g.body.grantId, 'other'],
    ] as const) {
      const r = await adjust(amount, key, grantId, note);
      expect([amount, grantId, note, r.status, r.body.error?.code]).toEqual([
        amount,
        grantId,
        note,
        409,
        'API_IDEMPOTENCY_CONFLICT',
      ]);
    }
    await grant('adjust-co', '1', { idempotencyKey: 'po-1' });
    expect((await adjust('-1', 'po-1')).status).toBe(409);
    expect((await grant('adjust-co', '-1'.slice(1), { idempotencyKey: 'credit-note-9' })).status).toBe(409);
    expect((await wallet('adjust-co')).balanceNano).toBe('7500000000');
  });

  it('concurrent exports and top-ups never lose an update (real redis-server)', async () => {
    await grant('race-co', '100');
    const exports = 40;
    const perExport = 25;
    const topUps = 30;
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < exports; i++) work.push(exportCalls('race-co', perExport));
    for (let i = 0; i < topUps; i++) work.push(grant('race-co', '0.000000007', { note: `t${i}` }, 'top-up'));
    const results = await Promise.all(work);
    for (const r of results.slice(exports)) expect((r as { status: number }).status).toBe(200);
    const calls = BigInt(exports * perExport);
    const expected = 100_000_000_000n + BigInt(topUps) * 7n - calls * PRICE;
    await landed(tg, 'race-co', exports * perExport);
    const w = await wallet('race-co');
    expect(BigInt(w.balanceNano)).toBe(expected);
    const rows = await ledger('race-co');
    expect(rows.map((r) => Number(r.seq))).toEqual(rows.map((_r, i) => i + 1)); // no gap, no duplicate
    expect(sum(rows.map((r) => r.amount_nano))).toBe(expected);
    const drawn = rows.filter((r) => r.entry_type === 'drawdown').flatMap((r) => r.event_ids);
    expect(new Set(drawn).size).toBe(exports * perExport);
    expect(rows.filter((r) => r.entry_type === 'top_up')).toHaveLength(topUps);
    const inv = (await (await api('/billing/invoices/preview?customer=race-co', KEYS.admin)).json()) as {
      credits: {
        appliedNano: string;
        grantsDrawnNano: string;
        overdraftDrawnNano: string;
        overdraftRepaidNano: string;
        reconciliation: { reconciled: boolean };
      };
    };
    // every call drawn in full; the calls beyond the wallet drew the overdraft bucket, and the top-ups that
    // landed meanwhile repaid some of it: applied is all the grants held (what they paid), no more
    const granted = 100_000_000_000n + BigInt(topUps) * 7n;
    expect(inv.credits).toMatchObject({
      appliedNano: String(granted),
      reconciliation: { drawnNano: String(calls * PRICE), reconciled: true },
    });
    expect(BigInt(inv.credits.grantsDrawnNano) + BigInt(inv.credits.overdraftDrawnNano)).toBe(calls * PRICE);
    expect(BigInt(inv.credits.grantsDrawnNano) + BigInt(inv.credits.overdraftRepaidNano)).toBe(granted);
  });

  it('the CLI grants and reads balances through the API', async () => {
    const env = { ...process.env, TOLLGATE_API_KEY: KEYS.admin };
    const { stdout } = await execFileAsync(
      process.execPath,
      [
        CLI,
        'admin',
        'credits',
        'grant',
        '--customer',
        'globex',
        '--amount',
        '1.25',
        '--currency',
        'USD',
        '--note',
        'cli',
        '--api-url',
        tg.apiUrl as string,
      ],
      { env },
    );
    expect(JSON.parse(stdout)).toMatchObject({
      replayed: false,
      wallet: { customer: 'globex', balance: '3.75' },
    });
    const bal = await execFileAsync(
      process.execPath,
      [
        CLI,
        'admin',
        'credits',
        'balance',
        '--customer',
        'globex',
        '--format',
        'csv',
        '--api-url',
        tg.apiUrl as string,
      ],
      { env },
    );
    expect(bal.stdout.split('\r\n')[1]).toMatch(/^globex,USD,3.75,/);
    const bad = await execFileAsync(
      process.execPath,
      [
        CLI,
        'admin',
        'credits',
        'top-up',
        '--customer',
        'globex',
        '--amount',
        '-1',
        '--currency',
        'USD',
        '--api-url',
        tg.apiUrl as string,
      ],
      { env },
    ).catch((e: { code: number; stderr: string }) => e);
    expect((bad as { code: number }).code).toBe(1);
    expect((bad as { stderr: string }).stderr).toMatch(/400 .*API_CREDIT_AMOUNT/);
  });
});
