import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { REFUSAL_CODES } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectStdio } from '../../instrumentation/test/support/mcp.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate } from './support/harness.js';

/**
 * The hard stop at zero with the real Tollgate SDK: an instrumented MCP server on stdio (a real child
 * process) serves an agent loop of a prepaid customer; when the wallet runs dry Tollgate answers an export
 * with `kill` (credits:exhausted) and the SDK refuses the next call with the ordinary kill code before the
 * tool runs; a top-up lifts it and a new session works again.
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
      prepaid-co: {}
`;

let tg: TestTollgate;
let stateDir: string;
beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
  stateDir = mkdtempSync(join(tmpdir(), 'tollgate-credits-sdk-'));
});
afterAll(async () => {
  await tg?.cleanup();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

async function agentLoop(client: Client, paceMs = 20, max = 500) {
  let ok = 0;
  for (let i = 0; i < max; i++) {
    try {
      await client.callTool({ name: 'run_report', arguments: {} });
      ok++;
    } catch (err) {
      return { ok, error: err as McpError };
    }
    await new Promise((r) => setTimeout(r, paceMs));
  }
  return { ok, error: undefined };
}

describe('prepaid credits with the SDK on stdio', () => {
  it('refuses the calls after the wallet runs dry (kill, credits:exhausted); a top-up lets a new session work', async () => {
    const credits = tg.credits!;
    await credits.grant({
      product: 'demo-mcp',
      customer: 'prepaid-co',
      kind: 'top_up',
      amount: '0.1',
      currency: 'USD',
      actor: 'test',
    });
    const env = {
      TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: 'prepaid-co',
      TOLLGATE_AGENT_ID: 'looping-agent',
      TG_STATE_FILE: join(stateDir, 'stdio.json'),
    };
    const first = await connectStdio(env);
    const { ok, error } = await agentLoop(first.client);
    expect(error).toBeInstanceOf(McpError);
    expect(error?.code).toBe(REFUSAL_CODES.killed);
    expect(error?.message).toContain('customer "prepaid-co" is stopped by Tollgate (credits:exhausted)');
    expect(await first.exited).toBe(0);

    // 0.10 of credit at 0.01 a call: every call that ran is billed and drawn; those past zero drew the
    // overdraft bucket and are over the limit (the calls made while the export that reached zero was in flight)
    expect(ok).toBeGreaterThanOrEqual(10);
    await tg.lander?.idle();
    const rows = await query<{ decision: string; n: string }>(
      tg,
      "SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = 'prepaid-co' GROUP BY decision ORDER BY decision",
    );
    expect(Object.fromEntries(rows.map((r) => [r.decision, Number(r.n)]))).toEqual(
      ok === 10 ? { billed: 10 } : { billed: 10, over_limit: ok - 10 },
    );
    const w = await credits.wallet('demo-mcp', 'prepaid-co');
    expect(w?.balanceNano).toBe(100_000_000n - BigInt(ok) * 10_000_000n);

    // a top-up lifts the stop (repaying what was drawn beyond zero): a new session works
    const top = await credits.grant({
      product: 'demo-mcp',
      customer: 'prepaid-co',
      kind: 'top_up',
      amount: '1',
      currency: 'USD',
      actor: 'test',
    });
    expect(top.wallet.state).toEqual({ action: 'resume', reason: 'credits:topped_up' });
    const again = await connectStdio(env);
    const r = await again.client.callTool({ name: 'echo', arguments: { text: 'back' } });
    expect(r.content).toEqual([{ type: 'text', text: 'back' }]);
    await again.client.close();
    expect(await again.exited).toBe(0);
  });
});
