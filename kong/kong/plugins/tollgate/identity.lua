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
local function form_decode(s)
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- The first value of query parameter `name` in a raw query string (`kong.request.get_raw_query()`), read
-- as the MCP SDK's legacy HTTP+SSE server reads its sessionId (`url.searchParams.get`, WHATWG
-- application/x-www-form-urlencoded): '&'-separated, '+' a space, percent-decoded, the name compared
-- exactly, "" for a name without '='; nil when absent. Not kong.request.get_query_arg: it sees at most
-- lua_max_uri_args (100) arguments and nothing after them, while the server finds the name anywhere.
function _M.query_param(raw, name)
  if type(raw) ~= "string" or raw == "" then
    return nil
  end
  for pair in raw:gmatch("[^&]+") do
    local eq = find(pair, "=", 1, true)
    if form_decode(eq and pair:sub(1, eq - 1) or pair) == name then
      return eq and form_decode(pair:sub(eq + 1)) or ""
    end
  end
  return nil
end

--- A header's value as the server behind reads it: optional whitespace (spaces, tabs) around it removed,
-- as Node's HTTP parser and the MCP SDK (stripHttpOws) do; nginx keeps a leading tab (HTTP/1.1) or any
-- whitespace (HTTP/2). A header sent several times: its first value (such requests are refused earlier
-- for the headers that decide money).
function _M.header_value(v)
  if type(v) == "table" then
    v = v[1]
  end
  if type(v) ~= "string" then
    return nil
  end
  return (v:match("^[ \t]*(.-)[ \t]*$"))
end

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
