-- Kong glue of the tollgate plugin: reads the request through the PDK and dispatches to the pure
-- modules (jsonrpc, identity, session, enforce, outcome, attributes, exporter). Phases:
--   access         meter from the Mcp-Method / Mcp-Name headers of a 2026-07-28 request without
--                  reading its body, else parse the JSON-RPC body; pick the billing session;
--                  enforce kill/throttle from Redis; stash the calls
--   header_filter  start an outcome scanner for the response's framing (JSON or SSE); take the
--                  Tollgate-Usage header the upstream may set (and remove it from the answer)
--   body_filter    feed it each chunk as it passes (it also reads result._meta["tollgate/usage"]);
--                  chunks are never held back or modified
--   log            put the MCP attributes on Kong's root span (and one child span per extra
--                  tools/call of a batch), which Kong's opentelemetry plugin then exports — even
--                  when its trace is sampled out; when nobody will export them (Kong's tracing
--                  off, or no opentelemetry plugin with a traces_endpoint ran on this request),
--                  hand them to the billing exporter instead

local attributes = require "kong.plugins.tollgate.attributes"
local cache = require "kong.plugins.tollgate.cache"
local enforce = require "kong.plugins.tollgate.enforce"
local identity = require "kong.plugins.tollgate.identity"
local jsonrpc = require "kong.plugins.tollgate.jsonrpc"
local leases = require "kong.plugins.tollgate.leases"
local exporter = require "kong.plugins.tollgate.exporter"
local outcome = require "kong.plugins.tollgate.outcome"
local session = require "kong.plugins.tollgate.session"
local store = require "kong.plugins.tollgate.store"
local usage = require "kong.plugins.tollgate.usage"

local cjson_decode = require("cjson.safe").decode

-- Kong >= 3.8: the tracing context of the request (ngx.ctx.TRACING_CONTEXT); its flags are set by
-- Kong's opentelemetry plugin, and only by it (kong/plugins/opentelemetry/traces.lua get_inject_ctx ->
-- tracing_context.set_flags), in its access phase, which runs only when it has a traces_endpoint
local has_tracing_context, tracing_context = pcall(require, "kong.observability.tracing.tracing_context")
if not (has_tracing_context and type(tracing_context) == "table" and type(tracing_context.get_flags) == "function") then
  tracing_context = nil
end

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
local KONG_ROOT_SPAN_NAME = "kong"
-- a request another plugin answered after our access phase: never reached the tool
local GATEWAY_EXIT = { action = "gateway_exit", reason = "answered_by_kong" }
-- the MCP server refused the request because its headers and body disagree (-32020): never ran
local HEADER_MISMATCH = { action = "header_mismatch", reason = "refused_by_server" }
local HEADER_MISMATCH_CODE = tostring(jsonrpc.CODES.HEADER_MISMATCH)
local LOG_INTERVAL_MS = 10000
-- the background lease renewal of a worker runs this often (off the request path)
local LEASE_TICK_S = 0.1
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
      -- rule 4 of the billing session: per worker (see kong/README.md, "Billing sessions")
      sessions = cache.new(conf.cache_max_items, now_ms),
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
    if conf.billing_endpoint then
      w.exporter = exporter.new({
        endpoint = conf.billing_endpoint,
        authorization = conf.billing_authorization,
        timeout_ms = conf.billing_timeout_ms,
        version = TollgateHandler.VERSION,
        resource = {
          ["service.name"] = "kong",
          ["service.instance.id"] = kong.node and kong.node.get_id() or nil,
          ["service.version"] = kong.version,
        },
        post = exporter.http_post,
        timer_at = ngx.timer.at,
        log = function(level, ...)
          kong.log[level](...)
        end,
      })
    end
    workers[conf] = w
  end
  return w
end

TollgateHandler._worker_state = worker_state -- for the specs: the exporter queue of a config

-- Quota leases (leases.lua): the leases of the customers this worker served, renewed ahead of time by
-- one timer per worker and released when the worker exits.
local lease_tracked = {}
local lease_timer = false

local function lease_timer_run(premature)
  if premature then
    leases.release_all(lease_tracked) -- the worker is exiting: give back what was not used
    return
  end
  local ok, err = pcall(leases.tick, lease_tracked)
  if not ok then
    kong.log.err("tollgate: lease renewal failed: ", err)
  end
end

local function lease_env(conf)
  local w = worker_state(conf)
  local env = w.lease_env
  if env then
    return env
  end
  local shm = ngx.shared[conf.lease_shm]
  if not shm then
    return nil, "lua_shared_dict " .. conf.lease_shm .. " is not declared"
  end
  local endpoint = leases.endpoint(conf)
  local headers = { ["Content-Type"] = "application/json" }
  if conf.billing_authorization then
    headers["Authorization"] = conf.billing_authorization
  end
  env = {
    shm = shm,
    -- the event loop's clock: updated after every wait and I/O, no syscall on the request path
    now_ms = function()
      return ngx.now() * 1000
    end,
    sleep = ngx.sleep,
    post = exporter.http_post,
    endpoint = function() return endpoint end,
    headers = function() return headers end,
    node_id = kong.node and kong.node.get_id() or "kong",
    log = function(level, ...)
      kong.log[level](...)
    end,
  }
  env.track = function(c, customer)
    local K = leases.key_of(c.product, customer)
    if not lease_tracked[K] then
      lease_tracked[K] = { env = env, conf = c, customer = customer }
    end
  end
  if not lease_timer then
    local ok, err = ngx.timer.every(LEASE_TICK_S, lease_timer_run)
    if ok then
      lease_timer = true
    else
      kong.log.err("tollgate: cannot start the lease renewal timer: ", err)
    end
  end
  w.lease_env = env
  return env
end

TollgateHandler._lease_env = lease_env -- for the specs

-- logs at most one message per kind every LOG_INTERVAL_MS per worker
local last_logged = {}
local function log_limited(kind, level, ...)
  local now = now_ms()
  if (last_logged[kind] or 0) + LOG_INTERVAL_MS <= now then
    last_logged[kind] = now
    kong.log[level](...)
  end
end

-- Headers the plugin reads to meter, identify and enforce a call. Kong's nginx runs with
-- `underscores_in_headers on` (kong/templates/nginx_kong.lua), and kong.request.get_header reads
-- ngx.var.http_<name> (kong/tools/http.lua get_header), which nginx matches against a header spelled
-- with underscores as well as the dashed one: `Mcp_Method` reads as Mcp-Method here, while the MCP
-- server behind (Node's HTTP parser, the SDK) sees another header, and a layer that strips a header
-- by its dashed name (key-auth's clear_header of X-Consumer-Custom-ID) leaves the underscored copy.
-- A request that spells one of them otherwise than its configured name, or sends one twice, is
-- refused (400): the plugin and the server would not see the same request.
local WATCHED_HEADERS = { "Mcp-Method", "Mcp-Name", "Mcp-Protocol-Version", "Mcp-Session-Id" }
-- kong.request.get_headers' largest limit (kong/pdk/request.lua MAX_HEADERS)
local MAX_REQUEST_HEADERS = 1000
local lower, gsub = string.lower, string.gsub

local function header_key(name)
  return (gsub(lower(name), "_", "-"))
end

-- normalized name -> the one spelling (lowercased) that is not ambiguous, per plugin config
local watched_of = setmetatable({}, { __mode = "k" })
local function watched_headers(conf)
  local w = watched_of[conf]
  if not w then
    w = {}
    for _, name in ipairs(WATCHED_HEADERS) do
      w[header_key(name)] = lower(name)
    end
    w[header_key(conf.agent_header)] = lower(conf.agent_header)
    if conf.customer_source == "header" then
      w[header_key(conf.customer_header)] = lower(conf.customer_header)
    end
    watched_of[conf] = w
  end
  return w
end

-- The request's headers (kong.request.get_headers: keys are the names as sent, lowercased) and nil, or
-- nil and why the watched headers are ambiguous: a header Kong would read as one of them although it is
-- spelled otherwise, one of them sent twice, or more headers than can be listed. The plugin reads the
-- watched headers from this table, by their exact lowercased names, not through kong.request.get_header,
-- whose ngx.var read matches other spellings and whose fallback for values with ", " lists only
-- lua_max_req_headers (100) headers.
local function request_headers(conf)
  local headers, err = kong.request.get_headers(MAX_REQUEST_HEADERS)
  if err == "truncated" then
    return nil, "more than " .. MAX_REQUEST_HEADERS .. " headers: the gateway cannot check their names"
  end
  local watched = watched_headers(conf)
  for name, value in pairs(headers) do
    if type(name) == "string" then
      local want = watched[header_key(name)]
      if want then
        if lower(name) ~= want then
          return nil, "header " .. name .. " is spelled otherwise than " .. want
            .. ": the gateway would read it as " .. want .. ", the server would not"
        elseif type(value) == "table" then
          return nil, "header " .. want .. " is sent more than once"
        end
      end
    end
  end
  return headers
end

-- A watched header's value (lowercased name) from request_headers' table, as the server reads it.
local function header_of(headers, name)
  return identity.header_value(rawget(headers, lower(name)))
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

local function request_info(conf, parsed, hints, headers, legacy_session)
  local traceparent = header_of(headers, "traceparent")
  local transport, protocol_session = identity.transport(header_of(headers, "mcp-session-id"), legacy_session)
  local customer = identity.customer(conf, kong.client.get_consumer(),
                                     conf.customer_source == "header" and header_of(headers, conf.customer_header)
                                       or nil)
  local agent = identity.valid_identifier(header_of(headers, conf.agent_header))
  local credential = kong.client.get_credential()
  local first = parsed.calls[1]
  local session_id, session_rule = session.of({
    protocol_session = protocol_session,
    -- read before propagate_meta may copy _meta.traceparent into the header
    traceparent = traceparent,
    meta_traceparent = first and first.traceparent,
    customer = customer,
    agent = agent,
    credential_id = type(credential) == "table" and type(credential.id) == "string" and credential.id or "",
    now_ms = now_ms(),
  }, worker_state(conf).sessions, conf.session_gap_ms)
  return {
    customer = customer,
    agent = agent,
    session_id = session_id,
    session_rule = session_rule,
    transport = transport,
    protocol_version = identity.valid_identifier(hints.protocol_version),
    traceparent = traceparent,
  }
end

-- Kong's tracing takes the trace context from headers; MCP clients may send it in
-- params._meta instead. Copying it lets the root span continue the client's trace.
-- Returns the traceparent it copied, if any.
local function propagate_meta(conf, parsed, header_traceparent)
  local first = parsed.calls[1]
  if conf.propagate_meta_traceparent and first and first.traceparent and not header_traceparent then
    kong.service.request.set_header("traceparent", first.traceparent)
    if first.tracestate and not kong.request.get_header("tracestate") then
      kong.service.request.set_header("tracestate", first.tracestate)
    end
    return first.traceparent
  end
  return nil
end

-- A refusal echoes the request's id. A call metered from its headers has no id yet: read the body
-- for it now (a refused request is rare and goes no further; an unreadable one answers id null).
local function id_for_refusal(conf, parsed)
  if not parsed.from_headers then
    return parsed
  end
  local body = read_body(conf)
  local doc = body and cjson_decode(body)
  local id = type(doc) == "table" and jsonrpc.describe_id(doc.id) or nil
  return { batch = false, calls = { { id = id } }, ids = {} }
end

local function refuse(conf, parsed, d)
  parsed = id_for_refusal(conf, parsed)
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

  local headers, ambiguous = request_headers(conf)
  if not headers then
    return exit_json(400, jsonrpc.error_response(nil, CODES.INVALID_REQUEST, "Invalid Request: " .. ambiguous))
  end

  local hints = {
    method = header_of(headers, "mcp-method"),
    name = header_of(headers, "mcp-name"),
    protocol_version = header_of(headers, "mcp-protocol-version"),
  }
  local legacy_session = identity.query_param(kong.request.get_raw_query(), "sessionId")
  -- 2026-07-28 clients name the method and tool in headers: no body read, no JSON decode. Not on the
  -- legacy HTTP+SSE message endpoint (?sessionId=): its server (protocol 2024-11-05) never checks those
  -- headers, so they could name another method than the body it runs
  local parsed = conf.meter_from_headers and legacy_session == nil and jsonrpc.from_headers(hints) or nil
  if not parsed then
    local body, err = read_body(conf)
    if not body then
      return exit_json(413, jsonrpc.error_response(nil, CODES.TOO_LARGE,
                                                   "Request too large to meter: " .. err))
    end
    local code, message, data, id
    parsed, code, message, data, id = jsonrpc.parse(body, hints)
    if not parsed then
      return exit_json(400, jsonrpc.error_response(id, code, message, data))
    end
  end
  if #parsed.calls == 0 then
    return -- initialize, tools/list, notifications...: not metered
  end
  -- the answer is read as it passes (isError, JSON-RPC errors, _meta["tollgate/usage"]): a compressed one
  -- cannot be, and the client chooses whether the upstream compresses. Asked for as is, it stays readable.
  kong.service.request.clear_header("Accept-Encoding")

  local req = request_info(conf, parsed, hints, headers, legacy_session)
  local ctx = { parsed = parsed, req = req }
  kong.ctx.plugin.tollgate = ctx
  -- the caller's trace, for the billing exporter: the header, else the _meta one propagate_meta copies
  ctx.traceparent = req.traceparent or propagate_meta(conf, parsed, req.traceparent)

  if not req.customer then
    req.enforcement = "no_customer"
    return
  end

  -- the named calls only: a call without a valid name (the server refuses it) must not leave a hole
  -- that ends the list early and hides the tools after it from their calls-per-tool kill
  local tools = {}
  for _, call in ipairs(parsed.calls) do
    if call.name then
      tools[#tools + 1] = call.name
    end
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

  if conf.leases then
    -- take the calls' known price from the node's lease before the tool runs
    local named = {}
    for _, call in ipairs(parsed.calls) do
      if call.name then
        named[#named + 1] = call.name
      end
    end
    local env, err = lease_env(conf)
    local taken, refusal
    if env then
      taken, refusal = leases.take(env, conf, req.customer, named)
    else
      log_limited("lease_shm", "err", "tollgate: leases are on but ", err)
      taken = conf.fault_tolerant and { enforcement = "lease_unavailable" } or nil
      refusal = { action = "unavailable", enforcement = "unavailable", reason = "lease_unavailable", retry_after = 1 }
    end
    if not taken then
      req.enforcement = refusal.enforcement
      ctx.refused = refusal
      return refuse(conf, parsed, refusal)
    end
    ctx.lease = taken
    ctx.lease_calls = #named
    if taken.enforcement then
      req.enforcement = taken.enforcement
    end
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
  if conf.upstream_usage ~= false then
    local header = kong.response.get_header(usage.HEADER)
    if header then
      ctx.header_usage = usage.parse_header(header)
      -- billing data for the gateway, not for the client
      kong.response.clear_header(usage.HEADER)
    end
  end
  local encoding = kong.response.get_header("Content-Encoding")
  if encoding and encoding ~= "identity" then
    return -- compressed: the outcome stays unknown, the HTTP status still counts
  end
  local ids = {}
  for i, call in ipairs(ctx.parsed.calls) do
    ids[i] = call.id and call.id.key or outcome.ANY_ID
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
-- the active span to its parent (nil). With Kong's tracing off there is no such span; the first
-- span may then be the opentelemetry plugin's propagation-only "root" (traces.lua get_inject_ctx),
-- which nothing exports.
local function root_span()
  local spans = ngx.ctx.KONG_SPANS
  local root = spans and spans[1]
  if root and root.name == KONG_ROOT_SPAN_NAME
     and not (root.attributes and root.attributes["kong.propagation_only"]) then
    return root
  end
  return nil
end

local function hex(bytes)
  return (bytes:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

-- Random trace and span ids from where Kong takes its own (kong/pdk/tracing.lua: generate_span_id =
-- rand_bytes(8) with rand_bytes = kong.tools.rand.get_rand_bytes, OpenSSL's RAND_bytes; before Kong 3.6
-- kong.tools.utils.get_rand_bytes), not math.random: the ids are the span's idempotency key
local rand_bytes
do
  for _, name in ipairs({ "kong.tools.rand", "kong.tools.utils" }) do
    local ok, mod = pcall(require, name)
    if ok and type(mod) == "table" and type(mod.get_rand_bytes) == "function" then
      rand_bytes = mod.get_rand_bytes
      break
    end
  end
end

local function urandom_bytes(n)
  local f = io_open("/dev/urandom", "rb")
  if not f then
    return nil
  end
  local s = f:read(n)
  f:close()
  return s
end

local function random_hex(n)
  local bytes, err
  if rand_bytes then
    bytes, err = rand_bytes(n)
  end
  if type(bytes) ~= "string" or #bytes ~= n then
    bytes = urandom_bytes(n) -- what Kong's get_rand_bytes(n, true) reads
  end
  if type(bytes) ~= "string" or #bytes ~= n then
    -- no CSPRNG at all: a weak id still bills the call (math.random is seeded per worker by Kong)
    log_limited("rand", "err", "tollgate: no random bytes for a billing span id (", err or "no source",
                "), using math.random")
    local t = {}
    for i = 1, n do
      t[i] = string.char(math.random(0, 255))
    end
    bytes = table.concat(t)
  end
  return hex(bytes)
end

-- Whether Kong's opentelemetry plugin exports this request's spans: true when its access phase ran
-- with a traces_endpoint (it set the tracing context's flags), false when it did not (no opentelemetry
-- plugin on the route, or one without traces_endpoint); nil when that cannot be told (a Kong before 3.8,
-- whose tracing context has no flags).
local function otel_exports()
  if not tracing_context then
    return nil
  end
  return tracing_context.get_flags() ~= nil
end

-- Tracing on, but nobody exports: the spans of the metered calls as Kong made them (the root span and
-- the children of a batch), with their own trace and span ids, so that the same span exported by Kong's
-- opentelemetry plugin too would be the same idempotency key and billed once.
local function own_spans(spans, calls)
  local out = {}
  for i, span in ipairs(spans) do
    local attrs = calls[i]
    attrs[attributes.KEYS.TOLLGATE_TRACE_SAMPLED] = false
    out[i] = {
      trace_id = hex(span.trace_id),
      span_id = hex(span.span_id),
      parent_id = span.parent_id and hex(span.parent_id) or nil,
      name = span.name,
      kind = SPAN_KIND_SERVER,
      start_time_ns = span.start_time_ns,
      end_time_ns = math.max(span.end_time_ns or span.start_time_ns, span.start_time_ns),
      attributes = attrs,
    }
  end
  return out
end

-- Tracing off: the spans Kong would have exported (the root `kong` for the first call, children
-- `tools/call <tool>` for the rest of a batch), built here for the billing exporter. The trace
-- continues the caller's W3C traceparent when there is one, whatever its sampled flag.
local function billing_spans(ctx, calls)
  local tp = jsonrpc.valid_traceparent(ctx.traceparent)
  local trace_id, parent_id = random_hex(16), nil
  if tp then
    trace_id, parent_id = tp:sub(4, 35), tp:sub(37, 52)
  end
  ngx.update_time()
  local start_ns = (ngx.ctx.KONG_PROCESSING_START or ngx.req.start_time() * 1000) * 1e6
  local end_ns = math.max(ngx.now() * 1e9, start_ns)
  local spans = {}
  for i, attrs in ipairs(calls) do
    attrs[attributes.KEYS.TOLLGATE_TRACE_SAMPLED] = false
    local parent = parent_id
    if i > 1 then
      parent = spans[1].span_id
    end
    spans[i] = {
      trace_id = trace_id,
      span_id = random_hex(8),
      parent_id = parent,
      name = i == 1 and KONG_ROOT_SPAN_NAME or "tools/call " .. attrs[attributes.KEYS.GEN_AI_TOOL_NAME],
      kind = SPAN_KIND_SERVER,
      start_time_ns = start_ns,
      end_time_ns = end_ns,
      attributes = attrs,
    }
  end
  return spans
end

-- Whether nginx sent the request to the upstream, from its variables (ngx_http_upstream.c): one
-- number per try in $upstream_bytes_sent / $upstream_bytes_received (", " between tries, " : "
-- between upstream groups), counted on the upstream connection when the try ends; absent when no
-- upstream was contacted. nil: nothing was sent (connect refused or timed out, or never proxied);
-- else { sent = true, answered = the last try received bytes from the upstream }.
local function upstream_reach()
  local var = ngx.var
  local sent = var.upstream_bytes_sent
  local reached = false
  if type(sent) == "string" then
    for n in sent:gmatch("%d+") do
      if tonumber(n) > 0 then
        reached = true
      end
    end
  end
  if not reached then
    return nil
  end
  local received = var.upstream_bytes_received
  local last = type(received) == "string" and received:match("(%d+)%D*$")
  return { sent = true, answered = last ~= nil and tonumber(last) > 0 }
end


-- The attributes of each billable call of the request, in order.
local function billable_calls(conf, ctx)
  local scanner = ctx.scanner
  local result = {
    http_status = ctx.http_status or kong.response.get_status(),
    null_error = scanner and scanner.null_error,
  }
  if attributes.MAYBE_UNKNOWN[result.http_status] then
    result.upstream = upstream_reach()
  end
  local out = {}
  local lease = ctx.lease and ctx.lease.lease and ctx.lease
  local read_meta = conf.upstream_usage ~= false
  -- the Tollgate-Usage header is the whole response's: it belongs to a request's only call
  local header_usage = ctx.header_usage
  if header_usage and #ctx.parsed.calls > 1 then
    log_limited("usage_batch", "warn", "tollgate: the ", usage.HEADER, " header of a batch answer is ",
                "ignored (it cannot say which call it is for); report usage in each result's _meta")
    header_usage = usage.new()
    header_usage.dropped = ctx.header_usage.n + ctx.header_usage.dropped
  end
  for _, call in ipairs(ctx.parsed.calls) do
    if call.name then
      local answer = scanner and scanner:result(call.id and call.id.key or outcome.ANY_ID)
      result.answer = answer
      result.usage = read_meta and usage.merge(answer and answer.usage, header_usage) or nil
      header_usage = nil -- once
      if result.usage and result.usage.dropped > 0 then
        log_limited("usage_dropped", "warn", "tollgate: ", result.usage.dropped, " usage entries the upstream ",
                    "reported for tool ", call.name, " are not on its span (names must be gen_ai.usage.* or ",
                    "tollgate.usage.*, at most ", usage.MAX_ENTRIES, " per call): see tollgate.kong.usage_dropped")
      end
      local attrs = attributes.for_call(call, ctx.req, result)
      out[#out + 1] = attrs
      if lease then
        -- the processor settles this call against the lease at its real price
        attrs[attributes.KEYS.TOLLGATE_LEASE_ID] = lease.lease
        attrs[attributes.KEYS.TOLLGATE_LEASE_RESERVED] = string.format("%d", lease.reserved[#out] or 0)
      end
    end
  end
  return out
end

function TollgateHandler:log(conf)
  local ctx = kong.ctx.plugin.tollgate
  if not ctx then
    return
  end
  local root = root_span()

  local refusal = ctx.refused or (ctx.source == "exit" and GATEWAY_EXIT) or nil
  local answer = ctx.scanner and ctx.scanner:result(ctx.parsed.calls[1].id and ctx.parsed.calls[1].id.key
                                                    or outcome.ANY_ID)
  if not refusal and answer and answer.error_code == HEADER_MISMATCH_CODE then
    refusal = HEADER_MISMATCH
  end
  if refusal and ctx.lease and not ctx.refused then
    -- taken from the lease but never reached the tool: not consumed after all
    leases.give_back(lease_env(conf), ctx.lease, ctx.lease_calls)
  end
  if refusal then
    -- not billable (no mcp.method.name): annotated for whoever looks at Kong's trace, never exported
    -- on its own account
    if root then
      set_all(root, attributes.for_refusal(ctx.req, refusal))
    end
    return
  end

  local calls = billable_calls(conf, ctx)
  if #calls == 0 then
    return
  end

  local spans
  if root then
    if root.should_sample == false then
      -- Kong's opentelemetry plugin drops spans whose should_sample is false (traces.lua log):
      -- the decision came from the caller's traceparent flags or a sampling_rate < 1. Billing is
      -- not sampled: the spans of the metered calls are exported anyway, marked, while every other
      -- span of the trace stays sampled out and the traceparent sent upstream keeps its flag.
      root.should_sample = true
      for _, attrs in ipairs(calls) do
        attrs[attributes.KEYS.TOLLGATE_TRACE_SAMPLED] = false
      end
    end
    spans = {}
    for i, attrs in ipairs(calls) do
      if i == 1 then
        set_all(root, attrs)
        spans[i] = root
      else
        -- every further call of a batch is billed through its own span, a child of the root
        -- (created after the flag above, it inherits the root's should_sample)
        local span = kong.tracing.start_span("tools/call " .. attrs[attributes.KEYS.GEN_AI_TOOL_NAME], {
          span_kind = SPAN_KIND_SERVER,
          parent = root,
          start_time_ns = root.start_time_ns,
        })
        set_all(span, attrs)
        span:finish(root.end_time_ns)
        spans[i] = span
      end
    end
    local exports = otel_exports()
    if exports then
      return -- Kong's opentelemetry plugin exports them (its log runs after ours)
    elseif exports == nil then
      log_limited("otel_unknown", "warn", "tollgate: this Kong has no tracing context flags (Kong < 3.8), so ",
                  "the plugin cannot tell whether the opentelemetry plugin exports this route's spans: ",
                  "tools/call spans are billed only if every route with tollgate also has the opentelemetry ",
                  "plugin with a traces_endpoint")
      return
    end
  end

  local w = worker_state(conf)
  if not w.exporter then
    if root then
      log_limited("no_otel", "warn", "tollgate: Kong's opentelemetry plugin does not export this route's ",
                  "traces (it is not on the route, or has no traces_endpoint) and billing_endpoint is not ",
                  "set: tools/call spans are not exported and these calls are not billed")
    else
      log_limited("no_tracing", "warn", "tollgate: Kong tracing is off (tracing_instrumentations) and ",
                  "billing_endpoint is not set: tools/call spans are not exported and these calls are not billed")
    end
    return
  end
  -- tracing on without an exporting opentelemetry plugin: Kong's own spans; tracing off: built here
  for _, span in ipairs(spans and own_spans(spans, calls) or billing_spans(ctx, calls)) do
    if not w.exporter.push(exporter.encode_span(span)) then
      log_limited("export_full", "err", "tollgate: billing export queue full, a tools/call span was dropped")
    end
  end
end

return TollgateHandler
