-- enforce.lua: hard limits and the margin guard for one customer's newly rated calls of one export,
-- in one billing period and day (atomic).
--
-- KEYS[1] period counters (hash)   KEYS[2] enforcement state (hash)   KEYS[3] applied spool records (hash)
-- KEYS[4] day counters (hash)      KEYS[5..] session counters (hashes), referenced by index from the calls
-- ARGV[1] rid|period|day (the group; '#k' appended for its k-th chunk of calls after the first)  ARGV[2] now (ms)    ARGV[3] period end (ms)    ARGV[4] day end (ms)
-- ARGV[5] counter TTL (s)          ARGV[6] applied-marker TTL (s)
-- ARGV[7] spend limit per period   ARGV[8] calls per day   ARGV[9] spend per session   (-1: no limit)
-- ARGV[10] margin guard on (1/0)   ARGV[11] warn below (bps)   ARGV[12] throttle below   ARGV[13] kill below
-- ARGV[14] minimum revenue before the guard judges   ARGV[15] throttle rate (calls/s)
-- ARGV[16] m, then m pairs: tool, calls-per-period limit
-- then n, then one argument with the n calls, 24 bytes each, little-endian: the session's key index
-- (UInt32; 0 = no session), the agent's and the tool's index (UInt16; 0 = the empty name), price and cost in
-- nano-units (Int64) — read with one struct.unpack per call, not a pattern of seven captures and three decimal
-- numbers; then three arguments with the names the calls index, one per line, from 1: the agents, the tools,
-- and the session ids by session key index (identifiers never contain control characters)
-- then one argument with the calls taken from quota leases, aggregated per lease (empty: none):
--   "L\tlease_id\tinstance\tcalls\treserved_nano" per lease, followed by its "T\ttool\tcalls" and
--   "S\tsession_id\treserved_nano" lines (see lease-lib.lua, prepended to this script: those calls are
--   settled against their lease, then counted like the others)
-- the last six ARGV belong to credits.lua (prepaid credits; see credits_open there), and so do the two KEYS
-- they name
--
-- Money is integer nano-units (HINCRBY keeps it exact in Redis; comparisons in Lua are exact below 2^53
-- nano-units, i.e. 9 million currency units per counter). A call that happened is always counted: limits
-- decide what happens next (kill/throttle), and the call that crossed one is reported as over the limit.
-- A spool record's calls of one customer, period and day are applied at most once (ARGV[1] in KEYS[3]): a
-- replay after a crash recomputes directives without counting its calls twice, and gets back which of its
-- calls were over a limit (kept with the marker).
--
-- State values (see contracts/src/enforcement-state.ts): action|reason|until_ms|rate|margin_bps.
-- Returns: n_over, over_index..., n_dir, then per directive: action, scope, id, reason, margin_bps, rate,
-- until_ms, changed (1 when this call created the state); with a wallet, then: 'credits', balance, outbox
-- length, lifted.
local period, state, applied, day = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local now = tonumber(ARGV[2])
local period_end = tonumber(ARGV[3])
local day_end = tonumber(ARGV[4])
local counter_ttl = tonumber(ARGV[5])
local applied_ttl = tonumber(ARGV[6])
local spend_limit = tonumber(ARGV[7])
local day_limit = tonumber(ARGV[8])
local session_limit = tonumber(ARGV[9])
local guard_on = ARGV[10] == '1'
local warn_bps, throttle_bps, kill_bps = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local min_revenue = tonumber(ARGV[14])
local throttle_rate = ARGV[15]
local m = tonumber(ARGV[16])
local tool_limits = {}
for j = 0, m - 1 do tool_limits[ARGV[17 + j * 2]] = tonumber(ARGV[18 + j * 2]) end
local base = 17 + m * 2
local n = tonumber(ARGV[base])
-- the counters take the price as a double (exact below 2^53 nano-units); prepaid credits draw the exact price,
-- read again as its two 32-bit halves (credits_m_from_halves, credits.lua) for a customer with a wallet only
local CALL_BYTES, CALL_FORMAT, PRICE_HALVES = 24, '<I4I2I2i8i8', '<I4i4'
local calls_bin = ARGV[base + 1]
if #calls_bin ~= CALL_BYTES * n then
  return redis.error_reply('enforce.lua: ' .. #calls_bin .. ' bytes of calls, ' .. n .. ' calls announced')
end
-- quota leases (lease-lib.lua): expired ones give back what they hold before anything is judged
local P = string.sub(state, 1, #state - 5)
lease_reap(P, now, 64)
local leased = {}
-- names by index from 1 (0: the empty name), one per line
local function names(text)
  local t, k = { [0] = '' }, 0
  for name in string.gmatch((text or '') .. '\n', '([^\n]*)\n') do
    k = k + 1
    t[k] = name
  end
  return t
end
local agent_names, tool_names, session_ids = names(ARGV[base + 2]), names(ARGV[base + 3]), names(ARGV[base + 4])
for line in string.gmatch(ARGV[base + 5] or '', '[^\n]+') do
  local kind, a, b, c, d = string.match(line, '^(%u)\t([^\t]*)\t([^\t]*)\t?([^\t]*)\t?([^\t]*)$')
  if kind == 'L' then
    leased[#leased + 1] = { id = a, inst = b, calls = tonumber(c) or 0, money = tonumber(d) or 0, tools = {}, sessions = {} }
  elseif kind == 'T' and #leased > 0 then
    leased[#leased].tools[a] = tonumber(b) or 0
  elseif kind == 'S' and #leased > 0 then
    leased[#leased].sessions[a] = tonumber(b) or 0
  end
end

local function escape(s)
  return (string.gsub(s, '[%%{}:%z\1-\32]', function(c) return string.format('%%%02X', string.byte(c)) end))
end

local function parse(v)
  if not v then return nil end
  local action, reason, until_ms, rate, margin = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if not action then return nil end
  local u = tonumber(until_ms) or 0
  if u ~= 0 and u <= now then return nil end
  return { action = action, reason = reason, until_ms = u, rate = rate, margin = margin }
end

local function encode(s)
  return s.action .. '|' .. s.reason .. '|' .. s.until_ms .. '|' .. (s.rate or '') .. '|' .. (s.margin or '')
end

-- scope key -> { scope, id, field }
local scopes = { { scope = 'customer', id = '', field = 'c' } }
local fields = { agent = {}, session = {}, tool = {} } -- kind -> id -> field (escaped once per id, not per call)
local function scope_of(kind, id)
  local known = fields[kind]
  local field = known[id]
  if not field then
    field = (kind == 'agent' and 'a:' or (kind == 'session' and 's:' or 't:')) .. escape(id)
    known[id] = field
    scopes[#scopes + 1] = { scope = kind, id = id, field = field }
  end
  return field
end

local current = {} -- field -> parsed state in force (or nil)
local changed = {}
local function get(field)
  if current[field] == nil then current[field] = parse(redis.call('HGET', state, field)) or false end
  return current[field] or nil
end
local function sticky(s)
  -- operator decisions and kills stay until the period ends or an operator lifts them
  return s and (s.action == 'kill' or string.sub(s.reason, 1, 8) == 'operator')
end
local function lifted(s)
  return s and s.action == 'resume' and string.sub(s.reason, 1, 8) == 'operator'
end
local function set(field, s)
  local prev = get(field)
  if lifted(prev) and s.action ~= 'resume' then return end -- an operator lift holds until the period ends
  if prev and prev.action == s.action and prev.reason == s.reason then
    if s.margin ~= prev.margin then
      prev.margin = s.margin
      redis.call('HSET', state, field, encode(prev))
    end
    return
  end
  if sticky(prev) and s.action ~= 'kill' then return end
  if prev and prev.action == 'kill' and s.action == 'kill' then return end -- first kill reason wins
  current[field] = s
  changed[field] = true
  redis.call('HSET', state, field, encode(s))
end
local function clear_guard(field, margin)
  local prev = get(field)
  if prev and (prev.action == 'warn' or prev.action == 'throttle') and string.sub(prev.reason, 1, 13) == 'margin_guard:' then
    -- the margin recovered: tell senders to resume, for a day
    set(field, { action = 'resume', reason = 'margin_guard:recovered', until_ms = now + 86400000, rate = '', margin = margin })
  end
end

local over = {}
-- the marker's value: when the step was applied, then which of its calls were over a limit ("now|3,7-12";
-- an older marker holds the time alone), so that a replay labels them again
local marked = redis.call('HGET', applied, rid)
local already = marked ~= false
local credits = credits_open(KEYS, ARGV, now, state) -- prepaid credits (credits.lua, loaded in front): nil without a wallet

-- Calls taken from a lease move their reservation to the counters first (each lease step is in
-- lease-lib.lua); then every call is counted at its real price below, once.
if not already and #leased > 0 then
  local cache = lease_cache()
  for _, l in ipairs(leased) do lease_settle(P, cache, l.id, l.inst, l.calls, l.money, l.tools, l.sessions) end
  lease_flush(P, cache)
end

-- Counters are read once, advanced in Lua for each call (limits are checked call by call, in order), and
-- written back once per key with HINCRBY of the total increments: a few Redis calls per key, not per call.
local function num(v) return tonumber(v or '0') end
local spend = num(redis.call('HGET', period, 'spend'))
local cost_total = num(redis.call('HGET', period, 'cost'))
local day_calls = num(redis.call('HGET', day, 'calls'))
-- what quota leases hold back (after the settlement above) counts against the limits like spend
local held_spend = num(redis.call('HGET', period, 'lrm'))
local held_calls = num(redis.call('HGET', day, 'lr'))
local held_tool = {}
local d_spend, d_cost, d_day = 0, 0, 0
local tool_calls, d_tool = {}, {}
local sessions = {} -- key index -> { id, spend, cost, d_spend, d_cost, d_calls }

local unpack_call = struct.unpack
for i = 0, n - 1 do
  local sk, ai, ti, price, cost = unpack_call(CALL_FORMAT, calls_bin, CALL_BYTES * i + 1)
  local sid, agent, tool = session_ids[sk], agent_names[ai], tool_names[ti]
  if not (sid and agent and tool) then
    return redis.error_reply('enforce.lua: call ' .. i .. ' of ' .. n .. ' names a session, agent or tool not sent')
  end
  if agent ~= '' then scope_of('agent', agent) end
  if sid ~= '' then scope_of('session', sid) end
  if tool_limits[tool] then scope_of('tool', tool) end
  local ses = nil
  if sk > 0 then
    ses = sessions[sk]
    if not ses then
      local key = KEYS[4 + sk]
      ses = { id = sid, spend = num(redis.call('HGET', key, 'spend')), cost = num(redis.call('HGET', key, 'cost')), held = num(redis.call('HGET', key, 'lrm')), d_spend = 0, d_cost = 0, d_calls = 0 }
      sessions[sk] = ses
    end
  end
  if not already then
    spend = spend + price
    cost_total = cost_total + cost
    d_spend, d_cost = d_spend + price, d_cost + cost
    if tool_calls[tool] == nil then
      tool_calls[tool] = num(redis.call('HGET', period, 'c:' .. tool))
      held_tool[tool] = num(redis.call('HGET', period, 'lrc:' .. tool))
      d_tool[tool] = 0
    end
    tool_calls[tool] = tool_calls[tool] + 1
    d_tool[tool] = d_tool[tool] + 1
    day_calls = day_calls + 1
    d_day = d_day + 1
    local crossed = false
    if spend_limit >= 0 and spend + held_spend > spend_limit then
      crossed = true
      set('c', { action = 'kill', reason = 'hard_limit:spend_per_period', until_ms = period_end, rate = '', margin = '' })
    end
    if day_limit >= 0 and day_calls + held_calls > day_limit then
      crossed = true
      set('c', { action = 'kill', reason = 'hard_limit:calls_per_day', until_ms = day_end, rate = '', margin = '' })
    end
    if tool_limits[tool] and tool_calls[tool] + held_tool[tool] > tool_limits[tool] then
      crossed = true
      set(scope_of('tool', tool), { action = 'kill', reason = 'hard_limit:calls_per_tool', until_ms = period_end, rate = '', margin = '' })
    end
    if ses then
      ses.spend, ses.cost = ses.spend + price, ses.cost + cost
      ses.d_spend, ses.d_cost, ses.d_calls = ses.d_spend + price, ses.d_cost + cost, ses.d_calls + 1
      if session_limit >= 0 and ses.spend + ses.held > session_limit then
        crossed = true
        set(scope_of('session', sid), { action = 'kill', reason = 'hard_limit:spend_per_session', until_ms = period_end, rate = '', margin = '' })
      end
    end
    if credits then
      local price_lo, price_hi = unpack_call(PRICE_HALVES, calls_bin, CALL_BYTES * i + 9)
      if credits:call(i, credits_m_from_halves(price_lo, price_hi)) then crossed = true end
    end
    if crossed then over[#over + 1] = i end
  end
end

if already then
  local list = string.match(marked, '|([%d,%-]*)$')
  if list then
    for a, b in string.gmatch(list, '(%d+)%-?(%d*)') do
      for i = tonumber(a), tonumber(b ~= '' and b or a) do
        if i < n then over[#over + 1] = i end
      end
    end
  end
end

if not already then
  -- integers beyond 2^53 would not survive Lua numbers: send the deltas as exact decimal text
  local function int(x) return string.format('%d', x) end
  -- a money counter saturates at 2^63 - 1 nano-units (9.2 billion currency units) instead of failing the
  -- script: HINCRBY refuses to overflow, and a failed script would leave the customer's later calls
  -- unenforced. A saturated spend is past every limit a plan can state, so its kill still holds.
  local INT64_MAX = '9223372036854775807'
  local function add_money(key, field, x)
    if x >= 9223372036854775807 then
      redis.call('HSET', key, field, INT64_MAX)
      return
    end
    local r = redis.pcall('HINCRBY', key, field, int(x))
    if type(r) == 'table' and r.err then
      -- any other error (a wrong type) is raised as HINCRBY raises it
      if not string.find(r.err, 'overflow', 1, true) then redis.call('HINCRBY', key, field, int(x)) end
      redis.call('HSET', key, field, INT64_MAX)
    end
  end
  add_money(period, 'spend', d_spend)
  add_money(period, 'cost', d_cost)
  for tool, d in pairs(d_tool) do redis.call('HINCRBY', period, 'c:' .. tool, d) end
  redis.call('HINCRBY', day, 'calls', d_day)
  for sk, ses in pairs(sessions) do
    local key = KEYS[4 + sk]
    add_money(key, 'spend', ses.d_spend)
    add_money(key, 'cost', ses.d_cost)
    redis.call('HINCRBY', key, 'calls', ses.d_calls)
    redis.call('EXPIRE', key, counter_ttl)
  end
  -- the calls over a limit as ranges of indexes (once a limit is crossed the later calls usually are too):
  -- a few bytes; past 8 KiB (calls over and under in turn) they are not kept, and a replay labels them billed
  local ranges, r = {}, 0
  local k = 1
  while k <= #over do
    local j = k
    while j < #over and over[j + 1] == over[j] + 1 do j = j + 1 end
    r = r + 1
    ranges[r] = (j > k) and (over[k] .. '-' .. over[j]) or tostring(over[k])
    k = j + 1
  end
  local list = table.concat(ranges, ',')
  redis.call('HSET', applied, rid, (#list > 0 and #list <= 8192) and (ARGV[2] .. '|' .. list) or ARGV[2])
  redis.call('EXPIRE', applied, applied_ttl)
  redis.call('EXPIRE', period, counter_ttl)
  redis.call('EXPIRE', day, counter_ttl)
end

-- the margin guard: over the period (customer scope) and over each session of this export
local function judge(field, revenue, cost)
  if not guard_on or revenue < min_revenue or revenue <= 0 then return end
  local margin = math.floor((revenue - cost) * 10000 / revenue)
  local ms = tostring(margin)
  if margin < kill_bps then
    set(field, { action = 'kill', reason = 'margin_guard:kill', until_ms = period_end, rate = '', margin = ms })
  elseif margin < throttle_bps then
    set(field, { action = 'throttle', reason = 'margin_guard:throttle', until_ms = period_end, rate = throttle_rate, margin = ms })
  elseif margin < warn_bps then
    set(field, { action = 'warn', reason = 'margin_guard:warn', until_ms = period_end, rate = '', margin = ms })
  else
    clear_guard(field, ms)
  end
end
judge('c', spend, cost_total)
for _, ses in pairs(sessions) do judge(scope_of('session', ses.id), ses.spend, ses.cost) end

if credits then credits:finish(rid, get, set) end

local out = { #over }
for _, i in ipairs(over) do out[#out + 1] = i end
local dirs = {}
for _, sc in ipairs(scopes) do
  local s = get(sc.field)
  if s then
    dirs[#dirs + 1] = { s.action, sc.scope, sc.id, s.reason, s.margin or '', s.rate or '', tostring(s.until_ms), changed[sc.field] and 1 or 0 }
  end
end
out[#out + 1] = #dirs
for _, d in ipairs(dirs) do
  for _, v in ipairs(d) do out[#out + 1] = v end
end
if credits then credits:reply(out) end
return out
