/**
 * The attribute keys this instrumentation writes. The keys themselves live in @tollgate/contracts (one home
 * for each fact, shared with the processor that reads them); this module only re-exports the ones we use,
 * plus the attribute *values* that are specific to the SDK side.
 */
export {
  ATTR_DIRECTIVE_ID,
  ATTR_DIRECTIVE_MARGIN_BPS,
  ATTR_DIRECTIVE_REASON,
  ATTR_DIRECTIVE_SCOPE,
  ATTR_ERROR_TYPE,
  ATTR_GEN_AI_OPERATION_NAME,
  ATTR_GEN_AI_TOOL_NAME,
  ATTR_GEN_AI_USAGE_INPUT_TOKENS,
  ATTR_GEN_AI_USAGE_OUTPUT_TOKENS,
  ATTR_JSONRPC_REQUEST_ID,
  ATTR_MCP_METHOD_NAME,
  ATTR_MCP_PROTOCOL_VERSION,
  ATTR_MCP_SESSION_ID,
  ATTR_NETWORK_TRANSPORT,
  ATTR_PREFIX_TOLLGATE_USAGE,
  ATTR_RPC_RESPONSE_STATUS_CODE,
  ATTR_TOLLGATE_AGENT,
  ATTR_TOLLGATE_CUSTOMER,
  ATTR_TOLLGATE_TOKENS_ESTIMATED,
  ATTR_TOLLGATE_TRANSPORT,
  ERROR_TYPE_TOOL_ERROR,
  EVENT_TOLLGATE_WARN,
  GEN_AI_OPERATION_EXECUTE_TOOL,
  MCP_METHOD_TOOLS_CALL,
  RESOURCE_SERVICE_INSTANCE_ID,
  RESOURCE_SERVICE_NAME,
} from '@tollgate/contracts';

/** `network.transport` values (OTel semantic conventions): stdio is a pipe, SSE and Streamable HTTP are TCP. */
export const NETWORK_TRANSPORT_PIPE = 'pipe';
export const NETWORK_TRANSPORT_TCP = 'tcp';

/** `error.type` fallback when a handler throws something that has no JSON-RPC code (semconv's `_OTHER`). */
export const ERROR_TYPE_OTHER = '_OTHER';

/**
 * On the app's own span of a multi-round-trip round that asked for input (2026-07-28 `input_required`): that
 * round is not billed (no billing span), and this says why the app's span has no twin in Tollgate.
 */
export const ATTR_MCP_RESULT_TYPE = 'tollgate.mcp.result_type';
