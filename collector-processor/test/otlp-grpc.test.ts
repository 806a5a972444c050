import { connect, constants } from 'node:http2';
import { createConnection } from 'node:net';
import { gzipSync } from 'node:zlib';
import {
  credentials,
  Metadata,
  makeGenericClientConstructor,
  type ServiceError,
  status,
} from '@grpc/grpc-js';
import { OTLPTraceExporter as GrpcExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics } from '../src/metrics.js';
import { ProtoRequest } from '../src/otlp/proto.js';
import { decodeExportResponse, retryDelayOf } from '../src/otlp/response.js';
import { startGrpcReceiver, TRACE_EXPORT_PATH, TRACE_SERVICE } from '../src/receiver/grpc.js';
import {
  DEV_INGEST_KEY,
  emitToolCall,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
} from './support/harness.js';
import { protoExportOf, toolSpan } from './support/otlp-json.js';

// OTLP/gRPC: what the OpenTelemetry Collector's default `otlp` exporter and the SDKs' `grpc` protocol send. The
// same ingest keys, bounds, pipeline and answers as OTLP/HTTP's /v1/traces, refusals as gRPC statuses.

const PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: metered
    plans:
      metered:
        tools:
          "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } }
        limits:
          callsPerDay: 5
`;

/** The exporter's `compression` (an enum of the exporter base package, whose values are these strings). */
const GZIP = 'gzip' as NonNullable<NonNullable<ConstructorParameters<typeof GrpcExporter>[0]>['compression']>;

let tg: TestTollgate | undefined;
const clients: { close(): void }[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await tg?.cleanup();
  tg = undefined;
});

const Client = makeGenericClientConstructor(TRACE_SERVICE, 'TraceService');

type ExportMethod = (
  body: Buffer,
  metadata: Metadata,
  callback: (error: ServiceError | null, response?: Buffer) => void,
) => void;

/** A plain grpc-js client of the TraceService, bytes in and out (`gzip`: messages compressed). */
function client(address: string, gzip = false) {
  const c = new Client(address, credentials.createInsecure(), {
    ...(gzip ? { 'grpc.default_compression_algorithm': 2 } : {}),
  });
  clients.push(c);
  return (body: Buffer, key: string | null = DEV_INGEST_KEY) =>
    new Promise<{ response?: Buffer; error?: ServiceError }>((resolve) => {
      const md = new Metadata();
      if (key) md.set('authorization', `Bearer ${key}`);
      (c as unknown as { Export: ExportMethod }).Export(body, md, (error, response) =>
        resolve(error ? { error } : { response: response as Buffer }),
      );
    });
}

const protoBody = (spans: ReturnType<typeof toolSpan>[]) =>
  Buffer.from(ProtoRequest.encode(ProtoRequest.fromObject(protoExportOf(spans))).finish());

async function calls(customer: string) {
  await tg!.lander!.idle();
  const [row] = await query(
    tg!,
    `SELECT count() AS n, sum(price_nano) AS nano, countIf(decision = 'over_limit') AS over
     FROM mcp_tool_calls WHERE customer = {c:String}`,
    { c: customer },
  );
  return row;
}

describe('OTLP/gRPC receiver', () => {
  it("the OTel JS gRPC exporter's spans (gzip) are billed as over OTLP/HTTP", async () => {
    tg = await startTestTollgate({}, PLANS);
    expect(tg.otlpGrpcAddress).toMatch(/^127\.0\.0\.1:\d+$/);
    const metadata = new Metadata();
    metadata.set('authorization', `Bearer ${DEV_INGEST_KEY}`);
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': 'weather-mcp' }),
      spanProcessors: [
        new BatchSpanProcessor(
          new GrpcExporter({ url: `http://${tg.otlpGrpcAddress}`, metadata, compression: GZIP }),
          { scheduledDelayMillis: 50 },
        ),
      ],
    });
    const tracer = provider.getTracer('@modelcontextprotocol/test-server');
    for (let i = 0; i < 4; i++) emitToolCall(tracer, { tool: 'get_forecast', customer: 'grpc-sdk' });
    await provider.forceFlush();
    await provider.shutdown();
    expect(await calls('grpc-sdk')).toEqual({ n: '4', nano: '40000000', over: '0' });
    const m = await readMetrics(tg.apiUrl as string);
    expect(m.get(`tollgate_exports_total{endpoint="${TRACE_EXPORT_PATH}",status="OK"}`)).toBeGreaterThan(0);
  });

  it('answers with the kill directive of a customer past its limit; a retried export is counted once', async () => {
    tg = await startTestTollgate({}, PLANS);
    const send = client(tg.otlpGrpcAddress as string, true);
    const body = protoBody(Array.from({ length: 8 }, () => toolSpan({ customer: 'grpc-capped' })));
    const first = await send(body);
    expect(first.error).toBeUndefined();
    const answer = decodeExportResponse(first.response as Buffer);
    expect(answer.directives).toContainEqual(
      expect.objectContaining({ action: 'kill', customer: 'grpc-capped' }),
    );
    // the sender did not get the answer and sends the same export again: no call is counted twice
    expect((await send(body)).error).toBeUndefined();
    expect(await calls('grpc-capped')).toEqual({ n: '8', nano: '80000000', over: '3' });
  });

  it('refuses with gRPC statuses and stable codes, and stays up', async () => {
    tg = await startTestTollgate({ '--otlp-max-decompressed': String(1024 * 1024) }, PLANS);
    const address = tg.otlpGrpcAddress as string;
    const send = client(address);
    const good = protoBody([toolSpan({ customer: 'grpc-refusals' })]);

    const noKey = await send(good, null);
    expect(noKey.error?.code).toBe(status.UNAUTHENTICATED);
    expect(noKey.error?.details).toMatch(/^TG_UNAUTHORIZED: /);
    const wrongKey = await send(good, 'tg_not_a_key');
    expect(wrongKey.error?.code).toBe(status.UNAUTHENTICATED);
    // refused on the request's metadata, before its message is read: not the message's size
    const noKeyLarge = await send(Buffer.alloc(2 * 1024 * 1024, 1), 'tg_not_a_key');
    expect(noKeyLarge.error?.code).toBe(status.UNAUTHENTICATED);

    const garbage = await send(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
    expect(garbage.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(garbage.error?.details).toMatch(/^TG_UNDECODABLE: /);

    // 2 MiB of zeros, a few KB gzip'd: over the 1 MiB bound once inflated; final (no RetryInfo)
    const bomb = await client(address, true)(Buffer.alloc(2 * 1024 * 1024));
    expect(bomb.error?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(bomb.error?.metadata.get('grpc-status-details-bin')).toEqual([]);
    expect(gzipSync(Buffer.alloc(2 * 1024 * 1024)).length).toBeLessThan(1024 * 1024);

    // the same export goes through afterwards
    const ok = await send(good);
    expect(ok.error).toBeUndefined();
    expect(await calls('grpc-refusals')).toEqual({ n: '1', nano: '10000000', over: '0' });
    // every answer is counted by its gRPC status, those grpc-js gives itself (the bomb) included
    const m = await readMetrics(tg.apiUrl as string);
    const count = (s: string) =>
      m.get(`tollgate_exports_total{endpoint="${TRACE_EXPORT_PATH}",status="${s}"}`);
    expect([
      count('UNAUTHENTICATED'),
      count('INVALID_ARGUMENT'),
      count('RESOURCE_EXHAUSTED'),
      count('OK'),
    ]).toEqual([3, 1, 1, 1]);
  });

  it('too many exports in flight: RESOURCE_EXHAUSTED with a RetryInfo, which OTLP/gRPC senders retry', async () => {
    // no export may be in flight: every request is refused as the 65th of a busy process would be
    tg = await startTestTollgate({ '--otlp-max-in-flight': '0' }, PLANS);
    const busy = await client(tg.otlpGrpcAddress as string)(protoBody([toolSpan({ customer: 'grpc-busy' })]));
    expect(busy.error?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(busy.error?.details).toMatch(/^TG_TOO_MANY_IN_FLIGHT: /);
    const [details] = busy.error?.metadata.get('grpc-status-details-bin') ?? [];
    expect(retryDelayOf(details as Buffer)).toBe(1);
  });

  it("a port another process holds is said in the setting's words, not as a stack trace", async () => {
    const { createServer } = await import('node:net');
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as { port: number }).port;
    try {
      await expect(startTestTollgate({ '--otlp-grpc-port': String(port) }, PLANS)).rejects.toThrow(
        `the OTLP/gRPC receiver cannot listen on 127.0.0.1:${port}: another process holds it; choose another port with --otlp-grpc-port, or turn OTLP/gRPC off with --otlp-grpc false`,
      );
    } finally {
      holder.close();
    }
  });

  it('a stop under way refuses new exports UNAVAILABLE (retryable) and can be turned off', async () => {
    tg = await startTestTollgate({}, PLANS);
    const send = client(tg.otlpGrpcAddress as string);
    const stopping = tg.stop();
    const late = await send(protoBody([toolSpan({ customer: 'grpc-late' })]));
    await stopping;
    expect(late.error?.code).toBe(status.UNAVAILABLE);
    const off = await startTestTollgate({ '--otlp-grpc': 'false' }, PLANS);
    expect(off.otlpGrpcAddress).toBeUndefined();
    await off.cleanup();
  });
});

describe('OTLP/gRPC receiver, its own bounds', () => {
  /** A receiver on a core that counts what it is asked (the pipeline is not what these tests are about). */
  async function fakeReceiver(messageTimeoutMs: number, idleTimeoutMs?: number, exportMs = 0) {
    let sending = 0;
    let exported = 0;
    const identity = (name: string) => ({
      name,
      product: 'p',
      defaultCustomer: undefined,
      customer: undefined,
    });
    const keys = new Map([
      ['Bearer good', identity('k')],
      ['Bearer other', identity('k2')],
    ]);
    const core = {
      authenticate: (a: string | undefined) => keys.get(a ?? ''),
      startUpload: () => {
        sending++;
        let ended = false;
        return () => {
          if (!ended) sending--;
          ended = true;
        };
      },
      admit: () => ({ released: false }),
      release: () => {},
      exportTraces: async () => {
        await new Promise((r) => setTimeout(r, exportMs));
        exported++;
        return { rejectedSpans: 0, errorMessage: '', directives: [] };
      },
      closing: false,
    };
    const receiver = await startGrpcReceiver(
      core,
      { metrics: createMetrics(), log: pino({ level: 'silent' }) },
      {
        host: '127.0.0.1',
        port: 0,
        maxMessageBytes: 1024 * 1024,
        maxReceiving: 24,
        messageTimeoutMs,
        ...(idleTimeoutMs ? { idleTimeoutMs, prefaceTimeoutMs: idleTimeoutMs } : {}),
      },
    );
    const session = connect(`http://${receiver.address}`);
    session.on('error', () => {});
    /**
     * A request's head; with `message`, one gRPC frame of it, but never the end of the stream unless `end`.
     */
    const open = (message?: Buffer, o: { key?: string; end?: boolean } = {}) => {
      const stream = session.request(
        {
          ':method': 'POST',
          ':path': TRACE_EXPORT_PATH,
          'content-type': 'application/grpc',
          te: 'trailers',
          authorization: `Bearer ${o.key ?? 'good'}`,
        },
        { endStream: false },
      );
      stream.on('error', () => {});
      if (message) {
        const frame = Buffer.alloc(5 + message.length);
        frame.writeUInt32BE(message.length, 1);
        message.copy(frame, 5);
        stream.write(frame);
      }
      if (o.end) stream.end();
      // the status comes in trailers, or in the response's headers when nothing else was sent (trailers-only)
      const ended = new Promise<Record<string, unknown>>((resolve) => {
        stream.on('trailers', resolve);
        stream.on('response', (headers: Record<string, unknown>) => {
          if (headers['grpc-status'] !== undefined) resolve(headers);
        });
      });
      stream.on('data', () => {});
      const status = Promise.race([
        ended,
        new Promise<Record<string, unknown>>((_, reject) =>
          setTimeout(() => reject(new Error('the request was not ended')), 5_000),
        ),
      ]);
      status.catch(() => {});
      return { stream, status };
    };
    return {
      receiver,
      open,
      sending: () => sending,
      exported: () => exported,
      close: async () => {
        session.destroy();
        await receiver.close();
      },
    };
  }
  const settle = (ms = 100) => new Promise((r) => setTimeout(r, ms));

  it('a request whose message never arrives, or arrives without the end of the stream, is ended at the timeout and stops counting against its key', async () => {
    const r = await fakeReceiver(400);
    try {
      const noMessage = r.open();
      // a whole message, held by grpc-js until the request half-closes, which it never does
      const held = r.open(Buffer.alloc(1000));
      await settle();
      expect(r.sending()).toBe(2);
      await settle(150);
      expect(r.sending()).toBe(2); // still held: the message arriving did not end its count
      for (const request of [noMessage, held])
        expect(Number((await request.status)['grpc-status'])).toBe(status.DEADLINE_EXCEEDED);
      expect(r.sending()).toBe(0);
    } finally {
      await r.close();
    }
  });

  it("a key's 17th request still arriving is refused with a RetryInfo; a stop ends those arriving at once", async () => {
    const r = await fakeReceiver(60_000);
    try {
      const arriving = Array.from({ length: 16 }, () => r.open());
      await settle();
      const refused = await r.open().status;
      expect(Number(refused['grpc-status'])).toBe(status.RESOURCE_EXHAUSTED);
      expect(String(refused['grpc-message'])).toMatch(/^TG_TOO_MANY_IN_FLIGHT/);
      const details = Buffer.from(String(refused['grpc-status-details-bin']), 'base64');
      expect(retryDelayOf(details)).toBe(1);
      const started = Date.now();
      await r.receiver.close();
      for (const request of arriving)
        expect(Number((await request.status)['grpc-status'])).toBe(status.UNAVAILABLE);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(r.sending()).toBe(0);
    } finally {
      await r.close();
    }
  });

  it('closes a connection that has no request open past the idle timeout, and one that never sends a byte', async () => {
    const r = await fakeReceiver(60_000, 300);
    try {
      const session = connect(`http://${r.receiver.address}`);
      session.on('error', () => {});
      const [host, port] = r.receiver.address.split(':') as [string, string];
      const silent = createConnection(Number(port), host);
      silent.on('error', () => {});
      const started = Date.now();
      const closedAfter = (what: { once(e: 'close', f: () => void): unknown }) =>
        Promise.race([
          new Promise<number>((resolve) => what.once('close', () => resolve(Date.now() - started))),
          new Promise<number>((_, reject) => setTimeout(() => reject(new Error('not closed')), 5_000)),
        ]);
      for (const ms of await Promise.all([closedAfter(session), closedAfter(silent)]))
        expect(ms).toBeGreaterThanOrEqual(250);
    } finally {
      await r.close();
    }
  });

  it('bounds the requests arriving across keys', async () => {
    const r = await fakeReceiver(60_000);
    try {
      const held = [
        ...Array.from({ length: 16 }, () => r.open()),
        ...Array.from({ length: 8 }, () => r.open(undefined, { key: 'other' })),
      ];
      await settle();
      // 24 arriving in all (the bound of this receiver): another key's next is refused too
      const refused = await r.open(undefined, { key: 'other' }).status;
      expect(Number(refused['grpc-status'])).toBe(status.RESOURCE_EXHAUSTED);
      expect(decodeURIComponent(String(refused['grpc-message']))).toMatch(
        /OTLP\/gRPC requests are still sending/,
      );
      for (const { stream } of held) stream.close(constants.NGHTTP2_CANCEL);
      await settle();
      expect(r.sending()).toBe(0);
      // and once they have gone, a request is taken again
      const ended = r.open(Buffer.alloc(100), { end: true });
      expect(Number((await ended.status)['grpc-status'])).toBe(status.OK);
      expect(r.exported()).toBe(1);
    } finally {
      await r.close();
    }
  });

  it('a stop answers the exports under way, then ends', async () => {
    const r = await fakeReceiver(60_000, undefined, 400);
    try {
      const underWay = r.open(Buffer.alloc(100), { end: true });
      await settle();
      const started = Date.now();
      await Promise.race([
        r.receiver.close(),
        new Promise((_, reject) => setTimeout(() => reject(new Error('the stop did not end')), 5_000)),
      ]);
      expect(Number((await underWay.status)['grpc-status'])).toBe(status.OK);
      expect(r.exported()).toBe(1);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await r.close();
    }
  });
});
