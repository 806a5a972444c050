-- Quota leases at Kong (reserve, then settle; docs/enforcement.md, "Quota leases"). Tollgate's
-- POST /v1/leases grants this node, per customer, a number of calls and an amount of money out of what
-- the customer's hard limits leave (collector-processor/lua/lease.lua: the customer's one atomic script).
-- Each metered tools/call takes its known price from the lease before it is proxied; its span carries
-- tollgate.lease.id and tollgate.lease.reserved_nano, and the processor settles it at its real price.
--
-- One lease per (node, product, customer), held in a lua_shared_dict so every worker of the node draws
-- on it. Taking is lock-free: increment what was taken, and undo it when that goes past what was
-- granted (shared-dict operations are atomic, so the node never takes more than it was granted).
-- Keys of the dict (K = product \0 customer; L = a lease id):
--   K|cur    the current lease id; "" = no lease is needed (no hard limit, or Tollgate offers none)
--   K|exp    local time (ms) after which the lease is not drawn on (its expiry less SETTLE_MARGIN_MS)
--   K|gat    when it was last granted; K|n, K|nm calls and money taken since (its size and renewal)
--   K|p:<tool>, K|pd   known prices (nano) by tool, and of any other tool ("" = not priced)
--   K|ex     "reason|untilUnixMs" of an answer that said a limit is exhausted (a short TTL)
--   K|lock   one renewal at a time per customer on the node; K|down  Tollgate failed just now
--   K|wc K|wm  calls and money waiting for a renewal (on every worker): the next renewal asks for them
--   L|gc L|gm  granted calls / money (cumulative, -1 = not limited); L|tc L|tm  taken; L|closed
--   stat|<name>  counters (see STATS)
--
-- No PDK here: the dict, the clock, sleep, the HTTP post and the log are passed in (env), so the
-- handler spec and the nginx integration drive the same code.

local cjson = require("cjson.safe").new()

local ceil = math.ceil
local max = math.max
local min = math.min
local find = string.find
local sub = string.sub
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local type = type

-- stop drawing on a lease this long before it lapses, so the spans of its calls (exported by Kong's
-- opentelemetry plugin queue or the billing exporter) still settle against it
local SETTLE_MARGIN_MS = 3000
-- after an answer said a limit is exhausted, calls it cannot cover are refused without asking again
local EXHAUSTED_REPEAT_S = 0.5
-- after a failure, calls that need a lease follow the failure policy without waiting
local DOWN_S = 1
-- Tollgate offers no leases (404, or a customer it has no plan for): ask again after this
local NO_LEASES_S = 60
local POLL_S = 0.002
-- a first wait that ran out (Tollgate hangs): later first calls of the customer wait lease_timeout_ms
local FIRST_WAIT_SPENT_S = 3600
-- answers a call's wait may take, each in time, before the failure policy (a grant takes a share of what
-- is left, so a burst may need several)
local MAX_WAIT_ANSWERS = 4
local MAX_WANT_CALLS = 1000000
local MAX_MONEY = 9007199254740991 -- MAX_LEASE_MONEY_NANO of contracts/src/leases.ts
-- a renewal ahead of time is off the call path: it may wait longer than lease_timeout_ms
local BACKGROUND_TIMEOUT_MS = 1000
local STATS_LOG_S = 60

local NULL = cjson.null

-- JSON null (cjson.null) as nil
local function value(v)
  if v == NULL then
    return nil
  end
  return v
end

local STATS = { "taken", "refused", "renewals", "sync_renewals", "background_renewals", "timeouts",
                "failures", "fail_open", "fail_closed", "releases", "no_leases" }

local _M = {
  SETTLE_MARGIN_MS = SETTLE_MARGIN_MS,
  STATS = STATS,
}

local function key_of(product, customer)
  return product .. "\0" .. customer
end
_M.key_of = key_of

-- Adds n to a counter, creating it when absent. Never with incr's `init`, which evicts other entries
-- when the dict is full: every write here is a safe_* one, so a full dict refuses a new entry ("no
-- memory") and never silently drops what a lease has taken.
local function count(shm, key, n, ttl)
  local v = shm:incr(key, n)
  if v then
    return v
  end
  shm:safe_add(key, 0, ttl)
  return shm:incr(key, n)
end

local function stat(shm, name, n)
  count(shm, "stat|" .. name, n or 1)
end

--- Counters of the node (all workers): { taken = n, ... }.
function _M.stats(shm)
  local out = {}
  for _, name in ipairs(STATS) do
    out[name] = shm:get("stat|" .. name) or 0
  end
  return out
end

local function price_of(shm, K, tool)
  local p = tool and shm:get(K .. "|p:" .. tool)
  if p == nil then
    p = shm:get(K .. "|pd")
  end
  return tonumber(p) or 0 -- a tool without a price costs nothing known up front
end

-- Takes n calls costing `money` from lease L; true when granted covers them. Undone on failure.
-- A take that does not fit is seen before anything is added: an increment past the grant, even undone at
-- once, is visible to another worker's renewal in between, which would report it as consumed (see
-- consumed_of). Two workers can still both pass that look and overshoot together; the increment decides.
local function take_from(shm, L, n, money)
  local gc = shm:get(L .. "|gc")
  local gm = shm:get(L .. "|gm")
  if gc == nil or gm == nil then
    return false
  end
  if gc >= 0 and (shm:get(L .. "|tc") or 0) + n > gc then
    return false
  end
  if gm >= 0 and money > 0 and (shm:get(L .. "|tm") or 0) + money > gm then
    return false
  end
  local tc, tm
  if gc >= 0 then
    tc = shm:incr(L .. "|tc", n)
    if not tc then
      return false, "lost"
    end
    if tc > gc then
      if tc then shm:incr(L .. "|tc", -n) end
      return false
    end
  end
  if gm >= 0 and money > 0 then
    tm = shm:incr(L .. "|tm", money)
    if not tm then
      if tc then shm:incr(L .. "|tc", -n) end
      return false, "lost"
    end
    if tm > gm then
      shm:incr(L .. "|tm", -money)
      if tc then shm:incr(L .. "|tc", -n) end
      return false
    end
  end
  -- a lease being released: what it reported as consumed is final, so nothing more may be taken
  if shm:get(L .. "|closed") then
    if tm then shm:incr(L .. "|tm", -money) end
    if tc then shm:incr(L .. "|tc", -n) end
    return false
  end
  return true
end

--- try(env, K, tools, now_ms) -> result | nil
-- result: { lease = id | nil, reserved = { nano by call } }; nil: the lease (if any) cannot cover them.
local function try(env, K, tools, now)
  local shm = env.shm
  -- the lease id first, the prices after it: an answer stores its prices before its id (apply), so prices
  -- read after the id are at least that answer's. Read before it, they could be the 0 of "not known yet"
  -- while another worker stores the answer, and the call would draw on the money granted without taking any.
  local cur = shm:get(K .. "|cur")
  local prices, money = {}, 0
  for i, tool in ipairs(tools) do
    prices[i] = price_of(shm, K, tool)
    money = money + prices[i]
  end
  if cur == nil then
    return nil, money
  end
  if cur == "" then
    return { reserved = prices, money = money } -- nothing limited: no lease, enforced per export
  end
  local exp = shm:get(K .. "|exp")
  if not exp or now >= exp then
    return nil, money
  end
  local ok, lost = take_from(shm, cur, #tools, money)
  if not ok then
    if lost then
      -- what this lease has taken is not in the dict (it could not be stored): it cannot be drawn on
      -- safely; a new lease is asked for, this one lapses at its TTL
      shm:delete(K .. "|cur")
    end
    return nil, money
  end
  count(shm, K .. "|n", #tools)
  if money > 0 then count(shm, K .. "|nm", money) end
  return { lease = cur, reserved = prices, money = money }
end

local function exhausted_decision(ex, now)
  local bar = find(ex, "|", 1, true)
  local reason = sub(ex, 1, bar - 1)
  local until_ms = tonumber(sub(ex, bar + 1)) or 0
  return { action = "kill", scope = "customer", reason = reason, until_ms = until_ms,
           retry_after = until_ms > now and max(1, ceil((until_ms - now) / 1000)) or nil,
           enforcement = "lease_exhausted" }
end

-- What lease L reports as consumed: what its calls took, never more than it granted. A take that overshot
-- the grant is undone at once, but another worker can read the counter in between; reported as consumed,
-- that call's price made Tollgate find the limit spent while it was not, and its "exhausted" answer refused
-- every call for EXHAUSTED_REPEAT_S (the one path found for a CI run where a burst of 60 against 7 calls'
-- worth of money ran 6). What stays taken never passes the grant, so the grant bounds the report; at worst
-- it includes the lease's unusable remainder, less than one call's price. Tollgate's lease.lua caps a report
-- at the grant too (grow, lease_trim); this cap is for a Tollgate from before that.
local function consumed_of(shm, L)
  local tc = max(0, shm:get(L .. "|tc") or 0)
  local tm = max(0, shm:get(L .. "|tm") or 0)
  local gc, gm = shm:get(L .. "|gc"), shm:get(L .. "|gm")
  if gc and gc >= 0 then tc = min(tc, gc) end
  if gm and gm >= 0 then tm = min(tm, gm) end
  return tc, tm
end

-- What one renewal asks for: at least twice what went since the last grant, plus the calls waiting.
local function request_for(shm, K, customer, wait_calls, wait_money)
  local min_money = wait_money -- the least worth holding: the price of the call asking
  local cur = shm:get(K .. "|cur")
  local n = shm:get(K .. "|n") or 0
  local nm = shm:get(K .. "|nm") or 0
  -- every call waiting on the node, not only the one asking (a burst is served by one renewal)
  wait_calls = max(wait_calls, shm:get(K .. "|wc") or 0)
  wait_money = max(wait_money, shm:get(K .. "|wm") or 0)
  local want_calls = min(MAX_WANT_CALLS, max(1, 2 * n + wait_calls))
  local want_money = min(MAX_MONEY, max(1, 2 * nm + wait_money))
  local r = { op = "grant", customer = customer, wantCalls = want_calls,
              wantMoney = string.format("%d", want_money),
              minMoney = string.format("%d", min_money) }
  if cur and cur ~= "" then
    r.leaseId = cur
    local tc, tm = consumed_of(shm, cur)
    r.consumedCalls = tc
    r.consumedMoney = string.format("%d", tm)
  end
  return r
end

-- Records one answer of POST /v1/leases in the dict.
local function apply(env, K, result, now)
  local shm = env.shm
  if not result.ok then
    local code = type(result.error) == "table" and result.error.code or "?"
    if code == "TG_LEASE_UNKNOWN" or code == "TG_LEASE_FOREIGN" then
      shm:delete(K .. "|cur") -- lapsed or released: the next renewal asks for a new lease
      return "again"
    end
    -- the customer has no plan here (or a request we got wrong): nothing to lease; per-export enforcement
    env.log("warn", "tollgate: lease refused by Tollgate (", code, "): ",
            type(result.error) == "table" and tostring(result.error.message) or "")
    shm:safe_set(K .. "|cur", "", NO_LEASES_S)
    stat(shm, "no_leases")
    return "none"
  end
  local lease = result.lease
  if type(lease) ~= "table" then
    return "down"
  end
  local exp = (tonumber(lease.expiresUnixMs) or now) - SETTLE_MARGIN_MS
  for tool, p in pairs(type(lease.prices) == "table" and lease.prices or {}) do
    shm:safe_set(K .. "|p:" .. tool, tonumber(p) or 0)
  end
  local default_price = value(lease.defaultPrice)
  shm:safe_set(K .. "|pd", default_price == nil and "" or tostring(default_price))
  local ex = type(lease.exhausted) == "table" and lease.exhausted[1] or nil
  if ex then
    shm:safe_set(K .. "|ex", tostring(ex.reason) .. "|" .. tostring(tonumber(ex.untilUnixMs) or 0), EXHAUSTED_REPEAT_S)
  end
  local id = lease.leaseId
  local gc = tonumber(value(lease.calls)) or -1
  local gm = tonumber(value(lease.money)) or -1
  if ex and exp + SETTLE_MARGIN_MS <= now then
    -- a kill ended the lease (Tollgate trimmed it to what was consumed and answers it expired now):
    -- nothing more may be drawn on it, whatever was granted before
    shm:delete(K .. "|cur")
    return "ok"
  end
  if id == "" or value(id) == nil then
    if ex then
      shm:delete(K .. "|cur") -- a kill refused the lease: nothing to draw on
    else
      -- no hard limit: no lease, ask again when this answer lapses
      shm:safe_set(K .. "|cur", "", max(1, (exp + SETTLE_MARGIN_MS - now) / 1000))
    end
    return "ok"
  end
  local ttl_s = max(1, (exp + SETTLE_MARGIN_MS - now) / 1000 + 60)
  -- cumulative amounts only grow: an older answer arriving late never lowers them
  local old_gc, old_gm = shm:get(id .. "|gc"), shm:get(id .. "|gm")
  local ok1, err = shm:safe_set(id .. "|gc", old_gc and max(old_gc, gc) or gc, ttl_s)
  local ok2, err2 = shm:safe_set(id .. "|gm", old_gm and max(old_gm, gm) or gm, ttl_s)
  local ok3, err3 = shm:safe_add(id .. "|tc", 0, ttl_s)
  local ok4, err4 = shm:safe_add(id .. "|tm", 0, ttl_s)
  err = err or err2 or (not ok3 and err3 ~= "exists" and err3) or (not ok4 and err4 ~= "exists" and err4)
  if not (ok1 and ok2) or err then
    env.log("err", "tollgate: lease_shm is full (", tostring(err), "): a lease cannot be held; raise its size")
    return "down"
  end
  shm:expire(id .. "|tc", ttl_s)
  shm:expire(id .. "|tm", ttl_s)
  shm:safe_set(K .. "|exp", exp)
  if shm:get(K .. "|cur") ~= id then
    shm:safe_set(K .. "|cur", id)
  end
  shm:safe_set(K .. "|gat", now)
  shm:safe_set(K .. "|n", 0)
  shm:safe_set(K .. "|nm", 0)
  return "ok"
end

--- renew(env, conf, customer, wait_calls, wait_money, kind) -> "ok" | "again" | "none" | "down"
-- One POST /v1/leases for one customer; the caller holds the customer's renewal lock.
local function renew(env, conf, customer, wait_calls, wait_money, kind, timeout_ms)
  local shm = env.shm
  local K = key_of(conf.product, customer)
  local body = cjson.encode({ instanceId = env.node_id, requests = {
    request_for(shm, K, customer, wait_calls, wait_money) } })
  stat(shm, "renewals")
  stat(shm, kind)
  local status, err, text = env.post(env.endpoint(conf), env.headers(conf), body,
                                    timeout_ms or conf.lease_timeout_ms)
  local now = env.now_ms()
  if status == 404 then
    -- enforcement off, or a Tollgate without leases: not an outage
    shm:safe_set(K .. "|cur", "", NO_LEASES_S)
    stat(shm, "no_leases")
    env.log("warn", "tollgate: Tollgate offers no quota leases (HTTP 404 from ", env.endpoint(conf),
            "): calls are enforced per export; asking again in ", NO_LEASES_S, " s")
    return "none"
  end
  local doc = status == 200 and cjson.decode(text or "") or nil
  local result = type(doc) == "table" and type(doc.results) == "table" and doc.results[1] or nil
  if type(result) ~= "table" then
    if not status and err and find(err, "timeout", 1, true) then
      stat(shm, "timeouts")
    end
    stat(shm, "failures")
    shm:safe_set(K .. "|down", true, DOWN_S)
    env.log("err", "tollgate: lease renewal failed (", err or ("HTTP " .. tostring(status)), ")")
    return "down"
  end
  return apply(env, K, result, now)
end
_M.renew = renew

local function unlock(shm, K)
  shm:delete(K .. "|lock")
end

local function policy(env, conf, K)
  if conf.fault_tolerant then
    stat(env.shm, "fail_open")
    return { enforcement = "lease_unavailable" }
  end
  stat(env.shm, "fail_closed")
  return nil, { action = "unavailable", enforcement = "unavailable", reason = "lease_unavailable",
                retry_after = 1 }
end

local wait_for_lease

--- take(env, conf, customer, tools) -> result | nil, decision
-- result: { lease = id | nil, reserved = { nano by call }, enforcement = "lease_unavailable" when it
-- passed without a lease under fault_tolerant }. decision (refused): the refusal the handler answers.
function _M.take(env, conf, customer, tools)
  local shm = env.shm
  local K = key_of(conf.product, customer)
  env.track(conf, customer)
  local now = env.now_ms()
  local r, money = try(env, K, tools, now)
  if r then
    stat(shm, "taken", #tools)
    return r
  end
  local ex = shm:get(K .. "|ex")
  if ex then
    stat(shm, "refused", #tools)
    return nil, exhausted_decision(ex, now)
  end
  if shm:get(K .. "|down") then
    return policy(env, conf, K)
  end
  -- synchronously: renew (or wait for the worker renewing), at most lease_timeout_ms in all
  local n = #tools
  money = money or 0
  count(shm, K .. "|wc", n, 5)
  if money > 0 then count(shm, K .. "|wm", money, 5) end
  local result, decision = wait_for_lease(env, conf, customer, K, tools, now, money)
  shm:incr(K .. "|wc", -n)
  if money > 0 then shm:incr(K .. "|wm", -money) end
  return result, decision
end

wait_for_lease = function(env, conf, customer, K, tools, now, money)
  local shm = env.shm
  local r, ex
  -- the first answer about a customer on this node bounds what a burst may take: worth a longer wait
  local first = not shm:get(K .. "|gat") and not shm:get(K .. "|fw")
  local timeout = conf.lease_timeout_ms
  if first then
    timeout = max(timeout, conf.lease_first_timeout_ms or 0)
  end
  local deadline = now + timeout
  local last_deadline = now + timeout * MAX_WAIT_ANSWERS
  local waited_for_other = false
  while true do
    local outcome
    if shm:safe_add(K .. "|lock", true, timeout / 1000 + 1) then
      outcome = renew(env, conf, customer, #tools, money or 0, "sync_renewals", max(1, deadline - now))
      unlock(shm, K)
      if outcome == "ok" then
        -- an answer in time: the wait may take another one
        deadline = min(last_deadline, max(deadline, env.now_ms() + timeout))
      end
    else
      -- another worker (or the background timer) is renewing: wait for its answer
      waited_for_other = true
      repeat
        env.sleep(POLL_S)
      until not shm:get(K .. "|lock") or env.now_ms() >= deadline
      outcome = shm:get(K .. "|down") and "down" or "ok"
    end
    now = env.now_ms()
    r, money = try(env, K, tools, now)
    if r then
      stat(shm, "taken", #tools)
      return r
    end
    if outcome == "down" then
      if first then
        shm:safe_set(K .. "|fw", true, FIRST_WAIT_SPENT_S)
      end
      return policy(env, conf, K)
    end
    ex = shm:get(K .. "|ex")
    if ex then
      stat(shm, "refused", #tools)
      return nil, exhausted_decision(ex, now)
    end
    if now >= deadline then
      break
    end
  end
  -- no answer covered the call in time
  stat(shm, "timeouts")
  if first then
    shm:safe_set(K .. "|fw", true, FIRST_WAIT_SPENT_S)
  end
  if not waited_for_other then
    shm:safe_set(K .. "|down", true, DOWN_S)
  end
  return policy(env, conf, K)
end

--- Gives back what a request took (it never reached the tool: another plugin answered, the server
-- refused it): the calls and money leave what the lease reports as consumed.
function _M.give_back(env, taken, n)
  local L = taken and taken.lease
  if not L then
    return
  end
  env.shm:incr(L .. "|tc", -n)
  if taken.money and taken.money > 0 then
    env.shm:incr(L .. "|tm", -taken.money)
  end
end

--- Whether the lease of K wants a renewal ahead of time: under half of what went since the last grant
-- is left, or a third of its life has passed, and it was used since.
local function wants_renewal(shm, K, now)
  local cur = shm:get(K .. "|cur")
  if not cur or cur == "" then
    return false
  end
  local n = shm:get(K .. "|n") or 0
  if n <= 0 then
    return false -- idle: let it lapse, its allowance goes back
  end
  local exp, gat = shm:get(K .. "|exp") or 0, shm:get(K .. "|gat") or now
  if now >= gat + (exp + SETTLE_MARGIN_MS - gat) / 3 then
    return true
  end
  local gc, gm = shm:get(cur .. "|gc") or -1, shm:get(cur .. "|gm") or -1
  if gc >= 0 and gc - (shm:get(cur .. "|tc") or 0) < n / 2 then
    return true
  end
  local nm = shm:get(K .. "|nm") or 0
  if gm >= 0 and nm > 0 and gm - (shm:get(cur .. "|tm") or 0) < nm / 2 then
    return true
  end
  return false
end
_M.wants_renewal = wants_renewal

--- One tick of a worker's background timer: renews, ahead of exhaustion, the leases of the customers
-- this worker has served. tracked: { [K] = { env, conf, customer } }.
function _M.tick(tracked)
  local logged = {}
  for K, t in pairs(tracked) do
    local env = t.env
    local shm = env.shm
    local now = env.now_ms()
    if not logged[shm] then
      logged[shm] = true
      -- one worker of the node logs the node's counters once a minute
      if shm:safe_add("stat|logged", true, STATS_LOG_S) then
        env.log("notice", "tollgate: quota leases of this node: ", cjson.encode(_M.stats(shm)))
      end
    end
    if wants_renewal(shm, K, now) and not shm:get(K .. "|down") then
      if shm:safe_add(K .. "|lock", true, t.conf.lease_timeout_ms / 1000 + 1) then
        renew(env, t.conf, t.customer, 0, 0, "background_renewals", max(t.conf.lease_timeout_ms, BACKGROUND_TIMEOUT_MS))
        unlock(shm, K)
      end
    elseif not shm:get(K .. "|cur") then
      tracked[K] = nil -- lapsed and idle: forget it until its next call
    end
  end
end

--- Worker exit: releases the leases this worker served (what was not consumed returns at once). A
-- lease used by several workers is released by the first to exit; `closed` stops the others drawing.
function _M.release_all(tracked)
  for K, t in pairs(tracked) do
    local env = t.env
    local shm = env.shm
    local cur = shm:get(K .. "|cur")
    if cur and cur ~= "" and shm:safe_add(cur .. "|closed", true, 120) then
      shm:delete(K .. "|cur")
      local tc, tm = consumed_of(shm, cur)
      local body = cjson.encode({ instanceId = env.node_id, requests = { {
        op = "release", customer = t.customer, leaseId = cur,
        consumedCalls = tc,
        consumedMoney = string.format("%d", tm),
      } } })
      local status, err = env.post(env.endpoint(t.conf), env.headers(t.conf), body, t.conf.lease_timeout_ms)
      if status == 200 then
        stat(shm, "releases")
      else
        env.log("warn", "tollgate: lease release failed (", err or ("HTTP " .. tostring(status)),
                "): it lapses at its TTL")
      end
    end
  end
end

--- The lease endpoint of a config: lease_endpoint, else billing_endpoint with /v1/traces → /v1/leases.
function _M.endpoint(conf)
  if conf.lease_endpoint then
    return conf.lease_endpoint
  end
  local e = conf.billing_endpoint
  if e then
    local base = e:gsub("/v1/traces$", "")
    return base .. "/v1/leases"
  end
  return nil
end

return _M
