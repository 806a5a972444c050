import { createServer, type Server, type Socket } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { instrumentMcpServer, shutdownTollgate } from '../src/index.js';
import { waitFor } from './support/mcp.js';

/**
 * Fail-open: with Tollgate hanging (every export times out), tool results are neither delayed nor lost, the outage is logged once per
 * interval (not per call), and the calls are billed once Tollgate is back (the exporter keeps them).
 */

let tg: TestTollgate | undefined;
afterAll(async () => {
  await shutdownTollgate();
  await tg?.cleanup();
});

/** A Tollgate that hangs: accepts connections and never answers (exports can only time out). */
async function blackhole(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const s: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return {
    port: (s.address() as { port: number }).port,
    close: () =>
      new Promise((r) => {
        for (const sock of sockets) sock.destroy();
        s.close(() => r());
      }),
  };
}

async function client(server: McpServer): Promise<Client> {
  const [a, b] = InMemoryTransport.createLinkedPair();
  await server.connect(a);
  const c = new Client({ name: 'agent', version: '1' });
  await c.connect(b);
  return c;
}

function echoServer(): McpServer {
  const server = new McpServer({ name: 'fail-open', version: '1.0.0' });
  server.registerTool('echo', { inputSchema: { text: z.string() } }, async ({ text }) => ({
    content: [{ type: 'text', text }],
  }));
  return server;
}

async function timedCalls(c: Client, n: number, paceMs: number): Promise<number[]> {
  const latencies: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = await c.callTool({ name: 'echo', arguments: { text: `call ${i}` } });
    latencies.push(performance.now() - t);
    expect(r.content).toEqual([{ type: 'text', text: `call ${i}` }]);
    await new Promise((r) => setTimeout(r, paceMs));
  }
  return latencies.sort((a, b) => a - b);
}

describe('fail-open', () => {
  it('Tollgate down: results on time, one log line per interval, every call billed once it is back', async () => {
    const down = await blackhole();
    const port = down.port;
    const logged: string[] = [];
    const server = echoServer();
    instrumentMcpServer(server, {
      endpoint: `http://127.0.0.1:${port}`,
      ingestKey: DEV_INGEST_KEY,
      exportIntervalMs: 50,
      heartbeatIntervalMs: 100,
      logIntervalMs: 1000,
      timeoutMs: 1000,
      stateFile: false,
      logger: { warn: (m) => logged.push(m), info: (m) => logged.push(m) },
      customer: () => 'outage-co',
    });
    const plain = await client(echoServer());
    const c = await client(server);

    const baseline = await timedCalls(plain, 100, 5);
    const started = Date.now();
    const during = await timedCalls(c, 300, 5); // ~2 s of calls while every export fails
    const elapsedS = (Date.now() - started) / 1000;

    // not delayed: exports hang for a full second each, yet calls take what uninstrumented calls take
    const median = (xs: number[]) => xs[Math.floor(xs.length / 2)] as number;
    expect(median(during)).toBeLessThan(median(baseline) + 2);
    expect(during.at(-1)).toBeLessThan(900); // an export on the call path would take its 1 s timeout
    // logged once when it started, then at most once per second: not per call, not per export
    const outage = logged.filter((m) => m.includes('unreachable'));
    expect(outage[0]).toMatch(
      /^Tollgate unreachable at http:\/\/127\.0\.0\.1:\d+\/v1\/traces \(ETIMEDOUT\): tool calls go on/,
    );
    expect(outage.length).toBeGreaterThanOrEqual(1);
    expect(outage.length).toBeLessThanOrEqual(Math.ceil(elapsedS) + 1);

    // Tollgate comes up on that port: the buffered spans are delivered by the exporter's own retries
    await down.close();
    tg = await startTestTollgate({ '--otlp-port': String(port) });
    const rows = await waitFor(
      '300 billed calls',
      async () => {
        await tg?.lander?.idle();
        const [row] = await query<{ n: string; ids: string }>(
          tg as TestTollgate,
          "SELECT count() AS n, uniqExact(event_id) AS ids FROM mcp_tool_calls WHERE customer = 'outage-co'",
        );
        return Number(row?.n) >= 300 ? row : undefined;
      },
      60_000,
    );
    expect(rows).toEqual({ n: '300', ids: '300' });
    expect(logged.some((m) => m.startsWith('Tollgate reachable again'))).toBe(true);
  }, 120_000);
});
