/**
 * Span attribute keys. The MCP and GenAI keys follow the OpenTelemetry semantic conventions for MCP
 * (experimental upstream, so we keep our own copy here rather than importing from `/incubating`).
 * Billing keys that the conventions lack live under the `tollgate.` prefix.
 */

// OTel MCP semantic conventions
export const ATTR_MCP_METHOD_NAME = 'mcp.method.name';
export const ATTR_MCP_SESSION_ID = 'mcp.session.id';
export const ATTR_MCP_PROTOCOL_VERSION = 'mcp.protocol.version';
export const ATTR_GEN_AI_TOOL_NAME = 'gen_ai.tool.name';
export const ATTR_GEN_AI_OPERATION_NAME = 'gen_ai.operation.name';
export const ATTR_GEN_AI_USAGE_INPUT_TOKENS = 'gen_ai.usage.input_tokens';
export const ATTR_GEN_AI_USAGE_OUTPUT_TOKENS = 'gen_ai.usage.output_tokens';
export const ATTR_JSONRPC_REQUEST_ID = 'jsonrpc.request.id';
export const ATTR_ERROR_TYPE = 'error.type';
export const ATTR_RPC_RESPONSE_STATUS_CODE = 'rpc.response.status_code';
export const ATTR_NETWORK_TRANSPORT = 'network.transport';
export const ATTR_HTTP_RESPONSE_STATUS_CODE = 'http.response.status_code';

// Tollgate billing attributes (no semconv equivalent)
export const ATTR_TOLLGATE_CUSTOMER = 'tollgate.customer.id';
export const ATTR_TOLLGATE_AGENT = 'tollgate.agent.id';
export const ATTR_TOLLGATE_TRANSPORT = 'tollgate.mcp.transport';
/** Which billing-session rule gave `mcp.session.id` (see billing-session.ts): protocol, connection, trace, activity. */
export const ATTR_TOLLGATE_SESSION_RULE = 'tollgate.session.rule';
export const ATTR_TOLLGATE_PRICE = 'tollgate.price.nano';
export const ATTR_TOLLGATE_COST = 'tollgate.cost.nano';
export const ATTR_TOLLGATE_CURRENCY = 'tollgate.currency';
export const ATTR_TOLLGATE_DECISION = 'tollgate.decision';
export const ATTR_TOLLGATE_PLAN_VERSION = 'tollgate.plan.version';
export const ATTR_TOLLGATE_INSTANCE_ID = 'tollgate.instance.id';

/** A custom quantity reported through the SDK's usage API is written as `tollgate.usage.<name>`. */
export const ATTR_PREFIX_TOLLGATE_USAGE = 'tollgate.usage.';
/** Set (true) when the token counts were estimated by the SDK's tokenizer, not reported by the tool. */
export const ATTR_TOLLGATE_TOKENS_ESTIMATED = 'tollgate.tokens.estimated';

/** Span event the SDK adds to a tool call that runs under a `warn` directive, and its attributes. */
export const EVENT_TOLLGATE_WARN = 'tollgate.warn';
export const ATTR_DIRECTIVE_SCOPE = 'tollgate.directive.scope';
export const ATTR_DIRECTIVE_ID = 'tollgate.directive.id';
export const ATTR_DIRECTIVE_REASON = 'tollgate.directive.reason';
export const ATTR_DIRECTIVE_MARGIN_BPS = 'tollgate.directive.margin_bps';

/** Resource attribute the SDK sets so heartbeats can be matched to the sessions they carry. */
export const RESOURCE_SERVICE_INSTANCE_ID = 'service.instance.id';
export const RESOURCE_SERVICE_NAME = 'service.name';

// Attribute values
export const MCP_METHOD_TOOLS_CALL = 'tools/call';
export const GEN_AI_OPERATION_EXECUTE_TOOL = 'execute_tool';
export const ERROR_TYPE_TOOL_ERROR = 'tool_error';

/**
 * MCP transport names (`tollgate.mcp.transport`). `in_memory`: the SDK's in-process transport (tests,
 * embedded agents); `http`: an HTTP transport the SDK could not name more precisely; `unknown`: nothing is
 * known (a plain OTLP span without `network.transport`).
 */
export const MCP_TRANSPORTS = ['stdio', 'sse', 'streamable_http', 'http', 'in_memory', 'unknown'] as const;
export type McpTransport = (typeof MCP_TRANSPORTS)[number];

/** Name of the root span Kong's opentelemetry plugin emits for a proxied request. */
export const KONG_ROOT_SPAN_NAME = 'kong';

/** OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind). */
export const SPAN_KIND_SERVER = 2;
/** OTLP status codes (opentelemetry.proto.trace.v1.Status.StatusCode). */
export const STATUS_CODE_ERROR = 2;
