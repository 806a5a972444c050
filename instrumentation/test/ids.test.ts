import { describe, expect, it } from 'vitest';
import { fastIds, seedIdPoolForTest } from '../src/billing-span.js';

describe('billing span ids', () => {
  it('are lower-case hex of the right length and differ from call to call', () => {
    const traces = new Set<string>();
    const spans = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const t = fastIds.traceId();
      const s = fastIds.spanId();
      expect(t).toMatch(/^[0-9a-f]{32}$/);
      expect(s).toMatch(/^[0-9a-f]{16}$/);
      traces.add(t);
      spans.add(s);
    }
    expect(traces.size).toBe(2000);
    expect(spans.size).toBe(2000);
  });

  it('skip all-zero draws (invalid ids) and keep ids with zero bytes in them', () => {
    const bytes = new Uint8Array(16 + 16 + 8 + 8);
    // trace id: 16 zero bytes (skipped), then 15 zero bytes and a 1 (kept)
    bytes[31] = 1;
    // span id: 8 zero bytes (skipped), then 0x80 and 7 zero bytes (kept)
    bytes[40] = 0x80;
    seedIdPoolForTest(bytes);
    expect(fastIds.traceId()).toBe(`${'0'.repeat(30)}01`);
    expect(fastIds.spanId()).toBe(`80${'0'.repeat(14)}`);
    // the rest of the seeded pool is zeros: skipped until the pool is refilled from the CSPRNG
    expect(fastIds.spanId()).not.toBe('0'.repeat(16));
  });
});
