-- A faithful subset of Kong's tracing, for the handler spec's PDK fake and the nginx shim. Each part
-- names the Kong file it mirrors (read at Kong/kong HEAD, 3.10):
--   kong/pdk/tracing.lua                          new_tracer(name, options) (memoised per name),
--                                                 the noop tracer (the global tracer while tracing is
--                                                 off), start_span -> create_span (sampling: the
--                                                 parent's should_sample, else options.should_sample,
--                                                 else the tracer's trace-id-ratio sampler), link_span
--                                                 into ngx.ctx.KONG_SPANS ([0] = count, shared by every
--                                                 tracer of the KONG namespace), span:set_attribute /
--                                                 finish / set_status, process_span (the spans of this
--                                                 tracer's name), set_should_sample (every span),
--                                                 get_sampling_decision (no root or a propagation-only
--                                                 root -> false; a parent flag false -> false; else the
--                                                 ratio sampler)
--   kong/observability/tracing/instrumentation.lua init(): tracing_instrumentations = off makes the
--                                                 global tracer noop and request() a NOOP; request():
--                                                 the root span `kong`, kind SERVER (2), with the http.*
--                                                 attributes, raw trace id into the tracing context;
--                                                 runloop_before_header_filter(): http.status_code;
--                                                 runloop_log_before(): finishes the root span before
--                                                 the plugins' log handlers run
--   kong/observability/tracing/tracing_context.lua ngx.ctx.TRACING_CONTEXT: raw trace id, flags
-- Validation errors are raised with the same messages as Kong's.

local _M = {
  SPAN_KIND = { UNSPECIFIED = 0, INTERNAL = 1, SERVER = 2, CLIENT = 3, PRODUCER = 4, CONSUMER = 5 },
}

-- kong/pdk/tracing.lua: rand_bytes = require("kong.tools.rand").get_rand_bytes (OpenSSL RAND_bytes),
-- mirrored by spec/helpers/kong_rand.lua
local function random_bytes(n)
  return assert(require("spec.helpers.kong_rand").get_rand_bytes(n))
end

local NOOP = function() end

--- new(opts): opts.get_ctx() returns the current request's ngx.ctx; opts.time_ns() the clock;
-- opts.random_bytes(n) optionally replaces the id generator (for deterministic fixtures);
-- opts.config() returns the node's { tracing_instrumentations = "request" | "all" | "off",
-- tracing_sampling_rate = 0..1 } (kong.conf), read per request so specs can switch it.
-- Returns kong.tracing (whichever global tracer the config makes current), the instrumentation,
-- and the tracing context helpers.
function _M.new(opts)
  local get_ctx = assert(opts.get_ctx)
  local time_ns = assert(opts.time_ns)
  local rand = opts.random_bytes or random_bytes
  local config = opts.config or function() return { tracing_instrumentations = "request", tracing_sampling_rate = 1 } end

  -- kong/observability/tracing/tracing_context.lua
  local tracing_context = {}
  local function context()
    local ctx = get_ctx()
    local c = ctx.TRACING_CONTEXT
    if not c then
      c = { raw_trace_id = nil, flags = nil, unlinked_spans = {} }
      ctx.TRACING_CONTEXT = c
    end
    return c
  end
  function tracing_context.get_raw_trace_id() return context().raw_trace_id end
  function tracing_context.set_raw_trace_id(id) context().raw_trace_id = id end
  function tracing_context.get_flags() return context().flags end
  function tracing_context.set_flags(f) context().flags = f end
  function tracing_context.get_unlinked_span(name) return context().unlinked_spans[name] end

  local span_mt = {}
  span_mt.__index = span_mt

  function span_mt:finish(end_time_ns)
    if self.end_time_ns ~= nil then
      return
    end
    if end_time_ns ~= nil and type(end_time_ns) ~= "number" then
      error("invalid span end time", 2)
    end
    if end_time_ns and end_time_ns < self.start_time_ns then
      error("invalid span duration", 2)
    end
    self.end_time_ns = end_time_ns or time_ns()
    local ctx = get_ctx()
    if self.active and ctx.KONG_active_span == self then
      ctx.KONG_active_span = self.parent
      self.active = nil
    end
  end

  -- newer Kong logs (instead of raising) on a bad value type; raising here makes a handler bug
  -- fail the spec instead of silently dropping an attribute
  function span_mt:set_attribute(key, value)
    if type(key) ~= "string" then
      error("invalid key", 2)
    end
    local vtyp = type(value)
    if value ~= nil and vtyp ~= "string" and vtyp ~= "number" and vtyp ~= "boolean" then
      error("invalid span attribute value type: " .. vtyp, 2)
    end
    if self.attributes == nil then
      self.attributes = {}
    end
    self.attributes[key] = value
  end

  function span_mt:set_status(status)
    if type(status) ~= "number" then
      error("invalid status", 2)
    end
    self.status = status
  end

  -- the noop tracer (kong/pdk/tracing.lua): what kong.tracing is while tracing is off
  local noop_span = setmetatable({ is_recording = false, finish = NOOP, set_attribute = NOOP,
                                   set_status = NOOP }, { __newindex = NOOP })
  local noop_tracer = {
    name = "noop",
    start_span = function() return noop_span end,
    active_span = NOOP,
    set_active_span = NOOP,
    process_span = NOOP,
    set_should_sample = NOOP,
    get_sampling_decision = NOOP,
    get_root_span = NOOP,
  }

  local function validate_span_options(options)
    if options ~= nil then
      if type(options) ~= "table" then
        error("invalid options type", 3)
      end
      if options.start_time_ns ~= nil and type(options.start_time_ns) ~= "number" then
        error("invalid start time", 3)
      end
      if options.span_kind ~= nil and type(options.span_kind) ~= "number" then
        error("invalid start kind", 3)
      end
      if options.should_sample ~= nil and type(options.should_sample) ~= "boolean" then
        error("invalid sampled", 3)
      end
      if options.attributes ~= nil and type(options.attributes) ~= "table" then
        error("invalid attributes", 3)
      end
    end
  end

  -- get_trace_id_based_sampler: >= 1 always, <= 0 never, else the first 8 bytes of the trace id
  -- against rate * 2^64
  local function ratio_sample(trace_id, rate)
    if type(rate) ~= "number" then
      return nil, "invalid fraction"
    end
    if rate >= 1 then
      return true
    end
    if rate <= 0 then
      return false
    end
    local v = 0
    for i = 8, 1, -1 do -- little-endian uint64, as Kong's ffi cast reads it on x86
      v = v * 256 + trace_id:byte(i)
    end
    return v < rate * 2 ^ 64
  end

  local tracers = {}

  local function new_tracer(name, options)
    name = name or "default"
    if tracers[name] then
      return tracers[name]
    end
    options = options or {}
    local sampling_rate = options.sampling_rate or 1.0
    local self = { name = name }

    function self.sampler(trace_id, rate)
      return ratio_sample(trace_id, rate or (options.rate_fn and options.rate_fn()) or sampling_rate)
    end

    function self.active_span()
      return get_ctx().KONG_active_span
    end

    function self.set_active_span(span)
      if span then
        span.active = true
      end
      get_ctx().KONG_active_span = span
    end

    function self.get_spans()
      local ctx = get_ctx()
      local spans = ctx.KONG_SPANS
      if not spans then
        spans = { [0] = 0 }
        ctx.KONG_SPANS = spans
      end
      return spans
    end

    function self.get_root_span()
      return self.get_spans()[1]
    end

    function self.start_span(span_name, span_options)
      if type(span_name) ~= "string" or #span_name == 0 then
        error("invalid span name", 2)
      end
      validate_span_options(span_options)
      span_options = span_options or {}
      local parent = span_options.parent or self.active_span()
      local trace_id = parent and parent.trace_id or span_options.trace_id or rand(16)
      local sampled
      if parent and parent.should_sample ~= nil then
        sampled = parent.should_sample
      elseif span_options.should_sample ~= nil then
        sampled = span_options.should_sample
      else
        local err
        sampled, err = self.sampler(trace_id)
        if err then
          sampled = false
        end
      end
      local span = setmetatable({
        tracer = self,
        name = span_name,
        parent = parent,
        trace_id = trace_id,
        span_id = rand(8),
        parent_id = parent and parent.span_id or span_options.parent_id,
        start_time_ns = span_options.start_time_ns or time_ns(),
        kind = span_options.span_kind or _M.SPAN_KIND.INTERNAL,
        attributes = span_options.attributes,
        should_sample = sampled,
        linked = true,
      }, span_mt)
      local spans = self.get_spans()
      spans[0] = spans[0] + 1
      spans[spans[0]] = span
      return span
    end

    function self.process_span(processor, ...)
      if type(processor) ~= "function" then
        error("processor must be a function", 2)
      end
      for _, span in ipairs(self.get_spans()) do
        if span.tracer and span.tracer.name == self.name then
          processor(span, ...)
        end
      end
    end

    function self.set_should_sample(_, should_sample)
      for _, span in ipairs(self.get_spans()) do
        if span.is_recording ~= false then
          span.should_sample = should_sample
        end
      end
    end

    function self.get_sampling_decision(_, parent_should_sample, plugin_sampling_rate)
      local root = self.get_root_span()
      local trace_id = tracing_context.get_raw_trace_id()
      local rate = plugin_sampling_rate or config().tracing_sampling_rate
      local sampled
      if not root or (root.attributes and root.attributes["kong.propagation_only"]) then
        sampled = false
      elseif parent_should_sample == false or not trace_id then
        sampled = parent_should_sample
      elseif rate then
        local err
        sampled, err = self.sampler(trace_id, rate)
        if err then
          sampled = false
        end
      end
      return not not sampled
    end

    self.new = new_tracer
    tracers[name] = self
    return self
  end
  noop_tracer.new = new_tracer

  local function tracing_on()
    return config().tracing_instrumentations ~= "off"
  end

  -- instrumentation.init(): the global tracer "instrument" with the node's sampling rate, or noop.
  -- kong.tracing: the global tracer of the current configuration.
  local global = setmetatable({}, {
    __index = function(_, k)
      if tracing_on() then
        -- (the rate is read per request here so specs can change the node's config)
        local t = tracers.instrument or new_tracer("instrument", {
          rate_fn = function() return config().tracing_sampling_rate end,
        })
        return t[k]
      end
      return noop_tracer[k]
    end,
  })

  local instrumentation = {}

  --- instrumentation.request(): the root span, as Kong creates it before any plugin runs (a NOOP
  -- while tracing is off). req: { method, scheme, host, uri, http_version, client_ip, request_id,
  -- start_time_ns }
  function instrumentation.request(req)
    if not tracing_on() then
      return nil
    end
    local root = global.start_span("kong", {
      span_kind = _M.SPAN_KIND.SERVER,
      start_time_ns = req.start_time_ns,
      attributes = {
        ["http.method"] = req.method,
        ["http.url"] = req.scheme .. "://" .. req.host .. req.uri,
        ["http.host"] = req.host,
        ["http.scheme"] = req.scheme,
        ["http.flavor"] = req.http_version,
        ["http.client_ip"] = req.client_ip,
        ["net.peer.ip"] = req.client_ip,
        ["kong.request.id"] = req.request_id,
      },
    })
    tracing_context.set_raw_trace_id(root.trace_id)
    global.set_active_span(root)
    return root
  end

  function instrumentation.before_header_filter(status, route_path)
    local spans = get_ctx().KONG_SPANS
    local root = spans and spans[1]
    if root then
      root:set_attribute("http.status_code", status)
      root:set_attribute("http.route", route_path or "")
    end
  end

  function instrumentation.log_before(end_time_ns)
    local active = global.active_span()
    if active and type(active.finish) == "function" then
      active:finish(end_time_ns)
    end
  end

  return global, instrumentation, tracing_context
end

return _M
