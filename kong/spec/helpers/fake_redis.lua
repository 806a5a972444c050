-- In-memory stand-in for the resty.redis client surface the store uses (lua-resty-redis 0.27,
-- Debian's nginx.redis): new(), set_timeout(), connect(host, port, opts), get_reused_times(),
-- auth(), select(), hmget(key, ...) returning ngx.null for missing fields, set_keepalive(), close().
-- Like 0.27 it has no set_timeouts(). `down = true` makes connect() fail like a refused socket.

local NULL = require("cjson").null

local _M = {
  hashes = {},
  down = false,
  log = {},
}

local Red = {}
Red.__index = Red

function _M.new()
  return setmetatable({}, Red)
end

function _M.reset()
  _M.hashes = {}
  _M.down = false
  _M.log = {}
end

function _M.hset(key, field, value)
  _M.hashes[key] = _M.hashes[key] or {}
  _M.hashes[key][field] = value
end

function Red:set_timeout(ms)
  self.timeout = ms
end

function Red:connect(host, port, opts)
  _M.log[#_M.log + 1] = { cmd = "connect", host = host, port = port, pool = opts and opts.pool }
  if _M.down then
    return nil, "connection refused"
  end
  self.connected = true
  return 1
end

function Red:get_reused_times()
  return 0
end

function Red:auth(password)
  _M.log[#_M.log + 1] = { cmd = "auth" }
  return password == _M.password and "OK" or false, "WRONGPASS invalid username-password pair"
end

function Red:select(db)
  _M.log[#_M.log + 1] = { cmd = "select", db = db }
  return "OK"
end

function Red:hmget(key, ...)
  assert(self.connected, "hmget on a closed connection")
  local fields = { ... }
  _M.log[#_M.log + 1] = { cmd = "hmget", key = key, fields = fields }
  local h = _M.hashes[key] or {}
  local out = {}
  for i, f in ipairs(fields) do
    local v = h[f]
    out[i] = v == nil and NULL or v
  end
  return out
end

function Red:set_keepalive()
  self.connected = false
  return 1
end

function Red:close()
  self.connected = false
  return 1
end

--- number of HMGETs sent since the last reset
function _M.hmgets()
  local n = 0
  for _, entry in ipairs(_M.log) do
    if entry.cmd == "hmget" then
      n = n + 1
    end
  end
  return n
end

return _M
