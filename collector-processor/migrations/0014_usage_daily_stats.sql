-- Per day, customer, agent, tool and usage line (docs/rate-plans.md#usage-lines): calls that reported the line,
-- its quantity (micro-units), price and cost. Feeds the usage lines of /analytics/mcp/revenue/by-tool for the
-- whole days of a range, as mcp_tool_daily_stats feeds its other measures; only calls with usage lines have
-- rows here (ARRAY JOIN drops the others).
-- ORDER BY (product, day, tool, line, customer, agent): reads are one tenant over a day range grouped by tool
-- and line; customer and agent last so a customer or agent filter still reads one tenant's day range, and the
-- rows of one (day, tool, line, customer, agent) merge into one.
CREATE TABLE IF NOT EXISTS mcp_usage_daily_stats
(
    product LowCardinality(String),
    day Date,
    tool LowCardinality(String),
    line LowCardinality(String),
    customer String,
    agent String,
    calls SimpleAggregateFunction(sum, UInt64),
    quantity_micro SimpleAggregateFunction(sum, UInt64),
    price_nano SimpleAggregateFunction(sum, Int64),
    cost_nano SimpleAggregateFunction(sum, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (product, day, tool, line, customer, agent)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_usage_daily_stats_mv TO mcp_usage_daily_stats AS
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    u_line AS line,
    customer,
    agent,
    count() AS calls,
    sum(u_quantity) AS quantity_micro,
    sum(u_price) AS price_nano,
    sum(u_cost) AS cost_nano
FROM mcp_tool_calls
ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_quantity, usage_price_nano AS u_price,
    usage_cost_nano AS u_cost
GROUP BY product, day, tool, line, customer, agent;

-- Calls landed since migration 0013: the view above only sees new inserts.
INSERT INTO mcp_usage_daily_stats
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    u_line AS line,
    customer,
    agent,
    count() AS calls,
    sum(u_quantity) AS quantity_micro,
    sum(u_price) AS price_nano,
    sum(u_cost) AS cost_nano
FROM mcp_tool_calls
ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_quantity, usage_price_nano AS u_price,
    usage_cost_nano AS u_cost
GROUP BY product, day, tool, line, customer, agent;
