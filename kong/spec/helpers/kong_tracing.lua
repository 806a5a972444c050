-- A faithful subset of Kong's tracing, for the handler spec's PDK fake and the nginx shim:
--   kong/pdk/tracing.lua                          tracer.start_span(name, options), span:set_attribute,
--                                                 span:finish, span:set_status, process_span,
--                                                 spans stored in ngx.ctx.KONG_SPANS (KONG_SPANS[0] = count)
--   kong/observability/tracing/instrumentation.lua request(): the root span `kong`, kind SERVER (2),
--                                                 with the http.* attributes Kong sets;
--                                                 runloop_before_header_filter(): http.status_code;
--                                                 runloop_log_before(): finishes the root span
--                                                 before the plugins' log handlers run.
-- Validation errors are raised with the same messages as Kong's.

local _M = {
  SPAN_KIND = { UNSPECIFIED = 0, INTERNAL = 1, SERVER = 2, CLIENT = 3, PRODUCER = 4, CONSUMER = 5 },
}

local function random_bytes(n)
  local t = {}
  for i = 1, n do
    t[i] = string.char(math.random(1, 255))
  end
  return table.concat(t)
end

--- new(opts): opts.get_ctx() returns the current request's ngx.ctx; opts.time_ns() the clock;
-- opts.random_bytes(n) optionally replaces the id generator (for deterministic fixtures).
function _M.new(opts)
  local get_ctx = assert(opts.get_ctx)
  local time_ns = assert(opts.time_ns)
  local rand = opts.random_bytes or random_bytes

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
    if self.active and ctx.active_span == self then
      ctx.active_span = self.parent
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

  local tracer = { name = "instrument" }

  function tracer.active_span()
    return get_ctx().active_span
  end

  function tracer.set_active_span(span)
    if span then
      span.active = true
    end
    get_ctx().active_span = span
  end

  function tracer.start_span(name, options)
    if type(name) ~= "string" or #name == 0 then
      error("invalid span name", 2)
    end
    if options ~= nil then
      if type(options) ~= "table" then
        error("invalid options type", 2)
      end
      if options.start_time_ns ~= nil and type(options.start_time_ns) ~= "number" then
        error("invalid start time", 2)
      end
      if options.span_kind ~= nil and type(options.span_kind) ~= "number" then
        error("invalid start kind", 2)
      end
      if options.attributes ~= nil and type(options.attributes) ~= "table" then
        error("invalid attributes", 2)
      end
    end
    options = options or {}
    local parent = options.parent or tracer.active_span()
    local span = setmetatable({
      tracer = tracer,
      name = name,
      parent = parent,
      trace_id = parent and parent.trace_id or options.trace_id or rand(16),
      span_id = rand(8),
      parent_id = parent and parent.span_id or options.parent_id,
      start_time_ns = options.start_time_ns or time_ns(),
      kind = options.span_kind or _M.SPAN_KIND.INTERNAL,
      attributes = options.attributes,
      should_sample = parent and parent.should_sample or true,
    }, span_mt)
    if parent and parent.should_sample == false then
      span.should_sample = false
    end
    local ctx = get_ctx()
    local spans = ctx.KONG_SPANS
    if not spans then
      spans = { [0] = 0 }
      ctx.KONG_SPANS = spans
    end
    spans[0] = spans[0] + 1
    spans[spans[0]] = span
    return span
  end

  function tracer.process_span(processor, ...)
    if type(processor) ~= "function" then
      error("processor must be a function", 2)
    end
    local spans = get_ctx().KONG_SPANS
    if not spans then
      return
    end
    for _, span in ipairs(spans) do
      if span.tracer and span.tracer.name == tracer.name then
        processor(span, ...)
      end
    end
  end

  local instrumentation = {}

  --- instrumentation.request(): the root span, as Kong creates it before any plugin runs.
  -- req: { method, scheme, host, uri, http_version, client_ip, request_id, start_time_ns }
  function instrumentation.request(req)
    local root = tracer.start_span("kong", {
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
    tracer.set_active_span(root)
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
    local active = tracer.active_span()
    if active and type(active.finish) == "function" then
      active:finish(end_time_ns)
    end
  end

  return tracer, instrumentation
end

return _M
