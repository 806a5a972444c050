import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { SpanKind } from '@opentelemetry/api';
import { type ExportResult, ExportResultCode } from '@opentelemetry/core';
import { OTLPTraceExporter as HttpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { DEV_INGEST_KEY, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';

/**
 * Issue 12, point 1: a refused request (too large, unauthenticated, no such route) gets its status even
 * while the client is still sending: the server reads and discards the rest of the body up to a bound,
 * answers, then closes. Before the fix the socket was closed under the client (EPIPE / ECONNRESET), which
 * an OTLP exporter treats as retryable, so it resent the same oversized export.
 */

const API_KEY = 'tg_test_edges_admin';
const BODY_LIMIT = 1024 * 1024;
let tg: TestTollgate;

beforeAll(async () => {
  const dir = tempDir();
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
apiKeys:
  - { name: ops, sha256: ${sha256Hex(API_KEY)}, role: admin, products: [demo-mcp] }
`,
  );
  tg = await startTestTollgate({
    '--data-dir': dir,
    '--config': configFile,
    '--otlp-body-limit': String(BODY_LIMIT),
  });
}, 60_000);
afterAll(async () => {
  await tg?.cleanup();
});

interface RawAnswer {
  status?: number;
  headers?: Record<string, string>;
  body?: string;
  error?: string;
}

/**
 * POSTs `size` bytes the way a client that reads only after it has sent everything does (Python's
 * http.client, many SDK transports): head, then the body in 64 KiB writes, then the response. Reports the
 * status, headers and body, or the socket error the client saw (EPIPE, ECONNRESET).
 */
function rawPost(
  url: string,
  size: number,
  headers: Record<string, string>,
  opts: { chunked?: boolean } = {},
): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const u = new URL(url);
    const socket = connect(Number(u.port), u.hostname);
    const received: Buffer[] = [];
    let failed: string | undefined;
    socket.on('data', (c: Buffer) => received.push(c));
    socket.on('error', (err) => {
      failed ??= (err as NodeJS.ErrnoException).code ?? err.message;
    });
    socket.on('close', () => {
      if (failed) return resolve({ error: failed });
      resolve(parseResponse(Buffer.concat(received).toString()));
    });
    const head = [`POST ${u.pathname}${u.search} HTTP/1.1`, `host: ${u.host}`];
    for (const [k, v] of Object.entries(headers)) head.push(`${k}: ${v}`);
    head.push(opts.chunked ? 'transfer-encoding: chunked' : `content-length: ${size}`);
    socket.write(`${head.join('\r\n')}\r\n\r\n`);
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let sent = 0;
    const pump = () => {
      while (sent < size && !socket.destroyed) {
        const n = Math.min(chunk.length, size - sent);
        sent += n;
        const piece = n === chunk.length ? chunk : chunk.subarray(0, n);
        const ok = opts.chunked
          ? socket.write(Buffer.concat([Buffer.from(`${n.toString(16)}\r\n`), piece, Buffer.from('\r\n')]))
          : socket.write(piece);
        if (!ok) {
          socket.once('drain', pump);
          return;
        }
      }
      if (opts.chunked && !socket.destroyed) socket.write('0\r\n\r\n');
    };
    pump();
  });
}

function parseResponse(text: string): RawAnswer {
  const m = /^HTTP\/1\.1 (\d+)[^\r]*\r\n/.exec(text);
  if (!m) return { error: text ? `not HTTP: ${text.slice(0, 40)}` : 'no response' };
  const end = text.indexOf('\r\n\r\n');
  const headers: Record<string, string> = {};
  for (const line of text.slice(m[0].length, end).split('\r\n')) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status: Number(m[1]), headers, body: text.slice(end + 4) };
}

const MiB = 1024 * 1024;

describe('an oversized OTLP export gets its 413', () => {
  it.each([
    ['declared length', false],
    ['chunked', true],
  ])('80 MiB (%s) → 413 with the gRPC status body, not a reset', async (_name, chunked) => {
    const r = await rawPost(
      `${tg.otlpUrl}/v1/traces`,
      80 * MiB,
      { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      { chunked },
    );
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body as string)).toMatchObject({
      code: 8,
      message: expect.stringContaining('TG_BODY_TOO_LARGE'),
    });
    expect(r.headers?.connection).toBe('close');
  });

  it('before authentication: an unknown key with a large body → 401, not a reset', async () => {
    const r = await rawPost(`${tg.otlpUrl}/v1/traces`, 32 * MiB, {
      'content-type': 'application/x-protobuf',
      authorization: 'Bearer nope',
    });
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(401);
  });

  it('usage events: a large body → 413 in the {"error":{code,message}} shape', async () => {
    const r = await rawPost(`${tg.otlpUrl}/v1/ingest/batch`, 32 * MiB, {
      'content-type': 'application/json',
      authorization: `Bearer ${DEV_INGEST_KEY}`,
    });
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body as string).error.code).toBe('TG_BODY_TOO_LARGE');
  });

  it.each([
    ['protobuf', ProtoExporter],
    ['json', HttpJsonExporter],
  ] as const)(
    'the real OTel JS %s exporter reports one non-retryable failure',
    async (_format, Exporter) => {
      // A span with a 4 MiB attribute: over the 1 MiB limit whatever the encoding.
      const memory = new InMemorySpanExporter();
      const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(memory)] });
      const span = provider.getTracer('t').startSpan('tools/call big', {
        kind: SpanKind.SERVER,
        attributes: {
          'mcp.method.name': 'tools/call',
          'gen_ai.tool.name': 'big',
          'tollgate.customer.id': 'big-customer',
          blob: 'x'.repeat(4 * MiB),
        },
      });
      span.end();
      const before = await refusals413();
      const exporter = new Exporter({
        url: `${tg.otlpUrl}/v1/traces`,
        headers: { Authorization: `Bearer ${DEV_INGEST_KEY}` },
        timeoutMillis: 20_000,
      });
      const result = await new Promise<ExportResult>((res) =>
        exporter.export(memory.getFinishedSpans(), res),
      );
      await exporter.shutdown();
      expect(result.code).toBe(ExportResultCode.FAILED);
      expect((result.error as { code?: number }).code).toBe(413);
      expect((await refusals413()) - before).toBe(1); // one request: not retried
    },
    30_000,
  );
});

async function refusals413(): Promise<number> {
  const m = await tg.metrics.exports.get();
  return m.values.filter((v) => v.labels.status === '413').reduce((sum, v) => sum + v.value, 0);
}

describe('the API answers a large body with 413 before and after authentication', () => {
  it.each([
    ['with an admin key', API_KEY, 413, 'API_BODY_TOO_LARGE'],
    ['without a key', '', 401, 'API_UNAUTHORIZED'],
  ])('2 MB POST /billing/plans/quote %s → a status, not a reset', async (_name, key, status, code) => {
    const r = await rawPost(`${tg.apiUrl}/billing/plans/quote`, 2_000_000, {
      'content-type': 'application/json',
      ...(key ? { authorization: `Bearer ${key}` } : {}),
    });
    expect(r.error).toBeUndefined();
    // The key is checked first (before the body is read); the body limit then holds for every caller.
    expect(r.status).toBe(status);
    expect(JSON.parse(r.body as string)).toEqual({ error: { code, message: expect.any(String) } });
    expect(r.headers?.connection).toBe('close');
  });
});

/** Sends a request head (request line and headers) over a raw socket and reads the answer. */
function rawHead(port: number, head: string): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let failed: string | undefined;
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (err) => {
      failed ??= (err as NodeJS.ErrnoException).code ?? err.message;
    });
    socket.on('close', () =>
      resolve(failed ? { error: failed } : parseResponse(Buffer.concat(chunks).toString())),
    );
    socket.write(head);
  });
}

describe('over-long URLs and headers', () => {
  const portOf = (url: string | undefined) => Number(new URL(url as string).port);
  const longPath = `/v1/traces?secret-looking-query=${'a'.repeat(5 * 1000 * 1000)}`;

  it.each([
    ['OTLP', () => portOf(tg.otlpUrl), 'TG_URI_TOO_LONG'],
    ['API', () => portOf(tg.apiUrl), 'API_URI_TOO_LONG'],
  ])(
    '%s: a 5 MB query string → 414 with a JSON error that does not echo the path',
    async (_n, port, code) => {
      const r = await rawHead(port(), `GET ${longPath} HTTP/1.1\r\nHost: x\r\n\r\n`);
      expect(r.error).toBeUndefined();
      expect(r.status).toBe(414);
      const body = JSON.parse(r.body as string);
      expect(body).toEqual({ error: { code, message: expect.any(String) } });
      expect(r.body).not.toContain('secret-looking-query');
    },
  );

  it.each([
    ['OTLP', () => portOf(tg.otlpUrl), 'TG_HEADERS_TOO_LARGE'],
    ['API', () => portOf(tg.apiUrl), 'API_HEADERS_TOO_LARGE'],
  ])('%s: 1 MB of headers → 431 with a JSON error', async (_n, port, code) => {
    const r = await rawHead(
      port(),
      `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(1_000_000)}\r\n\r\n`,
    );
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(431);
    expect(JSON.parse(r.body as string)).toEqual({ error: { code, message: expect.any(String) } });
  });

  it('a URL between the URL bound and the header bound → 414 too', async () => {
    const r = await rawHead(
      portOf(tg.apiUrl),
      `GET /healthz?q=${'c'.repeat(12 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`,
    );
    expect(r.status).toBe(414);
  });
});
