import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Directive, OVERDRAFT_FLOOR_NANO } from '@tollgate/contracts';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CREDITS_LUA } from '../src/credits/wallets.js';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { type PrivateRedis, startPrivateRedis } from '../src/redis/private-redis.js';
import { creditLedger, landed } from './support/credit-ledger.js';
import { DEV_INGEST_KEY, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * Prepaid credits are exact beyond 2^53 nano-units (9,007,199 currency units; a few hundred dollars in IDR).
 * credits.lua works in Lua's doubles; a call's price may be up to 2^63 − 1 and the overdraft bucket has no
 * cap. Before, both were rounded: five calls of 3,000,000.000000001 into the overdraft left the wallet's
 * balance 1 nano-unit off its ledger, and one call of 9,223,372,036.854775807 was drawn as …808 (the invoice
 * preview's reconciliation failed, the balance 127 nano-units off). The overdraft bucket now stops at
 * −(2^63 − 1), where the customer is killed whatever hardStop says (docs/enforcement.md#prepaid-credits).
 */

const INT64_MAX = 2n ** 63n - 1n;
const BIG = 3_000_000_000_000_001n; // 3,000,000.000000001
const KEYS = { admin: 'tg_test_admin' };
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: od
    plans:
      od:
        credits: { hardStop: false }
        tools:
          "*": { price: { perCall: "3000000.000000001" } }
          huge: { price: { perCall: "9223372036.854775807" } }
        marginGuard: { enabled: false }
      stop:
        tools:
          "*": { price: { perCall: "9223372036.854775807" } }
        marginGuard: { enabled: false }
    customers:
      od1: {}
      w3: { plan: stop }
      floor-co: {}
`;

let tg: TestTollgate;
let redis: PrivateRedis;
let client: Redis;
beforeAll(async () => {
  const dir = tempDir();
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
apiKeys:
  - { name: ops, sha256: ${sha256Hex(KEYS.admin)}, role: admin, products: [demo-mcp] }
`,
  );
  redis = await startPrivateRedis();
  client = new Redis(redis.url);
  tg = await startTestTollgate({ '--data-dir': dir, '--config': configFile }, PLANS);
});
afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
  await tg?.cleanup();
});

/** credits.lua's arithmetic, run in a real redis-server: ARGV[1] an operation, then its operands. */
const ARITH = `${CREDITS_LUA}
local op, a, b = ARGV[1], ARGV[2], ARGV[3]
local P = credits_m_parse
if op == 'add' then return credits_m_str(credits_m_add(P(a), P(b))) end
if op == 'sub' then return credits_m_str(credits_m_sub(P(a), P(b))) end
if op == 'neg' then return credits_m_str(credits_m_neg(P(a))) end
if op == 'str' then return credits_m_str(P(a)) end
if op == 'kind' then return type(P(a)) end
if op == 'lt' then return credits_m_lt(P(a), P(b)) and 1 or 0 end
if op == 'le' then return credits_m_le(P(a), P(b)) and 1 or 0 end
if op == 'floor' then return credits_m_str(CREDITS_OD_FLOOR) end
if op == 'halves' then
  local lo, hi = struct.unpack('<I4i4', a)
  return credits_m_str(credits_m_from_halves(lo, hi))
end
return redis.error_reply('op')
`;
const lua = (op: string, a: string | Buffer, b = '0') =>
  client.eval(ARITH, 0, op, a, b) as Promise<string | number>;
const int64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(v);
  return b;
};

describe("credits.lua's money arithmetic", () => {
  const values = [
    0n,
    1n,
    -1n,
    999_999_999n,
    1_000_000_000n,
    -999_999_999n,
    -1_000_000_000n,
    -1_000_000_001n,
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 53n + 1n,
    -(2n ** 53n) - 1n,
    -(2n ** 53n),
    9_007_198_999_999_999n,
    9_007_199_000_000_000n,
    -9_007_199_000_000_000n,
    14_999_999_000_000_005n,
    -14_999_999_000_000_005n,
    INT64_MAX,
    -INT64_MAX,
    -INT64_MAX - 1n,
    2n * INT64_MAX,
    -2n * INT64_MAX,
  ];

  it('reads and writes decimal text exactly, a plain number only below 2^53', async () => {
    for (const v of values) {
      expect(await lua('str', v.toString())).toBe(v.toString());
      const small = v < 2n ** 53n && v > -(2n ** 53n);
      expect(await lua('kind', v.toString()), v.toString()).toBe(small ? 'number' : 'table');
    }
    expect(await lua('str', '-0')).toBe('0');
    expect(await lua('str', '000000000000000000000123')).toBe('123');
  });

  it('adds and subtracts with carry and borrow across 10^9 and 2^53, negative values included', async () => {
    const pairs: [bigint, bigint][] = [];
    for (const a of values) for (const b of values) pairs.push([a, b]);
    pairs.push(
      [2n ** 53n - 1n, 1n],
      [999_999_999n, 2n ** 53n + 1n],
      [-(2n ** 53n), -1n],
      [9_007_198_999_999_999n, 1n],
      [-9_007_199_000_000_000n, 1n],
      [-14_999_999_000_000_005n, 1_000_000_000n],
      [-INT64_MAX, INT64_MAX],
      [INT64_MAX, -1n],
      [2n ** 62n, 2n ** 62n - 1n],
    );
    for (const [a, b] of pairs) {
      expect(await lua('add', a.toString(), b.toString()), `${a} + ${b}`).toBe((a + b).toString());
      expect(await lua('sub', a.toString(), b.toString()), `${a} - ${b}`).toBe((a - b).toString());
    }
    for (const a of values) expect(await lua('neg', a.toString())).toBe((-a).toString());
  });

  it('compares exactly, also values a double cannot tell apart', async () => {
    for (const a of values)
      for (const b of values) {
        expect(await lua('lt', a.toString(), b.toString()), `${a} < ${b}`).toBe(a < b ? 1 : 0);
        expect(await lua('le', a.toString(), b.toString()), `${a} <= ${b}`).toBe(a <= b ? 1 : 0);
      }
    expect(await lua('lt', (2n ** 53n).toString(), (2n ** 53n + 1n).toString())).toBe(1);
    expect(await lua('lt', (-INT64_MAX - 1n).toString(), (-INT64_MAX).toString())).toBe(1);
  });

  it("the overdraft bucket's floor is the contract's", async () => {
    expect(OVERDRAFT_FLOOR_NANO).toBe(-INT64_MAX);
    expect(await lua('floor', '0')).toBe(OVERDRAFT_FLOOR_NANO.toString());
  });

  it("reads an Int64 from enforce.lua's binary calls exactly (its two halves)", async () => {
    for (const v of [
      0n,
      1n,
      -1n,
      2n ** 32n,
      2n ** 53n,
      2n ** 53n + 1n,
      BIG,
      INT64_MAX,
      -INT64_MAX - 1n,
      -(2n ** 53n) - 3n,
    ])
      expect(await lua('halves', int64(v)), v.toString()).toBe(v.toString());
  });
});

// --- end to end: a real Tollgate ---

const api = (path: string, init: RequestInit = {}) =>
  fetch(`${tg.apiUrl}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${KEYS.admin}`, 'content-type': 'application/json', ...init.headers },
  });

async function topUp(customer: string, amount: string) {
  const res = await api('/admin/credits/top-up', {
    method: 'POST',
    body: JSON.stringify({ customer, amount, currency: 'USD' }),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as { grantId: string; wallet: Wallet };
}

interface Wallet {
  balanceNano: string;
  overdraftUsedNano: string;
  state: { action: string; reason: string } | null;
}

async function wallet(customer: string): Promise<Wallet> {
  const res = await api(`/billing/credits?customer=${customer}`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { wallets: Wallet[] }).wallets[0] as Wallet;
}

async function send(customer: string, tool = 'search'): Promise<Directive[]> {
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf([toolSpan({ customer, tool })], { 'service.name': 'mcp' })),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { tollgate?: { directives: Directive[] } }).tollgate?.directives ?? [];
}

const ledger = (customer: string) => creditLedger(tg, customer);

interface Invoice {
  totals: { amountNano: string };
  credits: {
    appliedNano: string;
    amountDueNano: string;
    overdraftDrawnNano: string;
    undrawnCalls: number;
    reconciliation: {
      reconciled: boolean;
      mismatchedCalls: number;
      drawnNano: string;
      callsPriceNano: string;
    };
  };
}

async function invoice(customer: string): Promise<Invoice> {
  const res = await api(`/billing/invoices/preview?customer=${customer}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Invoice;
}

const sum = (xs: readonly (string | bigint)[]) => xs.reduce<bigint>((a, x) => a + BigInt(x), 0n);

describe('prepaid credits beyond 2^53 nano-units, end to end', () => {
  it('an overdraft past 2^53 is exact: balance, ledger and invoice agree (5 calls of 3,000,000.000000001)', async () => {
    await topUp('od1', '1');
    for (let i = 0; i < 5; i++) expect(await send('od1')).toEqual([]);
    await landed(tg, 'od1', 5);
    const owed = 5n * BIG - 1_000_000_000n; // 14,999,999,000,000,005
    const w = await wallet('od1');
    expect(w.balanceNano).toBe((-owed).toString());
    expect(w.overdraftUsedNano).toBe(owed.toString());
    const rows = await ledger('od1');
    expect(sum(rows.map((r) => r.amount_nano))).toBe(-owed);
    const inv = await invoice('od1');
    expect(inv.totals.amountNano).toBe((5n * BIG).toString());
    expect(inv.credits.overdraftDrawnNano).toBe(owed.toString());
    expect(inv.credits.reconciliation).toMatchObject({ reconciled: true, mismatchedCalls: 0 });

    // a top-up repays the overdraft from the exact value
    await topUp('od1', '2');
    expect((await wallet('od1')).balanceNano).toBe((2_000_000_000n - owed).toString());
    expect(sum((await ledger('od1')).map((r) => r.amount_nano))).toBe(2_000_000_000n - owed);
  });

  it('a call priced 2^63 − 1 nano-units is drawn to the nano-unit', async () => {
    const g = await topUp('w3', '10');
    const directives = await send('w3', 'huge');
    expect(directives.find((d) => d.scope === 'customer')).toMatchObject({
      action: 'kill',
      reason: 'credits:exhausted',
    });
    await landed(tg, 'w3', 1);
    const rows = await ledger('w3');
    const draws = rows.filter((r) => r.entry_type === 'drawdown');
    expect(draws.map((r) => [r.bucket, r.amount_nano, r.event_amounts_nano])).toEqual([
      [g.grantId, '-10000000000', ['10000000000']],
      ['overdraft', (-(INT64_MAX - 10_000_000_000n)).toString(), [(INT64_MAX - 10_000_000_000n).toString()]],
    ]);
    const balance = 10_000_000_000n - INT64_MAX;
    expect((await wallet('w3')).balanceNano).toBe(balance.toString());
    expect(sum(rows.map((r) => r.amount_nano))).toBe(balance);
    const inv = await invoice('w3');
    expect(inv.credits.reconciliation).toMatchObject({
      reconciled: true,
      mismatchedCalls: 0,
      drawnNano: INT64_MAX.toString(),
      callsPriceNano: INT64_MAX.toString(),
    });
    expect(inv.credits.appliedNano).toBe('10000000000');
    expect(inv.credits.amountDueNano).toBe((INT64_MAX - 10_000_000_000n).toString());
  });

  it('the overdraft bucket stops at −(2^63 − 1): the customer is killed, the rest stays due; a top-up lifts it', async () => {
    await topUp('floor-co', '1');
    // hardStop is off: the first call only borrows
    expect(await send('floor-co', 'huge')).toEqual([]);
    expect((await wallet('floor-co')).balanceNano).toBe((1_000_000_000n - INT64_MAX).toString());
    // the second would take the bucket past an Int64: it draws what is left to the floor and the customer
    // is killed although hardStop is off
    const second = await send('floor-co', 'huge');
    expect(second.find((d) => d.scope === 'customer')).toMatchObject({
      action: 'kill',
      reason: 'credits:exhausted',
    });
    // a third call happened anyway: counted, drawn from nothing
    await send('floor-co');
    await landed(tg, 'floor-co', 3);
    const w = await wallet('floor-co');
    expect(w.balanceNano).toBe(OVERDRAFT_FLOOR_NANO.toString());
    expect(w.state).toMatchObject({ action: 'kill', reason: 'credits:exhausted' });
    const rows = await ledger('floor-co');
    const draws = rows.filter((r) => r.entry_type === 'drawdown');
    expect(draws.map((r) => [r.bucket, r.amount_nano])).toEqual([
      [expect.stringMatching(/^g\d+$/), '-1000000000'],
      ['overdraft', (-(INT64_MAX - 1_000_000_000n)).toString()],
      ['overdraft', '-1000000000'],
    ]);
    expect(sum(rows.map((r) => r.amount_nano))).toBe(-INT64_MAX);
    // the short-drawn call and the undrawn one show on the invoice, whose amount due is every price
    const inv = await invoice('floor-co');
    expect(inv.credits.reconciliation).toMatchObject({ reconciled: false, mismatchedCalls: 1 });
    expect(inv.credits.undrawnCalls).toBe(1);
    expect(BigInt(inv.credits.amountDueNano)).toBe(BigInt(inv.totals.amountNano) - 1_000_000_000n);
    // an adjustment of the bucket cannot take it off the floor (it must stay within the wallet cap), and says why
    const adjust = await api('/admin/credits/adjust', {
      method: 'POST',
      body: JSON.stringify({
        customer: 'floor-co',
        grantId: 'overdraft',
        amount: '1000',
        currency: 'USD',
        note: 'x',
      }),
    });
    expect(adjust.status).toBe(409);
    const refusal = ((await adjust.json()) as { error: { code: string; message: string } }).error;
    expect(refusal.code).toBe('API_CREDIT_OUT_OF_RANGE');
    expect(refusal.message).toContain(`holds ${OVERDRAFT_FLOOR_NANO} nano-units`);
    // a top-up repays some: the bucket leaves the floor and the kill is lifted
    const after = (await topUp('floor-co', '1')).wallet;
    expect(after.balanceNano).toBe((1_000_000_000n - INT64_MAX).toString());
    expect(after.state).toMatchObject({ action: 'resume', reason: 'credits:topped_up' });
  });
});
