import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LeaseResult } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/settings.js';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';
import { exportOf, recordOf, toolSpan } from './support/otlp-json.js';

/**
 * An ingest key bound to one customer (`customer:`) — say, the key of one customer's dedicated MCP
 * deployment — can bill and lease for that customer only: a leaked or misused key cannot put calls on
 * another customer's invoice or hold back another customer's limits.
 */
const BOUND_KEY = 'tg_test_bound_to_acme';
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        limits: { callsPerDay: 100 }
`;

let tg: TestTollgate;
beforeAll(async () => {
  const dir = tempDir();
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
  - { name: acme-deployment, sha256: ${sha256Hex(BOUND_KEY)}, product: demo-mcp, customer: acme-bound }
`,
  );
  tg = await startTestTollgate({ '--data-dir': dir, '--config': configFile }, PLANS);
});
afterAll(async () => {
  await tg?.cleanup();
});

const post = (path: string, key: string, body: unknown) =>
  fetch(`${tg.otlpUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });

async function landed(spanIds: string[]): Promise<Record<string, string>[]> {
  await tg.lander!.idle();
  return query(
    tg,
    'SELECT customer, count() AS n FROM mcp_tool_calls WHERE span_id IN ({ids:Array(String)}) GROUP BY customer ORDER BY customer',
    { ids: spanIds },
  );
}

describe('an ingest key bound to one customer', () => {
  it('bills spans of that customer (and spans naming none), rejects the others with customer_not_allowed', async () => {
    const own = [toolSpan({ customer: 'acme-bound' }), toolSpan({ customer: 'acme-bound' })];
    const unnamed = toolSpan({ attrs: { 'tollgate.customer.id': undefined } });
    const foreign = [toolSpan({ customer: 'globex' }), toolSpan({ customer: 'globex' })];
    const res = await post('/v1/traces', BOUND_KEY, exportOf([...own, unnamed, ...foreign]));
    expect(res.status).toBe(200);
    const body = (await res.json()) as { partialSuccess?: { rejectedSpans?: string; errorMessage?: string } };
    expect(body.partialSuccess?.rejectedSpans).toBe('2');
    expect(body.partialSuccess?.errorMessage).toContain('customer_not_allowed');
    const all = [...own, unnamed, ...foreign].map((s) => s.spanId);
    expect(await landed(all)).toEqual([{ customer: 'acme-bound', n: '3' }]);
    // the same spans with an unbound key of the product: billed to whom they name
    const res2 = await post('/v1/traces', DEV_INGEST_KEY, exportOf(foreign));
    expect(res2.status).toBe(200);
    expect(await landed(foreign.map((s) => s.spanId))).toEqual([{ customer: 'globex', n: '2' }]);
  });

  it('rejects usage events naming another customer', async () => {
    const ev = (customerId: string) => ({
      id: `evt-${Math.random().toString(36).slice(2)}`,
      customerId,
      timestamp: new Date(Date.now() - 1000).toISOString(),
      metricName: 'mcp.tool_call',
      productType: 'mcp',
      toolName: 'search_docs',
      executionDurationMs: 10,
    });
    const res = await post('/v1/ingest/batch', BOUND_KEY, { events: [ev('acme-bound'), ev('globex')] });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      accepted: 1,
      rejected: [{ index: 1, reason: 'customer_not_allowed' }],
    });
  });

  it('takes leases for that customer only', async () => {
    const lease = async (customer: string) => {
      const res = await post('/v1/leases', BOUND_KEY, {
        instanceId: 'inst-bound',
        requests: [{ op: 'grant', customer, wantCalls: 5 }],
      });
      expect(res.status).toBe(200);
      return ((await res.json()) as { results: LeaseResult[] }).results[0] as LeaseResult;
    };
    const foreign = await lease('globex');
    expect(foreign.ok).toBe(false);
    expect(!foreign.ok && foreign.error.code).toBe('TG_LEASE_CUSTOMER_NOT_ALLOWED');
    expect((await lease('acme-bound')).ok).toBe(true);
  });

  it('a spool record of such a key is replayed with the same binding', async () => {
    const spans = [toolSpan({ customer: 'acme-bound' }), toolSpan({ customer: 'globex' })];
    const rec = recordOf('bound-replay-1', tg.plans!.current.version, spans, {
      defaultCustomer: 'acme-bound',
      customer: 'acme-bound',
    });
    await tg.pipeline!.replay([rec]);
    expect(await landed(spans.map((s) => s.spanId))).toEqual([{ customer: 'acme-bound', n: '1' }]);
  });

  it('a key bound to one customer with another default customer does not load', () => {
    const dir = tempDir();
    const file = join(dir, 'tollgate.yaml');
    writeFileSync(
      file,
      `ingestKeys:
  - { name: odd, sha256: ${sha256Hex('x')}, product: demo-mcp, customer: a, defaultCustomer: b }
`,
    );
    expect(() => loadConfig({ '--config': file }, {})).toThrow(/defaultCustomer, if set, must be the same/);
  });
});
