import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
  tempDir,
} from '../../collector-processor/test/support/harness.js';
import { connectStdio, waitFor } from './support/mcp.js';

/**
 * A stdio MCP server is one process per agent session: it exits when its client goes away. When Tollgate is
 * down at that moment, the billing spans it still buffers must not die with it. They are handed to the next
 * process of the same service (through the directory of its state file) and billed once Tollgate is back —
 * exactly once each, whether the process ended by the end of its input or by SIGTERM.
 */

let tg: TestTollgate | undefined;
afterAll(async () => {
  await tg?.cleanup();
});

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise((r) => s.close(r));
  return port;
}

/** A Tollgate that accepts connections and never answers, on a free port; `close` ends it and its sockets. */
async function hangingTollgate() {
  const sockets = new Set<import('node:net').Socket>();
  const hang = createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
  const close = async () => {
    for (const sock of sockets) sock.destroy();
    await new Promise((r) => hang.close(r));
  };
  return { port: (hang.address() as { port: number }).port, sockets, close };
}

/** The calls of `customer` landed in `t` so far (the lander drained first). */
async function rowsOf(t: TestTollgate, customer: string): Promise<Row[]> {
  await t.lander?.idle();
  return query<Row>(t, 'SELECT span_id, tool, price_nano FROM mcp_tool_calls WHERE customer = {c:String}', {
    c: customer,
  });
}

/** The calls of `customer` landed in `t`, once there are `n` of them (or more). */
function billedRows(t: TestTollgate, customer: string, n: number): Promise<Row[]> {
  return waitFor(`${n} billed calls of ${customer}`, async () => {
    const r = await rowsOf(t, customer);
    return r.length >= n ? r : undefined;
  });
}

/** One plan, no free calls, a healthy margin: every call is billed and nothing is stopped. */
const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: flat
    plans:
      flat:
        freeCallsPerMonth: 0
        tools:
          "*":
            price: { perCall: "0.01" }
            cost: { perCall: "0.001" }
`;

interface Row {
  span_id: string;
  tool: string;
  price_nano: string;
}

describe('a stdio session that ends while Tollgate is down', () => {
  it('its calls are billed once Tollgate is back, by the next process of the service, once each', async () => {
    const port = await freePort();
    const dir = tempDir('tollgate-exit-outage-');
    const stateFile = join(dir, 'state.json');
    const env = {
      TOLLGATE_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: 'outage-co',
      TG_STATE_FILE: stateFile,
      TG_EXPORT_MS: '50',
    };

    // Tollgate is down (nothing listens on its port): the tools answer, and the sessions end
    const a = await connectStdio(env);
    for (const text of ['a1', 'a2', 'a3']) {
      const r = await a.client.callTool({ name: 'echo', arguments: { text } });
      expect(r.content).toEqual([{ type: 'text', text }]);
    }
    await a.client.close(); // end of input: the process exits on its own
    expect(await a.exited).toBe(0);

    const b = await connectStdio(env);
    for (const text of ['b1', 'b2', 'b3']) await b.client.callTool({ name: 'echo', arguments: { text } });
    process.kill(b.pid, 'SIGTERM'); // stopped by its supervisor
    await b.exited;
    await b.client.close().catch(() => {});

    // Tollgate comes back on the same port; the next session of the service delivers what the others left
    tg = await startTestTollgate({ '--otlp-port': String(port) }, PLANS);
    const running = tg;
    const c = await connectStdio(env);
    await c.client.callTool({ name: 'echo', arguments: { text: 'c1' } });
    await c.client.close();
    await c.exited;

    const rows = await billedRows(running, 'outage-co', 7);
    expect(rows.length).toBe(7);
    expect(new Set(rows.map((r) => r.span_id)).size).toBe(7);
    expect(rows.reduce((t, r) => t + BigInt(r.price_nano), 0n)).toBe(70_000_000n);

    // nothing is left to hand over, and a further session bills nothing twice
    const pending = `${stateFile}.pending`;
    expect(existsSync(pending) ? readdirSync(pending) : []).toEqual([]);
    const d = await connectStdio(env);
    await d.client.close();
    await d.exited;
    await new Promise((r) => setTimeout(r, 500));
    expect((await rowsOf(running, 'outage-co')).length).toBe(7);
  });

  it('Tollgate hangs and the supervisor kills 1 s after SIGTERM: the calls are still billed, once each', async () => {
    // chDB holds one data directory per process: the previous case's Tollgate goes first
    await tg?.cleanup();
    tg = undefined;
    // a Tollgate that accepts connections and never answers: the export in flight waits out its timeout
    const { port, sockets, close } = await hangingTollgate();
    const dir = tempDir('tollgate-exit-hang-');
    const stateFile = join(dir, 'state.json');
    const env = {
      TOLLGATE_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: 'hang-co',
      TG_STATE_FILE: stateFile,
      TG_EXPORT_MS: '50',
    };
    const a = await connectStdio(env);
    for (const text of ['h1', 'h2', 'h3']) await a.client.callTool({ name: 'echo', arguments: { text } });
    await waitFor('an export in flight', async () => (sockets.size > 0 ? true : undefined));
    // as the MCP SDK 2.x stdio client closes a server: SIGTERM, then SIGKILL (there 2 s later; 1 s here)
    process.kill(a.pid, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 1000));
    try {
      process.kill(a.pid, 'SIGKILL');
    } catch {
      // it had exited already
    }
    await a.exited;
    await a.client.close().catch(() => {});
    await close();

    // Tollgate comes back on that port: the next session of the service delivers what the killed one left
    const back = await startTestTollgate({ '--otlp-port': String(port) }, PLANS);
    tg = back;
    {
      const b = await connectStdio(env);
      await b.client.callTool({ name: 'echo', arguments: { text: 'h4' } });
      await b.client.close();
      await b.exited;
      const rows = await billedRows(back, 'hang-co', 4);
      expect(rows.length).toBe(4);
      expect(new Set(rows.map((r) => r.span_id)).size).toBe(4);
    }
  });

  it('a process that ends abruptly (process.exit, an uncaught exception) with Tollgate up: its calls are billed at once by a courier', async () => {
    await tg?.cleanup();
    tg = undefined;
    const running = await startTestTollgate({}, PLANS);
    tg = running;
    for (const how of ['exit', 'throw']) {
      const dir = tempDir('tollgate-exit-abrupt-');
      const customer = `abrupt-${how}-co`;
      const env = {
        TOLLGATE_OTLP_ENDPOINT: running.otlpUrl as string,
        TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
        TOLLGATE_CUSTOMER_ID: customer,
        TG_STATE_FILE: join(dir, 'state.json'),
        TG_EXPORT_MS: '60000', // nothing goes out before the exit: the batch is still held
        TG_EXIT_TOOL: how,
      };
      const a = await connectStdio(env);
      for (const text of ['x1', 'x2', 'x3']) await a.client.callTool({ name: 'echo', arguments: { text } });
      await a.client.callTool({ name: 'exit_soon', arguments: {} });
      expect(await a.exited).toBe(how === 'exit' ? 3 : 1);
      await a.client.close().catch(() => {});
      expect(a.stderr.join('')).toContain('a background process is delivering them');
      // no further process of the service is started: the courier delivers
      const rows = await billedRows(running, customer, 4);
      expect(rows.map((r) => r.tool).sort()).toEqual(['echo', 'echo', 'echo', 'exit_soon']);
      expect(new Set(rows.map((r) => r.span_id)).size).toBe(4);
      await waitFor('the handoff directory emptied', async () => {
        const pending = join(dir, 'state.json.pending');
        return !existsSync(pending) || readdirSync(pending).length === 0 ? true : undefined;
      });
    }
  });

  it('a courier stopped half-way (Tollgate hangs, then SIGTERM) leaves what it has not delivered for the next process', async () => {
    await tg?.cleanup();
    tg = undefined;
    const { port, close } = await hangingTollgate();
    const dir = tempDir('tollgate-exit-courier-');
    const stateFile = join(dir, 'state.json');
    const env = {
      TOLLGATE_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
      TOLLGATE_CUSTOMER_ID: 'courier-co',
      TG_STATE_FILE: stateFile,
      TG_EXPORT_MS: '60000',
      TG_EXIT_TOOL: 'exit',
    };
    const a = await connectStdio(env);
    for (const text of ['c1', 'c2']) await a.client.callTool({ name: 'echo', arguments: { text } });
    await a.client.callTool({ name: 'exit_soon', arguments: {} });
    expect(await a.exited).toBe(3);
    await a.client.close().catch(() => {});
    expect(a.stderr.join('')).toContain('a background process is delivering them');
    // the courier is waiting on the hanging Tollgate: stop it as a service manager would
    const pending = `${stateFile}.pending`;
    // its process, by its command line (/proc, as pgrep reads it)
    const courier = await waitFor('the courier', async () =>
      readdirSync('/proc')
        .filter((p) => /^\d+$/.test(p))
        .find((p) => {
          try {
            const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
            return argv.some((x) => x.endsWith('courier.js')) && argv.includes(pending);
          } catch {
            return false; // ended meanwhile
          }
        }),
    );
    expect(courier).toMatch(/^\d+$/);
    // well into its first try (a courier reads the directory as it starts)
    await new Promise((r) => setTimeout(r, 1500));
    process.kill(Number(courier), 'SIGTERM');
    await waitFor('the courier to end', async () => {
      try {
        process.kill(Number(courier), 0);
        return undefined;
      } catch {
        return true;
      }
    });
    expect(readdirSync(pending).filter((f) => !f.startsWith('.'))).toHaveLength(1);
    await close();

    // Tollgate comes back on that port: the next session of the service delivers them, once each
    const back = await startTestTollgate({ '--otlp-port': String(port) }, PLANS);
    tg = back;
    const b = await connectStdio({ ...env, TG_EXPORT_MS: '50' });
    await b.client.callTool({ name: 'echo', arguments: { text: 'c3' } });
    await b.client.close();
    await b.exited;
    const rows = await billedRows(back, 'courier-co', 4);
    expect(rows.length).toBe(4);
    expect(new Set(rows.map((r) => r.span_id)).size).toBe(4);
  });
});
