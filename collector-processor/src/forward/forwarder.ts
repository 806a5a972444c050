import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';
import { CONTENT_TYPE, type WireFormat } from '../otlp/response.js';
import { type Stamps, stampJson, stampProtobuf } from './stamp.js';

export interface ForwarderOptions {
  /** Downstream OTLP/HTTP traces URL. */
  endpoint: string;
  /** Extra request headers (e.g. the downstream's auth). */
  headers: Record<string, string>;
  /** Bytes waiting to be forwarded beyond which new exports are dropped (counted), never blocking ingest. */
  maxQueueBytes: number;
}

interface Item {
  body: Uint8Array;
  format: WireFormat;
  attempts: number;
}

/**
 * Forwards received exports to the next OTLP hop (the team's tracing backend or Collector) with price and
 * decision attributes stamped on billed spans, off the request path. Best effort by design: billing never
 * waits for it; what the downstream refuses with a retryable status is retried a few times, then dropped
 * and counted (`tollgate_forward_dropped_total`).
 */
export class Forwarder {
  private readonly queue: Item[] = [];
  private queuedBytes = 0;
  private running = false;
  private lastErrorLog = 0;

  constructor(
    private readonly opts: ForwarderOptions,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  enqueue(body: Uint8Array, format: WireFormat, stamps: Stamps): void {
    if (this.queuedBytes + body.length > this.opts.maxQueueBytes) {
      this.metrics.forwardDropped.inc({ reason: 'queue_full' });
      return;
    }
    let stamped: Uint8Array;
    try {
      stamped = format === 'protobuf' ? stampProtobuf(body, stamps) : stampJson(body, stamps);
    } catch {
      stamped = body; // the export decoded for billing, so this is unexpected: forward it unstamped
    }
    this.queue.push({ body: stamped, format, attempts: 0 });
    this.queuedBytes += stamped.length;
    if (!this.running) void this.drain();
  }

  private async drain(): Promise<void> {
    this.running = true;
    while (this.queue.length) {
      const item = this.queue[0] as Item;
      let retry = false;
      try {
        const res = await fetch(this.opts.endpoint, {
          method: 'POST',
          headers: { 'content-type': CONTENT_TYPE[item.format], ...this.opts.headers },
          body: item.body,
          signal: AbortSignal.timeout(10_000),
        });
        await res.arrayBuffer();
        if (res.ok) this.metrics.forwarded.inc();
        else if ([429, 502, 503, 504].includes(res.status)) retry = true;
        else {
          this.metrics.forwardDropped.inc({ reason: `http_${res.status}` });
          this.warn(`downstream answered ${res.status}`);
        }
      } catch (err) {
        retry = true;
        this.warn((err as Error).message);
      }
      if (retry && ++item.attempts < 5) {
        await new Promise((r) => setTimeout(r, 200 * 2 ** item.attempts));
        continue;
      }
      if (retry) this.metrics.forwardDropped.inc({ reason: 'retries_exhausted' });
      this.queue.shift();
      this.queuedBytes -= item.body.length;
    }
    this.running = false;
  }

  private warn(message: string): void {
    if (Date.now() - this.lastErrorLog < 10_000) return;
    this.lastErrorLog = Date.now();
    this.log.warn(
      { endpoint: this.opts.endpoint, err: message },
      'forwarding to the downstream OTLP endpoint failed',
    );
  }

  /** Waits (bounded) for the queue to empty. */
  async flush(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((this.running || this.queue.length) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
  }
}

/** `key=value,key2=value2` (the OTEL_EXPORTER_OTLP_HEADERS format, values URL-decoded). */
export function parseHeaders(spec: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of spec.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    out[part.slice(0, eq).trim()] = decodeURIComponent(part.slice(eq + 1).trim());
  }
  return out;
}
