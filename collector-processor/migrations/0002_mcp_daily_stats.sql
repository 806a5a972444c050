-- Per day, customer, agent and tool: what finance reads (revenue by tool, by agent, summaries).
-- ORDER BY (product, customer, day, agent, tool): tenant and customer scope first, then the day range
-- every report filters on; agent and tool are the grouping keys, so rows of one key merge together.
CREATE TABLE IF NOT EXISTS mcp_daily_stats
(
    product LowCardinality(String),
    customer String,
    day Date,
    agent String,
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
ORDER BY (product, customer, day, agent, tool)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_daily_stats_mv TO mcp_daily_stats AS
SELECT
    product,
    customer,
    toDate(started_at) AS day,
    agent,
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
GROUP BY product, customer, day, agent, tool;
