import {
  status as grpcStatus,
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
} from '@grpc/grpc-js';
import type { Logger } from 'pino';

/** A gRPC status with its trailers (grpc-js's Status, which it does not export by name). */
type Status = { code: number; details: string; metadata: Metadata };

import type { Metrics } from '../metrics.js';
import { encodeExportResponse, encodeGrpcStatusDetails } from '../otlp/response.js';
import { GRPC_CODE, TollgateError } from '../pipeline/errors.js';
import type { ReceiverCore } from './server.js';

/** The OTLP/gRPC trace export method: the route of `opentelemetry.proto.collector.trace.v1.TraceService`. */
export const TRACE_EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

/** Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
const MAX_STREAMS_PER_CONNECTION = 256;
/** How long a request's message may take to arrive once its metadata has (OTLP/HTTP: `requestTimeout`). */
const MESSAGE_TIMEOUT_MS = 120_000;
/** How long a stop waits for exports under way before it ends the connections. */
const CLOSE_GRACE_MS = 30_000;

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
   * The largest export message, as sent and once inflated (grpc-js applies one bound to both): the receiver's
   * `otlp.maxDecompressedBytes`.
   */
  maxMessageBytes: number;
  /** How long a request's message may take to arrive (tests shorten it). */
  messageTimeoutMs?: number;
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
  const refused = (err: TollgateError): Status => {
    metrics.exports.inc({ endpoint: TRACE_EXPORT_PATH, status: String(err.status) });
    return statusOf(err);
  };

  // Refusals that need no body are made on the request's metadata, before its message is read (as OTLP/HTTP
  // refuses on the head): a stop under way, an unknown key, or a key that already has `otlp.maxInFlight`
  // requests still sending theirs.
  // A request whose message has not arrived within the timeout is ended (DEADLINE_EXCEEDED), as OTLP/HTTP ends
  // one whose body has not (408): one key's streams that never send theirs do not count against it for ever.
  const messageTimeoutMs = opts.messageTimeoutMs ?? MESSAGE_TIMEOUT_MS;
  const admission: ServerInterceptor = (_method, call: ServerInterceptingCallInterface) => {
    let uploaded: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(timer);
      uploaded?.();
    };
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        try {
          if (core.closing) throw new TollgateError('TG_SHUTTING_DOWN', undefined, 1);
          const identity = core.authenticate(authorizationOf(metadata));
          if (!identity) throw new TollgateError('TG_UNAUTHORIZED');
          uploaded = core.startUpload(identity.name);
        } catch (err) {
          call.sendStatus(refused(err as TollgateError));
          return;
        }
        timer = setTimeout(() => {
          done();
          metrics.exports.inc({ endpoint: TRACE_EXPORT_PATH, status: '408' });
          call.sendStatus({
            code: grpcStatus.DEADLINE_EXCEEDED,
            details: `the request's message did not arrive within ${messageTimeoutMs / 1000} s`,
            metadata: new Metadata(),
          });
        }, messageTimeoutMs);
        timer.unref();
        next(metadata);
      })
      .withOnReceiveMessage((message, next) => {
        done();
        next(message);
      })
      .withOnCancel(done)
      .build();
    const responder = new ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendStatus((status, next) => {
        done();
        next(status);
      })
      .build();
    return new ServerInterceptingCall(call, responder);
  };

  const server = new Server({
    interceptors: [admission],
    'grpc.max_receive_message_length': opts.maxMessageBytes,
    'grpc.max_concurrent_streams': MAX_STREAMS_PER_CONNECTION,
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
          callback(refused(err as TollgateError));
        },
      );
    },
  });

  async function exportOne(call: ServerUnaryCall<Buffer, Buffer>): Promise<Buffer> {
    // authenticated by the interceptor; the identity is looked up again (a hash and a map lookup)
    const identity = core.authenticate(authorizationOf(call.metadata));
    if (!identity) throw new TollgateError('TG_UNAUTHORIZED');
    const slot = core.admit();
    try {
      const outcome = await core.exportTraces(
        identity,
        'protobuf',
        (use) => use(call.request),
        TRACE_EXPORT_PATH,
      );
      return encodeExportResponse('protobuf', outcome) as Buffer;
    } finally {
      core.release(slot);
    }
  }

  const target = opts.host.includes(':') ? `[${opts.host}]:${opts.port}` : `${opts.host}:${opts.port}`;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(target, ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
  const address = opts.host.includes(':') ? `[${opts.host}]:${port}` : `${opts.host}:${port}`;
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        // exports under way are answered; past the grace, connections are ended
        const force = setTimeout(() => server.forceShutdown(), CLOSE_GRACE_MS);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

function authorizationOf(metadata: Metadata): string | undefined {
  const [value] = metadata.get('authorization');
  return typeof value === 'string' ? value : undefined;
}
