import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { drainRequest, edgeClientErrorHandler, edgeServerFactory } from '@tollgate/billing-api';
import {
  type Directive,
  MAX_IDENTIFIER_LENGTH,
  REJECT_REASONS,
  type ToolCall,
  toolCallFromUsageEvent,
  UsageEventSchema,
} from '@tollgate/contracts';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
  type RawServerDefault,
} from 'fastify';
import pLimit from 'p-limit';
import type { Logger } from 'pino';
import { addCount } from '../counts.js';
import type { LeaseService } from '../enforcement/leases.js';
import type { Forwarder } from '../forward/forwarder.js';
import type { Metrics } from '../metrics.js';
import { checkJsonContainers, type DecodedExport, DecodeError, TooManyItemsError } from '../otlp/decoded.js';
import {
  CONTENT_TYPE,
  type ExportOutcome,
  encodeExportResponse,
  encodeRpcStatus,
  type WireFormat,
} from '../otlp/response.js';
import { ERRORS, type ErrorCode, GRPC_CODE, TollgateError } from '../pipeline/errors.js';
import type { EarlyRecord, Pipeline } from '../pipeline/pipeline.js';
import { decodeOtlp, extractOptions, selectCalls } from '../pipeline/select.js';
import { RejectionTally } from '../pipeline/tally.js';
import { Turn } from '../turn.js';
import type { IngestIdentity, IngestKeyring } from './ingest-keys.js';

const gunzipAsync = promisify(gunzip);
/** How long a request may take to arrive, head and body (Node answers 408 past it). */
const REQUEST_TIMEOUT_MS = 120_000;
/** A socket with no traffic either way for this long is closed (longer than any keep-alive wait). */
const SOCKET_IDLE_TIMEOUT_MS = 120_000;
/** Refused events listed in an answer (the rest are counted in `rejectedCount`). */
export const MAX_PROBLEM_LINES = 1_000;
/** A refused event's schema problems are cut to this many characters. */
const MAX_PROBLEM_MESSAGE = 1_000;

function boundedMessage(text: string): string {
  return text.length <= MAX_PROBLEM_MESSAGE ? text : `${text.slice(0, MAX_PROBLEM_MESSAGE - 1)}…`;
}

/** Keys a usage event, and its `metadata`, may have (checked before the schema, which copies every key). */
const MAX_EVENT_KEYS = 64;
const MAX_METADATA_KEYS = 256;

/**
 * Why an event is too large to validate, or undefined: an event with a million keys in `metadata` took the
 * schema 8.7 s of the main thread (every tenant's exports waited), so such an event is refused unread.
 */
function oversizedEvent(raw: unknown): string | undefined {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return undefined;
  let n = 0;
  for (const _ in raw) if (++n > MAX_EVENT_KEYS) return `more than ${MAX_EVENT_KEYS} fields`;
  const metadata = (raw as { metadata?: unknown }).metadata;
  if (typeof metadata !== 'object' || metadata === null) return undefined;
  n = 0;
  for (const _ in metadata)
    if (++n > MAX_METADATA_KEYS) return `metadata: more than ${MAX_METADATA_KEYS} keys`;
  return undefined;
}

/** Usage events one request may carry (each gets a line of the answer when refused). */
export const MAX_EVENTS_PER_REQUEST = 100_000;
/** Gzip'd bodies inflated and read at once, at most (each up to `otlp.maxDecompressedBytes` in memory). */
const INFLATE_SLOTS = 4;
/**
 * From this body size an export's spool record is written while the body is decoded, not after (see
 * EarlyRecord): 512 spans take ≈ 2 ms to decode, as long as the write. A smaller body decodes in less than a
 * write takes, and SDK heartbeats and exports without tool calls stay off the disk.
 */
const EARLY_RECORD_BYTES = 32 * 1024;
/** Bodies at least this large (after inflating) wait for one of LARGE_READ_SLOTS to be decoded. */
const LARGE_READ_BYTES = 1024 * 1024;
const LARGE_READ_SLOTS = 2;

export { SDK_SCOPE_NAME } from '../pipeline/select.js';

export interface ReceiverOptions {
  bodyLimitBytes: number;
  maxDecompressedBytes: number;
  maxInFlight: number;
  maxSpanAgeHours: number;
  maxFutureSeconds: number;
  /** `decode-only`: decode and select, then discard (benchmark floor). */
  mode: 'full' | 'decode-only';
}

export interface ReceiverDeps {
  pipeline: Pipeline;
  keyring: IngestKeyring;
  metrics: Metrics;
  log: Logger;
  /** Forwards each accepted export to the next OTLP hop, with prices stamped on billed spans. */
  forwarder?: Forwarder | undefined;
  /** Quota leases (`POST /v1/leases`); absent when enforcement is off (the route answers 404). */
  leases?: LeaseService | undefined;
}

/**
 * What the OTLP receivers share, whatever carries the export (OTLP/HTTP here, OTLP/gRPC in grpc.ts): the ingest
 * keys, each key's bound on requests still arriving, the process's bound on exports in flight, and the export
 * itself.
 */
export interface ReceiverCore {
  authenticate(authorization: string | undefined): IngestIdentity | undefined;
  startUpload(keyName: string): () => void;
  admit(): InFlightSlot;
  release(slot: InFlightSlot): void;
  exportTraces(
    identity: IngestIdentity,
    format: WireFormat,
    withBody: <T>(use: (body: Buffer) => Promise<T>) => Promise<T>,
  ): Promise<ExportOutcome>;
  /** The process is stopping: new requests are refused (TG_SHUTTING_DOWN). */
  readonly closing: boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    tollgateIdentity?: IngestIdentity;
    /** The in-flight slot an admitted export holds; see `admit` in buildReceiver. */
    tollgateSlot?: InFlightSlot;
  }
}

export interface InFlightSlot {
  released: boolean;
}

const INGEST_ROUTES = ['/v1/traces', '/v1/ingest/events', '/v1/ingest/batch', '/v1/leases'];

const EDGE_CODES = {
  uriTooLong: 'TG_URI_TOO_LONG',
  headersTooLarge: 'TG_HEADERS_TOO_LARGE',
  badRequest: 'TG_BAD_HTTP',
  timeout: 'TG_BAD_HTTP',
} satisfies Record<string, ErrorCode>;

function wireFormatOf(req: FastifyRequest): WireFormat {
  return (req.headers['content-type'] ?? '').toLowerCase().startsWith('application/x-protobuf')
    ? 'protobuf'
    : 'json';
}

/**
 * The OTLP/HTTP receiver and the plain usage-event endpoints, following the OTLP/HTTP status semantics:
 * 400 undecodable, 401 unknown key, 405 wrong method, 413 too large, 415 unsupported type or encoding,
 * 429/503 with Retry-After when overloaded; partial success (with counts and reasons) for rejected spans.
 */
export function buildReceiver(
  deps: ReceiverDeps,
  opts: ReceiverOptions,
): FastifyInstance & { core: ReceiverCore; startClosing(): void } {
  const { pipeline, keyring, metrics } = deps;
  const app = Fastify<RawServerDefault>({
    loggerInstance: deps.log.child({ component: 'receiver' }) as FastifyBaseLogger,
    bodyLimit: opts.bodyLimitBytes,
    serverFactory: edgeServerFactory(EDGE_CODES),
    clientErrorHandler: edgeClientErrorHandler(EDGE_CODES),
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    // a request (head and body) must arrive within this (408 and the connection closed): a socket that
    // never finishes its body does not stay open for ever (Node checks every 30 s)
    requestTimeout: REQUEST_TIMEOUT_MS,
    // a socket with nothing sent or read for this long is closed: one whose client never reads its answers
    // does not keep them in memory for ever
    connectionTimeout: SOCKET_IDLE_TIMEOUT_MS,
    // What the router refuses before any route (a malformed percent-escape) answers in the catalogue shape.
    frameworkErrors: (_error: FastifyError, _req: FastifyRequest, reply: FastifyReply) =>
      reply
        .code(400)
        .type('application/json')
        .send({
          error: { code: 'TG_BAD_HTTP', message: 'the request path holds a malformed percent-escape' },
        }),
  });
  let inFlight = 0;
  /** Requests of each ingest key (by name) whose body is still arriving. */
  const uploads = new Map<string, number>();
  let closing = false;

  // Bodies stay raw buffers: decoding (and gunzip) happens in the handler with our own limits.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(
    ['application/x-protobuf', 'application/json'],
    { parseAs: 'buffer' },
    (_req, body, done) => done(null, body),
  );

  const sendError = async (req: FastifyRequest, reply: FastifyReply, err: TollgateError) => {
    // Refused before its body was read (no key, too large, no route…): read and discard it up to a bound,
    // answer, then close. Closing under a client that is still sending resets the connection before it
    // reads the status, and an exporter retries a reset — the same oversized export, again and again.
    if (!req.raw.complete) {
      reply.header('connection', 'close');
      await drainRequest(req.raw);
    }
    const path = req.url.split('?')[0] as string;
    metrics.exports.inc({
      endpoint: INGEST_ROUTES.includes(path) ? path : 'other',
      status: String(err.status),
    });
    if (err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds));
    if (err.code === 'TG_METHOD_NOT_ALLOWED') reply.header('allow', 'POST');
    if (req.url.startsWith('/v1/traces')) {
      const format = wireFormatOf(req);
      return reply
        .code(err.status)
        .type(CONTENT_TYPE[format])
        .send(encodeRpcStatus(format, GRPC_CODE[err.status] ?? 2, `${err.code}: ${err.message}`));
    }
    return reply
      .code(err.status)
      .type('application/json')
      .send({ error: { code: err.code, message: err.message } });
  };

  app.setErrorHandler(async (error: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (error instanceof TollgateError) return sendError(req, reply, error);
    let code: ErrorCode = 'TG_UNDECODABLE';
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') code = 'TG_BODY_TOO_LARGE';
    else if (error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' || error.statusCode === 415) {
      const path = req.url.split('?')[0] as string;
      const accepted =
        path === '/v1/traces'
          ? 'application/x-protobuf or application/json'
          : 'application/json (OTLP spans go to /v1/traces)';
      const got = String(req.headers['content-type'] ?? 'none').slice(0, 100);
      return sendError(
        req,
        reply,
        new TollgateError('TG_UNSUPPORTED_MEDIA_TYPE', `${path} takes ${accepted}; got ${got}`),
      );
    } else if (error.statusCode === 413) code = 'TG_BODY_TOO_LARGE';
    else if (!error.statusCode || error.statusCode >= 500) {
      req.log.error({ err: error }, 'unexpected error');
      return sendError(req, reply, new TollgateError('TG_INTERNAL', undefined, 1));
    }
    return sendError(req, reply, new TollgateError(code, error.message));
  });

  app.setNotFoundHandler(async (req, reply) => {
    const path = req.url.split('?')[0] as string;
    if (INGEST_ROUTES.includes(path) && (path !== '/v1/leases' || deps.leases)) {
      return sendError(req, reply, new TollgateError('TG_METHOD_NOT_ALLOWED'));
    }
    if (!req.raw.complete) {
      reply.header('connection', 'close');
      await drainRequest(req.raw);
    }
    return reply
      .code(404)
      .send({ error: { code: 'TG_NOT_FOUND', message: `no route ${req.method} ${req.url}` } });
  });

  // Authenticate before the body is read; admit once it has arrived. A slot held from the head on let one
  // key's sockets that send a head and then a byte now and then (64 of them) answer every other tenant 429
  // for as long as they stayed open. A key's uploads still in progress are bounded on their own, per key.
  app.addHook('onRequest', async (req, reply) => {
    if (req.method !== 'POST' || !INGEST_ROUTES.includes(req.url.split('?')[0] as string)) return;
    if (closing) throw new TollgateError('TG_SHUTTING_DOWN', undefined, 1);
    const identity = keyring.authenticate(req.headers.authorization);
    if (!identity) throw new TollgateError('TG_UNAUTHORIZED');
    const enc = contentEncoding(req);
    if (enc !== 'identity' && enc !== 'gzip') throw new TollgateError('TG_UNSUPPORTED_ENCODING', enc);
    const uploaded = startUpload(identity.name);
    req.raw.once('end', uploaded);
    req.raw.once('close', uploaded);
    reply.raw.once('close', uploaded);
    req.tollgateIdentity = identity;
  });
  app.addHook('preHandler', async (req) => {
    if (!req.tollgateIdentity) return;
    req.tollgateSlot = admit();
  });
  /**
   * Counts a request of the key `name` whose body is still arriving (refused past `otlp.maxInFlight` of them);
   * the function it returns ends the count (at most once).
   */
  function startUpload(name: string): () => void {
    const sending = uploads.get(name) ?? 0;
    if (sending >= opts.maxInFlight) {
      throw new TollgateError(
        'TG_TOO_MANY_IN_FLIGHT',
        `${sending} requests of this ingest key are still sending their bodies`,
        1,
      );
    }
    addCount(uploads, name, 1);
    let counted = true;
    return () => {
      if (!counted) return;
      counted = false;
      addCount(uploads, name, -1);
    };
  }
  // An admitted export holds its slot until it is answered: the handler is done with it. Not until its
  // response has been read: a client that never reads its answers (64 sockets of one key) held every slot,
  // and every other tenant got 429, for as long as it kept them open. Not fastify's onResponse either,
  // which runs only for a response that finishes: a client that hung up before its answer kept its slot for
  // the life of the process. An unread answer stays in its socket's buffer (answers are bounded) until the
  // socket's idle timeout closes it.
  function admit(): InFlightSlot {
    if (inFlight >= opts.maxInFlight)
      throw new TollgateError('TG_TOO_MANY_IN_FLIGHT', `${inFlight} in flight`, 1);
    inFlight++;
    metrics.inFlight.set(inFlight);
    return { released: false };
  }
  function release(slot: InFlightSlot): void {
    if (slot.released) return;
    slot.released = true;
    inFlight--;
    metrics.inFlight.set(inFlight);
  }
  app.addHook('onSend', async (req, reply, payload) => {
    // While closing, every response ends its connection: a keep-alive socket that turns idle after
    // close() began would otherwise hold the shutdown until keepAliveTimeout.
    if (closing) reply.header('connection', 'close');
    if (req.tollgateSlot) release(req.tollgateSlot);
    return payload;
  });

  // Gzip'd bodies are inflated and read at most INFLATE_SLOTS at a time: a few kilobytes of gzip inflate to
  // maxDecompressedBytes, and 32 such exports at once took the process from 331 to 2,677 MiB.
  const inflateSlots = pLimit(INFLATE_SLOTS);
  // Large bodies are read (decoded) at most LARGE_READ_SLOTS at a time. Reading yields to the event loop between
  // slices, so exports being read at once each hold what they decoded so far: unbounded, 64 large ones would
  // hold 64 decodings at once. Smaller bodies are read without waiting for a slot.
  const largeReads = pLimit(LARGE_READ_SLOTS);
  function readLarge<T>(body: Buffer, read: () => Promise<T>): Promise<T> {
    return body.length >= LARGE_READ_BYTES ? largeReads(read) : read();
  }

  /** The body's coding, lowercased: an absent or empty Content-Encoding header is `identity`. */
  function contentEncoding(req: FastifyRequest): string {
    return req.headers['content-encoding']?.trim().toLowerCase() || 'identity';
  }

  /** The request's body, inflated when gzip'd, handed to `use` (which reads it: decode, parse). */
  async function withBody<T>(req: FastifyRequest, use: (body: Buffer) => T | Promise<T>): Promise<T> {
    const raw = req.body;
    if (!Buffer.isBuffer(raw)) throw new TollgateError('TG_UNSUPPORTED_MEDIA_TYPE');
    if (contentEncoding(req) !== 'gzip') return use(raw);
    return inflateSlots(async () => {
      let body: Buffer;
      try {
        body = await gunzipAsync(raw, { maxOutputLength: opts.maxDecompressedBytes });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
          throw new TollgateError(
            'TG_BODY_TOO_LARGE',
            `decompressed body exceeds ${opts.maxDecompressedBytes} bytes`,
          );
        }
        throw new TollgateError('TG_BAD_GZIP', (err as Error).message);
      }
      return use(body);
    });
  }

  const decodeStage = metrics.exportStageSeconds.labels('decode');
  /**
   * One OTLP trace export, whatever carried it (OTLP/HTTP here, OTLP/gRPC in grpc.ts): decoded, its tool calls
   * selected, spooled, rated, enforced and queued for landing; what its answer says. Refusals are thrown
   * (TollgateError). `withBody` hands the body, inflated, to its argument.
   */
  async function exportTraces(
    identity: IngestIdentity,
    format: WireFormat,
    withBody: <T>(use: (body: Buffer) => Promise<T>) => Promise<T>,
  ): Promise<ExportOutcome> {
    const started = performance.now();
    const payloadFormat = format === 'protobuf' ? 'otlp-protobuf' : 'otlp-json';
    const book = pipeline.currentBook;
    let decodeStart = 0;
    let receivedAtMs = 0;
    let early: EarlyRecord | undefined;
    let body: Buffer;
    let decoded: DecodedExport;
    let calls: ToolCall[];
    const rejected = new RejectionTally();
    // the main thread's slices for reading the export (decoding, selecting): a large one is read over several
    // turns of the event loop, between other exports
    const turn = new Turn();
    try {
      // the body is kept: the spool stores it, the forwarder sends it on
      ({ body, decoded } = await withBody(async (body): Promise<{ body: Buffer; decoded: DecodedExport }> => {
        decodeStart = performance.now();
        receivedAtMs = Date.now();
        // a large export's record is written while its body is decoded (see EarlyRecord)
        if (opts.mode === 'full' && body.length >= EARLY_RECORD_BYTES) {
          early = pipeline.beginRecord({
            book,
            product: identity.product,
            defaultCustomer: identity.defaultCustomer,
            customer: identity.customer,
            receivedAtMs,
            payload: { format: payloadFormat, bytes: body },
          });
        }
        try {
          return { body, decoded: await readLarge(body, () => decodeOtlp(payloadFormat, body, turn)) };
        } catch (err) {
          if (err instanceof TooManyItemsError) throw new TollgateError('TG_TOO_MANY_ITEMS', err.message);
          if (err instanceof DecodeError) throw new TollgateError('TG_UNDECODABLE', err.message);
          throw err;
        }
      }));
      metrics.spansReceived.inc(decoded.spans.length + decoded.malformed);
      calls = await selectCalls(
        decoded,
        extractOptions(opts, identity.defaultCustomer, receivedAtMs, book.usageAttributes),
        rejected,
        turn,
      );
    } catch (err) {
      if (early) pipeline.dropRecord(early);
      throw err;
    }
    decodeStage.observe((performance.now() - decodeStart) / 1000);
    if (opts.mode === 'decode-only') {
      return { rejectedSpans: rejected.total, errorMessage: rejected.message(), directives: [] };
    }
    const result = await pipeline.accept({
      book,
      product: identity.product,
      defaultCustomer: identity.defaultCustomer,
      customer: identity.customer,
      receivedAtMs,
      calls,
      rejected,
      payload: { format: payloadFormat, bytes: body },
      early,
    });
    let directives: Directive[] = result.directives;
    if (calls.length === 0 && pipeline.enforcer) {
      directives = await pipeline.enforcer.heartbeat(identity.product, decoded.instanceIds);
      // a key bound to one customer hears only of that customer, whatever instances its export names
      if (identity.customer !== undefined)
        directives = directives.filter((d) => d.customer === identity.customer);
    }
    // renewal piggy-backed on the export: the leases this export's calls were taken from are topped up
    // (renewSettled says whose)
    const leases =
      deps.leases && result.rated.some((r) => r.lease)
        ? await deps.leases.renewSettled(identity, result.rated)
        : undefined;
    deps.forwarder?.enqueue(body, format, new Map(result.rated.map((r) => [r.eventId, r])));
    metrics.exportSeconds.observe((performance.now() - started) / 1000);
    return {
      rejectedSpans: rejected.total,
      errorMessage: rejected.message(),
      directives,
      ...(leases?.length ? { leases } : {}),
    };
  }

  app.post('/v1/traces', async (req, reply) => {
    const format = wireFormatOf(req);
    const outcome = await exportTraces(req.tollgateIdentity as IngestIdentity, format, (use) =>
      withBody(req, use),
    );
    metrics.exports.inc({ endpoint: '/v1/traces', status: '200' });
    return reply.code(200).type(CONTENT_TYPE[format]).send(encodeExportResponse(format, outcome));
  });

  async function ingestEvents(req: FastifyRequest, reply: FastifyReply, events: unknown[]) {
    // each event gets a line of its own in the answer: bounded, like the spans of an export
    if (events.length > MAX_EVENTS_PER_REQUEST) {
      throw new TollgateError(
        'TG_TOO_MANY_ITEMS',
        `${events.length} events; at most ${MAX_EVENTS_PER_REQUEST} per request: split it`,
      );
    }
    const identity = req.tollgateIdentity as IngestIdentity;
    const rejected = new RejectionTally();
    const problems: { index: number; id?: unknown; reason: string; message: string }[] = [];
    const calls: ToolCall[] = [];
    const indexOf = new Map<string, { index: number; id: unknown }>();
    const receivedAtMs = Date.now();
    const xo = extractOptions(opts, identity.defaultCustomer, receivedAtMs);
    events.forEach((raw, index) => {
      const oversized = oversizedEvent(raw);
      const parsed = oversized
        ? ({ success: false, error: { issues: [{ path: [], message: oversized }] } } as const)
        : UsageEventSchema.safeParse(raw);
      // echoed only as sent in the schema's shape (a short string): a 600-character id per refused event, or
      // one nested 100,000 arrays deep, made the answer itself the attack
      const rawId = typeof raw === 'object' && raw !== null ? (raw as { id?: unknown }).id : undefined;
      const id = typeof rawId === 'string' && rawId.length <= MAX_IDENTIFIER_LENGTH ? rawId : undefined;
      if (!parsed.success) {
        // another metric than ours is not ours to meter; an event without one is malformed like any other
        const metric =
          typeof raw === 'object' &&
          raw !== null &&
          (raw as { metricName?: unknown }).metricName !== undefined &&
          parsed.error.issues.some((i) => i.path[0] === 'metricName');
        const reason = metric ? 'unsupported_metric' : 'invalid_event';
        rejected.add(reason);
        problems.push({
          index,
          id,
          reason,
          message: boundedMessage(
            parsed.error.issues
              .slice(0, 10)
              .map((i) => `${i.path.slice(0, 4).join('.') || '(event)'}: ${i.message}`)
              .join('; '),
          ),
        });
        return;
      }
      const call = toolCallFromUsageEvent(parsed.data, identity.product, identity.defaultCustomer);
      if (!call) {
        rejected.add('missing_customer');
        problems.push({
          index,
          id,
          reason: 'missing_customer',
          message: 'customerId is required (the key has no default customer)',
        });
        return;
      }
      if (call.startUnixUs < xo.nowUnixUs - xo.maxAgeUs || call.startUnixUs > xo.nowUnixUs + xo.maxFutureUs) {
        rejected.add('invalid_timestamp');
        problems.push({
          index,
          id,
          reason: 'invalid_timestamp',
          message: 'timestamp is outside the accepted window',
        });
        return;
      }
      if (!indexOf.has(call.eventId)) indexOf.set(call.eventId, { index, id });
      calls.push(call);
    });
    const result = await pipeline.accept({
      product: identity.product,
      defaultCustomer: identity.defaultCustomer,
      customer: identity.customer,
      receivedAtMs,
      calls,
      rejected,
    });
    for (const [eventId, reason] of rejected.byEvent) {
      const at = indexOf.get(eventId);
      if (at) problems.push({ index: at.index, id: at.id, reason, message: REJECT_REASONS[reason] });
    }
    problems.sort((a, b) => a.index - b.index);
    metrics.exports.inc({ endpoint: req.routeOptions.url ?? req.url, status: '200' });
    return reply.code(200).send({
      accepted: result.accepted,
      duplicates: result.duplicates,
      // the first MAX_PROBLEM_LINES refused events, in request order; their number is rejectedCount
      rejected: problems.length > MAX_PROBLEM_LINES ? problems.slice(0, MAX_PROBLEM_LINES) : problems,
      rejectedCount: problems.length,
      directives: result.directives,
    });
  }

  /**
   * The JSON body of a usage-event or lease request: its content type checked before it is read, its number
   * of objects and arrays bounded before it is parsed (as an export's), `invalid` when it is not JSON.
   */
  const jsonBody = async (req: FastifyRequest, what: string, invalid: ErrorCode): Promise<unknown> => {
    if (wireFormatOf(req) !== 'json')
      throw new TollgateError('TG_UNSUPPORTED_MEDIA_TYPE', `${what} are application/json only`);
    return withBody(req, (body): unknown => {
      try {
        checkJsonContainers(body, 'the request');
      } catch (err) {
        throw new TollgateError('TG_TOO_MANY_ITEMS', (err as Error).message);
      }
      try {
        return JSON.parse(body.toString('utf8'));
      } catch (err) {
        throw new TollgateError(invalid, `body is not valid JSON: ${(err as Error).message}`);
      }
    });
  };

  app.post('/v1/ingest/events', async (req, reply) => {
    const doc = await jsonBody(req, 'usage events', 'TG_INVALID_EVENT');
    return ingestEvents(req, reply, Array.isArray(doc) ? doc : [doc]);
  });

  app.post('/v1/ingest/batch', async (req, reply) => {
    const doc = await jsonBody(req, 'usage events', 'TG_INVALID_EVENT');
    const events = Array.isArray(doc) ? doc : (doc as { events?: unknown })?.events;
    if (!Array.isArray(events))
      throw new TollgateError('TG_INVALID_EVENT', 'expected {"events": [...]} or an array');
    return ingestEvents(req, reply, events);
  });

  const leases = deps.leases;
  if (leases) {
    // Quota leases, authenticated with the ingest key like /v1/traces (see docs/enforcement.md, "Leases").
    app.post('/v1/leases', async (req, reply) => {
      const doc = await jsonBody(req, 'lease requests', 'TG_LEASE_INVALID');
      const out = await leases.handle(req.tollgateIdentity as IngestIdentity, doc);
      metrics.exports.inc({ endpoint: '/v1/leases', status: '200' });
      return reply.code(200).type('application/json').send(out);
    });
  }

  const core: ReceiverCore = {
    authenticate: (authorization) => keyring.authenticate(authorization),
    startUpload,
    admit,
    release,
    exportTraces,
    get closing() {
      return closing;
    },
  };
  return Object.assign(app, {
    core,
    startClosing() {
      closing = true;
    },
  });
}

export { ERRORS };
