-- The billing session of a call at the gateway: contracts/src/billing-session.ts, applied where the
-- call happens (docs/span-contract.md, "Billing sessions"). Rules, first that exists:
--   1 protocol    the protocol's session (Mcp-Session-Id, or the legacy SSE transport's ?sessionId=)
--   2 connection  a stdio connection: never at a gateway
--   3 trace       the caller's trace: the incoming `traceparent` header, else params._meta.traceparent
--                 when the body was decoded anyway (`trace-<32 hex>`)
--   4 activity    customer + agent + credential fingerprint over an inactivity gap (`act-<16 hex>`)
-- Ids are byte-identical to the TypeScript builders (spec/integration/keys-crosscheck.test.mjs).
-- Pure LuaJIT (bit ops); rule 4's state is injected (a per-worker LRU, or a shared dict per node).

local bit = require "bit"

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit = bit.rshift, bit.lshift, bit.ror, bit.tobit
local tohex = bit.tohex
local byte, char, rep, format, find, match = string.byte, string.char, string.rep, string.format, string.find, string.match
local floor = math.floor
local concat = table.concat
local tonumber = tonumber
local type = type

local _M = {
  DEFAULT_GAP_MS = 30 * 60 * 1000, -- DEFAULT_ACTIVITY_GAP_MS
  RULES = { PROTOCOL = "protocol", TRACE = "trace", ACTIVITY = "activity" },
}

-- SHA-256 (FIPS 180-4), only for the rare new activity session and credential fingerprint
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
for i = 1, 64 do
  K[i] = tobit(K[i])
end

function _M.sha256_hex(msg)
  local len = #msg
  local bits = len * 8
  msg = msg .. "\128" .. rep("\0", (55 - len) % 64)
    .. char(0, 0, 0, floor(bits / 2 ^ 32) % 256) -- messages here are far below 2^32 bytes
    .. char(floor(bits / 2 ^ 24) % 256, floor(bits / 2 ^ 16) % 256, floor(bits / 256) % 256, bits % 256)
  local h0, h1, h2, h3 = tobit(0x6a09e667), tobit(0xbb67ae85), tobit(0x3c6ef372), tobit(0xa54ff53a)
  local h4, h5, h6, h7 = tobit(0x510e527f), tobit(0x9b05688c), tobit(0x1f83d9ab), tobit(0x5be0cd19)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 63 do
      local x, y = w[i - 15], w[i - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = tobit(h + S1 + ch + K[i + 1] + w[i])
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      local t2 = tobit(S0 + maj)
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    h0, h1, h2, h3 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d)
    h4, h5, h6, h7 = tobit(h4 + e), tobit(h5 + f), tobit(h6 + g), tobit(h7 + h)
  end
  return concat({ tohex(h0), tohex(h1), tohex(h2), tohex(h3), tohex(h4), tohex(h5), tohex(h6), tohex(h7) })
end

local sha256_hex = _M.sha256_hex

--- credentialFingerprint: a fingerprint of a credential (here Kong's credential id), never the secret.
function _M.credential_fingerprint(secret)
  return sha256_hex("credential\0" .. secret):sub(1, 16)
end

--- activitySessionId(customer, agent, credential, firstCallMs)
function _M.activity_session_id(customer, agent, credential, first_call_ms)
  return "act-" .. sha256_hex(format("activity\0%s\0%s\0%s\0%d", customer, agent, credential,
                                     floor(first_call_ms))):sub(1, 16)
end

-- traceIdOfTraceparent: version-traceid-parentid-flags, lower-case hex, version ff invalid, no all-zero
-- ids; a longer value only for a future version
local TRACEPARENT = "^(%x%x)%-(%x+)%-(%x+)%-(%x%x)(.*)$"

function _M.trace_id_of_traceparent(v)
  if type(v) ~= "string" or #v > 512 then
    return nil
  end
  v = match(v, "^%s*(.-)%s*$")
  local version, trace_id, span_id, _, rest = match(v, TRACEPARENT)
  if not version or #trace_id ~= 32 or #span_id ~= 16 or find(v, "[A-F]") then
    return nil
  end
  if version == "ff" or not find(span_id, "[^0]") or not find(trace_id, "[^0]") then
    return nil
  end
  if rest ~= "" and (version == "00" or byte(rest, 1) ~= 45) then -- "-" starts a future version's tail
    return nil
  end
  return trace_id
end

--- Rule 4 over an injected store: store:get(key) -> { id, last_ms } or nil; store:set(key, value,
-- ttl_ms) (the per-worker LRU of cache.lua). A call more than gap_ms after the caller's previous one
-- opens a new session. The common case (an open session) allocates nothing.
function _M.activity(store, gap_ms, customer, agent, credential_id, now_ms)
  local key = customer .. "\0" .. agent .. "\0" .. credential_id
  local s, _, stale = store:get(key)
  s = s or stale -- an entry the LRU just expired still decides the boundary (gap inclusive)
  if s and now_ms - s.last_ms <= gap_ms then
    if now_ms > s.last_ms then
      s.last_ms = now_ms
      store:set(key, s, gap_ms)
    end
    return s.id
  end
  local credential = credential_id ~= "" and _M.credential_fingerprint(credential_id) or ""
  s = { id = _M.activity_session_id(customer, agent, credential, now_ms), last_ms = now_ms }
  store:set(key, s, gap_ms)
  return s.id
end

--- The session of a call: { id, rule }. e = { protocol_session, traceparent (header), meta_traceparent,
-- customer, agent, credential_id, now_ms }; store/gap_ms for rule 4.
function _M.of(e, store, gap_ms)
  if e.protocol_session then
    return e.protocol_session, _M.RULES.PROTOCOL
  end
  local trace_id = _M.trace_id_of_traceparent(e.traceparent)
                   or _M.trace_id_of_traceparent(e.meta_traceparent)
  if trace_id then
    return "trace-" .. trace_id, _M.RULES.TRACE
  end
  return _M.activity(store, gap_ms, e.customer or "", e.agent or "", e.credential_id or "", e.now_ms),
         _M.RULES.ACTIVITY
end

return _M
