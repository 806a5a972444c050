import { type AddressInfo, createServer } from 'node:net';
import {
  status as grpcStatus,
  logVerbosity,
  Metadata,
  ResponderBuilder,
  Server,
  ServerCredentials,
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  ServerListenerBuilder,
  type ServerUnaryCall,
  type ServiceDefinition,
  type sendUnaryData,
  setLogVerbosity,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { addCount } from '../counts.js';
import type { Metrics } from '../metrics.js';
import { encodeExportResponse, encodeGrpcStatusDetails } from '../otlp/response.js';
import { GRPC_CODE, TollgateError } from '../pipeline/errors.js';
import type { ReceiverCore } from './server.js';

/** A gRPC status with its trailers (grpc-js's Status, which it does not export by name). */
type Status = { code: number; details: string; metadata: Metadata };

/** The OTLP/gRPC trace export method: the route of `opentelemetry.proto.collector.trace.v1.TraceService`. */
export const TRACE_EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

/** Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
const MAX_STREAMS_PER_CONNECTION = 256;
/** How long a request's message may take to arrive and half-close once its metadata has (OTLP/HTTP: `requestTimeout`). */
const MESSAGE_TIMEOUT_MS = 120_000;
/**
 * Requests of one ingest key whose message may be arriving (or held, not yet half-closed) at once. grpc-js
 * inflates a message as it arrives and holds it until the request half-closes: 16 of one key hold at most 16 ×
 * the message bound (256 MiB at the defaults), however little gzip they sent. A 17th is refused
 * RESOURCE_EXHAUSTED with a RetryInfo of 1 s, and its sender retries.
 */
const RECEIVING_PER_KEY = 16;
/** How long a connection may stay open without sending a byte (OTLP/HTTP's port closes such a socket in 90 s). */
const PREFACE_TIMEOUT_MS = 30_000;
/** How long a connection with no request open stays open (OTLP/HTTP: `SOCKET_IDLE_TIMEOUT_MS`). */
const IDLE_TIMEOUT_MS = 120_000;
/** How long a stop waits for exports under way before it ends the connections. */
const CLOSE_GRACE_MS = 30_000;
/** How long a stop leaves the last answers to be written before it ends the connections. */
const ANSWER_FLUSH_MS = 500;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const raw = (b: Buffer): Buffer => b;

/**
 * The service, bytes in and bytes out: the request is decoded by the receiver's own decoder (as on OTLP/HTTP,
 * with its bounds and errors), the response is the `ExportTraceServiceResponse` OTLP/HTTP answers in protobuf.
 */
export const TRACE_SERVICE: ServiceDefinition = {
  Export: {
    path: TRACE_EXPORT_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: raw,
    requestDeserialize: raw,
    responseSerialize: raw,
    responseDeserialize: raw,
    originalName: 'export',
  },
};

export interface GrpcReceiverOptions {
  host: string;
  port: number;
  /**
   * The largest export message, as sent and once inflated (grpc-js applies one bound to both): the smaller of
   * the receiver's `otlp.bodyLimitBytes` and `otlp.maxDecompressedBytes`.
   */
  maxMessageBytes: number;
  /**
   * Requests of all keys whose message may be arriving or held at once (`otlp.maxInFlight`): with the message
   * bound, what grpc-js may hold before any handler runs, however many keys send.
   */
  maxReceiving: number;
  /** How long a request's message may take to arrive (tests shorten it). */
  messageTimeoutMs?: number;
  /** How long a connection with no request open stays (tests shorten it). */
  idleTimeoutMs?: number;
  /** How long a connection may stay without sending a byte (tests shorten it). */
  prefaceTimeoutMs?: number;
}

export interface GrpcReceiver {
  /** `host:port` it listens on (what an OTLP/gRPC exporter's `endpoint` names). */
  address: string;
  close(): Promise<void>;
}

function statusOf(err: TollgateError): Status {
  const code = GRPC_CODE[err.status] ?? 2;
  const details = `${err.code}: ${err.message}`;
  const metadata = new Metadata();
  metadata.set('grpc-status-details-bin', encodeGrpcStatusDetails(code, details, err.retryAfterSeconds));
  return { code, details, metadata };
}

/**
 * The OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, the OpenTelemetry
 * Collector's default `otlp` exporter and the OTel SDKs' `grpc` protocol): the same ingest keys (`authorization:
 * Bearer …` metadata), bounds, pipeline and answer as OTLP/HTTP's `/v1/traces`, refusals as gRPC statuses
 * (docs/span-contract.md, "HTTP status codes", column gRPC).
 */
export async function startGrpcReceiver(
  core: ReceiverCore,
  deps: { metrics: Metrics; log: Logger },
  opts: GrpcReceiverOptions,
): Promise<GrpcReceiver> {
  const { metrics } = deps;
  const log = deps.log.child({ component: 'grpc-receiver' });
  const messageTimeoutMs = opts.messageTimeoutMs ?? MESSAGE_TIMEOUT_MS;
  /** Requests of each ingest key (by name) whose message is still arriving or not yet half-closed. */
  const receivingByKey = new Map<string, number>();
  /** How to end each request whose message has not yet been handed over (a stop ends them all). */
  const receiving = new Set<() => void>();

  // grpc-js reads, inflates and holds a request's message before the handler runs, once the request has
  // half-closed: so the refusals that need no message are made on the request's metadata (as OTLP/HTTP
  // refuses on the head) — a stop under way, an unknown key, a key with RECEIVING_PER_KEY requests already
  // arriving, or with `otlp.maxInFlight` requests still sending their bodies on either transport — and a request
  // that has not half-closed within the message timeout is ended (DEADLINE_EXCEEDED, as OTLP/HTTP answers 408 to
  // a body that has not arrived). Until then it counts against its key: a few kilobytes of gzip that inflate to
  // a message held by a stream that never half-closes cost the sender a slot for as long as they are held.
  const admission: ServerInterceptor = (_method, call: ServerInterceptingCallInterface) => {
    let release: (() => void) | undefined;
    const done = () => {
      release?.();
      release = undefined;
    };
    // Every status of the request passes here: ours, and those grpc-js sends itself (a message over the
    // bound, one that does not inflate, an unknown encoding), which call the same method of this call.
    const send = call.sendStatus.bind(call);
    let counted = false;
    const count = (status: string) => {
      if (counted) return;
      counted = true;
      metrics.exports.inc({ endpoint: TRACE_EXPORT_PATH, status });
    };
    call.sendStatus = (status) => {
      done();
      count(grpcStatus[status.code] ?? String(status.code));
      send(status);
    };
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        try {
          if (core.closing) throw new TollgateError('TG_SHUTTING_DOWN', undefined, 1);
          const identity = core.authenticate(authorizationOf(metadata));
          if (!identity) throw new TollgateError('TG_UNAUTHORIZED');
          release = admitReceiving(identity.name, call);
        } catch (err) {
          call.sendStatus(statusOf(err as TollgateError));
          return;
        }
        next(metadata);
      })
      .withOnReceiveHalfClose((next) => {
        done();
        next();
      })
      .withOnCancel(() => {
        done();
        // the client reset the request: nothing more it is sent arrives, and that is how it ended
        count('CANCELLED');
      })
      .build();
    const responder = new ResponderBuilder().withStart((next) => next(listener)).build();
    return new ServerInterceptingCall(call, responder);
  };

  /** Counts a request whose message is arriving; refuses past the bounds; the function it returns ends it. */
  function admitReceiving(key: string, call: ServerInterceptingCallInterface): () => void {
    if (receiving.size >= opts.maxReceiving)
      throw new TollgateError(
        'TG_TOO_MANY_IN_FLIGHT',
        `${receiving.size} OTLP/gRPC requests are still sending their messages`,
        1,
      );
    const n = receivingByKey.get(key) ?? 0;
    if (n >= RECEIVING_PER_KEY)
      throw new TollgateError(
        'TG_TOO_MANY_IN_FLIGHT',
        `${n} OTLP/gRPC requests of this ingest key are still sending their messages`,
        1,
      );
    const uploaded = core.startUpload(key);
    addCount(receivingByKey, key, 1);
    const timer = setTimeout(() => {
      call.sendStatus({
        code: grpcStatus.DEADLINE_EXCEEDED,
        details: `the request's message did not arrive and half-close within ${messageTimeoutMs / 1000} s`,
        metadata: new Metadata(),
      });
    }, messageTimeoutMs);
    timer.unref();
    const end = () => call.sendStatus(statusOf(new TollgateError('TG_SHUTTING_DOWN', undefined, 1)));
    receiving.add(end);
    return () => {
      clearTimeout(timer);
      receiving.delete(end);
      uploaded();
      addCount(receivingByKey, key, -1);
    };
  }

  // grpc-js writes its own log lines to stderr, outside the process's JSON log; what matters reaches it through
  // the errors thrown here. GRPC_VERBOSITY set by the operator still applies.
  if (!process.env.GRPC_VERBOSITY) setLogVerbosity(logVerbosity.NONE);
  const server = new Server({
    interceptors: [admission],
    'grpc.max_receive_message_length': opts.maxMessageBytes,
    'grpc.max_concurrent_streams': MAX_STREAMS_PER_CONNECTION,
    // a connection with no request open for this long is closed (GOAWAY; a client connects again when it next
    // sends), as OTLP/HTTP closes an idle socket: connections opened and left do not stay for ever
    'grpc.max_connection_idle_ms': opts.idleTimeoutMs ?? IDLE_TIMEOUT_MS,
  });

  server.addService(TRACE_SERVICE, {
    Export: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
      exportOne(call).then(
        (body) => callback(null, body),
        (err: unknown) => {
          if (!(err instanceof TollgateError)) {
            log.error({ err }, 'unexpected error');
            err = new TollgateError('TG_INTERNAL', undefined, 1);
          }
          callback(statusOf(err as TollgateError));
        },
      );
    },
  });

  /** Exports handed to the pipeline and not yet answered (a stop waits for them), and who waits. */
  let exporting = 0;
  let allAnswered: (() => void) | undefined;
  async function exportOne(call: ServerUnaryCall<Buffer, Buffer>): Promise<Buffer> {
    exporting++;
    try {
      return await exportAndAnswer(call);
    } finally {
      if (--exporting === 0) allAnswered?.();
    }
  }
  async function exportAndAnswer(call: ServerUnaryCall<Buffer, Buffer>): Promise<Buffer> {
    // A request its client reset before the handler ran is not exported (nobody waits for its answer; an answer
    // on it is dropped). grpc-js 1.14 takes the end of a stream reset after its whole message for a half-close,
    // and learns of the reset only after it has answered: such a request is exported, its calls billed once,
    // and the sender's retry, if any, is a duplicate (docs/span-contract.md, "OTLP/gRPC").
    if (call.cancelled) return Buffer.alloc(0);
    // authenticated by the interceptor; the identity is looked up again (a hash and a map lookup)
    const identity = core.authenticate(authorizationOf(call.metadata));
    if (!identity) throw new TollgateError('TG_UNAUTHORIZED');
    const slot = core.admit();
    try {
      const outcome = await core.exportTraces(identity, 'protobuf', (use) => use(call.request));
      return encodeExportResponse('protobuf', outcome) as Buffer;
    } finally {
      core.release(slot);
    }
  }

  // The listening socket is ours, and a connection is handed to grpc-js once its first bytes have come (Node's
  // http2 session reads what is already buffered): one that sends nothing within the preface timeout is closed.
  // grpc-js times out no connection before its session has begun, and silent sockets would hold file
  // descriptors the whole process needs (its spool too).
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const prefaceTimeoutMs = opts.prefaceTimeoutMs ?? PREFACE_TIMEOUT_MS;
  const listener = createServer((socket) => {
    const silent = setTimeout(() => socket.destroy(), prefaceTimeoutMs);
    silent.unref();
    socket.once('close', () => clearTimeout(silent));
    socket.once('readable', () => {
      clearTimeout(silent);
      injector.injectConnection(socket);
    });
  });
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(opts.port, opts.host, () => {
      listener.off('error', reject);
      resolve();
    });
  });
  const port = (listener.address() as AddressInfo).port;
  const address = opts.host.includes(':') ? `[${opts.host}]:${port}` : `${opts.host}:${port}`;
  return {
    address,
    async close() {
      listener.close();
      // requests whose message has not been handed over are ended (retryable: nothing of them was taken)
      for (const end of [...receiving]) end();
      // exports under way are answered; then the connections go, whether their clients have closed their side
      // of every stream or not (a client that never does held a stop for the whole grace)
      const graceful = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      const answered = (async () => {
        if (exporting > 0) await new Promise<void>((resolve) => (allAnswered = resolve));
        await sleep(ANSWER_FLUSH_MS);
      })();
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, CLOSE_GRACE_MS);
      });
      await Promise.race([graceful, answered, grace]);
      clearTimeout(timer);
      server.forceShutdown();
    },
  };
}

function authorizationOf(metadata: Metadata): string | undefined {
  const [value] = metadata.get('authorization');
  return typeof value === 'string' ? value : undefined;
}
