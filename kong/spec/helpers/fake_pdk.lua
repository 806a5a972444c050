-- A faithful fake of exactly the Kong PDK surface the tollgate handler uses, with Kong's
-- signatures, return conventions, argument checks and phase restrictions (sources read:
-- kong/pdk/request.lua, kong/pdk/response.lua, kong/pdk/client.lua, kong/pdk/service/request.lua,
-- kong/pdk/ctx.lua, kong/pdk/log.lua, kong/pdk/tracing.lua, kong/pdk/private/phases.lua):
--
--   kong.request.get_method()            -> string                                    (rewrite..log)
--   kong.request.get_header(name)        -> string|nil, first value, case-insensitive,
--                                           '_' == '-'; error if name is not a string (rewrite..log)
--   kong.request.get_headers(max)        -> table keyed by lowercased names as sent ('_' kept, a
--                                           miss retried as '-'), arrays for repeats; "truncated"
--                                           past max (1..1000, default 100)               (rewrite..log)
--   kong.request.get_query_arg(name)     -> string|true|nil                           (rewrite..log)
--   kong.request.get_raw_query()         -> the query string as sent, "" when none    (rewrite..log)
--   kong.request.get_raw_body()          -> body | nil, err when spilled to a file    (rewrite, access)
--   kong.client.get_consumer()           -> consumer entity | nil                     (access..log)
--   kong.response.exit(status, body, headers)  status 100..599, body nil|string|table,
--                                           headers nil|table; error once headers are sent
--                                                                                    (rewrite, access, header_filter)
--   kong.response.get_status()           -> number                                    (header_filter..log)
--   kong.response.get_header(name)       -> string|nil                                (header_filter..log)
--   kong.response.get_source()           -> "exit" | "service" | "error"              (header_filter..log)
--   kong.response.clear_header(name)     error if name is not a string or the headers are sent
--                                                                                    (rewrite, access, header_filter)
--   kong.service.request.set_header(name, value)                                     (rewrite, access, balancer)
--   kong.service.request.clear_header(name)  error if name is not a string            (rewrite, access)
--   kong.ctx.plugin                      -> per-request, per-plugin table
--   kong.client.get_credential()         -> credential entity | nil                   (access..log)
--   kong.tracing.start_span / process_span, spans in ngx.ctx.KONG_SPANS (spec/helpers/kong_tracing.lua:
--                                           the global tracer is noop while tracing is off)
--   kong.log.err/warn/notice/info/debug(...)
-- plus the ngx API the handler touches: ngx.ctx, ngx.arg (body_filter), ngx.now(), ngx.update_time(),
-- ngx.null, ngx.req.get_body_file(), ngx.req.start_time(), ngx.timer.at and ngx.timer.every (recorded,
-- run by the spec), ngx.sleep (moves the clock), ngx.shared.tollgate_leases (spec/helpers/fake_shdict.lua),
-- kong.node.get_id() (kong/pdk/node.lua), kong.tools.rand (kong/tools/rand.lua: spec/helpers/kong_rand.lua), and ngx.var's upstream variables (nginx's
-- src/http/ngx_http_upstream.c: $upstream_bytes_sent / $upstream_bytes_received / $upstream_status, one
-- value per try joined by ", ", nil when no upstream was contacted), given per request by the spec.
-- A PDK call outside its phases raises like Kong's check_phase does. Each call of
-- kong.request.get_raw_body is counted (result.body_reads), so a spec can prove a body was never read.
-- Kong's opentelemetry plugin runs after the handler in access and log (spec/helpers/kong_otel.lua),
-- unless the request disables it; what it would export is returned as result.exported.

local kong_otel = require "spec.helpers.kong_otel"
local kong_tracing = require "spec.helpers.kong_tracing"
local pdk_args = require "spec.helpers.pdk_args"

local _M = {}

local PHASES = {
  request = { rewrite = true, access = true, header_filter = true, body_filter = true, log = true },
  before_content = { rewrite = true, access = true },
  after_access = { access = true, header_filter = true, body_filter = true, log = true },
  exit = { rewrite = true, access = true, header_filter = true },
  response = { header_filter = true, body_filter = true, log = true },
  service_request = { rewrite = true, access = true, balancer = true },
}

local NULL = require("cjson").null -- ngx.null and cjson.null are the same NULL lightuserdata

local current -- the request being run
_M.NODE_ID = "5b7e0e7a-6c1f-4d1e-9a5e-0c3b2a1f0e9d"
local clock_ms = 1700000000000

local function check_phase(allowed, fn)
  local phase = current and current.phase
  if not allowed[phase] then
    error(fn .. " is disabled in the context of " .. tostring(phase), 3)
  end
end

local function normalize(name)
  return (name:lower():gsub("_", "-"))
end

local function header_of(headers, name, fn)
  if type(name) ~= "string" then
    error("header name must be a string", 3)
  end
  local v = headers[normalize(name)]
  if type(v) == "table" then
    return v[1]
  end
  return v
end

local function lower_keys(t)
  local out = {}
  for k, v in pairs(t or {}) do
    out[normalize(k)] = v
  end
  return out
end

-- the request's headers as ngx.req.get_headers keys them: lowercased, '_' kept
local function raw_keys(t)
  local out = {}
  for k, v in pairs(t or {}) do
    out[k:lower()] = v
  end
  return out
end

local tracer, instrumentation, tracing_context = kong_tracing.new({
  get_ctx = function() return current.ngx_ctx end,
  time_ns = function() return clock_ms * 1e6 end,
  config = function() return current.node_config end,
})

local kong = {
  request = {},
  client = {},
  response = {},
  service = { request = {} },
  log = {},
  tracing = tracer,
  -- kong/pdk/node.lua: the node's id (a UUID kept in the prefix), the same in every phase
  node = { get_id = function() return _M.NODE_ID end },
}

kong.ctx = setmetatable({}, {
  __index = function(_, k)
    if k == "plugin" then
      return current.plugin_ctx
    elseif k == "shared" then
      return current.shared_ctx
    end
  end,
})

function kong.request.get_method()
  check_phase(PHASES.request, "kong.request.get_method")
  return current.req.method
end

function kong.request.get_header(name)
  check_phase(PHASES.request, "kong.request.get_header")
  return header_of(current.req_headers, name)
end

-- kong/pdk/request.lua get_headers -> ngx.req.get_headers(max) (lua-nginx-module, raw = false): the
-- keys are the names as sent, lowercased, underscores kept; a header sent more than once is an array of
-- its values; a lookup that misses is retried with the key lowercased and '_' turned into '-' (the
-- table's __index); past max headers, the first max and "truncated". max: 1..1000, 100 by default.
local headers_mt = {
  __index = function(t, k)
    if type(k) ~= "string" then
      return nil
    end
    local n = k:lower():gsub("_", "-")
    return n ~= k and rawget(t, n) or nil
  end,
}

function kong.request.get_headers(max_headers)
  check_phase(PHASES.request, "kong.request.get_headers")
  max_headers = pdk_args.max_headers(max_headers) or 100
  local out, n = setmetatable({}, headers_mt), 0
  for name, v in pairs(current.raw_req_headers) do
    for _, value in ipairs(type(v) == "table" and v or { v }) do
      if n >= max_headers then
        return out, "truncated"
      end
      n = n + 1
      local had = rawget(out, name)
      if had == nil then
        out[name] = value
      elseif type(had) == "table" then
        had[#had + 1] = value
      else
        out[name] = { had, value }
      end
    end
  end
  return out
end

function kong.request.get_query_arg(name)
  check_phase(PHASES.request, "kong.request.get_query_arg")
  if type(name) ~= "string" then
    error("query argument name must be a string", 2)
  end
  local v = (current.req.query or {})[name]
  if type(v) == "table" then
    return v[1]
  end
  return v
end

-- kong/pdk/request.lua get_raw_query: ngx.var.args, "" when none. The spec gives the raw query
-- (req.raw_query), or a table (req.query) written out in pairs() order, percent-encoded.
local function query_string(q)
  local parts = {}
  local enc = function(x)
    return (tostring(x):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
  end
  for k, v in pairs(q or {}) do
    for _, one in ipairs(type(v) == "table" and v or { v }) do
      parts[#parts + 1] = one == true and enc(k) or (enc(k) .. "=" .. enc(one))
    end
  end
  return table.concat(parts, "&")
end

function kong.request.get_raw_query()
  check_phase(PHASES.request, "kong.request.get_raw_query")
  return current.req.raw_query or query_string(current.req.query)
end

function kong.request.get_raw_body()
  check_phase(PHASES.before_content, "kong.request.get_raw_body")
  current.body_reads = current.body_reads + 1
  local req = current.req
  if req.body_file then
    return nil, "request body did not fit into client body buffer, consider raising 'client_body_buffer_size'"
  end
  return req.body or ""
end

function kong.client.get_consumer()
  check_phase(PHASES.after_access, "kong.client.get_consumer")
  return current.req.consumer
end

function kong.client.get_credential()
  check_phase(PHASES.after_access, "kong.client.get_credential")
  return current.req.credential
end

function kong.response.exit(status, body, headers)
  check_phase(PHASES.exit, "kong.response.exit")
  if current.headers_sent then
    error("headers have already been sent", 2)
  end
  if type(status) ~= "number" then
    error("code must be a number", 2)
  elseif status < 100 or status > 599 then
    error("code must be a number between 100 and 599", 2)
  end
  if body ~= nil and type(body) ~= "string" and type(body) ~= "table" then
    error("body must be a nil, string or table", 2)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("headers must be a nil or table", 2)
  end
  current.exit = { status = status, body = body, headers = headers or {} }
  current.exited = true
end

function kong.response.get_status()
  check_phase(PHASES.response, "kong.response.get_status")
  return current.status
end

-- kong/pdk/response.lua get_source: "error" when something failed unexpectedly (ctx.KONG_UNEXPECTED: a
-- plugin's runtime error, kong/init.lua execute_collecting_plugins_iterator; nginx's error page,
-- Kong.handle_error), else "exit" when a plugin short-circuited, "service" when proxied, else "error"
function kong.response.get_source()
  check_phase(PHASES.response, "kong.response.get_source")
  if current.unexpected then
    return "error"
  elseif current.exited then
    return "exit"
  elseif current.proxied then
    return "service"
  end
  return "error"
end

function kong.response.get_header(name)
  check_phase(PHASES.response, "kong.response.get_header")
  return header_of(current.resp_headers, name)
end

-- kong/pdk/response.lua: check_phase(rewrite_access_header); "headers have already been sent" once
-- they are; ngx.header[name] = nil (every value of the header)
function kong.response.clear_header(name)
  check_phase(PHASES.exit, "kong.response.clear_header")
  if current.headers_sent then
    error("headers have already been sent", 2)
  end
  if type(name) ~= "string" then
    error("header name must be a string", 2)
  end
  current.resp_headers[normalize(name)] = nil
end

-- kong/pdk/service/request.lua clear_header -> ngx.req.clear_header(header): every header of that name
-- leaves the request to the Service (recorded as false in upstream_headers); rewrite and access only
function kong.service.request.clear_header(header)
  check_phase(PHASES.before_content, "kong.service.request.clear_header")
  if type(header) ~= "string" then
    error("header must be a string", 2)
  end
  current.upstream_headers[normalize(header)] = false
  -- ngx.req.clear_header removes the headers of that name, any case; one spelled with underscores stays,
  -- and nginx's $http_ variable still finds it (get_header's view)
  current.raw_req_headers[header:lower()] = nil
  current.req_headers[normalize(header)] = nil
  for name, v in pairs(current.raw_req_headers) do
    if normalize(name) == normalize(header) then
      current.req_headers[normalize(header)] = v
    end
  end
end

function kong.service.request.set_header(header, value)
  check_phase(PHASES.service_request, "kong.service.request.set_header")
  if type(header) ~= "string" then
    error("header name must be a string", 2)
  end
  local vt = type(value)
  if vt ~= "string" and vt ~= "number" and vt ~= "boolean" then
    error("invalid header value for \"" .. header .. "\": got " .. vt
          .. ", expected string, number or boolean", 2)
  end
  current.upstream_headers[normalize(header)] = tostring(value)
  -- like ngx.req.set_header, later reads of the request headers see it (it replaces the header of that
  -- name, not one spelled with underscores)
  current.req_headers[normalize(header)] = tostring(value)
  current.raw_req_headers[header:lower()] = tostring(value)
end

for _, level in ipairs({ "err", "warn", "notice", "info", "debug", "crit", "alert" }) do
  kong.log[level] = function(...)
    local parts = { ... }
    for i = 1, select("#", ...) do
      parts[i] = tostring(parts[i])
    end
    current.logs[#current.logs + 1] = { level = level, message = table.concat(parts) }
  end
end

local ngx = {
  null = NULL,
  arg = {},
  req = {},
}
ngx.now = function()
  return clock_ms / 1000
end
ngx.update_time = function() end
ngx.req.get_body_file = function()
  current.body_reads = current.body_reads + 1
  return current.req.body_file
end
ngx.req.start_time = function()
  return current.start_ms / 1000
end
-- ngx.timer.at: recorded; the spec runs them (_M.run_timers) when it wants to
local timers = {}
-- ngx.timer.every: recorded too; the spec runs one tick of each (_M.run_every) or their premature
-- run at worker exit (_M.run_every(true))
local every = {}
ngx.timer = {
  at = function(delay, fn, ...)
    timers[#timers + 1] = { delay = delay, fn = fn, args = { ... } }
    return true
  end,
  every = function(delay, fn, ...)
    every[#every + 1] = { delay = delay, fn = fn, args = { ... } }
    return true
  end,
}
-- ngx.sleep: yields in nginx; here it moves the clock on
ngx.sleep = function(s)
  clock_ms = clock_ms + s * 1000
end
-- ngx.shared.DICT: lua_shared_dict zones declared by the node (spec/helpers/fake_shdict.lua);
-- an undeclared name is nil, as in nginx
local fake_shdict = require "spec.helpers.fake_shdict"
ngx.shared = {
  tollgate_leases = fake_shdict.new(function() return clock_ms end),
}

function _M.reset_shared()
  ngx.shared.tollgate_leases = fake_shdict.new(function() return clock_ms end)
end

function _M.run_every(premature)
  for _, t in ipairs(every) do
    t.fn(premature or false, unpack(t.args))
  end
  return #every
end

function _M.run_timers()
  local due = timers
  timers = {}
  for _, t in ipairs(due) do
    t.fn(false, unpack(t.args))
  end
  return #due
end
setmetatable(ngx, {
  __index = function(_, k)
    if k == "ctx" then
      return current.ngx_ctx
    elseif k == "var" then
      return current.vars
    end
  end,
})

--- Installs the globals `kong` and `ngx` (once, before requiring the handler, which keeps
-- module-level locals of them like every Kong plugin).
function _M.install()
  _G.kong = kong
  _G.ngx = ngx
  -- what the handler requires to tell whether Kong's opentelemetry plugin ran (Kong >= 3.8)
  package.loaded["kong.observability.tracing.tracing_context"] = tracing_context
  -- kong/tools/rand.lua, Kong's source of trace and span ids (spec/helpers/kong_rand.lua)
  package.loaded["kong.tools.rand"] = require "spec.helpers.kong_rand"
  return _M
end

function _M.set_clock_ms(ms)
  clock_ms = ms
end

function _M.advance_ms(ms)
  clock_ms = clock_ms + ms
end

function _M.clock_ms()
  return clock_ms
end

--- Runs one request through the handler's phases like Kong's runloop:
-- access; if the plugin exited, header_filter/body_filter/log see the exit response, else the
-- upstream's status, headers and body chunks; the root span is created before access and
-- finished before log, as Kong's tracing instrumentation does.
-- req: { method, headers, query, body, body_file, consumer, credential,
--        tracing = false (tracing_instrumentations = off), sampling_rate (tracing_sampling_rate),
--        otel = false (no opentelemetry plugin) | { sampling_rate = n } (its config) }
-- upstream: { status, headers, chunks = { ... }, vars = { upstream_bytes_sent = "312", ... } (ngx.var),
--            exit_by_later_plugin = true (a later plugin's kong.response.exit with status/chunks[1]),
--            later_plugin_error = true (a later plugin's runtime error in access: Kong's 500),
--            client_closed = true (the client hung up before the answer: nginx ends the request with
--            499 without running the header and body filters, ngx_http_terminate_request) }
function _M.run(handler, conf, req, upstream)
  upstream = upstream or { status = 200, headers = { ["Content-Type"] = "application/json" }, chunks = { "{}" } }
  current = {
    req = req,
    req_headers = lower_keys(req.headers),
    raw_req_headers = raw_keys(req.headers),
    upstream_headers = {},
    plugin_ctx = {},
    shared_ctx = {},
    ngx_ctx = {},
    logs = {},
    downstream = {},
    body_reads = 0,
    start_ms = clock_ms,
    otel_ctx = {},
    vars = upstream.vars or {},
    node_config = {
      tracing_instrumentations = req.tracing == false and "off" or "request",
      tracing_sampling_rate = req.sampling_rate or 1,
    },
  }
  local r = current
  local otel_conf = req.otel ~= false and (req.otel or {}) or nil
  local otel = otel_conf and kong_otel.new({
    kong = kong,
    get_ctx = function() return r.ngx_ctx end,
    plugin_ctx = function() return r.otel_ctx end,
    tracing_context = tracing_context,
    get_header = function(name) return header_of(r.req_headers, name) end,
    set_header = function(name, value) kong.service.request.set_header(name, value) end,
  })
  do
    r.phase = "rewrite"
    instrumentation.request({
      method = req.method or "POST", scheme = "http", host = "kong.test", uri = req.uri or "/mcp",
      http_version = "1.1", client_ip = "127.0.0.1", request_id = "req-1",
      start_time_ns = clock_ms * 1e6,
    })
    -- another span of the trace, as instrumentation.router() makes with "router" instrumentation
    -- (parent: the active root span, same sampling decision)
    if req.tracing ~= false then
      kong.tracing.start_span("kong.router", { span_kind = 1 }):finish(clock_ms * 1e6 + 1e5)
    end
  end

  r.phase = "access"
  handler:access(conf)
  r.plugin_upstream_headers = {}
  for k, v in pairs(r.upstream_headers) do
    r.plugin_upstream_headers[k] = v
  end
  if upstream.exit_by_later_plugin and not r.exited then
    -- a plugin with a lower priority (running after ours) short-circuits the request
    kong.response.exit(upstream.status, upstream.chunks[1], upstream.headers)
  elseif upstream.later_plugin_error and not r.exited then
    -- a plugin running after ours raises in access: kong/init.lua marks the request KONG_UNEXPECTED and
    -- answers its delayed 500 through kong.response.error (flush_delayed_response), which exits
    r.unexpected = true
    kong.response.exit(500, { message = "An unexpected error occurred" })
  end
  if otel and not r.exited then
    -- kong/init.lua: after an exit the access handlers of later plugins are skipped
    otel.access(otel_conf)
  end
  if r.exited then
    -- (answered by a plugin)
  elseif not r.exited and upstream.error then
    r.proxied = false -- Kong could not get an answer from the service (502/504 from Kong itself)
  else
    r.proxied = not r.exited
  end

  local status, headers, chunks
  if r.exited then
    status, headers = r.exit.status, lower_keys(r.exit.headers)
    local body = r.exit.body
    chunks = { type(body) == "table" and require("cjson").encode(body) or body or "" }
  else
    status, headers, chunks = upstream.status, lower_keys(upstream.headers), upstream.chunks
  end
  r.status = status
  r.resp_headers = headers

  if upstream.client_closed then
    status = 499
    r.status = status
  else
    instrumentation.before_header_filter(status, "/mcp")
    r.phase = "header_filter"
    handler:header_filter(conf)
    r.headers_sent = true

    r.phase = "body_filter"
    for i, chunk in ipairs(chunks) do
      ngx.arg[1], ngx.arg[2] = chunk, false
      handler:body_filter(conf)
      r.downstream[#r.downstream + 1] = ngx.arg[1]
    end
    ngx.arg[1], ngx.arg[2] = "", true
    handler:body_filter(conf)
    r.downstream[#r.downstream + 1] = ngx.arg[1]
  end

  r.phase = "log"
  instrumentation.log_before(clock_ms * 1e6 + 5e6)
  handler:log(conf)
  local exported = otel and otel.log(otel_conf) or {}

  local spans = r.ngx_ctx.KONG_SPANS or {}
  return {
    exit = r.exit,
    status = status,
    downstream_body = table.concat(r.downstream),
    -- the response headers as the client gets them (lower-case names)
    response_headers = r.resp_headers,
    -- the request headers as Kong sends them upstream, and as our plugin left them
    upstream_headers = r.upstream_headers,
    plugin_upstream_headers = r.plugin_upstream_headers,
    exported = exported,
    body_reads = r.body_reads,
    spans = spans,
    root = spans[1],
    logs = r.logs,
    plugin_ctx = r.plugin_ctx,
  }
end

return _M
