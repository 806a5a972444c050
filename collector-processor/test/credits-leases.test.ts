import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { REFUSAL_CODES } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, PACKAGE_DIR } from '../../instrumentation/test/support/mcp.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';

/**
 * The hard stop at zero through quota leases: a real MCP server (SDK 2.x, stdio, a child process) with the
 * Tollgate SDK taking each call's known price from a lease, granted out of what the customer's prepaid
 * wallet leaves (lease.lua reads the wallet through credits.lua). A burst against 0.07 of credit at 0.01 a
 * call runs exactly 7 tools — 0 over — and the rest are refused before the tool runs with the kill code,
 * naming credits:exhausted; the wallet ends at exactly zero. A spend limit tighter than the wallet still wins.
 */

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        marginGuard: { enabled: false }
    customers:
      prepaid-burst: {}
      capped-prepaid: { overrides: { limits: { spendPerPeriod: "0.03" } } }
`;

let tg: TestTollgate;
let dir: string;
beforeAll(async () => {
  tg = await startTestTollgate({ '--data-dir': tempDir(), '--lease-ttl': '1500' }, PLANS);
  dir = mkdtempSync(join(tmpdir(), 'tollgate-credits-leases-'));
});
afterAll(async () => {
  await tg?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface RpcError {
  code?: number;
  data?: { tollgate?: { reason?: string } };
}

async function burstOf(customer: string, n: number, m: number) {
  const ran = join(dir, `${customer}.ran`);
  const env = {
    ...(process.env as Record<string, string>),
    TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
    TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
    TOLLGATE_CUSTOMER_ID: customer,
    TOLLGATE_LEASES: '1',
    TOLLGATE_LEASE_TIMEOUT_MS: '3000',
    TG_TRANSPORT: 'stdio',
    TG_RAN_FILE: ran,
    OTEL_SERVICE_NAME: `credits-${customer}`,
  };
  const client = new Client({ name: 'burst-agent', version: '1.0.0' });
  await client.connect(
    new StdioClientTransport({
      command: process.execPath,
      args: [`${FIXTURES}matrix-v2.mjs`],
      cwd: PACKAGE_DIR,
      env,
      stderr: 'pipe',
    }),
  );
  try {
    const call = () => client.callTool({ name: 'echo', arguments: { text: 'x' } });
    const settled = await Promise.allSettled(Array.from({ length: n }, call));
    for (let i = 0; i < m; i++) settled.push(...(await Promise.allSettled([call()])));
    const refusals = settled
      .filter((s): s is PromiseRejectedResult => s.status === 'rejected')
      .map((s) => s.reason as RpcError);
    const runs = existsSync(ran) ? readFileSync(ran, 'utf8').split('\n').filter(Boolean).length : 0;
    return { ok: settled.length - refusals.length, refusals, runs };
  } finally {
    await client.close();
  }
}

async function billed(customer: string, n: number): Promise<Record<string, number>> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    await tg.lander?.idle();
    const rows = await query<{ decision: string; n: string }>(
      tg,
      'SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = {c:String} GROUP BY decision',
      { c: customer },
    );
    if (rows.reduce((a, r) => a + Number(r.n), 0) >= n || Date.now() > deadline)
      return Object.fromEntries(rows.map((r) => [r.decision, Number(r.n)]));
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('prepaid credits through quota leases', () => {
  it('a burst against 0.07 of credit runs exactly 7 tools; the rest are refused naming credits:exhausted', async () => {
    const customer = 'prepaid-burst';
    await tg.credits!.grant({
      product: 'demo-mcp',
      customer,
      kind: 'top_up',
      amount: '0.07',
      currency: 'USD',
      actor: 'test',
    });
    const r = await burstOf(customer, 20, 3);
    expect(r.runs).toBe(7);
    expect(r.ok).toBe(7);
    expect(r.refusals).toHaveLength(16);
    for (const e of r.refusals) {
      expect(e.code).toBe(REFUSAL_CODES.killed);
      expect(e.data?.tollgate?.reason).toBe('credits:exhausted');
    }
    expect(await billed(customer, 7)).toEqual({ billed: 7 });
    const w = await tg.credits!.wallet('demo-mcp', customer);
    expect(w?.balanceNano).toBe(0n);
    expect(w?.overdraftUsedNano).toBe(0n);
  });

  it('a spend limit tighter than the wallet still decides (3 calls of 0.03, with 1.00 of credit)', async () => {
    const customer = 'capped-prepaid';
    await tg.credits!.grant({
      product: 'demo-mcp',
      customer,
      kind: 'grant',
      amount: '1',
      currency: 'USD',
      actor: 'test',
    });
    const r = await burstOf(customer, 10, 0);
    expect(r.runs).toBe(3);
    for (const e of r.refusals) expect(e.data?.tollgate?.reason).toBe('hard_limit:spend_per_period');
    expect(await billed(customer, 3)).toEqual({ billed: 3 });
    expect((await tg.credits!.wallet('demo-mcp', customer))?.balanceNano).toBe(970_000_000n);
  });
});
