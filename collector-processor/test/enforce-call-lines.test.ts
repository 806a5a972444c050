import { describe, expect, it } from 'vitest';
import { CallLines } from '../src/enforcement/enforcer.js';

// enforce.lua's calls argument is written into a buffer instead of built as a string per call: it must be
// byte for byte the text the template strings made, for every kind of value the script is handed.
describe('enforce.lua call lines', () => {
  type Call = [number, string, string, string, bigint, bigint];
  const text = (calls: Call[]) =>
    calls
      .map(([sk, sid, agent, tool, price, cost]) => `${sk}\t${sid}\t${agent}\t${tool}\t${price}\t${cost}\n`)
      .join('');
  const written = (lines: CallLines, calls: Call[]) => {
    lines.start(calls.length);
    for (const c of calls) lines.call(...c);
    return lines.take();
  };

  it('are the template text byte for byte: money at both limits and past 2^53, signs, UTF-8, empty fields', () => {
    const calls: Call[] = [
      [0, '', '', 'search', 0n, 0n],
      [1, 'sess-1', 'planner', 'get_forecast', 1_500_000n, 400_000n],
      [12, 'séance-ü', 'агент', '工具', -1n, -9_007_199_254_740_991n],
      [3, 's', 'a', 't', 9_007_199_254_740_991n, 9_007_199_254_740_992n],
      [4, 's', 'a', 't', 9_223_372_036_854_775_807n, -9_223_372_036_854_775_808n],
      [5, 's', 'a', 't', 10n, 99n],
      [99999, '😀'.repeat(40), 'x'.repeat(256), 'y'.repeat(200), 100n, 1000n],
    ];
    const lines = new CallLines();
    const out = written(lines, calls);
    expect(out.toString('utf8')).toBe(text(calls));
    expect(out.equals(Buffer.from(text(calls), 'utf8'))).toBe(true);
  });

  it('grows past its buffer, and a later argument does not change one already taken', () => {
    const many: Call[] = Array.from({ length: 5000 }, (_, i) => [
      i % 400,
      `session-${i}`,
      `agent-${i % 5}`,
      `tool-${i % 4}`,
      BigInt(i) * 1_000_003n - 2_500_000_000n,
      BigInt(i) * 7n,
    ]);
    const lines = new CallLines();
    const first = written(lines, many);
    const copy = Buffer.from(first);
    const second = written(lines, many.slice(0, 3).reverse());
    expect(first.toString('utf8')).toBe(text(many));
    expect(first.equals(copy)).toBe(true);
    expect(second.toString('utf8')).toBe(text(many.slice(0, 3).reverse()));
  });
});
