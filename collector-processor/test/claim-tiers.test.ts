import { customerTag, redisKeys, type ToolCall } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLAIM_STATUS, type ClaimInput, claimCalls, defineClaim } from '../src/meter/claim.js';
import { startTestTollgate, type TestTollgate } from './support/harness.js';

/**
 * claim.lua's units of usage lines priced in graduated tiers, against the test Tollgate's real redis-server:
 * positions in argument order, per customer, tool and line; whole units or micro-units; a replay of the same
 * spool record gets its own positions back; a duplicate counts nothing.
 */
let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
  defineClaim(tg.redis!);
});
afterAll(async () => {
  await tg?.cleanup();
});

const M = 1_000_000n;
let n = 0;
const input = (tool: string, tiered: [string, bigint, boolean][], counts = true): ClaimInput => ({
  call: { eventId: `e${(n++).toString(16).padStart(8, '0')}`, tool } as ToolCall,
  period: '2026-12',
  day: '2026-12-06',
  counts,
  tiered: tiered.map(([line, micro, integral], index) => ({ index, line, micro, integral })),
});
const ttl = { dedupSeconds: 3600, periodSeconds: 3600 };

describe('claim.lua: units of tiered usage lines', () => {
  it('positions in order, per tool and line; fractional lines in micro-units; replays and duplicates', async () => {
    const calls = [
      input('a', [
        ['tokens', 400n * M, true],
        ['gbs', 1_500_000n, false],
      ]),
      input('a', [['tokens', 700n * M, true]]),
      input('b', [['tokens', 5n * M, true]]), // another tool: its own count
      input('a', [['tokens', 9n * M, true]], false), // not counted: no position, nothing added
      input('a', [
        ['gbs', 250_000n, false],
        ['tokens', 1n * M, true],
      ]),
    ];
    const first = await claimCalls(tg.redis!, 'p', 'c1', 'rec-1', calls, ttl);
    expect(first.map((r) => [r.status, r.usageBefore])).toEqual([
      [CLAIM_STATUS.new, [0n, 0n]],
      [CLAIM_STATUS.new, [400n * M]],
      [CLAIM_STATUS.new, [0n]],
      [CLAIM_STATUS.new, [0n]],
      [CLAIM_STATUS.new, [1_500_000n, 1100n * M]],
    ]);
    // the same record replayed (a crash before landing): the same positions, nothing counted again
    const replay = await claimCalls(tg.redis!, 'p', 'c1', 'rec-1', calls, ttl);
    expect(replay.map((r) => [r.status, r.usageBefore])).toEqual(
      first.map((r) => [CLAIM_STATUS.own, r.status === CLAIM_STATUS.new ? r.usageBefore : undefined]),
    );
    // the same calls under another record (a sender's retry): duplicates, nothing counted
    const dup = await claimCalls(tg.redis!, 'p', 'c1', 'rec-2', calls, ttl);
    expect(dup.map((r) => r.status)).toEqual(calls.map(() => CLAIM_STATUS.duplicate));
    // a new call continues where the first record left off
    const next = await claimCalls(
      tg.redis!,
      'p',
      'c1',
      'rec-3',
      [input('a', [['tokens', 1n * M, true]])],
      ttl,
    );
    expect(next[0]?.usageBefore).toEqual([1101n * M]);
    // another customer starts at zero
    const other = await claimCalls(
      tg.redis!,
      'p',
      'c2',
      'rec-4',
      [input('a', [['tokens', 1n * M, true]])],
      ttl,
    );
    expect(other[0]?.usageBefore).toEqual([0n]);
  });

  it('whole units stay exact beyond 2^53 micro-units (a month of trillions of tokens)', async () => {
    const big = 900_000_000_000n; // 9 × 10¹¹ units a call, 9 × 10¹⁷ micro-units
    const r = await claimCalls(
      tg.redis!,
      'p',
      'c3',
      'rec-5',
      [
        input('a', [['tokens', big * M, true]]),
        input('a', [['tokens', big * M, true]]),
        input('a', [['tokens', M, true]]),
      ],
      ttl,
    );
    expect(r.map((x) => x.usageBefore)).toEqual([[0n], [big * M], [2n * big * M]]);
  });
});

describe('claim.lua: the calls in one argument, a line each', () => {
  const plain = (eventId: string, tool: string, day = '2026-12-06', period = '2026-12'): ClaimInput => ({
    call: { eventId, tool } as ToolCall,
    period,
    day,
    counts: true,
  });

  it('reads tool names with spaces, digits and non-ASCII; calls across days and periods keep their own keys', async () => {
    const tricky = 'x 1 2 1 y'; // shaped like the line format itself
    const calls = [
      plain('f0', tricky),
      plain('f1', 'météo ☀'),
      plain('f2', tricky),
      plain('f3', tricky, '2026-12-07'),
      plain('f4', 'météo ☀', '2027-01-01', '2027-01'),
      plain('f5', tricky),
    ];
    const r = await claimCalls(tg.redis!, 'p', 'c9', 'rec-9', calls, ttl);
    // plan ordinal counts the period's calls, tool ordinal the tool's in the period
    expect(r.map((x) => [x.status, x.toolOrdinal, x.planOrdinal])).toEqual([
      [CLAIM_STATUS.new, 1, 1],
      [CLAIM_STATUS.new, 1, 2],
      [CLAIM_STATUS.new, 2, 3],
      [CLAIM_STATUS.new, 3, 4],
      [CLAIM_STATUS.new, 1, 1], // January: its own period hash
      [CLAIM_STATUS.new, 4, 5],
    ]);
    // each tool counted under its whole name
    const period = redisKeys.period(customerTag('p', 'c9'), '2026-12');
    expect(await tg.redis!.hmget(period, `t:${tricky}`, 't:météo ☀', 'n', 'calls')).toEqual([
      '4',
      '1',
      '5',
      '5',
    ]);
    // the same event id on another day is another day's dedup hash: new; on the same day: a duplicate
    const again = await claimCalls(
      tg.redis!,
      'p',
      'c9',
      'rec-10',
      [plain('f0', tricky, '2026-12-08'), plain('f3', tricky, '2026-12-07')],
      ttl,
    );
    expect(again.map((x) => [x.status, x.toolOrdinal])).toEqual([
      [CLAIM_STATUS.new, 5],
      [CLAIM_STATUS.duplicate, 0],
    ]);
  });

  it('cuts event ids by their bytes, ASCII or not; an id of 128 bytes is refused before Redis', async () => {
    const ids = ['é0', 'ü-1☀', 'plain-2', 'x'.repeat(127)];
    const first = await claimCalls(
      tg.redis!,
      'p',
      'c10',
      'rec-12',
      ids.map((id) => plain(id, 't')),
      ttl,
    );
    expect(first.map((x) => [x.status, x.toolOrdinal])).toEqual([
      [CLAIM_STATUS.new, 1],
      [CLAIM_STATUS.new, 2],
      [CLAIM_STATUS.new, 3],
      [CLAIM_STATUS.new, 4],
    ]);
    const dedup = redisKeys.dedup(customerTag('p', 'c10'), '2026-12-06');
    expect((await tg.redis!.hkeys(dedup)).sort()).toEqual([...ids].sort());
    const again = await claimCalls(
      tg.redis!,
      'p',
      'c10',
      'rec-13',
      ids.map((id) => plain(id, 't')),
      ttl,
    );
    expect(again.map((x) => x.status)).toEqual(ids.map(() => CLAIM_STATUS.duplicate));
    await expect(
      claimCalls(tg.redis!, 'p', 'c10', 'rec-14', [plain('y'.repeat(128), 't')], ttl),
    ).rejects.toThrow(/event id of 128 characters/);
    await expect(
      claimCalls(tg.redis!, 'p', 'c10', 'rec-14', [plain(`é${'y'.repeat(126)}`, 't')], ttl),
    ).rejects.toThrow(/event id of 128 bytes/);
  });

  it('stores each new call as "token|tool ordinal|plan ordinal", which a replay of the token reads back', async () => {
    const calls = [
      plain('k0', 'a'),
      plain('k1', 'b'),
      { ...plain('k2', 'a'), counts: false }, // not counted: no positions
      plain('k3', 'a'),
    ];
    const first = await claimCalls(tg.redis!, 'p', 'c11', 'rec-15', calls, ttl);
    expect(first.map((x) => [x.status, x.toolOrdinal, x.planOrdinal])).toEqual([
      [CLAIM_STATUS.new, 1, 1],
      [CLAIM_STATUS.new, 1, 2],
      [CLAIM_STATUS.new, 0, 0],
      [CLAIM_STATUS.new, 2, 3],
    ]);
    const dedup = redisKeys.dedup(customerTag('p', 'c11'), '2026-12-06');
    expect(await tg.redis!.hmget(dedup, 'k0', 'k1', 'k2', 'k3')).toEqual([
      'rec-15|1|1',
      'rec-15|1|2',
      'rec-15|0|0',
      'rec-15|2|3',
    ]);
    // a claim written by an earlier build, positions past 10^14 included (Lua's own number-to-text gave
    // '1e+14' there), is read back by a replay of its token
    await tg.redis!.hset(dedup, 'k4', 'rec-16|123456789012345|900000000000001');
    const replay = await claimCalls(tg.redis!, 'p', 'c11', 'rec-16', [plain('k4', 'a')], ttl);
    expect(replay.map((x) => [x.status, x.toolOrdinal, x.planOrdinal])).toEqual([
      [CLAIM_STATUS.own, 123456789012345, 900000000000001],
    ]);
    const again = await claimCalls(tg.redis!, 'p', 'c11', 'rec-15', calls, ttl);
    expect(again.map((x) => [x.status, x.toolOrdinal, x.planOrdinal])).toEqual(
      first.map((x) => [CLAIM_STATUS.own, x.toolOrdinal, x.planOrdinal]),
    );
  });

  it('writes positions past 10^14 as whole numbers', async () => {
    const period = redisKeys.period(customerTag('p', 'c12'), '2026-12');
    await tg.redis!.hset(period, 'n', '99999999999999', 't:a', '99999999999999');
    const r = await claimCalls(tg.redis!, 'p', 'c12', 'rec-17', [plain('m0', 'a'), plain('m1', 'a')], ttl);
    expect(r.map((x) => [x.toolOrdinal, x.planOrdinal])).toEqual([
      [100000000000000, 100000000000000],
      [100000000000001, 100000000000001],
    ]);
    const dedup = redisKeys.dedup(customerTag('p', 'c12'), '2026-12-06');
    expect(await tg.redis!.hmget(dedup, 'm0', 'm1')).toEqual([
      'rec-17|100000000000000|100000000000000',
      'rec-17|100000000000001|100000000000001',
    ]);
    const replay = await claimCalls(
      tg.redis!,
      'p',
      'c12',
      'rec-17',
      [plain('m0', 'a'), plain('m1', 'a')],
      ttl,
    );
    expect(replay.map((x) => [x.status, x.toolOrdinal, x.planOrdinal])).toEqual([
      [CLAIM_STATUS.own, 100000000000000, 100000000000000],
      [CLAIM_STATUS.own, 100000000000001, 100000000000001],
    ]);
  });

  it('refuses a call list that does not hold the number of calls announced', async () => {
    const cmd = (
      tg.redis as unknown as Record<string, (...a: (string | number | Buffer)[]) => Promise<unknown>>
    ).tollgateClaim;
    // claim.lua's arguments after the keys and the token (see its header): n, ids, meta, contexts, m, tiered
    const claimRaw = (n: number, ids: string, meta: Buffer, m = 0, tiered = '') =>
      cmd!.call(
        tg.redis,
        2,
        'tg:{p:c9}:d:x',
        'tg:{p:c9}:p:x',
        'rec-11',
        60,
        60,
        n,
        ids,
        meta,
        '1 2 1 tool',
        m,
        tiered,
      );
    const oneCall = Buffer.from([2, 0, 0, 0]); // an id of 2 bytes, context 0
    await expect(claimRaw(2, 'g0', oneCall)).rejects.toThrow(/1 calls read, 2 announced/);
    // ids that do not add up to the lengths given, a context that was not sent, tiered lines not announced
    await expect(claimRaw(1, 'g0x', oneCall)).rejects.toThrow(/2 bytes of event ids read, 3 sent/);
    await expect(claimRaw(1, 'g0', Buffer.from([2, 0, 0, 1]))).rejects.toThrow(/call 0 has context 1 of 1/);
    await expect(claimRaw(1, 'g0', oneCall, 2, '0 5 tokens')).rejects.toThrow(
      /1 tiered quantities read, 2 announced/,
    );
    expect(await tg.redis!.exists('tg:{p:c9}:d:x', 'tg:{p:c9}:p:x')).toBe(0);
  });
});
