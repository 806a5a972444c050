import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import type { Directive } from '@tollgate/contracts';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  type InstrumentMcpServerOptions,
  instrumentMcpServer,
  REFUSALS,
  shutdownTollgate,
} from '../src/index.js';
import { waitFor } from './support/mcp.js';

/**
 * What the SDK does with each directive, against a scripted OTLP/HTTP endpoint that answers every export
 * with the directives of the script (JSON encoding, key `tollgate`) and records what it receives. The kill
 * path against a real Tollgate is in kill.test.ts.
 */

interface Received {
  spans: { name: string; events: { name: string; attributes: { key: string }[] }[] }[];
  instanceIds: string[];
}

class ScriptedTollgate {
  directives: Directive[] = [];
  received: Received[] = [];
  private server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const doc = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      const rs = doc.resourceSpans ?? [];
      this.received.push({
        spans: rs.flatMap((r: { scopeSpans?: { spans?: unknown[] }[] }) =>
          (r.scopeSpans ?? []).flatMap((s) => s.spans ?? []),
        ),
        instanceIds: rs.flatMap(
          (r: { resource?: { attributes?: { key: string; value: { stringValue?: string } }[] } }) =>
            (r.resource?.attributes ?? [])
              .filter((a) => a.key === 'service.instance.id')
              .map((a) => a.value.stringValue as string),
        ),
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(this.directives.length ? { tollgate: { directives: this.directives } } : {}));
    });
  });
  url = '';
  async start() {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  stop() {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(r));
  }
  get heartbeats() {
    return this.received.filter((r) => r.spans.length === 0);
  }
  get spans() {
    return this.received.flatMap((r) => r.spans);
  }
}

const stub = new ScriptedTollgate();
const collector = new ScriptedTollgate();
beforeAll(async () => {
  await stub.start();
  await collector.start();
});
afterAll(async () => {
  await stub.stop();
  await collector.stop();
});
afterEach(async () => {
  await shutdownTollgate();
  stub.directives = [];
  stub.received = [];
  collector.received = [];
});

const base = (over: Partial<Directive>): Directive => ({
  action: 'kill',
  scope: 'customer',
  id: 'acme',
  customer: 'acme',
  reason: 'operator:alice',
  untilUnixMs: 0,
  ...over,
});

async function connect(options: InstrumentMcpServerOptions, agent = 'bot') {
  const server = new McpServer({ name: 'scripted', version: '1.0.0' });
  instrumentMcpServer(server, {
    endpoint: stub.url,
    format: 'json',
    exportIntervalMs: 20,
    heartbeatIntervalMs: 100,
    stateFile: false,
    logger: false,
    customer: () => 'acme',
    ...options,
  });
  for (const tool of ['echo', 'other']) {
    server.registerTool(tool, { inputSchema: { text: z.string() } }, async ({ text }) => ({
      content: [{ type: 'text', text }],
    }));
  }
  const [a, b] = InMemoryTransport.createLinkedPair();
  await server.connect(a);
  const client = new Client({ name: agent, version: '1' });
  await client.connect(b);
  const call = (tool = 'echo') => client.callTool({ name: tool, arguments: { text: 'x' } });
  return { server, client, call };
}

/** Makes one call so an export happens, then waits until the SDK has seen the scripted directives. */
async function deliver(call: () => Promise<unknown>, seen: Directive[], action: Directive['action']) {
  await call().catch(() => {});
  await waitFor(`a ${action} directive`, () => seen.some((d) => d.action === action));
}

describe('directives', () => {
  it('throttle: calls above the rate are refused with the time to wait; later calls pass', async () => {
    const seen: Directive[] = [];
    const { call } = await connect({ onDirective: (d) => void seen.push(d) });
    stub.directives = [base({ action: 'throttle', ratePerSecond: 2, reason: 'margin_guard:throttle' })];
    await deliver(call, seen, 'throttle');
    const results = await Promise.allSettled([call(), call(), call(), call()]);
    const refused = results
      .filter((r) => r.status === 'rejected')
      .map((r) => (r as PromiseRejectedResult).reason);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
    expect(refused).toHaveLength(2);
    const err = refused[0] as McpError;
    expect(err.code).toBe(REFUSALS.throttled.code);
    expect(err.message).toMatch(
      /rate limited by Tollgate to 2 calls\/s \(margin_guard:throttle\); retry after \d+ ms/,
    );
    const retryAfterMs = (err.data as { tollgate: { retryAfterMs: number } }).tollgate.retryAfterMs;
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(500);
    await new Promise((r) => setTimeout(r, retryAfterMs + 50));
    await expect(call()).resolves.toBeTruthy();
  });

  it('warn: the hook hears it once, each call in its scope carries a tollgate.warn span event', async () => {
    const seen: Directive[] = [];
    const { call } = await connect({ onDirective: (d) => void seen.push(d) });
    stub.directives = [base({ action: 'warn', reason: 'margin_guard:warn', marginBps: 1750 })];
    await deliver(call, seen, 'warn');
    await call();
    await call();
    expect(seen.filter((d) => d.action === 'warn')).toHaveLength(1);
    await waitFor('3 spans', () => stub.spans.length >= 3);
    const events = stub.spans.map((s) => (s.events ?? []).map((e) => e.name));
    expect(events).toEqual([[], ['tollgate.warn'], ['tollgate.warn']]);
    expect(stub.spans[1]?.events[0]?.attributes.map((a) => a.key)).toEqual([
      'tollgate.directive.scope',
      'tollgate.directive.id',
      'tollgate.directive.reason',
      'tollgate.directive.margin_bps',
    ]);
  });

  it('kill of one tool refuses that tool only and keeps the session; resume lifts it', async () => {
    const seen: Directive[] = [];
    const { call } = await connect({ onDirective: (d) => void seen.push(d) });
    stub.directives = [base({ scope: 'tool', id: 'echo', reason: 'hard_limit:calls_per_tool' })];
    await deliver(call, seen, 'kill');
    await expect(call('echo')).rejects.toMatchObject({ code: REFUSALS.killed.code });
    await expect(call('other')).resolves.toBeTruthy();
    await new Promise((r) => setTimeout(r, 200));
    await expect(call('other')).resolves.toBeTruthy(); // the session was not closed
    stub.directives = [base({ action: 'resume', scope: 'tool', id: 'echo' })];
    await deliver(() => call('other'), seen, 'resume');
    await expect(call('echo')).resolves.toBeTruthy();
  });

  it('kill of an agent: that agent’s session is refused and closed, another agent of the customer goes on', async () => {
    const seen: Directive[] = [];
    const rogue = await connect({ onDirective: (d) => void seen.push(d) }, 'rogue');
    const good = await connect({ onDirective: (d) => void seen.push(d) }, 'good');
    stub.directives = [base({ scope: 'agent', id: 'rogue' })];
    await deliver(good.call, seen, 'kill');
    await expect(rogue.call()).rejects.toMatchObject({ code: REFUSALS.killed.code });
    await waitFor('the rogue session to close', () => rogue.server.server.transport === undefined);
    await expect(good.call()).resolves.toBeTruthy();
    expect(good.server.server.transport).toBeDefined();
  });

  it('a hook can override each action, and a hook that throws never breaks the server', async () => {
    const seen: Directive[] = [];
    // declines kills: calls keep running
    const lenient = await connect({
      onDirective: (d) => {
        seen.push(d);
        return d.action === 'kill' ? { enforce: false } : undefined;
      },
    });
    stub.directives = [base({})];
    await deliver(lenient.call, seen, 'kill');
    await expect(lenient.call()).resolves.toBeTruthy();
    await shutdownTollgate();

    // refuses but keeps the session open
    const keepOpen = await connect({ onDirective: () => ({ closeSessions: false }) });
    await keepOpen.call().catch(() => {});
    await waitFor(
      'the kill',
      async () => (await keepOpen.call().catch((e: McpError) => e)) instanceof McpError,
    );
    await new Promise((r) => setTimeout(r, 200));
    expect(keepOpen.server.server.transport).toBeDefined();
    await shutdownTollgate();

    // throws: logged, and the default action still applies
    const logged: string[] = [];
    const throwing = await connect({
      logger: { warn: (m) => logged.push(m) },
      onDirective: () => {
        throw new Error('hook bug');
      },
    });
    await throwing.call().catch(() => {});
    await waitFor(
      'the refusal',
      async () => (await throwing.call().catch((e: McpError) => e)) instanceof McpError,
    );
    expect(logged.some((m) => m.includes('onDirective hook threw: hook bug'))).toBe(true);
  });

  it('an idle SDK heartbeats with its instance id, and learns of a kill that way', async () => {
    const seen: Directive[] = [];
    const { call } = await connect({ onDirective: (d) => void seen.push(d) });
    await call();
    await waitFor('two idle heartbeats', () => stub.heartbeats.length >= 2);
    expect(stub.heartbeats[0]?.instanceIds).toHaveLength(1);
    stub.directives = [base({})];
    await waitFor('the kill from a heartbeat', () => seen.some((d) => d.action === 'kill'));
    await expect(call()).rejects.toMatchObject({ code: REFUSALS.killed.code });
  });

  it('spans through a Collector, directives from Tollgate: heartbeats go to Tollgate at every interval', async () => {
    const seen: Directive[] = [];
    const { call } = await connect({
      endpoint: collector.url,
      directivesEndpoint: stub.url,
      onDirective: (d) => void seen.push(d),
    });
    stub.directives = [base({})];
    await call(); // billed through the collector
    await waitFor('the kill from Tollgate', () => seen.some((d) => d.action === 'kill'));
    await waitFor('the span at the collector', () => collector.spans.length >= 1);
    expect(stub.spans).toEqual([]); // Tollgate got heartbeats only
    expect(collector.heartbeats).toEqual([]);
    await expect(call()).rejects.toMatchObject({ code: REFUSALS.killed.code });
  });
});
