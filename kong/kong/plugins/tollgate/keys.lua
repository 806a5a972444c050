-- Redis key builders: the Lua twin of contracts/src/redis-keys.ts and the `stateField` of
-- contracts/src/enforcement-state.ts. Both sides must build byte-identical strings; the integration
-- run checks them against the TypeScript functions (spec/integration/keys-crosscheck.mjs).

local bit = require "bit"

local band = bit.band
local bxor = bit.bxor
local lshift = bit.lshift
local rshift = bit.rshift
local byte = string.byte
local find = string.find
local format = string.format
local gsub = string.gsub
local sub = string.sub

local KEY_PREFIX = "tg"
local CLUSTER_SLOTS = 16384

-- `%`, `{`, `}`, `:` and every byte below 0x21 (controls and space) become `%XX`, uppercase hex,
-- exactly like escapeKeyPart(). Bytes >= 0x80 (UTF-8) pass through on both sides.
local ESCAPED = "[%%{}:%z\1-\32]"

local function escape_char(c)
  return format("%%%02X", byte(c))
end

local _M = {
  KEY_PREFIX = KEY_PREFIX,
}

function _M.escape(part)
  return (gsub(part, ESCAPED, escape_char))
end

local escape = _M.escape

--- `{product:customer}`: the hash tag every key of one customer carries.
function _M.customer_tag(product, customer)
  return "{" .. escape(product) .. ":" .. escape(customer) .. "}"
end

--- `tg:{product:customer}:state`: the enforcement-state hash of one customer.
function _M.state_key(tag)
  return KEY_PREFIX .. ":" .. tag .. ":state"
end

local FIELD_PREFIX = { agent = "a:", session = "s:", tool = "t:" }

--- Field of the state hash: `c` (customer), `a:<agent>`, `s:<session>`, `t:<tool>`.
function _M.state_field(scope, id)
  if scope == "customer" then
    return "c"
  end
  return FIELD_PREFIX[scope] .. escape(id)
end

-- CRC16-CCITT (XModem), the checksum Redis Cluster uses for key slots.
local CRC16_TABLE = {}
for i = 0, 255 do
  local crc = lshift(i, 8)
  for _ = 1, 8 do
    if band(crc, 0x8000) ~= 0 then
      crc = bxor(lshift(crc, 1), 0x1021)
    else
      crc = lshift(crc, 1)
    end
  end
  CRC16_TABLE[i] = band(crc, 0xFFFF)
end

function _M.crc16(s)
  local crc = 0
  for i = 1, #s do
    crc = band(bxor(lshift(crc, 8), CRC16_TABLE[bxor(rshift(crc, 8), byte(s, i))]), 0xFFFF)
  end
  return crc
end

--- Redis Cluster hash slot of a key: the CRC16 of the hash tag (the bytes between the first `{`
-- and the next `}`, when not empty), else of the whole key.
function _M.slot(key)
  local open = find(key, "{", 1, true)
  if open then
    local close = find(key, "}", open + 1, true)
    if close and close > open + 1 then
      key = sub(key, open + 1, close - 1)
    end
  end
  return _M.crc16(key) % CLUSTER_SLOTS
end

return _M
