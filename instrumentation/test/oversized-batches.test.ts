import { createMcpHandler, McpServer } from '@modelcontextprotocol/server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as z from 'zod/v4';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { flushTollgate, instrumentMcpServer, shutdownTollgate, tollgateRuntimes } from '../src/index.js';
import { callStateless } from './support/mcp.js';

/**
 * A caller chooses its JSON-RPC request id, and the MCP SDK takes any string: one of 9 MB went into the span's
 * `jsonrpc.request.id` whole, the batch it was exported in passed Tollgate's body limit (413), and the
 * exporter dropped the batch — that call and every other call exported with it, other customers' included,
 * ran unbilled. Now the id is cut to 256 characters, and a batch Tollgate refuses as too large is sent again
 * in halves, so no span's size can take other calls down with it.
 */

let tg: TestTollgate;
let ran = 0;

/** 2.x's stateless handler (a server per request) billing to `tollgate`. */
function handlerFor(tollgate: TestTollgate) {
  return createMcpHandler(() => {
    const server = new McpServer({ name: 'ids', version: '1.0.0' });
    instrumentMcpServer(server, {
      endpoint: tollgate.otlpUrl,
      ingestKey: DEV_INGEST_KEY,
      exportIntervalMs: 60_000, // one batch, sent by the flush below
      stateFile: false,
      logger: false,
      customer: (req) => (req.headers?.['x-test-customer'] as string | undefined) ?? 'nobody',
    });
    server.registerTool('echo', { inputSchema: z.object({ text: z.string() }) }, async ({ text }) => {
      ran++;
      return { content: [{ type: 'text', text }] };
    });
    return server;
  });
}

async function call(
  handler: { fetch(req: Request): Promise<Response> },
  customer: string,
  id: string | number,
): Promise<unknown> {
  return (await callStateless(handler, 'echo', { id, headers: { 'x-test-customer': customer } })).body.result;
}

async function billed(customer: string): Promise<number> {
  await tg.lander!.idle();
  const rows = await query(tg, 'SELECT count() n FROM mcp_tool_calls WHERE customer = {c:String}', {
    c: customer,
  });
  return Number(rows[0]?.n);
}

beforeAll(async () => {
  tg = await startTestTollgate({ '--otlp-body-limit': String(64 * 1024) });
});
afterAll(async () => {
  await shutdownTollgate();
  await tg?.cleanup();
});

describe('a batch of spans Tollgate refuses as too large', () => {
  it("a caller's megabyte of request id is cut: its call and the other customer's calls of its batch are billed", async () => {
    const handler = handlerFor(tg);
    const before = ran;
    const huge = 'x'.repeat(1024 * 1024); // over this Tollgate's 64 KiB body limit (9 MB over 16 MiB by default)
    for (let i = 0; i < 2; i++) expect(await call(handler, 'huge-id-co', `${huge}${i}`)).toBeDefined();
    for (let i = 0; i < 5; i++) expect(await call(handler, 'bystander-co', i)).toBeDefined();
    await flushTollgate();
    expect(ran - before).toBe(7);
    expect(await billed('huge-id-co')).toBe(2);
    expect(await billed('bystander-co')).toBe(5);
    await handler.close();
  });

  it("spans Tollgate refuses (its answer's partial_success) are counted and logged, not passed over in silence", async () => {
    const warnings: string[] = [];
    const handler = createMcpHandler(() => {
      const server = new McpServer({ name: 'refused', version: '1.0.0' });
      instrumentMcpServer(server, {
        endpoint: tg.otlpUrl,
        ingestKey: DEV_INGEST_KEY,
        exportIntervalMs: 60_000,
        stateFile: false,
        logger: { warn: (m) => warnings.push(m) },
        serviceName: 'refused-spans',
        customer: () => undefined, // no customer: Tollgate cannot bill the call
      });
      server.registerTool('echo', { inputSchema: z.object({ text: z.string() }) }, async ({ text }) => ({
        content: [{ type: 'text', text }],
      }));
      return server;
    });
    for (let i = 0; i < 3; i++) await callStateless(handler, 'echo', { id: i });
    await flushTollgate();
    // the other tests' runtimes sent billable spans only
    expect(tollgateRuntimes().map((r) => r.exporter?.stats.rejectedSpans ?? 0)).toContain(3);
    expect(tollgateRuntimes().reduce((n, r) => n + (r.exporter?.stats.rejectedSpans ?? 0), 0)).toBe(3);
    expect(warnings.filter((w) => w.includes('refused 3 billing span(s)'))).toHaveLength(1);
    await handler.close();
  });

  it('300 calls in one batch over a 64 KiB body limit: sent in halves until each is taken, every call billed once', async () => {
    const handler = handlerFor(tg);
    const before = ran;
    for (let i = 0; i < 300; i++) expect(await call(handler, 'big-batch-co', i)).toBeDefined();
    await flushTollgate();
    expect(ran - before).toBe(300);
    expect(await billed('big-batch-co')).toBe(300);
    await handler.close();
  });
});
