-- Who is calling and over which MCP transport, from what the PDK exposes about the request.
-- Pure: the PDK lookups arrive as plain values.

local find = string.find

-- contracts/src/identifiers.ts: 1..256 long, no control characters (0x00-0x1F, 0x7F).
-- (TypeScript counts UTF-16 units, we count bytes: a non-ASCII id is refused here a little earlier.)
local MAX_IDENTIFIER_LENGTH = 256

local _M = {
  MAX_IDENTIFIER_LENGTH = MAX_IDENTIFIER_LENGTH,
}

function _M.valid_identifier(v)
  if type(v) ~= "string" or v == "" or #v > MAX_IDENTIFIER_LENGTH or find(v, "[%z\1-\31\127]") then
    return nil
  end
  return v
end

local valid = _M.valid_identifier

--- The paying customer: the consumer's custom_id, else its username (customer_source =
-- "consumer"), or the configured header; else conf.default_customer; else nil.
function _M.customer(conf, consumer, header_value)
  local v
  if conf.customer_source == "header" then
    v = valid(header_value)
  elseif type(consumer) == "table" then
    v = valid(consumer.custom_id) or valid(consumer.username)
  end
  return v or conf.default_customer
end

--- Transport and session. The legacy HTTP+SSE transport (protocol 2024-11-05) posts to a
-- message endpoint with `?sessionId=` and no Mcp-Session-Id header; Streamable HTTP carries the
-- session in Mcp-Session-Id (absent on stateless servers).
function _M.transport(session_header, session_query)
  local session = valid(session_header)
  if session then
    return "streamable_http", session
  end
  session = valid(session_query)
  if session then
    return "sse", session
  end
  return "streamable_http", nil
end

return _M
