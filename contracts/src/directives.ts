/**
 * Directives: what the processor tells a sender about the customers, agents and sessions in its export.
 *
 * Encoding (see docs/directives.md):
 * - protobuf responses carry them in field 1000 of `ExportTraceServiceResponse` (message
 *   `TollgateDirectives`), a field number stock OTLP clients do not know and skip silently;
 * - JSON responses carry them under the top-level key `tollgate` (`{"tollgate":{"directives":[...]}}`),
 *   which stock clients ignore;
 * - plain usage-event responses carry them as `directives`.
 */
export const DIRECTIVE_ACTIONS = ['warn', 'throttle', 'kill', 'resume'] as const;
export type DirectiveAction = (typeof DIRECTIVE_ACTIONS)[number];

/** `tool`: one tool of the customer (its calls-per-tool limit is exhausted); the id is the tool name. */
export const DIRECTIVE_SCOPES = ['customer', 'agent', 'session', 'tool'] as const;
export type DirectiveScope = (typeof DIRECTIVE_SCOPES)[number];

export interface Directive {
  action: DirectiveAction;
  scope: DirectiveScope;
  /** The customer, agent or session id the directive applies to. */
  id: string;
  /** Customer the scope belongs to. */
  customer: string;
  /** Stable reason code, e.g. `hard_limit:spend_per_period`, `margin_guard:kill`, `operator`. */
  reason: string;
  /** Margin in basis points (10000 = 100%), when known. */
  marginBps?: number;
  /** Allowed calls per second (throttle only). */
  ratePerSecond?: number;
  /** When the state lapses on its own (end of the billing period), 0 when only an operator can lift it. */
  untilUnixMs: number;
}

/** JSON key under which export responses carry directives. */
export const DIRECTIVES_JSON_KEY = 'tollgate';
/** Protobuf field number of `ExportTraceServiceResponse` that carries directives. */
export const DIRECTIVES_PROTO_FIELD = 1000;
