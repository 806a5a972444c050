-- Install into Kong from this folder with `luarocks make` (which builds from the working copy
-- and does not fetch source.url), then add `tollgate` to Kong's `plugins` setting.
package = "tollgate"
version = "0.1.0-1"

source = {
  url = "git+https://example.com/tollgate/tollgate.git",
  dir = "kong",
}

description = {
  summary = "Kong plugin: meters, prices and enforces MCP tool calls the OpenTelemetry way",
  detailed = [[
    Parses MCP (JSON-RPC over Streamable HTTP / SSE) requests, refuses tools/call of killed or
    throttled customers from the enforcement state Tollgate keeps in Redis, observes each call's
    outcome in the streamed response, and puts the MCP semantic-convention attributes on Kong's
    root span for Kong's opentelemetry plugin to export to Tollgate.
  ]],
  license = "Apache-2.0",
}

-- Kong ships lua-cjson and lua-resty-redis; nothing else is needed at run time.
dependencies = {
  "lua >= 5.1",
}

build = {
  type = "builtin",
  modules = {
    ["kong.plugins.tollgate.handler"] = "kong/plugins/tollgate/handler.lua",
    ["kong.plugins.tollgate.schema"] = "kong/plugins/tollgate/schema.lua",
    ["kong.plugins.tollgate.attributes"] = "kong/plugins/tollgate/attributes.lua",
    ["kong.plugins.tollgate.cache"] = "kong/plugins/tollgate/cache.lua",
    ["kong.plugins.tollgate.enforce"] = "kong/plugins/tollgate/enforce.lua",
    ["kong.plugins.tollgate.identity"] = "kong/plugins/tollgate/identity.lua",
    ["kong.plugins.tollgate.jsonrpc"] = "kong/plugins/tollgate/jsonrpc.lua",
    ["kong.plugins.tollgate.keys"] = "kong/plugins/tollgate/keys.lua",
    ["kong.plugins.tollgate.outcome"] = "kong/plugins/tollgate/outcome.lua",
    ["kong.plugins.tollgate.session"] = "kong/plugins/tollgate/session.lua",
    ["kong.plugins.tollgate.exporter"] = "kong/plugins/tollgate/exporter.lua",
    ["kong.plugins.tollgate.leases"] = "kong/plugins/tollgate/leases.lua",
    ["kong.plugins.tollgate.state"] = "kong/plugins/tollgate/state.lua",
    ["kong.plugins.tollgate.store"] = "kong/plugins/tollgate/store.lua",
    ["kong.plugins.tollgate.usage"] = "kong/plugins/tollgate/usage.lua",
  },
}
