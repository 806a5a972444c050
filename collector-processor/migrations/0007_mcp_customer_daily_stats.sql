-- Per day and customer: the call measures of mcp_daily_stats without agent and tool (one row per customer
-- and day instead of one per customer, day, agent and tool), and the set of the customer's sessions with a
-- call that day. The set makes "how many sessions had calls in these days" a merge of small per-day sets
-- instead of a GROUP BY over every session; it holds (customer, session_id) so sets of different customers
-- never collide (calls without a session are left out).
-- ORDER BY (product, customer, day): reads are one tenant over a day range, all customers or one; a
-- customer's days are contiguous, so a customer-scoped read touches one or two granules, and a tenant-wide
-- read meets each customer's sets one after another (the merge stays in one customer's set); day last so the
-- rows of one (customer, day) merge into one. The sets make rows wide (16 bytes a session), hence granules
-- of 256 rows: a customer-scoped read does not decode other customers' sets.
CREATE TABLE IF NOT EXISTS mcp_customer_daily_stats
(
    product LowCardinality(String),
    day Date,
    customer String,
    calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    billed_calls SimpleAggregateFunction(sum, UInt64),
    free_calls SimpleAggregateFunction(sum, UInt64),
    revenue_nano SimpleAggregateFunction(sum, Int64),
    cost_nano SimpleAggregateFunction(sum, Int64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    duration_us_sum SimpleAggregateFunction(sum, UInt64),
    sessions AggregateFunction(uniqExact, String, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (product, customer, day)
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_customer_daily_stats_mv TO mcp_customer_daily_stats AS
SELECT
    product,
    toDate(started_at) AS day,
    customer,
    count() AS calls,
    countIf(status = 'error') AS errors,
    countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    uniqExactStateIf(customer, session_id, session_id != '') AS sessions
FROM mcp_tool_calls
GROUP BY product, day, customer;

-- Calls landed before this migration: the view above only sees new inserts.
INSERT INTO mcp_customer_daily_stats
SELECT
    product,
    toDate(started_at) AS day,
    customer,
    count() AS calls,
    countIf(status = 'error') AS errors,
    countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    uniqExactStateIf(customer, session_id, session_id != '') AS sessions
FROM mcp_tool_calls
GROUP BY product, day, customer;
