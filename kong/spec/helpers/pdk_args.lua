-- Argument checks of the Kong PDK calls that both PDK stand-ins implement (spec/helpers/fake_pdk.lua for
-- the busted specs, spec/integration/shim.lua inside real nginx), as Kong makes them.

local _M = {}

-- kong/pdk/request.lua get_headers: MIN_HEADERS 1, MAX_HEADERS 1000; nil keeps lua-nginx-module's default
-- (100). Raises at the caller's caller, as Kong's error(..., 2) does from the PDK function.
function _M.max_headers(max_headers)
  if max_headers == nil then
    return nil
  elseif type(max_headers) ~= "number" then
    error("max_headers must be a number", 3)
  elseif max_headers < 1 then
    error("max_headers must be >= 1", 3)
  elseif max_headers > 1000 then
    error("max_headers must be <= 1000", 3)
  end
  return max_headers
end

return _M
