-- Per session and UTC day: when the session was first and last seen that day, and its calls, errors,
-- revenue and cost that day. The time-bounded index of sessions: "which sessions were active in this range,
-- most recently active first" reads the range's days only, where mcp_session_summary (no time in its key)
-- reads every session the tenant ever had. A session's totals over its whole life stay in
-- mcp_session_summary, looked up by key for the sessions a page shows.
-- ORDER BY (product, day, customer, session_id): reads are one tenant over a day range, most often all its
-- customers (one contiguous range); calls land roughly in time order, so new parts cover new days and merges
-- stay local; session_id last so the rows of one (day, session) merge into one. One customer's sessions are a
-- short run inside each day: granules of 1024 rows (not 8192) keep a customer's month a read of about one
-- small granule per day instead of most of the table.
CREATE TABLE IF NOT EXISTS mcp_session_daily
(
    product LowCardinality(String),
    day Date,
    customer String,
    session_id String,
    first_seen SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    revenue_nano SimpleAggregateFunction(sum, Int64),
    cost_nano SimpleAggregateFunction(sum, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (product, day, customer, session_id)
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_session_daily_mv TO mcp_session_daily AS
SELECT
    product,
    toDate(started_at) AS day,
    customer,
    session_id,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count() AS calls,
    countIf(status = 'error') AS errors,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano
FROM mcp_tool_calls
GROUP BY product, day, customer, session_id;

-- Calls landed before this migration: the view above only sees new inserts.
INSERT INTO mcp_session_daily
SELECT
    product,
    toDate(started_at) AS day,
    customer,
    session_id,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count() AS calls,
    countIf(status = 'error') AS errors,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano
FROM mcp_tool_calls
GROUP BY product, day, customer, session_id;
