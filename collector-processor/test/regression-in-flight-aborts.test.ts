import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import {
  DEV_INGEST_KEY,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
  tempDir,
} from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * An export whose client hangs up (an exporter's timeout, a dropped connection, a hostile sender) must give
 * its in-flight slot back. The slot used to be released in fastify's onResponse hook, which runs only when a
 * response *finishes*: a request aborted mid-upload or mid-processing never finishes its response, so each
 * one kept a slot for the life of the process, and after `otlp.maxInFlight` of them every export was
 * answered 429 until a restart.
 */

const MAX_IN_FLIGHT = 2;
/** A second ingest key (another team of the same product). */
const OTHER_KEY = 'tg_test_other_team';
let tg: TestTollgate;

beforeAll(async () => {
  const dir = tempDir();
  const config = join(dir, 'tollgate.yaml');
  writeFileSync(
    config,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
  - { name: other-team, sha256: ${sha256Hex(OTHER_KEY)}, product: demo-mcp }
`,
  );
  tg = await startTestTollgate({
    '--data-dir': dir,
    '--config': config,
    '--otlp-max-in-flight': String(MAX_IN_FLIGHT),
  });
}, 60_000);
afterAll(async () => {
  await tg?.cleanup();
});

/** Writes the head and `bodyPart` of a POST declaring `declaredLength` bytes, then drops the connection. */
function postAndHangUp(path: string, bodyPart: string, declaredLength: number): Promise<void> {
  return new Promise((resolve) => {
    const u = new URL(`${tg.otlpUrl}${path}`);
    const socket = connect(Number(u.port), u.hostname, () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nhost: ${u.host}\r\nauthorization: Bearer ${DEV_INGEST_KEY}\r\n` +
          `content-type: application/json\r\ncontent-length: ${declaredLength}\r\n\r\n${bodyPart}`,
      );
      // long enough for the server to have admitted the request and begun reading its body
      setTimeout(() => {
        socket.destroy();
        resolve();
      }, 100);
    });
    socket.on('error', () => resolve());
  });
}

async function inFlight(): Promise<number | undefined> {
  return (await readMetrics(tg.apiUrl as string)).get('tollgate_exports_in_flight');
}

async function exportOne(customer: string, key = DEV_INGEST_KEY): Promise<number> {
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(exportOf([toolSpan({ customer })])),
  });
  await res.arrayBuffer();
  return res.status;
}

describe('in-flight slots of exports whose client hung up', () => {
  it('are released when the client hangs up mid-upload', async () => {
    for (let i = 0; i < MAX_IN_FLIGHT + 1; i++) {
      await postAndHangUp('/v1/traces', '{"resourceSpans":[', 100_000);
    }
    await vi.waitFor(async () => expect(await inFlight()).toBe(0), { timeout: 5_000, interval: 50 });
    expect(await exportOne('after-upload-aborts')).toBe(200);
  });

  it('are released when the client hangs up once its export is sent, before the answer', async () => {
    for (let i = 0; i < MAX_IN_FLIGHT + 1; i++) {
      const body = JSON.stringify(
        exportOf([toolSpan({ customer: 'hung-up', spanId: randomBytes(8).toString('hex') })]),
      );
      await postAndHangUp('/v1/traces', body, Buffer.byteLength(body));
    }
    await vi.waitFor(async () => expect(await inFlight()).toBe(0), { timeout: 5_000, interval: 50 });
    expect(await exportOne('after-answer-aborts')).toBe(200);
  });

  it('are released for the usage-event endpoints too', async () => {
    for (let i = 0; i < MAX_IN_FLIGHT + 1; i++) {
      await postAndHangUp('/v1/ingest/events', '[{"tool":', 100_000);
    }
    await vi.waitFor(async () => expect(await inFlight()).toBe(0), { timeout: 5_000, interval: 50 });
    expect(await exportOne('after-event-aborts')).toBe(200);
  });

  it("one key's uploads that never finish (a head, then a byte now and then) hold no slot another key needs", async () => {
    const u = new URL(tg.otlpUrl as string);
    const open = async (key: string): Promise<Socket> => {
      const socket = connect(Number(u.port), u.hostname);
      socket.on('error', () => {});
      await new Promise((r) => socket.once('connect', r));
      socket.write(
        `POST /v1/traces HTTP/1.1\r\nhost: ${u.host}\r\nauthorization: Bearer ${key}\r\n` +
          'content-type: application/json\r\ncontent-length: 100000\r\n\r\n{',
      );
      return socket;
    };
    const slow: Socket[] = [];
    try {
      for (let i = 0; i < 4 * MAX_IN_FLIGHT; i++) slow.push(await open(OTHER_KEY));
      await new Promise((r) => setTimeout(r, 200));
      for (const s of slow) s.write(' '); // still sending
      // the other team's exports go through, however many such sockets stay open
      for (let i = 0; i < 3; i++) expect(await exportOne(`beside-slow-${i}`)).toBe(200);
      // the slow key's own further requests are refused while it has that many uploads open
      expect(await exportOne('slow-key', OTHER_KEY)).toBe(429);
    } finally {
      for (const s of slow) s.destroy();
    }
    // its uploads gone, the key sends again
    await vi.waitFor(async () => expect(await exportOne('slow-key-later', OTHER_KEY)).toBe(200), {
      timeout: 5_000,
      interval: 100,
    });
    expect(await inFlight()).toBe(0);
  });

  it('clients that send whole exports and never read their answers hold no slot once each is answered', async () => {
    const u = new URL(tg.otlpUrl as string);
    const sockets: Socket[] = [];
    try {
      for (let i = 0; i < 4 * MAX_IN_FLIGHT; i++) {
        const body = JSON.stringify(
          exportOf([toolSpan({ customer: 'never-reads', spanId: randomBytes(8).toString('hex') })]),
        );
        const socket = connect(Number(u.port), u.hostname);
        socket.on('error', () => {});
        await new Promise((r) => socket.once('connect', r));
        socket.pause(); // never reads
        socket.write(
          `POST /v1/traces HTTP/1.1\r\nhost: ${u.host}\r\nauthorization: Bearer ${OTHER_KEY}\r\n` +
            `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        sockets.push(socket);
      }
      await vi.waitFor(async () => expect(await inFlight()).toBe(0), { timeout: 10_000, interval: 100 });
      for (let i = 0; i < 3; i++) expect(await exportOne(`beside-unread-${i}`)).toBe(200);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });

  it('and answered exports give theirs back too (keep-alive connections included)', async () => {
    for (let i = 0; i < 3 * MAX_IN_FLIGHT; i++) expect(await exportOne('answered')).toBe(200);
    await vi.waitFor(async () => expect(await inFlight()).toBe(0), { timeout: 5_000, interval: 50 });
  });
});
