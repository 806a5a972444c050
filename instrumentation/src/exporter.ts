import http from 'node:http';
import https from 'node:https';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { type ExportResult, ExportResultCode } from '@opentelemetry/core';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { Directive } from '@tollgate/contracts';
import type { BodyFormat, ExportBody } from './handoff.js';
import type { TollgateLogger } from './types.js';
import {
  directivesFromJson,
  directivesFromProtobuf,
  heartbeatRequest,
  leasesFromResponse,
  rejectedOf,
} from './wire.js';

const gzipAsync = promisify(gzip);

/** Spans per export request (the processor's default body limit fits several thousand). */
const MAX_SPANS_PER_REQUEST = 2048;
const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 10_000;
const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export interface ExporterSettings {
  /** Full URL of the OTLP/HTTP traces endpoint billing spans go to. */
  tracesUrl: string;
  /** Full URL heartbeats go to (Tollgate's receiver); equals `tracesUrl` unless spans go through a Collector. */
  directivesUrl: string;
  /** Heartbeat at every interval, not only when idle (spans go elsewhere, directives come from here). */
  heartbeatAlways: boolean;
  headers: Record<string, string>;
  directivesHeaders: Record<string, string>;
  format: 'protobuf' | 'json';
  compression: 'gzip' | 'none';
  timeoutMs: number;
  maxBufferedSpans: number;
  heartbeatIntervalMs: number;
  serviceName: string;
}

export type DirectiveSource = 'export' | 'heartbeat';

interface Response {
  status: number;
  contentType: string;
  retryAfterMs: number | undefined;
  body: Buffer;
}

const CONTENT_TYPES = { protobuf: 'application/x-protobuf', json: 'application/json' } as const;

/**
 * Logs a Tollgate outage once when it starts, then at most once per interval while it lasts, and once when
 * it ends: never once per call or per export.
 */
export class OutageLog {
  private downSinceMs: number | undefined;
  private lastLogMs = 0;
  private failures = 0;
  private readonly lastProblem = new Map<string, number>();

  constructor(
    private readonly logger: TollgateLogger | undefined,
    private readonly intervalMs: number,
    private readonly target: string,
  ) {}

  get down(): boolean {
    return this.downSinceMs !== undefined;
  }

  failure(detail: string, buffered: number, dropped: number, nowMs = Date.now()): void {
    this.failures++;
    if (this.downSinceMs === undefined) {
      this.downSinceMs = nowMs;
      this.lastLogMs = nowMs;
      this.logger?.warn(
        `Tollgate unreachable at ${this.target} (${detail}): tool calls go on (fail-open), ` +
          `billing spans are kept for retry (${buffered} buffered)`,
      );
      return;
    }
    if (nowMs - this.lastLogMs >= this.intervalMs) {
      this.lastLogMs = nowMs;
      const secs = Math.round((nowMs - this.downSinceMs) / 1000);
      this.logger?.warn(
        `Tollgate still unreachable at ${this.target} after ${secs}s (${detail}): ${this.failures} attempts ` +
          `failed, ${buffered} billing spans buffered, ${dropped} dropped`,
      );
    }
  }

  recovered(nowMs = Date.now()): void {
    if (this.downSinceMs === undefined) return;
    const secs = Math.round((nowMs - this.downSinceMs) / 1000);
    this.logger?.info?.(`Tollgate reachable again at ${this.target} after ${secs}s`);
    this.downSinceMs = undefined;
    this.failures = 0;
  }

  /**
   * A non-retryable problem (bad key, undecodable answer): logged once per interval per `key` (the message
   * itself unless the message varies from one occurrence to the next).
   */
  problem(message: string, nowMs = Date.now(), key = message): void {
    const last = this.lastProblem.get(key);
    if (last !== undefined && nowMs - last < this.intervalMs) return;
    this.lastProblem.set(key, nowMs);
    this.logger?.warn(message);
  }
}

/**
 * The OTLP/HTTP exporter of billing spans. `export()` only buffers and returns: the network is never on the
 * tool-call path, and the BatchSpanProcessor never waits on Tollgate. A sender sends the buffer one request
 * at a time; when Tollgate is unreachable the spans stay buffered (bounded) and are retried with backoff,
 * which is safe because Tollgate deduplicates by trace and span id. Every answer's directives are handed to
 * `onDirectives`; when no export happened for a heartbeat interval, an empty export (a heartbeat) asks for
 * them.
 */
export class TollgateExporter implements SpanExporter {
  private pending: ReadableSpan[] = [];
  /** Export bodies a predecessor process could not deliver (see handoff.ts), sent before `pending`. */
  private handed: ExportBody[] = [];
  private sending: Promise<boolean> | undefined;
  private retryAtMs = 0;
  private backoffMs = MIN_BACKOFF_MS;
  private lastContactMs = 0;
  private shutDown = false;
  private readonly agent: http.Agent;
  /** Counters (for tests, the demo and the fail-open log). */
  readonly stats = {
    exports: 0,
    heartbeats: 0,
    failures: 0,
    spansSent: 0,
    dropped: 0,
    directives: 0,
    /** Export bodies taken over from predecessors, and those delivered. */
    handedOver: 0,
    handedDelivered: 0,
    /** Spans Tollgate answered it could not bill (its `partial_success`): each a call not billed. */
    rejectedSpans: 0,
  };

  constructor(
    private readonly s: ExporterSettings,
    private readonly instanceIds: () => string[],
    private readonly onDirectives: (directives: Directive[], source: DirectiveSource) => void,
    private readonly outage: OutageLog,
    /** Quota leases Tollgate renewed with an export (piggy-backed renewal). */
    private readonly onLeases?: (grants: unknown[]) => void,
  ) {
    const Agent = s.tracesUrl.startsWith('https:') ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: 2 });
  }

  get buffered(): number {
    return this.pending.length;
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    if (this.shutDown) {
      resultCallback({ code: ExportResultCode.FAILED, error: new Error('exporter is shut down') });
      return;
    }
    for (const span of spans) this.pending.push(span);
    const excess = this.pending.length - this.s.maxBufferedSpans;
    if (excess > 0) {
      this.pending.splice(0, excess);
      this.stats.dropped += excess;
    }
    // Buffered is ours to deliver: the processor is told so at once and never blocks on the network.
    resultCallback({ code: ExportResultCode.SUCCESS });
    void this.drain(false);
  }

  /** Takes over export bodies a predecessor left (sent first, with the same retries). */
  adopt(bodies: ExportBody[]): void {
    if (bodies.length === 0) return;
    this.handed.push(...bodies);
    this.stats.handedOver += bodies.length;
    void this.drain(false);
  }

  /**
   * Everything not delivered yet — bodies taken over, buffered spans and `more` (spans the batcher still
   * held) — as export bodies, and forgets them: for a process that exits now (synchronous).
   */
  takeUnsent(more: ReadableSpan[] = []): ExportBody[] {
    const out = this.unsentBodies(more);
    this.handed = [];
    this.pending = [];
    return out;
  }

  /**
   * Everything not delivered yet (bodies taken over, buffered spans, the batch being sent, and `more`) as
   * export bodies, without forgetting any of it: a copy for a process that may be killed before it can
   * deliver (synchronous).
   */
  unsentBodies(more: ReadableSpan[] = []): ExportBody[] {
    const spans = more.length > 0 ? [...this.pending, ...more] : this.pending;
    const out = [...this.handed];
    for (let i = 0; i < spans.length; i += MAX_SPANS_PER_REQUEST) {
      const body = this.serialize(spans.slice(i, i + MAX_SPANS_PER_REQUEST));
      if (body) out.push({ body, format: this.s.format });
    }
    return out;
  }

  /** Sends what is buffered; resolves true when the buffer is empty. */
  drain(ignoreBackoff: boolean): Promise<boolean> {
    if (this.sending) return this.sending;
    if (this.pending.length === 0 && this.handed.length === 0) return Promise.resolve(true);
    if (!ignoreBackoff && Date.now() < this.retryAtMs) return Promise.resolve(false);
    this.sending = this.sendAll().finally(() => {
      this.sending = undefined;
    });
    return this.sending;
  }

  /** One OTLP export request body of `spans`, in the configured format. */
  private serialize(spans: ReadableSpan[]): Uint8Array | undefined {
    const serializer = this.s.format === 'json' ? JsonTraceSerializer : ProtobufTraceSerializer;
    return serializer.serializeRequest(spans);
  }

  private async sendAll(): Promise<boolean> {
    while (this.handed.length > 0) {
      const h = this.handed[0] as ExportBody;
      const outcome = await this.post(this.s.tracesUrl, this.s.headers, h.body, 'export', h.format);
      if (outcome === 'retry') return false;
      if (this.handed[0] === h) this.handed.shift();
      if (outcome === 'ok') {
        this.stats.exports++;
        this.stats.handedDelivered++;
      }
    }
    // spans per request: halved while Tollgate refuses a batch as too large (413), so one span's size (a
    // caller's megabytes of request id, say) cannot take the other calls of its batch down with it
    let size = MAX_SPANS_PER_REQUEST;
    while (this.pending.length > 0) {
      const batch = this.pending.slice(0, size);
      const body = this.serialize(batch);
      if (!body) {
        this.pending.splice(0, batch.length);
        continue;
      }
      const outcome = await this.post(
        this.s.tracesUrl,
        this.s.headers,
        body,
        'export',
        this.s.format,
        batch.length > 1,
      );
      if (outcome === 'retry') return false;
      if (outcome === 'split') {
        size = Math.ceil(batch.length / 2);
        continue;
      }
      size = MAX_SPANS_PER_REQUEST;
      // delivered, or refused for good (4xx other than 429): either way it leaves the buffer, unless an exit
      // took the buffer meanwhile (takeUnsent): what came after is not this batch
      if (this.pending[0] === batch[0]) this.pending.splice(0, batch.length);
      if (outcome === 'ok') {
        this.stats.exports++;
        this.stats.spansSent += batch.length;
      }
    }
    return true;
  }

  /** Called by the runtime's timer: retries a buffered backlog, or heartbeats when idle. */
  async tick(nowMs = Date.now()): Promise<void> {
    if (this.shutDown) return;
    if (this.pending.length > 0 || this.handed.length > 0) {
      await this.drain(false);
      if (!this.s.heartbeatAlways) return;
    }
    if (this.s.heartbeatAlways || nowMs - this.lastContactMs >= this.s.heartbeatIntervalMs * 0.9) {
      await this.heartbeat();
    }
  }

  /** Sends an empty export for this instance (and its predecessors); resolves true when answered. */
  async heartbeat(): Promise<boolean> {
    const body = heartbeatRequest(this.s.format, this.s.serviceName, this.instanceIds());
    const outcome = await this.post(this.s.directivesUrl, this.s.directivesHeaders, body, 'heartbeat');
    if (outcome === 'ok') this.stats.heartbeats++;
    return outcome === 'ok';
  }

  private async post(
    url: string,
    headers: Record<string, string>,
    raw: Uint8Array,
    source: DirectiveSource,
    format: BodyFormat = this.s.format,
    /** The body holds more than one span: a 413 answers 'split' (send them in smaller requests). */
    splittable = false,
  ): Promise<'ok' | 'retry' | 'refused' | 'split'> {
    let res: Response;
    try {
      const body = this.s.compression === 'gzip' ? await gzipAsync(raw) : raw;
      res = await this.request(url, headers, body, format);
    } catch (err) {
      this.failed((err as NodeJS.ErrnoException).code ?? (err as Error).message, undefined);
      return 'retry';
    }
    if (res.status === 429 || res.status === 502 || res.status === 503 || res.status === 504) {
      this.failed(`HTTP ${res.status}`, res.retryAfterMs);
      return 'retry';
    }
    if (res.status >= 500) {
      this.failed(`HTTP ${res.status}`, undefined);
      return 'retry';
    }
    this.lastContactMs = Date.now();
    this.backoffMs = MIN_BACKOFF_MS;
    this.retryAtMs = 0;
    this.outage.recovered();
    if (res.status === 413 && splittable) return 'split';
    if (res.status !== 200) {
      this.outage.problem(
        `Tollgate refused a ${source} with HTTP ${res.status} (${url}): ${res.body.toString('utf8').slice(0, 200)}` +
          (res.status === 401 ? ' — check the ingest key' : ''),
      );
      return 'refused';
    }
    try {
      const json = res.contentType.includes('json');
      const rejected = source === 'export' ? rejectedOf(res.body, json) : undefined;
      if (rejected) {
        this.stats.rejectedSpans += rejected.spans;
        this.outage.problem(
          `Tollgate refused ${rejected.spans} billing span(s) of an export, so those calls are not billed ` +
            `(${this.stats.rejectedSpans} so far): ${rejected.message.slice(0, 300)}`,
          Date.now(),
          'rejected spans',
        );
      }
      const directives = json ? directivesFromJson(res.body) : directivesFromProtobuf(res.body);
      if (directives.length) {
        this.stats.directives += directives.length;
        this.onDirectives(directives, source);
      }
      if (this.onLeases && source === 'export') {
        const grants = leasesFromResponse(res.body, json);
        if (grants.length) this.onLeases(grants);
      }
    } catch (err) {
      this.outage.problem(`unreadable directives in a Tollgate answer: ${(err as Error).message}`);
    }
    return 'ok';
  }

  private failed(detail: string, retryAfterMs: number | undefined): void {
    this.stats.failures++;
    this.retryAtMs = Date.now() + (retryAfterMs ?? this.backoffMs);
    this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
    this.outage.failure(detail, this.pending.length, this.stats.dropped);
  }

  private request(
    url: string,
    headers: Record<string, string>,
    body: Uint8Array,
    format: BodyFormat,
  ): Promise<Response> {
    const target = new URL(url);
    const mod = target.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(
        target,
        {
          method: 'POST',
          agent: this.agent,
          timeout: this.s.timeoutMs,
          headers: {
            ...headers,
            'content-type': CONTENT_TYPES[format],
            'content-length': String(body.length),
            ...(this.s.compression === 'gzip' ? { 'content-encoding': 'gzip' } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size <= MAX_RESPONSE_BYTES) chunks.push(c);
          });
          res.on('end', () => {
            const ra = Number(res.headers['retry-after']);
            resolve({
              status: res.statusCode ?? 0,
              contentType: String(res.headers['content-type'] ?? ''),
              retryAfterMs: Number.isFinite(ra) && ra >= 0 ? ra * 1000 : undefined,
              body: Buffer.concat(chunks),
            });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('error', reject);
      req.end(body);
    });
  }

  async forceFlush(): Promise<void> {
    await this.drain(true);
  }

  async shutdown(): Promise<void> {
    if (this.shutDown) return;
    await this.drain(true);
    this.shutDown = true;
    this.agent.destroy();
  }
}
