-- What Kong's opentelemetry plugin would send for a list of spans, as OTLP/JSON
-- (ExportTraceServiceRequest, proto3 JSON mapping: camelCase names, hex ids, 64-bit integers as
-- strings, enums as numbers). Mirrors kong/observability/otlp/init.lua (and the older
-- kong/plugins/opentelemetry/otlp.lua):
--   - resource attributes service.name = "kong", service.instance.id = node id,
--     service.version = Kong version, merged with the plugin's resource_attributes;
--   - one scope, name "kong-internal", version "0.1.0";
--   - attribute types: `http.status_code` is an int_value, every other Lua number a
--     double_value, strings string_value, booleans bool_value;
--   - trace ids padded/truncated to 16 bytes, parent_span_id "" for the root, kind from the span,
--     status only when the span has one.

local cjson = require("cjson.safe").new()

local _M = {}

local KEY_TO_ATTRIBUTE_TYPES = { ["http.status_code"] = "int_value" }
local TYPE_TO_ATTRIBUTE_TYPES = { string = "string_value", number = "double_value", boolean = "bool_value" }
local JSON_NAMES = { string_value = "stringValue", double_value = "doubleValue",
                     int_value = "intValue", bool_value = "boolValue" }

local function to_hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function fit(id, len)
  if #id > len then
    return id:sub(-len)
  end
  return string.rep("\0", len - #id) .. id
end

local function int_string(n)
  return string.format("%d", n)
end

local function transform_attributes(attrs)
  local keys = {}
  for k in pairs(attrs) do
    keys[#keys + 1] = k
  end
  table.sort(keys) -- Kong's order is pairs() order; sorted here so fixtures diff cleanly
  local out = {}
  for _, k in ipairs(keys) do
    local v = attrs[k]
    local kind = KEY_TO_ATTRIBUTE_TYPES[k] or TYPE_TO_ATTRIBUTE_TYPES[type(v)]
    local value = {}
    if kind == "int_value" then
      value.intValue = int_string(v)
    elseif kind then
      value[JSON_NAMES[kind]] = v
    end
    out[#out + 1] = { key = k, value = value }
  end
  return out
end

_M.transform_attributes = transform_attributes

function _M.transform_span(span)
  local out = {
    traceId = to_hex(fit(span.trace_id, 16)),
    spanId = to_hex(span.span_id),
    parentSpanId = span.parent_id and to_hex(fit(span.parent_id, 8)) or "",
    name = span.name,
    kind = span.kind or 0,
    startTimeUnixNano = int_string(span.start_time_ns),
    endTimeUnixNano = int_string(span.end_time_ns),
    attributes = span.attributes and transform_attributes(span.attributes) or nil,
  }
  if span.status then
    out.status = { code = span.status }
  end
  return out
end

--- encode_traces(spans, node): node = { id, version, resource_attributes? } -> Lua table
function _M.encode_traces(spans, node)
  local resource = {
    ["service.name"] = "kong",
    ["service.instance.id"] = node.id,
    ["service.version"] = node.version,
  }
  for k, v in pairs(node.resource_attributes or {}) do
    resource[k] = v
  end
  local pb_spans = {}
  for i, span in ipairs(spans) do
    pb_spans[i] = _M.transform_span(span)
  end
  return {
    resourceSpans = { {
      resource = { attributes = transform_attributes(resource) },
      scopeSpans = { {
        scope = { name = "kong-internal", version = "0.1.0" },
        spans = pb_spans,
      } },
    } },
  }
end

function _M.encode_json(doc)
  return cjson.encode(doc)
end

return _M
