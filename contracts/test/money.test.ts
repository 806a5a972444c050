import { describe, expect, it } from 'vitest';
import { divRoundHalfUp, formatNano, MoneyParseError, parseDecimalToNano } from '../src/money.js';

describe('parseDecimalToNano', () => {
  it.each([
    ['0', 0n],
    ['1', 1_000_000_000n],
    ['0.1', 100_000_000n],
    ['0.000000001', 1n],
    ['12.5', 12_500_000_000n],
    ['-3.25', -3_250_000_000n],
    ['0.0000000010', 1n],
    ['9223372036.854775807', 9_223_372_036_854_775_807n],
  ])('%s → %s nano', (text, nano) => {
    expect(parseDecimalToNano(text)).toBe(nano);
  });

  it.each(['', '1e-3', '0.0000000001', '1,5', 'NaN', '.5', '1.', '0x10'])('rejects %j', (text) => {
    expect(() => parseDecimalToNano(text)).toThrow(MoneyParseError);
  });
});

describe('divRoundHalfUp', () => {
  it.each([
    [5n, 2n, 3n],
    [4n, 2n, 2n],
    [7n, 2n, 4n],
    [2499n, 1000n, 2n],
    [2500n, 1000n, 3n],
    [-2500n, 1000n, -3n],
    [-2499n, 1000n, -2n],
    [0n, 7n, 0n],
  ])('%s / %s → %s', (n, d, q) => {
    expect(divRoundHalfUp(n, d)).toBe(q);
  });
});

describe('formatNano', () => {
  it.each([
    [0n, '0.00'],
    [1n, '0.000000001'],
    [1_500_000_000n, '1.50'],
    [-2_000_000_000n, '-2.00'],
    [123_456_789_012n, '123.456789012'],
  ])('%s → %s', (nano, text) => {
    expect(formatNano(nano)).toBe(text);
  });
});
