-- lease.lua: grant, renew or release one quota lease of one customer (atomic; lease-lib.lua is prepended).
--
-- KEYS[1] period counters (hash)   KEYS[2] enforcement state (hash)   KEYS[3] day counters (hash)
-- KEYS[4..] session counters (hashes) of the sessions asked for, in the order of ARGV's session list
-- ARGV[1] op: grant | release       ARGV[2] now (ms)        ARGV[3] lease id       ARGV[4] 1 = new lease
-- ARGV[5] holder instance id        ARGV[6] ttl (ms)        ARGV[7] day end (ms)   ARGV[8] period end (ms)
-- ARGV[9] day   ARGV[10] period     ARGV[11] spend limit per period  ARGV[12] calls per day
-- ARGV[13] spend per session        (limits: -1 = none)
-- ARGV[14] want calls   ARGV[15] want money   ARGV[16] consumed calls   ARGV[17] consumed money
-- ARGV[18] share of what is left one grant may take (bps)   ARGV[19] lease key TTL (s)
-- ARGV[20] release grace (ms)     ARGV[21] least money worth granting (the known price of the call at hand)
-- ARGV[22] nt, then nt quadruples: tool, limit (-1 none), want calls, consumed calls
-- then ns, then ns triples: session id, want money, consumed money
-- then 1 = hold on lapse (the holder releases what it does not use; what it lets lapse stays held)
-- the last three ARGV belong to credits.lua (credits_lease_headroom): wallet key index, hard stop, overdraft
--
-- Returns: status (ok | released | unknown | foreign | killed), lease id ('' when nothing is limited),
-- expiry ms, calls granted (-1: unlimited), money granted (-1), nt', nt' pairs tool/granted,
-- ns', ns' pairs session/granted, nx, nx quadruples scope/id/reason/until (what is exhausted).
local period_key, state_key, day_key = KEYS[1], KEYS[2], KEYS[3]
local P = string.sub(state_key, 1, #state_key - 5)
local op = ARGV[1]
local now = tonumber(ARGV[2])
local id = ARGV[3]
local is_new = ARGV[4] == '1'
local inst = ARGV[5]
local ttl = tonumber(ARGV[6])
local day_end, period_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local day, period = ARGV[9], ARGV[10]
local spend_limit, day_limit, session_limit = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local want_calls, want_money = tonumber(ARGV[14]), tonumber(ARGV[15])
local consumed_calls, consumed_money = tonumber(ARGV[16]), tonumber(ARGV[17])
local share_bps = tonumber(ARGV[18])
local key_ttl = tonumber(ARGV[19])
local grace = tonumber(ARGV[20])
local min_money = tonumber(ARGV[21])
local nt = tonumber(ARGV[22])
local tools = {}
for j = 0, nt - 1 do
  local b = 23 + j * 4
  tools[#tools + 1] = { tool = ARGV[b], limit = tonumber(ARGV[b + 1]), want = tonumber(ARGV[b + 2]), consumed = tonumber(ARGV[b + 3]) }
end
local sb = 23 + nt * 4
local ns = tonumber(ARGV[sb])
local sessions = {}
for j = 0, ns - 1 do
  local b = sb + 1 + j * 3
  sessions[#sessions + 1] = { sid = ARGV[b], key = KEYS[4 + j], want = tonumber(ARGV[b + 1]), consumed = tonumber(ARGV[b + 2]) }
end
local hold_on_lapse = ARGV[sb + 1 + ns * 3] == '1'

lease_reap(P, now, 64)

local lkey = P .. 'ls:' .. id
local f = nil
if not is_new then
  f = lease_fields(lkey)
  if not f then return { 'unknown', id, 0, -1, -1, 0, 0, 0 } end
  if f.inst ~= inst then return { 'foreign', id, 0, -1, -1, 0, 0, 0 } end
  -- a released lease cannot be renewed or released again (a replay); a lapsed one held on lapse may still be
  -- released by its holder, alive after all (its release had failed): what it did not consume goes back
  if f.rel == '1' and not (op == 'release' and f.lapsed == '1') then return { 'unknown', id, 0, -1, -1, 0, 0, 0 } end
end

if op == 'release' then
  local keep = { calls = consumed_calls, money = consumed_money, tools = {}, sessions = {} }
  for _, t in ipairs(tools) do keep.tools[t.tool] = t.consumed end
  for _, s in ipairs(sessions) do keep.sessions[s.sid] = s.consumed end
  lease_trim(P, id, f, keep, now, grace)
  return { 'released', id, 0, -1, -1, 0, 0, 0 }
end

-- a lease lives within one day and one billing period: a renewal across the boundary starts a new lease
if f and (f.day ~= day or f.period ~= period) then
  lease_trim(P, id, f, nil, now, 0)
  return { 'unknown', id, 0, -1, -1, 0, 0, 0 }
end

local exhausted = {}
local function exhaust(scope, sid, reason, until_ms)
  exhausted[#exhausted + 1] = { scope, sid, reason, until_ms }
end

-- a kill in force for the customer grants nothing
local st = redis.call('HGET', state_key, 'c')
if st then
  local action, reason, until_ms = string.match(st, '^([^|]*)|([^|]*)|([^|]*)|')
  local u = tonumber(until_ms) or 0
  if action == 'kill' and (u == 0 or u > now) then
    if f then lease_trim(P, id, f, { calls = consumed_calls, money = consumed_money, tools = {}, sessions = {} }, now, grace) end
    return { 'killed', id, 0, -1, -1, 0, 0, 1, 'customer', '', reason, u }
  end
end

f = f or { inst = inst, day = day, period = period }
local set = {}
-- grows one allowance toward `want` (what the holder would like left), out of what the limit leaves: at
-- most `share_bps` of it, but at least `min` (one call, or one call's price) while that much is left.
-- What the holder reports as consumed counts up to what was granted: no take outlives the grant, and a
-- report past it (Kong read a take of another worker that overshot and was being undone) would make the
-- allowance look spent and answer "exhausted" while the limit still had room.
local function grow(gfield, sfield, want, consumed, limit, counted, total_key, total_field, min)
  local g, s = lease_num(f[gfield]), lease_num(f[sfield])
  local left = g - math.max(math.min(consumed, g), s)
  local held = lease_num(redis.call('HGET', total_key, total_field))
  local avail = limit - counted - held
  local delta = 0
  if want > left and avail > 0 then
    delta = math.min(want - left, avail, math.max(min, math.floor(avail * share_bps / 10000)))
    -- whole calls: what the holder is left with after the grant is a multiple of `min` (one call, or the price
    -- of the call it asked for). A remainder under one call's price could not be taken by its holder, yet
    -- counted as held: with several instances such remainders added up, and a renewal found less than a call's
    -- price left and answered "exhausted" while the limit still had room (8 instances ran 21 of 23 calls).
    if min > 1 then delta = math.max(0, math.floor((left + delta) / min) * min - left) end
  end
  if delta > 0 then redis.call('HINCRBY', total_key, total_field, lease_int(delta)) end
  g = g + delta
  set[#set + 1] = gfield
  set[#set + 1] = lease_int(g)
  if f[sfield] == nil then
    set[#set + 1] = sfield
    set[#set + 1] = '0'
  end
  f[gfield] = lease_int(g)
  return g, left + delta
end

local limited = false
local gc, gm = -1, -1
if day_limit >= 0 then
  limited = true
  local counted = lease_num(redis.call('HGET', day_key, 'calls'))
  local left
  gc, left = grow('gc', 'sc', want_calls, consumed_calls, day_limit, counted, day_key, 'lr', 1)
  if left < 1 then exhaust('customer', '', 'hard_limit:calls_per_day', day_end) end
end
-- prepaid credits (credits.lua, loaded in front): with a hard stop, the wallet bounds the money leases hold
-- like a spend limit does; the tighter of the two decides
local headroom = credits_lease_headroom(KEYS, ARGV, now)
if spend_limit >= 0 or headroom then
  limited = true
  local counted = lease_num(redis.call('HGET', period_key, 'spend'))
  local limit, base, reason, until_ms = spend_limit, counted, 'hard_limit:spend_per_period', period_end
  if headroom and (spend_limit < 0 or headroom < spend_limit - counted) then
    limit, base, reason, until_ms = headroom, 0, 'credits:exhausted', 0
  end
  local left
  gm, left = grow('gm', 'sm', want_money, consumed_money, limit, base, period_key, 'lrm', min_money)
  if left < min_money then exhaust('customer', '', reason, until_ms) end
end
local tool_out = {}
for _, t in ipairs(tools) do
  if t.limit >= 0 then
    limited = true
    local counted = lease_num(redis.call('HGET', period_key, 'c:' .. t.tool))
    local g, left = grow('t:' .. t.tool, 'ts:' .. t.tool, t.want, t.consumed, t.limit, counted, period_key, 'lrc:' .. t.tool, 1)
    tool_out[#tool_out + 1] = t.tool
    tool_out[#tool_out + 1] = g
    if left < 1 then exhaust('tool', t.tool, 'hard_limit:calls_per_tool', period_end) end
  end
end
local session_out = {}
if session_limit >= 0 then
  for _, s in ipairs(sessions) do
    limited = true
    local counted = lease_num(redis.call('HGET', s.key, 'spend'))
    local g, left = grow('s:' .. s.sid, 'ss:' .. s.sid, s.want, s.consumed, session_limit, counted, s.key, 'lrm', min_money)
    set[#set + 1] = 'sk:' .. s.sid
    set[#set + 1] = s.key
    redis.call('EXPIRE', s.key, key_ttl)
    session_out[#session_out + 1] = s.sid
    session_out[#session_out + 1] = lease_int(g)
    if left < min_money then exhaust('session', s.sid, 'hard_limit:spend_per_session', period_end) end
  end
end

local exp = math.min(now + ttl, day_end)
if not limited then
  -- nothing to hold back: no lease is stored; the holder checks again when this answer lapses
  return { 'ok', '', exp, -1, -1, 0, 0, 0 }
end
redis.call('HSET', lkey, 'inst', inst, 'day', day, 'period', period, 'exp', exp, unpack(set))
if hold_on_lapse then redis.call('HSET', lkey, 'hl', '1') end
redis.call('EXPIRE', lkey, key_ttl)
redis.call('ZADD', P .. 'lz', exp, id)
redis.call('EXPIRE', P .. 'lz', key_ttl)
redis.call('EXPIRE', day_key, key_ttl)
redis.call('EXPIRE', period_key, key_ttl)

local out = { 'ok', id, exp, gc, gm == -1 and -1 or lease_int(gm), #tool_out / 2 }
for _, v in ipairs(tool_out) do out[#out + 1] = v end
out[#out + 1] = #session_out / 2
for _, v in ipairs(session_out) do out[#out + 1] = v end
out[#out + 1] = #exhausted
for _, x in ipairs(exhausted) do
  for _, v in ipairs(x) do out[#out + 1] = v end
end
return out
