-- Kong glue of the tollgate plugin: reads the request through the PDK and dispatches to the pure
-- modules (jsonrpc, identity, enforce, outcome, attributes). Phases:
--   access         parse the JSON-RPC body, enforce kill/throttle from Redis, stash the calls
--   header_filter  start an outcome scanner for the response's framing (JSON or SSE)
--   body_filter    feed it each chunk as it passes; chunks are never held back or modified
--   log            put the MCP attributes on Kong's root span (and one child span per extra
--                  tools/call of a batch), which Kong's opentelemetry plugin then exports

local attributes = require "kong.plugins.tollgate.attributes"
local cache = require "kong.plugins.tollgate.cache"
local enforce = require "kong.plugins.tollgate.enforce"
local identity = require "kong.plugins.tollgate.identity"
local jsonrpc = require "kong.plugins.tollgate.jsonrpc"
local outcome = require "kong.plugins.tollgate.outcome"
local store = require "kong.plugins.tollgate.store"

local kong = kong
local ngx = ngx
local io_open = io.open
local ipairs = ipairs
local pairs = pairs
local pcall = pcall
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring

local SPAN_KIND_SERVER = 2
-- a request another plugin answered after our access phase: never reached the tool
local GATEWAY_EXIT = { action = "gateway_exit", reason = "answered_by_kong" }
local LOG_INTERVAL_MS = 10000
local CODES = jsonrpc.CODES

local MESSAGES = {
  kill = "Tool call refused: tool calls are suspended for this ",
  throttle = "Tool call refused: tool calls are throttled for this ",
  unavailable = "Tool call refused: enforcement is unavailable, retry later",
}

local TollgateHandler = {
  VERSION = "0.1.0",
  -- Above every authentication plugin's access (key-auth 1250 ... hmac-auth 1030), so the
  -- consumer is known; after acl (950) and rate-limiting (910), so requests they refuse never
  -- cost a Redis read; and far above opentelemetry (14): in the log phase Kong runs plugins in
  -- the same priority order, so our attributes are on the root span before opentelemetry's log
  -- handler encodes and queues it (and our access runs before its trace propagation).
  PRIORITY = 905,
}

local function now_ms()
  return ngx.now() * 1000
end

-- per-worker state of each plugin configuration: Redis store, state cache, token buckets.
-- Weak keys: a reconfigured plugin gets a new conf table and the old state is collected.
local workers = setmetatable({}, { __mode = "k" })

local function worker_state(conf)
  local w = workers[conf]
  if not w then
    local st, err = store.new(conf, { now_ms = now_ms, null = ngx.null })
    w = {
      env = {
        now_ms = now_ms,
        ttl_ms = conf.cache_ttl_ms,
        cache = cache.new(conf.cache_max_items, now_ms),
        buckets = cache.new(conf.cache_max_items, now_ms),
        fetch = function(key, fields)
          if not st then
            return nil, err
          end
          return st:hmget(key, fields)
        end,
      },
    }
    workers[conf] = w
  end
  return w
end

-- logs at most one message per kind every LOG_INTERVAL_MS per worker
local last_logged = {}
local function log_limited(kind, level, ...)
  local now = now_ms()
  if (last_logged[kind] or 0) + LOG_INTERVAL_MS <= now then
    last_logged[kind] = now
    kong.log[level](...)
  end
end

local function exit_json(status, body, retry_after)
  local headers = { ["Content-Type"] = "application/json" }
  if retry_after then
    headers["Retry-After"] = tostring(retry_after)
  end
  return kong.response.exit(status, body, headers)
end

-- A body larger than client_body_buffer_size is spilled to a temp file and get_raw_body()
-- returns nil; up to max_body_bytes we read that file (like Kong's aws-lambda plugin does).
local function read_body(conf)
  local max = conf.max_body_bytes
  local declared = tonumber(kong.request.get_header("Content-Length"))
  if declared and declared > max then
    return nil, "request body of " .. declared .. " bytes exceeds max_body_bytes"
  end
  local body, err = kong.request.get_raw_body()
  if not body then
    local path = ngx.req.get_body_file()
    local f = path and io_open(path, "rb")
    if not f then
      return nil, err or "request body unavailable"
    end
    body = f:read(max + 1)
    f:close()
  end
  if body and #body > max then
    return nil, "request body exceeds max_body_bytes"
  end
  return body or ""
end

local function request_info(conf)
  local get_header = kong.request.get_header
  local transport, session = identity.transport(get_header("Mcp-Session-Id"),
                                                kong.request.get_query_arg("sessionId"))
  return {
    customer = identity.customer(conf, kong.client.get_consumer(),
                                 conf.customer_source == "header" and get_header(conf.customer_header) or nil),
    agent = identity.valid_identifier(get_header(conf.agent_header)),
    session_id = session,
    transport = transport,
    protocol_version = identity.valid_identifier(get_header("Mcp-Protocol-Version")),
  }
end

-- Kong's tracing takes the trace context from headers; MCP clients may send it in
-- params._meta instead. Copying it lets the root span continue the client's trace.
local function propagate_meta(conf, parsed)
  local first = parsed.calls[1]
  if conf.propagate_meta_traceparent and first and first.traceparent
     and not kong.request.get_header("traceparent") then
    kong.service.request.set_header("traceparent", first.traceparent)
    if first.tracestate and not kong.request.get_header("tracestate") then
      kong.service.request.set_header("tracestate", first.tracestate)
    end
  end
end

local function refuse(conf, parsed, d)
  local status, message
  if d.action == "kill" then
    status, message = conf.kill_http_status, MESSAGES.kill .. d.scope
  elseif d.action == "throttle" then
    status, message = conf.throttle_http_status, MESSAGES.throttle .. d.scope
  else
    status, message = 503, MESSAGES.unavailable
  end
  local code = (d.action == "kill" and CODES.KILLED) or (d.action == "throttle" and CODES.THROTTLED) or CODES.UNAVAILABLE
  local body = jsonrpc.refusal_body(parsed, code,
                                    message, {
                                      reason = d.reason,
                                      action = d.action,
                                      scope = d.scope,
                                      retryAfterSeconds = d.retry_after,
                                    })
  return exit_json(status, body, d.action ~= "kill" and d.retry_after or nil)
end

function TollgateHandler:access(conf)
  if kong.request.get_method() ~= "POST" then
    return -- GET (server stream) and DELETE (session end) carry no tools/call
  end

  local body, err = read_body(conf)
  if not body then
    return exit_json(413, jsonrpc.error_response(nil, CODES.TOO_LARGE,
                                                 "Request too large to meter: " .. err))
  end

  local get_header = kong.request.get_header
  local parsed, code, message = jsonrpc.parse(body, {
    method = get_header("Mcp-Method"),
    name = get_header("Mcp-Name"),
  })
  if not parsed then
    return exit_json(400, jsonrpc.error_response(nil, code, message))
  end
  if #parsed.calls == 0 then
    return -- initialize, tools/list, notifications...: not metered
  end

  local req = request_info(conf)
  local ctx = { parsed = parsed, req = req }
  kong.ctx.plugin.tollgate = ctx
  propagate_meta(conf, parsed)

  if not req.customer then
    req.enforcement = "no_customer"
    return
  end

  local tools = {}
  for i, call in ipairs(parsed.calls) do
    tools[i] = call.name
  end
  local d = enforce.check(worker_state(conf).env, conf, {
    customer = req.customer,
    agent = req.agent,
    session = req.session_id,
    tools = tools,
  }, #parsed.calls)
  req.enforcement = d.enforcement
  if d.error then
    log_limited("redis", "err", "tollgate: enforcement state unavailable (",
                conf.fault_tolerant and "calls pass unenforced" or "calls refused", "): ", d.error)
  end
  if d.action ~= "allow" then
    ctx.refused = d
    return refuse(conf, parsed, d)
  end
end

function TollgateHandler:header_filter(conf)
  local ctx = kong.ctx.plugin.tollgate
  if not ctx or ctx.refused then
    return
  end
  ctx.http_status = kong.response.get_status()
  -- "exit": a plugin after us short-circuited the request, so the tool never ran
  ctx.source = kong.response.get_source()
  if ctx.source == "exit" then
    return
  end
  local encoding = kong.response.get_header("Content-Encoding")
  if encoding and encoding ~= "identity" then
    return -- compressed: the outcome stays unknown, the HTTP status still counts
  end
  local ids = {}
  for i, call in ipairs(ctx.parsed.calls) do
    ids[i] = call.id.key
  end
  ctx.scanner = outcome.new(kong.response.get_header("Content-Type"), ids)
end

function TollgateHandler:body_filter(conf)
  local ctx = kong.ctx.plugin.tollgate
  local scanner = ctx and ctx.scanner
  if not scanner then
    return
  end
  -- observation only: ngx.arg[1] is read, never assigned, so the chunk flows on unchanged
  local ok, err = pcall(scanner.feed, scanner, ngx.arg[1])
  if ok and ngx.arg[2] then
    ok, err = pcall(scanner.finish, scanner)
  end
  if not ok then
    ctx.scanner = nil -- a scanner bug must never break the response
    log_limited("scanner", "err", "tollgate: response scanner failed: ", err)
  end
end

local function set_all(span, attrs)
  for k, v in pairs(attrs) do
    span:set_attribute(k, v)
  end
end

-- Kong's root span (`kong`, kind SERVER) is the first of ngx.ctx.KONG_SPANS. Not
-- kong.tracing.active_span(): by the log phase Kong has finished the root span, which resets
-- the active span to its parent (nil).
local function root_span()
  local spans = ngx.ctx.KONG_SPANS
  return spans and spans[1]
end

function TollgateHandler:log(conf)
  local ctx = kong.ctx.plugin.tollgate
  if not ctx then
    return
  end
  local root = root_span()
  if not root then
    log_limited("no_tracing", "warn", "tollgate: Kong tracing is off (tracing_instrumentations); ",
                "tools/call spans are not exported and these calls are not billed")
    return
  end
  if root.should_sample == false then
    log_limited("sampled_out", "warn", "tollgate: the root span is sampled out, this tools/call is ",
                "not billed: set tracing_sampling_rate = 1 and the opentelemetry sampling_rate to 1")
  end

  if ctx.refused then
    set_all(root, attributes.for_refusal(ctx.req, ctx.refused))
    return
  end
  if ctx.source == "exit" then
    set_all(root, attributes.for_refusal(ctx.req, GATEWAY_EXIT))
    return
  end

  local scanner = ctx.scanner
  local result = {
    http_status = ctx.http_status or kong.response.get_status(),
    null_error = scanner and scanner.null_error,
  }
  local first = true
  for _, call in ipairs(ctx.parsed.calls) do
    if call.name then
      result.answer = scanner and scanner:result(call.id.key)
      local attrs = attributes.for_call(call, ctx.req, result)
      if first then
        set_all(root, attrs)
        first = false
      else
        -- every further call of a batch is billed through its own span, a child of the root
        local span = kong.tracing.start_span("tools/call " .. call.name, {
          span_kind = SPAN_KIND_SERVER,
          parent = root,
          start_time_ns = root.start_time_ns,
        })
        set_all(span, attrs)
        span:finish(root.end_time_ns)
      end
    end
  end
end

return TollgateHandler
