-- Per day and tool for a whole tenant: revenue by tool across all customers (and its p50/p95) without
-- merging the per-customer, per-agent rows of mcp_daily_stats. Those groups are small (tens of calls), so a
-- month of their duration digests costs as much to merge as the raw durations; here one digest per
-- (product, day, tool) holds the whole day.
-- ORDER BY (product, day, tool): every read is one tenant over a day range, grouped by tool; tool last so the
-- rows of one (day, tool) merge into one.
CREATE TABLE IF NOT EXISTS mcp_tool_daily_stats
(
    product LowCardinality(String),
    day Date,
    tool LowCardinality(String),
    calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    billed_calls SimpleAggregateFunction(sum, UInt64),
    free_calls SimpleAggregateFunction(sum, UInt64),
    revenue_nano SimpleAggregateFunction(sum, Int64),
    cost_nano SimpleAggregateFunction(sum, Int64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    duration_us_sum SimpleAggregateFunction(sum, UInt64),
    duration_quantiles AggregateFunction(quantilesTDigest(0.5, 0.95), UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (product, day, tool)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_tool_daily_stats_mv TO mcp_tool_daily_stats AS
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    count() AS calls,
    countIf(status = 'error') AS errors,
    countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    quantilesTDigestState(0.5, 0.95)(duration_us) AS duration_quantiles
FROM mcp_tool_calls
GROUP BY product, day, tool;

-- Calls landed before this migration: the view above only sees new inserts.
INSERT INTO mcp_tool_daily_stats
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    count() AS calls,
    countIf(status = 'error') AS errors,
    countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    quantilesTDigestState(0.5, 0.95)(duration_us) AS duration_quantiles
FROM mcp_tool_calls
GROUP BY product, day, tool;
