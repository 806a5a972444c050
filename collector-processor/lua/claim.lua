-- claim.lua: dedup and usage positions for one customer's calls in one export (atomic).
--
-- KEYS: the distinct dedup-day hashes and period hashes of this customer that the calls touch (all share
--       the customer's hash tag, so the script runs unchanged on Redis Cluster).
-- ARGV: token, dedup_ttl_seconds, period_ttl_seconds, n, then the n calls in one argument, a line each:
--       "event_id dedup_key_index period_key_index counts tool" (space-separated; counts is "1" when the
--       call counts toward usage; the tool name comes last and may itself contain spaces, never a control
--       character), then m, the number of usage quantities priced in graduated tiers, and one argument for each:
--       "call_index quantity line" (call_index 0-based; quantity a whole number in the line's counting unit:
--       whole units, or micro-units for a fractional line; the line name has no spaces)
-- Returns 3 integers per call: status (0 new, 1 claimed before under this same token, 2 duplicate),
--       tool ordinal, plan ordinal (1-based positions among counted calls in the period; 0 if not counted);
--       then one integer per tiered quantity: the customer's quantity of that line on that tool in the period
--       before this call (0 when the call is not counted or is a duplicate).
--
-- A claim stores "token|tool_ordinal|plan_ordinal[|before,before...]". The token is the id of the spool record that holds
-- the call durably, so a replay of that record after a crash gets its own positions back instead of being
-- mistaken for a duplicate (which would bill the call zero times).
--
-- Cost: Redis is called a handful of times per key, not per call: claims are read with one HMGET and
-- written with one HSET per dedup hash, and counters are read once and written once per period hash.
local token = ARGV[1]
local dedup_ttl = tonumber(ARGV[2])
local period_ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

-- 0. unpack the calls (one argument for all of them: one string for the client to send and Redis to
--    copy into Lua, instead of one per call)
local ids, dks, pks, counts, tools = {}, {}, {}, {}, {}
local key_index = {} -- key index text -> number (an export's calls share one or two)
local i = 0
for id, dk, pk, c, tool in string.gmatch(ARGV[5], '([^ \n]+) (%d+) (%d+) ([01]) ([^\n]*)') do
  local dkn, pkn = key_index[dk], key_index[pk]
  if not dkn then
    dkn = tonumber(dk)
    key_index[dk] = dkn
  end
  if not pkn then
    pkn = tonumber(pk)
    key_index[pk] = pkn
  end
  ids[i], dks[i], pks[i], counts[i], tools[i] = id, dkn, pkn, c, tool
  i = i + 1
end
if i ~= n then return redis.error_reply('claim.lua: ' .. i .. ' calls read, ' .. n .. ' announced') end

local m = tonumber(ARGV[6] or '0')
local tiered = {} -- call index -> list of { quantity, line } in argument order
local slots = {} -- argument j -> { call index, place in tiered[call index] } (where its position is answered)
for j = 0, m - 1 do
  local ci, q, line = string.match(ARGV[7 + j], '^(%d+) (%d+) (%S+)$')
  ci = tonumber(ci)
  local list = tiered[ci]
  if not list then
    list = {}
    tiered[ci] = list
  end
  list[#list + 1] = { tonumber(q), line }
  slots[j] = { ci, #list }
end
local befores = {} -- call index -> list of positions (same order as tiered[i])

-- 1. read the existing claims of every call, one HMGET per dedup hash
local ids_by_key = {}
for i = 0, n - 1 do
  local k = dks[i]
  local list = ids_by_key[k]
  if not list then
    list = {}
    ids_by_key[k] = list
  end
  list[#list + 1] = i
end
local prev = {}
for k, list in pairs(ids_by_key) do
  local fields = {}
  for j = 1, #list do fields[j] = ids[list[j]] end
  local values = redis.call('HMGET', KEYS[k], unpack(fields))
  for j = 1, #list do prev[list[j]] = values[j] end
end

-- 2. decide each call, counting in Lua tables
local values = {} -- period key index -> { field -> value: read from Redis once, then advanced here }
-- adds q to a counter and returns its value before
local function add(pk, field, q)
  local v = values[pk]
  if not v then
    v = {}
    values[pk] = v
  end
  local before = v[field]
  if before == nil then before = tonumber(redis.call('HGET', KEYS[pk], field) or '0') end
  v[field] = before + q
  return before
end
local tool_fields = {} -- tool -> 't:' .. tool (built once per tool, not per call)

local out, o = {}, 0
local writes = {} -- dedup key index -> { field, value, ... }
local wn = {} -- dedup key index -> length of writes[k]
for i = 0, n - 1 do
  local p = prev[i]
  if p then
    local t, tool_ord, plan_ord, tail = string.match(p, '^([^|]*)|(%d+)|(%d+)|?([%d,]*)$')
    if t == token then
      out[o + 1], out[o + 2], out[o + 3] = 1, tonumber(tool_ord), tonumber(plan_ord)
      if tiered[i] then
        local list = {}
        for b in string.gmatch(tail, '%d+') do list[#list + 1] = tonumber(b) end
        befores[i] = list
      end
    else
      out[o + 1], out[o + 2], out[o + 3] = 2, 0, 0
    end
  else
    local pk = pks[i]
    local tool_ord, plan_ord = 0, 0
    add(pk, 'calls', 1)
    local claim_tail = ''
    if counts[i] == '1' then
      local tool = tools[i]
      local tf = tool_fields[tool]
      if not tf then
        tf = 't:' .. tool
        tool_fields[tool] = tf
      end
      plan_ord = add(pk, 'n', 1) + 1
      tool_ord = add(pk, tf, 1) + 1
      local list = tiered[i]
      if list then
        local bs = {}
        for j = 1, #list do
          bs[j] = add(pk, 'u:' .. list[j][2] .. ':' .. tool, list[j][1])
        end
        befores[i] = bs
        local texts = {}
        for j = 1, #bs do texts[j] = string.format('%.0f', bs[j]) end
        claim_tail = '|' .. table.concat(texts, ',')
      end
    end
    local k = dks[i]
    local w = writes[k]
    local wl = wn[k] or 0
    if not w then
      w = {}
      writes[k] = w
    end
    w[wl + 1] = ids[i]
    w[wl + 2] = token .. '|' .. tool_ord .. '|' .. plan_ord .. claim_tail
    wn[k] = wl + 2
    out[o + 1], out[o + 2], out[o + 3] = 0, tool_ord, plan_ord
  end
  o = o + 3
end

-- 3. write claims and counters back, one command per key
for k, w in pairs(writes) do
  redis.call('HSET', KEYS[k], unpack(w))
  redis.call('EXPIRE', KEYS[k], dedup_ttl)
end
for pk, v in pairs(values) do
  local args = {}
  for field, value in pairs(v) do
    args[#args + 1] = field
    args[#args + 1] = string.format('%.0f', value)
  end
  redis.call('HSET', KEYS[pk], unpack(args))
  redis.call('EXPIRE', KEYS[pk], period_ttl)
end
-- the positions of the tiered quantities, in argument order
for j = 0, m - 1 do
  local slot = slots[j]
  local list = befores[slot[1]]
  o = o + 1
  out[o] = (list and list[slot[2]]) or 0
end
return out
