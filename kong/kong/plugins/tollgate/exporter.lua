-- The billing exporter: sends the spans of metered tools/calls that Kong's own OpenTelemetry
-- pipeline will not export — Kong's tracing is off (`tracing_instrumentations = off`, Kong's
-- default: the global tracer is the noop tracer, so the opentelemetry plugin's log handler
-- processes no span at all) — straight to Tollgate's collector-processor as OTLP/JSON. Only those
-- spans: nothing of the rest of the request's trace. Per worker: a bounded queue flushed from an
-- ngx.timer (cosockets are not available in the log phase), batches of up to BATCH_MAX spans,
-- retried with back-off while the endpoint fails; what is queued is lost if the worker exits, as
-- with Kong's own plugin queues.
--
-- encode() is pure; new() takes its I/O (post, timer_at, log) injected, so the queue is tested
-- without nginx and the nginx integration runs it with real cosockets (http.post below).

local cjson = require("cjson.safe").new()

local format = string.format
local match = string.match
local concat = table.concat
local ipairs = ipairs
local pairs = pairs
local sort = table.sort
local type = type
local tonumber = tonumber
local tostring = tostring
local math_min = math.min
local math_floor = math.floor

local BATCH_MAX = 200
local QUEUE_MAX = 10000
local RETRY_MIN_S = 0.5
local RETRY_MAX_S = 30
local SCOPE_NAME = "tollgate-kong"

local _M = {
  BATCH_MAX = BATCH_MAX,
  QUEUE_MAX = QUEUE_MAX,
  SCOPE_NAME = SCOPE_NAME,
}

-- A number as JSON text that reads back as exactly the same double (Kong's own export is protobuf, exact
-- doubles; cjson's encode_number_precision stops at 14 digits in Debian's lua-cjson and 16 in OpenResty's,
-- which Kong sets on the global cjson only, constants.lua / globalpatches.lua, and neither is exact for
-- every double). Whole numbers below 1e21 are written as integers ("%.0f": the double's exact value),
-- others with the fewest of 15, 16, 17 significant digits that read back exactly (17 always does).
-- Non-finite values, which no usage value carries (usage.lua forwards them as text), are written as the
-- proto3 JSON strings "NaN" / "Infinity" / "-Infinity".
local function number_text(v)
  if v ~= v then
    return '"NaN"'
  elseif v == math.huge then
    return '"Infinity"'
  elseif v == -math.huge then
    return '"-Infinity"'
  end
  if v == math_floor(v) and v > -1e21 and v < 1e21 then
    return format("%.0f", v)
  end
  for digits = 15, 16 do
    local text = format("%." .. digits .. "g", v)
    if tonumber(text) == v then
      return text
    end
  end
  return format("%.17g", v)
end
_M.number_text = number_text

-- The OTLP/JSON attribute list of a table: typed values, keys sorted; strings escaped by cjson, numbers
-- as exact text (number_text), so the list is written as text rather than through cjson.encode.
local function attribute_list_json(attrs)
  local keys = {}
  for k in pairs(attrs) do
    keys[#keys + 1] = k
  end
  sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = attrs[k]
    local t = type(v)
    local value
    if t == "string" then
      value = '{"stringValue":' .. cjson.encode(v) .. "}"
    elseif t == "number" then
      value = '{"doubleValue":' .. number_text(v) .. "}" -- numbers leave Kong as doubles: the same here
    elseif t == "boolean" then
      value = v and '{"boolValue":true}' or '{"boolValue":false}'
    end
    if value then
      out[#out + 1] = '{"key":' .. cjson.encode(k) .. ',"value":' .. value .. "}"
    end
  end
  return "[" .. concat(out, ",") .. "]"
end

--- One span as OTLP/JSON text (proto3 JSON mapping). span = { trace_id, span_id, parent_id (hex),
-- name, kind, start_time_ns, end_time_ns, attributes }.
function _M.encode_span(span)
  local head = cjson.encode({
    traceId = span.trace_id,
    spanId = span.span_id,
    parentSpanId = span.parent_id or "",
    name = span.name,
    kind = span.kind,
    startTimeUnixNano = format("%d", span.start_time_ns),
    endTimeUnixNano = format("%d", span.end_time_ns),
  })
  -- head is a non-empty object: its closing brace makes room for the attributes
  return head:sub(1, -2) .. ',"attributes":' .. attribute_list_json(span.attributes or {}) .. "}"
end

--- ExportTraceServiceRequest (OTLP/JSON text) of encoded spans, with the resource Kong's own exporter
-- sends (service.name = kong, service.instance.id = node id, service.version) and our scope.
function _M.encode(encoded_spans, resource, scope_version)
  return '{"resourceSpans":[{"resource":{"attributes":' .. attribute_list_json(resource)
    .. '},"scopeSpans":[{"scope":' .. cjson.encode({ name = SCOPE_NAME, version = scope_version })
    .. ',"spans":[' .. concat(encoded_spans, ",") .. "]}]}]}"
end

--- new(opts): opts = { endpoint, authorization, timeout_ms, resource, version,
--                      post(endpoint, headers, body, timeout_ms) -> status | nil, err,
--                      timer_at(delay_s, fn) -> ok, err, log(level, ...) }
function _M.new(opts)
  local self = {
    queue = {},
    first = 1,
    last = 0,
    dropped = 0,
    sent = 0,
    scheduled = false,
    retry_s = RETRY_MIN_S,
  }

  local function size()
    return self.last - self.first + 1
  end

  local flush

  local function schedule(delay_s)
    if self.scheduled then
      return
    end
    local ok, err = opts.timer_at(delay_s, flush)
    if ok then
      self.scheduled = true
    else
      opts.log("err", "tollgate: billing exporter cannot schedule a flush: ", err)
    end
  end

  flush = function(premature)
    self.scheduled = false
    if premature then
      return -- worker exiting: nginx gives no time for a network round trip here
    end
    while size() > 0 do
      local n = math_min(size(), BATCH_MAX)
      local batch = {}
      for i = 1, n do
        batch[i] = self.queue[self.first + i - 1]
      end
      local headers = { ["Content-Type"] = "application/json" }
      if opts.authorization then
        headers["Authorization"] = opts.authorization
      end
      local status, err = opts.post(opts.endpoint, headers, _M.encode(batch, opts.resource, opts.version),
                                    opts.timeout_ms)
      if status and status >= 200 and status < 300 then
        self.sent = self.sent + n
      elseif status and status >= 400 and status < 500 and status ~= 408 and status ~= 429 then
        -- refused for good (a wrong ingest key, an undecodable body): retrying cannot help
        self.dropped = self.dropped + n
        opts.log("err", "tollgate: billing export refused with HTTP ", status, ", ", n, " spans dropped")
      else
        opts.log("err", "tollgate: billing export failed (", err or ("HTTP " .. tostring(status)),
                 "), retrying in ", self.retry_s, " s")
        schedule(self.retry_s)
        self.retry_s = math_min(self.retry_s * 2, RETRY_MAX_S)
        return
      end
      for i = self.first, self.first + n - 1 do
        self.queue[i] = nil
      end
      self.first = self.first + n
      self.retry_s = RETRY_MIN_S
    end
  end

  --- Queues one encoded span; false when the queue is full (the span is dropped and counted).
  function self.push(encoded_span)
    if size() >= QUEUE_MAX then
      self.dropped = self.dropped + 1
      return false
    end
    self.last = self.last + 1
    self.queue[self.last] = encoded_span
    schedule(0)
    return true
  end

  self.size = size
  self.flush = flush
  return self
end

--- A minimal HTTP/1.1 POST over an ngx cosocket (http and https), returning status, nil, body (or
-- nil, err). Kong ships
-- lua-resty-http, but this keeps the plugin free of a dependency nginx test rigs do not have.
function _M.http_post(url, headers, body, timeout_ms)
  local scheme, host, port, path = match(url, "^(https?)://([^/:]+):?(%d*)(/?[^#]*)$")
  if not scheme then
    return nil, "invalid endpoint " .. tostring(url)
  end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if path == "" then
    path = "/"
  end
  local sock = ngx.socket.tcp()
  sock:settimeout(timeout_ms)
  local ok, err = sock:connect(host, port)
  if not ok then
    return nil, "connect: " .. tostring(err)
  end
  if scheme == "https" then
    ok, err = sock:sslhandshake(nil, host, true)
    if not ok then
      sock:close()
      return nil, "tls: " .. tostring(err)
    end
  end
  local lines = { "POST " .. path .. " HTTP/1.1", "Host: " .. host, "Content-Length: " .. #body,
                  "Connection: keep-alive" }
  for k, v in pairs(headers) do
    lines[#lines + 1] = k .. ": " .. v
  end
  ok, err = sock:send(concat(lines, "\r\n") .. "\r\n\r\n" .. body)
  if not ok then
    sock:close()
    return nil, "send: " .. tostring(err)
  end
  local status_line
  status_line, err = sock:receive("*l")
  local status = status_line and tonumber(match(status_line, "^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    sock:close()
    return nil, "receive: " .. tostring(err or status_line)
  end
  local length, keep, chunked = nil, true, false
  while true do
    local line = sock:receive("*l")
    if not line then
      sock:close()
      return status
    end
    if line == "" then
      break
    end
    local k, v = match(line, "^([^:]+):%s*(.-)%s*$")
    k = k and k:lower()
    if k == "content-length" then
      length = tonumber(v)
    elseif k == "connection" and v:lower() == "close" then
      keep = false
    elseif k == "transfer-encoding" and v:lower():find("chunked", 1, true) then
      chunked = true
    end
  end
  -- the answer's body: directives for SDKs in an export's (Kong reads its state from Redis), the
  -- grants of a POST /v1/leases
  local body_text
  if chunked then
    local parts = {}
    while true do
      local size_line = sock:receive("*l")
      local size = size_line and tonumber(match(size_line, "^%x+"), 16)
      if not size then
        sock:close()
        return nil, "receive: bad chunk"
      end
      if size == 0 then
        sock:receive("*l")
        break
      end
      parts[#parts + 1] = sock:receive(size)
      sock:receive("*l")
    end
    body_text = concat(parts)
  elseif length then
    body_text = length > 0 and sock:receive(length) or ""
  else
    keep = false
    body_text = sock:receive("*a")
  end
  if keep then
    sock:setkeepalive(60000, 4)
  else
    sock:close()
  end
  return status, nil, body_text
end

return _M
