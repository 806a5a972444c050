import { z } from 'zod';
import { ATTR_PREFIX_TOLLGATE_USAGE, MCP_TRANSPORTS } from './attributes.js';
import { MAX_COUNT } from './billable-span.js';
import { eventIdFromUsageEvent } from './event-id.js';
import { isValidIdentifier, MAX_IDENTIFIER_LENGTH } from './identifiers.js';
import type { ToolCall } from './tool-call.js';

/** The metric name a plain usage event must carry to be metered as an MCP tool call. */
export const USAGE_METRIC_TOOL_CALL = 'mcp.tool_call';

const identifier = z.string().refine(isValidIdentifier, {
  message: `must be 1 to ${MAX_IDENTIFIER_LENGTH} characters without control characters`,
});
const optionalIdentifier = z.union([identifier, z.literal('')]);
const countSchema = z.number().int().min(0).max(MAX_COUNT);

/**
 * A plain JSON usage event, for senders without OpenTelemetry (`POST /v1/ingest/events` and
 * `/v1/ingest/batch`). It feeds the same pipeline as a span: `id` is its idempotency key.
 */
export const UsageEventSchema = z
  .object({
    id: identifier,
    customerId: identifier.optional(),
    timestamp: z.union([z.iso.datetime({ offset: true }), z.number().int().positive()]),
    metricName: z.literal(USAGE_METRIC_TOOL_CALL),
    productType: z.literal('mcp').optional(),
    toolName: identifier,
    sessionId: optionalIdentifier.default(''),
    agentId: optionalIdentifier.default(''),
    executionDurationMs: z.number().min(0).max(MAX_COUNT),
    status: z.enum(['ok', 'error']).default('ok'),
    errorType: z.string().max(MAX_IDENTIFIER_LENGTH).optional(),
    transport: z.enum(MCP_TRANSPORTS).default('unknown'),
    traceId: z
      .string()
      .regex(/^[0-9a-f]{32}$/)
      .optional(),
    spanId: z
      .string()
      .regex(/^[0-9a-f]{16}$/)
      .optional(),
    metadata: z
      .object({
        inputTokens: countSchema.default(0),
        outputTokens: countSchema.default(0),
      })
      .loose()
      .default({ inputTokens: 0, outputTokens: 0 }),
  })
  .strict();
export type UsageEvent = z.input<typeof UsageEventSchema>;
export type ParsedUsageEvent = z.output<typeof UsageEventSchema>;

/** Converts a validated usage event into the normalised tool call; customer falls back to the key's default. */
export function toolCallFromUsageEvent(
  e: ParsedUsageEvent,
  product: string,
  defaultCustomer: string | undefined,
): ToolCall | undefined {
  const customer = e.customerId ?? defaultCustomer;
  if (!customer) return undefined;
  const startMs = typeof e.timestamp === 'number' ? e.timestamp : Date.parse(e.timestamp);
  const ok = e.status === 'ok';
  const call: ToolCall = {
    eventId: eventIdFromUsageEvent(product, e.id),
    traceId: e.traceId ?? '',
    spanId: e.spanId ?? '',
    customer,
    agent: e.agentId,
    sessionId: e.sessionId,
    // a usage event's session is whatever its sender calls one
    sessionRule: e.sessionId ? 'protocol' : '',
    tool: e.toolName,
    transport: e.transport,
    ok,
    errorType: ok ? '' : (e.errorType ?? 'error'),
    startUnixUs: Math.round(startMs * 1000),
    durationUs: Math.round(e.executionDurationMs * 1000),
    inputTokens: e.metadata.inputTokens,
    outputTokens: e.metadata.outputTokens,
    protocolVersion: '',
    source: 'event',
    instanceId: '',
  };
  // Other metadata fields named like a usage line are that line's quantity (checked against the plan
  // when rated): `metadata.cached_input_tokens` is read as `tollgate.usage.cached_input_tokens`.
  // An array, object or null there is kept as null: a line of the plan finds it malformed (`invalid_usage`),
  // as on spans, instead of reading it as absent (which billed nothing for it).
  let usage: Record<string, string | number | boolean | null> | undefined;
  for (const [k, v] of Object.entries(e.metadata)) {
    if (k === 'inputTokens' || k === 'outputTokens' || !USAGE_LINE_KEY.test(k) || v === undefined) continue;
    usage ??= {};
    usage[ATTR_PREFIX_TOLLGATE_USAGE + k] =
      typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean' ? v : null;
  }
  if (usage) call.usage = usage;
  return call;
}

const USAGE_LINE_KEY = /^[a-z][a-z0-9_]{0,47}$/;
