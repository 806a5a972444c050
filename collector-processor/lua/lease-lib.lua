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

-- Expired leases of the customer give back what they hold (at most `max` per call, oldest first) — except a
-- lease granted to hold on lapse (hl = 1, the SDK's: it releases what it does not use, idle or stopping):
-- its holder stopped without a word (SIGKILL, cut off), and calls it took may have run whose spans never
-- come. What it holds stays held, counted against the limit until its day and period end, and a late span
-- still settles against it; giving it back let later calls exceed the limit by the lost ones.
local function lease_reap(P, now, max)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'lz', '-inf', now, 'LIMIT', 0, max)
  for _, id in ipairs(ids) do
    local f = lease_fields(P .. 'ls:' .. id)
    if f and f.hl == '1' then
      redis.call('HSET', P .. 'ls:' .. id, 'rel', '1', 'lapsed', '1')
      redis.call('ZREM', P .. 'lz', id)
    elseif f then lease_trim(P, id, f, nil, now, 0)
    else redis.call('ZREM', P .. 'lz', id) end
  end
end

-- Settlement of an export's leased calls: lease_settle works on numbers in memory, lease_flush writes once
-- per lease and counter (an export of many calls of one lease costs a few Redis calls, not a few per call).
local function lease_cache()
  return { leases = {}, order = {} }
end

-- one lease, read once per script: numbers, its keys, and what this export settles
local function lease_load(P, id)
  local f = lease_fields(P .. 'ls:' .. id)
  if not f then return false end
  local L = {
    id = id, key = P .. 'ls:' .. id, inst = f.inst, rel = f.rel == '1',
    day_key = P .. 'd:' .. f.day, period_key = P .. 'p:' .. f.period,
    calls = f.gc and { g = lease_num(f.gc), s = lease_num(f.sc), d = 0 } or nil,
    money = f.gm and { g = lease_num(f.gm), s = lease_num(f.sm), d = 0 } or nil,
    tools = {}, sessions = {},
  }
  for name, v in pairs(f) do
    local kind, sub = string.match(name, '^([ts]):(.*)$')
    if kind == 't' then
      L.tools[sub] = { g = lease_num(v), s = lease_num(f['ts:' .. sub]), d = 0 }
    elseif kind == 's' then
      L.sessions[sub] = { g = lease_num(v), s = lease_num(f['ss:' .. sub]), d = 0, key = f['sk:' .. sub] }
    end
  end
  return L
end

local function lease_take(a, amount)
  if not a then return end
  local t = math.min(amount, a.g - a.s - a.d)
  if t > 0 then a.d = a.d + t end
end

-- Settles the calls of one export taken from one lease (aggregated by the processor: `calls` calls, `money`
-- nano-units reserved, calls by tool, money by session): their reservation leaves the lease and the totals;
-- the caller then counts each call at its real price like any other, so a leased call is counted once. Each
-- allowance gives at most what it still holds. Returns true when the lease (of this holder) covered them.
local function lease_settle(P, cache, id, inst, calls, money, tools, sessions)
  local L = cache.leases[id]
  if L == nil then
    L = lease_load(P, id)
    cache.leases[id] = L
    if L then cache.order[#cache.order + 1] = L end
  end
  if not L or L.inst ~= inst then return false end
  lease_take(L.calls, calls)
  lease_take(L.money, money)
  for tool, n in pairs(tools) do lease_take(L.tools[tool], n) end
  for sid, m in pairs(sessions) do lease_take(L.sessions[sid], m) end
  return true
end

local function lease_flush(P, cache)
  for _, L in ipairs(cache.order) do
    local holds = false
    local function write(a, sfield, counter_key, total_field)
      if a.d > 0 then
        redis.call('HINCRBY', L.key, sfield, lease_int(a.d))
        redis.call('HINCRBY', counter_key, total_field, lease_int(-a.d))
      end
      if a.s + a.d < a.g then holds = true end
    end
    if L.calls then write(L.calls, 'sc', L.day_key, 'lr') end
    if L.money then write(L.money, 'sm', L.period_key, 'lrm') end
    for tool, a in pairs(L.tools) do write(a, 'ts:' .. tool, L.period_key, 'lrc:' .. tool) end
    for sid, a in pairs(L.sessions) do write(a, 'ss:' .. sid, a.key, 'lrm') end
    if L.rel and not holds then
      -- a released lease whose calls are all settled holds nothing more: it goes now, not at its expiry
      redis.call('DEL', L.key)
      redis.call('ZREM', P .. 'lz', L.id)
    end
  end
end
