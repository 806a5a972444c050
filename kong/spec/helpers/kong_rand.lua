-- kong.tools.rand for the handler spec's PDK fake and the nginx shim: get_rand_bytes(n_bytes, urandom),
-- mirroring kong/tools/rand.lua (Kong/kong HEAD, 3.10), which kong/pdk/tracing.lua uses for every trace
-- and span id (generate_trace_id = rand_bytes(16), generate_span_id = rand_bytes(8)): OpenSSL's
-- RAND_bytes through the FFI (a CSPRNG), or /dev/urandom when asked for it; nil, err when RAND_bytes
-- fails. Inside nginx libcrypto is already loaded (ffi.C); a bare LuaJIT (busted) loads it by name.
-- The spec can count the calls (_M.calls) and replace the source (_M.source) to see which bytes a
-- caller used.

local ffi = require "ffi"

ffi.cdef [[
int RAND_bytes(unsigned char *buf, int num);
unsigned long ERR_get_error(void);
]]

local _M = { calls = 0 }

local crypto
do
  local ok = pcall(function() return ffi.C.RAND_bytes end)
  if ok then
    crypto = ffi.C
  else
    for _, name in ipairs({ "libcrypto.so.3", "libcrypto.so.1.1", "crypto" }) do
      local loaded, lib = pcall(ffi.load, name)
      if loaded then
        crypto = lib
        break
      end
    end
  end
end

local bytes_buf_t = ffi.typeof("unsigned char[?]")

local function urandom_bytes(n)
  local f = io.open("/dev/urandom", "rb")
  if not f then
    return nil
  end
  local s = f:read(n)
  f:close()
  return s and #s == n and s or nil
end

function _M.source(n_bytes, urandom)
  if urandom then
    local s = urandom_bytes(n_bytes)
    if s then
      return s
    end
  end
  if not crypto then
    return nil, "could not get random bytes (libcrypto not found)"
  end
  local buf = ffi.new(bytes_buf_t, n_bytes)
  if crypto.RAND_bytes(buf, n_bytes) == 0 then
    return nil, "could not get random bytes (reason: " .. tostring(crypto.ERR_get_error()) .. ")"
  end
  return ffi.string(buf, n_bytes)
end

function _M.get_rand_bytes(n_bytes, urandom)
  _M.calls = _M.calls + 1
  return _M.source(n_bytes, urandom)
end

return _M
