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
  -- the MCP 2026-07-28 header/body cross-check (SEP-2243): HeaderMismatch, answered on HTTP 400
  -- (HEADER_MISMATCH_ERROR_CODE of the MCP TypeScript SDK, core-internal/src/shared/inboundClassification.ts)
  HEADER_MISMATCH = -32020,
}

-- the first protocol revision whose Streamable HTTP requests carry Mcp-Method / Mcp-Name and whose
-- servers must refuse a request whose headers disagree with its body (SDK protocolEras.ts); revision
-- identifiers are dates, so a string comparison orders them
local FIRST_MODERN_PROTOCOL_VERSION = "2026-07-28"
local PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
local BASE64_SENTINEL_PREFIX = "=?base64?"
local BASE64_SENTINEL_SUFFIX = "?="


-- longest id or tool name we track; longer values are treated as absent (the call is then not
-- billable by the processor either, which rejects identifiers over 256 bytes)
local MAX_ID_LENGTH = 256
local MAX_NAME_LENGTH = 256

local _M = {
  TOOLS_CALL = TOOLS_CALL,
  CODES = CODES,
  MAX_ID_LENGTH = MAX_ID_LENGTH,
  FIRST_MODERN_PROTOCOL_VERSION = FIRST_MODERN_PROTOCOL_VERSION,
}

--- Whether a protocol revision belongs to the stateless 2026-07-28+ era (SDK isModernProtocolVersion).
function _M.is_modern_version(v)
  return type(v) == "string" and find(v, "^%d%d%d%d%-%d%d%-%d%d$") ~= nil
         and v >= FIRST_MODERN_PROTOCOL_VERSION
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for i = 1, 64 do
  B64_VALUE[byte(B64, i)] = i - 1
end

-- canonical RFC 4648 Base64 with padding, as the SDK's BASE64_CANONICAL accepts; nil otherwise
local function base64_decode(s)
  local n = #s
  if n % 4 ~= 0 or find(s, "[^A-Za-z0-9+/=]") then
    return nil
  end
  local pad = 0
  if n > 0 and byte(s, n) == 61 then
    pad = byte(s, n - 1) == 61 and 2 or 1
  end
  if find(s, "=", 1, true) and find(s, "=", 1, true) <= n - pad then
    return nil -- '=' anywhere but the final padding
  end
  local out = {}
  for i = 1, n, 4 do
    local a, b = B64_VALUE[byte(s, i)], B64_VALUE[byte(s, i + 1)]
    local c, d = B64_VALUE[byte(s, i + 2)], B64_VALUE[byte(s, i + 3)]
    local v = a * 262144 + b * 4096 + (c or 0) * 64 + (d or 0)
    local b1, b2, b3 = floor(v / 65536), floor(v / 256) % 256, v % 256
    if c == nil then
      out[#out + 1] = string.char(b1)
    elseif d == nil then
      out[#out + 1] = string.char(b1, b2)
    else
      out[#out + 1] = string.char(b1, b2, b3)
    end
  end
  return table.concat(out)
end

-- strict UTF-8 (what TextDecoder('utf-8', { fatal: true }) accepts)
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    local len, min
    if c < 0x80 then
      len, min = 1, 0
    elseif c >= 0xC2 and c <= 0xDF then
      len, min = 2, 0x80
    elseif c >= 0xE0 and c <= 0xEF then
      len, min = 3, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then
      len, min = 4, 0x10000
    else
      return false
    end
    if len > 1 then
      if i + len - 1 > n then
        return false
      end
      local cp = c % (2 ^ (7 - len))
      for k = i + 1, i + len - 1 do
        local cc = byte(s, k)
        if cc < 0x80 or cc > 0xBF then
          return false
        end
        cp = cp * 64 + (cc - 0x80)
      end
      if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then
        return false
      end
    end
    i = i + len
  end
  return true
end

--- The value an `Mcp-Name` header stands for (SDK decodeMcpParamValue after stripping optional
-- whitespace): as is, or the UTF-8 payload of a `=?base64?...?=` sentinel. nil when the sentinel's
-- payload is not canonical Base64 or not UTF-8 (the specification has servers reject those).
function _M.decode_mcp_name(value)
  if type(value) ~= "string" then
    return nil
  end
  local first_byte, last_byte = byte(value, 1), byte(value, -1)
  if first_byte == 32 or first_byte == 9 or last_byte == 32 or last_byte == 9 then
    value = match(value, "^[ \t]*(.-)[ \t]*$")
    first_byte = byte(value, 1)
  end
  if first_byte ~= 61 then -- '=': not a sentinel, the common case
    return value
  end
  local np, ns = #BASE64_SENTINEL_PREFIX, #BASE64_SENTINEL_SUFFIX
  if #value < np + ns or value:sub(1, np) ~= BASE64_SENTINEL_PREFIX
     or value:sub(-ns) ~= BASE64_SENTINEL_SUFFIX then
    return value
  end
  local decoded = base64_decode(value:sub(np + 1, #value - ns))
  if not decoded or not valid_utf8(decoded) then
    return nil
  end
  return decoded
end

--- Meters a request from its Streamable HTTP headers alone, without reading the body: only a
-- 2026-07-28+ request (MCP-Protocol-Version names a modern revision) that carries Mcp-Method and,
-- for tools/call, a decodable Mcp-Name. Servers of that revision must refuse a request whose
-- headers disagree with its body before running anything (HTTP 400, -32020), so the headers name
-- what will run. Returns a parsed request like parse() (one call whose id is learnt from the
-- answer), or nil when the body must be decoded (older clients, or headers that are missing or
-- undecodable: the body path then answers the way the specification requires).
-- h = { method = <Mcp-Method>, name = <Mcp-Name>, protocol_version = <MCP-Protocol-Version> }
function _M.from_headers(h)
  local method = h.method
  if type(method) ~= "string" or method == "" or not _M.is_modern_version(h.protocol_version) then
    return nil
  end
  if method ~= TOOLS_CALL then
    return { from_headers = true, batch = false, message_count = 1, calls = {}, ids = {} }
  end
  local name = _M.decode_mcp_name(h.name)
  if not name or name == "" or #name > MAX_NAME_LENGTH then
    return nil
  end
  return {
    from_headers = true,
    batch = false,
    message_count = 1,
    -- the id is not known without the body: the answer's id stands for it (outcome.ANY_ID)
    calls = { { index = 1, id = nil, name = name } },
    ids = {},
  }
end

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

--- The header/body disagreement of one request, or nil. hints = { method, name, protocol_version }.
-- Returns { header = <header value or "(missing)">, body = <what the body says> }.
function _M.header_mismatch(msg, hints)
  local method = msg.method
  local params = type(msg.params) == "table" and msg.params or nil
  local meta = params and type(params._meta) == "table" and params._meta or nil
  local claimed = meta and meta[PROTOCOL_VERSION_META_KEY]
  local version = hints.protocol_version
  if type(version) == "string" and type(claimed) == "string" and version ~= claimed then
    return { header = version, body = "the body envelope names protocol version " .. claimed
                                      .. " but the MCP-Protocol-Version header names " .. version }
  end
  if hints.method ~= nil and hints.method ~= method then
    return { header = hints.method, body = "the body names method " .. method
                                           .. " but the Mcp-Method header names " .. hints.method }
  end
  local modern = _M.is_modern_version(version)
  if modern and hints.method == nil and msg.id ~= nil then
    return { header = "(missing)", body = "the body names method " .. method
                                          .. " but the required Mcp-Method header is absent" }
  end
  if method ~= TOOLS_CALL then
    return nil
  end
  local body_name = params and type(params.name) == "string" and params.name or nil
  if hints.name == nil then
    if modern and body_name and msg.id ~= nil then
      return { header = "(missing)", body = 'the body carries params.name="' .. body_name
                                            .. '" but the required Mcp-Name header is absent' }
    end
    return nil
  end
  local decoded = _M.decode_mcp_name(hints.name)
  if decoded == nil then
    return { header = hints.name, body = "the Mcp-Name header carries an invalid Base64 sentinel value" }
  end
  if body_name and decoded ~= body_name then
    return { header = hints.name, body = 'the body carries params.name="' .. body_name
                                         .. '" but the Mcp-Name header names "' .. decoded .. '"' }
  end
  return nil
end

--- Parses a request body. `hints` holds the optional Streamable HTTP headers
-- { method = <Mcp-Method>, name = <Mcp-Name>, protocol_version = <MCP-Protocol-Version> }.
-- Returns parsed, or nil, code, message[, data, id] for a body the upstream must not see.
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
  -- request id key -> whether a tools/call carries it (a batch's duplicates are refused below)
  local seen = {}
  for i = 1, #messages do
    local msg = messages[i]
    local is_call = type(msg) == "table" and msg.method == TOOLS_CALL
    if is_call and type(msg.id) == "string" and #msg.id > MAX_ID_LENGTH then
      -- the MCP server runs it (a string id of any length is valid), but its answer could not be
      -- matched to it: refused rather than let through unenforced and unbilled
      return nil, CODES.INVALID_REQUEST, "Invalid Request: a tools/call id longer than "
                                         .. MAX_ID_LENGTH .. " bytes cannot be metered"
    end
    if type(msg) == "table" and type(msg.method) == "string" then
      local id = describe_id(msg.id)
      if id then
        local prior = seen[id.key]
        if prior ~= nil and (prior or is_call) then
          -- two answers with one id: which is the tool's cannot be told, so another request's
          -- error could mark a call that ran as failed (and unbilled)
          return nil, CODES.INVALID_REQUEST, "Invalid Request: a batch reuses the id " .. id.text
                                             .. " of a tools/call; ids must be unique to meter the call"
        end
        seen[id.key] = is_call or prior or false
        ids[#ids + 1] = id
      end
    end
    local call = tool_call_of(msg, i)
    if call then
      calls[#calls + 1] = call
    end
  end

  -- the headers mirror a single request; a gateway that routed or billed on them while the server
  -- runs the body could be fooled, so they must agree with it. The checks and the answer are the
  -- MCP TypeScript SDK's (inboundClassification.ts: classifyRequestBody and
  -- validateStandardRequestHeaders): HTTP 400, -32020, the request's id echoed.
  local msg = messages[1]
  if not batch and hints and type(msg) == "table" and type(msg.method) == "string" then
    local mismatch = _M.header_mismatch(msg, hints)
    if mismatch then
      return nil, CODES.HEADER_MISMATCH, "Bad Request: the request headers and body disagree: " .. mismatch.body,
             { mismatch = mismatch }, describe_id(msg.id)
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
