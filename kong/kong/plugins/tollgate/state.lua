-- Enforcement state: decoding (the Lua twin of decodeState/stateInForce in
-- contracts/src/enforcement-state.ts), the allow/kill/throttle decision, and the token bucket that
-- paces a throttled scope. Pure: the clock is always passed in.

local ceil = math.ceil
local find = string.find
local huge = math.huge
local min = math.min
local max = math.max
local sub = string.sub
local tonumber = tonumber

-- `resume` records a lift: it restricts nothing (decide() ignores it), like contracts/src/enforcement-state.ts
local ACTIONS = { kill = true, throttle = true, warn = true, resume = true }

-- Scopes in the order they are read from the hash and reported; precedence between actions is
-- kill > throttle > warn whatever the scope.
-- `tool`: one tool of the customer (its calls-per-tool limit), field `t:<tool>`.
local SCOPES = { "customer", "agent", "session", "tool" }

local _M = {
  SCOPES = SCOPES,
}

-- JavaScript's `value.split('|')`, of which decodeState keeps the first five parts.
local function split_pipe(value)
  local parts, n, pos = {}, 0, 1
  while n < 5 do
    local bar = find(value, "|", pos, true)
    n = n + 1
    if not bar then
      parts[n] = sub(value, pos)
      break
    end
    parts[n] = sub(value, pos, bar - 1)
    pos = bar + 1
  end
  return parts
end

-- JavaScript's Number(): a finite number or nil (NaN); "" is 0 there, callers handle it first.
local function js_number(s)
  local n = tonumber(s)
  if n == nil or n ~= n or n == huge or n == -huge then
    return nil
  end
  return n
end

--- Decodes `<action>|<reason>|<untilUnixMs>|<ratePerSecond>|<marginBps>`.
-- Returns nil for an empty or unknown value, like decodeState() returns undefined.
function _M.decode(value)
  if type(value) ~= "string" or value == "" then
    return nil
  end
  local p = split_pipe(value)
  local action = p[1]
  if not ACTIONS[action] then
    return nil
  end
  local until_ms = p[3]
  local rate = p[4]
  local margin = p[5]
  local rate_value
  if rate and rate ~= "" then
    -- a present but unparsable rate is NaN in TypeScript; false here, see decide()
    rate_value = js_number(rate) or false
  end
  return {
    action = action,
    reason = p[2] or "",
    -- `Number(until) || 0`: empty, NaN and 0 all mean "until an operator lifts it"
    until_ms = (until_ms and until_ms ~= "" and js_number(until_ms)) or 0,
    rate = rate_value,
    margin_bps = (margin and margin ~= "") and js_number(margin) or nil,
  }
end

--- stateInForce(): until 0 means "until lifted"; otherwise in force while until > now.
function _M.in_force(s, now_ms)
  return s ~= nil and (s.until_ms == 0 or s.until_ms > now_ms)
end

local function seconds_until(until_ms, now_ms)
  if until_ms == 0 then
    return nil
  end
  return max(1, ceil((until_ms - now_ms) / 1000))
end

--- Decides from the decoded states of the customer, agent and session (any may be nil).
-- Returns { action = "allow" | "kill" | "throttle", scope, reason, until_ms, rate, warn }.
-- Precedence: any kill in force wins; else the most restrictive throttle in force; warn only
-- annotates an allowed call. A throttle whose rate is missing or unparsable paces at 0 calls/s,
-- i.e. refuses until the state changes: a malformed directive must not silently lift a throttle.
function _M.decide(states, now_ms)
  local kill, throttle, warn
  for i = 1, #SCOPES do
    local scope = SCOPES[i]
    local s = states[scope]
    if _M.in_force(s, now_ms) then
      if s.action == "kill" then
        if not kill then
          kill = { action = "kill", scope = scope, reason = s.reason, until_ms = s.until_ms }
        end
      elseif s.action == "throttle" then
        local rate = s.rate
        if type(rate) ~= "number" or rate < 0 then
          rate = 0
        end
        if not throttle or rate < throttle.rate then
          throttle = { action = "throttle", scope = scope, reason = s.reason,
                       until_ms = s.until_ms, rate = rate }
        end
      elseif s.action == "warn" and not warn then
        warn = { scope = scope, reason = s.reason, margin_bps = s.margin_bps }
      end
    end
  end
  if kill then
    kill.retry_after = seconds_until(kill.until_ms, now_ms)
    return kill
  end
  if throttle then
    return throttle
  end
  return { action = "allow", warn = warn }
end

--- Token bucket: `rate` tokens per second, holding at most `burst` (default: one second of
-- tokens, at least one). A call needs one token and takes `cost` (a batch of n calls takes n):
-- the bucket may go into debt, so a batch larger than the burst still passes once and the
-- average rate holds. `bucket` is { tokens, at_ms } or nil for a fresh (full) bucket; it is
-- updated in place and returned. Returns allowed, retry_after_seconds (when refused), bucket.
-- A rate of 0 (or less) refuses everything.
function _M.take(bucket, rate, now_ms, burst, cost)
  if rate <= 0 then
    return false, 1, bucket
  end
  cost = cost or 1
  burst = burst or max(1, rate)
  if not bucket then
    bucket = { tokens = burst, at_ms = now_ms }
  else
    local elapsed = max(0, now_ms - bucket.at_ms)
    bucket.tokens = min(burst, bucket.tokens + elapsed * rate / 1000)
    bucket.at_ms = now_ms
  end
  if bucket.tokens >= 1 then
    bucket.tokens = bucket.tokens - cost
    return true, nil, bucket
  end
  local wait_s = (1 - bucket.tokens) / rate
  return false, max(1, ceil(wait_s)), bucket
end

return _M
