import type { McpTransport } from './attributes.js';
import type { SessionRule } from './billing-session.js';

/** Where a tool call was observed. */
export type CallSource = 'sdk' | 'kong' | 'otlp' | 'event';

/**
 * One billable MCP tool call, normalised from a span or a plain usage event. The product (tenant) is not
 * part of it: it always comes from the authenticated ingest credential.
 */
export interface ToolCall {
  /** Idempotency key: trace id + span id for spans, a hash of the sender's id for usage events. */
  eventId: string;
  traceId: string;
  spanId: string;
  customer: string;
  agent: string;
  /** The billing session (contracts/src/billing-session.ts); empty when the call has none. */
  sessionId: string;
  /** The rule that gave `sessionId`; empty with it. */
  sessionRule: SessionRule | '';
  tool: string;
  transport: McpTransport;
  /** false when the call failed (tool error, JSON-RPC error, HTTP error, span status error). */
  ok: boolean;
  errorType: string;
  startUnixUs: number;
  durationUs: number;
  inputTokens: number;
  outputTokens: number;
  protocolVersion: string;
  source: CallSource;
  /** `service.instance.id` of the sender, used to route directives to heartbeating SDK instances. */
  instanceId: string;
  /**
   * The quota lease the sender took this call from before it ran, and the nano-units it took (decimal
   * text); absent for calls not taken from a lease. Settled against the lease when the call is counted.
   */
  lease?: { id: string; reservedNano: string };
  /**
   * Raw values of the usage-line sources the call reported (span attributes a plan's `usageLines` read,
   * `tollgate.usage.<line>` from the SDK and from a usage event's `metadata`), by attribute name. Checked
   * and priced against the customer's plan when the call is rated; absent when it reported none.
   */
  usage?: Record<string, string | number | boolean | null>;
}

/** Why a span or event that claims to be a tool call was refused (stable codes, reported in partial success). */
export const REJECT_REASONS = {
  missing_tool_name: 'gen_ai.tool.name is missing or empty',
  missing_customer: 'no customer: set tollgate.customer.id or bind a default customer to the ingest key',
  invalid_trace_id: 'trace_id is not 16 bytes or is all zeros',
  invalid_span_id: 'span_id is not 8 bytes or is all zeros',
  invalid_number:
    'a numeric attribute is negative, fractional where an integer is required, NaN or too large',
  invalid_timestamp: 'start/end time is missing, inverted or outside the accepted window',
  invalid_identifier: 'an identifier attribute is too long or has control characters',
  unknown_tool: 'the tool is not priced by the plan and the plan has no default tool',
  unknown_plan: 'no rate plan for this product and customer',
  customer_not_allowed: 'the ingest key is bound to one customer (its `customer`) and the call names another',
  malformed_span: 'the span could not be decoded (wrong wire or JSON types)',
  invalid_event: 'the usage event does not match the schema',
  duplicate_in_batch: 'the same event id appears twice in one request',
  unsupported_metric: 'metricName is not a metered MCP metric',
  invalid_usage:
    'a usage-line quantity is not a number, negative, fractional where the line is integral, NaN, too large, or its subsets exceed their parent',
  amount_out_of_range:
    "the call's price or cost under its plan could exceed 2^63 − 1 nano-units (9.2 billion units of currency)",
} as const;
export type RejectReason = keyof typeof REJECT_REASONS;

export interface Rejection {
  reason: RejectReason;
  detail?: string;
}
