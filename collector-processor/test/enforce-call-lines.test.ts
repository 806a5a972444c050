import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CALL_BYTES, CallLines, type EnforceCalls } from '../src/enforcement/enforcer.js';
import { startTestTollgate, type TestTollgate } from './support/harness.js';

// enforce.lua's calls argument: 24 bytes per call (session key index, agent and tool indexes, price, cost)
// and the names they index, written into a reused buffer. Read back here as the script reads it, in
// TypeScript and with Redis's own struct.unpack, for every kind of value the script is handed.
type Call = [number, string, string, string, bigint, bigint];

const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;

const written = (lines: CallLines, calls: Call[]): EnforceCalls => {
  lines.start(calls.length);
  for (const c of calls) lines.call(...c);
  return lines.take();
};

/** The calls as enforce.lua sees them: names by index from 1 (0 is the empty name). */
function readBack(a: EnforceCalls): Call[] {
  const names = (text: string) => ['', ...text.split('\n')];
  const agents = names(a.agents);
  const tools = names(a.tools);
  const sessions = names(a.sessions);
  const out: Call[] = [];
  for (let p = 0; p < a.calls.length; p += CALL_BYTES) {
    const sk = a.calls.readUInt32LE(p);
    out.push([
      sk,
      sessions[sk] as string,
      agents[a.calls.readUInt16LE(p + 4)] as string,
      tools[a.calls.readUInt16LE(p + 6)] as string,
      a.calls.readBigInt64LE(p + 8),
      a.calls.readBigInt64LE(p + 16),
    ]);
  }
  return out;
}

const awkward: Call[] = [
  [0, '', '', 'search', 0n, 0n],
  [1, 'sess-1', 'planner', 'get_forecast', 1_500_000n, 400_000n],
  [2, 'séance-ü', 'агент', '工具', -1n, -9_007_199_254_740_991n],
  [3, 's', 'a', 't', 9_007_199_254_740_991n, 9_007_199_254_740_992n],
  [3, 's', 'a', 't', INT64_MAX, INT64_MIN],
  [1, 'sess-1', '', 'search', 10n, 99n],
  [4, '😀'.repeat(40), 'x'.repeat(256), 'y'.repeat(200), 100n, 1000n],
];

describe('enforce.lua calls', () => {
  it('read back as written: money at both limits and past 2^53, signs, UTF-8 names, no agent, no session', () => {
    const lines = new CallLines();
    const out = written(lines, awkward);
    expect(out.calls.length).toBe(awkward.length * CALL_BYTES);
    expect(readBack(out)).toEqual(awkward);
    // each name once, in the order it first appears
    expect(out.agents.split('\n')).toEqual(['planner', 'агент', 'a', 'x'.repeat(256)]);
    expect(out.tools.split('\n')).toEqual(['search', 'get_forecast', '工具', 't', 'y'.repeat(200)]);
    expect(out.sessions.split('\n')).toEqual(['sess-1', 'séance-ü', 's', '😀'.repeat(40)]);
  });

  it('money past Int64 goes at its limit (the script saturates there)', () => {
    const lines = new CallLines();
    const out = written(lines, [[0, '', 'a', 't', INT64_MAX + 1n, INT64_MIN - 5n]]);
    expect(readBack(out)).toEqual([[0, '', 'a', 't', INT64_MAX, INT64_MIN]]);
  });

  it('grows past its buffer, and a later argument does not change one already taken', () => {
    const many: Call[] = Array.from({ length: 5000 }, (_, i) => [
      1 + (i % 400),
      `session-${i % 400}`,
      `agent-${i % 5}`,
      `tool-${i % 4}`,
      BigInt(i) * 1_000_003n - 2_500_000_000n,
      BigInt(i) * 7n,
    ]);
    const lines = new CallLines();
    const first = written(lines, many);
    const copy = Buffer.from(first.calls);
    const second = written(lines, many.slice(0, 3).reverse());
    expect(readBack(first)).toEqual(many);
    expect(first.calls.equals(copy)).toBe(true);
    expect(readBack(second)).toEqual(many.slice(0, 3).reverse());
    // the second list names only what it holds, from 1 again
    expect(second.agents.split('\n')).toEqual(['agent-2', 'agent-1', 'agent-0']);
  });

  describe('in Redis', () => {
    let tg: TestTollgate;
    beforeAll(async () => {
      tg = await startTestTollgate();
    });
    afterAll(async () => {
      await tg?.cleanup();
    });

    it("read by Redis's struct.unpack as enforce.lua reads them", async () => {
      const out = written(new CallLines(), awkward);
      // enforce.lua's format; money back as whole decimal numbers (Lua numbers: exact below 2^53)
      const script = `
        local t, out = ARGV[1], {}
        for p = 1, #t, 24 do
          local sk, a, tl, price, cost = struct.unpack('<I4I2I2i8i8', t, p)
          out[#out + 1] = string.format('%d %d %d %.0f %.0f', sk, a, tl, price, cost)
        end
        return out`;
      const reply = (await tg.redis!.eval(script, 0, out.calls)) as string[];
      const agents = ['', ...out.agents.split('\n')];
      const tools = ['', ...out.tools.split('\n')];
      expect(
        reply.map((line) => {
          const [sk, a, t, price, cost] = line.split(' ');
          return [Number(sk), agents[Number(a)], tools[Number(t)], BigInt(price!), BigInt(cost!)];
        }),
      ).toEqual(
        // what a double holds of each amount: exact to 2^53, the nearest double beyond (as tonumber gave)
        awkward.map(([sk, , agent, tool, price, cost]) => [
          sk,
          agent,
          tool,
          BigInt(Number(price)),
          BigInt(Number(cost)),
        ]),
      );
    });

    it('enforce.lua refuses a calls argument that does not hold the calls announced', async () => {
      const { defineEnforce } = await import('../src/enforcement/enforcer.js');
      defineEnforce(tg.redis!);
      const out = written(new CallLines(), awkward.slice(0, 2));
      const cmd = (
        tg.redis as unknown as Record<string, (...a: (string | number | Buffer)[]) => Promise<unknown>>
      ).tollgateEnforce!;
      const keys = ['tg:{p:c}:p:x', 'tg:{p:c}:state', 'tg:{p:c}:applied:x', 'tg:{p:c}:d:x', 'tg:{p:c}:s:1'];
      // ARGV as enforceChunk builds them (see enforce.lua's header), with 3 calls announced for 2 sent
      const args = [
        'rid|2026-12|2026-12-07',
        Date.now(),
        Date.now() + 1e9,
        Date.now() + 1e8,
        60,
        60,
        -1,
        -1,
        -1,
        0,
        0,
        0,
        0,
        '0',
        1,
        0,
        3,
        out.calls,
        out.agents,
        out.tools,
        out.sessions,
        '',
        // credits.lua's last six: no wallet key
        6,
        7,
        0,
        '0',
        '0',
        '',
      ];
      await expect(
        cmd.call(tg.redis, keys.length + 2, ...keys, 'tg:{p:c}:w', 'tg:{p:c}:o', ...args),
      ).rejects.toThrow(/48 bytes of calls, 3 calls announced/);
      expect(await tg.redis!.exists('tg:{p:c}:p:x', 'tg:{p:c}:applied:x', 'tg:{p:c}:d:x')).toBe(0);
    });
  });
});
