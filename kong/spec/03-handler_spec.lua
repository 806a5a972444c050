-- The handler against a faithful fake of the PDK calls it makes (spec/helpers/fake_pdk.lua) and
-- an in-memory resty.redis (spec/helpers/fake_redis.lua). Each test runs a whole request:
-- access -> header_filter -> body_filter (chunk by chunk) -> log.

local fake = require("spec.helpers.fake_pdk").install()
local fake_redis = require "spec.helpers.fake_redis"
package.loaded["resty.redis"] = fake_redis

local kong_schema = require "spec.helpers.kong_schema"
kong_schema.install()
local schema = require "kong.plugins.tollgate.schema"
local handler = require "kong.plugins.tollgate.handler"
local cjson = require "cjson"

local KEY = "tg:{acme:cus_1}:state"

local function config(overrides)
  local c = { product = "acme" }
  for k, v in pairs(overrides or {}) do c[k] = v end
  -- a fresh table per test: the handler keeps per-conf caches, like Kong per plugin instance
  return assert(kong_schema.config(schema, c))
end

local function call_body(id, name, extra)
  return cjson.encode({ jsonrpc = "2.0", id = id, method = "tools/call",
                        params = { name = name, arguments = { q = "x" }, _meta = extra } })
end

local function request(overrides)
  local r = {
    method = "POST",
    headers = { ["Content-Type"] = "application/json", ["Mcp-Session-Id"] = "sess-1",
                ["Mcp-Protocol-Version"] = "2025-06-18", ["X-Agent-Id"] = "agent-7" },
    body = call_body(1, "search"),
    consumer = { id = "c0ffee", username = "alice", custom_id = "cus_1" },
  }
  for k, v in pairs(overrides or {}) do r[k] = v end
  return r
end

local function json_upstream(body, status)
  return { status = status or 200, headers = { ["Content-Type"] = "application/json" }, chunks = { body } }
end

-- a 2026-07-28 Streamable HTTP tools/call: protocol version, method and tool name in headers
local function modern(overrides, headers)
  local r = request(overrides)
  r.headers = { ["Content-Type"] = "application/json", ["Mcp-Protocol-Version"] = "2026-07-28",
                ["Mcp-Method"] = "tools/call", ["Mcp-Name"] = "search", ["X-Agent-Id"] = "agent-7" }
  for k, v in pairs(headers or {}) do r.headers[k] = v or nil end
  return r
end

local function attrs(span)
  return span.attributes or {}
end

local function hex(bytes)
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- For the enclosing describe: the exporter's HTTP POSTs are recorded in the returned list (emptied before
-- each test) and answered 200, instead of being sent.
local function record_posts()
  local exporter = require "kong.plugins.tollgate.exporter"
  local posts, real_post = {}, exporter.http_post
  setup(function()
    exporter.http_post = function(url, headers, body, timeout_ms)
      posts[#posts + 1] = { url = url, headers = headers, body = body, timeout_ms = timeout_ms }
      return 200
    end
  end)
  teardown(function()
    exporter.http_post = real_post
  end)
  before_each(function()
    for i = #posts, 1, -1 do posts[i] = nil end
  end)
  return posts
end

describe("tollgate handler", function()
  before_each(function()
    fake_redis.reset()
    fake.advance_ms(60000) -- well past any cache TTL or throttle bucket of a previous test
  end)

  it("runs before Kong's opentelemetry plugin (priority 14) and after auth plugins", function()
    assert.is_true(handler.PRIORITY > 14)
    assert.is_true(handler.PRIORITY < 1030) -- hmac-auth, the lowest-priority auth plugin
    assert.equal("0.1.0", handler.VERSION)
  end)

  it("allowed call: root span carries the MCP and tollgate attributes", function()
    local res = fake.run(handler, config(), request(),
      json_upstream([[{"result":{"content":[{"type":"text","text":"ok"}]},"jsonrpc":"2.0","id":1}]]))
    assert.is_nil(res.exit)
    assert.equal("kong", res.root.name)
    assert.equal(2, res.root.kind)
    local a = attrs(res.root)
    assert.equal("tools/call", a["mcp.method.name"])
    assert.equal("search", a["gen_ai.tool.name"])
    assert.equal("execute_tool", a["gen_ai.operation.name"])
    assert.equal("sess-1", a["mcp.session.id"])
    assert.equal("2025-06-18", a["mcp.protocol.version"])
    assert.equal("1", a["jsonrpc.request.id"])
    assert.equal("tcp", a["network.transport"])
    assert.equal("cus_1", a["tollgate.customer.id"])
    assert.equal("agent-7", a["tollgate.agent.id"])
    assert.equal("streamable_http", a["tollgate.mcp.transport"])
    assert.equal("allow", a["tollgate.enforcement"])
    assert.equal(200, a["http.response.status_code"])
    assert.is_nil(a["error.type"])
    -- Kong's own attributes are still there
    assert.equal(200, a["http.status_code"])
    assert.equal("POST", a["http.method"])
    -- exactly one HMGET of one hash: customer, agent, session and the called tool
    assert.equal(1, fake_redis.hmgets())
    local hmget = fake_redis.log[#fake_redis.log]
    assert.equal(KEY, hmget.key)
    assert.same({ "c", "a:agent-7", "s:sess-1", "t:search" }, hmget.fields)
  end)

  it("SSE response: passed through unchanged, isError seen across chunk boundaries", function()
    local sse = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\n"
      .. "event: message\r\ndata: {\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"no\"}],\"isError\":true},\"jsonrpc\":\"2.0\",\"id\":1}\r\n\r\n"
    local chunks = {}
    for i = 1, #sse, 5 do chunks[#chunks + 1] = sse:sub(i, i + 4) end
    local res = fake.run(handler, config(), request(),
      { status = 200, headers = { ["Content-Type"] = "text/event-stream" }, chunks = chunks })
    assert.equal(sse, res.downstream_body)
    assert.equal("tool_error", attrs(res.root)["error.type"])
    assert.is_nil(attrs(res.root)["rpc.response.status_code"])
  end)

  it("JSON-RPC error answer sets error.type and rpc.response.status_code", function()
    local res = fake.run(handler, config(), request(),
      json_upstream([[{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unknown tool"}}]]))
    assert.equal("-32602", attrs(res.root)["error.type"])
    assert.equal("-32602", attrs(res.root)["rpc.response.status_code"])
  end)

  it("upstream failure without a JSON-RPC answer: error.type is the HTTP status", function()
    local res = fake.run(handler, config(), request(),
      { status = 502, headers = { ["Content-Type"] = "text/html" }, chunks = { "<html>bad gateway</html>" } })
    assert.equal("502", attrs(res.root)["error.type"])
    assert.equal(502, attrs(res.root)["http.response.status_code"])
  end)

  it("a request a later plugin short-circuits never reached the tool: not billable", function()
    local res = fake.run(handler, config(), request(), { exit_by_later_plugin = true, status = 429,
      headers = { ["Content-Type"] = "application/json" }, chunks = { '{"message":"API rate limit exceeded"}' } })
    local a = attrs(res.root)
    assert.is_nil(a["mcp.method.name"])
    assert.equal("gateway_exit", a["tollgate.enforcement"])
    assert.equal("cus_1", a["tollgate.customer.id"])
  end)

  it("Kong's own upstream error before the request was sent (connect timeout): billed as a failed call", function()
    local res = fake.run(handler, config(), request(), { error = true, status = 504,
      headers = { ["Content-Type"] = "text/plain" }, chunks = { "An invalid response was received from the upstream server" },
      vars = { upstream_bytes_sent = "0", upstream_bytes_received = "0", upstream_status = "504" } })
    assert.equal("tools/call", attrs(res.root)["mcp.method.name"])
    assert.equal("504", attrs(res.root)["error.type"])
    assert.is_nil(attrs(res.root)["tollgate.outcome"])
  end)

  describe("a call that reached the upstream but whose answer nobody saw", function()
    it("the client hung up while the tool ran (499): billed as a call that ran, outcome unknown", function()
      local res = fake.run(handler, config(), request(), { client_closed = true, chunks = {},
        vars = { upstream_bytes_sent = "412", upstream_bytes_received = "0", upstream_status = "-" } })
      assert.equal(499, res.status)
      local a = attrs(res.root)
      assert.equal("tools/call", a["mcp.method.name"])
      assert.is_nil(a["error.type"])
      assert.is_nil(a["http.response.status_code"]) -- 499 there would make the processor call it failed
      assert.is_nil(a["rpc.response.status_code"])
      assert.equal("unknown", a["tollgate.outcome"])
      assert.equal("client_closed", a["tollgate.outcome.reason"])
    end)

    it("a client that hung up before anything was sent upstream (499, no upstream variables): failed", function()
      local res = fake.run(handler, config(), request(), { client_closed = true, chunks = {} })
      assert.equal("499", attrs(res.root)["error.type"])
      assert.is_nil(attrs(res.root)["tollgate.outcome"])
    end)

    it("Kong's read timeout ran out while the tool ran (504, request sent, nothing received): billed", function()
      local res = fake.run(handler, config(), request(), { error = true, status = 504,
        headers = { ["Content-Type"] = "text/html" }, chunks = { "<html>504 Gateway Time-out</html>" },
        vars = { upstream_bytes_sent = "412", upstream_bytes_received = "0", upstream_status = "504" } })
      local a = attrs(res.root)
      assert.is_nil(a["error.type"])
      assert.is_nil(a["http.response.status_code"])
      assert.equal("unknown", a["tollgate.outcome"])
      assert.equal("upstream_timeout", a["tollgate.outcome.reason"])
      assert.equal(504, a["http.status_code"]) -- Kong's own attribute still tells the status
    end)

    it("a 504 the service itself answered (bytes received from it) stays a failed call", function()
      local res = fake.run(handler, config(), request(), { status = 504,
        headers = { ["Content-Type"] = "text/plain" }, chunks = { "gateway timeout further up" },
        vars = { upstream_bytes_sent = "412", upstream_bytes_received = "137", upstream_status = "504" } })
      assert.equal("504", attrs(res.root)["error.type"])
      assert.is_nil(attrs(res.root)["tollgate.outcome"])
    end)

    it("a retry after a refused connect counts the try that sent: '0, 412' is sent", function()
      local res = fake.run(handler, config(), request(), { error = true, status = 504,
        headers = { ["Content-Type"] = "text/html" }, chunks = { "" },
        vars = { upstream_bytes_sent = "0, 412", upstream_bytes_received = "0, 0", upstream_status = "502, 504" } })
      assert.equal("upstream_timeout", attrs(res.root)["tollgate.outcome.reason"])
    end)

    it("502 with nothing sent (connect refused) stays a failed call", function()
      local res = fake.run(handler, config(), request(), { error = true, status = 502,
        headers = { ["Content-Type"] = "text/html" }, chunks = { "<html>502 Bad Gateway</html>" },
        vars = { upstream_bytes_sent = "0", upstream_bytes_received = "0", upstream_status = "502" } })
      assert.equal("502", attrs(res.root)["error.type"])
      assert.equal(502, attrs(res.root)["http.response.status_code"])
      assert.is_nil(attrs(res.root)["tollgate.outcome"])
    end)

    it("a batch whose client hung up: every call is billed with an unknown outcome", function()
      local body = "[" .. call_body(1, "search") .. "," .. call_body(2, "fetch") .. "]"
      local res = fake.run(handler, config(), request({ body = body }), { client_closed = true, chunks = {},
        vars = { upstream_bytes_sent = "700", upstream_bytes_received = "0" } })
      local spans = {}
      for _, sp in ipairs(res.spans) do
        if attrs(sp)["mcp.method.name"] == "tools/call" then spans[#spans + 1] = sp end
      end
      assert.equal(2, #spans)
      for _, sp in ipairs(spans) do
        assert.is_nil(attrs(sp)["error.type"])
        assert.equal("unknown", attrs(sp)["tollgate.outcome"])
      end
    end)
  end)

  it("compressed responses are not scanned; the status still counts", function()
    local res = fake.run(handler, config(), request(), { status = 200,
      headers = { ["Content-Type"] = "application/json", ["Content-Encoding"] = "gzip" }, chunks = { "\31\139..." } })
    assert.is_nil(res.plugin_ctx.tollgate.scanner)
    assert.is_nil(attrs(res.root)["error.type"])
  end)

  it("a metered request is sent to the upstream without Accept-Encoding, so its answer can be read; others keep it", function()
    local r = request()
    r.headers["Accept-Encoding"] = "gzip, br"
    local res = fake.run(handler, config(), r)
    assert.is_false(res.upstream_headers["accept-encoding"])
    r = request({ body = cjson.encode({ jsonrpc = "2.0", id = 2, method = "tools/list" }) })
    r.headers["Accept-Encoding"] = "gzip"
    res = fake.run(handler, config(), r)
    assert.is_nil(res.upstream_headers["accept-encoding"])
  end)

  it("killed customer: 403 with a JSON-RPC error, span not billable", function()
    fake_redis.hset(KEY, "c", "kill|hard_limit:spend_per_period|0||")
    local res = fake.run(handler, config(), request({ body = call_body("req-9", "search") }))
    assert.equal(403, res.exit.status)
    assert.equal("application/json", res.exit.headers["Content-Type"])
    assert.is_nil(res.exit.headers["Retry-After"])
    local body = cjson.decode(res.exit.body)
    assert.equal("2.0", body.jsonrpc)
    assert.equal("req-9", body.id)
    assert.equal(-32050, body.error.code)
    assert.same({ reason = "hard_limit:spend_per_period", action = "kill", scope = "customer" }, body.error.data)
    local a = attrs(res.root)
    assert.is_nil(a["mcp.method.name"])
    assert.equal("kill", a["tollgate.enforcement"])
    assert.equal("hard_limit:spend_per_period", a["tollgate.enforcement.reason"])
    assert.equal(403, res.root.attributes["http.status_code"])
  end)

  it("a tool's kill (calls-per-tool) is read for every named call of a batch, whatever comes before it", function()
    fake_redis.hset(KEY, "t:search", "kill|hard_limit:calls_per_tool|0||")
    -- a tools/call without a valid name first (the server answers it -32602 and runs the next one)
    for _, first in ipairs({
      [[{"jsonrpc":"2.0","id":1,"method":"tools/call"}]],
      [[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}]],
      [[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}]],
    }) do
      local res = fake.run(handler, config(), request({ body = "[" .. first .. "," .. call_body(2, "search") .. "]" }))
      assert.is_table(res.exit, first)
      assert.equal(403, res.exit.status)
      assert.equal("tool", cjson.decode(res.exit.body)[1].error.data.scope)
      local hmget = fake_redis.log[#fake_redis.log]
      assert.same({ "c", "a:agent-7", "s:sess-1", "t:search" }, hmget.fields)
    end
  end)

  it("kill with an end time reports retryAfterSeconds; a session kill survives nothing else", function()
    fake_redis.hset(KEY, "s:sess-1", "kill|operator|" .. (fake.clock_ms() + 90000) .. "||")
    local res = fake.run(handler, config({ kill_http_status = 402 }), request())
    assert.equal(402, res.exit.status)
    local data = cjson.decode(res.exit.body).error.data
    assert.equal(90, data.retryAfterSeconds)
    assert.equal("session", data.scope)
    -- another session of the same customer is not killed
    local other = request()
    other.headers["Mcp-Session-Id"] = "sess-2"
    assert.is_nil(fake.run(handler, config(), other).exit)
  end)

  it("a lapsed kill no longer refuses", function()
    fake_redis.hset(KEY, "c", "kill|hard_limit:calls_per_day|" .. (fake.clock_ms() - 1) .. "||")
    assert.is_nil(fake.run(handler, config(), request()).exit)
  end)

  it("throttled agent: paced by a token bucket, 429 with Retry-After when empty", function()
    fake_redis.hset(KEY, "a:agent-7", "throttle|margin_guard:throttle|0|1|900")
    local conf = config()
    local first = fake.run(handler, conf, request())
    assert.is_nil(first.exit)
    assert.equal("paced", attrs(first.root)["tollgate.enforcement"])
    local second = fake.run(handler, conf, request())
    assert.equal(429, second.exit.status)
    assert.equal("1", second.exit.headers["Retry-After"])
    local data = cjson.decode(second.exit.body).error.data
    assert.same({ reason = "margin_guard:throttle", action = "throttle", scope = "agent", retryAfterSeconds = 1 }, data)
    fake.advance_ms(1000)
    assert.is_nil(fake.run(handler, conf, request()).exit)
  end)

  it("kill takes precedence over throttle", function()
    fake_redis.hset(KEY, "c", "throttle|margin_guard:throttle|0|100|")
    fake_redis.hset(KEY, "a:agent-7", "kill|margin_guard:kill|0||-50")
    local res = fake.run(handler, config(), request())
    assert.equal(403, res.exit.status)
    assert.equal("agent", cjson.decode(res.exit.body).error.data.scope)
  end)

  it("batch: first call on the root span, the next as a child span, outcomes by id", function()
    local body = cjson.encode({
      { jsonrpc = "2.0", id = 1, method = "tools/call", params = { name = "one" } },
      { jsonrpc = "2.0", id = 2, method = "tools/list" },
      { jsonrpc = "2.0", id = "b", method = "tools/call", params = { name = "two" } },
    })
    local answer = '[{"jsonrpc":"2.0","id":"b","result":{"content":[],"isError":true}},'
      .. '{"jsonrpc":"2.0","id":2,"result":{"tools":[]}},{"jsonrpc":"2.0","id":1,"result":{"content":[]}}]'
    local res = fake.run(handler, config(), request({ body = body }), json_upstream(answer))
    assert.is_nil(res.exit)
    assert.equal("one", attrs(res.root)["gen_ai.tool.name"])
    assert.is_nil(attrs(res.root)["error.type"])
    local child
    for _, span in ipairs(res.spans) do
      if span.name == "tools/call two" then child = span end
    end
    assert.is_table(child)
    assert.equal(res.root, child.parent)
    assert.equal(res.root.span_id, child.parent_id)
    assert.equal(res.root.trace_id, child.trace_id)
    assert.equal(2, child.kind)
    assert.equal(res.root.start_time_ns, child.start_time_ns)
    assert.equal(res.root.end_time_ns, child.end_time_ns)
    assert.equal("two", attrs(child)["gen_ai.tool.name"])
    assert.equal("b", attrs(child)["jsonrpc.request.id"])
    assert.equal("tool_error", attrs(child)["error.type"])
    assert.equal("cus_1", attrs(child)["tollgate.customer.id"])
    assert.equal("tools/call", attrs(child)["mcp.method.name"])
  end)

  it("batch refused: one error per request that has an id", function()
    fake_redis.hset(KEY, "c", "kill|hard_limit:spend_per_period|0||")
    local body = cjson.encode({
      { jsonrpc = "2.0", id = 1, method = "tools/call", params = { name = "one" } },
      { jsonrpc = "2.0", id = 2, method = "tools/list" },
      { jsonrpc = "2.0", method = "notifications/initialized" },
    })
    local res = fake.run(handler, config(), request({ body = body }))
    assert.equal(403, res.exit.status)
    local arr = cjson.decode(res.exit.body)
    assert.equal(2, #arr)
    assert.same({ 1, 2 }, { arr[1].id, arr[2].id })
    assert.equal("kill", arr[1].error.data.action)
  end)

  it("a batch takes one token per tools/call", function()
    fake_redis.hset(KEY, "c", "throttle|t|0|2|")
    local body = cjson.encode({
      { jsonrpc = "2.0", id = 1, method = "tools/call", params = { name = "one" } },
      { jsonrpc = "2.0", id = 2, method = "tools/call", params = { name = "two" } },
    })
    local conf = config()
    assert.is_nil(fake.run(handler, conf, request({ body = body })).exit)
    assert.equal(429, fake.run(handler, conf, request()).exit.status)
  end)

  for _, case in ipairs({
    { "truncated JSON", '{"jsonrpc":"2.0","id":1,"method":"tools/call"', -32700 },
    { "empty body", "", -32700 },
    { "a JSON string", '"tools/call"', -32600 },
  }) do
    it("malformed request (" .. case[1] .. "): 400 with a JSON-RPC error, no Redis read", function()
      local res = fake.run(handler, config(), request({ body = case[2] }))
      assert.equal(400, res.exit.status)
      local body = cjson.decode(res.exit.body)
      assert.equal(cjson.null, body.id)
      assert.equal(case[3], body.error.code)
      assert.equal(0, fake_redis.hmgets())
      assert.is_nil(attrs(res.root)["mcp.method.name"])
    end)
  end

  it("Mcp-Name that contradicts a decoded body is refused as the MCP SDK does: 400, -32020, id echoed", function()
    local r = request()
    r.headers["Mcp-Method"] = "tools/call"
    r.headers["Mcp-Name"] = "cheap_tool"
    local res = fake.run(handler, config(), r)
    assert.equal(400, res.exit.status)
    local body = cjson.decode(res.exit.body)
    assert.equal(-32020, body.error.code)
    assert.equal(1, body.id)
    assert.same({ header = "cheap_tool",
                  body = 'the body carries params.name="search" but the Mcp-Name header names "cheap_tool"' },
                body.error.data.mismatch)
    assert.equal(0, fake_redis.hmgets())
    -- Kong still exports its spans, which carry nothing billable
    assert.equal(2, #res.exported)
    for _, span in ipairs(res.exported) do
      assert.is_nil(attrs(span)["mcp.method.name"])
    end
  end)

  describe("a header Kong reads under another spelling than the server (underscores_in_headers on)", function()
    -- Kong's get_header reads ngx.var.http_<name>, which nginx matches against `Mcp_Method` as well as
    -- `Mcp-Method` (kong/templates/nginx_kong.lua: underscores_in_headers on); the MCP server behind does not
    local function refused(res, name)
      assert.equal(400, res.exit.status)
      local body = cjson.decode(res.exit.body)
      assert.equal(-32600, body.error.code)
      assert.truthy(body.error.message:find(name, 1, true), body.error.message)
      assert.equal(0, fake_redis.hmgets())
      for _, span in ipairs(res.exported) do
        assert.is_nil(attrs(span)["mcp.method.name"])
      end
    end

    it("Mcp_Method / MCP_Protocol_Version / Mcp_Name naming a cheap call over the body's real one: 400, nothing metered", function()
      -- the body a 2.x server serves as a legacy request (no version header it can read)
      local r = modern({ body = call_body(1, "delete_everything") },
                       { ["Mcp-Protocol-Version"] = false, ["MCP_Protocol_Version"] = "2026-07-28" })
      refused(fake.run(handler, config(), r), "mcp_protocol_version")
      r = modern({ body = call_body(1, "delete_everything") },
                 { ["Mcp-Method"] = false, ["Mcp_Method"] = "tools/list" })
      refused(fake.run(handler, config(), r), "mcp_method")
      r = modern({ body = call_body(1, "delete_everything") }, { ["Mcp-Name"] = false, ["mcp_name"] = "c2VhcmNo" })
      refused(fake.run(handler, config(), r), "mcp_name")
      -- beside the dashed one too
      r = modern(nil, { ["Mcp_Session_Id"] = "other" })
      refused(fake.run(handler, config(), r), "mcp_session_id")
    end)

    it("the customer and agent headers: a client's X_Customer_Id never names the customer", function()
      local r = request()
      r.consumer = nil
      r.headers["X_Customer_Id"] = "cus_victim"
      refused(fake.run(handler, config({ customer_source = "header" }), r), "x_customer_id")
      r = request()
      r.headers["X_Agent_Id"] = "agent-9"
      refused(fake.run(handler, config(), r), "x_agent_id")
      -- a customer header is not watched when the customer comes from the consumer
      fake_redis.reset()
      r = request()
      r.headers["X_Customer_Id"] = "cus_victim"
      local res = fake.run(handler, config(), r)
      assert.is_nil(res.exit)
      assert.equal("cus_1", attrs(res.root)["tollgate.customer.id"])
    end)

    it("a watched header sent twice, or more headers than Kong lists: 400", function()
      local r = modern(nil, { ["Mcp-Name"] = { "c2VhcmNo", "ZGVsZXRl" } })
      refused(fake.run(handler, config(), r), "mcp-name")
      r = request()
      for i = 1, 1000 do r.headers["X-Filler-" .. i] = "x" end
      refused(fake.run(handler, config(), r), "more than 1000 headers")
    end)

    it("values are read as the server reads them, spaces and tabs around them removed: a session kill holds", function()
      fake_redis.hset(KEY, "s:sess-1", "kill|operator|0||")
      local r = request()
      r.headers["Mcp-Session-Id"] = "\tsess-1 "
      local res = fake.run(handler, config(), r)
      assert.equal(403, res.exit.status)
      r = modern(nil, { ["Mcp-Method"] = "\ttools/call", ["Mcp-Name"] = "search" })
      fake_redis.reset()
      fake_redis.hset(KEY, "c", "kill|operator|0||")
      res = fake.run(handler, config(), r)
      assert.equal(403, res.exit.status) -- without the trim, "\ttools/call" named no tools/call: passed unmetered
    end)

    it("configured names are matched as configured, whatever their case", function()
      local r = request()
      r.headers["X-Agent-Id"] = nil
      r.headers["x_agent"] = "agent-u"
      local res = fake.run(handler, config({ agent_header = "X_Agent" }), r)
      assert.is_nil(res.exit)
      assert.equal("agent-u", attrs(res.root)["gen_ai.agent.id"] or attrs(res.root)["tollgate.agent.id"])
    end)
  end)

  it("a later plugin's runtime error in access (Kong's 500, get_source 'error'): a failed call, like Kong's own upstream error", function()
    local res = fake.run(handler, config(), request(), { later_plugin_error = true })
    assert.equal(500, res.status)
    local a = attrs(res.root)
    assert.equal("tools/call", a["mcp.method.name"])
    assert.equal("500", a["error.type"])
    assert.equal("allow", a["tollgate.enforcement"]) -- not "gateway_exit": get_source says "error", not "exit"
  end)

  it("requests without tools/call pass untouched and unmetered", function()
    local init = fake.run(handler, config(), request({
      body = '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}' }))
    assert.is_nil(init.exit)
    assert.is_nil(init.plugin_ctx.tollgate)
    assert.is_nil(attrs(init.root)["mcp.method.name"])
    local get = fake.run(handler, config(), request({ method = "GET", body = nil }),
      { status = 200, headers = { ["Content-Type"] = "text/event-stream" }, chunks = { ": ping\n\n" } })
    assert.is_nil(get.exit)
    assert.equal(0, fake_redis.hmgets())
  end)

  it("Redis down, fault_tolerant: the call passes, marked unenforced, error logged once", function()
    fake_redis.down = true
    local conf = config()
    local res = fake.run(handler, conf, request())
    assert.is_nil(res.exit)
    assert.equal("unenforced", attrs(res.root)["tollgate.enforcement"])
    assert.equal("tools/call", attrs(res.root)["mcp.method.name"])
    assert.equal("err", res.logs[1].level)
    assert.matches("connection refused", res.logs[1].message)
  end)

  it("Redis down, not fault tolerant: 503 with Retry-After", function()
    fake_redis.down = true
    local res = fake.run(handler, config({ fault_tolerant = false }), request())
    assert.equal(503, res.exit.status)
    assert.equal("1", res.exit.headers["Retry-After"])
    local err = cjson.decode(res.exit.body).error
    assert.equal(-32052, err.code)
    assert.equal("unavailable", err.data.action)
    assert.equal("enforcement_unavailable", err.data.reason)
  end)

  it("caches the state for cache_ttl_ms: a new kill is seen after the TTL", function()
    local conf = config({ cache_ttl_ms = 1000 })
    assert.is_nil(fake.run(handler, conf, request()).exit)
    fake_redis.hset(KEY, "c", "kill|operator|0||")
    assert.is_nil(fake.run(handler, conf, request()).exit) -- stale for up to 1 s
    assert.equal(1, fake_redis.hmgets())
    fake.advance_ms(1000)
    assert.equal(403, fake.run(handler, conf, request()).exit.status)
    assert.equal(2, fake_redis.hmgets())
  end)

  it("customer from a header, or the default customer, or none", function()
    local function anonymous()
      local r = request()
      r.consumer = nil
      return r
    end
    local r = anonymous()
    r.headers["X-Customer-Id"] = "cus_h"
    local res = fake.run(handler, config({ customer_source = "header" }), r)
    assert.equal("cus_h", attrs(res.root)["tollgate.customer.id"])
    assert.equal("tg:{acme:cus_h}:state", fake_redis.log[#fake_redis.log].key)

    res = fake.run(handler, config({ default_customer = "house" }), anonymous())
    assert.equal("house", attrs(res.root)["tollgate.customer.id"])

    fake_redis.reset()
    res = fake.run(handler, config(), anonymous())
    assert.is_nil(res.exit)
    assert.equal("no_customer", attrs(res.root)["tollgate.enforcement"])
    assert.is_nil(attrs(res.root)["tollgate.customer.id"])
    assert.equal(0, fake_redis.hmgets())
  end)

  it("consumer username when it has no custom_id", function()
    local res = fake.run(handler, config(), request({ consumer = { id = "x", username = "alice" } }))
    assert.equal("alice", attrs(res.root)["tollgate.customer.id"])
  end)

  it("legacy HTTP+SSE transport: session from ?sessionId=", function()
    local r = request({ query = { sessionId = "legacy-1" } })
    r.headers["Mcp-Session-Id"] = nil
    local res = fake.run(handler, config(), r, { status = 202, headers = { ["Content-Type"] = "text/plain" }, chunks = { "Accepted" } })
    assert.equal("sse", attrs(res.root)["tollgate.mcp.transport"])
    assert.equal("legacy-1", attrs(res.root)["mcp.session.id"])
    assert.is_nil(attrs(res.root)["error.type"])
  end)

  it("413 when the body is larger than max_body_bytes", function()
    local r = request()
    r.headers["Content-Length"] = "5000"
    local res = fake.run(handler, config({ max_body_bytes = 4096 }), r)
    assert.equal(413, res.exit.status)
    assert.equal(-32053, cjson.decode(res.exit.body).error.code)
  end)

  it("reads a body nginx spilled to a temp file", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(call_body(3, "from_file"))
    f:close()
    local res = fake.run(handler, config(), request({ body = nil, body_file = path }))
    os.remove(path)
    assert.is_nil(res.exit)
    assert.equal("from_file", attrs(res.root)["gen_ai.tool.name"])
  end)

  it("copies params._meta.traceparent to the upstream request when no header carries one", function()
    local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    local res = fake.run(handler, config(), request({ body = call_body(1, "search", { traceparent = tp, tracestate = "k=v" }) }))
    assert.equal(tp, res.plugin_upstream_headers.traceparent)
    assert.equal("k=v", res.plugin_upstream_headers.tracestate)
    -- Kong's opentelemetry propagation then continues that trace, with Kong's root span as parent
    assert.matches("^00%-0af7651916cd43dd8448eb211c80319c%-%x+%-01$", res.upstream_headers.traceparent)

    local r = request({ body = call_body(1, "search", { traceparent = tp }) })
    r.headers.traceparent = "00-11111111111111111111111111111111-2222222222222222-01"
    assert.is_nil(fake.run(handler, config(), r).plugin_upstream_headers.traceparent)
    assert.is_nil(fake.run(handler, config({ propagate_meta_traceparent = false }),
      request({ body = call_body(1, "search", { traceparent = tp }) })).plugin_upstream_headers.traceparent)
  end)

  it("tracing off: nothing to annotate, a warning says calls are not billed", function()
    local res = fake.run(handler, config(), request({ tracing = false }))
    assert.is_nil(res.exit)
    assert.equal("warn", res.logs[#res.logs].level)
    assert.matches("not billed", res.logs[#res.logs].message)
  end)

  describe("2026-07-28 Streamable HTTP (Mcp-Method / Mcp-Name)", function()
    local session = require "kong.plugins.tollgate.session"

    it("meters the call from the headers: the body is never read", function()
      local res = fake.run(handler, config(), modern(), json_upstream('{"jsonrpc":"2.0","id":"r-9","result":{"content":[]}}'))
      assert.is_nil(res.exit)
      assert.equal(0, res.body_reads) -- no kong.request.get_raw_body(), no ngx.req.get_body_file()
      local a = attrs(res.root)
      assert.equal("tools/call", a["mcp.method.name"])
      assert.equal("search", a["gen_ai.tool.name"])
      assert.equal("r-9", a["jsonrpc.request.id"]) -- learnt from the answer
      assert.equal("cus_1", a["tollgate.customer.id"])
      assert.equal("2026-07-28", a["mcp.protocol.version"])
      assert.is_nil(a["error.type"])
      assert.equal(1, fake_redis.hmgets())
    end)

    it("a JSON-RPC error answer is seen without the id of the request", function()
      local res = fake.run(handler, config(), modern(),
        json_upstream('{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"bad"}}'))
      assert.equal(0, res.body_reads)
      assert.equal("-32602", attrs(res.root)["error.type"])
      assert.equal("4", attrs(res.root)["jsonrpc.request.id"])
    end)

    it("Mcp-Name in its Base64 sentinel form names the tool", function()
      -- "résumé" as UTF-8, Base64 (the SDK's encodeMcpParamValue for a non-ASCII value)
      local res = fake.run(handler, config(), modern(nil, { ["Mcp-Name"] = " =?base64?csOpc3Vtw6k=?= " }))
      assert.equal(0, res.body_reads)
      assert.equal("r\195\169sum\195\169", attrs(res.root)["gen_ai.tool.name"])
    end)

    it("headers that disagree with the body reach a server that refuses them (400, -32020): never billed", function()
      -- meter_from_headers: Kong trusts the headers because the MCP server must refuse a mismatch
      -- before it runs anything (SDK validateStandardRequestHeaders); the call is then not billable
      local r = modern({ body = call_body(3, "delete_everything") }, { ["Mcp-Name"] = "search" })
      local res = fake.run(handler, config(), r, json_upstream(
        '{"jsonrpc":"2.0","id":3,"error":{"code":-32020,"message":"Bad Request: the request headers and body disagree"}}', 400))
      assert.equal(0, res.body_reads)
      local a = attrs(res.root)
      assert.is_nil(a["mcp.method.name"])
      assert.equal("header_mismatch", a["tollgate.enforcement"])
      assert.equal("refused_by_server", a["tollgate.enforcement.reason"])
    end)

    it("the legacy HTTP+SSE message endpoint (?sessionId=) is metered from the body, whatever the headers say", function()
      -- its server (SDK SSEServerTransport, protocol 2024-11-05) never checks Mcp-Method / Mcp-Name, so
      -- headers naming another method must not keep a tools/call from being enforced
      fake_redis.hset(KEY, "c", "kill|hard_limit:calls_per_day|0||")
      local lie = modern({ body = call_body(5, "search"), query = { sessionId = "legacy-1" } },
                         { ["Mcp-Method"] = "tools/list", ["Mcp-Name"] = false })
      local res = fake.run(handler, config(), lie)
      assert.equal(1, res.body_reads)
      assert.equal(400, res.exit.status) -- the headers disagree with the body: -32020, as the SDK would
      assert.equal(-32020, cjson.decode(res.exit.body).error.code)
      -- agreeing 2026 headers there: still read from the body, and enforced
      local agree = modern({ body = call_body(6, "search"), query = { sessionId = "legacy-1" } })
      res = fake.run(handler, config(), agree)
      assert.equal(1, res.body_reads)
      assert.equal(403, res.exit.status)
      assert.equal(6, cjson.decode(res.exit.body).id)
    end)

    it("meter_from_headers = false: Kong reads the body and refuses the mismatch itself, before the upstream", function()
      local r = modern({ body = call_body(3, "delete_everything", {
        ["io.modelcontextprotocol/protocolVersion"] = "2026-07-28" }) })
      local res = fake.run(handler, config({ meter_from_headers = false }), r)
      assert.equal(1, res.body_reads)
      assert.equal(400, res.exit.status)
      local body = cjson.decode(res.exit.body)
      assert.equal(3, body.id)
      assert.equal(-32020, body.error.code)
      assert.matches("^Bad Request: the request headers and body disagree: ", body.error.message)
      assert.equal("search", body.error.data.mismatch.header)
      assert.equal(0, fake_redis.hmgets())
      assert.is_nil(res.plugin_ctx.tollgate)

      -- agreeing headers pass and are billed from the body
      local ok = fake.run(handler, config({ meter_from_headers = false }), modern({ body = call_body(3, "search") }))
      assert.is_nil(ok.exit)
      assert.equal("search", attrs(ok.root)["gen_ai.tool.name"])
      assert.equal("3", attrs(ok.root)["jsonrpc.request.id"])
    end)

    it("an undecodable Mcp-Name sentinel falls back to the body, which answers as the specification says", function()
      local res = fake.run(handler, config(), modern(nil, { ["Mcp-Name"] = "=?base64?not base64?=" }))
      assert.equal(1, res.body_reads)
      assert.equal(400, res.exit.status)
      local body = cjson.decode(res.exit.body)
      assert.equal(-32020, body.error.code)
      assert.equal(1, body.id)
    end)

    it("older clients (no modern MCP-Protocol-Version, or no Mcp-Method) are metered from the body", function()
      for _, h in ipairs({ { ["Mcp-Protocol-Version"] = "2025-11-25" },
                           { ["Mcp-Method"] = false, ["Mcp-Name"] = false, ["Mcp-Protocol-Version"] = false } }) do
        local r = modern(nil, h)
        local res = fake.run(handler, config(), r)
        assert.equal(1, res.body_reads)
        assert.equal("search", attrs(res.root)["gen_ai.tool.name"])
        assert.equal("1", attrs(res.root)["jsonrpc.request.id"])
      end
    end)

    it("a modern request without its required Mcp-Method is refused from the body (400), as the SDK does", function()
      local res = fake.run(handler, config(), modern(nil, { ["Mcp-Method"] = false }))
      assert.equal(400, res.exit.status)
      assert.equal(-32020, cjson.decode(res.exit.body).error.code)
    end)

    it("other methods pass unmetered, body unread", function()
      local res = fake.run(handler, config(), modern({ body = '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' },
                                                     { ["Mcp-Method"] = "tools/list", ["Mcp-Name"] = false }))
      assert.equal(0, res.body_reads)
      assert.is_nil(res.exit)
      assert.is_nil(res.plugin_ctx.tollgate)
      assert.equal(0, fake_redis.hmgets())
    end)

    it("a kill refuses before the upstream; only then is the body read, to echo the request's id", function()
      fake_redis.hset(KEY, "c", "kill|hard_limit:calls_per_period|0||")
      local res = fake.run(handler, config(), modern({ body = call_body("abc", "search") }))
      assert.equal(403, res.exit.status)
      local body = cjson.decode(res.exit.body)
      assert.equal(-32050, body.error.code)
      assert.equal("abc", body.id)
      assert.is_nil(attrs(res.root)["mcp.method.name"])
    end)

    describe("billing session", function()
      it("the caller's traceparent header (rule 3), whatever its sampled flag", function()
        local res = fake.run(handler, config(), modern(nil, {
          traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" }))
        assert.equal("trace-4bf92f3577b34da6a3ce929d0e0e4736", attrs(res.root)["mcp.session.id"])
        assert.equal("trace", attrs(res.root)["tollgate.session.rule"])
      end)

      it("_meta.traceparent counts only when the body is decoded anyway", function()
        local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        local legacy = fake.run(handler, config(), request({ headers = { ["X-Agent-Id"] = "agent-7" },
                                                             body = call_body(1, "search", { traceparent = tp }) }))
        assert.equal("trace-0af7651916cd43dd8448eb211c80319c", attrs(legacy.root)["mcp.session.id"])
        local m = fake.run(handler, config(), modern({ body = call_body(1, "search", { traceparent = tp }) }))
        assert.equal("activity", attrs(m.root)["tollgate.session.rule"])
      end)

      it("the protocol's session id wins (rule 1)", function()
        local res = fake.run(handler, config(), request())
        assert.equal("sess-1", attrs(res.root)["mcp.session.id"])
        assert.equal("protocol", attrs(res.root)["tollgate.session.rule"])
      end)

      it("else customer + agent + credential over the inactivity gap (rule 4), ids as contracts/ builds them", function()
        local conf = config({ session_gap_ms = 60000 })
        local cred = { id = "5e3b0c44-0000-4000-8000-000000000001" }
        local t0 = fake.clock_ms()
        local first = fake.run(handler, conf, modern({ credential = cred }))
        local id = attrs(first.root)["mcp.session.id"]
        assert.equal(session.activity_session_id("cus_1", "agent-7", session.credential_fingerprint(cred.id), t0), id)
        assert.equal("activity", attrs(first.root)["tollgate.session.rule"])
        fake.advance_ms(59000)
        assert.equal(id, attrs(fake.run(handler, conf, modern({ credential = cred })).root)["mcp.session.id"])
        fake.advance_ms(59000) -- the gap counts from the previous call
        assert.equal(id, attrs(fake.run(handler, conf, modern({ credential = cred })).root)["mcp.session.id"])
        local other_agent = fake.run(handler, conf, modern({ credential = cred }, { ["X-Agent-Id"] = "agent-8" }))
        assert.are_not.equal(id, attrs(other_agent.root)["mcp.session.id"])
        fake.advance_ms(60001)
        local later = attrs(fake.run(handler, conf, modern({ credential = cred })).root)["mcp.session.id"]
        assert.are_not.equal(id, later)
        assert.matches("^act%-%x+$", later)
        assert.equal(20, #later)
      end)
    end)
  end)

  describe("billing no sampler can skip", function()
    local posts = record_posts()

    local UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"

    local function names(spans)
      local out = {}
      for i, span in ipairs(spans) do out[i] = span.name end
      return out
    end

    it("the fake mirrors Kong: a -00 traceparent makes every span unexported, whatever sampling_rate says", function()
      local res = fake.run(handler, config(), request({
        headers = { traceparent = UNSAMPLED }, otel = { sampling_rate = 1 },
        body = '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' }))
      assert.same({}, res.exported)
      assert.matches("^00%-4bf92f3577b34da6a3ce929d0e0e4736%-%x+%-00$", res.upstream_headers.traceparent)
      local sampled = fake.run(handler, config(), request({
        headers = { traceparent = UNSAMPLED:gsub("%-00$", "-01") },
        body = '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' }))
      assert.same({ "kong", "kong.router" }, names(sampled.exported))
    end)

    it("-00 traceparent: the metered call is exported, marked; the rest of the trace stays sampled out", function()
      local r = request({ headers = { traceparent = UNSAMPLED, ["X-Agent-Id"] = "agent-7" }, otel = { sampling_rate = 1 } })
      local res = fake.run(handler, config(), r)
      assert.same({ "kong" }, names(res.exported)) -- not kong.router
      local a = attrs(res.exported[1])
      assert.equal("tools/call", a["mcp.method.name"])
      assert.equal("search", a["gen_ai.tool.name"])
      assert.is_false(a["tollgate.trace.sampled"])
      assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", (res.exported[1].trace_id:gsub(".", function(c)
        return ("%02x"):format(c:byte()) end)))
      -- the upstream still sees an unsampled trace
      assert.matches("%-00$", res.upstream_headers.traceparent)
    end)

    it("sampling_rate 0 (plugin or node): the metered calls of a batch are exported, nothing else", function()
      local body = "[" .. call_body(1, "search") .. "," .. call_body(2, "fetch") .. "]"
      for _, r in ipairs({ request({ body = body, otel = { sampling_rate = 0 } }),
                           request({ body = body, sampling_rate = 0, otel = {} }) }) do
        local res = fake.run(handler, config(), r)
        assert.same({ "kong", "tools/call fetch" }, names(res.exported))
        for _, span in ipairs(res.exported) do
          assert.equal("tools/call", attrs(span)["mcp.method.name"])
        end
      end
    end)

    it("a sampled trace is exported as it is, unmarked", function()
      local res = fake.run(handler, config(), request())
      assert.same({ "kong", "kong.router" }, names(res.exported))
      assert.is_nil(attrs(res.exported[1])["tollgate.trace.sampled"])
    end)

    it("tracing off: Kong exports nothing; the billing exporter sends the call to billing_endpoint", function()
      local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces",
                            billing_authorization = "Bearer tg_ingest_1" })
      local r = modern(nil, { traceparent = UNSAMPLED })
      r.tracing = false
      local res = fake.run(handler, conf, r, json_upstream('{"jsonrpc":"2.0","id":8,"result":{"content":[],"isError":true}}'))
      assert.same({}, res.exported) -- the noop tracer's process_span: nothing at all
      assert.equal("root", res.spans[1].name) -- the opentelemetry plugin's propagation-only span
      assert.is_true(res.spans[1].attributes["kong.propagation_only"])
      assert.equal(0, res.body_reads)
      assert.equal(1, fake.run_timers())
      assert.equal(1, #posts)
      assert.equal("http://tollgate.test:4318/v1/traces", posts[1].url)
      assert.equal("Bearer tg_ingest_1", posts[1].headers.Authorization)
      assert.equal("application/json", posts[1].headers["Content-Type"])
      local doc = cjson.decode(posts[1].body)
      local span = doc.resourceSpans[1].scopeSpans[1].spans[1]
      assert.equal("kong", span.name)
      assert.equal(2, span.kind)
      assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", span.traceId)
      assert.equal("00f067aa0ba902b7", span.parentSpanId)
      assert.matches("^%x+$", span.spanId)
      assert.equal(16, #span.spanId)
      local a = {}
      for _, kv in ipairs(span.attributes) do
        local v = kv.value
        a[kv.key] = v.stringValue or v.doubleValue or v.boolValue
      end
      assert.equal("tools/call", a["mcp.method.name"])
      assert.equal("search", a["gen_ai.tool.name"])
      assert.equal("tool_error", a["error.type"])
      assert.equal("8", a["jsonrpc.request.id"])
      assert.equal("cus_1", a["tollgate.customer.id"])
      assert.equal("trace-4bf92f3577b34da6a3ce929d0e0e4736", a["mcp.session.id"])
      assert.is_false(a["tollgate.trace.sampled"])
      local resource = {}
      for _, kv in ipairs(doc.resourceSpans[1].resource.attributes) do resource[kv.key] = kv.value.stringValue end
      assert.equal("kong", resource["service.name"])
    end)

    it("tracing off: trace and span ids are Kong's random bytes (kong.tools.rand, RAND_bytes), not math.random", function()
      local kong_rand = require "spec.helpers.kong_rand"
      local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
      local real, asked = kong_rand.source, {}
      local next_byte = 0
      kong_rand.source = function(n)
        asked[#asked + 1] = n
        local t = {}
        for i = 1, n do next_byte = next_byte + 1; t[i] = string.char(next_byte) end
        return table.concat(t)
      end
      local ok, err = pcall(function()
        local body = "[" .. call_body(1, "search") .. "," .. call_body(2, "fetch") .. "]"
        -- (without the opentelemetry plugin, whose propagation-only span would take Kong's ids first)
        local r = request({ tracing = false, body = body, otel = false })
        r.headers.traceparent = nil
        fake.run(handler, conf, r)
      end)
      kong_rand.source = real
      assert(ok, err)
      fake.run_timers()
      local spans = cjson.decode(posts[1].body).resourceSpans[1].scopeSpans[1].spans
      -- 16 bytes of trace id, then 8 per span, in order, as Kong's generate_trace_id / generate_span_id
      assert.same({ 16, 8, 8 }, asked)
      assert.equal("0102030405060708090a0b0c0d0e0f10", spans[1].traceId)
      assert.equal("1112131415161718", spans[1].spanId)
      assert.equal("191a1b1c1d1e1f20", spans[2].spanId)
      assert.equal(spans[1].traceId, spans[2].traceId)
    end)

    it("tracing off: the same math.random seed on two workers does not give the same ids", function()
      local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
      local ids = {}
      for i = 1, 2 do
        math.randomseed(42)
        local r = request({ tracing = false })
        r.headers.traceparent = nil
        fake.run(handler, conf, r)
        fake.run_timers()
        local span = cjson.decode(posts[i].body).resourceSpans[1].scopeSpans[1].spans[1]
        ids[i] = span.traceId .. span.spanId
      end
      assert.are_not.equal(ids[1], ids[2])
    end)

    it("tracing off without the opentelemetry plugin: still exported by the billing exporter", function()
      local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
      local r = request({ tracing = false, otel = false })
      fake.run(handler, conf, r)
      fake.run(handler, conf, r)
      assert.equal(1, fake.run_timers()) -- one flush for both
      assert.equal(1, #posts)
      assert.equal(2, #cjson.decode(posts[1].body).resourceSpans[1].scopeSpans[1].spans)
      assert.is_nil(posts[1].headers.Authorization)
    end)

    describe("tracing on, but no opentelemetry plugin exports the route", function()
      local function decoded_spans(post)
        local out = {}
        for _, span in ipairs(cjson.decode(post.body).resourceSpans[1].scopeSpans[1].spans) do
          local a = {}
          for _, kv in ipairs(span.attributes) do
            local v = kv.value
            a[kv.key] = v.stringValue or v.doubleValue or v.boolValue
          end
          span.attrs = a
          out[#out + 1] = span
        end
        return out
      end

      it("no opentelemetry plugin on the route: Kong's own root span goes to billing_endpoint, once", function()
        local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
        local res = fake.run(handler, conf, request({ otel = false }),
          json_upstream('{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'))
        assert.same({}, res.exported) -- nobody else exports
        assert.equal(1, fake.run_timers())
        assert.equal(1, #posts)
        local spans = decoded_spans(posts[1])
        assert.equal(1, #spans)
        assert.equal("kong", spans[1].name)
        -- the ids are the root span's own: were it exported by Kong too, it would be the same event
        assert.equal(hex(res.root.trace_id), spans[1].traceId)
        assert.equal(hex(res.root.span_id), spans[1].spanId)
        assert.equal("tools/call", spans[1].attrs["mcp.method.name"])
        assert.equal("search", spans[1].attrs["gen_ai.tool.name"])
        assert.equal("cus_1", spans[1].attrs["tollgate.customer.id"])
        assert.is_false(spans[1].attrs["tollgate.trace.sampled"])
        assert.equal(string.format("%d", res.root.start_time_ns), spans[1].startTimeUnixNano)
      end)

      it("a batch: the root and each child span, with their own ids", function()
        local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
        local body = "[" .. call_body(1, "search") .. "," .. call_body(2, "fetch") .. "]"
        local res = fake.run(handler, conf, request({ body = body, otel = false }))
        fake.run_timers()
        local spans = decoded_spans(posts[1])
        assert.equal(2, #spans)
        assert.equal("kong", spans[1].name)
        assert.equal("tools/call fetch", spans[2].name)
        assert.equal(spans[1].traceId, spans[2].traceId)
        assert.equal(spans[1].spanId, spans[2].parentSpanId)
        local child
        for _, sp in ipairs(res.spans) do if sp.name == "tools/call fetch" then child = sp end end
        assert.equal(hex(child.span_id), spans[2].spanId)
      end)

      it("the opentelemetry plugin on the route exports: the billing exporter sends nothing (no double billing)", function()
        local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
        local res = fake.run(handler, conf, request())
        assert.equal("tools/call", attrs(res.exported[1])["mcp.method.name"])
        assert.equal(0, fake.run_timers())
        assert.equal(0, #posts)
        -- a sampled-out trace too: Kong exports the flipped root span
        local un = fake.run(handler, conf, request({ headers = { traceparent = UNSAMPLED }, otel = { sampling_rate = 1 } }))
        assert.equal(1, #un.exported)
        assert.equal(0, fake.run_timers())
      end)

      it("no opentelemetry plugin and no billing_endpoint: a warning says calls are not billed", function()
        local res = fake.run(handler, config(), request({ otel = false }))
        assert.same({}, res.exported)
        assert.equal("warn", res.logs[#res.logs].level)
        assert.matches("opentelemetry plugin does not export", res.logs[#res.logs].message)
        assert.matches("not billed", res.logs[#res.logs].message)
      end)

      it("a Kong without tracing context flags (< 3.8): nothing exported twice, a warning says why", function()
        local saved = package.loaded["kong.observability.tracing.tracing_context"]
        package.loaded["kong.observability.tracing.tracing_context"] = nil
        package.loaded["kong.plugins.tollgate.handler"] = nil
        local old_handler = require "kong.plugins.tollgate.handler"
        package.loaded["kong.observability.tracing.tracing_context"] = saved
        package.loaded["kong.plugins.tollgate.handler"] = handler
        local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
        local res = fake.run(old_handler, conf, request({ otel = false }))
        assert.equal(0, fake.run_timers())
        assert.equal("tools/call", attrs(res.root)["mcp.method.name"])
        assert.equal("warn", res.logs[#res.logs].level)
        assert.matches("cannot tell whether the opentelemetry plugin exports", res.logs[#res.logs].message)
      end)
    end)

    it("tracing off without billing_endpoint: a warning says calls are not billed", function()
      local res = fake.run(handler, config(), request({ tracing = false }))
      assert.is_nil(res.exit)
      assert.same({}, res.exported)
      assert.equal("warn", res.logs[#res.logs].level)
      assert.matches("not billed", res.logs[#res.logs].message)
    end)

    it("a refused call is never exported on its own account, and Kong's propagation never ran", function()
      fake_redis.hset(KEY, "c", "kill|hard_limit:calls_per_period|0||")
      local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
      local r = request({ headers = { traceparent = UNSAMPLED } })
      local res = fake.run(handler, conf, r)
      assert.equal(403, res.exit.status)
      -- Kong's propagation never ran, so the -00 flag was never applied: Kong exports its spans
      -- under the node's own sampling decision, none of them billable
      assert.is_nil(res.upstream_headers.traceparent)
      assert.same({ "kong", "kong.router" }, names(res.exported))
      for _, span in ipairs(res.exported) do
        assert.is_nil(attrs(span)["mcp.method.name"])
        assert.is_nil(attrs(span)["tollgate.trace.sampled"])
      end
      local off = request({ tracing = false })
      fake.run(handler, conf, off)
      assert.equal(0, fake.run_timers())
    end)
  end)

  describe("quota leases", function()
    local exporter = require "kong.plugins.tollgate.exporter"
    local leases = require "kong.plugins.tollgate.leases"
    local LEASE = "ls_00112233445566778899aabb"
    local posts, answers = {}, {}
    local real_post = exporter.http_post
    setup(function()
      exporter.http_post = function(url, headers, body, timeout_ms)
        posts[#posts + 1] = { url = url, headers = headers, body = cjson.decode(body), timeout_ms = timeout_ms }
        local a = table.remove(answers, 1)
        if not a then
          return nil, "connection refused"
        end
        return 200, nil, cjson.encode({ results = { a } })
      end
    end)
    teardown(function()
      exporter.http_post = real_post
    end)
    before_each(function()
      posts, answers = {}, {}
      fake.reset_shared()
    end)

    local function grant(calls, exhausted)
      return { ok = true, lease = { leaseId = LEASE, customer = "cus_1", currency = "USD",
                                    expiresUnixMs = ngx.now() * 1000 + 30000, calls = calls, money = cjson.null,
                                    tools = {}, sessions = {}, limitedTools = {}, sessionLimited = false,
                                    prices = { one = "4000000" }, defaultPrice = "10000000", exhausted = exhausted } }
    end

    local function leased(overrides)
      local c = { leases = true, billing_endpoint = "http://tollgate.test:4318/v1/traces",
                  billing_authorization = "Bearer tg_ingest_1" }
      for k, v in pairs(overrides or {}) do c[k] = v end
      return config(c)
    end

    it("a batch takes each call's known price from the node's lease; each span names the lease", function()
      answers = { grant(5) }
      local body = cjson.encode({
        { jsonrpc = "2.0", id = 1, method = "tools/call", params = { name = "one" } },
        { jsonrpc = "2.0", id = 2, method = "tools/call", params = { name = "two" } },
      })
      local answer = '[{"jsonrpc":"2.0","id":1,"result":{"content":[]}},{"jsonrpc":"2.0","id":2,"result":{"content":[]}}]'
      local res = fake.run(handler, leased(), request({ body = body }), json_upstream(answer))
      assert.is_nil(res.exit)
      assert.equal(1, #posts)
      assert.equal("http://tollgate.test:4318/v1/leases", posts[1].url)
      assert.equal("Bearer tg_ingest_1", posts[1].headers.Authorization)
      assert.equal(fake.NODE_ID, posts[1].body.instanceId)
      assert.same({ op = "grant", customer = "cus_1", wantCalls = 2, wantMoney = "1", minMoney = "0" },
                  posts[1].body.requests[1])
      assert.equal(LEASE, attrs(res.root)["tollgate.lease.id"])
      assert.equal("4000000", attrs(res.root)["tollgate.lease.reserved_nano"])
      local child
      for _, span in ipairs(res.spans) do
        if span.name == "tools/call two" then child = span end
      end
      assert.equal(LEASE, attrs(child)["tollgate.lease.id"])
      assert.equal("10000000", attrs(child)["tollgate.lease.reserved_nano"])
      assert.equal(2, leases.stats(ngx.shared.tollgate_leases).taken)
      assert.equal(1, fake.run_every(), "one renewal timer per worker")
    end)

    it("a lease that cannot cover the call: refused with -32050 before the upstream, not billed", function()
      answers = { grant(0, { { scope = "customer", id = "cus_1", reason = "hard_limit:calls_per_day",
                               untilUnixMs = ngx.now() * 1000 + 7200 * 1000 } }) }
      local res = fake.run(handler, leased(), request())
      assert.equal(403, res.status)
      local err = cjson.decode(res.exit.body).error
      assert.equal(-32050, err.code)
      assert.equal("hard_limit:calls_per_day", err.data.reason)
      assert.equal(7200, err.data.retryAfterSeconds)
      assert.equal("lease_exhausted", attrs(res.root)["tollgate.enforcement"])
      assert.is_nil(attrs(res.root)["mcp.method.name"])
      for _, span in ipairs(res.exported) do
        assert.is_nil(attrs(span)["mcp.method.name"], "exported for the trace, not billable")
      end
    end)

    it("Tollgate unreachable: fault_tolerant passes the call unleased, false refuses it with -32052", function()
      local open = fake.run(handler, leased(), request())
      assert.is_nil(open.exit)
      assert.equal("lease_unavailable", attrs(open.root)["tollgate.enforcement"])
      assert.is_nil(attrs(open.root)["tollgate.lease.id"])
      fake.reset_shared()
      local closed = fake.run(handler, leased({ fault_tolerant = false }), request())
      assert.equal(503, closed.status)
      assert.equal(-32052, cjson.decode(closed.exit.body).error.code)
      assert.equal("lease_unavailable", cjson.decode(closed.exit.body).error.data.reason)
    end)

    it("answered by a plugin after ours: what the call took goes back to the lease", function()
      answers = { grant(1) }
      local conf = leased()
      local res = fake.run(handler, conf, request(), { status = 401, headers = {}, chunks = { "no" },
                                                       exit_by_later_plugin = true })
      assert.equal(401, res.status)
      local again = fake.run(handler, conf, request(), json_upstream('{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'))
      assert.is_nil(again.exit)
      assert.equal(LEASE, attrs(again.root)["tollgate.lease.id"])
      assert.equal(1, #posts, "the one call of the lease was given back, not consumed")
    end)

    it("without the lua_shared_dict: the fail policy, and the log names the missing dict", function()
      local res = fake.run(handler, leased({ lease_shm = "undeclared", fault_tolerant = false }), request())
      assert.equal(503, res.status)
      local logged = false
      for _, l in ipairs(res.logs) do
        if l.message:find("lua_shared_dict undeclared", 1, true) then logged = true end
      end
      assert.is_true(logged)
    end)
  end)

  describe("usage the upstream reports", function()
    local posts = record_posts()

    local META = '"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":1200,"gen_ai.usage.output_tokens":300,'
      .. '"gen_ai.usage.cache_read.input_tokens":1000,"tollgate.usage.rows_scanned":42}}'
    local ANSWER = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],' .. META .. '}}'

    it("JSON answer: the usage is on the billed span under the SDK's attribute names; the body passes unchanged", function()
      local res = fake.run(handler, config(), request(), json_upstream(ANSWER))
      assert.equal(ANSWER, res.downstream_body)
      local a = attrs(res.root)
      assert.equal(1200, a["gen_ai.usage.input_tokens"])
      assert.equal(300, a["gen_ai.usage.output_tokens"])
      assert.equal(1000, a["gen_ai.usage.cache_read.input_tokens"])
      assert.equal(42, a["tollgate.usage.rows_scanned"])
      assert.is_nil(a["tollgate.kong.usage_dropped"])
      assert.is_nil(a["error.type"])
      -- and Kong's opentelemetry plugin exports it so
      assert.equal(1200, attrs(res.exported[1])["gen_ai.usage.input_tokens"])
    end)

    it("SSE answer cut into 3-byte chunks, metered from the 2026 headers: same attributes, body unread", function()
      local sse = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\r\n\r\n"
        .. "event: message\r\ndata: " .. ANSWER .. "\r\n\r\n"
      local chunks = {}
      for i = 1, #sse, 3 do chunks[#chunks + 1] = sse:sub(i, i + 2) end
      local res = fake.run(handler, config(), modern(),
        { status = 200, headers = { ["Content-Type"] = "text/event-stream" }, chunks = chunks })
      assert.equal(sse, res.downstream_body)
      assert.equal(0, res.body_reads)
      local a = attrs(res.root)
      assert.equal(1200, a["gen_ai.usage.input_tokens"])
      assert.equal(42, a["tollgate.usage.rows_scanned"])
    end)

    it("no usage reported: no usage attributes", function()
      local res = fake.run(handler, config(), request(),
        json_upstream('{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'))
      for k in pairs(attrs(res.root)) do
        assert.is_nil(k:find("usage", 1, true), k)
      end
    end)

    it("bad values reach the span as they are; foreign names are counted, not set", function()
      local res = fake.run(handler, config(), request(), json_upstream(
        '{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"tollgate/usage":{"tollgate.usage.rows_scanned":-5,'
        .. '"gen_ai.usage.input_tokens":"many","tollgate.customer.id":"cus_other","mcp.method.name":"ping"}}}}'))
      local a = attrs(res.root)
      assert.equal(-5, a["tollgate.usage.rows_scanned"])
      assert.equal("many", a["gen_ai.usage.input_tokens"])
      assert.equal("cus_1", a["tollgate.customer.id"])
      assert.equal("tools/call", a["mcp.method.name"])
      assert.equal(2, a["tollgate.kong.usage_dropped"])
      local warned = false
      for _, l in ipairs(res.logs) do
        if l.level == "warn" and l.message:find("2 usage entries the upstream reported for tool search", 1, true) then
          warned = true
        end
      end
      assert.is_true(warned, "the operator is told, at most every 10 s per worker")
    end)

    it("Tollgate-Usage header: read, removed from the client's answer; _meta wins for a name both carry", function()
      local up = json_upstream(ANSWER)
      up.headers["Tollgate-Usage"] = "gen_ai.usage.input_tokens=1, tollgate.usage.pages=3"
      local res = fake.run(handler, config(), request(), up)
      assert.is_nil(res.response_headers["tollgate-usage"])
      local a = attrs(res.root)
      assert.equal(1200, a["gen_ai.usage.input_tokens"])
      assert.equal(3, a["tollgate.usage.pages"])
    end)

    it("Tollgate-Usage header alone, on a compressed answer the scanner cannot read", function()
      local up = { status = 200, headers = { ["Content-Type"] = "application/json", ["Content-Encoding"] = "gzip",
                                             ["Tollgate-Usage"] = "gen_ai.usage.output_tokens=77" },
                   chunks = { "\31\139 not read" } }
      local res = fake.run(handler, config(), request(), up)
      assert.equal(77, attrs(res.root)["gen_ai.usage.output_tokens"])
    end)

    it("batch: each call its own _meta usage; the header, which cannot say whose it is, is ignored and counted", function()
      local body = cjson.encode({
        { jsonrpc = "2.0", id = 1, method = "tools/call", params = { name = "one" } },
        { jsonrpc = "2.0", id = 2, method = "tools/call", params = { name = "two" } },
      })
      local answer = '[{"jsonrpc":"2.0","id":2,"result":{"content":[],"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":2}}}},'
        .. '{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":1}}}}]'
      local up = json_upstream(answer)
      up.headers["Tollgate-Usage"] = "gen_ai.usage.output_tokens=9, tollgate.usage.x=1"
      local res = fake.run(handler, config(), request({ body = body }), up)
      assert.equal(1, attrs(res.root)["gen_ai.usage.input_tokens"])
      assert.is_nil(attrs(res.root)["gen_ai.usage.output_tokens"])
      assert.equal(2, attrs(res.root)["tollgate.kong.usage_dropped"])
      local child
      for _, span in ipairs(res.spans) do
        if span.name == "tools/call two" then child = span end
      end
      assert.equal(2, attrs(child)["gen_ai.usage.input_tokens"])
      assert.is_nil(attrs(child)["tollgate.kong.usage_dropped"])
      local warned = false
      for _, l in ipairs(res.logs) do
        warned = warned or (l.level == "warn" and l.message:find("Tollgate-Usage header of a batch", 1, true) ~= nil)
      end
      assert.is_true(warned)
    end)

    it("upstream_usage = false: nothing is read, the header reaches the client", function()
      local up = json_upstream(ANSWER)
      up.headers["Tollgate-Usage"] = "tollgate.usage.pages=3"
      local res = fake.run(handler, config({ upstream_usage = false }), request(), up)
      assert.is_nil(attrs(res.root)["gen_ai.usage.input_tokens"])
      assert.is_nil(attrs(res.root)["tollgate.usage.pages"])
      assert.equal("tollgate.usage.pages=3", res.response_headers["tollgate-usage"])
    end)

    it("tracing off: the billing exporter sends the quantities as OTLP doubles, the bad ones as they came", function()
      local conf = config({ billing_endpoint = "http://tollgate.test:4318/v1/traces" })
      local res = fake.run(handler, conf, request({ tracing = false }), json_upstream(
        '{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"tollgate/usage":{"gen_ai.usage.input_tokens":1200,'
        .. '"tollgate.usage.gb_seconds":0.125,"tollgate.usage.rows_scanned":"lots","tollgate.usage.flag":true}}}}'))
      assert.is_nil(res.exit)
      assert.equal(1, fake.run_timers())
      local span = cjson.decode(posts[1].body).resourceSpans[1].scopeSpans[1].spans[1]
      local a = {}
      for _, kv in ipairs(span.attributes) do a[kv.key] = kv.value end
      assert.same({ doubleValue = 1200 }, a["gen_ai.usage.input_tokens"])
      assert.same({ doubleValue = 0.125 }, a["tollgate.usage.gb_seconds"])
      assert.same({ stringValue = "lots" }, a["tollgate.usage.rows_scanned"])
      assert.same({ boolValue = true }, a["tollgate.usage.flag"])
    end)
  end)
end)
