-- Usage the upstream MCP server reports for a tools/call: token counts and the quantities of custom
-- usage lines, put on the call's billed span under the same attribute names the Tollgate SDK's spans
-- carry, so Tollgate rates a call metered at Kong exactly like one metered by the SDK
-- (contracts/src/billable-span.ts reads gen_ai.usage.input_tokens / output_tokens and the attributes
-- the plans' usage lines name; collector-processor/src/rating/usage.ts checks their quantities).
--
-- Two ways in, both from the upstream's answer (the gateway itself sees no model usage):
--   result._meta["tollgate/usage"]   an object { "<attribute>": number, ... } in the tool result,
--                                    JSON or SSE; read by the outcome scanner as the body streams
--                                    (outcome.lua), never buffered
--   Tollgate-Usage response header   "<attribute>=<number>, ..." (an RFC 8941 dictionary of numbers),
--                                    for a request with a single tools/call; removed from the answer
--                                    the client gets
--
-- Accepted names: `gen_ai.usage.*` (input_tokens, output_tokens, cache_read.input_tokens, ...) and
-- `tollgate.usage.<name>` (what the SDK's reportUsage({ quantities }) writes). No other attribute can
-- be set this way: an upstream cannot overwrite the customer, the tool or the outcome of a call.
-- Values are forwarded as they are, not judged here: a number as a number (negative, fractional or huge
-- too), text as text, true/false as booleans, an object or array as a marker text. The processor is the
-- one place that decides what a quantity may be, per line of the customer's plan: a bad value rejects
-- that span with `invalid_usage` (`invalid_number` for the two token counts), visible in the OTLP
-- partial-success answer and Tollgate's rejected counts, where a value dropped here would be billed as
-- zero without a trace. `null` is no value (as on a span). Bounded: at most MAX_ENTRIES names per call,
-- names up to MAX_NAME bytes, text values up to MAX_TEXT bytes; what is left out is counted in the
-- span attribute tollgate.kong.usage_dropped.

local find = string.find
local match = string.match
local gmatch = string.gmatch
local tonumber = tonumber
local type = type
local pairs = pairs

local MAX_ENTRIES = 32
-- `tollgate.usage.` + a usage line's name (48) fits; so does every gen_ai.usage.* name in use
local MAX_NAME = 96
local MAX_TEXT = 64
local MAX_HEADER = 4096
local HUGE = math.huge

local _M = {
  META_KEY = "tollgate/usage",
  HEADER = "Tollgate-Usage",
  MAX_ENTRIES = MAX_ENTRIES,
  MAX_NAME = MAX_NAME,
  MAX_TEXT = MAX_TEXT,
  MAX_HEADER = MAX_HEADER,
  -- the text forwarded for a value that is not a number, text or boolean, or text too long to forward
  OBJECT = "(object)",
  ARRAY = "(array)",
  TOO_LONG = "(text over 64 bytes)",
  TOO_LONG_NUMBER = "(number over 64 bytes)",
  DROPPED_KEY = "tollgate.kong.usage_dropped",
}

-- names already judged (a tool reports the same few names call after call): no pattern match per
-- call. Bounded: emptied when it reaches KNOWN_MAX names.
local KNOWN_MAX = 1024
local known, known_n = {}, 0

--- true for an attribute name the upstream may report: gen_ai.usage.* or tollgate.usage.*
function _M.accepts(name)
  local k = known[name]
  if k ~= nil then
    return k
  end
  if type(name) ~= "string" or #name > MAX_NAME then
    return false
  end
  local ok = (find(name, "^gen_ai%.usage%.") or find(name, "^tollgate%.usage%."))
             and find(name, "^[a-z][a-z0-9_.]*[a-z0-9_]$") ~= nil or false
  if known_n >= KNOWN_MAX then
    known, known_n = {}, 0
  end
  known[name] = ok
  known_n = known_n + 1
  return ok
end

--- The value forwarded for a JSON number's text: the number when it is a finite double, else the
-- text itself (1e999 overflows a double: the processor then rejects the text as not a number).
function _M.number(text)
  local n = tonumber(text)
  if n and n == n and n ~= HUGE and n ~= -HUGE then
    return n
  end
  return text
end

--- A new, empty report.
function _M.new()
  return { values = {}, n = 0, dropped = 0 }
end

--- Adds one name/value (value nil: JSON null, nothing reported). Returns the report.
function _M.add(report, name, value)
  if value == nil then
    return report
  end
  if not _M.accepts(name) then
    report.dropped = report.dropped + 1
    return report
  end
  local values = report.values
  if values[name] == nil then
    if report.n >= MAX_ENTRIES then
      report.dropped = report.dropped + 1
      return report
    end
    report.n = report.n + 1
  end
  values[name] = value -- a repeated name: the last one counts, as JSON.parse does
  return report
end

--- Parses a Tollgate-Usage header value: "gen_ai.usage.input_tokens=120, tollgate.usage.rows=5".
-- Each member is name=value; the value is a number, or forwarded as its text (a quoted string
-- without its quotes) so the processor judges it. Returns a report, or nil for no header.
function _M.parse_header(text)
  if type(text) == "table" then
    text = text[1] -- a repeated header: the first one
  end
  if type(text) ~= "string" then
    return nil
  end
  local report = _M.new()
  if #text > MAX_HEADER then
    report.dropped = 1
    return report
  end
  for member in gmatch(text, "[^,]+") do
    local name, value = match(member, "^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if not name then
      if find(member, "%S") then
        report.dropped = report.dropped + 1
      end
    else
      local v
      local quoted = match(value, '^"(.*)"$')
      if quoted then
        v = quoted
      elseif value == "?1" then
        v = true -- RFC 8941 booleans: not a quantity, forwarded for the processor to refuse
      elseif value == "?0" then
        v = false
      else
        v = _M.number(value)
      end
      if type(v) == "string" and #v > MAX_TEXT then
        v = _M.TOO_LONG
      end
      _M.add(report, name, v)
    end
  end
  return report
end

--- The report of one call: its _meta usage, completed by the header's (the _meta value wins for a
-- name both carry). Either may be nil. Returns nil when neither reports anything.
function _M.merge(meta, header)
  if not header then
    return meta
  end
  if not meta then
    return header
  end
  local out = _M.new()
  for name, v in pairs(meta.values) do
    _M.add(out, name, v)
  end
  for name, v in pairs(header.values) do
    if out.values[name] == nil then
      _M.add(out, name, v)
    end
  end
  out.dropped = out.dropped + meta.dropped + header.dropped
  return out
end

return _M
