-- Configuration schema, validated through a stand-in of Kong's schema DSL (spec/helpers/kong_schema.lua).

local kong_schema = require "spec.helpers.kong_schema"
kong_schema.install()
local schema = require "kong.plugins.tollgate.schema"

local function validate(config)
  return kong_schema.validate(schema, { config = config })
end

describe("tollgate schema", function()
  it("is named like the plugin folder", function()
    assert.equal("tollgate", schema.name)
  end)

  it("needs only a product and fills every default", function()
    local entity = assert(validate({ product = "acme" }))
    assert.same({
      product = "acme",
      customer_source = "consumer",
      customer_header = "x-customer-id",
      agent_header = "x-agent-id",
      redis_host = "127.0.0.1",
      redis_port = 6379,
      redis_database = 0,
      redis_timeout_ms = 100,
      fault_tolerant = true,
      cache_ttl_ms = 1000,
      cache_max_items = 10000,
      max_body_bytes = 1048576,
      kill_http_status = 403,
      throttle_http_status = 429,
      propagate_meta_traceparent = true,
      meter_from_headers = true,
      session_gap_ms = 1800000,
      upstream_usage = true,
      billing_timeout_ms = 5000,
      leases = false,
      lease_timeout_ms = 250,
      lease_first_timeout_ms = 2000,
      lease_shm = "tollgate_leases",
    }, entity.config)
    assert.same({ "grpc", "grpcs", "http", "https" }, entity.protocols)
  end)

  it("billing_endpoint must be an http(s) URL; its authorization is referenceable and encrypted", function()
    assert(validate({ product = "acme", billing_endpoint = "http://tollgate:4318/v1/traces",
                      billing_authorization = "Bearer tg_ingest" }))
    local _, err = validate({ product = "acme", billing_endpoint = "tollgate:4318" })
    assert.truthy(err and err.config and err.config.billing_endpoint)
    local _, err2 = validate({ product = "acme", session_gap_ms = 10 })
    assert.truthy(err2 and err2.config and err2.config.session_gap_ms)
    local field
    for _, f in ipairs(schema.fields[2].config.fields) do
      if f.billing_authorization then field = f.billing_authorization end
    end
    assert.is_true(field.referenceable)
    assert.is_true(field.encrypted)
  end)

  it("leases need Tollgate's address: lease_endpoint, else billing_endpoint", function()
    local _, err = validate({ product = "acme", leases = true })
    assert.truthy(err and err["@entity"])
    assert(validate({ product = "acme", leases = true, billing_endpoint = "http://tollgate:4318/v1/traces" }))
    assert(validate({ product = "acme", leases = true, lease_endpoint = "http://tollgate:4318/v1/leases" }))
    local _, err2 = validate({ product = "acme", leases = true, lease_endpoint = "tollgate:4318" })
    assert.truthy(err2 and err2.config and err2.config.lease_endpoint)
    local _, err3 = validate({ product = "acme", lease_timeout_ms = 0 })
    assert.truthy(err3 and err3.config and err3.config.lease_timeout_ms)
  end)

  it("marks the Redis password referenceable and encrypted", function()
    local field
    for _, f in ipairs(schema.fields[2].config.fields) do
      if f.redis_password then field = f.redis_password end
    end
    assert.is_true(field.referenceable)
    assert.is_true(field.encrypted)
  end)

  it("accepts a full configuration", function()
    local entity = assert(validate({
      product = "acme",
      customer_source = "header",
      customer_header = "X-Customer",
      default_customer = "house",
      agent_header = "X-Agent",
      redis_password = "{vault://env/redis-pw}",
      redis_timeout_ms = 250,
      redis_cluster_nodes = { { ip = "10.0.0.1", port = 7000 }, { ip = "redis-2.internal", port = 7001 } },
      fault_tolerant = false,
      cache_ttl_ms = 0,
      max_body_bytes = 4096,
      kill_http_status = 402,
      throttle_http_status = 503,
      propagate_meta_traceparent = false,
    }))
    assert.equal("header", entity.config.customer_source)
    assert.equal(2, #entity.config.redis_cluster_nodes)
    assert.is_false(entity.config.fault_tolerant)
  end)

  for _, case in ipairs({
    { "missing product", {}, "product", "required field missing" },
    { "empty product", { product = "" }, "product", "length must be at least 1" },
    { "product not a string", { product = 7 }, "product", "expected a string" },
    { "unknown customer source", { product = "p", customer_source = "ip" }, "customer_source", "expected one of: consumer, header" },
    { "bad header name", { product = "p", agent_header = "x agent" }, "agent_header", "bad header name 'x agent', allowed characters are A-Z, a-z, 0-9, '_', and '-'" },
    { "port out of range", { product = "p", redis_port = 70000 }, "redis_port", "value should be between 0 and 65535" },
    { "host with a port", { product = "p", redis_host = "redis:6379" }, "redis_host", "must not have a port" },
    { "fractional database", { product = "p", redis_database = 1.5 }, "redis_database", "expected an integer" },
    { "negative timeout", { product = "p", redis_timeout_ms = -1 }, "redis_timeout_ms", "value should be between 0 and 2147483646" },
    { "fault_tolerant not boolean", { product = "p", fault_tolerant = "yes" }, "fault_tolerant", "expected a boolean" },
    { "cache ttl too long", { product = "p", cache_ttl_ms = 600000 }, "cache_ttl_ms", "value should be between 0 and 60000" },
    { "tiny max body", { product = "p", max_body_bytes = 10 }, "max_body_bytes", "value should be between 1024 and 67108864" },
    { "kill status not an error", { product = "p", kill_http_status = 200 }, "kill_http_status", "value should be between 400 and 599" },
    { "throttle status not an error", { product = "p", throttle_http_status = 302 }, "throttle_http_status", "value should be between 400 and 599" },
    { "empty cluster node list", { product = "p", redis_cluster_nodes = {} }, "redis_cluster_nodes", "length must be at least 1" },
    { "unknown field", { product = "p", redis_sentinel = "x" }, "redis_sentinel", "unknown field" },
  }) do
    it("rejects " .. case[1], function()
      local entity, errs = validate(case[2])
      assert.is_nil(entity)
      assert.same(case[4], errs.config[case[3]])
    end)
  end

  it("rejects a cluster node without a port", function()
    local _, errs = validate({ product = "p", redis_cluster_nodes = { { ip = "10.0.0.1" } } })
    assert.same({ [1] = { port = "required field missing" } }, errs.config.redis_cluster_nodes)
  end)

  it("rejects a database other than 0 with a cluster", function()
    local _, errs = validate({ product = "p", redis_database = 3, redis_cluster_nodes = { { ip = "10.0.0.1", port = 7000 } } })
    assert.matches("redis_database must be 0", errs["@entity"][1])
    assert.truthy(validate({ product = "p", redis_database = 3 }))
  end)

  it("the stand-in refuses schema features it does not implement", function()
    assert.has_error(function()
      kong_schema.validate({ name = "x", fields = { { config = { type = "record", fields = {
        { a = { type = "string", uuid = true } } } } } } }, { config = { a = "x" } })
    end)
  end)
end)
