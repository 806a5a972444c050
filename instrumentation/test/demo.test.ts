import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EMBEDDED_PLANS } from '../../collector-processor/src/config/settings.js';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { type CustomerTotals, runMcpDemo } from '../src/demo/index.js';

/** The demo of the main job, against a real Tollgate on the embedded plans. */

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate({}, readFileSync(EMBEDDED_PLANS, 'utf8'));
});
afterAll(async () => {
  await tg?.cleanup();
});

async function totals(): Promise<CustomerTotals[]> {
  const rows = await query<{ customer: string; r: string; c: string }>(
    tg,
    'SELECT customer, sum(price_nano) AS r, sum(cost_nano) AS c FROM mcp_tool_calls GROUP BY customer',
  );
  return rows.map((x) => {
    const r = BigInt(x.r);
    const c = BigInt(x.c);
    return {
      customer: x.customer,
      revenue: (Number(r) / 1e9).toFixed(9),
      cost: (Number(c) / 1e9).toFixed(9),
      marginBps: r > 0n ? Number(((r - c) * 10000n) / r) : null,
    };
  });
}

describe('runMcpDemo', () => {
  it('runs agents over stdio and HTTP, drives initech into the margin guard and stops it', async () => {
    let printed = '';
    const out = new Writable({
      write(chunk, _enc, done) {
        printed += String(chunk);
        done();
      },
    });
    const summary = await runMcpDemo({
      otlpUrl: tg.otlpUrl as string,
      apiUrl: tg.apiUrl as string,
      ingestKey: DEV_INGEST_KEY,
      totals,
      out,
      durationSeconds: 40,
    });
    const initech = summary.agents.find((a) => a.customer === 'initech');
    expect(initech?.directives.map((d) => d.action).at(-1)).toBe('kill');
    expect(initech?.directives.at(-1)?.reason).toBe('margin_guard:kill');
    expect(initech?.refused.killed).toBe(1);
    expect(initech?.serverExitCode).toBe(0);
    expect(initech?.newSessionRefused).toBe(true);
    for (const a of summary.agents.filter((x) => x.customer !== 'initech')) {
      expect(a.calls).toBeGreaterThan(10);
      expect(a.refused.killed).toBe(0);
    }
    expect(new Set(summary.agents.map((a) => a.transport))).toEqual(new Set(['stdio', 'streamable_http']));
    // the money shown is what Tollgate billed: initech's margin is negative, the others' positive
    const byCustomer = new Map(summary.totals.map((t) => [t.customer, t]));
    expect(byCustomer.get('initech')?.marginBps).toBeLessThan(0);
    expect(byCustomer.get('globex')?.marginBps).toBeGreaterThan(2000);
    expect(printed).toContain('initech was stopped by the margin guard');
    expect(printed).toContain(summary.analyticsUrl);
  }, 90_000);
});
