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
-- Money is integer nano-units. Lua's numbers are doubles, exact only below 2^53 (9,007,199 currency units).
-- Grants are capped (a wallet at 8,000,000 units) and stay plain numbers. What is not capped — a call's price
-- (up to 2^63 - 1), the overdraft bucket, a drawdown's sum, the balance — is a credits_m value: a plain number
-- while its magnitude is below 2^53 (the common case, as cheap as before), else an exact pair { hi, lo } =
-- hi * 10^9 + lo with 0 <= lo < 10^9. The credits_m_* functions below add, compare, read and write both
-- forms exactly; nothing here goes through tonumber or '%d' with a value that may be 2^53 or more.
--
-- The overdraft bucket is an Int64 like the ledger's amount_nano column: it stops at CREDITS_OD_FLOOR,
-- -(2^63 - 1). A call that would take it lower draws it down to the floor and no further; the rest of its
-- price is drawn from nothing (its drawdown names what it did draw, so the invoice preview's reconciliation
-- counts it as mismatched, and the whole price stays due on the invoice like any overdraft), the call is
-- reported over the limit, and the customer is killed with credits:exhausted whatever hardStop says, until a
-- grant or an adjustment takes the bucket off the floor. So every amount written (the bucket, a drawdown's
-- sum, which is at most what one export moved the bucket, a call's share) fits an Int64.
local CreditWallet = {}
CreditWallet.__index = CreditWallet

local CREDITS_E9 = 1000000000
-- magnitudes below this are exact doubles (2^53)
local CREDITS_EXACT = 9007199254740992

-- the normal form: a plain number when the value is below 2^53 in magnitude, else a pair with lo in [0, 10^9)
-- (hi * 10^9 + lo rounds to 2^53 or more in magnitude exactly when the value is that large: below, every
-- step is exact)
local function credits_m_norm(hi, lo)
  if lo >= CREDITS_E9 or lo < 0 then
    local c = math.floor(lo / CREDITS_E9)
    hi, lo = hi + c, lo - c * CREDITS_E9
  end
  local v = hi * CREDITS_E9 + lo
  if v < CREDITS_EXACT and v > -CREDITS_EXACT then return v end
  return { hi, lo }
end

-- a value as a pair (x: a plain number, an exact integer below 2^53 in magnitude)
local function credits_m_pair(x)
  if type(x) == 'table' then return x end
  local hi = math.floor(x / CREDITS_E9)
  local lo = x - hi * CREDITS_E9
  if lo < 0 then hi, lo = hi - 1, lo + CREDITS_E9 elseif lo >= CREDITS_E9 then hi, lo = hi + 1, lo - CREDITS_E9 end
  return { hi, lo }
end

local function credits_m_add(a, b)
  if type(a) == 'number' and type(b) == 'number' then
    local r = a + b
    -- exact: a rounded sum would be 2^53 or more in magnitude
    if r < CREDITS_EXACT and r > -CREDITS_EXACT then return r end
  end
  local x, y = credits_m_pair(a), credits_m_pair(b)
  return credits_m_norm(x[1] + y[1], x[2] + y[2])
end

local function credits_m_neg(a)
  if type(a) == 'number' then return -a end
  return credits_m_norm(-a[1], -a[2])
end

local function credits_m_sub(a, b) return credits_m_add(a, credits_m_neg(b)) end

-- a < b
local function credits_m_lt(a, b)
  if type(a) == 'number' and type(b) == 'number' then return a < b end
  local x, y = credits_m_pair(a), credits_m_pair(b)
  if x[1] ~= y[1] then return x[1] < y[1] end
  return x[2] < y[2]
end

local function credits_m_le(a, b) return not credits_m_lt(b, a) end

-- exact decimal text
local function credits_m_str(a)
  if type(a) == 'number' then return string.format('%d', a) end
  local hi, lo = a[1], a[2]
  if hi >= 0 then return string.format('%d%09d', hi, lo) end
  -- negative: -(|hi| * 10^9 - lo)
  if lo == 0 then return string.format('-%d000000000', -hi) end
  if hi == -1 then return string.format('%d', lo - CREDITS_E9) end
  return string.format('-%d%09d', -hi - 1, CREDITS_E9 - lo)
end

-- decimal text (an optional '-', digits) as a value, exactly; nil when it is not one
local function credits_m_parse(s)
  local sign, digits = string.match(s or '', '^(%-?)0*(%d+)$')
  if not digits then return nil end
  local v
  if #digits <= 15 then
    v = tonumber(digits)
  else
    v = credits_m_norm(tonumber(string.sub(digits, 1, #digits - 9)), tonumber(string.sub(digits, -9)))
  end
  if sign == '-' then return credits_m_neg(v) end
  return v
end

-- hi32 * 2^32 + lo32 (an Int64 read as its two halves, struct.unpack's '<I4i4'), exactly
local function credits_m_from_halves(lo32, hi32)
  if hi32 < 1048576 and hi32 > -1048576 then return hi32 * 4294967296 + lo32 end
  local x = credits_m_pair(hi32)
  local hi, lo = x[1], x[2]
  for _ = 1, 2 do -- times 2^16, twice; a limb times 65536 stays far below 2^53
    lo = lo * 65536
    local c = math.floor(lo / CREDITS_E9)
    hi, lo = hi * 65536 + c, lo - c * CREDITS_E9
  end
  return credits_m_add({ hi, lo }, lo32)
end

-- a plain number, exact below 2^53; beyond, +-2^53 (only for a figure that sizes something, never money kept)
local function credits_m_clamp(a)
  if type(a) == 'number' then return a end
  return a[1] < 0 and -CREDITS_EXACT or CREDITS_EXACT
end

-- -(2^63 - 1): where the overdraft bucket stops (see above)
local CREDITS_OD_FLOOR = credits_m_parse('-9223372036854775807')

local credits_int = credits_m_str

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
      w.od = credits_m_parse(v) or 0
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
  if credits_m_lt(self.od, 0) then
    for _, g in ipairs(self.grants) do
      if not credits_m_lt(self.od, 0) then break end
      if self:live(g) then
        local owed = credits_m_neg(self.od)
        local take = credits_m_lt(owed, g.rem) and owed or g.rem
        g.rem = g.rem - take
        self.od = credits_m_add(self.od, take)
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
    if self:live(g) then b = credits_m_add(b, g.rem)
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
  d.n, d.sum = n, credits_m_add(d.sum, take)
  d.ids[n] = event_id
  d.amounts[n] = credits_int(take)
end

-- Draws one call's price (a credits_m value): grants in order, the rest from the overdraft bucket, down to its
-- floor. Returns true when the bucket was at its floor and part of the price was drawn from nothing.
function CreditWallet:draw(event_id, price, period)
  self.period = period
  local rest = price
  if not credits_m_lt(0, rest) then return false end
  local now = self.now
  for _, g in ipairs(self.grants) do
    if g.rem > 0 and g.eff <= now and (g.exp == 0 or g.exp > now) then
      local take = credits_m_lt(g.rem, rest) and g.rem or rest
      g.rem = g.rem - take
      rest = credits_m_sub(rest, take)
      self.dirty[g.id] = g
      self:note(g.id, event_id, take)
      if not credits_m_lt(0, rest) then return false end
    end
  end
  local od = credits_m_sub(self.od, rest)
  local short = false
  if credits_m_lt(od, CREDITS_OD_FLOOR) then
    rest, od, short = credits_m_sub(self.od, CREDITS_OD_FLOOR), CREDITS_OD_FLOOR, true
  end
  self.od = od
  self.od_dirty = true
  if credits_m_lt(0, rest) then self:note('overdraft', event_id, rest) end
  return short
end

-- The overdraft bucket is at its floor: it lends nothing more (the customer is killed, see the top).
function CreditWallet:floored()
  return not credits_m_lt(CREDITS_OD_FLOOR, self.od)
end

-- Writes the wallet back and appends the ledger entries to the outbox. Returns the outbox length.
function CreditWallet:save(note)
  for _, bucket in ipairs(self.draws) do
    local d = self.draws[bucket]
    self:entry('drawdown', bucket, credits_m_neg(d.sum), self.period, table.concat(d.ids, ','), table.concat(d.amounts, ','),
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
  if (hard_stop and credits_m_le(b, -overdraft)) or self:floored() then
    set('c', { action = 'kill', reason = 'credits:exhausted', until_ms = 0, rate = '', margin = '' })
  elseif warn_below > 0 and credits_m_lt(b, warn_below) then
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
-- The plan's overdraft and warn below are at most MAX_GRANT_NANO (the plan schema): plain numbers.
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
  if not ((w.hard_stop and credits_m_le(w:balance(), -w.overdraft)) or w:floored()) then
    local v = redis.call('HGET', state_key, 'c')
    if v and string.sub(v, 1, 23) == 'kill|credits:exhausted|' then
      redis.call('HSET', state_key, 'c', 'resume|credits:topped_up|' .. credits_int(now + 86400000) .. '||')
      w.lifted = 1
    end
  end
  return w
end

-- One billed call (0-based index i in the host's order): draws its price, a credits_m value (the host reads
-- it with credits_m_from_halves). True when the call drew beyond the overdraft with the hard stop on, or
-- found the overdraft bucket at its floor (the host marks it over the limit).
function CreditWallet:call(i, price)
  local before = self.od
  local short = self:draw(self.ids[i + 1] or '', price, self.period)
  if short then return true end
  return self.hard_stop and credits_m_lt(self.od, -self.overdraft) and credits_m_lt(self.od, before)
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
-- A plain number for lease.lua, whose sums are doubles: exact below 2^53 nano-units; an overdraft bucket
-- deeper than that gives -2^53 (still <= 0: nothing to lease), and a floored bucket at most 0 (nothing to lease either).
local function credits_lease_headroom(keys, argv, now)
  local a = #argv - 2
  if argv[a + 1] ~= '1' then return nil end
  local w = credits_load(keys[tonumber(argv[a])], '', now)
  if not w then return nil end
  if w:floored() then return math.min(0, credits_m_clamp(w:balance())) end
  return credits_m_clamp(credits_m_add(w:balance(), tonumber(argv[a + 2])))
end
