-- A small per-worker LRU cache with per-entry TTL, used for the enforcement state read from Redis
-- and for the throttle token buckets.
--
-- Staleness it allows: an entry is served for at most its TTL (`cache_ttl_ms` for enforcement
-- state) after it was read from Redis. So a kill or throttle written by the processor reaches a
-- given Kong worker at most `cache_ttl_ms` later, and a lifted state keeps refusing calls for at
-- most `cache_ttl_ms`. "No state" (the common case) is cached the same way, which is what keeps
-- Redis off the request path for most calls. Each nginx worker has its own cache (no shared
-- memory, no locks); the bound is per worker and per Kong node.
--
-- Pure Lua: the clock is injected, so tests drive time explicitly.

local setmetatable = setmetatable

local _M = {}
local mt = { __index = _M }

--- new(max_items, now_ms): `now_ms` is a function returning the current time in milliseconds.
function _M.new(max_items, now_ms)
  if type(max_items) ~= "number" or max_items < 1 then
    return nil, "max_items must be a positive number"
  end
  if type(now_ms) ~= "function" then
    return nil, "now_ms must be a function"
  end
  -- doubly linked list (head = most recent) + key index
  local head = {}
  local tail = {}
  head.next, tail.prev = tail, head
  return setmetatable({
    max_items = max_items,
    now_ms = now_ms,
    count = 0,
    index = {},
    head = head,
    tail = tail,
  }, mt)
end

local function unlink(node)
  node.prev.next = node.next
  node.next.prev = node.prev
end

local function push_front(self, node)
  local first = self.head.next
  node.prev, node.next = self.head, first
  first.prev = node
  self.head.next = node
end

function _M:delete(key)
  local node = self.index[key]
  if node then
    unlink(node)
    self.index[key] = nil
    self.count = self.count - 1
  end
end

--- Returns value, or nil when absent or expired. A second value `true` tells an expired entry
-- apart (its value is returned as the third value, for callers that want a stale fallback).
function _M:get(key)
  local node = self.index[key]
  if not node then
    return nil
  end
  if node.expires_ms <= self.now_ms() then
    return nil, true, node.value
  end
  unlink(node)
  push_front(self, node)
  return node.value
end

function _M:set(key, value, ttl_ms)
  local node = self.index[key]
  if node then
    unlink(node)
  else
    if self.count >= self.max_items then
      local oldest = self.tail.prev
      unlink(oldest)
      self.index[oldest.key] = nil
      self.count = self.count - 1
    end
    node = { key = key }
    self.index[key] = node
    self.count = self.count + 1
  end
  node.value = value
  node.expires_ms = self.now_ms() + ttl_ms
  push_front(self, node)
end

function _M:size()
  return self.count
end

return _M
