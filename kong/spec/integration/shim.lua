-- The Kong PDK subset the tollgate handler uses, implemented over the real ngx API inside real
-- nginx + lua-nginx-module, the way Kong implements it (kong/pdk/request.lua, response.lua,
-- client.lua, service/request.lua, ctx.lua, log.lua, node.lua), plus Kong's tracing
-- (spec/helpers/kong_tracing.lua: root span `kong` in rewrite unless tracing is off,
-- http.status_code before header_filter, root finished before the plugins' log handlers) and
-- Kong's opentelemetry plugin after ours (spec/helpers/kong_otel.lua: W3C propagation and the
-- sampling decision from the incoming flags in access — skipped when a plugin answered — and in
-- log the spans it would export, kept as OTLP/JSON (spec/helpers/otlp_json.lua) in a shared dict
-- for the test to fetch).
--
-- Consumers are resolved from an `apikey` header, like key-auth would before our access runs (the
-- credential id is "cred-<apikey>"). Per request, as a node's kong.conf would set them:
-- `x-test-tracing: off` (tracing_instrumentations = off), `x-test-sampling-rate: <n>`
-- (tracing_sampling_rate), `x-test-otel-sampling-rate: <n>` (the opentelemetry plugin's sampling_rate),
-- `x-test-otel: off` (no opentelemetry plugin on the route).

local cjson = require("cjson.safe").new()
local kong_schema = require "spec.helpers.kong_schema"
local kong_otel = require "spec.helpers.kong_otel"
local kong_tracing = require "spec.helpers.kong_tracing"
local otlp_json = require "spec.helpers.otlp_json"
local pdk_args = require "spec.helpers.pdk_args"

local ngx = ngx

local _M = {}

local handler
local confs = {}
local consumers = {}
local node = {}

local function first(v)
  if type(v) == "table" then
    return v[1]
  end
  return v
end

local DEFAULT_NODE_CONFIG = { tracing_instrumentations = "request", tracing_sampling_rate = 1 }

local tracing_context

local function build_pdk()
  local tracer, instrumentation
  tracer, instrumentation, tracing_context = kong_tracing.new({
    get_ctx = function() return ngx.ctx end,
    time_ns = function()
      ngx.update_time()
      return ngx.now() * 1e9
    end,
    config = function() return ngx.ctx.TEST_NODE_CONFIG or DEFAULT_NODE_CONFIG end,
  })

  local kong = {
    request = {},
    client = {},
    response = {},
    service = { request = {} },
    log = {},
    tracing = tracer,
    version = "3.9.1",
    node = { get_id = function() return node.id end },
    ctx = setmetatable({}, {
      __index = function(_, k)
        if k == "plugin" then
          local c = ngx.ctx.tollgate_plugin_ctx
          if not c then
            c = {}
            ngx.ctx.tollgate_plugin_ctx = c
          end
          return c
        end
      end,
    }),
  }

  function kong.request.get_method()
    return ngx.req.get_method()
  end

  -- kong/tools/http.lua get_header: ngx.var.http_<name> (nginx matches it against the header spelled
  -- with dashes or, with underscores_in_headers on as in Kong's template, with underscores), and only
  -- when that value joins several headers (", ") the first value of ngx.req.get_headers()[name]
  local gsub, lower, find = string.gsub, string.lower, string.find
  local var_names = setmetatable({}, { __mode = "k" })
  function kong.request.get_header(name)
    if type(name) ~= "string" then
      error("header name must be a string", 2)
    end
    local v = var_names[name]
    if not v then
      v = "http_" .. gsub(lower(name), "-", "_")
      var_names[name] = v
    end
    local value = ngx.var[v]
    if not value or not find(value, ", ", 1, true) then
      return value
    end
    value = ngx.req.get_headers()[name]
    return type(value) == "table" and value[1] or value
  end

  -- kong/pdk/request.lua get_headers: ngx.req.get_headers(max_headers), max_headers 1..1000
  function kong.request.get_headers(max_headers)
    return ngx.req.get_headers(pdk_args.max_headers(max_headers))
  end

  -- kong/pdk/request.lua get_query_arg: the first value of get_query()[name], get_query being
  -- ngx.req.get_uri_args() (at most lua_max_uri_args, 100, arguments; names compared exactly)
  function kong.request.get_query_arg(name)
    if type(name) ~= "string" then
      error("query argument name must be a string", 2)
    end
    local v = ngx.req.get_uri_args()[name]
    if type(v) == "table" then
      return v[1]
    end
    return v
  end

  -- kong/pdk/request.lua get_raw_query
  function kong.request.get_raw_query()
    return ngx.var.args or ""
  end

  function kong.request.get_raw_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body then
      if ngx.req.get_body_file() then
        return nil, "request body did not fit into client body buffer, consider raising 'client_body_buffer_size'"
      end
      return ""
    end
    return body
  end

  function kong.client.get_consumer()
    return ngx.ctx.authenticated_consumer
  end

  function kong.client.get_credential()
    return ngx.ctx.authenticated_credential
  end

  function kong.response.exit(status, body, headers)
    if ngx.headers_sent then
      error("headers have already been sent", 2)
    end
    ngx.status = status
    for k, v in pairs(headers or {}) do
      ngx.header[k] = v
    end
    if type(body) == "table" then
      body = cjson.encode(body)
      ngx.header["Content-Type"] = "application/json"
    end
    ngx.ctx.KONG_EXITED = true
    if body then
      ngx.header["Content-Length"] = #body
      ngx.print(body)
    else
      ngx.header["Content-Length"] = 0
    end
    return ngx.exit(status)
  end

  function kong.response.get_status()
    return ngx.status
  end

  function kong.response.get_source()
    if ngx.ctx.KONG_EXITED then
      return "exit"
    end
    -- a status Kong itself produced for an unreachable/timed-out upstream
    if ngx.var.upstream_status == nil or ngx.var.upstream_status == "" then
      return "error"
    end
    return "service"
  end

  function kong.response.get_header(name)
    return first(ngx.header[name])
  end

  -- kong/pdk/response.lua: ngx.header[name] = nil removes every value of the header
  function kong.response.clear_header(name)
    if type(name) ~= "string" then
      error("header name must be a string", 2)
    end
    ngx.header[name] = nil
  end

  function kong.service.request.set_header(name, value)
    ngx.req.set_header(name, tostring(value))
  end

  -- kong/pdk/service/request.lua clear_header
  function kong.service.request.clear_header(name)
    if type(name) ~= "string" then
      error("header must be a string", 2)
    end
    ngx.req.clear_header(name)
  end

  local LEVELS = { err = ngx.ERR, warn = ngx.WARN, notice = ngx.NOTICE, info = ngx.INFO, debug = ngx.DEBUG }
  for name, level in pairs(LEVELS) do
    kong.log[name] = function(...)
      ngx.log(level, ...)
    end
  end

  return kong, instrumentation
end

local instrumentation

--- init_by_lua: reads the test config { node, consumers, plugins = { <name> = config } },
-- validates each plugin config through the schema (filling Kong's defaults) and loads the handler.
function _M.init(conf_file)
  local f = assert(io.open(conf_file, "rb"))
  local doc = assert(cjson.decode(f:read("*a")))
  f:close()
  node = doc.node
  consumers = doc.consumers or {}
  kong_schema.install()
  local schema = require "kong.plugins.tollgate.schema"
  for name, cfg in pairs(doc.plugins) do
    local conf, errs = kong_schema.config(schema, cfg)
    if not conf then
      error("invalid plugin config " .. name .. ": " .. cjson.encode(errs))
    end
    confs[name] = conf
  end
  local kong
  kong, instrumentation = build_pdk()
  _G.kong = kong
  -- kong/observability/tracing/tracing_context.lua, which the handler requires (Kong >= 3.8)
  package.loaded["kong.observability.tracing.tracing_context"] = tracing_context
  -- kong/tools/rand.lua: RAND_bytes of the OpenSSL nginx has loaded (spec/helpers/kong_rand.lua)
  package.loaded["kong.tools.rand"] = require "spec.helpers.kong_rand"
  handler = require "kong.plugins.tollgate.handler"
end

-- `runloop_only` runs every phase of this shim (Kong's runloop work: tracing, propagation,
-- export) without the plugin, the bench's baseline for what the plugin itself adds
local RUNLOOP_ONLY = "runloop_only"
local NOOP_HANDLER = {
  access = function() end,
  header_filter = function() end,
  body_filter = function() end,
  log = function() end,
}

local function conf()
  return confs[ngx.var.tg_conf] or error("no plugin config named " .. tostring(ngx.var.tg_conf))
end

local function plugin()
  if ngx.var.tg_conf == RUNLOOP_ONLY then
    return NOOP_HANDLER, nil
  end
  return handler, conf()
end

-- Kong seeds math.random once per worker, differently in each (kong/globalpatches.lua: randomseed from
-- resty.random bytes in init_worker); without it two workers make the same span ids
local seeded = false

function _M.rewrite()
  if not seeded then
    seeded = true
    math.randomseed(ngx.worker.pid() * 1000003 + math.floor(ngx.now() * 1000) % 1000003)
  end
  ngx.ctx.KONG_PROCESSING_START = ngx.req.start_time() * 1000
  local key = ngx.var.http_apikey
  if key then
    ngx.ctx.authenticated_consumer = consumers[key]
    ngx.ctx.authenticated_credential = consumers[key] and { id = "cred-" .. key } or nil
  end
  local tracing, rate = ngx.var.http_x_test_tracing, tonumber(ngx.var.http_x_test_sampling_rate)
  if tracing or rate then
    ngx.ctx.TEST_NODE_CONFIG = { tracing_instrumentations = tracing or "request", tracing_sampling_rate = rate or 1 }
  end
  local version = ngx.req.http_version()
  instrumentation.request({
    method = ngx.req.get_method(),
    scheme = ngx.var.scheme,
    host = ngx.var.host,
    uri = ngx.var.request_uri,
    http_version = type(version) == "number" and string.format("%.1f", version) or tostring(version),
    client_ip = ngx.var.remote_addr,
    request_id = ngx.var.request_id,
    start_time_ns = ngx.req.start_time() * 1e9,
  })
end

-- Kong's opentelemetry plugin (priority 14: after ours in every phase)
local otel
local function otel_plugin()
  if not otel then
    otel = kong_otel.new({
      kong = kong,
      get_ctx = function() return ngx.ctx end,
      plugin_ctx = function()
        local c = ngx.ctx.otel_plugin_ctx
        if not c then
          c = {}
          ngx.ctx.otel_plugin_ctx = c
        end
        return c
      end,
      tracing_context = tracing_context,
      get_header = function(name) return first(ngx.req.get_headers()[name]) end,
      set_header = function(name, value) ngx.req.set_header(name, value) end,
    })
  end
  if ngx.var.http_x_test_otel == "off" then
    return nil
  end
  return otel, { sampling_rate = tonumber(ngx.var.http_x_test_otel_sampling_rate) }
end

function _M.access()
  local h, c = plugin()
  h:access(c)
  -- kong/init.lua: once a plugin has answered, the access handlers after it do not run
  -- (kong.response.exit ends the request here, so this line is not reached either)
  local o, oconf = otel_plugin()
  if o and not ngx.ctx.KONG_EXITED then
    o.access(oconf)
  end
end

function _M.header_filter()
  instrumentation.before_header_filter(ngx.status, ngx.var.uri)
  local h, c = plugin()
  return h:header_filter(c)
end

function _M.body_filter()
  if ngx.arg[2] then
    ngx.update_time()
    ngx.ctx.KONG_BODY_FILTER_ENDED_AT_NS = ngx.now() * 1e9
  end
  local h, c = plugin()
  return h:body_filter(c)
end

-- log: finish the root span as Kong does before plugins log, run our log handler, then the
-- opentelemetry plugin's log (the spans it would queue -> OTLP/JSON).
function _M.log()
  instrumentation.log_before(ngx.ctx.KONG_BODY_FILTER_ENDED_AT_NS)
  local h, c = plugin()
  h:log(c)
  local o, oconf = otel_plugin()
  local spans = o and o.log(oconf) or {}
  local id = ngx.var.http_x_test_id
  if id and #spans > 0 then
    local doc = otlp_json.encode_traces(spans, node)
    local ok, err = ngx.shared.tollgate_spans:rpush(id, cjson.encode(doc))
    if not ok then
      ngx.log(ngx.ERR, "span store: ", err)
    end
  end
end

--- GET /_lease_stats: the lease counters of the node (leases.lua STATS), as JSON.
function _M.lease_stats_endpoint()
  local stats = require("kong.plugins.tollgate.leases").stats(ngx.shared.tollgate_leases)
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(stats))
end

--- GET /_lease_micro?n=N: the cost of one leases.take() in steady state (a lease that covers every
-- call) on this worker with the real shared dict, in ns per call: N takes of one call against a lease
-- granted by a canned answer (no I/O in the loop; the bench's micro-measure).
function _M.lease_micro_endpoint()
  local leases = require "kong.plugins.tollgate.leases"
  local shm = ngx.shared.tollgate_leases
  local n = tonumber(ngx.var.arg_n) or 1000000
  local conf = { product = "micro", lease_timeout_ms = 250, fault_tolerant = true }
  local answer = cjson.encode({ results = { { ok = true, lease = {
    leaseId = "ls_000000000000000000000001", customer = "c", currency = "USD",
    expiresUnixMs = ngx.now() * 1000 + 600000, calls = 1e9, money = "9000000000000000",
    tools = {}, sessions = {}, limitedTools = {}, sessionLimited = false,
    prices = { search = "1000" }, defaultPrice = "1000" } } } })
  local env = {
    shm = shm,
    now_ms = function() return ngx.now() * 1000 end,
    sleep = ngx.sleep,
    post = function() return 200, nil, answer end,
    endpoint = function() return "http://micro/v1/leases" end,
    headers = function() return {} end,
    node_id = "micro",
    log = function() end,
    track = function() end,
  }
  leases.renew(env, conf, "c", 1, 0, "sync_renewals")
  local tools = { "search" }
  assert(leases.take(env, conf, "c", tools).lease)
  ngx.update_time()
  local t0 = ngx.now()
  for _ = 1, n do
    leases.take(env, conf, "c", tools)
  end
  ngx.update_time()
  local ns = (ngx.now() - t0) * 1e9 / n
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode({ n = n, ns_per_take = ns }))
end

--- GET /_spans?id=X: the exports recorded for test id X (consumed), as a JSON array.
function _M.spans_endpoint()
  local id = ngx.var.arg_id
  local out = {}
  while id do
    local v = ngx.shared.tollgate_spans:lpop(id)
    if not v then
      break
    end
    out[#out + 1] = v
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.say("[" .. table.concat(out, ",") .. "]")
end

return _M
