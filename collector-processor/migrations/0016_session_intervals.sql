-- Which sessions were active in a past range (first call before its end, last call at or after its start)
-- needs every session's first and last call. mcp_session_summary holds them, but a session's rows from
-- different inserts stay apart until a merge, so answering means grouping every session of the tenant on each
-- request. A session's first and last call are a min and a max: merging them again with rows already merged
-- changes nothing. So a periodically built snapshot of merged intervals (one row per session, no grouping at
-- read) plus the summary rows landed since the snapshot gives every session's exact interval, grouping only
-- the sessions touched since (docs/benchmarks.md, "Session analytics"; the builder is
-- collector-processor/src/storage/session-intervals.ts, the reader billing-api/src/sql.ts).

-- When a summary row last received a block: the view's clock at insert time. max() keeps the latest through
-- merges, so a session with any row landed at or after a time t always has a row whose landed_at ≥ t. Rows
-- landed before this migration read as 1970 (they are in the first snapshot, built after it).
ALTER TABLE mcp_session_summary
    ADD COLUMN IF NOT EXISTS landed_at SimpleAggregateFunction(max, DateTime64(3, 'UTC')) DEFAULT toDateTime64(0, 3, 'UTC');

ALTER TABLE mcp_session_summary_mv MODIFY QUERY
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
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano,
    max(session_rule) AS session_rule,
    now64(3, 'UTC') AS landed_at
FROM mcp_tool_calls
GROUP BY product, customer, session_id;

-- The snapshots: one partition per snapshot (built in one INSERT … SELECT, dropped whole when superseded),
-- one row per session with calls (session_key as in mcp_session_summary, migration 0012). Ordered by first
-- call: a past range reads the sessions first seen before its end and filters those last seen after its start.
-- With the session's totals as of the snapshot: exact for a session with no summary row landed since (all its
-- rows were read by the build, once each), so a page of such sessions needs no second read of the summary.
CREATE TABLE IF NOT EXISTS mcp_session_intervals
(
    snapshot UInt64,
    product LowCardinality(String),
    customer String,
    session_id String,
    session_key UInt128,
    first_seen DateTime64(6, 'UTC'),
    last_seen DateTime64(6, 'UTC'),
    agent String,
    transport LowCardinality(String),
    session_rule LowCardinality(String),
    calls UInt64,
    errors UInt64,
    revenue_nano Int64,
    cost_nano Int64
)
ENGINE = MergeTree
PARTITION BY snapshot
ORDER BY (product, first_seen);

-- One row when a build starts (done = 0) and one when its rows are all in (done = 1). A reader uses the latest
-- finished snapshot and groups the summary rows landed at or after its watermark (the build's start on the
-- server's clock minus a margin longer than an insert takes from its view to its commit).
CREATE TABLE IF NOT EXISTS mcp_session_interval_snapshots
(
    snapshot UInt64,
    watermark DateTime64(3, 'UTC'),
    started_at DateTime64(3, 'UTC'),
    done UInt8,
    sessions UInt64
)
ENGINE = MergeTree
ORDER BY (started_at, snapshot)
TTL toDateTime(started_at) + INTERVAL 30 DAY;
