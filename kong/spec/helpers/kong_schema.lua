-- A minimal, faithful stand-in for the part of Kong's schema DSL (kong/db/schema/init.lua and
-- kong/db/schema/typedefs.lua) that tollgate's schema.lua uses: field types string, integer,
-- number, boolean, array, set, record; attributes required, default, between, gt, len_min,
-- one_of, match, elements, fields, custom_validator, referenceable, encrypted; entity checks
-- custom_entity_check. Defaults are filled before validation, as Kong's process_auto_fields
-- does; nested records that are absent are built from their defaults; error tables are nested
-- by field name like Kong's. Anything else in a schema is an error here, so a schema that uses
-- a feature this stand-in does not know fails loudly instead of passing untested.

local _M = {}

local KNOWN_ATTRS = {
  type = true, required = true, default = true, between = true, gt = true, len_min = true,
  len_max = true, one_of = true, match = true, elements = true, fields = true,
  custom_validator = true, referenceable = true, encrypted = true, description = true,
}

local function deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    out[k] = deep_copy(x)
  end
  return out
end

-- Schema.define: a typedef is a field table that, when called with overrides, returns a copy
-- with the overrides applied (kong/db/schema/init.lua `Schema.define`).
local function define(tbl)
  return setmetatable(tbl, {
    __call = function(t, overrides)
      local copy = deep_copy(t)
      for k, v in pairs(overrides or {}) do
        copy[k] = v
      end
      return copy
    end,
  })
end

_M.define = define

-- kong/tools/utils.lua validate_header_name
local function validate_header_name(name)
  if name:match("^[a-zA-Z0-9%-_]+$") then
    return true
  end
  return nil, "bad header name '" .. name .. "', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
end

-- kong's validate_host via utils.normalize_ip: a hostname or an IPv4/IPv6 address, no port
local function validate_host(host)
  if host:match("^%d+%.%d+%.%d+%.%d+:%d+$") or host:match("^[%w%.%-]+:%d+$") then
    return nil, "must not have a port"
  end
  if host:match("^%d+%.%d+%.%d+%.%d+$") then
    for octet in host:gmatch("%d+") do
      if tonumber(octet) > 255 then
        return nil, "invalid value: " .. host
      end
    end
    return true
  end
  if host:match("^%[?[%x:]+%]?$") and host:find(":", 1, true) then
    return true
  end
  if host:match("^[%w][%w%.%-]*$") and not host:find("..", 1, true) then
    return true
  end
  return nil, "invalid value: " .. host
end

local HTTP_PROTOCOLS = { "grpc", "grpcs", "http", "https" }

_M.typedefs = {
  host = define { type = "string", custom_validator = validate_host },
  port = define { type = "integer", between = { 0, 65535 } },
  timeout = define { type = "integer", between = { 0, math.pow(2, 31) - 2 } },
  header_name = define { type = "string", custom_validator = validate_header_name },
  protocols_http = define {
    type = "set", required = true, default = HTTP_PROTOCOLS,
    elements = { type = "string", one_of = HTTP_PROTOCOLS },
  },
}
setmetatable(_M.typedefs, {
  __index = function(_, k)
    error("schema typedef error: definition " .. k .. " does not exist", 2)
  end,
})

--- Makes `require "kong.db.schema.typedefs"` resolve to the stand-in.
function _M.install()
  package.loaded["kong.db.schema.typedefs"] = _M.typedefs
end

local function is_sequence(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n == #t
end

local validate_field

local function validate_record(fields, value)
  local errs, out = nil, {}
  local known = {}
  for _, entry in ipairs(fields) do
    local name, field = next(entry)
    known[name] = true
    local v, err = validate_field(field, value[name])
    if err then
      errs = errs or {}
      errs[name] = err
    end
    out[name] = v
  end
  for name in pairs(value) do
    if not known[name] then
      errs = errs or {}
      errs[name] = "unknown field"
    end
  end
  return out, errs
end

function validate_field(field, value)
  for attr in pairs(field) do
    if not KNOWN_ATTRS[attr] then
      error("kong_schema stand-in does not implement field attribute '" .. attr .. "'")
    end
  end
  if value == nil then
    if field.default ~= nil then
      value = deep_copy(field.default)
    elseif field.type == "record" and field.required then
      value = {}
    end
  end
  if value == nil then
    if field.required then
      return nil, "required field missing"
    end
    return nil
  end

  local t = field.type
  if t == "string" then
    if type(value) ~= "string" then
      return nil, "expected a string"
    end
    if field.referenceable ~= nil and type(field.referenceable) ~= "boolean" then
      error("referenceable must be a boolean")
    end
  elseif t == "integer" then
    if type(value) ~= "number" or value ~= math.floor(value) then
      return nil, "expected an integer"
    end
  elseif t == "number" then
    if type(value) ~= "number" then
      return nil, "expected a number"
    end
  elseif t == "boolean" then
    if type(value) ~= "boolean" then
      return nil, "expected a boolean"
    end
  elseif t == "array" or t == "set" then
    if type(value) ~= "table" or not is_sequence(value) then
      return nil, "expected " .. (t == "set" and "a set" or "an array")
    end
    local errs, out = nil, {}
    for i, el in ipairs(value) do
      local v, err = validate_field(field.elements, el)
      if err then
        errs = errs or {}
        errs[i] = err
      end
      out[i] = v
    end
    if errs then
      return nil, errs
    end
    value = out
  elseif t == "record" then
    if type(value) ~= "table" then
      return nil, "expected a record"
    end
    local out, errs = validate_record(field.fields, value)
    if errs then
      return nil, errs
    end
    value = out
  else
    error("kong_schema stand-in does not implement type '" .. tostring(t) .. "'")
  end

  if field.between and (value < field.between[1] or value > field.between[2]) then
    return nil, "value should be between " .. field.between[1] .. " and " .. field.between[2]
  end
  if field.gt and not (value > field.gt) then
    return nil, "value must be greater than " .. field.gt
  end
  if field.len_min and #value < field.len_min then
    return nil, "length must be at least " .. field.len_min
  end
  if field.len_max and #value > field.len_max then
    return nil, "length must be at most " .. field.len_max
  end
  if field.one_of then
    local ok = false
    for _, allowed in ipairs(field.one_of) do
      if value == allowed then
        ok = true
      end
    end
    if not ok then
      return nil, "expected one of: " .. table.concat(field.one_of, ", ")
    end
  end
  if field.match and not value:match(field.match) then
    return nil, "invalid value: " .. value
  end
  if field.custom_validator then
    local ok, err = field.custom_validator(value)
    if not ok then
      return nil, err
    end
  end
  return value
end

--- Validates a plugin entity ({ config = {...}, protocols = ... }) against a plugin schema.
-- Returns the entity with defaults filled, or nil and a nested error table.
function _M.validate(schema, entity)
  assert(type(schema.name) == "string", "plugin schema needs a name")
  local out, errs = validate_record(schema.fields, entity or {})
  if errs then
    return nil, errs
  end
  for _, check in ipairs(schema.entity_checks or {}) do
    local kind, spec = next(check)
    if kind ~= "custom_entity_check" then
      error("kong_schema stand-in does not implement entity check '" .. kind .. "'")
    end
    local ok, err = spec.fn(out)
    if not ok then
      return nil, { ["@entity"] = { err } }
    end
  end
  return out
end

--- Just the config record with defaults, for harnesses that build a plugin conf.
function _M.config(schema, config)
  local entity, errs = _M.validate(schema, { config = config })
  if not entity then
    return nil, errs
  end
  return entity.config
end

return _M
