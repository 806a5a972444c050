-- Every enforcement transition (warn, throttle, kill, resume) and every operator action, for audit and
-- for the "recent kills" views. ORDER BY (product, customer, at): audits are read per tenant and
-- customer over a time range.
CREATE TABLE IF NOT EXISTS enforcement_events
(
    at DateTime64(3, 'UTC'),
    product LowCardinality(String),
    customer String,
    scope LowCardinality(String),
    subject_id String,
    action LowCardinality(String),
    reason String,
    margin_bps Nullable(Int64),
    spend_nano Int64,
    actor String,
    note String,
    event_key String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (product, customer, at)
SETTINGS non_replicated_deduplication_window = 10000;
