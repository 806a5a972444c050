import type { Attributes, SpanView } from '@tollgate/contracts';

/** A decoded OTLP export: the spans we could read, and the ones we could not (counted, not fatal). */
export interface DecodedExport {
  spans: SpanView[];
  /** Spans whose own bytes or JSON were malformed; their siblings are still decoded. */
  malformed: number;
  /** `service.instance.id` of every resource in the export (used for heartbeats). */
  instanceIds: string[];
}

/** The request itself is unreadable (truncated framing, not JSON, not an export): answered with 400. */
export class DecodeError extends Error {
  override readonly name: string = 'DecodeError';
}

/**
 * The request holds more than one request may (answered with 413 `TG_TOO_MANY_ITEMS`): refused before it
 * can take the process's memory. A few kilobytes of gzip inflate to 64 MiB of `{},{},…`: twenty million
 * spans, whose objects alone would exhaust V8's heap — and an out-of-memory abort cannot be caught, so the
 * export's spool record would crash every restart's replay too.
 */
export class TooManyItemsError extends DecodeError {
  override readonly name = 'TooManyItemsError';
}

/**
 * Attributes one span (or one resource) may carry: OTel SDKs keep 128 by default. A span with more is
 * malformed (a resource with more fails its export): one span of 1.9 million attributes held 380 MB.
 */
export const MAX_ATTRIBUTES = 1_024;

/** Spans one export may hold (an OTel SDK batch is 512, a Collector's default batch 8,192). */
export const MAX_SPANS_PER_EXPORT = 1_000_000;
/**
 * Resource spans and scope spans one export may hold, together. Each costs a loop's turn and objects even
 * when empty: 58 KB of gzip inflating to 30 million empty scope spans held the main thread for 27 s.
 */
export const MAX_GROUPS_PER_EXPORT = 1_000_000;
/**
 * Objects and arrays one JSON body may hold. Real OTLP/JSON has one per ≈ 30 bytes (an attribute is two), so a
 * 64 MiB export of real spans stays under it; what it bounds is V8's heap while JSON.parse builds them.
 */
export const MAX_JSON_CONTAINERS = 4_000_000;
/**
 * Objects, arrays and separated values (each `,`) one JSON body may hold: real OTLP/JSON has one of them per
 * ≈ 17 bytes (3.9 million in 64 MiB of tool-call spans), so a 64 MiB export of real spans stays under it. 64 MiB of `1,1,…` (a few KB of gzip) held the
 * main thread in JSON.parse for a second and took the process past 1.2 GB.
 */
export const MAX_JSON_ITEMS = 8_000_000;

/**
 * Refuses a JSON body with more than `max` objects and arrays, or more than `maxItems` of them and separated
 * values together, before it is parsed. Every `{`, `[` and `,` is counted, those inside strings too (an
 * over-count only matters for bodies near the bounds), and bodies too short to hold that many (each takes two
 * bytes at least) are not scanned at all.
 */
export function checkJsonContainers(
  body: Uint8Array,
  what: string,
  max = MAX_JSON_CONTAINERS,
  maxItems = MAX_JSON_ITEMS,
): void {
  if (body.length <= 2 * Math.min(max, maxItems)) return;
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  let n = 0;
  for (const open of [0x7b, 0x5b]) {
    for (let at = b.indexOf(open); at !== -1; at = b.indexOf(open, at + 1)) {
      if (++n > max) {
        throw new TooManyItemsError(`${what} holds more than ${max} JSON objects and arrays: split it`);
      }
    }
  }
  if (body.length <= 2 * (maxItems - n)) return;
  for (let at = b.indexOf(0x2c); at !== -1; at = b.indexOf(0x2c, at + 1)) {
    if (++n > maxItems) {
      throw new TooManyItemsError(
        `${what} holds more than ${maxItems} JSON objects, arrays and values: split it`,
      );
    }
  }
}

/** Refuses an export once it has shown more than MAX_SPANS_PER_EXPORT spans. */
export function tooManySpans(): TooManyItemsError {
  return new TooManyItemsError(`the export holds more than ${MAX_SPANS_PER_EXPORT} spans: split it`);
}

/** Refuses an export once it has shown more than MAX_GROUPS_PER_EXPORT resource and scope spans. */
export function tooManyGroups(): TooManyItemsError {
  return new TooManyItemsError(
    `the export holds more than ${MAX_GROUPS_PER_EXPORT} resource spans and scope spans: split it`,
  );
}

export type { Attributes, SpanView };
