-- Configuration of the tollgate plugin, in Kong's schema DSL. Kong validates it once when the
-- plugin is configured and fills every default, so the handler never re-checks config.

local typedefs = require "kong.db.schema.typedefs"

local PLUGIN_NAME = "tollgate"

local DEFAULTS = {
  CUSTOMER_SOURCE = "consumer",
  CUSTOMER_HEADER = "x-customer-id",
  AGENT_HEADER = "x-agent-id",
  REDIS_HOST = "127.0.0.1",
  REDIS_PORT = 6379,
  REDIS_DATABASE = 0,
  -- a Redis read sits on the request path (on a cache miss): keep the wait short, the
  -- fault_tolerant flag decides what a timeout means
  REDIS_TIMEOUT_MS = 100,
  CACHE_TTL_MS = 1000,
  CACHE_MAX_ITEMS = 10000,
  MAX_BODY_BYTES = 1024 * 1024,
  KILL_HTTP_STATUS = 403,
  THROTTLE_HTTP_STATUS = 429,
  SESSION_GAP_MS = 30 * 60 * 1000, -- DEFAULT_ACTIVITY_GAP_MS of contracts/src/billing-session.ts
  BILLING_TIMEOUT_MS = 5000,
  -- the wait of a call whose lease is empty (docs/enforcement.md: the SDK's default too)
  LEASE_TIMEOUT_MS = 250,
  -- the wait for the first answer about a customer on this node (the SDK's leases.firstTimeoutMs too)
  LEASE_FIRST_TIMEOUT_MS = 2000,
  LEASE_SHM = "tollgate_leases",
}

local function leases_have_endpoint(config)
  if config.leases == true and not config.lease_endpoint and not config.billing_endpoint then
    return nil, "leases need lease_endpoint or billing_endpoint (Tollgate's address)"
  end
  return true
end

local function cluster_has_no_database(config)
  local nodes = config.redis_cluster_nodes
  if type(nodes) == "table" and #nodes > 0 and (config.redis_database or 0) ~= 0 then
    return nil, "redis_database must be 0 with redis_cluster_nodes (Redis Cluster has one database)"
  end
  return true
end

return {
  name = PLUGIN_NAME,
  fields = {
    { protocols = typedefs.protocols_http },
    { config = {
        type = "record",
        fields = {
          { product = { description = "Product (tenant) whose customers this route meters: the first part of every Redis hash tag.",
                        type = "string", required = true, len_min = 1 } },
          { customer_source = { description = "Where the paying customer comes from: the authenticated Kong consumer (custom_id, else username) or a request header set by a trusted upstream layer.",
                                type = "string", required = true, default = DEFAULTS.CUSTOMER_SOURCE,
                                one_of = { "consumer", "header" } } },
          { customer_header = typedefs.header_name { required = true, default = DEFAULTS.CUSTOMER_HEADER } },
          { default_customer = { description = "Customer used when none is resolved; without it such calls pass unenforced and carry no customer.",
                                 type = "string", len_min = 1 } },
          { agent_header = typedefs.header_name { required = true, default = DEFAULTS.AGENT_HEADER } },
          { redis_host = typedefs.host { required = true, default = DEFAULTS.REDIS_HOST } },
          { redis_port = typedefs.port { required = true, default = DEFAULTS.REDIS_PORT } },
          { redis_password = { description = "Redis AUTH password; a vault reference is accepted.",
                               type = "string", len_min = 0, referenceable = true, encrypted = true } },
          { redis_database = { type = "integer", required = true, default = DEFAULTS.REDIS_DATABASE,
                               between = { 0, 2147483647 } } },
          { redis_timeout_ms = typedefs.timeout { required = true, default = DEFAULTS.REDIS_TIMEOUT_MS } },
          { redis_cluster_nodes = { description = "Seed nodes of a Redis Cluster; when set, redis_host/redis_port are not used.",
                                    type = "array", len_min = 1,
                                    elements = { type = "record", fields = {
                                      { ip = typedefs.host { required = true } },
                                      { port = typedefs.port { required = true } },
                                    } } } },
          { fault_tolerant = { description = "Redis unreachable: true lets calls through (marked unenforced), false refuses them with 503.",
                               type = "boolean", required = true, default = true } },
          { cache_ttl_ms = { description = "How long a worker reuses an enforcement state read from Redis (0 = read every call).",
                             type = "integer", required = true, default = DEFAULTS.CACHE_TTL_MS,
                             between = { 0, 60000 } } },
          { cache_max_items = { type = "integer", required = true, default = DEFAULTS.CACHE_MAX_ITEMS,
                                between = { 1, 1000000 } } },
          { max_body_bytes = { description = "Largest request body metered; larger tools/call requests are refused (413) because they could not be read.",
                               type = "integer", required = true, default = DEFAULTS.MAX_BODY_BYTES,
                               between = { 1024, 64 * 1024 * 1024 } } },
          { kill_http_status = { type = "integer", required = true, default = DEFAULTS.KILL_HTTP_STATUS,
                                 between = { 400, 599 } } },
          { throttle_http_status = { type = "integer", required = true, default = DEFAULTS.THROTTLE_HTTP_STATUS,
                                     between = { 400, 599 } } },
          { propagate_meta_traceparent = { description = "Copy params._meta.traceparent to the traceparent header when the request has none, so Kong's tracing continues the MCP client's trace.",
                                           type = "boolean", required = true, default = true } },
          { meter_from_headers = { description = "Meter 2026-07-28 Streamable HTTP requests from their Mcp-Method / Mcp-Name headers without reading the body (the MCP server must refuse requests whose headers disagree with the body, as the specification requires); false: read the body and refuse such requests at Kong.",
                                   type = "boolean", required = true, default = true } },
          { session_gap_ms = { description = "Inactivity gap of the activity billing session (rule 4): a caller's call more than this after its previous one starts a new session.",
                               type = "integer", required = true, default = DEFAULTS.SESSION_GAP_MS,
                               between = { 1000, 7 * 24 * 3600 * 1000 } } },
          { upstream_usage = { description = "Put the usage the upstream MCP server reports for a tools/call on its billed span: the tool result's _meta[\"tollgate/usage\"] object and the Tollgate-Usage response header (removed from the answer), gen_ai.usage.* and tollgate.usage.* attributes only. Turn off when the upstream is not trusted to report what its customers pay for.",
                               type = "boolean", required = true, default = true } },
          { billing_endpoint = { description = "OTLP/HTTP traces URL of Tollgate's collector-processor (…/v1/traces). With Kong's tracing off, the spans of metered calls are sent here, since Kong's opentelemetry plugin exports nothing then.",
                                 type = "string", match = "^https?://[^%s]+$" } },
          { billing_authorization = { description = "Authorization header value for billing_endpoint, e.g. \"Bearer <ingest key>\"; a vault reference is accepted.",
                                      type = "string", len_min = 1, referenceable = true, encrypted = true } },
          { billing_timeout_ms = typedefs.timeout { required = true, default = DEFAULTS.BILLING_TIMEOUT_MS } },
          { leases = { description = "Take each metered tools/call's known price from a quota lease of this node (POST /v1/leases of Tollgate) before proxying it, and refuse it when the lease cannot cover it: no call over a hard limit. Needs lease_endpoint or billing_endpoint, billing_authorization, and the lua_shared_dict named by lease_shm.",
                       type = "boolean", required = true, default = false } },
          { lease_endpoint = { description = "Tollgate's POST /v1/leases URL; default: billing_endpoint with /v1/traces replaced by /v1/leases. Authenticated with billing_authorization (the ingest key).",
                               type = "string", match = "^https?://[^%s]+$" } },
          { lease_timeout_ms = { description = "Longest a call waits for a lease renewal when its lease is empty; then fault_tolerant decides (true: it passes, enforced per export; false: 503).",
                                 type = "integer", required = true, default = DEFAULTS.LEASE_TIMEOUT_MS,
                                 between = { 1, 10000 } } },
          { lease_first_timeout_ms = { description = "Longest the first calls of a customer on this node wait for Tollgate's first lease answer about it (never less than lease_timeout_ms): until it nothing is known of the customer's limits, and a burst that passed at lease_timeout_ms against a slow Tollgate ran past them. A Tollgate that never answers costs one such wait per customer; later waits take lease_timeout_ms.",
                                       type = "integer", required = true, default = DEFAULTS.LEASE_FIRST_TIMEOUT_MS,
                                       between = { 1, 10000 } } },
          { lease_shm = { description = "lua_shared_dict holding the node's leases, shared by its workers (declare it in nginx_http_lua_shared_dict, e.g. `tollgate_leases 1m`).",
                          type = "string", required = true, default = DEFAULTS.LEASE_SHM, match = "^[%w_]+$" } },
        },
      },
    },
  },
  entity_checks = {
    { custom_entity_check = {
        field_sources = { "config.leases", "config.lease_endpoint", "config.billing_endpoint" },
        fn = function(entity)
          return leases_have_endpoint(entity.config)
        end,
    } },
    { custom_entity_check = {
        field_sources = { "config.redis_cluster_nodes", "config.redis_database" },
        fn = function(entity)
          return cluster_has_no_database(entity.config)
        end,
    } },
  },
}
