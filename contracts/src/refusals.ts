/**
 * JSON-RPC error codes for a tool call that an enforcement point (the Tollgate SDK inside an MCP server,
 * the Kong plugin in front of one) refuses before the tool runs. They sit in the implementation-defined
 * server range (-32000..-32099) but away from its start, which the MCP SDK itself uses (-32000
 * ConnectionClosed, -32001 RequestTimeout). The Kong plugin's Lua copy is checked against this one.
 */
export const REFUSAL_CODES = {
  /** A kill is in force for the customer, agent, session or tool. */
  killed: -32050,
  /** A throttle is in force and the call is over the allowed rate (retry later). */
  throttled: -32051,
  /** The enforcement state could not be read and the enforcement point fails closed (retry later). */
  unavailable: -32052,
  /** The request body is larger than the enforcement point reads (Kong's max_body_bytes). */
  tooLarge: -32053,
} as const;
export type RefusalKind = keyof typeof REFUSAL_CODES;
