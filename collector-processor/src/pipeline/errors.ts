/**
 * The error catalogue of the receiver: one stable code per failure, with its HTTP status and whether a
 * sender should retry. Codes appear in response bodies and logs.
 */
export const ERRORS = {
  TG_UNAUTHORIZED: { status: 401, retryable: false, message: 'missing or unknown ingest key' },
  TG_METHOD_NOT_ALLOWED: { status: 405, retryable: false, message: 'only POST is allowed on this endpoint' },
  TG_BODY_TOO_LARGE: { status: 413, retryable: false, message: 'request body exceeds the configured limit' },
  TG_TOO_MANY_ITEMS: {
    status: 413,
    retryable: false,
    message: 'the request holds more spans, events or JSON values than one request may',
  },
  TG_URI_TOO_LONG: {
    status: 414,
    retryable: false,
    message: 'the request target (path and query) is too long',
  },
  TG_HEADERS_TOO_LARGE: {
    status: 431,
    retryable: false,
    message: 'the request line and headers are too large',
  },
  TG_BAD_HTTP: { status: 400, retryable: false, message: 'the request is not valid HTTP/1.1' },
  TG_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    retryable: false,
    message: 'unsupported content type',
  },
  TG_UNSUPPORTED_ENCODING: {
    status: 415,
    retryable: false,
    message: 'content encoding must be gzip or identity',
  },
  TG_BAD_GZIP: { status: 400, retryable: false, message: 'the gzip body could not be decompressed' },
  TG_UNDECODABLE: { status: 400, retryable: false, message: 'the body could not be decoded' },
  TG_INVALID_EVENT: {
    status: 400,
    retryable: false,
    message: 'the usage event request does not match the schema',
  },
  TG_LEASE_INVALID: {
    status: 400,
    retryable: false,
    message: 'the lease request does not match the schema',
  },
  TG_TOO_MANY_IN_FLIGHT: { status: 429, retryable: true, message: 'too many exports in flight; retry later' },
  TG_BACKLOG_FULL: {
    status: 503,
    retryable: true,
    message: 'landing backlog is full (ClickHouse slow or unreachable); retry later',
  },
  TG_REDIS_UNAVAILABLE: {
    status: 503,
    retryable: true,
    message: 'enforcement store (Redis) unreachable; retry later',
  },
  TG_SPOOL_FAILED: {
    status: 503,
    retryable: true,
    message: 'could not write the durable spool; retry later',
  },
  TG_SHUTTING_DOWN: { status: 503, retryable: true, message: 'server is shutting down; retry later' },
  TG_INTERNAL: { status: 503, retryable: true, message: 'internal error (logged); retry later' },
} as const;
export type ErrorCode = keyof typeof ERRORS;

/** gRPC status codes used in the OTLP error body (google.rpc.Status). */
export const GRPC_CODE: Record<number, number> = {
  400: 3, // INVALID_ARGUMENT
  401: 16, // UNAUTHENTICATED
  405: 12, // UNIMPLEMENTED
  413: 8, // RESOURCE_EXHAUSTED
  415: 3,
  429: 8,
  503: 14, // UNAVAILABLE
};

export class TollgateError extends Error {
  override readonly name = 'TollgateError';
  readonly status: number;
  readonly retryable: boolean;
  constructor(
    readonly code: ErrorCode,
    detail?: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(detail ? `${ERRORS[code].message}: ${detail}` : ERRORS[code].message);
    this.status = ERRORS[code].status;
    this.retryable = ERRORS[code].retryable;
  }
}
