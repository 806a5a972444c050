-- Money in the aggregating views as Int128. One call's price and cost fit an Int64 of nano-units (the
-- receiver rejects a call that could cost more: amount_out_of_range), but a view row is a sum of calls —
-- one customer's day of a tool and agent, one session — and ClickHouse sums an Int64 as an Int64, wrapping
-- past 2^63 − 1 (9.2 billion units of the currency) without an error: two calls of 5,000,000,000 on one day
-- read as a revenue of −8,446,744,073.709551616. The readers (billing-api/src/sql.ts) sum in Int128 since the
-- same fix; this migration widens what the views store, and the views sum each insert block in Int128 too.
-- The columns are converted in place (a mutation of each view's parts); each view is dropped and created
-- again with its query as it
-- stands after migration 0016 (system.tables.as_select), with toInt128 in its money sums. Not ALTER … MODIFY
-- QUERY: a view altered so stops deduplicating replayed inserts (a block retried with the same
-- insert_deduplication_token is dropped by the raw table but counted again by the view); 0016 did that to
-- mcp_session_summary_mv, whose totals grew by the replayed calls after a crash (crash-recovery.test.ts) —
-- created anew here, it deduplicates again.
-- A call landed between a DROP and its CREATE would be missing from that view: embedded, nothing lands while
-- migrations run; on a ClickHouse server, stop every landing instance before the first upgraded one starts
-- (docs/operations.md, Upgrades).

ALTER TABLE mcp_daily_stats
    MODIFY COLUMN revenue_nano SimpleAggregateFunction(sum, Int128),
    MODIFY COLUMN cost_nano SimpleAggregateFunction(sum, Int128);

DROP VIEW IF EXISTS mcp_daily_stats_mv;

CREATE MATERIALIZED VIEW mcp_daily_stats_mv TO mcp_daily_stats AS
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
    sum(toInt128(price_nano)) AS revenue_nano,
    sum(toInt128(cost_nano)) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    quantilesTDigestState(0.5, 0.95)(duration_us) AS duration_quantiles
FROM mcp_tool_calls
GROUP BY product, customer, day, agent, tool;

ALTER TABLE mcp_tool_daily_stats
    MODIFY COLUMN revenue_nano SimpleAggregateFunction(sum, Int128),
    MODIFY COLUMN cost_nano SimpleAggregateFunction(sum, Int128);

DROP VIEW IF EXISTS mcp_tool_daily_stats_mv;

CREATE MATERIALIZED VIEW mcp_tool_daily_stats_mv TO mcp_tool_daily_stats AS
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    count() AS calls,
    countIf(status = 'error') AS errors,
    countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls,
    sum(toInt128(price_nano)) AS revenue_nano,
    sum(toInt128(cost_nano)) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    quantilesTDigestState(0.5, 0.95)(duration_us) AS duration_quantiles
FROM mcp_tool_calls
GROUP BY product, day, tool;

ALTER TABLE mcp_customer_daily_stats
    MODIFY COLUMN revenue_nano SimpleAggregateFunction(sum, Int128),
    MODIFY COLUMN cost_nano SimpleAggregateFunction(sum, Int128);

DROP VIEW IF EXISTS mcp_customer_daily_stats_mv;

CREATE MATERIALIZED VIEW mcp_customer_daily_stats_mv TO mcp_customer_daily_stats AS
SELECT
    product,
    toDate(started_at) AS day,
    customer,
    count() AS calls,
    countIf(status = 'error') AS errors,
    countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls,
    sum(toInt128(price_nano)) AS revenue_nano,
    sum(toInt128(cost_nano)) AS cost_nano,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(duration_us) AS duration_us_sum,
    uniqExactStateIf(customer, session_id, session_id != '') AS sessions
FROM mcp_tool_calls
GROUP BY product, day, customer;

ALTER TABLE mcp_session_daily
    MODIFY COLUMN revenue_nano SimpleAggregateFunction(sum, Int128),
    MODIFY COLUMN cost_nano SimpleAggregateFunction(sum, Int128);

DROP VIEW IF EXISTS mcp_session_daily_mv;

CREATE MATERIALIZED VIEW mcp_session_daily_mv TO mcp_session_daily AS
SELECT
    product,
    toDate(started_at) AS day,
    customer,
    session_id,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count() AS calls,
    countIf(status = 'error') AS errors,
    sum(toInt128(price_nano)) AS revenue_nano,
    sum(toInt128(cost_nano)) AS cost_nano
FROM mcp_tool_calls
GROUP BY product, day, customer, session_id;

ALTER TABLE mcp_session_summary
    MODIFY COLUMN revenue_nano SimpleAggregateFunction(sum, Int128),
    MODIFY COLUMN cost_nano SimpleAggregateFunction(sum, Int128);

DROP VIEW IF EXISTS mcp_session_summary_mv;

CREATE MATERIALIZED VIEW mcp_session_summary_mv TO mcp_session_summary AS
SELECT
    product,
    customer,
    session_id,
    max(agent) AS agent,
    max(transport) AS transport,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count() AS calls,
    countIf(status = 'error') AS errors,
    sum(toInt128(price_nano)) AS revenue_nano,
    sum(toInt128(cost_nano)) AS cost_nano,
    max(session_rule) AS session_rule,
    now64(3, 'UTC') AS landed_at
FROM mcp_tool_calls
GROUP BY product, customer, session_id;

ALTER TABLE mcp_usage_daily_stats
    MODIFY COLUMN price_nano SimpleAggregateFunction(sum, Int128),
    MODIFY COLUMN cost_nano SimpleAggregateFunction(sum, Int128);

DROP VIEW IF EXISTS mcp_usage_daily_stats_mv;

CREATE MATERIALIZED VIEW mcp_usage_daily_stats_mv TO mcp_usage_daily_stats AS
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    u_line AS line,
    customer,
    agent,
    countIf(u_nth = 1) AS calls,
    sum(u_quantity) AS quantity_micro,
    sum(toInt128(u_price)) AS price_nano,
    sum(toInt128(u_cost)) AS cost_nano
FROM mcp_tool_calls
ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_quantity, usage_price_nano AS u_price,
    usage_cost_nano AS u_cost, arrayEnumerateUniq(usage_lines) AS u_nth
GROUP BY product, day, tool, line, customer, agent;

-- The session-interval snapshots copy the summary's totals (storage/session-intervals.ts).
ALTER TABLE mcp_session_intervals
    MODIFY COLUMN revenue_nano Int128,
    MODIFY COLUMN cost_nano Int128;
