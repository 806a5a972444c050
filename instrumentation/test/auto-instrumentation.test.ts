import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { connectStdio, FIXTURES, waitFor } from './support/mcp.js';

/**
 * Zero-code instrumentation in child processes: servers that never import Tollgate, started with
 * `--import @tollgate/instrumentation/register` (ESM, through the OTel loader hook) or
 * `--require @tollgate/instrumentation/register` (CommonJS), configured from the environment only.
 */

let tg: TestTollgate;

beforeAll(async () => {
  tg = await startTestTollgate();
});

afterAll(async () => {
  await tg?.cleanup();
});

const cases = [
  { module: 'ESM (McpServer)', flag: '--import', file: 'auto-server.mjs', customer: 'esm-co' },
  { module: 'CommonJS (low-level Server)', flag: '--require', file: 'auto-server.cjs', customer: 'cjs-co' },
];

describe('auto-instrumentation', () => {
  for (const c of cases) {
    it(`${c.module}: ${c.flag} @tollgate/instrumentation/register bills every call`, async () => {
      const s = await connectStdio(
        {
          TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
          TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
          TOLLGATE_CUSTOMER_ID: c.customer,
          OTEL_SERVICE_NAME: `auto-${c.customer}`,
        },
        [c.flag, '@tollgate/instrumentation/register', `${FIXTURES}${c.file}`],
      );
      for (let i = 0; i < 3; i++) {
        const r = await s.client.callTool({ name: 'echo', arguments: { text: `hi ${i}` } });
        expect(r.content).toEqual([{ type: 'text', text: `hi ${i}` }]);
      }
      await s.client.close();
      expect(await s.exited).toBe(0);
      const rows = await waitFor('3 billed calls', async () => {
        await tg.lander?.idle();
        const r = await query<Record<string, string>>(
          tg,
          `SELECT tool, transport, source, agent, protocol_version FROM mcp_tool_calls
           WHERE customer = {c:String}`,
          { c: c.customer },
        );
        return r.length >= 3 ? r : undefined;
      });
      expect(rows).toHaveLength(3);
      for (const r of rows) {
        // agent: the default resolver falls back to clientInfo.name of the connecting client
        expect(r).toMatchObject({ tool: 'echo', transport: 'stdio', source: 'sdk', agent: 'test-agent' });
        expect(r.protocol_version).not.toBe('');
      }
      // the loader hook did not make anything noisy
      expect(s.stderr.join('')).not.toMatch(/warning|error/i);
    });
  }
});
