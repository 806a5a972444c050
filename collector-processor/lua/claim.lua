-- claim.lua: dedup and usage positions for one customer's calls in one export (atomic).
--
-- KEYS: the distinct dedup-day hashes and period hashes of this customer that the calls touch (all share
--       the customer's hash tag, so the script runs unchanged on Redis Cluster).
-- ARGV: token, dedup_ttl_seconds, period_ttl_seconds, n, then n groups of 5:
--       event_id, dedup_key_index, period_key_index, tool, counts ("1" when the call counts toward usage)
-- Returns 3 integers per call: status (0 new, 1 claimed before under this same token, 2 duplicate),
--       tool ordinal, plan ordinal (1-based positions among counted calls in the period; 0 if not counted).
--
-- A claim stores "token|tool_ordinal|plan_ordinal". The token is the id of the spool record that holds
-- the call durably, so a replay of that record after a crash gets its own positions back instead of being
-- mistaken for a duplicate (which would bill the call zero times).
local token = ARGV[1]
local dedup_ttl = tonumber(ARGV[2])
local period_ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {}
local touched_dedup, touched_period = {}, {}

for i = 0, n - 1 do
  local b = 5 + i * 5
  local id = ARGV[b]
  local dd = KEYS[tonumber(ARGV[b + 1])]
  local pk = KEYS[tonumber(ARGV[b + 2])]
  local prev = redis.call('HGET', dd, id)
  if prev then
    local t, tool_ord, plan_ord = string.match(prev, '^(.*)|(%d+)|(%d+)$')
    if t == token then
      out[#out + 1] = 1
      out[#out + 1] = tonumber(tool_ord)
      out[#out + 1] = tonumber(plan_ord)
    else
      out[#out + 1] = 2
      out[#out + 1] = 0
      out[#out + 1] = 0
    end
  else
    local tool_ord, plan_ord = 0, 0
    redis.call('HINCRBY', pk, 'calls', 1)
    if ARGV[b + 4] == '1' then
      plan_ord = redis.call('HINCRBY', pk, 'n', 1)
      tool_ord = redis.call('HINCRBY', pk, 't:' .. ARGV[b + 3], 1)
    end
    redis.call('HSET', dd, id, token .. '|' .. tool_ord .. '|' .. plan_ord)
    touched_dedup[dd] = true
    touched_period[pk] = true
    out[#out + 1] = 0
    out[#out + 1] = tool_ord
    out[#out + 1] = plan_ord
  end
end

for k in pairs(touched_dedup) do redis.call('EXPIRE', k, dedup_ttl) end
for k in pairs(touched_period) do redis.call('EXPIRE', k, period_ttl) end
return out
