-- The access-phase decision for one request: reads the customer's enforcement state (through the
-- local cache, else one HMGET), applies kill > throttle precedence, paces throttled scopes with a
-- token bucket. No PDK here: the state fetch and the clock are passed in, so every branch is
-- unit-testable.

local keys = require "kong.plugins.tollgate.keys"
local state = require "kong.plugins.tollgate.state"

local concat = table.concat
local ipairs = ipairs

-- an idle bucket is forgotten after a minute: it would be full again by then anyway for any
-- rate >= 1/60 s, and a fresh bucket starts full
local BUCKET_TTL_MS = 60000

local _M = {
  BUCKET_TTL_MS = BUCKET_TTL_MS,
}

--- Where the state of an identity lives: key, fields (customer, agent?, session?) and the scope
-- of each field.
function _M.location(product, identity)
  local tag = keys.customer_tag(product, identity.customer)
  local fields = { keys.state_field("customer") }
  local scopes = { "customer" }
  if identity.agent then
    fields[#fields + 1] = keys.state_field("agent", identity.agent)
    scopes[#scopes + 1] = "agent"
  end
  if identity.session then
    fields[#fields + 1] = keys.state_field("session", identity.session)
    scopes[#scopes + 1] = "session"
  end
  -- the tools called (a batch may call several): a tool whose calls-per-tool limit is exhausted
  local seen = {}
  for _, tool in ipairs(identity.tools or {}) do
    if not seen[tool] then
      seen[tool] = true
      fields[#fields + 1] = keys.state_field("tool", tool)
      scopes[#scopes + 1] = "tool"
    end
  end
  return { key = keys.state_key(tag), fields = fields, scopes = scopes }
end

--- Reads the decoded states { customer, agent, session } of a location.
-- env: { cache, fetch(key, fields) -> values | nil, err, ttl_ms }
local function read_states(env, loc)
  local cache_key = loc.key .. "\0" .. concat(loc.fields, "\0")
  local states = env.cache and env.cache:get(cache_key)
  if states then
    return states
  end
  local values, err = env.fetch(loc.key, loc.fields)
  if not values then
    return nil, err
  end
  states = {}
  for i = 1, #loc.scopes do
    local scope, decoded = loc.scopes[i], state.decode(values[i])
    -- several tools share the `tool` scope: a kill of any of them wins, then any other state
    local prev = states[scope]
    if decoded and (not prev or (decoded.action == "kill" and prev.action ~= "kill")) then
      states[scope] = decoded
    end
  end
  if env.cache and env.ttl_ms > 0 then
    env.cache:set(cache_key, states, env.ttl_ms)
  end
  return states
end

_M.read_states = read_states

--- check(env, conf, identity, cost) -> decision
-- env: { now_ms(), cache, buckets, fetch, ttl_ms }; identity: { customer, agent?, session?, tools? };
-- cost: number of tools/call in the request (a batch takes that many tokens).
-- decision.action: "allow" | "kill" | "throttle" | "unavailable"
-- decision.enforcement: the tollgate.enforcement attribute value
function _M.check(env, conf, identity, cost)
  local loc = _M.location(conf.product, identity)
  local states, err = read_states(env, loc)
  if not states then
    if conf.fault_tolerant then
      return { action = "allow", enforcement = "unenforced", error = err }
    end
    return { action = "unavailable", enforcement = "unavailable", reason = "enforcement_unavailable",
             retry_after = 1, error = err }
  end

  local now = env.now_ms()
  local d = state.decide(states, now)
  if d.action == "kill" then
    d.enforcement = "kill"
    return d
  end
  if d.action == "throttle" then
    local bucket_key = loc.key .. "\0" .. d.scope
    local bucket = env.buckets:get(bucket_key)
    local allowed, retry_after
    allowed, retry_after, bucket = state.take(bucket, d.rate, now, nil, cost)
    if bucket then
      env.buckets:set(bucket_key, bucket, BUCKET_TTL_MS)
    end
    if allowed then
      return { action = "allow", enforcement = "paced", reason = d.reason, scope = d.scope }
    end
    d.retry_after = retry_after
    d.enforcement = "throttle"
    return d
  end
  d.enforcement = d.warn and "warn" or "allow"
  d.reason = d.warn and d.warn.reason or nil
  return d
end

return _M
