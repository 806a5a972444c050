-- Micro-measure of the response side of the plugin, pure Lua (no nginx): the outcome scanner over one
-- tools/call answer plus the span attributes of the call, for an answer without usage and the same
-- answer reporting 4 usage entries in its result's _meta (JSON, and SSE cut into 64-byte chunks).
-- Usage (from the repo root): luajit kong/bench/scanner-micro.lua [iterations] [kong dir of another
-- checkout, e.g. /work/main/kong, to measure its code on the same answers: no usage is then expected]

local KONG_DIR = arg[2] or "kong"
package.path = KONG_DIR .. "/?.lua;" .. KONG_DIR .. "/?/init.lua;" .. package.path

local outcome = require "kong.plugins.tollgate.outcome"
local attributes = require "kong.plugins.tollgate.attributes"
local jsonrpc = require "kong.plugins.tollgate.jsonrpc"

local N = tonumber(arg[1]) or 200000

local PLAIN = '{"result":{"content":[{"type":"text","text":"ok"}]},"jsonrpc":"2.0","id":1}'
local USAGE = '{"result":{"content":[{"type":"text","text":"ok"}],"_meta":{"tollgate/usage":'
  .. '{"gen_ai.usage.input_tokens":1200,"gen_ai.usage.output_tokens":300,'
  .. '"gen_ai.usage.cache_read.input_tokens":1000,"tollgate.usage.rows_scanned":42}}},"jsonrpc":"2.0","id":1}'

local function chunks_of(body, size)
  local out = {}
  for i = 1, #body, size do
    out[#out + 1] = body:sub(i, i + size - 1)
  end
  return out
end

local call = { id = jsonrpc.describe_id(1), name = "search" }
local req = { customer = "cus_bench", agent = "agent-1", session_id = "act-0123456789abcdef",
              protocol_version = "2026-07-28", transport = "streamable_http", enforcement = "allow" }

local function run(content_type, chunks)
  local s = outcome.new(content_type, { "n:1" })
  for i = 1, #chunks do
    s:feed(chunks[i])
  end
  s:finish()
  local answer = s:result("n:1")
  return attributes.for_call(call, req, { answer = answer, http_status = 200, usage = answer and answer.usage })
end

local function measure(name, content_type, chunks, expect_usage)
  local a = run(content_type, chunks)
  if not arg[2] then
    assert((a["gen_ai.usage.input_tokens"] ~= nil) == expect_usage, name)
  end
  for _ = 1, N / 10 do
    run(content_type, chunks) -- warm-up: let the JIT compile the loop
  end
  collectgarbage()
  local t0 = os.clock()
  for _ = 1, N do
    run(content_type, chunks)
  end
  local ns = (os.clock() - t0) / N * 1e9
  print(string.format("%-44s %6.0f ns per answer", name, ns))
end

print(string.format("luajit, %d answers each: outcome scanner + span attributes of one tools/call", N))
measure("JSON answer, no usage (" .. #PLAIN .. " bytes)", "application/json", { PLAIN }, false)
measure("JSON answer, 4 usage entries (" .. #USAGE .. " bytes)", "application/json", { USAGE }, true)
local sse = "event: message\ndata: " .. USAGE .. "\n\n"
measure("SSE answer, 4 usage entries, 64-byte chunks", "text/event-stream", chunks_of(sse, 64), true)
