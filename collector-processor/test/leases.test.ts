import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ATTR_TOLLGATE_LEASE_ID,
  ATTR_TOLLGATE_LEASE_RESERVED,
  customerTag,
  type LeaseGrant,
  type LeaseRequest,
  type LeaseResult,
  redisKeys,
} from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dayOf } from '../src/enforcement/periods.js';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * Quota leases against a real Tollgate and a real redis-server: grants out of what the hard limits leave,
 * settlement of leased calls (counted once, at their real price), release, expiry (TTL), bad input.
 */

const GHOST_KEY = 'tg_test_ghost_key';
const TTL_MS = 2000;
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*": { price: { perCall: "0.1" }, cost: { perCall: "0.01" } }
          tokens: { price: { perCall: "0.1", perOutputToken: "0.001" } }
          tiered: { price: { perCallTiers: [ { upTo: 2, perCall: "0.3" }, { perCall: "0.2" } ] } }
        marginGuard: { enabled: false }
    customers:
      daily: { overrides: { limits: { callsPerDay: 10 } } }
      parallel: { overrides: { limits: { callsPerDay: 10 } } }
      expiring: { overrides: { limits: { callsPerDay: 10 } } }
      released: { overrides: { limits: { callsPerDay: 10 } } }
      mixed: { overrides: { limits: { callsPerDay: 10 } } }
      piggy: { overrides: { limits: { callsPerDay: 10 } } }
      piggy-kong: { overrides: { limits: { callsPerDay: 10 } } }
      killed-co: { overrides: { limits: { callsPerDay: 10 } } }
      forged: { overrides: { limits: { callsPerDay: 10 } } }
      wallet: { overrides: { limits: { spendPerPeriod: "1" } } }
      wallet2: { overrides: { limits: { spendPerPeriod: "1" } } }
      scarce: { overrides: { limits: { callsPerToolPerPeriod: { rare: 3 } } } }
      sessions: { overrides: { limits: { spendPerSession: "0.3" } } }
      over-a: { overrides: { limits: { spendPerPeriod: "0.7" } } }
      over-b: { overrides: { limits: { spendPerPeriod: "0.7" } } }
      whole-co: { overrides: { limits: { spendPerPeriod: "0.7" } } }
      open-co: {}
`;

let tg: TestTollgate;
const day = () => dayOf(Date.now());
const period = () => day().slice(0, 7);

beforeAll(async () => {
  const dir = tempDir();
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
  - { name: ghost, sha256: ${sha256Hex(GHOST_KEY)}, product: ghost }
`,
  );
  tg = await startTestTollgate(
    { '--data-dir': dir, '--config': configFile, '--lease-ttl': String(TTL_MS) },
    PLANS,
  );
});
afterAll(async () => {
  await tg?.cleanup();
});

async function lease(
  instanceId: string,
  requests: Partial<LeaseRequest>[],
  key = DEV_INGEST_KEY,
): Promise<LeaseResult[]> {
  const res = await fetch(`${tg.otlpUrl}/v1/leases`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ instanceId, requests }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { results: LeaseResult[] }).results;
}

async function grant(instanceId: string, r: Partial<LeaseRequest>): Promise<LeaseGrant> {
  const [out] = await lease(instanceId, [{ op: 'grant', ...r }]);
  if (!out?.ok) throw new Error(`lease refused: ${JSON.stringify(out)}`);
  return out.lease;
}

/** Exports `n` calls of one instance, taken from a lease (or not, without `leaseId`). */
async function exportCalls(
  instanceId: string,
  customer: string,
  n: number,
  o: {
    leaseId?: string;
    reserved?: string;
    tool?: string;
    session?: string;
    outputTokens?: number;
    /** Kong's root span name: the call comes from the Kong plugin. */
    name?: string;
  } = {},
) {
  const spans = Array.from({ length: n }, () =>
    toolSpan({
      ...(o.name ? { name: o.name } : {}),
      customer,
      tool: o.tool ?? 'search',
      attrs: {
        'mcp.session.id': o.session ?? `${customer}-s1`,
        'gen_ai.usage.input_tokens': 0,
        'gen_ai.usage.output_tokens': o.outputTokens ?? 0,
        ...(o.leaseId
          ? { [ATTR_TOLLGATE_LEASE_ID]: o.leaseId, [ATTR_TOLLGATE_LEASE_RESERVED]: o.reserved ?? '0' }
          : {}),
      },
      startMs: Date.now() - 200,
    }),
  );
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body: JSON.stringify(exportOf(spans, { 'service.name': 'mcp', 'service.instance.id': instanceId })),
  });
  expect(res.status).toBe(200);
  return res.json();
}

async function dayHash(customer: string): Promise<Record<string, string>> {
  return tg.redis?.hgetall(redisKeys.day(customerTag('demo-mcp', customer), day())) ?? {};
}
async function periodHash(customer: string): Promise<Record<string, string>> {
  return tg.redis?.hgetall(redisKeys.period(customerTag('demo-mcp', customer), period())) ?? {};
}

/** Calls landed by decision, once `total` calls of the customer have landed. */
async function decisions(customer: string, total: number): Promise<Record<string, string>> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const rows = await query<{ decision: string; n: string }>(
      tg,
      'SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = {c:String} GROUP BY decision',
      { c: customer },
    );
    if (rows.reduce((n, r) => n + Number(r.n), 0) >= total || Date.now() > deadline)
      return Object.fromEntries(rows.map((r) => [r.decision, r.n]));
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('grants', () => {
  it('grants calls out of what the day limit leaves, half of it at most per grant, never more in total', async () => {
    const a = await grant('inst-a', { customer: 'daily', wantCalls: 100 });
    expect(a.calls).toBe(5);
    expect(a.money).toBeNull();
    expect(a.leaseId).toMatch(/^ls_[0-9a-f]{24}$/);
    expect(a.prices).toMatchObject({ tokens: '100000000', tiered: '300000000' });
    expect(a.defaultPrice).toBe('100000000');
    const b = await grant('inst-b', { customer: 'daily', wantCalls: 100 });
    expect(b.calls).toBe(2);
    // a renewal of a's lease: it consumed all five, wants 100 more; 3 are left, half of that is 1
    const a2 = await grant('inst-a', {
      customer: 'daily',
      leaseId: a.leaseId,
      wantCalls: 100,
      consumedCalls: 5,
    });
    expect(a2.leaseId).toBe(a.leaseId);
    expect(a2.calls).toBe(6);
    expect((await dayHash('daily')).lr).toBe('8');
    for (let i = 0; i < 5; i++) await grant(`inst-c${i}`, { customer: 'daily', wantCalls: 5 });
    const last = await grant('inst-z', { customer: 'daily', wantCalls: 5 });
    expect(last.calls).toBe(0);
    expect(last.exhausted?.[0]).toMatchObject({ scope: 'customer', reason: 'hard_limit:calls_per_day' });
    expect((await dayHash('daily')).lr).toBe('10');
  });

  it('a kill in force grants nothing, and names the kill', async () => {
    await tg.redis?.hset(redisKeys.state(customerTag('demo-mcp', 'killed-co')), 'c', 'kill|operator:ops|0||');
    const g = await grant('inst-k', { customer: 'killed-co', wantCalls: 5 });
    expect(g).toMatchObject({ leaseId: '', calls: 0, money: '0' });
    expect(g.exhausted).toEqual([
      { scope: 'customer', id: 'killed-co', reason: 'operator:ops', untilUnixMs: 0 },
    ]);
    expect(await dayHash('killed-co')).toEqual({});
  });

  it('a customer without limits gets no lease, just the prices', async () => {
    const g = await grant('inst-a', { customer: 'open-co', wantCalls: 5 });
    expect(g).toMatchObject({ leaseId: '', calls: null, money: null });
    expect(g.expiresUnixMs).toBeGreaterThan(Date.now());
  });

  it('money leases cover the known price; per-tool and per-session limits get their own allowances', async () => {
    const w = await grant('inst-w', { customer: 'wallet', wantCalls: 1, wantMoney: '2000000000' });
    expect(w.money).toBe('500000000'); // half of the 1.00 left
    const s = await grant('inst-s', {
      customer: 'scarce',
      tools: [
        { id: 'rare', want: 10, consumed: 0 },
        { id: 'common', want: 10, consumed: 0 },
      ],
    });
    expect(s.limitedTools).toEqual(['rare']);
    expect(s.tools).toEqual({ rare: 1 }); // half of 3, floored
    const ss = await grant('inst-s', {
      customer: 'sessions',
      sessions: [{ id: 'sess-1', want: '1000000000', consumed: '0' }],
    });
    expect(ss.sessionLimited).toBe(true);
    expect(ss.sessions).toEqual({ 'sess-1': '150000000' });
  });
});

describe('money granted in whole calls', () => {
  it('a grant leaves its holder a multiple of the price it asked with: no remainder under one call is held', async () => {
    // 0.575 wanted at 0.1 a call: 0.5 granted (five calls), not 0.575 of which 0.075 no call could use
    const a = await grant('inst-whole-a', {
      customer: 'whole-co',
      wantCalls: 6,
      wantMoney: '575000000',
      minMoney: '100000000',
    });
    expect(a.money).toBe('300000000'); // half of the 0.7 left is 0.35: three whole calls
    const b = await grant('inst-whole-b', {
      customer: 'whole-co',
      wantCalls: 6,
      wantMoney: '575000000',
      minMoney: '100000000',
    });
    expect(b.money).toBe('200000000'); // half of the 0.4 left: two calls
    const c = await grant('inst-whole-c', {
      customer: 'whole-co',
      wantCalls: 6,
      wantMoney: '575000000',
      minMoney: '100000000',
    });
    // 0.2 left: one call by the share, and the last one after it; 0.7 = seven calls in all, none stranded
    expect(c.money).toBe('100000000');
    const d = await grant('inst-whole-d', {
      customer: 'whole-co',
      wantCalls: 1,
      wantMoney: '100000000',
      minMoney: '100000000',
    });
    expect(d.money).toBe('100000000');
    expect(Number((await periodHash('whole-co')).lrm)).toBe(700_000_000);
  });
});

describe('what a holder reports as consumed', () => {
  it('counts up to what was granted: a report past the grant gets the answer the grant would', async () => {
    // two customers, the same limit (seven calls of 0.1), the same lease; each renews asking for more. A
    // reports what it took (all of its grant), B one call more than was granted: a Kong worker read the counter
    // while another worker's take had overshot and was being undone. Counted as it came, B's report made the
    // allowance look spent and the answer "exhausted" while the limit had room
    const answers: LeaseGrant[] = [];
    for (const [customer, reported] of [
      ['over-a', '300000000'],
      ['over-b', '400000000'],
    ] as const) {
      const first = await grant(`inst-${customer}`, {
        customer,
        wantMoney: '350000000',
        minMoney: '100000000',
      });
      expect(first.money).toBe('300000000'); // 0.35 wanted: three whole calls of 0.1
      answers.push(
        await grant(`inst-${customer}`, {
          customer,
          leaseId: first.leaseId,
          wantMoney: '450000000',
          minMoney: '100000000',
          consumedMoney: reported,
        }),
      );
    }
    const [a, b] = answers as [LeaseGrant, LeaseGrant];
    expect(a.money).toBe('500000000'); // 0.3 + half of the 0.4 the limit still leaves, in whole calls
    expect(a.exhausted ?? []).toEqual([]);
    expect(b.money).toBe(a.money);
    expect(b.exhausted ?? []).toEqual([]);
  });
});

describe('settlement', () => {
  it('a leased call is counted once: its reservation moves to the counter', async () => {
    const g = await grant('inst-m', { customer: 'mixed', wantCalls: 4 });
    expect(g.calls).toBe(4);
    expect((await dayHash('mixed')).lr).toBe('4');
    const answer = (await exportCalls('inst-m', 'mixed', 3, {
      leaseId: g.leaseId,
      reserved: '100000000',
    })) as {
      tollgate?: { leases?: LeaseGrant[] };
    };
    // settled: 3 counted, 1 still held; the answer tops the lease up by 3 (half of the 6 left)
    expect(answer.tollgate?.leases?.[0]?.calls).toBe(7);
    expect(await dayHash('mixed')).toMatchObject({ calls: '3', lr: '4' });
    // a plain sender's three calls: 3 + 3 counted + 4 held = 10, at the limit and not over
    await exportCalls('plain-m', 'mixed', 3);
    expect(await decisions('mixed', 6)).toEqual({ billed: '6' });
    // the four leased calls still held back land within the limit; the next plain call is over
    await exportCalls('inst-m', 'mixed', 4, { leaseId: g.leaseId, reserved: '100000000' });
    await exportCalls('plain-m', 'mixed', 1);
    expect(await dayHash('mixed')).toMatchObject({ calls: '11', lr: '0' });
    expect(await decisions('mixed', 11)).toEqual({ billed: '10', over_limit: '1' });
  });

  it('the real price replaces the known one: the difference is charged', async () => {
    const g = await grant('inst-w2', { customer: 'wallet2', wantMoney: '200000000' });
    expect(g.money).toBe('200000000');
    const before = await periodHash('wallet2');
    const heldBefore = BigInt(before.lrm ?? '0');
    expect(heldBefore).toBe(200000000n);
    // two calls of 0.1 known + 50 output tokens at 0.001 = 0.15 each
    const answer = (await exportCalls('inst-w2', 'wallet2', 2, {
      leaseId: g.leaseId,
      reserved: '100000000',
      tool: 'tokens',
      outputTokens: 50,
    })) as { tollgate?: { leases?: LeaseGrant[] } };
    expect(answer.tollgate?.leases?.[0]?.money).toBe('500000000');
    const after = await periodHash('wallet2');
    expect(BigInt(after.spend ?? '0') - BigInt(before.spend ?? '0')).toBe(300000000n);
    // the 0.2 held moved out; the answer topped the lease up by 0.3 (half of the 0.7 left, in whole calls)
    expect(after.lrm).toBe('300000000');
  });

  it('a call that names a lease of another instance is counted as a call without one', async () => {
    const g = await grant('inst-x', { customer: 'released', wantCalls: 2 });
    await exportCalls('inst-y', 'released', 1, { leaseId: g.leaseId, reserved: '0' });
    expect(await dayHash('released')).toMatchObject({ calls: '1', lr: '2' });
    const [out] = await lease('inst-x', [
      { op: 'release', customer: 'released', leaseId: g.leaseId, consumedCalls: 0 },
    ]);
    expect(out).toMatchObject({ ok: true });
    expect((await dayHash('released')).lr).toBe('0');
  });
});

describe('renewal piggy-backed on the export response', () => {
  it('an export of leased calls answers with their lease topped up and its expiry moved on', async () => {
    const g = await grant('inst-pb', { customer: 'piggy', wantCalls: 2 });
    expect(g.calls).toBe(2);
    await new Promise((r) => setTimeout(r, 50));
    const body = (await exportCalls('inst-pb', 'piggy', 2, { leaseId: g.leaseId, reserved: '0' })) as {
      tollgate?: { leases?: LeaseGrant[] };
    };
    const renewed = body.tollgate?.leases?.[0];
    expect(renewed?.leaseId).toBe(g.leaseId);
    // twice the two calls this export brought, out of the 8 the limit still leaves (half of it at most)
    expect(renewed?.calls).toBe(2 + 4);
    expect(renewed?.expiresUnixMs).toBeGreaterThan(g.expiresUnixMs);
    expect(await dayHash('piggy')).toMatchObject({ calls: '2', lr: '4' });
    // an export of another instance's calls naming that lease renews nothing
    const other = (await exportCalls('inst-other', 'piggy', 1, { leaseId: g.leaseId, reserved: '0' })) as {
      tollgate?: { leases?: LeaseGrant[] };
    };
    expect(other.tollgate?.leases).toBeUndefined();
  });

  it("Kong's exports settle its leased calls but top nothing up (Kong never reads export answers)", async () => {
    const g = await grant('kong-node-1', { customer: 'piggy-kong', wantCalls: 2 });
    expect(g.calls).toBe(2);
    const body = (await exportCalls('kong-node-1', 'piggy-kong', 2, {
      leaseId: g.leaseId,
      reserved: '0',
      name: 'kong',
    })) as { tollgate?: { leases?: LeaseGrant[] } };
    expect(body.tollgate?.leases).toBeUndefined();
    // the two calls settled against the lease; nothing more is held for the node
    expect(await dayHash('piggy-kong')).toMatchObject({ calls: '2', lr: '0' });
  });
});

describe('forged settlement', () => {
  it('an instance id with control characters cannot settle a lease (nor forge another)', async () => {
    const g = await grant('inst-v', { customer: 'forged', wantCalls: 3 });
    // would end the real line early and add one settling the victim's three calls
    const forged = `inst-v\tX\nL\t${g.leaseId}\tinst-v\t3\t0\nT\tz`;
    await exportCalls(forged, 'forged', 1, { leaseId: g.leaseId, reserved: '0' });
    // counted as a call without a lease: the victim's three calls are still held back
    expect(await dayHash('forged')).toMatchObject({ calls: '1', lr: '3' });
  });
});

describe('return of unused allowance', () => {
  it('a release keeps what was consumed until its spans arrive, and returns the rest', async () => {
    const g = await grant('inst-r', { customer: 'released', wantCalls: 4 });
    expect(g.calls).toBe(4);
    const [out] = await lease('inst-r', [
      { op: 'release', customer: 'released', leaseId: g.leaseId, consumedCalls: 1 },
    ]);
    expect(out?.ok).toBe(true);
    expect((await dayHash('released')).lr).toBe('1');
    await exportCalls('inst-r', 'released', 1, { leaseId: g.leaseId, reserved: '0' });
    expect((await dayHash('released')).lr).toBe('0');
    expect(await tg.redis?.exists(redisKeys.lease(customerTag('demo-mcp', 'released'), g.leaseId))).toBe(0);
    // a replayed release (or renewal) of a lease that is gone is refused
    const [again] = await lease('inst-r', [{ op: 'release', customer: 'released', leaseId: g.leaseId }]);
    expect(again).toMatchObject({ ok: false, error: { code: 'TG_LEASE_UNKNOWN' } });
  });

  it('an expired lease (its holder died) gives everything back within the TTL', async () => {
    const dead = await grant('inst-dead', { customer: 'expiring', wantCalls: 100 });
    expect(dead.calls).toBe(5);
    expect(dead.expiresUnixMs - Date.now()).toBeLessThanOrEqual(TTL_MS);
    await new Promise((r) => setTimeout(r, TTL_MS + 50));
    const alive = await grant('inst-alive', { customer: 'expiring', wantCalls: 100 });
    expect(alive.calls).toBe(5); // half of all ten again: the dead lease's five came back
    expect((await dayHash('expiring')).lr).toBe('5');
    const [renew] = await lease('inst-dead', [
      { op: 'grant', customer: 'expiring', leaseId: dead.leaseId, consumedCalls: 5 },
    ]);
    expect(renew).toMatchObject({ ok: false, error: { code: 'TG_LEASE_UNKNOWN' } });
  });
});

describe('parallel', () => {
  it('many instances granting and exporting at once: never more than the limit, held back returns to 0', async () => {
    const instances = Array.from({ length: 16 }, (_, i) => `par-${i}`);
    const leases = new Map<string, LeaseGrant>();
    // three rounds of grants and exports by every instance at once
    for (let round = 0; round < 3; round++) {
      await Promise.all(
        instances.map(async (inst) => {
          const held = leases.get(inst);
          const g = await grant(inst, {
            customer: 'parallel',
            wantCalls: 3,
            ...(held ? { leaseId: held.leaseId, consumedCalls: held.calls ?? 0 } : {}),
          });
          const took = (g.calls ?? 0) - (held?.calls ?? 0);
          leases.set(inst, g);
          if (took > 0) await exportCalls(inst, 'parallel', took, { leaseId: g.leaseId, reserved: '0' });
        }),
      );
    }
    const total = [...leases.values()].reduce((n, g) => n + (g.calls ?? 0), 0);
    expect(total).toBe(10);
    expect(await dayHash('parallel')).toMatchObject({ calls: '10', lr: '0' });
    expect(await decisions('parallel', 10)).toEqual({ billed: '10' });
  });
});

describe('bad input', () => {
  const bad = async (r: Record<string, unknown>, key = DEV_INGEST_KEY, inst = 'inst-bad') => {
    const [out] = await lease(inst, [r as Partial<LeaseRequest>], key);
    return out as { ok: false; error: { code: string; message: string } };
  };

  it('refuses with a stable code, grants nothing and audits the attempt', async () => {
    const lrBefore = (await dayHash('daily')).lr;
    const cases: [Record<string, unknown>, string, string?][] = [
      [{ op: 'grant', customer: 'daily', wantCalls: -1 }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'daily', wantCalls: 0 }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'daily', wantCalls: 1e12 }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'daily', wantCalls: 1.5 }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'wallet', wantMoney: '-5' }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'wallet', wantMoney: '0' }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'wallet', wantMoney: '99999999999999999999' }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'wallet', wantMoney: '0.5' }, 'TG_LEASE_INVALID_AMOUNT'],
      [{ op: 'grant', customer: 'wallet', currency: 'EUR' }, 'TG_LEASE_WRONG_CURRENCY'],
      [{ op: 'grant', customer: 'anyone' }, 'TG_LEASE_UNKNOWN_CUSTOMER', GHOST_KEY],
      [{ op: 'grant' }, 'TG_LEASE_NO_CUSTOMER'],
      [{ op: 'grant', customer: 'bad\u0000id' }, 'TG_LEASE_INVALID'],
      [{ op: 'steal', customer: 'daily' }, 'TG_LEASE_INVALID'],
      [{ op: 'grant', customer: 'daily', leaseId: 'ls_000000000000000000000000' }, 'TG_LEASE_UNKNOWN'],
      [{ op: 'grant', customer: 'daily', leaseId: '../../etc' }, 'TG_LEASE_UNKNOWN'],
    ];
    for (const [req, code, key] of cases) {
      const out = await bad(req, key);
      expect(out.ok, JSON.stringify(req)).toBe(false);
      expect(out.error.code, JSON.stringify(req)).toBe(code);
      expect(out.error.message.length).toBeGreaterThan(10);
    }
    // nothing granted (what is held back may only have shrunk, as leases of earlier tests expired)
    expect(Number((await dayHash('daily')).lr)).toBeLessThanOrEqual(Number(lrBefore));
    const deadline = Date.now() + 5000;
    let rows: { reason: string }[] = [];
    while (Date.now() < deadline) {
      rows = await query<{ reason: string }>(
        tg,
        "SELECT reason FROM enforcement_events WHERE action = 'lease_refused' AND actor = 'instance:inst-bad'",
      );
      if (rows.length >= cases.length) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(rows.map((r) => r.reason).sort()).toEqual(cases.map((c) => c[1]).sort());
  });

  it('a lease of another instance is foreign: it can be neither renewed nor released', async () => {
    const g = await grant('inst-owner', { customer: 'daily-foreign' });
    expect(g.leaseId).toBe(''); // daily-foreign has no limits: use a limited customer
    const own = await grant('inst-owner2', { customer: 'wallet', wantMoney: '1000' });
    const renew = await bad(
      { op: 'grant', customer: 'wallet', leaseId: own.leaseId },
      DEV_INGEST_KEY,
      'thief',
    );
    expect(renew.error.code).toBe('TG_LEASE_FOREIGN');
    const rel = await bad(
      { op: 'release', customer: 'wallet', leaseId: own.leaseId },
      DEV_INGEST_KEY,
      'thief',
    );
    expect(rel.error.code).toBe('TG_LEASE_FOREIGN');
  });

  it('a malformed body is a 400 with a stable code; no key is a 401', async () => {
    const res = await fetch(`${tg.otlpUrl}/v1/leases`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: '{"requests": 5}',
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('TG_LEASE_INVALID');
    const anon = await fetch(`${tg.otlpUrl}/v1/leases`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(anon.status).toBe(401);
  });
});
