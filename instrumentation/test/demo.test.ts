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
    // today's MCP: 2.x servers on the stateless 2026-07-28 revision over stdio and HTTP, next to a 1.x one
    const kinds = new Set(summary.agents.map((a) => `${a.sdk} ${a.protocol} ${a.transport}`));
    expect(kinds).toEqual(
      new Set(['2.x 2026-07-28 stdio', '2.x 2026-07-28 streamable_http', '1.x 2025-11-25 stdio']),
    );
    const billed = await query<{
      customer: string;
      protocol_version: string;
      session_rule: string;
      n: string;
    }>(
      tg,
      `SELECT customer, protocol_version, session_rule, count() AS n FROM mcp_tool_calls
       GROUP BY customer, protocol_version, session_rule`,
    );
    const rowOf = (c: string) => billed.filter((r) => r.customer === c);
    expect(rowOf('globex').map((r) => [r.protocol_version, r.session_rule])).toEqual([
      ['2026-07-28', 'activity'],
    ]);
    expect(rowOf('acme').map((r) => [r.protocol_version, r.session_rule])).toEqual([
      ['2026-07-28', 'connection'],
    ]);
    expect(rowOf('hooli').map((r) => [r.protocol_version, r.session_rule])).toEqual([
      ['2025-11-25', 'connection'],
    ]);
    // the money shown is what Tollgate billed: initech's margin is negative, the others' positive
    const byCustomer = new Map(summary.totals.map((t) => [t.customer, t]));
    expect(byCustomer.get('initech')?.marginBps).toBeLessThan(0);
    expect(byCustomer.get('globex')?.marginBps).toBeGreaterThan(2000);
    expect(printed).toContain('initech was stopped by the margin guard');
    expect(printed).toContain(summary.analyticsUrl);
  }, 90_000);
});
