-- What Kong's opentelemetry plugin (PRIORITY 14, so after tollgate's 905 in every phase) does with
-- traces, for the handler spec's PDK fake and the nginx shim. Mirrors, at Kong/kong HEAD (3.10):
--   kong/plugins/opentelemetry/handler.lua          access/log dispatch to traces.lua when
--                                                   traces_endpoint is set
--   kong/plugins/opentelemetry/traces.lua           access: propagation.propagate(..., get_inject_ctx):
--     get_inject_ctx: with no root span (tracing off) it starts a "root" span on kong.tracing.new("otel")
--     marked kong.propagation_only and sets kong.ctx.plugin.should_sample = false; the root span takes
--     the incoming trace id and parent span id; the sampling decision is
--     tracer:get_sampling_decision(<incoming sampled flag>, conf.sampling_rate) — an incoming flag
--     00 wins over any sampling_rate — applied to every span by tracer:set_should_sample();
--     log: kong.tracing.process_span() of the spans whose should_sample is not false, unless
--     kong.ctx.plugin.should_sample is false (with tracing off kong.tracing is the noop tracer, whose
--     process_span does nothing at all)
--   kong/observability/tracing/propagation/extractors/w3c.lua  traceparent: version 00 only, 32/16 hex
--     non-zero ids, 2-hex flags; should_sample = flags % 2 == 1
--   kong/observability/tracing/propagation/injectors/w3c.lua   traceparent 00-<trace>-<span>-01|00
--   kong/init.lua execute_collecting_plugins_iterator: once a plugin's access phase has answered
--     (kong.response.exit -> ctx.delayed_response), the access handlers of the plugins after it are
--     not run — so after a tollgate refusal this plugin's access (propagation, sampling) never runs.

local _M = {}

local function from_hex(h)
  return (h:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

local function to_hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

--- extractors/w3c.lua get_context(headers)
function _M.w3c_extract(traceparent)
  if type(traceparent) ~= "string" or traceparent == "" then
    return nil
  end
  local version, trace_id, parent_id, flags = traceparent:match("^(%x+)%-(%x+)%-(%x+)%-(%x+)$")
  if version == nil or version ~= "00" then
    return nil
  end
  if #trace_id ~= 32 or tonumber(trace_id, 16) == 0 then
    return nil
  end
  if #parent_id ~= 16 or tonumber(parent_id, 16) == 0 then
    return nil
  end
  if #flags ~= 2 then
    return nil
  end
  local flags_number = tonumber(flags, 16)
  return {
    trace_id = from_hex(trace_id),
    span_id = from_hex(parent_id),
    should_sample = flags_number % 2 == 1,
    w3c_flags = flags_number,
  }
end

--- new(deps): deps = { kong = the PDK (kong.tracing, kong.ctx.plugin is this plugin's own table via
-- deps.plugin_ctx()), get_ctx = ngx.ctx getter, tracing_context = kong_tracing's helpers,
-- get_header(name), set_header(name, value) }
function _M.new(deps)
  local plugin = {}

  -- traces.lua get_inject_ctx
  local function get_inject_ctx(extracted, conf)
    local kong = deps.kong
    local pctx = deps.plugin_ctx()
    local spans = deps.get_ctx().KONG_SPANS
    local root = spans and spans[1]
    local tracer = kong.tracing.name == "noop" and kong.tracing.new("otel") or kong.tracing
    if not root then
      root = tracer.start_span("root")
      root:set_attribute("kong.propagation_only", true)
      pctx.should_sample = false
    end
    local injected_parent = root -- no balancer span in these fakes
    if extracted.trace_id then
      injected_parent.trace_id = extracted.trace_id
      deps.tracing_context.set_raw_trace_id(extracted.trace_id)
    end
    if extracted.span_id then
      root.parent_id = extracted.span_id
    end
    local sampled
    if pctx.should_sample == false then
      sampled = false
    else
      sampled = tracer:get_sampling_decision(extracted.should_sample, conf.sampling_rate)
    end
    tracer:set_should_sample(sampled)
    injected_parent.should_sample = sampled
    deps.tracing_context.set_flags(require("bit").bor(extracted.w3c_flags or 0, sampled and 1 or 0))
    return {
      trace_id = injected_parent.trace_id,
      span_id = injected_parent.span_id,
      should_sample = injected_parent.should_sample,
    }
  end

  --- access(conf): propagation.propagate with extract [w3c], inject [preserve -> w3c]
  function plugin.access(conf)
    local extracted = _M.w3c_extract(deps.get_header("traceparent")) or {}
    local out = get_inject_ctx(extracted, conf)
    deps.set_header("traceparent", string.format("00-%s-%s-%s", to_hex(out.trace_id), to_hex(out.span_id),
                                                 out.should_sample and "01" or "00"))
  end

  --- log(conf): the spans this plugin would queue for export, in order
  function plugin.log(conf)
    local kong = deps.kong
    local pctx = deps.plugin_ctx()
    local exported = {}
    kong.tracing.process_span(function(span)
      if span.should_sample == false or pctx.should_sample == false then
        return
      end
      local trace_id = deps.tracing_context.get_raw_trace_id()
      if trace_id then
        span.trace_id = trace_id
      end
      exported[#exported + 1] = span
    end)
    return exported
  end

  return plugin
end

return _M
