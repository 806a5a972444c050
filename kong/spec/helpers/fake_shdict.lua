-- A stand-in for one lua_shared_dict (ngx.shared.DICT) in plain LuaJIT, mirroring the semantics of
-- lua-resty-core's resty/core/shdict.lua over lua-nginx-module's ngx_http_lua_shdict.c for the
-- methods the plugin uses: get, set (nil value deletes), add ("exists" when present), safe_set and
-- safe_add (the same, but never evicting other entries: "no memory" when full), incr (nil,
-- "not found" without init; init (+ init_ttl) when absent; "not a number" on a non-number), delete,
-- expire ("not found" when absent). Values: numbers, strings, booleans. TTLs in seconds against an
-- injected clock (now_ms), 0 or nil = never expires. `capacity` (optional) is a number of entries:
-- a safe_* write of a new entry beyond it fails with "no memory" (nginx counts bytes; entries do here). Each call is atomic, as in nginx (one worker
-- thread at a time takes the dict's mutex).

local _M = {}

function _M.new(now_ms, capacity)
  local data = {}
  local self = {}

  local function size()
    local n = 0
    for k in pairs(data) do
      local e = data[k]
      if not (e.exp and e.exp <= now_ms()) then n = n + 1 end
    end
    return n
  end

  local function live(key)
    local e = data[key]
    if e and e.exp and e.exp <= now_ms() then
      data[key] = nil
      e = nil
    end
    return e
  end

  local function expiry(ttl)
    if ttl and ttl > 0 then
      return now_ms() + ttl * 1000
    end
    return nil
  end

  function self.get(_, key)
    local e = live(key)
    if e then
      return e.value
    end
    return nil
  end

  function self.set(_, key, value, ttl)
    if value == nil then
      data[key] = nil
    else
      data[key] = { value = value, exp = expiry(ttl) }
    end
    return true, nil, false
  end

  function self.add(_, key, value, ttl)
    if live(key) then
      return false, "exists", false
    end
    return self:set(key, value, ttl)
  end

  function self.safe_set(_, key, value, ttl)
    if value ~= nil and not live(key) and capacity and size() >= capacity then
      return false, "no memory", false
    end
    return self:set(key, value, ttl)
  end

  function self.safe_add(_, key, value, ttl)
    if live(key) then
      return false, "exists", false
    end
    return self:safe_set(key, value, ttl)
  end

  function self.incr(_, key, value, init, init_ttl)
    local e = live(key)
    if not e then
      if init == nil then
        return nil, "not found"
      end
      data[key] = { value = init + value, exp = expiry(init_ttl) }
      return init + value
    end
    if type(e.value) ~= "number" then
      return nil, "not a number"
    end
    e.value = e.value + value
    return e.value
  end

  function self.delete(_, key)
    data[key] = nil
  end

  function self.expire(_, key, ttl)
    local e = live(key)
    if not e then
      return nil, "not found"
    end
    e.exp = expiry(ttl)
    return true
  end

  return self
end

return _M
