-- Redis access for the enforcement state: one HMGET of the customer's state hash per cache miss.
--
-- Driver: `resty.redis` (what Kong bundles); Debian's lua-nginx-redis installs the same client as
-- `nginx.redis`, so the require name falls back, and tests can inject a driver.
--
-- Redis Cluster: every field we read lives in one hash, `tg:{product:customer}:state`, so each
-- call is one HMGET on one slot. With `redis_cluster_nodes` the store keeps a per-worker
-- slot -> node map, starts from a seed node and follows MOVED/ASK redirections (at most
-- MAX_REDIRECTS per call); no cross-slot command is ever sent.

local keys = require "kong.plugins.tollgate.keys"

local match = string.match
local tonumber = tonumber
local unpack = unpack or table.unpack
local rawget = rawget
local pcall = pcall
local require = require

local DRIVER_NAMES = { "resty.redis", "nginx.redis" }
local MAX_REDIRECTS = 2
-- after a connection failure, an endpoint is not retried for this long: calls then take the
-- fault_tolerant path at once instead of each waiting for a connect timeout
local BACKOFF_MS = 1000
local KEEPALIVE_IDLE_MS = 60000
local KEEPALIVE_POOL_SIZE = 64

local _M = {
  DRIVER_NAMES = DRIVER_NAMES,
  MAX_REDIRECTS = MAX_REDIRECTS,
  BACKOFF_MS = BACKOFF_MS,
}

--- Loads the first available Redis client module among `names` (default DRIVER_NAMES).
function _M.load_driver(names)
  names = names or DRIVER_NAMES
  local errs = {}
  for i = 1, #names do
    local ok, mod = pcall(require, names[i])
    if ok and type(mod) == "table" and mod.new then
      return mod, names[i]
    end
    errs[#errs + 1] = names[i]
  end
  return nil, "no Redis client module found (tried " .. table.concat(errs, ", ") .. ")"
end

local Store = {}
Store.__index = Store

--- new(conf, opts): opts.driver (module), opts.now_ms (function), opts.null (the driver's null
-- sentinel, ngx.null in nginx).
function _M.new(conf, opts)
  opts = opts or {}
  local driver = opts.driver
  if not driver then
    local err
    driver, err = _M.load_driver()
    if not driver then
      return nil, err
    end
  end
  local nodes = {}
  if conf.redis_cluster_nodes and #conf.redis_cluster_nodes > 0 then
    for i, node in ipairs(conf.redis_cluster_nodes) do
      nodes[i] = { host = node.ip or node.host, port = node.port }
    end
  end
  local password = conf.redis_password
  if password == "" then
    password = nil
  end
  return setmetatable({
    driver = driver,
    -- redis 0.28+ has set_timeouts(); 0.27 (Debian) only set_timeout(), and an unknown method
    -- would be sent to Redis as a command, so look at the module's own table
    has_set_timeouts = rawget(driver, "set_timeouts") ~= nil,
    now_ms = opts.now_ms,
    null = opts.null,
    host = conf.redis_host,
    port = conf.redis_port,
    password = password,
    database = conf.redis_database or 0,
    timeout = conf.redis_timeout_ms,
    cluster = #nodes > 0 and nodes or nil,
    seed = 1,
    slots = {},
    down_until = {},
    pool_suffix = ":" .. (conf.redis_database or 0)
                  .. (password and (":" .. keys.crc16(password) .. "-" .. #password) or ""),
  }, Store)
end

function Store:connect(host, port)
  local addr = host .. ":" .. port
  local now = self.now_ms()
  local down = self.down_until[addr]
  if down and down > now then
    return nil, "redis " .. addr .. " marked down after a recent failure"
  end
  local red = self.driver:new()
  if self.has_set_timeouts then
    red:set_timeouts(self.timeout, self.timeout, self.timeout)
  else
    red:set_timeout(self.timeout)
  end
  local ok, err = red:connect(host, port, { pool = addr .. self.pool_suffix })
  if not ok then
    self.down_until[addr] = now + BACKOFF_MS
    return nil, "redis connect " .. addr .. ": " .. tostring(err)
  end
  local reused = red.get_reused_times and red:get_reused_times() or 0
  if reused == 0 then
    if self.password then
      ok, err = red:auth(self.password)
      if not ok then
        red:close()
        return nil, "redis auth " .. addr .. ": " .. tostring(err)
      end
    end
    if self.database ~= 0 and not self.cluster then
      ok, err = red:select(self.database)
      if not ok then
        red:close()
        return nil, "redis select " .. addr .. ": " .. tostring(err)
      end
    end
  end
  return red, addr
end

function Store:release(red)
  local ok = red:set_keepalive(KEEPALIVE_IDLE_MS, KEEPALIVE_POOL_SIZE)
  if not ok then
    red:close()
  end
end

-- converts the driver's multi-bulk reply into a plain array with nil for missing fields
function Store:values(res, n)
  local out = {}
  for i = 1, n do
    local v = res[i]
    if v ~= nil and v ~= self.null and type(v) == "string" then
      out[i] = v
    end
  end
  return out
end

-- one HMGET against one node; returns res | false, redis_error | nil, socket_error
function Store:hmget_on(host, port, key, fields, asking)
  local red, addr_or_err = self:connect(host, port)
  if not red then
    return nil, addr_or_err
  end
  if asking then
    local ok, err = red:asking()
    if not ok then
      red:close()
      return nil, "redis asking: " .. tostring(err)
    end
  end
  local res, err = red:hmget(key, unpack(fields))
  if res then
    self:release(red)
    return res
  end
  if res == false then
    -- an error reply: the connection is still in a clean state
    self:release(red)
    return false, err
  end
  red:close()
  self.down_until[addr_or_err] = self.now_ms() + BACKOFF_MS
  return nil, "redis " .. addr_or_err .. ": " .. tostring(err)
end

--- HMGET key fields... -> array of values (nil where absent) | nil, err.
function Store:hmget(key, fields)
  if not self.cluster then
    local res, err = self:hmget_on(self.host, self.port, key, fields)
    if not res then
      return nil, err
    end
    return self:values(res, #fields)
  end
  return self:cluster_hmget(key, fields)
end

local function parse_redirect(err)
  if type(err) ~= "string" then
    return nil
  end
  local kind, slot, host, port = match(err, "^(%u+) (%d+) (.+):(%d+)$")
  if kind ~= "MOVED" and kind ~= "ASK" then
    return nil
  end
  return kind, tonumber(slot), host, tonumber(port)
end

_M.parse_redirect = parse_redirect

function Store:cluster_hmget(key, fields)
  local slot = keys.slot(key)
  local nodes = self.cluster
  local target = self.slots[slot]
  local asking = false
  local last_err
  local seed_tries = 0
  local redirects = 0
  while true do
    local host, port
    if target then
      host, port = target.host, target.port
    else
      local seed = nodes[self.seed]
      host, port = seed.host, seed.port
    end
    local res, err = self:hmget_on(host, port, key, fields, asking)
    asking = false
    if res then
      return self:values(res, #fields)
    end
    last_err = err
    if res == false then
      local kind, rslot, rhost, rport = parse_redirect(err)
      if not kind or redirects >= MAX_REDIRECTS then
        return nil, "redis cluster: " .. tostring(err)
      end
      redirects = redirects + 1
      target = { host = rhost, port = rport }
      if kind == "MOVED" then
        self.slots[rslot] = target
      else
        asking = true
      end
    else
      -- socket error: forget the mapping and try the next seed
      self.slots[slot] = nil
      target = nil
      seed_tries = seed_tries + 1
      if seed_tries >= #nodes then
        return nil, last_err
      end
      self.seed = self.seed % #nodes + 1
    end
  end
end

return _M
