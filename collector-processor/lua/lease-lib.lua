-- lease-lib.lua: quota leases (reserve, then settle). Prepended to enforce.lua and lease.lua when they are
-- loaded (src/enforcement/lua.ts), so every lease step runs inside the customer's one atomic script.
--
-- P is the customer's key prefix `tg:{product:customer}:`; every key below carries the customer's hash tag,
-- so the scripts run unchanged on Redis Cluster (one slot per customer).
--
-- P..'ls:'..id (hash), one lease: inst (holder's service.instance.id), day, period, exp (ms),
--   gc/sc  calls granted/settled (present only when a calls-per-day limit applied at grant),
--   gm/sm  money granted/settled, nano (only when a spend-per-period limit applied),
--   t:<tool>/ts:<tool>  calls of a tool granted/settled (tools with a per-tool limit),
--   s:<sid>/ss:<sid>/sk:<sid>  money of a session granted/settled, and the session's counter key.
-- P..'lz' (sorted set): lease id -> expiry ms.
-- What leases hold back (granted - settled) is totalled next to the counters it is held back from:
--   day hash 'lr' (calls), period hash 'lrm' (money), period hash 'lrc:<tool>', session hash 'lrm'.
-- A limit check is `counted + held back > limit`: a reservation is a promise, so nobody else may spend it.
--
-- Amounts are cumulative over a lease's life and only grow; the holder may take granted - consumed.
-- Money is integer nano-units (exact in Lua numbers below 2^53; the processor refuses larger amounts).

local function lease_int(x) return string.format('%d', x) end
local function lease_num(v) return tonumber(v or '0') or 0 end

local function lease_fields(key)
  local h = redis.call('HGETALL', key)
  if #h == 0 then return nil end
  local f = {}
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  return f
end

-- Whether a lease still holds anything back (granted > settled in some allowance).
local function lease_holds(f)
  if f.gc and lease_num(f.sc) < lease_num(f.gc) then return true end
  if f.gm and lease_num(f.sm) < lease_num(f.gm) then return true end
  for name, v in pairs(f) do
    local kind, sub = string.match(name, '^([ts]):(.*)$')
    if kind and lease_num(f[kind .. 's:' .. sub]) < lease_num(v) then return true end
  end
  return false
end

-- Gives back what a lease holds beyond `keep` (what its holder consumed and has not settled yet: those calls
-- happened, their spans are on their way). keep = nil gives back everything (expiry). The lease is deleted
-- once nothing is held; otherwise it lives `grace_ms` longer so the spans in flight still settle against it.
local function lease_trim(P, id, f, keep, now, grace_ms)
  local key = P .. 'ls:' .. id
  local day_key, period_key = P .. 'd:' .. f.day, P .. 'p:' .. f.period
  local held = 0
  local function shrink(gfield, sfield, kept, counter_key, total_field)
    local g, s = lease_num(f[gfield]), lease_num(f[sfield])
    local target = s
    if kept and kept > s then target = math.min(kept, g) end
    if g > target then
      redis.call('HINCRBY', counter_key, total_field, lease_int(target - g))
      redis.call('HSET', key, gfield, lease_int(target))
    end
    held = held + (target - s)
  end
  if f.gc then shrink('gc', 'sc', keep and keep.calls, day_key, 'lr') end
  if f.gm then shrink('gm', 'sm', keep and keep.money, period_key, 'lrm') end
  for name, _ in pairs(f) do
    local kind, sub = string.match(name, '^([ts]):(.*)$')
    if kind == 't' then
      shrink(name, 'ts:' .. sub, keep and keep.tools[sub], period_key, 'lrc:' .. sub)
    elseif kind == 's' then
      shrink(name, 'ss:' .. sub, keep and keep.sessions[sub], f['sk:' .. sub], 'lrm')
    end
  end
  if held <= 0 or grace_ms <= 0 then
    if held > 0 then
      -- expired with calls unsettled: give those back too (a late span is counted as a call without a lease)
      return lease_trim(P, id, lease_fields(key), nil, now, -1)
    end
    redis.call('DEL', key)
    redis.call('ZREM', P .. 'lz', id)
  else
    -- released (rel = 1): it can no longer be renewed; it goes once its last call is settled
    redis.call('HSET', key, 'exp', now + grace_ms, 'rel', '1')
    redis.call('ZADD', P .. 'lz', now + grace_ms, id)
  end
end

-- Expired leases of the customer give back what they hold (at most `max` per call, oldest first).
local function lease_reap(P, now, max)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'lz', '-inf', now, 'LIMIT', 0, max)
  for _, id in ipairs(ids) do
    local f = lease_fields(P .. 'ls:' .. id)
    if f then lease_trim(P, id, f, nil, now, 0) else redis.call('ZREM', P .. 'lz', id) end
  end
end

-- Settlement of an export's leased calls: lease_settle works in memory, lease_flush writes once per key and
-- field (an export of many calls of one lease costs a few Redis calls, not a few per call).
local function lease_cache()
  return { leases = {}, writes = {}, order = {} }
end

local function lease_add(cache, key, field, d)
  local w = cache.writes[key]
  if not w then
    w = {}
    cache.writes[key] = w
    cache.order[#cache.order + 1] = key
  end
  w[field] = (w[field] or 0) + d
end

-- Settles one call taken from a lease: its reservation leaves the lease and the totals; the caller then
-- counts the call at its real price like any other, so a leased call is counted once. Returns true when the
-- lease (of this holder) covered the call.
local function lease_settle(P, cache, id, inst, tool, sid, reserved)
  local f = cache.leases[id]
  if f == nil then
    f = lease_fields(P .. 'ls:' .. id) or false
    cache.leases[id] = f
  end
  if not f or f.inst ~= inst then return false end
  local key = P .. 'ls:' .. id
  local function take(gfield, sfield, amount, counter_key, total_field)
    local g, s = lease_num(f[gfield]), lease_num(f[sfield])
    local t = math.min(amount, g - s)
    if t > 0 then
      f[sfield] = lease_int(s + t)
      lease_add(cache, key, sfield, t)
      lease_add(cache, counter_key, total_field, -t)
    end
  end
  if f.gc then take('gc', 'sc', 1, P .. 'd:' .. f.day, 'lr') end
  if f.gm then take('gm', 'sm', reserved, P .. 'p:' .. f.period, 'lrm') end
  if f['t:' .. tool] then take('t:' .. tool, 'ts:' .. tool, 1, P .. 'p:' .. f.period, 'lrc:' .. tool) end
  if sid ~= '' and f['s:' .. sid] then take('s:' .. sid, 'ss:' .. sid, reserved, f['sk:' .. sid], 'lrm') end
  return true
end

local function lease_flush(P, cache)
  for _, key in ipairs(cache.order) do
    for field, d in pairs(cache.writes[key]) do
      if d ~= 0 then redis.call('HINCRBY', key, field, lease_int(d)) end
    end
  end
  for id, f in pairs(cache.leases) do
    if f and f.rel == '1' and not lease_holds(f) then
      -- a released lease whose calls are all settled holds nothing more: it goes now, not at its expiry
      redis.call('DEL', P .. 'ls:' .. id)
      redis.call('ZREM', P .. 'lz', id)
    end
  end
end
