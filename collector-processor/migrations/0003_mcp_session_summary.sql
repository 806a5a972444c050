-- Per session: first/last seen, calls, revenue, cost (margin is derived at query time).
-- ORDER BY (product, customer, session_id): a session is looked up by id inside a tenant and customer;
-- listing a customer's sessions is a prefix range.
CREATE TABLE IF NOT EXISTS mcp_session_summary
(
    product LowCardinality(String),
    customer String,
    session_id String,
    agent SimpleAggregateFunction(anyLast, String),
    transport SimpleAggregateFunction(anyLast, LowCardinality(String)),
    first_seen SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    revenue_nano SimpleAggregateFunction(sum, Int64),
    cost_nano SimpleAggregateFunction(sum, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (product, customer, session_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_session_summary_mv TO mcp_session_summary AS
SELECT
    product,
    customer,
    session_id,
    anyLast(agent) AS agent,
    anyLast(transport) AS transport,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count() AS calls,
    countIf(status = 'error') AS errors,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano
FROM mcp_tool_calls
GROUP BY product, customer, session_id;
