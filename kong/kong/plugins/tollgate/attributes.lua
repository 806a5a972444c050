-- Span attributes of one metered tools/call: the OTel MCP semantic-convention keys (our own copy,
-- as contracts/src/attributes.ts keeps one: they are experimental upstream) plus the `tollgate.*`
-- billing keys. Pure: builds a flat table of string/number values that Kong's span:set_attribute
-- accepts (numbers leave Kong as OTLP doubles).

local pairs = pairs
local tostring = tostring

local KEYS = {
  MCP_METHOD_NAME = "mcp.method.name",
  MCP_SESSION_ID = "mcp.session.id",
  MCP_PROTOCOL_VERSION = "mcp.protocol.version",
  GEN_AI_TOOL_NAME = "gen_ai.tool.name",
  GEN_AI_OPERATION_NAME = "gen_ai.operation.name",
  JSONRPC_REQUEST_ID = "jsonrpc.request.id",
  ERROR_TYPE = "error.type",
  RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code",
  NETWORK_TRANSPORT = "network.transport",
  HTTP_RESPONSE_STATUS_CODE = "http.response.status_code",
  TOLLGATE_CUSTOMER = "tollgate.customer.id",
  TOLLGATE_AGENT = "tollgate.agent.id",
  TOLLGATE_TRANSPORT = "tollgate.mcp.transport",
  -- which billing-session rule gave mcp.session.id (contracts/src/billing-session.ts)
  TOLLGATE_SESSION_RULE = "tollgate.session.rule",
  -- false on a span exported only so the call is billed: its trace was sampled out (or Kong's tracing
  -- is off); a Collector pipeline feeding a tracing backend can drop spans carrying it
  TOLLGATE_TRACE_SAMPLED = "tollgate.trace.sampled",
  -- the quota lease the call was taken from and the nano-units it took (contracts/src/leases.ts):
  -- the processor settles the call against that lease
  TOLLGATE_LEASE_ID = "tollgate.lease.id",
  TOLLGATE_LEASE_RESERVED = "tollgate.lease.reserved_nano",
  -- Kong-side only (not read by the billing contract): how the access phase decided
  TOLLGATE_ENFORCEMENT = "tollgate.enforcement",
  TOLLGATE_ENFORCEMENT_REASON = "tollgate.enforcement.reason",
  -- Kong-side only: how many usage entries the upstream reported that were not put on the span
  -- (a name outside gen_ai.usage.* / tollgate.usage.*, too long, or past usage.MAX_ENTRIES)
  TOLLGATE_USAGE_DROPPED = "tollgate.kong.usage_dropped",
  -- "unknown" on a call that reached the tool but whose answer nobody saw (the client hung up, or
  -- Kong's read timeout ran out): billed as a call that ran (no error.type), with the reason
  TOLLGATE_OUTCOME = "tollgate.outcome",
  TOLLGATE_OUTCOME_REASON = "tollgate.outcome.reason",
}

local VALUES = {
  TOOLS_CALL = "tools/call",
  EXECUTE_TOOL = "execute_tool",
  TOOL_ERROR = "tool_error",
  TCP = "tcp",
  STREAMABLE_HTTP = "streamable_http",
  SSE = "sse",
  UNKNOWN = "unknown",
  CLIENT_CLOSED = "client_closed",
  UPSTREAM_TIMEOUT = "upstream_timeout",
}

-- nginx's statuses for a client that closed the connection first, and for a read timeout
local HTTP_CLIENT_CLOSED = 499
local HTTP_GATEWAY_TIMEOUT = 504
-- the statuses unknown_outcome can turn into an unknown outcome (the caller reads nginx's upstream
-- variables only for them)
local MAYBE_UNKNOWN = { [HTTP_CLIENT_CLOSED] = true, [HTTP_GATEWAY_TIMEOUT] = true }

local _M = {
  KEYS = KEYS,
  VALUES = VALUES,
  MAYBE_UNKNOWN = MAYBE_UNKNOWN,
}

--- The error.type of one call and its rpc.response.status_code (or nil, nil for success).
-- `answer` is the outcome scanner's result for the call's id (nil when no answer was seen),
-- `null_error` the code of an error answered with a null id, `http_status` the response status.
function _M.error_of(answer, null_error, http_status)
  if answer then
    if answer.error_code then
      return answer.error_code, answer.error_code
    end
    if answer.is_error then
      return VALUES.TOOL_ERROR, nil
    end
    return nil, nil
  end
  if null_error then
    return null_error, null_error
  end
  if type(http_status) == "number" and http_status >= 400 then
    return tostring(http_status), nil
  end
  return nil, nil
end

--- Why the outcome of a call is unknown although it reached the upstream, or nil when it is known.
-- A request nginx sent to the upstream (`upstream.sent`: some bytes of it were written to the
-- upstream connection, `$upstream_bytes_sent` > 0) ran the tool as far as anyone can tell; when no
-- answer to the call was seen because the client hung up (499) or Kong's read timeout ran out before
-- the upstream said anything (504 with `upstream.answered` false: `$upstream_bytes_received` of the
-- last try is 0, so the 504 is nginx's, not the service's), the call ran with an unknown outcome.
-- A request never sent (connect refused, connect timeout: 502/504 with nothing sent) stays failed.
function _M.unknown_outcome(answer, null_error, http_status, upstream)
  if answer or null_error or not upstream or not upstream.sent then
    return nil
  end
  if http_status == HTTP_CLIENT_CLOSED then
    return VALUES.CLIENT_CLOSED
  end
  if http_status == HTTP_GATEWAY_TIMEOUT and not upstream.answered then
    return VALUES.UPSTREAM_TIMEOUT
  end
  return nil
end

--- Attributes of one call.
-- call: a jsonrpc.parse() call; req: { session_id, protocol_version, customer, agent, transport,
-- enforcement }; result: { answer, null_error, http_status, upstream, usage }, usage = the usage.lua
-- report the upstream gave for this call (its entries become attributes under their own names),
-- upstream = { sent, answered } from nginx's upstream variables (nil when nothing was proxied).
function _M.for_call(call, req, result)
  local a = {
    [KEYS.MCP_METHOD_NAME] = VALUES.TOOLS_CALL,
    [KEYS.GEN_AI_TOOL_NAME] = call.name,
    [KEYS.GEN_AI_OPERATION_NAME] = VALUES.EXECUTE_TOOL,
    [KEYS.JSONRPC_REQUEST_ID] = call.id and call.id.text
                                or (result and result.answer and result.answer.id_key
                                    and result.answer.id_key:sub(3)) or nil,
    [KEYS.NETWORK_TRANSPORT] = VALUES.TCP,
    [KEYS.TOLLGATE_TRANSPORT] = req.transport,
    [KEYS.MCP_SESSION_ID] = req.session_id,
    [KEYS.TOLLGATE_SESSION_RULE] = req.session_rule,
    [KEYS.MCP_PROTOCOL_VERSION] = req.protocol_version,
    [KEYS.TOLLGATE_CUSTOMER] = req.customer,
    [KEYS.TOLLGATE_AGENT] = req.agent,
    [KEYS.TOLLGATE_ENFORCEMENT] = req.enforcement,
  }
  if result then
    local unknown = _M.unknown_outcome(result.answer, result.null_error, result.http_status, result.upstream)
    if unknown then
      -- the tool ran: billed (no error.type, and no http.response.status_code, whose 499/504 the
      -- processor would read as a failure); Kong's own http.status_code still shows the status
      a[KEYS.TOLLGATE_OUTCOME] = VALUES.UNKNOWN
      a[KEYS.TOLLGATE_OUTCOME_REASON] = unknown
    else
      local error_type, rpc_code = _M.error_of(result.answer, result.null_error, result.http_status)
      a[KEYS.ERROR_TYPE] = error_type
      a[KEYS.RPC_RESPONSE_STATUS_CODE] = rpc_code
      a[KEYS.HTTP_RESPONSE_STATUS_CODE] = result.http_status
    end
    local usage = result.usage
    if usage then
      -- names are gen_ai.usage.* / tollgate.usage.* only (usage.accepts): none of the keys above
      for name, v in pairs(usage.values) do
        a[name] = v
      end
      if usage.dropped > 0 then
        a[KEYS.TOLLGATE_USAGE_DROPPED] = usage.dropped
      end
    end
  end
  return a
end

--- Attributes of a request refused in the access phase. Deliberately without `mcp.method.name`:
-- the tool never ran, so the span must not match the billable-span contract.
function _M.for_refusal(req, decision)
  return {
    [KEYS.TOLLGATE_CUSTOMER] = req.customer,
    [KEYS.TOLLGATE_AGENT] = req.agent,
    [KEYS.MCP_SESSION_ID] = req.session_id,
    [KEYS.TOLLGATE_SESSION_RULE] = req.session_rule,
    [KEYS.TOLLGATE_TRANSPORT] = req.transport,
    [KEYS.TOLLGATE_ENFORCEMENT] = decision.enforcement or decision.action,
    [KEYS.TOLLGATE_ENFORCEMENT_REASON] = decision.reason,
  }
end

return _M
