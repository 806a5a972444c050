-- JSON-RPC 2.0 as MCP uses it over HTTP: finds the `tools/call` requests of a single or batch
-- request body, and builds error responses. Pure (cjson only).

local cjson = require("cjson.safe").new()

local byte = string.byte
local find = string.find
local format = string.format
local match = string.match
local floor = math.floor
local type = type
local null = cjson.null

local TOOLS_CALL = "tools/call"

local CODES = {
  PARSE_ERROR = -32700,
  INVALID_REQUEST = -32600,
  -- refused calls: contracts/src/refusals.ts (REFUSAL_CODES), shared with the Tollgate SDK; in the
  -- implementation-defined range but clear of -32000/-32001, which the MCP SDK itself uses
  KILLED = -32050,
  THROTTLED = -32051,
  UNAVAILABLE = -32052,
  TOO_LARGE = -32053,
}

-- longest id or tool name we track; longer values are treated as absent (the call is then not
-- billable by the processor either, which rejects identifiers over 256 bytes)
local MAX_ID_LENGTH = 256
local MAX_NAME_LENGTH = 256

local _M = {
  TOOLS_CALL = TOOLS_CALL,
  CODES = CODES,
  MAX_ID_LENGTH = MAX_ID_LENGTH,
}

--- One text form for a JSON number, whichever side decoded it: integers (exactly representable)
-- as plain digits, anything else with 17 significant digits.
function _M.canonical_number(n)
  if n == floor(n) and n >= -9007199254740992 and n <= 9007199254740992 then
    return format("%d", n)
  end
  return format("%.17g", n)
end

local canonical_number = _M.canonical_number

--- Describes a JSON-RPC id: key (for matching responses), text (the `jsonrpc.request.id`
-- attribute) and json (to echo it in an error response). nil for absent, null or invalid ids.
function _M.describe_id(id)
  local t = type(id)
  if t == "string" then
    if #id > MAX_ID_LENGTH then
      return nil
    end
    return { key = "s:" .. id, text = id, json = cjson.encode(id) }
  elseif t == "number" then
    if id ~= id or id == math.huge or id == -math.huge then
      return nil
    end
    local text = canonical_number(id)
    return { key = "n:" .. text, text = text, json = text }
  end
  return nil
end

local describe_id = _M.describe_id

local W3C_TRACEPARENT = "^00%-(%x+)%-(%x+)%-(%x%x)$"

--- A W3C traceparent (version 00, lowercase, non-zero ids) or nil.
function _M.valid_traceparent(tp)
  if type(tp) ~= "string" or #tp ~= 55 then
    return nil
  end
  local trace_id, parent_id = match(tp, W3C_TRACEPARENT)
  if not trace_id or #trace_id ~= 32 or #parent_id ~= 16
     or find(tp, "[A-F]") or not find(trace_id, "[^0]") or not find(parent_id, "[^0]") then
    return nil
  end
  return tp
end

local function first_non_space(s)
  local pos = find(s, "[^ \t\r\n]")
  return pos and byte(s, pos)
end

local function tool_call_of(msg, index)
  if type(msg) ~= "table" or msg.method ~= TOOLS_CALL then
    return nil
  end
  local id = describe_id(msg.id)
  if not id then
    -- a tools/call without a usable id is a notification: the server answers nothing and runs nothing
    return nil
  end
  local params = msg.params
  local name, meta
  if type(params) == "table" then
    if type(params.name) == "string" and params.name ~= "" and #params.name <= MAX_NAME_LENGTH then
      name = params.name
    end
    if type(params._meta) == "table" then
      meta = params._meta
    end
  end
  return {
    index = index,
    id = id,
    -- nil when missing or invalid: the upstream answers -32602 and the call is not billable
    name = name,
    traceparent = meta and _M.valid_traceparent(meta.traceparent) or nil,
    tracestate = meta and type(meta.tracestate) == "string" and meta.tracestate or nil,
  }
end

--- Parses a request body. `hints` holds the optional Streamable HTTP headers
-- { method = <Mcp-Method>, name = <Mcp-Name> }.
-- Returns parsed, or nil, code, message for a body the upstream must not see.
-- parsed = { batch, message_count, calls = {...}, ids = { <id of every request with one> } }
function _M.parse(body, hints)
  if type(body) ~= "string" then
    return nil, CODES.PARSE_ERROR, "Parse error: no request body"
  end
  local first = first_non_space(body)
  if first ~= 123 and first ~= 91 then -- '{' or '['
    if first == nil then
      return nil, CODES.PARSE_ERROR, "Parse error: empty request body"
    end
    local _, err = cjson.decode(body)
    if err then
      return nil, CODES.PARSE_ERROR, "Parse error: " .. err
    end
    return nil, CODES.INVALID_REQUEST, "Invalid Request: expected an object or an array"
  end

  local doc, err = cjson.decode(body)
  if doc == nil then
    return nil, CODES.PARSE_ERROR, "Parse error: " .. tostring(err)
  end

  local batch = first == 91
  local messages = batch and doc or { doc }
  if batch and #messages == 0 then
    return nil, CODES.INVALID_REQUEST, "Invalid Request: empty batch"
  end

  local calls, ids = {}, {}
  for i = 1, #messages do
    local msg = messages[i]
    if type(msg) == "table" and type(msg.method) == "string" then
      local id = describe_id(msg.id)
      if id then
        ids[#ids + 1] = id
      end
    end
    local call = tool_call_of(msg, i)
    if call then
      calls[#calls + 1] = call
    end
  end

  -- the headers mirror a single request for routing; a gateway that routed or billed on them
  -- while the server runs the body could be fooled, so they must agree with the body
  local msg = messages[1]
  if not batch and hints and type(msg) == "table" and msg.method ~= nil then
    if hints.method and hints.method ~= msg.method then
      return nil, CODES.INVALID_REQUEST, "Invalid Request: Mcp-Method header does not match the body"
    end
    if hints.name and msg.method == TOOLS_CALL
       and (type(msg.params) ~= "table" or hints.name ~= msg.params.name) then
      return nil, CODES.INVALID_REQUEST, "Invalid Request: Mcp-Name header does not match the body"
    end
  end

  return {
    batch = batch,
    message_count = #messages,
    calls = calls,
    ids = ids,
  }
end

--- One JSON-RPC error response. `id` is a describe_id() result or nil (JSON null).
function _M.error_response(id, code, message, data)
  local err = { code = code, message = message, data = data }
  return '{"jsonrpc":"2.0","id":' .. (id and id.json or "null")
         .. ',"error":' .. cjson.encode(err) .. "}"
end

--- The body refusing a request: one error for a single request, an array of errors (one per
-- request that has an id) for a batch, as JSON-RPC 2.0 answers batches.
function _M.refusal_body(parsed, code, message, data)
  if not parsed or not parsed.batch then
    local id = parsed and parsed.calls[1] and parsed.calls[1].id or nil
    return _M.error_response(id, code, message, data)
  end
  local parts = {}
  for i = 1, #parsed.ids do
    parts[i] = _M.error_response(parsed.ids[i], code, message, data)
  end
  if #parts == 0 then
    parts[1] = _M.error_response(nil, code, message, data)
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

_M.null = null

return _M
