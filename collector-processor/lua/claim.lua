-- claim.lua: dedup and usage positions for one customer's calls in one export (atomic).
--
-- KEYS: the distinct dedup-day hashes and period hashes of this customer that the calls touch (all share
--       the customer's hash tag, so the script runs unchanged on Redis Cluster).
-- ARGV: token, dedup_ttl_seconds, period_ttl_seconds, n, then
--       ids: the n calls' event ids, concatenated;
--       meta: 4 bytes per call, each below 128 (7 bits, so the argument is ASCII): the length of the
--             call's event id (1..127), then the index of its context (0-based, 3 × 7 bits, high first);
--       contexts: one line per distinct context, in index order: "dedup_key_index period_key_index counts
--             tool" (space-separated; counts is "1" when the call counts toward usage; the tool name comes
--             last and may itself contain spaces, never a control character);
--       then m, the number of usage quantities priced in graduated tiers, and one argument with a line for
--       each: "call_index quantity line" (call_index 0-based; quantity a whole number in the line's counting
--       unit: whole units, or micro-units for a fractional line; the line name has no spaces)
-- Returns 3 integers per call: status (0 new, 1 claimed before under this same token, 2 duplicate),
--       tool ordinal, plan ordinal (1-based positions among counted calls in the period; 0 if not counted);
--       then one integer per tiered quantity: the customer's quantity of that line on that tool in the period
--       before this call (0 when the call is not counted or is a duplicate).
--
-- A claim stores "token|tool_ord|plan_ord[|before,before...]". The token is the id of the spool record that holds
-- the call durably, so a replay of that record after a crash gets its own positions back instead of being
-- mistaken for a duplicate (which would bill the call zero times).
--
-- Cost: Redis is called a handful of times per key, not per call: claims are read with one HMGET and
-- written with one HSET per dedup hash, and counters are read once and written once per period hash.
-- Per call the script cuts one string (the event id) and reads four bytes: the calls of an export share
-- a few contexts (day, period, tool), which are parsed once each. Lua's unpack gives at most 8,000 values
-- (LUAI_MAXCSTACK) while an export may hold far more calls of one customer (an OTel Collector's batch
-- processor sends 8,192 spans by default), so long lists reach Redis in slices of SLICE arguments.
local token = ARGV[1]
local dedup_ttl = tonumber(ARGV[2])
local period_ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local SLICE = 2000 -- arguments per HMGET / HSET call; even, so that no field is parted from its value

-- 0. unpack the calls
local ctx_dk, ctx_pk, ctx_counts, ctx_tool = {}, {}, {}, {}
local c = 0
for dk, pk, cnt, tool in string.gmatch(ARGV[7], '(%d+) (%d+) ([01]) ([^\n]*)') do
  ctx_dk[c], ctx_pk[c], ctx_counts[c], ctx_tool[c] = tonumber(dk), tonumber(pk), cnt == '1', tool
  c = c + 1
end
local id_text, meta = ARGV[5], ARGV[6]
if #meta ~= 4 * n then
  return redis.error_reply('claim.lua: ' .. (#meta / 4) .. ' calls read, ' .. n .. ' announced')
end
local ids, dks, pks, counts, tools = {}, {}, {}, {}, {}
local at = 1
local byte, sub = string.byte, string.sub
for i = 0, n - 1 do
  local len, k1, k2, k3 = byte(meta, 4 * i + 1, 4 * i + 4)
  local k = (k1 * 128 + k2) * 128 + k3
  if k >= c then return redis.error_reply('claim.lua: call ' .. i .. ' has context ' .. k .. ' of ' .. c) end
  ids[i] = sub(id_text, at, at + len - 1)
  at = at + len
  dks[i], pks[i], counts[i], tools[i] = ctx_dk[k], ctx_pk[k], ctx_counts[k], ctx_tool[k]
end
if at - 1 ~= #id_text then
  return redis.error_reply('claim.lua: ' .. (at - 1) .. ' bytes of event ids read, ' .. #id_text .. ' sent')
end

local m = tonumber(ARGV[8] or '0')
local tiered = {} -- call index -> list of { quantity, line } in argument order
local slots = {} -- line j -> { call index, place in tiered[call index] } (where its position is answered)
local j = 0
for ci, q, line in string.gmatch(ARGV[9] or '', '(%d+) (%d+) (%S+)') do
  ci = tonumber(ci)
  local list = tiered[ci]
  if not list then
    list = {}
    tiered[ci] = list
  end
  list[#list + 1] = { tonumber(q), line }
  slots[j] = { ci, #list }
  j = j + 1
end
if j ~= m then return redis.error_reply('claim.lua: ' .. j .. ' tiered quantities read, ' .. m .. ' announced') end
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
  for from = 1, #fields, SLICE do
    local to = math.min(from + SLICE - 1, #fields)
    local values = redis.call('HMGET', KEYS[k], unpack(fields, from, to))
    for j = from, to do prev[list[j]] = values[j - from + 1] end
  end
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
local new_calls = {} -- period key index -> calls claimed new in it (its 'calls' counter, added once at the end)
local claim_head = token .. '|'
local uncounted_claim = claim_head .. '0|0' -- a new call that does not count toward usage: no positions
local format = string.format

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
    new_calls[pk] = (new_calls[pk] or 0) + 1
    local claim_tail = ''
    local counted = counts[i]
    if counted then
      local tool = tools[i]
      local tf = tool_fields[tool]
      if not tf then
        tf = 't:' .. tool
        tool_fields[tool] = tf
      end
      -- add(pk, 'n', 1) + 1 and add(pk, tf, 1) + 1, written out: this runs for every new counted call
      local v = values[pk]
      if not v then
        v = {}
        values[pk] = v
      end
      plan_ord = v.n
      if plan_ord == nil then plan_ord = tonumber(redis.call('HGET', KEYS[pk], 'n') or '0') end
      plan_ord = plan_ord + 1
      v.n = plan_ord
      tool_ord = v[tf]
      if tool_ord == nil then tool_ord = tonumber(redis.call('HGET', KEYS[pk], tf) or '0') end
      tool_ord = tool_ord + 1
      v[tf] = tool_ord
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
    -- '%d', not '..': Lua turns a number into text with '%.14g' (slower, and in exponent form past 10^14)
    w[wl + 2] = counted and format('%s%d|%d%s', claim_head, tool_ord, plan_ord, claim_tail) or uncounted_claim
    wn[k] = wl + 2
    out[o + 1], out[o + 2], out[o + 3] = 0, tool_ord, plan_ord
  end
  o = o + 3
end

-- 3. write claims and counters back, one command per key
for pk, calls in pairs(new_calls) do add(pk, 'calls', calls) end
local function hset(key, args)
  for from = 1, #args, SLICE do redis.call('HSET', key, unpack(args, from, math.min(from + SLICE - 1, #args))) end
end
for k, w in pairs(writes) do
  hset(KEYS[k], w)
  redis.call('EXPIRE', KEYS[k], dedup_ttl)
end
for pk, v in pairs(values) do
  local args = {}
  for field, value in pairs(v) do
    args[#args + 1] = field
    args[#args + 1] = string.format('%.0f', value)
  end
  hset(KEYS[pk], args)
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
