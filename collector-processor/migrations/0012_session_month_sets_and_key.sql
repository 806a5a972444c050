-- Per month and customer: the set of the customer's sessions with a call that month, the union of the per-day
-- sets of mcp_customer_daily_stats. "How many sessions had calls in these days" merges one set per customer
-- and month for the whole months of a range instead of one per customer and day: over the current billing
-- period (the default range) 100 customers' sets instead of 3,100, and a session that had calls on several
-- days is decoded once instead of once a day.
-- Fed from mcp_customer_daily_stats (a view on the table another view fills): each landed block's per-day sets,
-- already built, are merged by month; the raw calls are not read a second time. A block sent again is dropped
-- where it enters (insert_deduplication_token, insertSettings); and a set is idempotent: the same sessions
-- merged twice are still counted once.
-- ORDER BY (product, month, customer): reads are one tenant over a few months, all customers or one; month
-- before customer so a tenant-wide read of one month is one contiguous range; customer last so the rows of
-- one (month, customer) merge into one.
CREATE TABLE IF NOT EXISTS mcp_customer_monthly_sessions
(
    product LowCardinality(String),
    month Date,
    customer String,
    sessions AggregateFunction(uniqExact, String, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(month)
ORDER BY (product, month, customer)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mcp_customer_monthly_sessions_mv TO mcp_customer_monthly_sessions AS
SELECT
    product,
    toStartOfMonth(day) AS month,
    customer,
    uniqExactMergeState(sessions) AS sessions
FROM mcp_customer_daily_stats
GROUP BY product, month, customer;

-- Calls landed before this migration: the view above only sees new inserts.
INSERT INTO mcp_customer_monthly_sessions
SELECT
    product,
    toStartOfMonth(day) AS month,
    customer,
    uniqExactMergeState(sessions) AS sessions
FROM mcp_customer_daily_stats
GROUP BY product, month, customer;

-- A session's key as one fixed-width number: the 128-bit SipHash of (customer, session id), 0 for calls
-- without a session. Grouping the lifetime view's rows by it (a past range: which sessions were active,
-- most recently active first) builds a hash table of 16-byte keys instead of one of two strings, about half
-- the time at 500,000 sessions. Two sessions would share a key with a probability of about n²/2¹²⁹ (10⁻²⁷ at a
-- million sessions): the same hash the exact session counts (uniqExact of customer and session id) rely on.
-- A function of the sorting key, so every row of a session holds the same value; max() keeps it through merges.
ALTER TABLE mcp_session_summary ADD COLUMN IF NOT EXISTS session_key SimpleAggregateFunction(max, UInt128)
    MATERIALIZED if(session_id = '', toUInt128(0), reinterpretAsUInt128(sipHash128(customer, session_id)));

-- Parts written before this migration compute the key when read until this rewrites them.
ALTER TABLE mcp_session_summary MATERIALIZE COLUMN session_key;
