import { type Directive, REFUSAL_CODES } from '@tollgate/contracts';

/**
 * The JSON-RPC errors the SDK answers a refused call with: stable codes in the implementation-defined server
 * range (-32000..-32099), a message a client can show as is, and `data.tollgate` for programs.
 */
export const REFUSALS = {
  killed: { code: REFUSAL_CODES.killed, title: 'stopped by Tollgate' },
  throttled: { code: REFUSAL_CODES.throttled, title: 'rate limited by Tollgate' },
  /** No quota lease could be had in time and leases fail closed (see `leases.failMode`). */
  unavailable: { code: REFUSAL_CODES.unavailable, title: 'not covered: Tollgate is unreachable' },
} as const;
export type RefusalKind = keyof typeof REFUSALS;

export interface RefusalData {
  tollgate: {
    refusal: RefusalKind;
    action: Directive['action'];
    scope: Directive['scope'];
    id: string;
    customer: string;
    reason: string;
    /** When the restriction lapses on its own; 0 when only an operator can lift it. */
    untilUnixMs: number;
    /** throttle only: wait at least this long before calling again. */
    retryAfterMs?: number;
    /** throttle only: the allowed rate. */
    ratePerSecond?: number;
  };
}

function subject(d: Directive): string {
  if (d.scope === 'customer') return `customer "${d.customer}"`;
  if (d.scope === 'tool') return `tool "${d.id}" for customer "${d.customer}"`;
  return `${d.scope} "${d.id}" of customer "${d.customer}"`;
}

/** An Error the MCP SDK turns into a JSON-RPC error response (it reads `code`, `message` and `data`). */
export class TollgateRefusal extends Error {
  readonly code: number;
  readonly data: RefusalData;

  constructor(kind: RefusalKind, d: Directive, what: 'call' | 'session' = 'call', retryAfterMs?: number) {
    const def = REFUSALS[kind];
    const why = d.reason ? ` (${d.reason})` : '';
    const head = what === 'call' ? 'Tool call refused' : 'Session refused';
    const tail = what === 'call' ? 'the tool was not run' : 'no tool calls are accepted until it is lifted';
    const message =
      kind === 'killed'
        ? `${head}: ${subject(d)} is ${def.title}${why}; ${tail}.`
        : kind === 'unavailable'
          ? `${head}: no quota lease could be had for ${subject(d)} (Tollgate unreachable) and the SDK fails closed; the tool was not run; retry after ${retryAfterMs} ms.`
          : `${head}: ${subject(d)} is ${def.title} to ${d.ratePerSecond} calls/s${why}; retry after ${retryAfterMs} ms.`;
    super(message);
    this.name = 'TollgateRefusal';
    this.code = def.code;
    const data: RefusalData['tollgate'] = {
      refusal: kind,
      action: d.action,
      scope: d.scope,
      id: d.id,
      customer: d.customer,
      reason: d.reason,
      untilUnixMs: d.untilUnixMs,
    };
    if (retryAfterMs !== undefined) data.retryAfterMs = retryAfterMs;
    if (d.ratePerSecond !== undefined) data.ratePerSecond = d.ratePerSecond;
    this.data = { tollgate: data };
  }
}

/** JSON-RPC "Invalid params": what a `tools/call` whose tool name Tollgate cannot bill is answered with. */
export const UNBILLABLE_TOOL_NAME_CODE = -32602;

/**
 * A `tools/call` refused before the tool runs because its name is not one Tollgate can bill (1 to 256
 * characters without control characters, as `gen_ai.tool.name` must be): Tollgate would refuse the span, so
 * the call would run unbilled. Only a low-level `Server` (which the SDK cannot ask whether the tool exists)
 * lets such a name reach a handler; a client sends it, so it is an invalid-params error, not a kill.
 */
export class UnbillableToolName extends Error {
  readonly code = UNBILLABLE_TOOL_NAME_CODE;
  readonly data = { tollgate: { refusal: 'unbillable_tool_name' as const } };

  constructor() {
    super(
      'Tool call refused: the tool name is not one Tollgate can bill (1 to 256 characters, no control characters); the tool was not run.',
    );
    this.name = 'UnbillableToolName';
  }
}
