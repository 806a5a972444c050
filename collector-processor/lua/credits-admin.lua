-- credits-admin.lua: grants, top-ups, adjustments and reads of one customer's wallet (atomic), loaded
-- after credits.lua. Every change appends its ledger entries to the outbox in the same step.
--
-- KEYS[1] wallet   KEYS[2] outbox   KEYS[3] idempotency keys (hash)   KEYS[4] enforcement state (hash)
-- ARGV[1] op: grant | adjust | read     ARGV[2] now (ms)
-- ARGV[3] hard stop (1/0)   ARGV[4] overdraft (nano)   ARGV[5] warn below (nano)   ARGV[6] wallet cap (nano)
-- grant:  ARGV[7] kind (grant|top_up)  ARGV[8] amount  ARGV[9] effective ms  ARGV[10] expires ms (0 never)
--         ARGV[11] priority  ARGV[12] actor  ARGV[13] note  ARGV[14] idempotency key ('' none)
--         ARGV[15], ARGV[16] where a new wallet's entry and grant numbers start (the ledger's last ones)
--         ARGV[17] the request's fingerprint (what was asked, as given): kept with the key, so a retry that
--         asks for something else is a conflict, not the first grant answered again
-- adjust: ARGV[7] bucket (grant id or 'overdraft')  ARGV[8] signed amount  ARGV[9] actor  ARGV[10] note
--         ARGV[11] idempotency key ('' none)  ARGV[12] the request's fingerprint (as for a grant); the key is
--         kept as "adj|<fingerprint>" in the same hash as the grants' keys (a key names one request, of
--         either kind)
--
-- Returns { status, detail, state_changed (1/0), state action, state reason, balance, pending, overdraft
-- bucket, outbox length, then per grant in draw order: id, remaining, amount, effective, expires, priority,
-- kind, created }. status: ok | replayed | conflict | no_wallet | wallet_cap | unknown_grant | out_of_range.
local wkey, okey, ikey, skey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local hard_stop = ARGV[3] == '1'
local overdraft = tonumber(ARGV[4])
local warn_below = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local DAY_MS = 86400000

-- the state field of the customer, with enforce.lua's rules: a kill is not replaced by another kill, an
-- operator's lift holds, an operator's kill stays; our own states (credits:*) may be replaced
local changed = false
local function get(field)
  local v = redis.call('HGET', skey, field)
  if not v then return nil end
  local action, reason, until_ms = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|')
  if not action then return nil end
  local u = tonumber(until_ms) or 0
  if u ~= 0 and u <= now then return nil end
  return { action = action, reason = reason }
end
local function set(field, s)
  local prev = get(field)
  if prev then
    if prev.action == s.action and prev.reason == s.reason then return end
    local operator = string.sub(prev.reason, 1, 8) == 'operator'
    if operator and (prev.action == 'resume' or prev.action == 'kill') then return end
    if prev.action == 'kill' and string.sub(prev.reason, 1, 8) ~= 'credits:' then return end
    if s.action ~= 'kill' and prev.action ~= 'kill' and prev.action ~= 'resume' and
        string.sub(prev.reason, 1, 8) ~= 'credits:' then
      return -- a margin-guard warn or throttle stays
    end
  end
  redis.call('HSET', skey, field, s.action .. '|' .. s.reason .. '|' .. string.format('%d', s.until_ms) .. '||')
  changed = true
end

local function reply(status, detail, w)
  local out = { status, detail or '', 0, '', '', '0', '0', '0', '0' }
  if w then
    local b, pending = w:balance()
    local st = get('c')
    out[3] = changed and 1 or 0
    out[4] = st and st.action or ''
    out[5] = st and st.reason or ''
    out[6], out[7], out[8] = credits_int(b), credits_int(pending), credits_int(w.od)
    out[9] = redis.call('LLEN', okey)
    for _, g in ipairs(w.grants) do
      if g.rem > 0 then
        for _, v in ipairs({ g.id, credits_int(g.rem), g.amt, credits_int(g.eff), credits_int(g.exp),
          credits_int(g.prio), g.kind, g.created }) do
          out[#out + 1] = v
        end
      end
    end
  end
  return out
end

local function total(w)
  local t = 0
  for _, g in ipairs(w.grants) do t = t + g.rem end
  return t
end

if op == 'read' then
  local w = credits_load(wkey, okey, now)
  if not w then return reply('no_wallet') end
  w:normalize()
  w:save('')
  w:judge(get, set, hard_stop, overdraft, warn_below, DAY_MS)
  return reply('ok', '', w)
end

if op == 'grant' then
  local kind, amount = ARGV[7], tonumber(ARGV[8])
  local eff, exp, prio = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local actor, note, idem = ARGV[12], ARGV[13], ARGV[14]
  local fingerprint = ARGV[17] or ''
  if idem ~= '' then
    local known = redis.call('HGET', ikey, idem)
    if known then
      -- "g7|<fingerprint>"; a key kept before fingerprints were ("g7") replays whatever is asked
      local id, was = string.match(known, '^([^|]*)|(.*)$')
      if not id then id, was = known, nil end
      local w = credits_load(wkey, okey, now)
      if was ~= nil and was ~= fingerprint then return reply('conflict', id, w) end
      return reply('replayed', id, w)
    end
  end
  local w = credits_load(wkey, okey, now)
  if not w then
    -- a wallet whose Redis keys were lost goes on numbering after its ledger: its entries never replace
    -- the old ones in ClickHouse, whose key is (product, customer, seq), nor its grants the old grant ids
    redis.call('HSET', wkey, 'opened', now, 'od', 0, 'seq', ARGV[15] or '0', 'gseq', ARGV[16] or '0')
    w = credits_load(wkey, okey, now)
  end
  w:normalize()
  if total(w) + amount > cap then
    w:save('')
    return reply('wallet_cap', credits_int(total(w)), w)
  end
  local n = redis.call('HINCRBY', wkey, 'gseq', 1)
  local g = { id = 'g' .. n, rem = amount, amt = credits_int(amount), eff = eff, exp = exp, prio = prio,
    kind = kind, created = credits_int(now), n = n }
  w.grants[#w.grants + 1] = g
  table.sort(w.grants, credits_order)
  w.dirty[g.id] = g
  w:entry(kind, g.id, amount, '', '', '', actor, note)
  w:normalize() -- a grant in force repays the overdraft first
  w:save('')
  if idem ~= '' then redis.call('HSET', ikey, idem, g.id .. '|' .. fingerprint) end
  w:judge(get, set, hard_stop, overdraft, warn_below, DAY_MS)
  return reply('ok', g.id, w)
end

if op == 'adjust' then
  local bucket, amount, actor, note = ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
  local idem, fingerprint = ARGV[11] or '', ARGV[12] or ''
  if idem ~= '' then
    local known = redis.call('HGET', ikey, idem)
    if known then
      local w = credits_load(wkey, okey, now)
      if known ~= 'adj|' .. fingerprint then return reply('conflict', bucket, w) end
      return reply('replayed', bucket, w)
    end
  end
  local w = credits_load(wkey, okey, now)
  if not w then return reply('no_wallet') end
  w:normalize()
  if bucket == 'overdraft' then
    local od = credits_m_add(w.od, amount) -- the bucket may be far below 2^53 (credits.lua): exactly
    if credits_m_lt(0, od) or credits_m_lt(od, -cap) then
      w:save('')
      return reply('out_of_range', credits_int(w.od), w)
    end
    w.od = od
    w.od_dirty = true
  else
    local found
    for _, g in ipairs(w.grants) do
      if g.id == bucket and g.rem > 0 then found = g end
    end
    if not found then
      w:save('')
      return reply('unknown_grant', bucket, w)
    end
    if found.rem + amount < 0 or total(w) + amount > cap then
      w:save('')
      return reply('out_of_range', credits_int(found.rem), w)
    end
    found.rem = found.rem + amount
    w.dirty[found.id] = found
  end
  w:entry('adjustment', bucket, amount, '', '', '', actor, note)
  w:normalize()
  w:save('')
  if idem ~= '' then redis.call('HSET', ikey, idem, 'adj|' .. fingerprint) end
  w:judge(get, set, hard_stop, overdraft, warn_below, DAY_MS)
  return reply('ok', bucket, w)
end

return reply('bad_op', op)
