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
  override readonly name = 'DecodeError';
}

export type { Attributes, SpanView };
