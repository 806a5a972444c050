-- credits.lua: prepaid credit wallets (see contracts/src/credits.ts and docs/enforcement.md#prepaid-credits).
--
-- A fragment, not a script of its own: it is loaded in front of enforce.lua (billed calls draw the wallet
-- down in the same atomic step that counts them against the limits) and in front of credits-admin.lua
-- (grants, top-ups, adjustments, reads). Everything it needs from its host comes in as arguments.
--
-- Wallet (hash): seq (last ledger entry), gseq (last grant number), opened, od (overdraft bucket, <= 0),
-- g:<id> = remaining|amount|effective_ms|expires_ms|priority|kind|created_ms. Grants left with nothing are
-- removed (the ledger keeps their story).
-- Outbox (list): one line per ledger entry, in sequence order, until the processor has written it to
-- ClickHouse: seq, at, type, bucket, amount, period, event ids, their amounts, actor, note (tab-separated).
--
-- Money is integer nano-units; a wallet is capped at 8,000,000 currency units so every sum here stays below
-- 2^53 and exact in Lua's doubles.
local CreditWallet = {}
CreditWallet.__index = CreditWallet

local function credits_int(x) return string.format('%d', x) end

-- draw order: lower priority first, then the earliest expiry (0 = never, last), then the oldest grant
local function credits_order(a, b)
  if a.prio ~= b.prio then return a.prio < b.prio end
  local ea, eb = a.exp == 0 and math.huge or a.exp, b.exp == 0 and math.huge or b.exp
  if ea ~= eb then return ea < eb end
  if a.eff ~= b.eff then return a.eff < b.eff end
  return a.n < b.n
end

-- Loads the wallet; nil when the customer has none (credits are not in play for it).
local function credits_load(wkey, okey, now)
  local flat = redis.call('HGETALL', wkey)
  if #flat == 0 then return nil end
  local w = setmetatable({ wkey = wkey, okey = okey, now = now, od = 0, grants = {}, entries = {},
    draws = {}, dirty = {}, od_dirty = false }, CreditWallet)
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if f == 'od' then
      w.od = tonumber(v)
    elseif string.sub(f, 1, 2) == 'g:' then
      local rem, amt, eff, exp, prio, kind, created =
        string.match(v, '^(%d+)|(%d+)|(%d+)|(%d+)|(%-?%d+)|([%w_]+)|(%d+)$')
      if rem then
        local id = string.sub(f, 3)
        w.grants[#w.grants + 1] = { id = id, rem = tonumber(rem), amt = amt, eff = tonumber(eff),
          exp = tonumber(exp), prio = tonumber(prio), kind = kind, created = created,
          n = tonumber(string.match(id, '(%d+)$')) or 0 }
      end
    end
  end
  table.sort(w.grants, credits_order)
  return w
end

function CreditWallet:entry(kind, bucket, amount, period, ids, amounts, actor, note)
  self.entries[#self.entries + 1] = { kind, bucket, credits_int(amount), period or '', ids or '',
    amounts or '', actor or 'tollgate', note or '' }
end

function CreditWallet:live(g)
  return g.rem > 0 and g.eff <= self.now and (g.exp == 0 or g.exp > self.now)
end

-- Expiries (what an expired grant had left) and the repayment of an overdraft from grants now in force.
function CreditWallet:normalize()
  for _, g in ipairs(self.grants) do
    if g.exp ~= 0 and g.exp <= self.now and g.rem > 0 then
      self:entry('expiry', g.id, -g.rem, '', '', '', 'tollgate', 'expired')
      g.rem = 0
      self.dirty[g.id] = g
    end
  end
  if self.od < 0 then
    for _, g in ipairs(self.grants) do
      if self.od >= 0 then break end
      if self:live(g) then
        local take = math.min(g.rem, -self.od)
        g.rem = g.rem - take
        self.od = self.od + take
        self.dirty[g.id] = g
        self.od_dirty = true
        self:entry('adjustment', g.id, -take, '', '', '', 'tollgate', 'overdraft repaid')
        self:entry('adjustment', 'overdraft', take, '', '', '', 'tollgate', 'overdraft repaid')
      end
    end
  end
end

-- available now (grants in force plus the overdraft bucket, which is <= 0), and not yet effective
function CreditWallet:balance()
  local b, pending = self.od, 0
  for _, g in ipairs(self.grants) do
    if self:live(g) then b = b + g.rem
    elseif g.rem > 0 and g.eff > self.now and (g.exp == 0 or g.exp > self.now) then pending = pending + g.rem end
  end
  return b, pending
end

-- Notes what one call gave one bucket (a drawdown entry per bucket, written by save).
function CreditWallet:note(bucket, event_id, take)
  local d = self.draws[bucket]
  if not d then
    d = { sum = 0, ids = {}, amounts = {}, n = 0 }
    self.draws[bucket] = d
    self.draws[#self.draws + 1] = bucket
  end
  local n = d.n + 1
  d.n, d.sum = n, d.sum + take
  d.ids[n] = event_id
  d.amounts[n] = credits_int(take)
end

-- Draws one call's price: grants in order, the rest from the overdraft bucket.
function CreditWallet:draw(event_id, price, period)
  self.period = period
  local rest = price
  if rest <= 0 then return end
  local now = self.now
  for _, g in ipairs(self.grants) do
    if g.rem > 0 and g.eff <= now and (g.exp == 0 or g.exp > now) then
      local take = g.rem < rest and g.rem or rest
      g.rem = g.rem - take
      rest = rest - take
      self.dirty[g.id] = g
      self:note(g.id, event_id, take)
      if rest <= 0 then return end
    end
  end
  self.od = self.od - rest
  self.od_dirty = true
  self:note('overdraft', event_id, rest)
end

-- Writes the wallet back and appends the ledger entries to the outbox. Returns the outbox length.
function CreditWallet:save(note)
  for _, bucket in ipairs(self.draws) do
    local d = self.draws[bucket]
    self:entry('drawdown', bucket, -d.sum, self.period, table.concat(d.ids, ','), table.concat(d.amounts, ','),
      'tollgate', note)
  end
  self.draws = {}
  for id, g in pairs(self.dirty) do
    if g.rem > 0 then
      redis.call('HSET', self.wkey, 'g:' .. id, table.concat({ credits_int(g.rem), g.amt, credits_int(g.eff),
        credits_int(g.exp), credits_int(g.prio), g.kind, g.created }, '|'))
    else
      redis.call('HDEL', self.wkey, 'g:' .. id)
    end
  end
  self.dirty = {}
  if self.od_dirty then redis.call('HSET', self.wkey, 'od', credits_int(self.od)) end
  self.od_dirty = false
  local n = #self.entries
  if n == 0 then return redis.call('LLEN', self.okey) end
  local last = redis.call('HINCRBY', self.wkey, 'seq', n)
  local lines = {}
  for k, e in ipairs(self.entries) do
    lines[k] = table.concat({ credits_int(last - n + k), credits_int(self.now), e[1], e[2], e[3], e[4], e[5],
      e[6], e[7], e[8] }, '\t')
  end
  self.entries = {}
  -- in slices: Lua's unpack gives at most 8,000 values, and a wallet may hold more grants than that
  local len
  for from = 1, n, 2000 do len = redis.call('RPUSH', self.okey, unpack(lines, from, math.min(from + 1999, n))) end
  return len
end

-- Enforcement side: hard stop at zero (at -overdraft), the low-balance warning, and lifting them after a
-- top-up. `state` is either the host's get/set (enforce.lua) or direct HGET/HSET (credits-admin.lua).
-- Warn and resume never replace another reason's state in force (a margin-guard throttle, a limit kill).
function CreditWallet:judge(get, set, hard_stop, overdraft, warn_below, resume_ms)
  local b = self:balance()
  local cur = get('c')
  local ours = cur and string.sub(cur.reason, 1, 8) == 'credits:'
  if hard_stop and b <= -overdraft then
    set('c', { action = 'kill', reason = 'credits:exhausted', until_ms = 0, rate = '', margin = '' })
  elseif warn_below > 0 and b < warn_below then
    -- only over nothing, a lapsing resume that no operator wrote, or a state of our own (a top-up that
    -- leaves the balance low turns an exhausted kill into a warning; enforce.lua's set keeps kills sticky)
    local free = not cur or (cur.action == 'resume' and string.sub(cur.reason, 1, 9) ~= 'operator:')
    if free or ours then
      set('c', { action = 'warn', reason = 'credits:low_balance', until_ms = 0, rate = '', margin = '' })
    end
  elseif ours and (cur.action == 'kill' or cur.action == 'warn') then
    -- a top-up (or an adjustment) brought the balance back: senders get resume, for a day
    set('c', { action = 'resume', reason = 'credits:topped_up', until_ms = self.now + resume_ms, rate = '',
      margin = '' })
  end
  return b
end

-- enforce.lua's side. The host passes its last six ARGV to this fragment: wallet key index, outbox key
-- index (both into KEYS), hard stop (1/0), overdraft (nano), warn below (nano, 0 = off), and the event ids
-- of its calls (comma-separated, in call order). Returns nil when the customer has no wallet.
-- state_key: the host's enforcement state hash. Called before the host reads any state.
local function credits_open(keys, argv, now, state_key)
  local a = #argv - 5
  local w = credits_load(keys[tonumber(argv[a])], keys[tonumber(argv[a + 1])], now)
  if not w then return nil end
  w.hard_stop = argv[a + 2] == '1'
  w.overdraft = tonumber(argv[a + 3])
  w.warn_below = tonumber(argv[a + 4])
  w.ids = {}
  for id in string.gmatch(argv[a + 5], '[^,]+') do w.ids[#w.ids + 1] = id end
  w.period = string.match(argv[1], '^[^|]*|([^|]*)|') or ''
  w:normalize()
  -- Money came back without a grant request (a grant became effective, the plan's overdraft grew): the
  -- credits' own kill is lifted here, since the host keeps kills sticky. Grants lift it in credits-admin.lua.
  w.lifted = 0
  if not (w.hard_stop and w:balance() <= -w.overdraft) then
    local v = redis.call('HGET', state_key, 'c')
    if v and string.sub(v, 1, 23) == 'kill|credits:exhausted|' then
      redis.call('HSET', state_key, 'c', 'resume|credits:topped_up|' .. credits_int(now + 86400000) .. '||')
      w.lifted = 1
    end
  end
  return w
end

-- One billed call (0-based index i in the host's order): draws its price. True when the call drew beyond
-- the overdraft with the hard stop on (the host marks it over the limit).
function CreditWallet:call(i, price)
  local before = self.od
  self:draw(self.ids[i + 1] or '', price, self.period)
  return self.hard_stop and self.od < -self.overdraft and self.od < before
end

-- After the host's counters, before it collects directives: write back, the hard stop, the warning.
function CreditWallet:finish(note, get, set)
  self.outbox = self:save(note)
  self.after = self:judge(get, set, self.hard_stop, self.overdraft, self.warn_below, 86400000)
end

-- Appends `credits, balance, outbox length, lifted (1: credits_open lifted the credits' kill)` to the reply.
function CreditWallet:reply(out)
  out[#out + 1] = 'credits'
  out[#out + 1] = credits_int(self.after)
  out[#out + 1] = self.outbox
  out[#out + 1] = self.lifted
end

-- lease.lua's side: what the wallet leaves for quota leases to hold (balance + overdraft; may be <= 0), read
-- only. The host passes its last three ARGV: wallet key index (into KEYS), hard stop (1/0), overdraft (nano).
-- nil when the customer has no wallet or its hard stop is off (credits then bound nothing).
local function credits_lease_headroom(keys, argv, now)
  local a = #argv - 2
  if argv[a + 1] ~= '1' then return nil end
  local w = credits_load(keys[tonumber(argv[a])], '', now)
  if not w then return nil end
  return w:balance() + tonumber(argv[a + 2])
end
