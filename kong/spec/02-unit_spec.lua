-- Pure modules, table-driven. No PDK, no ngx: each module gets its clock and I/O injected.

local keys = require "kong.plugins.tollgate.keys"
local state = require "kong.plugins.tollgate.state"
local cache = require "kong.plugins.tollgate.cache"
local jsonrpc = require "kong.plugins.tollgate.jsonrpc"
local outcome = require "kong.plugins.tollgate.outcome"
local attributes = require "kong.plugins.tollgate.attributes"
local identity = require "kong.plugins.tollgate.identity"
local enforce = require "kong.plugins.tollgate.enforce"
local store = require "kong.plugins.tollgate.store"
local cjson = require "cjson.safe"

describe("keys", function()
  -- expected strings follow contracts/src/redis-keys.ts (escapeKeyPart / customerTag / redisKeys.state)
  for _, case in ipairs({
    { "plain", "acme", "cust-1", "{acme:cust-1}" },
    { "colon and braces", "a:b", "{x}", "{a%3Ab:%7Bx%7D}" },
    { "percent", "100%", "c", "{100%25:c}" },
    { "space, tab, newline", "p q", "c\td\n", "{p%20q:c%09d%0A}" },
    { "NUL and 0x1F", "p", "\0\31", "{p:%00%1F}" },
    { "0x21 and above pass", "p", "!~\127", "{p:!~\127}" },
    { "UTF-8 passes", "p", "caf\195\169", "{p:caf\195\169}" },
  }) do
    it("customer_tag escapes: " .. case[1], function()
      assert.equal(case[4], keys.customer_tag(case[2], case[3]))
    end)
  end

  it("state key and fields", function()
    local tag = keys.customer_tag("acme", "cust:1")
    assert.equal("tg:{acme:cust%3A1}:state", keys.state_key(tag))
    assert.equal("c", keys.state_field("customer"))
    assert.equal("c", keys.state_field("customer", "ignored"))
    assert.equal("a:agent%3A7", keys.state_field("agent", "agent:7"))
    assert.equal("s:sess%20id", keys.state_field("session", "sess id"))
  end)

  -- slots as reported by `redis-cli CLUSTER KEYSLOT` (Redis 7.0)
  for _, case in ipairs({
    { "123456789", 12739 },
    { "foo", 12182 },
    { "{user1000}.following", 3443 },
    { "tg:{p:c}:state", 11923 },
    { "tg:{acme:cust%3A1}:state", 15344 },
    { "{}x", 10595 },
    { "a{}b{c}", 7353 },
    { "{a", 10276 },
  }) do
    it("slot(" .. case[1] .. ")", function()
      assert.equal(case[2], keys.slot(case[1]))
    end)
  end

  it("all keys of one customer share a slot", function()
    local tag = keys.customer_tag("acme", "big customer")
    assert.equal(keys.slot(keys.state_key(tag)), keys.slot("tg:" .. tag .. ":p:2025-05"))
  end)
end)

describe("state.decode", function()
  for _, case in ipairs({
    { "kill until lifted", "kill|hard_limit:spend_per_period|0||",
      { action = "kill", reason = "hard_limit:spend_per_period", until_ms = 0 } },
    { "throttle with rate and margin", "throttle|margin_guard:throttle|1700000000000|2.5|850",
      { action = "throttle", reason = "margin_guard:throttle", until_ms = 1700000000000, rate = 2.5, margin_bps = 850 } },
    { "warn", "warn|margin_guard:warn|0||1500",
      { action = "warn", reason = "margin_guard:warn", until_ms = 0, margin_bps = 1500 } },
    { "missing parts default", "kill", { action = "kill", reason = "", until_ms = 0 } },
    { "garbage until is 0", "kill|r|soon||", { action = "kill", reason = "r", until_ms = 0 } },
    { "unparsable rate is false (NaN in TS)", "throttle|r|0|fast|", { action = "throttle", reason = "r", until_ms = 0, rate = false } },
    { "extra parts ignored", "kill|r|5|1|2|extra", { action = "kill", reason = "r", until_ms = 5, rate = 1, margin_bps = 2 } },
  }) do
    it(case[1], function()
      assert.same(case[3], state.decode(case[2]))
    end)
  end

  it("resume (a lift) decodes and restricts nothing", function()
    local r = state.decode("resume|operator:alice|0||")
    assert.same({ action = "resume", reason = "operator:alice", until_ms = 0 }, r)
    assert.equal("allow", state.decide({ customer = r }, 1).action)
    assert.is_nil(state.decide({ customer = r }, 1).warn)
  end)

  for _, v in ipairs({ "", "KILL|x|0||", "|kill" }) do
    it("rejects " .. string.format("%q", v), function()
      assert.is_nil(state.decode(v))
    end)
  end
  it("rejects nil", function()
    assert.is_nil(state.decode(nil))
  end)
end)

describe("state.decide", function()
  local NOW = 1000000
  local function s(v) return state.decode(v) end
  for _, case in ipairs({
    { "nothing", {}, "allow" },
    { "customer kill", { customer = s("kill|hard_limit:spend_per_period|0||") }, "kill", "customer" },
    { "expired kill allows", { customer = s("kill|r|" .. (NOW - 1) .. "||") }, "allow" },
    { "future until is in force", { customer = s("kill|r|" .. (NOW + 1) .. "||") }, "kill", "customer" },
    { "kill beats throttle (session kill, customer throttle)",
      { customer = s("throttle|t|0|5|"), session = s("kill|k|0||") }, "kill", "session" },
    { "most restrictive throttle wins",
      { customer = s("throttle|t|0|5|"), agent = s("throttle|t2|0|1|") }, "throttle", "agent", 1 },
    { "bad rate throttles at 0", { customer = s("throttle|t|0|x|") }, "throttle", "customer", 0 },
    { "warn allows", { agent = s("warn|w|0||900") }, "allow" },
  }) do
    it(case[1], function()
      local d = state.decide(case[2], NOW)
      assert.equal(case[3], d.action)
      if case[4] then assert.equal(case[4], d.scope) end
      if case[5] then assert.equal(case[5], d.rate) end
    end)
  end

  it("kill retry_after from until", function()
    local d = state.decide({ customer = s("kill|r|" .. (NOW + 2500) .. "||") }, NOW)
    assert.equal(3, d.retry_after)
    assert.is_nil(state.decide({ customer = s("kill|r|0||") }, NOW).retry_after)
  end)

  it("warn is reported", function()
    local d = state.decide({ agent = s("warn|margin_guard:warn|0||900") }, NOW)
    assert.same({ scope = "agent", reason = "margin_guard:warn", margin_bps = 900 }, d.warn)
  end)
end)

describe("state.take (token bucket)", function()
  it("admits a burst of `rate` then paces", function()
    local b
    local ok
    for _ = 1, 2 do
      ok, _, b = state.take(b, 2, 0)
      assert.is_true(ok)
    end
    local retry
    ok, retry, b = state.take(b, 2, 0)
    assert.is_false(ok)
    assert.equal(1, retry)
    ok, _, b = state.take(b, 2, 500) -- half a second refills one token
    assert.is_true(ok)
  end)

  it("fractional rates wait whole seconds", function()
    local ok, retry, b = state.take(nil, 0.25, 0)
    assert.is_true(ok)
    ok, retry, b = state.take(b, 0.25, 0)
    assert.is_false(ok)
    assert.equal(4, retry)
    ok = state.take(b, 0.25, 4000)
    assert.is_true(ok)
  end)

  it("rate 0 refuses everything", function()
    local ok, retry = state.take(nil, 0, 0)
    assert.is_false(ok)
    assert.equal(1, retry)
  end)

  it("a batch takes its cost and leaves a debt", function()
    local ok, _, b = state.take(nil, 1, 0, nil, 3)
    assert.is_true(ok)
    assert.equal(-2, b.tokens)
    local retry
    ok, retry = state.take(b, 1, 1000)
    assert.is_false(ok)
    assert.equal(2, retry)
  end)
end)

describe("cache", function()
  it("expires entries after their TTL and evicts the least recently used", function()
    local t = 0
    local c = cache.new(2, function() return t end)
    c:set("a", 1, 100)
    c:set("b", 2, 100)
    assert.equal(1, c:get("a")) -- a is now most recent
    c:set("c", 3, 100) -- evicts b
    assert.is_nil(c:get("b"))
    assert.equal(1, c:get("a"))
    assert.equal(3, c:get("c"))
    assert.equal(2, c:size())
    t = 100
    local v, expired, stale = c:get("a")
    assert.is_nil(v)
    assert.is_true(expired)
    assert.equal(1, stale)
    c:delete("a")
    assert.equal(1, c:size())
  end)

  it("caches false-y tables and overwrites", function()
    local c = cache.new(10, function() return 0 end)
    c:set("k", {}, 10)
    assert.same({}, c:get("k"))
    c:set("k", { 1 }, 10)
    assert.same({ 1 }, c:get("k"))
    assert.equal(1, c:size())
  end)

  it("refuses bad arguments", function()
    assert.is_nil((cache.new(0, function() end)))
    assert.is_nil((cache.new(1, nil)))
  end)
end)

describe("jsonrpc.parse", function()
  it("single tools/call", function()
    local p = assert(jsonrpc.parse([[{"jsonrpc":"2.0","id":7,"method":"tools/call",
      "params":{"name":"search","arguments":{"q":"x"},
      "_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}]]))
    assert.is_false(p.batch)
    assert.equal(1, #p.calls)
    local c = p.calls[1]
    assert.equal("search", c.name)
    assert.same({ key = "n:7", text = "7", json = "7" }, c.id)
    assert.equal("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", c.traceparent)
  end)

  it("batch with two tools/call, a tools/list and a notification", function()
    local p = assert(jsonrpc.parse([=[[
      {"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"one"}},
      {"jsonrpc":"2.0","id":2,"method":"tools/list"},
      {"jsonrpc":"2.0","method":"notifications/initialized"},
      {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"two"}}
    ]]=]))
    assert.is_true(p.batch)
    assert.equal(4, p.message_count)
    assert.equal(2, #p.calls)
    assert.equal("s:a", p.calls[1].id.key)
    assert.equal("one", p.calls[1].name)
    assert.equal(4, p.calls[2].index)
    assert.equal(3, #p.ids) -- every request with an id, for a batch refusal
  end)

  for _, case in ipairs({
    { "no id (notification)", [[{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}]], 0 },
    { "null id", [[{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"x"}}]], 0 },
    { "non-call method", [[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}]], 0 },
    { "response from client", [[{"jsonrpc":"2.0","id":1,"result":{}}]], 0 },
  }) do
    it("ignores " .. case[1], function()
      local p = assert(jsonrpc.parse(case[2]))
      assert.equal(case[3], #p.calls)
    end)
  end

  it("accepts a 256-byte tools/call id, and ids reused only by requests that are not tools/call", function()
    local p = assert(jsonrpc.parse('{"jsonrpc":"2.0","id":"' .. ("x"):rep(256)
                                   .. '","method":"tools/call","params":{"name":"echo"}}'))
    assert.equal(1, #p.calls)
    p = assert(jsonrpc.parse([=[[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
      {"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":"1","method":"tools/call","params":{"name":"x"}},
      {"jsonrpc":"2.0","id":2,"result":{}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"y"}}]]=]))
    assert.equal(2, #p.calls) -- "1" is not 1; a client's response does not share the server's answer ids
  end)

  it("keeps a call without a valid name (refusable, not billable)", function()
    local p = assert(jsonrpc.parse([[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":42}}]]))
    assert.equal(1, #p.calls)
    assert.is_nil(p.calls[1].name)
  end)

  for _, case in ipairs({
    { "truncated JSON", [[{"jsonrpc":"2.0","id":1,"method":"tools/call"]], -32700 },
    { "not JSON", "hello", -32700 },
    { "empty", "  \n", -32700 },
    { "scalar", "42", -32600 },
    { "empty batch", " [ ] ", -32600 },
    -- the MCP server runs a tools/call with a string id of any length: one the plugin cannot match
    -- would otherwise pass unenforced and unbilled
    { "a tools/call id over 256 bytes", '{"jsonrpc":"2.0","id":"' .. ("x"):rep(257)
      .. '","method":"tools/call","params":{"name":"echo"}}', -32600 },
    { "a batch's tools/call id over 256 bytes", '[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
      .. '{"jsonrpc":"2.0","id":"' .. ("y"):rep(1000) .. '","method":"tools/call","params":{"name":"echo"}}]', -32600 },
    -- two answers with one id: another request's error could mark the call that ran as failed
    { "a batch reusing a tools/call's id", '[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}},'
      .. '{"jsonrpc":"2.0","id":1,"method":"no/such/method"}]', -32600 },
    { "a batch reusing a tools/call's id (1 and 1.0)", '[{"jsonrpc":"2.0","id":1.0,"method":"ping"},'
      .. '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]', -32600 },
    { "a batch of two tools/call with one id", '[{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x"}},'
      .. '{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"y"}}]', -32600 },
  }) do
    it("rejects " .. case[1], function()
      local p, code, message = jsonrpc.parse(case[2])
      assert.is_nil(p)
      assert.equal(case[3], code)
      assert.is_string(message)
    end)
  end

  it("honours Mcp-Method / Mcp-Name when present", function()
    local body = [[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}]]
    assert.truthy(jsonrpc.parse(body, { method = "tools/call", name = "search" }))
    assert.truthy(jsonrpc.parse(body, {}))
    local p, code = jsonrpc.parse(body, { method = "tools/list" })
    assert.is_nil(p)
    assert.equal(-32020, code)
    p, code = jsonrpc.parse(body, { method = "tools/call", name = "delete_everything" })
    assert.is_nil(p)
    assert.equal(-32020, code)
    -- a client's response to a server request carries no method: nothing to compare
    assert.truthy(jsonrpc.parse([[{"jsonrpc":"2.0","id":3,"result":{}}]], { method = "tools/call" }))
  end)

  for _, case in ipairs({
    { "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", true },
    { "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", false },
    { "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", false },
    { "00-00000000000000000000000000000000-b7ad6b7169203331-01", false },
    { "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", false },
    { "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", false },
  }) do
    it("traceparent " .. case[1], function()
      assert.equal(case[2], jsonrpc.valid_traceparent(case[1]) ~= nil)
    end)
  end

  for _, case in ipairs({
    { 1, "n:1", "1" }, { -3, "n:-3", "-3" }, { 1e15, "n:1000000000000000", "1000000000000000" },
    { 0.5, "n:0.5", "0.5" }, { "x\"y", "s:x\"y", "x\"y" },
  }) do
    it("describe_id " .. tostring(case[1]), function()
      local d = jsonrpc.describe_id(case[1])
      assert.equal(case[2], d.key)
      assert.equal(case[3], d.text)
      assert.equal(case[1], cjson.decode(d.json))
    end)
  end

  it("refusal bodies: single and batch", function()
    local single = assert(jsonrpc.parse([[{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"x"}}]]))
    local body = cjson.decode(jsonrpc.refusal_body(single, -32000, "no", { action = "kill", reason = "r" }))
    assert.same({ jsonrpc = "2.0", id = "r1", error = { code = -32000, message = "no", data = { action = "kill", reason = "r" } } }, body)

    local batch = assert(jsonrpc.parse([=[[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}},
      {"jsonrpc":"2.0","id":2,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/x"}]]=]))
    local arr = cjson.decode(jsonrpc.refusal_body(batch, -32000, "no", nil))
    assert.equal(2, #arr)
    assert.equal(1, arr[1].id)
    assert.equal(2, arr[2].id)
    assert.equal(-32000, arr[2].error.code)
  end)
end)

describe("outcome scanner", function()
  -- feeds `body` in chunks of `size` bytes and returns the scanner
  local function scan(content_type, ids, body, size)
    local s = assert(outcome.new(content_type, ids))
    size = size or #body
    for i = 1, #body, size do
      s:feed(body:sub(i, i + size - 1))
    end
    s:finish()
    return s
  end

  local JSON_OK = [[{"result":{"content":[{"type":"text","text":"ok"}]},"jsonrpc":"2.0","id":1}]]
  local JSON_TOOL_ERR = [[{"result":{"content":[{"type":"text","text":"bad \"input\" }{"}],"isError":true},"jsonrpc":"2.0","id":1}]]
  local JSON_RPC_ERR = [[{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":{"code":1}}}]]
  local NESTED_DECOY = [[{"jsonrpc":"2.0","id":1,"result":{"content":[],"structuredContent":{"isError":true,"error":{"code":5},"id":9}}}]]

  for _, size in ipairs({ 1, 2, 3, 7, 1000 }) do
    describe("in chunks of " .. size, function()
      it("success", function()
        local s = scan("application/json", { "n:1" }, JSON_OK, size)
        assert.same({ is_error = false }, s:result("n:1"))
        assert.is_true(s.done)
      end)
      it("isError: true", function()
        assert.same({ is_error = true }, scan("application/json", { "n:1" }, JSON_TOOL_ERR, size):result("n:1"))
      end)
      it("JSON-RPC error code", function()
        assert.same({ is_error = false, error_code = "-32602" }, scan("application/json", { "n:1" }, JSON_RPC_ERR, size):result("n:1"))
      end)
      it("ignores isError/error/id nested deeper than the result", function()
        assert.same({ is_error = false }, scan("application/json", { "n:1" }, NESTED_DECOY, size):result("n:1"))
      end)
      it("batch array", function()
        local body = "[" .. JSON_OK:gsub('"id":1', '"id":"a"') .. ",\n " .. JSON_RPC_ERR:gsub('"id":1', '"id":2') .. "]"
        local s = scan("application/json; charset=utf-8", { "s:a", "n:2" }, body, size)
        assert.same({ is_error = false }, s:result("s:a"))
        assert.equal("-32602", s:result("n:2").error_code)
      end)
      it("SSE stream: notification, server request with a colliding id, then the answer", function()
        local body = ": keepalive\r\n\r\n"
          .. "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\r\n\r\n"
          .. "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n"
          .. "id: 42\nevent: message\ndata: " .. JSON_TOOL_ERR .. "\n\n"
        local s = scan("text/event-stream", { "n:1" }, body, size)
        assert.same({ is_error = true }, s:result("n:1"))
      end)
      it("SSE data split over several data: lines", function()
        local body = "data: {\"jsonrpc\":\"2.0\",\ndata: \"id\":\"x\",\"error\":{\"code\":-32000,\r\ndata:\"message\":\"m\"}}\r\r"
        local s = scan("text/event-stream", { "s:x" }, body, size)
        assert.equal("-32000", s:result("s:x").error_code)
      end)
    end)
  end

  it("an unparsable SSE event does not poison the next one", function()
    local body = "data: [DONE\n\ndata: " .. JSON_RPC_ERR .. "\n\n"
    local s = scan("text/event-stream", { "n:1" }, body)
    assert.equal("-32602", s:result("n:1").error_code)
  end)

  it("unicode escapes in ids match the decoded request id", function()
    local s = scan("application/json", { "s:é😀" }, [[{"jsonrpc":"2.0","id":"\u00e9\ud83d\ude00","result":{}}]], 1)
    assert.same({ is_error = false }, s:result("s:é😀"))
  end)

  it("error answered with a null id is kept apart", function()
    local s = scan("application/json", { "n:1" }, [[{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: No valid session ID provided"}}]])
    assert.is_nil(s:result("n:1"))
    assert.equal("-32000", s.null_error)
  end)

  it("stays bounded on a large, deeply nested result and still finds isError", function()
    local big = string.rep("x", 300000)
    local nested = string.rep("[", 100) .. string.rep("]", 100)
    local body = [[{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"]] .. big
      .. [["}],"deep":]] .. nested .. [[,"isError":true}}]]
    local s = scan("application/json", { "n:5" }, body, 4096)
    assert.same({ is_error = true }, s:result("n:5"))
  end)

  it("gives up beyond MAX_DEPTH without erroring", function()
    local body = [[{"jsonrpc":"2.0","id":1,"result":]] .. string.rep("[", outcome.MAX_DEPTH + 5)
    local s = scan("application/json", { "n:1" }, body)
    assert.is_true(s:failed())
    assert.is_nil(s:result("n:1"))
  end)

  it("stops reading once every id is answered", function()
    local s = assert(outcome.new("application/json", { "n:1" }))
    assert.is_true(s:feed(JSON_OK))
    local bytes = s.bytes
    s:feed("garbage that would fail the scanner")
    assert.equal(bytes, s.bytes)
    assert.is_false(s:failed())
  end)

  it("ids longer than 256 bytes never match", function()
    local long = string.rep("i", 300)
    local s = scan("application/json", { "s:" .. long }, '{"jsonrpc":"2.0","id":"' .. long .. '","result":{}}')
    assert.is_nil(s:result("s:" .. long))
  end)

  for _, case in ipairs({
    { "application/json", "json" }, { "Application/JSON; charset=utf-8", "json" },
    { "application/vnd.api+json", "json" }, { "text/event-stream", "sse" },
    { "text/plain", nil }, { nil, nil },
  }) do
    it("framing of " .. tostring(case[1]), function()
      assert.equal(case[2], outcome.framing(case[1]))
    end)
  end
end)

describe("attributes", function()
  local call = { id = jsonrpc.describe_id(7), name = "search" }
  local req = { customer = "cust-1", agent = "agent-9", session_id = "sess-1", protocol_version = "2025-06-18",
                transport = "streamable_http", enforcement = "allow" }

  it("successful call carries the MCP semconv and tollgate keys", function()
    assert.same({
      ["mcp.method.name"] = "tools/call",
      ["gen_ai.tool.name"] = "search",
      ["gen_ai.operation.name"] = "execute_tool",
      ["jsonrpc.request.id"] = "7",
      ["network.transport"] = "tcp",
      ["mcp.session.id"] = "sess-1",
      ["mcp.protocol.version"] = "2025-06-18",
      ["tollgate.customer.id"] = "cust-1",
      ["tollgate.agent.id"] = "agent-9",
      ["tollgate.mcp.transport"] = "streamable_http",
      ["tollgate.enforcement"] = "allow",
      ["http.response.status_code"] = 200,
    }, attributes.for_call(call, req, { answer = { is_error = false }, http_status = 200 }))
  end)

  for _, case in ipairs({
    { "tool error", { answer = { is_error = true }, http_status = 200 }, "tool_error", nil },
    { "JSON-RPC error", { answer = { error_code = "-32602" }, http_status = 200 }, "-32602", "-32602" },
    { "no answer, HTTP 502", { http_status = 502 }, "502", nil },
    { "no answer, null-id error", { null_error = "-32000", http_status = 400 }, "-32000", "-32000" },
    { "no answer, HTTP 200", { http_status = 200 }, nil, nil },
  }) do
    it(case[1], function()
      local a = attributes.for_call(call, req, case[2])
      assert.equal(case[3], a["error.type"])
      assert.equal(case[4], a["rpc.response.status_code"])
    end)
  end

  it("refusals are not billable spans", function()
    local a = attributes.for_refusal(req, { action = "kill", reason = "hard_limit:spend_per_period" })
    assert.is_nil(a["mcp.method.name"])
    assert.equal("kill", a["tollgate.enforcement"])
    assert.equal("hard_limit:spend_per_period", a["tollgate.enforcement.reason"])
    assert.equal("cust-1", a["tollgate.customer.id"])
  end)
end)

describe("identity", function()
  local conf = { customer_source = "consumer" }
  for _, case in ipairs({
    { "custom_id first", conf, { custom_id = "cus_1", username = "alice" }, nil, "cus_1" },
    { "username fallback", conf, { username = "alice" }, nil, "alice" },
    { "no consumer", conf, nil, nil, nil },
    { "default customer", { customer_source = "consumer", default_customer = "house" }, nil, nil, "house" },
    { "header source", { customer_source = "header" }, { username = "ignored" }, "hdr-cust", "hdr-cust" },
    { "control chars refused", { customer_source = "header" }, nil, "a\nb", nil },
    { "too long refused", { customer_source = "header" }, nil, string.rep("c", 257), nil },
  }) do
    it("customer: " .. case[1], function()
      assert.equal(case[5], identity.customer(case[2], case[3], case[4]))
    end)
  end

  it("transport and session", function()
    assert.same({ "streamable_http", "s1" }, { identity.transport("s1", nil) })
    assert.same({ "sse", "legacy" }, { identity.transport(nil, "legacy") })
    assert.same({ "streamable_http" }, { identity.transport(nil, nil) })
  end)

  it("query_param reads a raw query as URLSearchParams.get does: first occurrence, exact name, form-decoded, anywhere", function()
    local pad = {}
    for i = 1, 150 do pad[i] = "p" .. i .. "=x" end
    local padded = table.concat(pad, "&")
    assert.equal("abc", identity.query_param(padded .. "&sessionId=abc&sessionId=def", "sessionId"))
    assert.equal("a b/c", identity.query_param("sessionId=a+b%2Fc", "sessionId"))
    assert.equal("x", identity.query_param("session%49d=x", "sessionId"))
    assert.equal("", identity.query_param("sessionId", "sessionId"))
    assert.equal("", identity.query_param("sessionId=", "sessionId"))
    assert.is_nil(identity.query_param("SESSIONID=x&sessionid=y", "sessionId"))
    assert.is_nil(identity.query_param("", "sessionId"))
    assert.is_nil(identity.query_param(nil, "sessionId"))
  end)

  it("header_value trims spaces and tabs around a value as Node and the MCP SDK do, and takes the first of several", function()
    assert.equal("tools/call", identity.header_value("\ttools/call \t"))
    assert.equal("a b", identity.header_value(" a b "))
    assert.equal("x", identity.header_value({ "x", "y" }))
    assert.equal("", identity.header_value("\t"))
    assert.is_nil(identity.header_value(nil))
  end)
end)

describe("enforce.check", function()
  local conf = { product = "acme", fault_tolerant = true }
  local function env_with(values_by_field, now)
    now = now or 0
    local env = { now_ms = function() return now end, ttl_ms = 1000, fetches = 0 }
    env.cache = cache.new(100, env.now_ms)
    env.buckets = cache.new(100, env.now_ms)
    env.fetch = function(key, fields)
      env.fetches = env.fetches + 1
      env.last_key, env.last_fields = key, fields
      if values_by_field == "down" then
        return nil, "connection refused"
      end
      local out = {}
      for i, f in ipairs(fields) do out[i] = values_by_field[f] end
      return out
    end
    env.set_now = function(t) now = t end
    return env
  end

  it("reads customer, agent and session fields of one hash", function()
    local env = env_with({})
    local d = enforce.check(env, conf, { customer = "c:1", agent = "a 1", session = "s1" }, 1)
    assert.equal("allow", d.action)
    assert.equal("tg:{acme:c%3A1}:state", env.last_key)
    assert.same({ "c", "a:a%201", "s:s1" }, env.last_fields)
  end)

  it("caches for ttl_ms, including 'no state'", function()
    local env = env_with({})
    enforce.check(env, conf, { customer = "c" }, 1)
    enforce.check(env, conf, { customer = "c" }, 1)
    assert.equal(1, env.fetches)
    env.set_now(1000)
    enforce.check(env, conf, { customer = "c" }, 1)
    assert.equal(2, env.fetches)
  end)

  it("ttl 0 reads every time", function()
    local env = env_with({})
    env.ttl_ms = 0
    enforce.check(env, conf, { customer = "c" }, 1)
    enforce.check(env, conf, { customer = "c" }, 1)
    assert.equal(2, env.fetches)
  end)

  it("a tool whose calls-per-tool limit is exhausted is refused, other tools pass", function()
    local env = env_with({ ["t:run_report"] = "kill|hard_limit:calls_per_tool|0||" })
    local d = enforce.check(env, conf, { customer = "c", tools = { "search", "run_report", "search" } }, 3)
    assert.equal("kill", d.action)
    assert.equal("tool", d.scope)
    assert.equal("hard_limit:calls_per_tool", d.reason)
    assert.same({ "c", "t:search", "t:run_report" }, env.last_fields)
    assert.equal("allow", enforce.check(env, conf, { customer = "c", tools = { "search" } }, 1).action)
  end)

  it("kill", function()
    local d = enforce.check(env_with({ c = "kill|hard_limit:spend_per_period|0||" }), conf, { customer = "c" }, 1)
    assert.equal("kill", d.action)
    assert.equal("kill", d.enforcement)
    assert.equal("hard_limit:spend_per_period", d.reason)
  end)

  it("throttle paces with a token bucket per scope", function()
    local env = env_with({ ["a:bot"] = "throttle|margin_guard:throttle|0|1|" })
    local d1 = enforce.check(env, conf, { customer = "c", agent = "bot" }, 1)
    assert.equal("allow", d1.action)
    assert.equal("paced", d1.enforcement)
    local d2 = enforce.check(env, conf, { customer = "c", agent = "bot" }, 1)
    assert.equal("throttle", d2.action)
    assert.equal(1, d2.retry_after)
    assert.equal("agent", d2.scope)
  end)

  it("Redis down: fault tolerant allows, unenforced", function()
    local d = enforce.check(env_with("down"), conf, { customer = "c" }, 1)
    assert.equal("allow", d.action)
    assert.equal("unenforced", d.enforcement)
    assert.equal("connection refused", d.error)
  end)

  it("Redis down: not fault tolerant refuses as unavailable", function()
    local d = enforce.check(env_with("down"), { product = "acme", fault_tolerant = false }, { customer = "c" }, 1)
    assert.equal("unavailable", d.action)
    assert.equal(1, d.retry_after)
  end)
end)

describe("store", function()
  local NULL = {}
  -- a fake of the resty.redis surface the store uses; `nodes` maps "host:port" to a handler
  local function fake_driver(nodes, log)
    local Red = {}
    Red.__index = Red
    local driver = { new = function() return setmetatable({}, Red) end }
    function Red:set_timeout(t) self.timeout = t end
    function Red:connect(host, port, opts)
      local addr = host .. ":" .. port
      log[#log + 1] = "connect " .. addr .. " pool=" .. opts.pool
      if not nodes[addr] then return nil, "connection refused" end
      self.addr = addr
      return true
    end
    function Red:get_reused_times() return 0 end
    function Red:auth(p) log[#log + 1] = "auth " .. p; return "OK" end
    function Red:select(db) log[#log + 1] = "select " .. db; return "OK" end
    function Red:asking() log[#log + 1] = "asking " .. self.addr; return "OK" end
    function Red:hmget(key, ...)
      log[#log + 1] = "hmget " .. self.addr .. " " .. key .. " " .. table.concat({ ... }, ",")
      return nodes[self.addr](key, ...)
    end
    function Red:set_keepalive() return true end
    function Red:close() return true end
    return driver
  end

  it("single node: auth, select, nil for missing fields", function()
    local log = {}
    local driver = fake_driver({ ["10.0.0.1:6379"] = function() return { "kill|r|0||", NULL } end }, log)
    local st = assert(store.new({ redis_host = "10.0.0.1", redis_port = 6379, redis_password = "pw", redis_database = 2,
                                  redis_timeout_ms = 50 }, { driver = driver, now_ms = function() return 0 end, null = NULL }))
    local v = assert(st:hmget("tg:{a:b}:state", { "c", "a:x" }))
    assert.same({ "kill|r|0||" }, v)
    assert.equal("auth pw", log[2])
    assert.equal("select 2", log[3])
    assert.matches("pool=10.0.0.1:6379:2:", log[1], 1, true)
  end)

  it("connection failure backs off", function()
    local log = {}
    local t = 0
    local st = store.new({ redis_host = "127.0.0.1", redis_port = 1, redis_timeout_ms = 50 },
                         { driver = fake_driver({}, log), now_ms = function() return t end, null = NULL })
    local v, err = st:hmget("k", { "c" })
    assert.is_nil(v)
    assert.matches("connection refused", err)
    v, err = st:hmget("k", { "c" })
    assert.matches("marked down", err)
    assert.equal(1, #log)
    t = store.BACKOFF_MS
    st:hmget("k", { "c" })
    assert.equal(2, #log)
  end)

  it("cluster: follows MOVED, remembers the slot, honours ASK", function()
    local log = {}
    local key = "tg:{acme:c}:state"
    local slot = keys.slot(key)
    local nodes = {
      ["n1:7000"] = function() return false, "MOVED " .. slot .. " n2:7001" end,
      ["n2:7001"] = function() return { "throttle|t|0|3|" } end,
    }
    local st = store.new({ redis_cluster_nodes = { { ip = "n1", port = 7000 } }, redis_timeout_ms = 50 },
                         { driver = fake_driver(nodes, log), now_ms = function() return 0 end, null = NULL })
    assert.same({ "throttle|t|0|3|" }, st:hmget(key, { "c" }))
    assert.same({ "throttle|t|0|3|" }, st:hmget(key, { "c" }))
    local hmgets = {}
    for _, l in ipairs(log) do if l:match("^hmget") then hmgets[#hmgets + 1] = l end end
    assert.same({ "hmget n1:7000 " .. key .. " c", "hmget n2:7001 " .. key .. " c", "hmget n2:7001 " .. key .. " c" }, hmgets)

    nodes["n2:7001"] = function() return false, "ASK " .. slot .. " n3:7002" end
    nodes["n3:7002"] = function() return { NULL } end
    assert.same({}, st:hmget(key, { "c" }))
    assert.truthy(table.concat(log, "\n"):find("asking n3:7002", 1, true))
  end)

  it("cluster: gives up after MAX_REDIRECTS and on other errors", function()
    local nodes = { ["n1:1"] = function() return false, "MOVED 1 n1:1" end }
    local st = store.new({ redis_cluster_nodes = { { ip = "n1", port = 1 } }, redis_timeout_ms = 50 },
                         { driver = fake_driver(nodes, {}), now_ms = function() return 0 end, null = NULL })
    local v, err = st:hmget("k", { "c" })
    assert.is_nil(v)
    assert.matches("MOVED", err)
    nodes["n1:1"] = function() return false, "WRONGTYPE Operation against a key holding the wrong kind of value" end
    v, err = store.new({ redis_cluster_nodes = { { ip = "n1", port = 1 } }, redis_timeout_ms = 50 },
                       { driver = fake_driver(nodes, {}), now_ms = function() return 0 end, null = NULL }):hmget("k", { "c" })
    assert.is_nil(v)
    assert.matches("WRONGTYPE", err)
  end)

  it("cluster: a dead seed falls over to the next", function()
    local nodes = { ["n2:2"] = function() return { "warn|w|0||" } end }
    local st = store.new({ redis_cluster_nodes = { { ip = "n1", port = 1 }, { ip = "n2", port = 2 } }, redis_timeout_ms = 50 },
                         { driver = fake_driver(nodes, {}), now_ms = function() return 0 end, null = NULL })
    assert.same({ "warn|w|0||" }, st:hmget("k", { "c" }))
  end)

  it("driver loading falls back by name", function()
    package.preload["tollgate.test.fake_redis"] = function() return { new = function() end } end
    local mod, name = store.load_driver({ "does.not.exist", "tollgate.test.fake_redis" })
    assert.is_table(mod)
    assert.equal("tollgate.test.fake_redis", name)
    local none, err = store.load_driver({ "does.not.exist" })
    assert.is_nil(none)
    assert.matches("no Redis client module", err)
  end)
end)

describe("jsonrpc: 2026-07-28 headers", function()
  it("is_modern_version: revision dates from 2026-07-28 on", function()
    assert.is_true(jsonrpc.is_modern_version("2026-07-28"))
    assert.is_true(jsonrpc.is_modern_version("2027-01-01"))
    assert.is_false(jsonrpc.is_modern_version("2025-11-25"))
    assert.is_false(jsonrpc.is_modern_version("2026-07-28x"))
    assert.is_false(jsonrpc.is_modern_version(nil))
  end)

  for _, case in ipairs({
    { "plain", "search", "search" },
    { "optional whitespace stripped", " \tsearch ", "search" },
    { "sentinel", "=?base64?c2VhcmNo?=", "search" },
    { "sentinel, UTF-8", "=?base64?csOpc3Vtw6k=?=", "r\195\169sum\195\169" },
    { "sentinel, empty payload", "=?base64??=", "" },
    { "bad Base64 alphabet", "=?base64?c2Vh*2No?=", nil },
    { "missing padding", "=?base64?csOpc3Vtw6k?=", nil },
    { "padding inside", "=?base64?c2=hcmNo?=", nil },
    { "not UTF-8", "=?base64?/w==?=", nil },
    { "half a sentinel is a plain value", "=?base64?abc", "=?base64?abc" },
  }) do
    it("decode_mcp_name: " .. case[1], function()
      assert.equal(case[3], jsonrpc.decode_mcp_name(case[2]))
    end)
  end

  it("from_headers: tools/call with a name, other methods, and when the body is needed", function()
    local p = jsonrpc.from_headers({ method = "tools/call", name = "search", protocol_version = "2026-07-28" })
    assert.is_true(p.from_headers)
    assert.equal("search", p.calls[1].name)
    assert.is_nil(p.calls[1].id)
    assert.same({}, jsonrpc.from_headers({ method = "tools/list", protocol_version = "2026-07-28" }).calls)
    assert.is_nil(jsonrpc.from_headers({ method = "tools/call", name = "search", protocol_version = "2025-11-25" }))
    assert.is_nil(jsonrpc.from_headers({ method = "tools/call", protocol_version = "2026-07-28" }))
    assert.is_nil(jsonrpc.from_headers({ method = "tools/call", name = "=?base64?!?=", protocol_version = "2026-07-28" }))
    assert.is_nil(jsonrpc.from_headers({ name = "search", protocol_version = "2026-07-28" }))
  end)

  it("header_mismatch: the SDK's cross-checks, in its order", function()
    local msg = { jsonrpc = "2.0", id = 1, method = "tools/call",
                  params = { name = "search", _meta = { ["io.modelcontextprotocol/protocolVersion"] = "2026-07-28" } } }
    assert.is_nil(jsonrpc.header_mismatch(msg, { method = "tools/call", name = "search", protocol_version = "2026-07-28" }))
    assert.equal("2027-01-01", jsonrpc.header_mismatch(msg, { protocol_version = "2027-01-01" }).header)
    assert.equal("tools/list", jsonrpc.header_mismatch(msg, { method = "tools/list", protocol_version = "2026-07-28" }).header)
    assert.equal("(missing)", jsonrpc.header_mismatch(msg, { name = "search", protocol_version = "2026-07-28" }).header)
    assert.equal("(missing)", jsonrpc.header_mismatch(msg, { method = "tools/call", protocol_version = "2026-07-28" }).header)
    assert.matches("invalid Base64", jsonrpc.header_mismatch(msg, { method = "tools/call", name = "=?base64?%?=",
                                                                  protocol_version = "2026-07-28" }).body)
    assert.equal("other", jsonrpc.header_mismatch(msg, { method = "tools/call", name = "other" }).header)
    -- an older client without headers: nothing to compare
    assert.is_nil(jsonrpc.header_mismatch(msg, {}))
  end)
end)

describe("outcome: a call metered from headers", function()
  it("ANY_ID takes the first answer and remembers its id", function()
    local s = outcome.new("text/event-stream", { outcome.ANY_ID })
    s:feed('data: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n')
    s:feed('data: {"jsonrpc":"2.0","id":"x-1","result":{"isError":true}}\n\n')
    s:finish()
    assert.same({ id_key = "s:x-1", is_error = true }, s:result(outcome.ANY_ID))
  end)
end)

describe("session (contracts/src/billing-session.ts)", function()
  local session = require "kong.plugins.tollgate.session"

  it("sha256 matches FIPS 180-4 vectors", function()
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", session.sha256_hex(""))
    assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                 session.sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
  end)

  for _, case in ipairs({
    { "valid, sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736" },
    { "valid, not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "4bf92f3577b34da6a3ce929d0e0e4736" },
    { "future version with a tail", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", "4bf92f3577b34da6a3ce929d0e0e4736" },
    { "version 00 with a tail", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", nil },
    { "version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", nil },
    { "zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", nil },
    { "zero span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", nil },
    { "upper case", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", nil },
    { "not a string", 42, nil },
  }) do
    it("trace id of a traceparent: " .. case[1], function()
      assert.equal(case[3], session.trace_id_of_traceparent(case[2]))
    end)
  end

  it("rules in order: protocol, trace (header, then _meta), activity", function()
    local store = cache.new(10, function() return 0 end)
    local tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    assert.same({ "s-1", "protocol" }, { session.of({ protocol_session = "s-1", traceparent = tp }, store, 1000) })
    assert.same({ "trace-4bf92f3577b34da6a3ce929d0e0e4736", "trace" },
                { session.of({ traceparent = "bogus", meta_traceparent = tp }, store, 1000) })
    local id, rule = session.of({ customer = "c", agent = "a", credential_id = "k", now_ms = 5 }, store, 1000)
    assert.equal("activity", rule)
    assert.equal(session.activity_session_id("c", "a", session.credential_fingerprint("k"), 5), id)
  end)
end)

describe("exporter", function()
  local exporter = require "kong.plugins.tollgate.exporter"

  local function harness(statuses)
    local h = { posts = {}, timers = {}, logs = {} }
    h.ex = exporter.new({
      endpoint = "http://t/v1/traces", authorization = "Bearer k", timeout_ms = 100,
      resource = { ["service.name"] = "kong" }, version = "0.1.0",
      post = function(url, headers, body)
        h.posts[#h.posts + 1] = cjson.decode(body)
        local st = table.remove(statuses, 1)
        if st == 0 then return nil, "connection refused" end
        return st
      end,
      timer_at = function(delay, fn) h.timers[#h.timers + 1] = { delay = delay, fn = fn }; return true end,
      log = function(level, ...) h.logs[#h.logs + 1] = level .. ": " .. table.concat({ ... }) end,
    })
    function h.run()
      local t = table.remove(h.timers, 1)
      t.fn(false)
      return t.delay
    end
    return h
  end

  local function span(i)
    return exporter.encode_span({ trace_id = ("%032x"):format(i), span_id = ("%016x"):format(i), name = "kong",
                                  kind = 2, start_time_ns = 1.7e18, end_time_ns = 1.7e18 + 5e6,
                                  attributes = { ["mcp.method.name"] = "tools/call", ["n"] = 1, ["b"] = false } })
  end

  it("OTLP/JSON: hex ids, nano times as strings, typed attributes, our scope", function()
    local doc = cjson.decode(exporter.encode({ span(1) }, { ["service.name"] = "kong" }, "0.1.0"))
    local s = doc.resourceSpans[1].scopeSpans[1]
    assert.equal("tollgate-kong", s.scope.name)
    assert.equal("1700000000000000000", s.spans[1].startTimeUnixNano)
    assert.equal("", s.spans[1].parentSpanId)
    assert.same({ { key = "b", value = { boolValue = false } },
                  { key = "mcp.method.name", value = { stringValue = "tools/call" } },
                  { key = "n", value = { doubleValue = 1 } } }, s.spans[1].attributes)
  end)

  it("numbers are exact: the JSON text reads back as the very same double (not 14 significant digits)", function()
    local values = { 123456789012345678, 9007199254740993, 2 ^ 53 + 2, 1e14 + 1, 1e15 + 0.5, 0.1, 1 / 3,
                     -2.5e-7, 1e300, -0.0, 1e21, 2 ^ 70, 123456.78901234567, 5e-324, 1200, 0 }
    local attrs = {}
    for i, v in ipairs(values) do attrs["tollgate.usage.n" .. i] = v end
    local text = exporter.encode({ exporter.encode_span({ trace_id = ("%032x"):format(1), span_id = ("%016x"):format(1),
      name = "kong", kind = 2, start_time_ns = 1.7e18, end_time_ns = 1.7e18, attributes = attrs }) },
      { ["service.name"] = "kong" }, "0.1.0")
    local doc = cjson.decode(text) -- strtod: exact
    local got = {}
    for _, kv in ipairs(doc.resourceSpans[1].scopeSpans[1].spans[1].attributes) do got[kv.key] = kv.value.doubleValue end
    for i, v in ipairs(values) do
      assert.equal(v, got["tollgate.usage.n" .. i], ("value %d: %.17g"):format(i, v))
    end
    -- whole numbers are written as integers, others as short as exactness allows
    assert.equal("123456789012345680", exporter.number_text(123456789012345678))
    assert.equal("1200", exporter.number_text(1200))
    assert.equal("0.1", exporter.number_text(0.1))
    assert.equal("0.3333333333333333", exporter.number_text(1 / 3))
    assert.equal("0.30000000000000004", exporter.number_text(0.1 + 0.2))
    assert.equal('"NaN"', exporter.number_text(0 / 0))
    assert.equal('"Infinity"', exporter.number_text(math.huge))
  end)

  it("strings are escaped, empty attribute lists are arrays", function()
    local nasty = 'a"b\\c\n\1/\u{e9}'
    local text = exporter.encode({ exporter.encode_span({ trace_id = ("%032x"):format(1), span_id = ("%016x"):format(1),
      name = nasty, kind = 2, start_time_ns = 1, end_time_ns = 2, attributes = { [nasty] = nasty } }),
      exporter.encode_span({ trace_id = ("%032x"):format(2), span_id = ("%016x"):format(2), name = "kong", kind = 2,
      start_time_ns = 1, end_time_ns = 2 }) }, {}, "0.1.0")
    local doc = cjson.decode(text)
    local spans = doc.resourceSpans[1].scopeSpans[1].spans
    assert.equal(nasty, spans[1].name)
    assert.same({ { key = nasty, value = { stringValue = nasty } } }, spans[1].attributes)
    assert.matches('"attributes":%[%]', text)
    assert.equal(0, #spans[2].attributes)
  end)

  it("one flush for a burst, in batches of BATCH_MAX", function()
    local h = harness({ 200, 200 })
    for i = 1, exporter.BATCH_MAX + 5 do h.ex.push(span(i)) end
    assert.equal(1, #h.timers)
    assert.equal(0, h.run())
    assert.equal(2, #h.posts)
    assert.equal(exporter.BATCH_MAX, #h.posts[1].resourceSpans[1].scopeSpans[1].spans)
    assert.equal(5, #h.posts[2].resourceSpans[1].scopeSpans[1].spans)
    assert.equal(0, h.ex.size())
    assert.equal(exporter.BATCH_MAX + 5, h.ex.sent)
  end)

  it("retries with back-off while the endpoint fails (5xx, 429, no connection), then sends", function()
    local h = harness({ 503, 0, 429, 200 })
    h.ex.push(span(1))
    h.run()
    assert.equal(0.5, h.run())
    assert.equal(1, h.run())
    assert.equal(2, h.run())
    assert.equal(4, #h.posts)
    assert.equal(0, h.ex.size())
    assert.equal(1, h.ex.sent)
    h.ex.push(span(2)) -- back-off reset after a success
    assert.equal(0, h.timers[1].delay)
  end)

  it("drops a batch the endpoint refuses for good (4xx), and counts what the full queue drops", function()
    local h = harness({ 401 })
    h.ex.push(span(1))
    h.run()
    assert.equal(1, h.ex.dropped)
    assert.matches("refused with HTTP 401", h.logs[1])
    local full = harness({})
    for i = 1, exporter.QUEUE_MAX do assert.is_true(full.ex.push(span(i))) end
    assert.is_false(full.ex.push(span(0)))
    assert.equal(1, full.ex.dropped)
  end)
end)

describe("usage the upstream reports (result._meta[\"tollgate/usage\"])", function()
  local usage = require "kong.plugins.tollgate.usage"

  local function scan(content_type, ids, body, size)
    local s = assert(outcome.new(content_type, ids))
    size = size or #body
    for i = 1, #body, size do
      s:feed(body:sub(i, i + size - 1))
    end
    s:finish()
    return s
  end

  -- a tool result as an MCP SDK server sends it, usage in the result's _meta, among other keys
  local function result_with(usage_json, id)
    return '{"result":{"content":[{"type":"text","text":"a \\"_meta\\" in text: {\\"tollgate/usage\\":{}}"}],'
      .. '"_meta":{"io.modelcontextprotocol/related-task":{"taskId":"t"},"tollgate/usage":' .. usage_json
      .. ',"other":{"tollgate/usage":{"tollgate.usage.decoy":1}}},"isError":false},"jsonrpc":"2.0","id":'
      .. (id or "1") .. '}'
  end

  local USAGE = '{"gen_ai.usage.input_tokens":1200,"gen_ai.usage.output_tokens":340,'
    .. '"gen_ai.usage.cache_read.input_tokens":800,"tollgate.usage.rows_scanned":12.5}'
  local EXPECTED = {
    ["gen_ai.usage.input_tokens"] = 1200,
    ["gen_ai.usage.output_tokens"] = 340,
    ["gen_ai.usage.cache_read.input_tokens"] = 800,
    ["tollgate.usage.rows_scanned"] = 12.5,
  }

  for _, size in ipairs({ 1, 2, 3, 5, 7, 64, 100000 }) do
    it("JSON result, chunks of " .. size .. ": every entry, nothing from text or deeper objects", function()
      local s = scan("application/json", { "n:1" }, result_with(USAGE), size)
      local r = s:result("n:1")
      assert.same(EXPECTED, r.usage.values)
      assert.equal(4, r.usage.n)
      assert.equal(0, r.usage.dropped)
      assert.is_false(r.is_error)
      assert.is_false(s:failed())
    end)

    it("SSE result split across chunk boundaries and data: lines, chunks of " .. size, function()
      local body = ": ping\r\n\r\n"
        .. 'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1,'
        .. '"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":99}}}}\r\n\r\n'
        .. "id: 7\nevent: message\ndata: " .. result_with(USAGE):gsub('"_meta":', '\ndata: "_meta":', 1)
        .. "\n\n"
      local s = scan("text/event-stream", { "n:1" }, body, size)
      assert.same(EXPECTED, s:result("n:1").usage.values)
    end)
  end

  it("no usage: the answer carries none", function()
    local s = scan("application/json", { "n:1" }, '{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"a":1}}}')
    assert.same({ is_error = false }, s:result("n:1"))
  end)

  it("usage outside result._meta is not read (params._meta of a request, error.data, structuredContent)", function()
    local s = scan("application/json", { "n:1", "n:2" },
      '[{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"m","data":{"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":5}}}}},'
      .. '{"jsonrpc":"2.0","id":2,"result":{"structuredContent":{"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":5}}}}}]')
    assert.is_nil(s:result("n:1").usage)
    assert.is_nil(s:result("n:2").usage)
  end)

  it("batch: each answer keeps its own usage", function()
    local body = "[" .. result_with('{"gen_ai.usage.input_tokens":1}', '"a"') .. ","
      .. result_with('{"gen_ai.usage.input_tokens":2}', "2") .. "]"
    local s = scan("application/json", { "s:a", "n:2" }, body, 3)
    assert.same({ ["gen_ai.usage.input_tokens"] = 1 }, s:result("s:a").usage.values)
    assert.same({ ["gen_ai.usage.input_tokens"] = 2 }, s:result("n:2").usage.values)
  end)

  it("a tool error's usage is reported too (the processor prices a failed call's lines at 0, counts its cost)", function()
    local s = scan("application/json", { "n:1" },
      '{"jsonrpc":"2.0","id":1,"result":{"isError":true,"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":7}},"content":[]}}')
    assert.is_true(s:result("n:1").is_error)
    assert.same({ ["gen_ai.usage.input_tokens"] = 7 }, s:result("n:1").usage.values)
  end)

  it("bad values are forwarded as they are, for the processor to reject the span (invalid_usage)", function()
    local body = result_with('{"tollgate.usage.neg":-3,"tollgate.usage.frac":0.25,"tollgate.usage.huge":1e13,'
      .. '"tollgate.usage.inf":1e999,"tollgate.usage.text":"12","tollgate.usage.word":"lots","tollgate.usage.esc":"\\u0031\\u00e9",'
      .. '"tollgate.usage.bool":true,"tollgate.usage.obj":{"n":1},"tollgate.usage.arr":[1,2],"tollgate.usage.null":null,'
      .. '"tollgate.usage.long_text":"' .. string.rep("9", 65) .. '","tollgate.usage.long_number":' .. string.rep("9", 70)
      .. ',"tollgate.usage.exp":2E3}')
    for _, size in ipairs({ 1, 4, 100000 }) do
      local s = scan("application/json", { "n:1" }, body, size)
      assert.is_false(s:failed())
      assert.same({
        ["tollgate.usage.neg"] = -3,
        ["tollgate.usage.frac"] = 0.25,
        ["tollgate.usage.huge"] = 1e13,
        ["tollgate.usage.inf"] = "1e999", -- not a finite double: its text
        ["tollgate.usage.text"] = "12",
        ["tollgate.usage.word"] = "lots",
        ["tollgate.usage.esc"] = "1é",
        ["tollgate.usage.bool"] = true,
        ["tollgate.usage.obj"] = usage.OBJECT,
        ["tollgate.usage.arr"] = usage.ARRAY,
        ["tollgate.usage.long_text"] = usage.TOO_LONG,
        ["tollgate.usage.long_number"] = usage.TOO_LONG_NUMBER,
        ["tollgate.usage.exp"] = 2000,
      }, s:result("n:1").usage.values) -- null: no value
      assert.equal(0, s:result("n:1").usage.dropped)
    end
  end)

  it("only gen_ai.usage.* and tollgate.usage.* names: an upstream cannot set the customer or the outcome", function()
    local long = "tollgate.usage." .. string.rep("x", usage.MAX_NAME)
    local s = scan("application/json", { "n:1" }, result_with('{"tollgate.customer.id":"someone-else","error.type":"x",'
      .. '"gen_ai.tool.name":"free","Gen_AI.usage.input_tokens":1,"tollgate.usage.":1,"' .. long .. '":1,'
      .. '"gen_ai.usage.output_tokens":3}'), 2)
    local r = s:result("n:1")
    assert.same({ ["gen_ai.usage.output_tokens"] = 3 }, r.usage.values)
    assert.equal(6, r.usage.dropped)
  end)

  it("too many keys: the first MAX_ENTRIES are kept, the rest counted as dropped; a repeated name keeps the last", function()
    local parts = {}
    for i = 1, usage.MAX_ENTRIES + 8 do
      parts[#parts + 1] = '"tollgate.usage.line_' .. i .. '":' .. i
    end
    parts[#parts + 1] = '"tollgate.usage.line_1":100'
    local s = scan("application/json", { "n:1" }, result_with("{" .. table.concat(parts, ",") .. "}"), 7)
    local r = s:result("n:1")
    assert.equal(usage.MAX_ENTRIES, r.usage.n)
    assert.equal(8, r.usage.dropped)
    assert.equal(100, r.usage.values["tollgate.usage.line_1"])
    assert.equal(usage.MAX_ENTRIES, r.usage.values["tollgate.usage.line_" .. usage.MAX_ENTRIES])
    assert.is_nil(r.usage.values["tollgate.usage.line_" .. (usage.MAX_ENTRIES + 1)])
  end)

  it("a usage key that is not an object reports nothing; the outcome is still read", function()
    local s = scan("application/json", { "n:1" },
      '{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tollgate/usage":[{"gen_ai.usage.input_tokens":1}]},"isError":true}}')
    assert.same({ is_error = true }, s:result("n:1"))
  end)

  it("memory stays bounded: a 1 MB text value and 10,000 dropped names keep nothing", function()
    local parts = { '"tollgate.usage.big":"' .. string.rep("x", 1000000) .. '"' }
    for i = 1, 10000 do
      parts[#parts + 1] = '"other.' .. i .. '":' .. i
    end
    local s = scan("application/json", { "n:1" }, result_with("{" .. table.concat(parts, ",") .. "}"), 8192)
    local r = s:result("n:1")
    assert.same({ ["tollgate.usage.big"] = usage.TOO_LONG }, r.usage.values)
    assert.equal(10000, r.usage.dropped)
  end)

  describe("Tollgate-Usage header", function()
    it("an RFC 8941 dictionary of numbers", function()
      local r = usage.parse_header("gen_ai.usage.input_tokens=120, tollgate.usage.rows_scanned=4.5,gen_ai.usage.output_tokens = 3")
      assert.same({ ["gen_ai.usage.input_tokens"] = 120, ["tollgate.usage.rows_scanned"] = 4.5,
                    ["gen_ai.usage.output_tokens"] = 3 }, r.values)
      assert.equal(0, r.dropped)
    end)
    it("bad values forwarded as text or booleans; members without = and foreign names dropped", function()
      local r = usage.parse_header('tollgate.usage.a=-1, tollgate.usage.b="x", tollgate.usage.c=?1, tollgate.usage.d=abc, junk, tollgate.customer.id=5')
      assert.same({ ["tollgate.usage.a"] = -1, ["tollgate.usage.b"] = "x", ["tollgate.usage.c"] = true,
                    ["tollgate.usage.d"] = "abc" }, r.values)
      assert.equal(2, r.dropped)
    end)
    it("an oversized header is dropped whole", function()
      local r = usage.parse_header("tollgate.usage.a=" .. string.rep("1", usage.MAX_HEADER))
      assert.same({}, r.values)
      assert.equal(1, r.dropped)
    end)
    it("merge: the _meta value wins for a name both carry", function()
      local meta = usage.add(usage.new(), "gen_ai.usage.input_tokens", 10)
      local header = usage.parse_header("gen_ai.usage.input_tokens=99, tollgate.usage.pages=2, x=1")
      local m = usage.merge(meta, header)
      assert.same({ ["gen_ai.usage.input_tokens"] = 10, ["tollgate.usage.pages"] = 2 }, m.values)
      assert.equal(1, m.dropped)
      assert.equal(meta, usage.merge(meta, nil))
      assert.equal(header, usage.merge(nil, header))
    end)
  end)

  it("attributes: the entries under their own names, the dropped count on tollgate.kong.usage_dropped", function()
    local report = usage.parse_header("gen_ai.usage.input_tokens=5, tollgate.usage.rows=2, nope=1")
    local a = attributes.for_call({ id = jsonrpc.describe_id(1), name = "t" }, { customer = "c" },
                                  { answer = { is_error = false }, http_status = 200, usage = report })
    assert.equal(5, a["gen_ai.usage.input_tokens"])
    assert.equal(2, a["tollgate.usage.rows"])
    assert.equal(1, a["tollgate.kong.usage_dropped"])
    assert.equal("t", a["gen_ai.tool.name"])
    local none = attributes.for_call({ id = jsonrpc.describe_id(1), name = "t" }, { customer = "c" },
                                     { answer = { is_error = false }, http_status = 200 })
    assert.is_nil(none["tollgate.kong.usage_dropped"])
  end)
end)
