-- Raw rated tool calls: one row per billed (or counted) MCP tool call, with its trace link.
-- ORDER BY starts with product and customer because every analytics and invoice query is scoped to a
-- tenant and usually to a customer, then narrows by day and tool; session_id then started_at make the
-- session drill-down a contiguous range read.
-- non_replicated_deduplication_window: the lander inserts every block with an insert_deduplication_token,
-- so a block re-sent after a crash lands once (the same holds for the views below).
CREATE TABLE IF NOT EXISTS mcp_tool_calls
(
    event_id String,
    trace_id String,
    span_id String,
    product LowCardinality(String),
    customer String,
    agent String,
    session_id String,
    tool LowCardinality(String),
    transport LowCardinality(String),
    source LowCardinality(String),
    status LowCardinality(String),
    error_type LowCardinality(String),
    protocol_version LowCardinality(String),
    instance_id String,
    started_at DateTime64(6, 'UTC'),
    duration_us UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    price_nano Int64,
    cost_nano Int64,
    price_call_nano Int64,
    price_input_nano Int64,
    price_output_nano Int64,
    price_duration_nano Int64,
    tier UInt16,
    plan_id LowCardinality(String),
    plan_version LowCardinality(String),
    currency LowCardinality(String),
    decision LowCardinality(String),
    period LowCardinality(String),
    received_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (product, customer, toDate(started_at), tool, session_id, started_at)
SETTINGS non_replicated_deduplication_window = 10000;
