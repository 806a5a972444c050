-- Incremental outcome scanner for MCP responses: learns, for each tools/call id, whether the
-- response carried a JSON-RPC `error` (and its code) or a result with `isError: true`.
--
-- It also collects the usage the upstream reports in the result's `_meta["tollgate/usage"]` object
-- (usage.lua), in the same single pass.
--
-- It observes the body chunk by chunk as nginx streams it and never holds a chunk back or
-- copies the body: memory is bounded by MAX_DEPTH, the longest key we capture (16 bytes, 96 for a
-- usage attribute name), the longest id (256 bytes) and the usage report (usage.MAX_ENTRIES names
-- with values of at most 64 bytes), whatever the size of the response or the length of an SSE stream.
-- Two framings: `application/json` (one message or a batch array) and `text/event-stream`
-- (each event's `data:` lines carry one JSON-RPC message, or a batch array).

local jsonrpc = require "kong.plugins.tollgate.jsonrpc"
local usage = require "kong.plugins.tollgate.usage"

local byte = string.byte
local char = string.char
local concat = table.concat
local find = string.find
local lower = string.lower
local match = string.match
local sub = string.sub
local tonumber = tonumber
local setmetatable = setmetatable
local bit = require "bit"
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

local canonical_number = jsonrpc.canonical_number

local MAX_DEPTH = 128
local MAX_KEY = 16
local MAX_ID = jsonrpc.MAX_ID_LENGTH
local MAX_SCALAR = 64
local MAX_FIELD = 16
local MAX_USAGE_NAME = usage.MAX_NAME
local MAX_USAGE_TEXT = usage.MAX_TEXT
local USAGE_KEY = usage.META_KEY
local usage_new = usage.new
local usage_add = usage.add
local usage_number = usage.number

local STR, NUM, LIT = 1, 2, 3
local OBJ, ARR = 1, 2

local ESCAPES = {
  [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n", [114] = "\r", [116] = "\t",
}

local function utf8(cp)
  if cp < 0x80 then
    return char(cp)
  elseif cp < 0x800 then
    return char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F)))
  elseif cp < 0x10000 then
    return char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
  end
  return char(bor(0xF0, rshift(cp, 18)), bor(0x80, band(rshift(cp, 12), 0x3F)),
              bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end

---------------------------------------------------------------------------------------------------
-- Streaming JSON scanner: tracks nesting and the few keys a JSON-RPC response outcome needs.
-- Calls on_message(msg) when a message object closes, msg = { id, has_method, has_error,
-- error_code, has_result, is_error, usage (a usage.lua report of result._meta["tollgate/usage"]) }.
---------------------------------------------------------------------------------------------------
local Scanner = {}
Scanner.__index = Scanner

local function new_scanner(on_message)
  local self = setmetatable({ on_message = on_message, stack = {}, keys = {} }, Scanner)
  self:reset()
  return self
end

function Scanner:reset()
  self.depth = 0
  self.msg_level = nil
  self.msg = nil
  -- the depth of the result._meta["tollgate/usage"] object being read, else nil
  self.usage_depth = nil
  self.num_overflow = false
  self.expect_key = false
  self.tok = nil
  self.esc = nil
  self.failed = false
  self.ended = false
end

function Scanner:fail()
  self.failed = true
end

-- a value (scalar or an opening container) just appeared in the container at self.depth
function Scanner:value(kind, v)
  local d = self.depth
  local msg = self.msg
  if not msg or self.stack[d] ~= OBJ then
    return
  end
  local key = self.keys[d]
  local ml = self.msg_level
  if d == ml then
    if key == "id" then
      if kind == STR then
        msg.id = v and ("s:" .. v) or nil
      elseif kind == NUM then
        local n = tonumber(v)
        msg.id = n and ("n:" .. canonical_number(n)) or nil
      end
    elseif key == "method" then
      msg.has_method = true
    elseif key == "error" then
      msg.has_error = true
    elseif key == "result" then
      msg.has_result = true
    end
  elseif d == ml + 1 then
    local parent = self.keys[d - 1]
    if parent == "error" and key == "code" and kind == NUM then
      local n = tonumber(v)
      msg.error_code = n and canonical_number(n) or "unknown"
    elseif parent == "result" and key == "isError" and kind == LIT then
      msg.is_error = v == "true"
    end
  elseif d == self.usage_depth then
    -- one entry of result._meta["tollgate/usage"]: forwarded as it is (usage.lua says why)
    local report = msg.usage
    if not report then
      report = usage_new()
      msg.usage = report
    end
    if key == false then
      report.dropped = report.dropped + 1 -- a name longer than MAX_USAGE_NAME
      return
    end
    local value
    if kind == NUM then
      value = usage_number(v)
    elseif kind == LIT then
      if v == "true" then
        value = true
      elseif v == "false" then
        value = false
      end -- null: no value
    elseif kind == STR then
      value = v or usage.TOO_LONG
    else
      value = kind == "object" and usage.OBJECT or usage.ARRAY
    end
    usage_add(report, key, value)
  end
end

-- true when the container at depth d (d = msg_level + 3) is result._meta["tollgate/usage"]
function Scanner:is_usage_object(d)
  local ml = self.msg_level
  local stack, keys = self.stack, self.keys
  return d == ml + 3 and keys[ml] == "result" and keys[ml + 1] == "_meta" and keys[ml + 2] == USAGE_KEY
         and stack[ml + 1] == OBJ and stack[ml + 2] == OBJ and stack[ml] == OBJ
end

function Scanner:open(kind)
  if self.ended then
    return self:fail()
  end
  self:value(kind == OBJ and "object" or "array")
  local d = self.depth + 1
  if d > MAX_DEPTH then
    return self:fail()
  end
  self.depth = d
  self.stack[d] = kind
  self.keys[d] = nil
  self.expect_key = kind == OBJ
  if d == 1 then
    self.msg_level = kind == OBJ and 1 or 2
  end
  if d == self.msg_level and kind == OBJ then
    self.msg = {}
  elseif kind == OBJ and self.msg and d == self.msg_level + 3 and self:is_usage_object(d) then
    self.usage_depth = d
    if not self.msg.usage then
      self.msg.usage = usage_new()
    end
  end
end

function Scanner:close(kind)
  local d = self.depth
  if d == 0 or self.stack[d] ~= kind then
    return self:fail()
  end
  if d == self.msg_level and kind == OBJ and self.msg then
    local msg = self.msg
    self.msg = nil
    self.on_message(msg)
  end
  if d == self.usage_depth then
    self.usage_depth = nil
  end
  self.depth = d - 1
  self.expect_key = false
  if self.depth == 0 then
    self.ended = true
  end
end

-- decides, at the opening quote, whether this string's bytes are worth keeping
function Scanner:start_string()
  local d = self.depth
  if d == 0 then
    return self:fail()
  end
  local is_key = self.stack[d] == OBJ and self.expect_key
  local ml = self.msg_level
  local cap = 0
  if is_key then
    if d == ml or d == ml + 1 then
      cap = MAX_KEY
    elseif d == self.usage_depth then
      cap = MAX_USAGE_NAME
    elseif d == ml + 2 and self.keys[ml + 1] == "_meta" and self.keys[ml] == "result" then
      cap = MAX_KEY -- a key of result._meta: "tollgate/usage" is one
    end
  elseif d == ml and self.stack[d] == OBJ and self.keys[d] == "id" then
    cap = MAX_ID
  elseif d == self.usage_depth then
    cap = MAX_USAGE_TEXT
  end
  self.tok = STR
  self.is_key = is_key
  self.cap = cap
  self.buf = cap > 0 and {} or nil
  self.len = 0
  self.overflow = false
  self.high = nil
end

function Scanner:capture(s)
  if self.cap == 0 or self.overflow or s == "" then
    return
  end
  local len = self.len + #s
  if len > self.cap then
    self.overflow = true
    self.buf = nil
    return
  end
  self.len = len
  self.buf[#self.buf + 1] = s
end

function Scanner:end_string()
  self.tok = nil
  local s
  if self.cap > 0 and not self.overflow then
    if self.high then
      self:capture(utf8(self.high))
      self.high = nil
    end
    s = self.buf and concat(self.buf) or ""
  end
  if self.is_key then
    -- a key we did not keep (too deep or too long) must not keep matching the previous one
    self.keys[self.depth] = s or false
    self.expect_key = false
  else
    self:value(STR, s)
  end
end

function Scanner:end_scalar()
  local kind, text = self.tok, concat(self.buf)
  self.tok = nil
  if self.num_overflow then
    self.num_overflow = false
    return self:value(STR, usage.TOO_LONG_NUMBER)
  end
  if kind == LIT and text ~= "true" and text ~= "false" and text ~= "null" then
    return self:fail()
  end
  if kind == NUM and not tonumber(text) then
    return self:fail()
  end
  self:value(kind, text)
end

-- \uXXXX: combines surrogate pairs so an escaped astral character captures as UTF-8
function Scanner:unicode(hex)
  local cp = tonumber(hex, 16)
  if not cp then
    return self:fail()
  end
  if cp >= 0xD800 and cp <= 0xDBFF then
    if self.high then
      self:capture(utf8(self.high))
    end
    self.high = cp
    return
  end
  if cp >= 0xDC00 and cp <= 0xDFFF and self.high then
    cp = 0x10000 + lshift(self.high - 0xD800, 10) + (cp - 0xDC00)
    self.high = nil
  elseif self.high then
    self:capture(utf8(self.high))
    self.high = nil
  end
  self:capture(utf8(cp))
end

function Scanner:feed(chunk)
  local i, n = 1, #chunk
  while i <= n do
    if self.failed then
      return
    end
    local tok = self.tok
    if tok == STR then
      local esc = self.esc
      if esc == true then
        local c = byte(chunk, i)
        i = i + 1
        if c == 117 then -- 'u'
          self.esc = ""
        else
          local ch = ESCAPES[c]
          if not ch then
            return self:fail()
          end
          self.esc = nil
          if self.high then
            self:capture(utf8(self.high))
            self.high = nil
          end
          self:capture(ch)
        end
      elseif esc then
        local need = 4 - #esc
        local part = sub(chunk, i, i + need - 1)
        i = i + #part
        esc = esc .. part
        if #esc == 4 then
          self.esc = nil
          self:unicode(esc)
        else
          self.esc = esc
        end
      else
        local j = find(chunk, '["\\]', i)
        if not j then
          if self.high then
            self:capture(utf8(self.high))
            self.high = nil
          end
          self:capture(sub(chunk, i))
          i = n + 1
        else
          if j > i and self.high then
            self:capture(utf8(self.high))
            self.high = nil
          end
          self:capture(sub(chunk, i, j - 1))
          i = j + 1
          if byte(chunk, j) == 34 then
            self:end_string()
          else
            self.esc = true
          end
        end
      end
    elseif tok then -- number or literal
      local j = find(chunk, "[^%w%.%+%-]", i)
      local part = sub(chunk, i, (j or n + 1) - 1)
      self.len = self.len + #part
      if self.len > MAX_SCALAR then
        if tok ~= NUM or self.depth ~= self.usage_depth then
          return self:fail()
        end
        -- an over-long usage quantity: forwarded as a marker the processor refuses, not kept
        self.num_overflow = true
        self.buf = {}
        self.len = 0
      else
        self.buf[#self.buf + 1] = part
      end
      if j then
        i = j
        self:end_scalar()
      else
        i = n + 1
      end
    else
      local j = find(chunk, "[^ \t\r\n]", i)
      if not j then
        return
      end
      local c = byte(chunk, j)
      i = j + 1
      if c == 34 then
        self:start_string()
      elseif c == 123 then
        self:open(OBJ)
      elseif c == 91 then
        self:open(ARR)
      elseif c == 125 then
        self:close(OBJ)
      elseif c == 93 then
        self:close(ARR)
      elseif c == 58 then
        self.expect_key = false
      elseif c == 44 then
        self.expect_key = self.stack[self.depth] == OBJ
      elseif c == 45 or (c >= 48 and c <= 57) or c == 116 or c == 102 or c == 110 then
        if self.depth == 0 then
          return self:fail()
        end
        self.tok = (c == 116 or c == 102 or c == 110) and LIT or NUM
        self.buf = {}
        self.len = 0
        self.num_overflow = false
        i = j
      else
        return self:fail()
      end
    end
  end
end

-- a number or literal at the very end of the input (nothing can follow it)
function Scanner:finish()
  if self.tok == NUM or self.tok == LIT then
    self:end_scalar()
  end
end

---------------------------------------------------------------------------------------------------
-- SSE framing (WHATWG event-stream): feeds the value of `data:` lines to a scanner, one JSON
-- document per event; a blank line ends the event.
---------------------------------------------------------------------------------------------------
local Sse = {}
Sse.__index = Sse

local function new_sse(scanner)
  return setmetatable({
    scanner = scanner,
    in_value = false,
    field = "",
    field_kind = nil,
    strip_space = false,
    saw_cr = false,
    data_lines = 0,
  }, Sse)
end

function Sse:dispatch()
  self.scanner:finish()
  self.scanner:reset()
  self.data_lines = 0
end

function Sse:data_line()
  if self.data_lines > 0 then
    self.scanner:feed("\n")
  end
  self.data_lines = self.data_lines + 1
end

function Sse:feed(chunk)
  local i, n = 1, #chunk
  while i <= n do
    if self.saw_cr then
      self.saw_cr = false
      if byte(chunk, i) == 10 then
        i = i + 1
      end
    end
    if i > n then
      return
    end
    if self.in_value then
      local j = find(chunk, "[\r\n]", i)
      local seg = sub(chunk, i, (j or n + 1) - 1)
      if self.strip_space and seg ~= "" then
        if byte(seg, 1) == 32 then
          seg = sub(seg, 2)
        end
        self.strip_space = false
      end
      if self.field_kind == "data" and seg ~= "" then
        self.scanner:feed(seg)
      end
      if not j then
        return
      end
      self.in_value = false
      self.field = ""
      self.saw_cr = byte(chunk, j) == 13
      i = j + 1
    else
      local j = find(chunk, "[:\r\n]", i)
      if #self.field < MAX_FIELD then
        self.field = sub(self.field .. sub(chunk, i, (j or n + 1) - 1), 1, MAX_FIELD)
      end
      if not j then
        return
      end
      local c = byte(chunk, j)
      i = j + 1
      if c == 58 then
        self.in_value = true
        self.strip_space = true
        if self.field == "data" then
          self.field_kind = "data"
          self:data_line()
        else
          self.field_kind = nil -- comment (empty name) or another field
        end
      else
        if self.field == "" then
          self:dispatch()
        elseif self.field == "data" then
          self:data_line()
        end
        self.field = ""
        self.saw_cr = c == 13
      end
    end
  end
end

function Sse:finish()
  -- an unterminated last event is discarded by the SSE rules; a complete JSON message in it
  -- has already been reported when its object closed
  self.scanner:finish()
end

---------------------------------------------------------------------------------------------------
-- Outcome: which tools/call ids were answered, and how.
---------------------------------------------------------------------------------------------------
local Outcome = {}
Outcome.__index = Outcome

-- the id key of a call metered from its headers (jsonrpc.from_headers): its id is not known, so the
-- first answer that carries an id is its answer (a 2026-07-28 request is a single request)
local ANY_ID = "*"

local _M = {
  MAX_DEPTH = MAX_DEPTH,
  ANY_ID = ANY_ID,
}

--- The framing of a Content-Type: "json", "sse" or nil (not scannable).
function _M.framing(content_type)
  if type(content_type) ~= "string" then
    return nil
  end
  local mime = lower(match(content_type, "^%s*([^;%s]+)") or "")
  if mime == "application/json" or (find(mime, "^application/[%w%.%-]+%+json$")) then
    return "json"
  elseif mime == "text/event-stream" then
    return "sse"
  end
  return nil
end

--- new(content_type, id_keys): id_keys is a list of describe_id().key of the calls to observe.
-- Returns nil when the body is not a framing we can read (the calls then keep the HTTP status).
function _M.new(content_type, id_keys)
  local framing = _M.framing(content_type)
  if not framing then
    return nil
  end
  local self = setmetatable({
    framing = framing,
    wanted = {},
    pending = 0,
    results = {},
    null_error = nil,
    done = false,
    bytes = 0,
  }, Outcome)
  for i = 1, #id_keys do
    if not self.wanted[id_keys[i]] then
      self.wanted[id_keys[i]] = true
      self.pending = self.pending + 1
    end
  end
  local function on_message(msg)
    self:on_message(msg)
  end
  local scanner = new_scanner(on_message)
  self.scanner = scanner
  self.reader = framing == "sse" and new_sse(scanner) or scanner
  return self
end

function Outcome:on_message(msg)
  if msg.has_method then
    return -- a request or notification from the server, not an answer
  end
  local id = msg.id
  if id == nil then
    if msg.has_error and not self.null_error then
      self.null_error = msg.error_code or "unknown"
    end
    return
  end
  if self.wanted[ANY_ID] and not self.results[ANY_ID] then
    id = ANY_ID
  end
  if self.wanted[id] and not self.results[id] then
    self.results[id] = {
      id_key = id == ANY_ID and msg.id or nil,
      error_code = msg.has_error and (msg.error_code or "unknown") or nil,
      is_error = msg.is_error == true,
      usage = msg.usage,
    }
    self.pending = self.pending - 1
    if self.pending == 0 then
      self.done = true
    end
  end
end

--- Feeds one body chunk; returns true once every wanted id has its answer (feeding may stop).
function Outcome:feed(chunk)
  if self.done or chunk == nil or chunk == "" then
    return self.done
  end
  self.bytes = self.bytes + #chunk
  self.reader:feed(chunk)
  return self.done
end

function Outcome:finish()
  if not self.done then
    self.reader:finish()
  end
end

--- { error_code = "-32602" | nil, is_error = bool, usage = usage.lua report | nil } for an answered
-- id, else nil; for ANY_ID the first answer, with id_key = the id key it carried.
function Outcome:result(id_key)
  return self.results[id_key]
end

--- true when the scanner met something that is not JSON and stopped reading.
function Outcome:failed()
  return self.scanner.failed
end

return _M
