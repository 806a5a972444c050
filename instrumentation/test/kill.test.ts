import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import type { Directive } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { REFUSALS, shutdownTollgate } from '../src/index.js';
import { connectHttp, connectStdio, type HttpMcp, startHttpMcp, waitFor } from './support/mcp.js';

/**
 * The kill path end to end, with a real Tollgate enforcing real plans in Redis: an agent loop crosses its
 * budget, Tollgate answers an export with `kill`, the SDK refuses the next call before the tool runs and
 * closes the session; a new session of the same customer is refused until an operator lifts the kill.
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
      budget-co: { overrides: { limits: { spendPerPeriod: "0.1" } } }
      http-budget: { overrides: { limits: { spendPerPeriod: "0.05" } } }
`;

let tg: TestTollgate;
let web: HttpMcp;
let stateDir: string;
const seen: Directive[] = [];

beforeAll(async () => {
  tg = await startTestTollgate({}, PLANS);
  stateDir = mkdtempSync(join(tmpdir(), 'tollgate-sdk-state-'));
  web = await startHttpMcp({
    endpoint: tg.otlpUrl,
    ingestKey: DEV_INGEST_KEY,
    serviceName: 'kill-http',
    exportIntervalMs: 100,
    heartbeatIntervalMs: 300,
    stateFile: false,
    logger: false,
    onDirective: (d) => {
      seen.push(d);
    },
  });
});

afterAll(async () => {
  await web?.close();
  await shutdownTollgate();
  await tg?.cleanup();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

/** An agent loop: calls a tool every `paceMs` until a call fails; returns the successes and the error. */
async function agentLoop(client: Client, tool: string, paceMs = 20, max = 500) {
  let ok = 0;
  for (let i = 0; i < max; i++) {
    try {
      await client.callTool({ name: tool, arguments: {} });
      ok++;
    } catch (err) {
      return { ok, error: err as McpError };
    }
    await new Promise((r) => setTimeout(r, paceMs));
  }
  return { ok, error: undefined };
}

async function decisions(customer: string, total: number): Promise<Record<string, number>> {
  const rows = await waitFor(`${total} rows of ${customer}`, async () => {
    await tg.lander?.idle();
    const r = await query<{ decision: string; n: string }>(
      tg,
      'SELECT decision, count() AS n FROM mcp_tool_calls WHERE customer = {c:String} GROUP BY decision',
      { c: customer },
    );
    return r.reduce((s, x) => s + Number(x.n), 0) >= total ? r : undefined;
  });
  return Object.fromEntries(rows.map((r) => [r.decision, Number(r.n)]));
}

describe('kill on stdio', () => {
  it('stops an agent loop past its budget, ends the process, refuses a restarted session until resume', async () => {
    const env = {
      TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: 'budget-co',
      TOLLGATE_AGENT_ID: 'looping-agent',
      TG_STATE_FILE: join(stateDir, 'stdio.json'),
    };
    const first = await connectStdio(env);
    const { ok, error } = await agentLoop(first.client, 'run_report');

    // refused with a clear JSON-RPC error, before the tool ran
    expect(error).toBeInstanceOf(McpError);
    expect(error?.code).toBe(REFUSALS.killed.code);
    expect(error?.message).toContain(
      'customer "budget-co" is stopped by Tollgate (hard_limit:spend_per_period)',
    );
    expect(error?.data).toMatchObject({
      tollgate: { refusal: 'killed', reason: 'hard_limit:spend_per_period' },
    });
    // the server process ends cleanly
    expect(await first.exited).toBe(0);

    // 0.10 budget at 0.01 a call: 10 billed; every call that ran is billed (over_limit past the budget:
    // the calls made while the crossing export was in flight, a few export intervals at most on a loaded
    // machine); the refused call left no row
    expect(ok).toBeGreaterThan(10);
    const byDecision = await decisions('budget-co', ok);
    expect(byDecision).toEqual({ billed: 10, over_limit: ok - 10 });
    expect(ok - 10).toBeLessThan(40);

    // a restarted server (new process, new session) refuses the same customer at `initialize`
    const refused = await connectStdio(env).catch((err: unknown) => err as McpError);
    expect(refused).toBeInstanceOf(McpError);
    expect((refused as McpError).code).toBe(REFUSALS.killed.code);
    expect((refused as McpError).message).toContain('Session refused: customer "budget-co"');

    // an operator lifts the kill: the next restart gets `resume` from Tollgate and works again
    await tg.admin?.lift({ product: 'demo-mcp', customer: 'budget-co', scope: 'customer', actor: 'test' });
    const again = await connectStdio(env);
    const r = await again.client.callTool({ name: 'echo', arguments: { text: 'back' } });
    expect(r.content).toEqual([{ type: 'text', text: 'back' }]);
    await again.client.close();
    expect(await again.exited).toBe(0);
  });
});

describe('kill on HTTP', () => {
  it('ends the killed session, refuses new sessions of the customer on both HTTP transports, not others', async () => {
    const a = await connectHttp('streamable_http', web.url, 'http-budget', 'agent-a');
    const sessionId = (a.transport as { sessionId?: string } | undefined)?.sessionId as string;
    expect(web.sessions.has(sessionId)).toBe(true);
    const { ok, error } = await agentLoop(a, 'run_report');
    expect(error?.code).toBe(REFUSALS.killed.code);
    expect(ok).toBeGreaterThan(5);
    expect(seen.find((d) => d.action === 'kill' && d.customer === 'http-budget')).toMatchObject({
      scope: 'customer',
      reason: 'hard_limit:spend_per_period',
    });

    // that session ends: the server side is closed and the client's next call fails
    await waitFor('the killed session to close', () => !web.sessions.has(sessionId));
    await expect(a.callTool({ name: 'echo', arguments: { text: 'x' } })).rejects.toThrow();

    // new sessions of the killed customer are refused at initialize, on Streamable HTTP and SSE
    for (const kind of ['streamable_http', 'sse'] as const) {
      const err = await connectHttp(kind, web.url, 'http-budget', 'agent-b').catch(
        (e: unknown) => e as McpError,
      );
      expect(err).toBeInstanceOf(McpError);
      expect((err as McpError).code).toBe(REFUSALS.killed.code);
    }
    // another customer is not affected
    const other = await connectHttp('streamable_http', web.url, 'other-co', 'agent-c');
    await expect(other.callTool({ name: 'echo', arguments: { text: 'fine' } })).resolves.toMatchObject({
      content: [{ type: 'text', text: 'fine' }],
    });
    await other.close();

    // resume lifts it: it arrives with the next heartbeat, and new sessions work again
    await tg.admin?.lift({ product: 'demo-mcp', customer: 'http-budget', scope: 'customer', actor: 'test' });
    await waitFor('resume', () => seen.some((d) => d.action === 'resume' && d.customer === 'http-budget'));
    const b = await connectHttp('streamable_http', web.url, 'http-budget', 'agent-b');
    await expect(b.callTool({ name: 'echo', arguments: { text: 'back' } })).resolves.toBeTruthy();
    await b.close();
  });
});
