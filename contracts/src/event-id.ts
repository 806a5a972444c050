import { createHash } from 'node:crypto';

const HEX_TRACE_ID = /^[0-9a-f]{32}$/;
const HEX_SPAN_ID = /^[0-9a-f]{16}$/;

/**
 * The idempotency key of a tool call. For spans it is the trace id and span id themselves (hex,
 * 48 chars): an exporter retry carries the same pair, so a retried span maps to the same event.
 */
export function eventIdFromSpan(traceIdHex: string, spanIdHex: string): string {
  return `${traceIdHex}${spanIdHex}`;
}

const ZERO_TRACE_ID = '0'.repeat(32);
const ZERO_SPAN_ID = '0'.repeat(16);

export function isValidTraceId(hex: string): boolean {
  return HEX_TRACE_ID.test(hex) && hex !== ZERO_TRACE_ID;
}

export function isValidSpanId(hex: string): boolean {
  return HEX_SPAN_ID.test(hex) && hex !== ZERO_SPAN_ID;
}

/**
 * Plain JSON usage events carry their own id; they are namespaced per product and hashed so that they
 * can never collide with a span-derived id and have the same shape (48 hex chars).
 */
export function eventIdFromUsageEvent(product: string, id: string): string {
  return createHash('sha256').update(`usage-event\0${product}\0${id}`).digest('hex').slice(0, 48);
}
