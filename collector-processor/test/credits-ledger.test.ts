import type { ClickHouseClient } from '@clickhouse/client';
import { CREDIT_LEDGER_COLUMNS, creditKeys, customerTag, type RatedCall } from '@tollgate/contracts';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/app.js';
import { CreditLedger } from '../src/credits/ledger.js';
import { CreditWallets } from '../src/credits/wallets.js';
import type { EnforcementLog } from '../src/enforcement/events.js';
import { freePort, type PrivateRedis, startPrivateRedis } from '../src/redis/private-redis.js';
import { query, startTestTollgate, type TestTollgate } from './support/harness.js';

/**
 * The credit ledger's way from Redis to ClickHouse (the outbox) and the drawdown's place in enforce.lua's
 * exactly-once: entries survive a ClickHouse outage, a drain repeated after a crash writes nothing twice,
 * two processors draining one outbox lose nothing, and a replayed spool record draws nothing twice.
 */

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: p
    plans: { p: { tools: { "*": { price: { perCall: "0.25" } } }, marginGuard: { enabled: false } } }
    customers: { replay-co: {}, lost-co: {} }
`;

let tg: TestTollgate;
let redis: PrivateRedis;
let client: Redis;
beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
  redis = await startPrivateRedis();
  client = new Redis(redis.url);
});
afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
  await tg?.cleanup();
});

const log = createLogger('silent');
const line = (seq: number, amount: number, note = '') =>
  [seq, Date.now(), 'adjustment', 'g1', amount, '', '', '', 'test', note].join('\t');

async function rows(customer: string) {
  return query<{ seq: string; amount_nano: string }>(
    tg,
    'SELECT seq, amount_nano FROM credit_ledger FINAL WHERE customer = {c:String} ORDER BY seq',
    { c: customer },
  );
}

describe('credit ledger outbox', () => {
  it('the table matches the contract column for column (the writer is typed by it)', async () => {
    const cols = await query<{ name: string; type: string }>(tg, 'DESCRIBE TABLE credit_ledger');
    expect(cols.map((c) => [c.name, c.type])).toEqual(CREDIT_LEDGER_COLUMNS.map(([n, t]) => [n, t]));
  });

  it('keeps entries while ClickHouse fails, writes each once however often a drain is repeated', async () => {
    const outbox = creditKeys.outbox(customerTag('demo-mcp', 'outbox-co'));
    await client.rpush(outbox, line(1, 100), line(2, -30), line(3, 5));
    const down = {
      insert: async () => Promise.reject(new Error('ClickHouse is down')),
    } as unknown as ClickHouseClient;
    const failing = new CreditLedger(client, down, () => 'USD', log, 10_000);
    failing.notify('demo-mcp', 'outbox-co');
    await failing.drain();
    expect(await client.llen(outbox)).toBe(3);
    await failing.close();

    const ledger = new CreditLedger(client, tg.clickhouse.client, () => 'USD', log, 10_000);
    ledger.notify('demo-mcp', 'outbox-co');
    await ledger.drain();
    expect(await client.llen(outbox)).toBe(0);
    // a crash after the insert, before the trim: the same lines are drained again, with a new one
    await client.rpush(outbox, line(1, 100), line(2, -30), line(3, 5), line(4, 1));
    ledger.notify('demo-mcp', 'outbox-co');
    await ledger.drain();
    expect(await rows('outbox-co')).toEqual([
      { seq: '1', amount_nano: '100' },
      { seq: '2', amount_nano: '-30' },
      { seq: '3', amount_nano: '5' },
      { seq: '4', amount_nano: '1' },
    ]);
    await ledger.close();
  });

  it('two processors draining one outbox while it grows lose nothing and duplicate nothing', async () => {
    const outbox = creditKeys.outbox(customerTag('demo-mcp', 'shared-co'));
    const a = new CreditLedger(client, tg.clickhouse.client, () => 'USD', log, 5);
    const b = new CreditLedger(client, tg.clickhouse.client, () => 'USD', log, 5);
    let seq = 0;
    for (let round = 0; round < 20; round++) {
      const batch = Array.from({ length: 7 }, () => line(++seq, seq));
      await client.rpush(outbox, ...batch);
      a.notify('demo-mcp', 'shared-co');
      b.notify('demo-mcp', 'shared-co');
      if (round % 3 === 0) await Promise.all([a.drain(), b.drain()]);
    }
    await Promise.all([a.close(), b.close()]);
    expect(await client.llen(outbox)).toBe(0);
    const got = await rows('shared-co');
    expect(got.map((r) => Number(r.seq))).toEqual(Array.from({ length: seq }, (_, i) => i + 1));
    expect(got.every((r) => r.amount_nano === r.seq)).toBe(true);
  });

  it('a wallet whose Redis keys were lost numbers on after its ledger: no entry in the ledger is replaced', async () => {
    // The ledger table keeps one row per (product, customer, seq). A wallet re-created after a Redis without
    // its data started again at seq 1 and grant g1: its entries replaced the lost wallet's in ClickHouse.
    const customer = 'lost-co';
    const grant = (amount: string) =>
      tg.credits!.grant({
        product: 'demo-mcp',
        customer,
        kind: 'grant',
        amount,
        currency: 'USD',
        actor: 'test',
      });
    const landed = async (n: number) => {
      for (let i = 0; i < 200 && (await rows(customer)).length < n; i++)
        await new Promise((r) => setTimeout(r, 50));
      return rows(customer);
    };
    expect((await grant('5')).grantId).toBe('g1');
    expect((await grant('7')).grantId).toBe('g2');
    expect(await landed(2)).toHaveLength(2);

    const tag = customerTag('demo-mcp', customer);
    await tg.redis!.del(creditKeys.wallet(tag), creditKeys.outbox(tag), creditKeys.idempotency(tag));
    expect((await grant('3')).grantId).toBe('g3');
    await landed(3);
    expect(await rows(customer)).toEqual([
      { seq: '1', amount_nano: '5000000000' },
      { seq: '2', amount_nano: '7000000000' },
      { seq: '3', amount_nano: '3000000000' },
    ]);
    // and the new wallet holds only what was granted since
    expect((await tg.credits!.wallet('demo-mcp', customer))?.balanceNano).toBe(3_000_000_000n);
  });

  it('Redis unreachable: a grant is a retryable 503 (API_UNAVAILABLE), nothing granted', async () => {
    const dead = new Redis({
      port: await freePort(),
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
    dead.on('error', () => {});
    const events = { record() {}, flush: async () => {}, close: async () => {} } as unknown as EnforcementLog;
    const ledger = new CreditLedger(dead, tg.clickhouse.client, () => 'USD', log, 10_000);
    const wallets = new CreditWallets(dead, tg.plans!, ledger, events, tg.clickhouse.client, log);
    const err = await wallets
      .grant({
        product: 'demo-mcp',
        customer: 'replay-co',
        kind: 'grant',
        amount: '1',
        currency: 'USD',
        actor: 't',
      })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'ApiError', code: 'API_UNAVAILABLE', status: 503 });
    await ledger.close();
    dead.disconnect();
  });

  it('a replayed spool record draws the wallet once (the applied marker covers the drawdown)', async () => {
    await tg.credits!.grant({
      product: 'demo-mcp',
      customer: 'replay-co',
      kind: 'grant',
      amount: '10',
      currency: 'USD',
      actor: 'test',
    });
    const now = Date.now();
    const calls: RatedCall[] = Array.from({ length: 3 }, (_, i) => ({
      eventId: `${'a'.repeat(46)}${i}${i}`,
      traceId: 'a'.repeat(32),
      spanId: `${'b'.repeat(14)}${i}${i}`,
      product: 'demo-mcp',
      customer: 'replay-co',
      agent: 'agent',
      sessionId: '',
      tool: 'search',
      transport: 'pipe',
      source: 'span',
      status: 'ok',
      errorType: '',
      protocolVersion: '',
      instanceId: '',
      startUnixUs: (now - 1000) * 1000,
      durationUs: 10,
      inputTokens: 0,
      outputTokens: 0,
      priceNano: 250_000_000n,
      costNano: 0n,
      priceCallNano: 250_000_000n,
      priceInputNano: 0n,
      priceOutputNano: 0n,
      priceDurationNano: 0n,
      pricePerSecondNano: 0n,
      inputTokensPriced: 0,
      outputTokensPriced: 0,
      usageLines: [],
      usageQuantityMicro: [],
      usageUnitNano: [],
      usagePriceNano: [],
      usageCostNano: [],
      tier: 0,
      planId: 'p',
      planVersion: tg.plans!.current.version,
      currency: 'USD',
      decision: 'billed',
      period: new Date(now - 1000).toISOString().slice(0, 7),
      receivedAtMs: now,
      sessionRule: '',
    }));
    const enforcer = tg.pipeline!.enforcer!;
    await enforcer.apply('demo-mcp', 'replayed-record', calls);
    await enforcer.apply(
      'demo-mcp',
      'replayed-record',
      calls.map((c) => ({ ...c })),
    );
    const w = await tg.credits!.wallet('demo-mcp', 'replay-co');
    expect(w?.balanceNano).toBe(10_000_000_000n - 750_000_000n);
  });
});
